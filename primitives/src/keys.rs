//! Keys and addresses: sr25519 through `sp-core`, SS58 with prefix 42, and secret URIs as in
//! the Substrate ecosystem (`//Alice`, a mnemonic, `mnemonic//hard/soft///password`, a 0x seed),
//! so an account here is the same account in every Substrate tool.

use crate::{Error, SS58_PREFIX};
use sp_core::crypto::{Pair as _, Ss58AddressFormat, Ss58Codec};

pub use sp_core::crypto::AccountId32 as AccountId;
pub use sp_core::sr25519::{Pair, Public, Signature};

/// Builds an sr25519 key pair from a secret URI (`//Alice`, a mnemonic with optional
/// derivation path and `///password`, or a 0x-prefixed 32-byte seed).
pub fn pair_from_suri(suri: &str) -> Result<Pair, Error> {
    Pair::from_string(suri, None).map_err(|e| Error::InvalidSecret(format!("{e:?}")))
}

/// The account of a key pair.
pub fn account_of(pair: &Pair) -> AccountId {
    AccountId::from(pair.public())
}

/// Shows an account as an SS58 address with Bitorch's prefix.
pub fn to_ss58(account: &AccountId) -> String {
    account.to_ss58check_with_version(Ss58AddressFormat::custom(SS58_PREFIX))
}

/// Parses an SS58 address (prefix 42) or a 0x-prefixed 32-byte hex public key.
pub fn parse_account(s: &str) -> Result<AccountId, Error> {
    let s = s.trim();
    if let Some(hex_part) = s.strip_prefix("0x") {
        let bytes = hex::decode(hex_part).map_err(|_| Error::InvalidAccount(s.to_string()))?;
        let raw: [u8; 32] = bytes.try_into().map_err(|_| Error::InvalidAccount(s.to_string()))?;
        return Ok(AccountId::new(raw));
    }
    let (account, format) = AccountId::from_ss58check_with_version(s)
        .map_err(|_| Error::InvalidAccount(s.to_string()))?;
    let prefix: u16 = format.into();
    if prefix != SS58_PREFIX {
        return Err(Error::WrongSs58Prefix { address: s.to_string(), prefix });
    }
    Ok(account)
}

/// `pair`'s sr25519 signature over `message`.
pub fn sign(pair: &Pair, message: &[u8]) -> Signature {
    use sp_core::crypto::Pair as _;
    pair.sign(message)
}

/// Verifies an sr25519 signature by `signer` over `message`.
pub fn verify(signature: &Signature, message: &[u8], signer: &AccountId) -> bool {
    let public = Public::from_raw(*signer.as_ref());
    <Pair as sp_core::crypto::Pair>::verify(signature, message, &public)
}

/// Decodes 0x-prefixed (or bare) hex.
pub fn decode_hex(s: &str) -> Result<Vec<u8>, Error> {
    let t = s.trim();
    let t = t.strip_prefix("0x").unwrap_or(t);
    hex::decode(t).map_err(|e| Error::InvalidHex(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alice_is_the_substrate_alice() {
        let alice = account_of(&pair_from_suri("//Alice").unwrap());
        assert_eq!(to_ss58(&alice), "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY");
        let bob = account_of(&pair_from_suri("//Bob").unwrap());
        assert_eq!(to_ss58(&bob), "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty");
        assert_eq!(parse_account("5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty").unwrap(), bob);
    }

    #[test]
    fn rejects_bad_accounts() {
        assert!(parse_account("hello").is_err());
        assert!(parse_account("0x1234").is_err());
        // Polkadot (prefix 0) address of Alice.
        assert!(matches!(
            parse_account("15oF4uVJwmo4TdGW7VfQxNLavjCXviqxT9S1MgbjMNHr6Sp5"),
            Err(Error::WrongSs58Prefix { prefix: 0, .. })
        ));
    }

    #[test]
    fn sign_and_verify() {
        let pair = pair_from_suri("//Alice").unwrap();
        let sig = pair.sign(b"hello");
        assert!(verify(&sig, b"hello", &account_of(&pair)));
        assert!(!verify(&sig, b"hellO", &account_of(&pair)));
    }
}
