// What the wallet page needs from polkadot.js, bundled into node/api/web/crypto.js by
// scripts/build-web.sh: sr25519 keys from a secret (mnemonic, URI, or seed), signatures,
// blake2, SS58 addresses, SCALE compact integers.
export { Keyring } from '@polkadot/keyring';
export { compactToU8a, u8aConcat, u8aToHex, hexToU8a, bnToU8a, stringToU8a } from '@polkadot/util';
export { blake2AsU8a, cryptoWaitReady, decodeAddress, encodeAddress, mnemonicValidate, sr25519Verify } from '@polkadot/util-crypto';
