// Test-only: opens a keystore file with polkadot.js' own keyring (@polkadot/keyring), signs a
// message with the key it holds, and writes the key back out in polkadot.js' own export.
//
//   KEY_PASSWORD=… EXPORT_PASSWORD=… node interop.mjs FILE MESSAGE
//
// Prints one JSON line: { address, signature (hex, sr25519 over MESSAGE), exported (the key
// re-encrypted by polkadot.js under EXPORT_PASSWORD) }. A wrong password exits non-zero.
import { readFileSync } from 'node:fs';
import { Keyring } from '@polkadot/keyring';
import { u8aToHex, stringToU8a } from '@polkadot/util';
import { cryptoWaitReady } from '@polkadot/util-crypto';

const [file, message] = process.argv.slice(2);
await cryptoWaitReady();
const keyring = new Keyring({ type: 'sr25519', ss58Format: 42 });
const pair = keyring.addFromJson(JSON.parse(readFileSync(file, 'utf8')));
pair.decodePkcs8(process.env.KEY_PASSWORD);
const signature = u8aToHex(pair.sign(stringToU8a(message)));
const exported = pair.toJson(process.env.EXPORT_PASSWORD);
console.log(JSON.stringify({ address: pair.address, signature, exported }));
