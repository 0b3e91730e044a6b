//! Encrypted key files in the polkadot.js JSON keystore format, so a key moves between `bitorch`
//! and the wallets Substrate users already have (polkadot.js apps and extension, Talisman,
//! SubWallet all export and import this format).
//!
//! A file is JSON:
//!
//! ```json
//! { "encoded": "<base64>", "encoding": { "content": ["pkcs8", "sr25519"],
//!   "type": ["scrypt", "xsalsa20-poly1305"], "version": "3" },
//!   "address": "5…", "meta": { "name": "…", "whenCreated": 1700000000000 } }
//! ```
//!
//! `encoded` is `salt (32) ‖ N ‖ p ‖ r (u32 little-endian each) ‖ nonce (24) ‖ secretbox`, the
//! secretbox (XSalsa20-Poly1305, tag first as in NaCl) keyed with the first 32 bytes of
//! `scrypt(password, salt, N, r, p, 64)`, around the PKCS#8-style blob polkadot.js writes:
//! a fixed 16-byte header, the 64-byte sr25519 secret in its "ed25519" form (scalar times the
//! cofactor, then the nonce), a 5-byte divider and the 32-byte public key. Version 2 files (no
//! scrypt: the password, zero-padded to 32 bytes, is the key) are read too, never written.
//!
//! Decoding is of untrusted bytes: the file is bounded in size, scrypt's cost is bounded (a file
//! cannot make us allocate gigabytes), and every failure is a typed [`KeystoreError`].

use crate::keys::{account_of, to_ss58, Pair};
use base64::Engine as _;
use crypto_secretbox::aead::{Aead, KeyInit};
use crypto_secretbox::XSalsa20Poly1305;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The largest keystore file read (a real one is about 500 bytes).
pub const MAX_FILE_BYTES: usize = 16 * 1024;
/// scrypt's cost written here: 2^15, what polkadot.js wrote up to its version 13 and every
/// version reads (version 14 writes 2^17, which is read here too).
pub const SCRYPT_LOG_N: u8 = 15;
/// scrypt's block size.
pub const SCRYPT_R: u32 = 8;
/// scrypt's parallelism.
pub const SCRYPT_P: u32 = 1;
/// The most memory a file's scrypt parameters may ask for (`128 · r · N` bytes): 256 MiB, eight
/// times the default's 32 MiB.
const MAX_SCRYPT_MEMORY: u64 = 256 << 20;

const PKCS8_HEADER: [u8; 16] = [48, 83, 2, 1, 1, 48, 5, 6, 3, 43, 101, 112, 4, 34, 4, 32];
const PKCS8_DIVIDER: [u8; 5] = [161, 35, 3, 33, 0];
const SECRET_LEN: usize = 64;
const PUBLIC_LEN: usize = 32;
const PKCS8_LEN: usize = PKCS8_HEADER.len() + SECRET_LEN + PKCS8_DIVIDER.len() + PUBLIC_LEN;
const SALT_LEN: usize = 32;
const PARAMS_LEN: usize = SALT_LEN + 12;
const NONCE_LEN: usize = 24;

/// Why a keystore file could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeystoreError {
    /// Larger than [`MAX_FILE_BYTES`].
    #[error("keystore file is {0} bytes, more than the {MAX_FILE_BYTES} a key file can be")]
    TooLarge(usize),
    /// Not the JSON of a keystore file.
    #[error("not a polkadot.js keystore file: {0}")]
    Malformed(String),
    /// A key type or encryption this implementation does not read.
    #[error("unsupported keystore encoding: {0}")]
    Unsupported(String),
    /// scrypt parameters that are invalid or would cost too much to try.
    #[error("refusing the file's scrypt parameters (N={n}, r={r}, p={p}): {why}")]
    ScryptParams {
        /// Cost.
        n: u32,
        /// Block size.
        r: u32,
        /// Parallelism.
        p: u32,
        /// What is wrong with them.
        why: &'static str,
    },
    /// The secretbox did not open: the password is wrong (or the file was altered).
    #[error("wrong password (or the file was altered): the key did not decrypt")]
    WrongPassword,
    /// The decrypted key is not the key the file says it holds.
    #[error("the decrypted key is account {found}, but the file says {claimed}")]
    AddressMismatch {
        /// The address in the file.
        claimed: String,
        /// The address of the decrypted key.
        found: String,
    },
}

/// The `encoding` object of a keystore file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Encoding {
    /// What is encoded: `["pkcs8", "sr25519"]`.
    pub content: Vec<String>,
    /// How: `["scrypt", "xsalsa20-poly1305"]`.
    #[serde(rename = "type")]
    pub kind: Vec<String>,
    /// `"3"` (or `"2"`, read only).
    pub version: String,
}

/// A keystore file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyFile {
    /// The encrypted key, base64.
    pub encoded: String,
    /// How it is encoded.
    pub encoding: Encoding,
    /// The key's SS58 address.
    pub address: String,
    /// Free-form metadata; polkadot.js keeps `name` and `whenCreated` here.
    #[serde(default)]
    pub meta: serde_json::Map<String, serde_json::Value>,
}

impl KeyFile {
    /// Encrypts `pair` under `password` (fresh random salt and nonce, scrypt at polkadot.js'
    /// default cost), labelled `name`, created at `when_created_ms` (Unix milliseconds).
    pub fn encrypt(pair: &Pair, password: &[u8], name: &str, when_created_ms: u64) -> KeyFile {
        use rand::RngCore;
        let mut salt = [0u8; SALT_LEN];
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        Self::encrypt_with(pair, password, name, when_created_ms, salt, nonce)
    }

    /// [`Self::encrypt`] with a given salt and nonce (tests, reproducible files).
    pub fn encrypt_with(
        pair: &Pair,
        password: &[u8],
        name: &str,
        when_created_ms: u64,
        salt: [u8; SALT_LEN],
        nonce: [u8; NONCE_LEN],
    ) -> KeyFile {
        let keypair: schnorrkel::Keypair = pair.clone().into();
        let mut plain = Zeroizing::new(Vec::with_capacity(PKCS8_LEN));
        plain.extend_from_slice(&PKCS8_HEADER);
        plain.extend_from_slice(&keypair.secret.to_ed25519_bytes());
        plain.extend_from_slice(&PKCS8_DIVIDER);
        plain.extend_from_slice(&keypair.public.to_bytes());
        let key = derive(password, &salt, SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P)
            .expect("the default scrypt parameters are valid");
        let sealed = XSalsa20Poly1305::new(key.as_slice().into())
            .encrypt(&nonce.into(), plain.as_slice())
            .expect("a 117-byte message always encrypts");
        let mut encoded = Vec::with_capacity(PARAMS_LEN + NONCE_LEN + sealed.len());
        encoded.extend_from_slice(&salt);
        encoded.extend_from_slice(&(1u32 << SCRYPT_LOG_N).to_le_bytes());
        encoded.extend_from_slice(&SCRYPT_P.to_le_bytes());
        encoded.extend_from_slice(&SCRYPT_R.to_le_bytes());
        encoded.extend_from_slice(&nonce);
        encoded.extend_from_slice(&sealed);
        let mut meta = serde_json::Map::new();
        meta.insert("name".into(), name.into());
        meta.insert("whenCreated".into(), when_created_ms.into());
        KeyFile {
            encoded: base64::engine::general_purpose::STANDARD.encode(encoded),
            encoding: Encoding {
                content: vec!["pkcs8".into(), "sr25519".into()],
                kind: vec!["scrypt".into(), "xsalsa20-poly1305".into()],
                version: "3".into(),
            },
            address: to_ss58(&account_of(pair)),
            meta,
        }
    }

    /// Parses a file's bytes, checking its size and shape (no decryption).
    pub fn parse(bytes: &[u8]) -> Result<KeyFile, KeystoreError> {
        if bytes.len() > MAX_FILE_BYTES {
            return Err(KeystoreError::TooLarge(bytes.len()));
        }
        let file: KeyFile =
            serde_json::from_slice(bytes).map_err(|e| KeystoreError::Malformed(e.to_string()))?;
        if file.encoding.content.first().map(String::as_str) != Some("pkcs8") {
            return Err(KeystoreError::Unsupported(format!(
                "content {:?} (expected pkcs8)",
                file.encoding.content
            )));
        }
        match file.encoding.content.get(1).map(String::as_str) {
            Some("sr25519") => {}
            other => {
                return Err(KeystoreError::Unsupported(format!(
                    "key type {} (Bitorch accounts are sr25519)",
                    other.unwrap_or("missing")
                )))
            }
        }
        if !file.encoding.kind.iter().any(|k| k == "xsalsa20-poly1305") {
            return Err(KeystoreError::Unsupported(format!(
                "encryption {:?} (expected xsalsa20-poly1305; unencrypted files are refused)",
                file.encoding.kind
            )));
        }
        if file.encoding.version != "3" && file.encoding.version != "2" {
            return Err(KeystoreError::Unsupported(format!(
                "version {} (expected 3 or 2)",
                file.encoding.version
            )));
        }
        Ok(file)
    }

    /// The label in `meta.name`, if any.
    pub fn name(&self) -> Option<&str> {
        self.meta.get("name").and_then(|v| v.as_str())
    }

    /// Decrypts the key with `password`, checking that it is the key of `address`.
    pub fn decrypt(&self, password: &[u8]) -> Result<Pair, KeystoreError> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(self.encoded.trim())
            .map_err(|e| KeystoreError::Malformed(format!("encoded is not base64: {e}")))?;
        let uses_scrypt = self.encoding.kind.iter().any(|k| k == "scrypt");
        let (key, rest) = if uses_scrypt {
            if raw.len() < PARAMS_LEN {
                return Err(KeystoreError::Malformed("encoded is too short".into()));
            }
            let word = |i: usize| u32::from_le_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]);
            let (n, p, r) = (word(SALT_LEN), word(SALT_LEN + 4), word(SALT_LEN + 8));
            let refuse = |why| KeystoreError::ScryptParams { n, r, p, why };
            if !n.is_power_of_two() || n < 2 {
                return Err(refuse("N must be a power of two"));
            }
            if r == 0 || p == 0 || p > 16 {
                return Err(refuse("r must be positive and p between 1 and 16"));
            }
            if 128 * u64::from(r) * u64::from(n) > MAX_SCRYPT_MEMORY {
                return Err(refuse("they need more than 256 MiB"));
            }
            let log_n = n.trailing_zeros() as u8;
            let key = derive(password, &raw[..SALT_LEN], log_n, r, p)
                .ok_or_else(|| refuse("scrypt rejects them"))?;
            (key, &raw[PARAMS_LEN..])
        } else {
            // Version 2: the password itself, zero-padded (or cut) to 32 bytes.
            let mut key = Zeroizing::new([0u8; 32]);
            let n = password.len().min(32);
            key[..n].copy_from_slice(&password[..n]);
            (key, &raw[..])
        };
        if rest.len() < NONCE_LEN + 16 {
            return Err(KeystoreError::Malformed("encoded is too short".into()));
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let plain = Zeroizing::new(
            XSalsa20Poly1305::new(key.as_slice().into())
                .decrypt(nonce.into(), sealed)
                .map_err(|_| KeystoreError::WrongPassword)?,
        );
        if plain.len() != PKCS8_LEN
            || plain[..PKCS8_HEADER.len()] != PKCS8_HEADER
            || plain[PKCS8_HEADER.len() + SECRET_LEN..][..PKCS8_DIVIDER.len()] != PKCS8_DIVIDER
        {
            return Err(KeystoreError::Malformed("the decrypted key is not PKCS#8".into()));
        }
        let secret = &plain[PKCS8_HEADER.len()..][..SECRET_LEN];
        let public = &plain[PKCS8_LEN - PUBLIC_LEN..];
        let secret = schnorrkel::SecretKey::from_ed25519_bytes(secret)
            .map_err(|e| KeystoreError::Malformed(format!("bad sr25519 secret: {e}")))?;
        let pair = Pair::from(secret);
        let found = to_ss58(&account_of(&pair));
        if sp_core::crypto::Pair::public(&pair).0.as_slice() != public {
            return Err(KeystoreError::AddressMismatch { claimed: self.address.clone(), found });
        }
        match crate::keys::parse_account(&self.address) {
            Ok(claimed) if claimed == account_of(&pair) => Ok(pair),
            // An address for another network (polkadot.js keeps the export's SS58 format):
            // compare the public keys behind it.
            _ if same_public(&self.address, public) => Ok(pair),
            _ => Err(KeystoreError::AddressMismatch { claimed: self.address.clone(), found }),
        }
    }

    /// The file as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a key file serializes")
    }
}

/// Whether `address` (SS58 of any prefix) is the public key `public`.
fn same_public(address: &str, public: &[u8]) -> bool {
    use sp_core::crypto::Ss58Codec;
    sp_core::crypto::AccountId32::from_ss58check_with_version(address)
        .is_ok_and(|(a, _)| AsRef::<[u8]>::as_ref(&a) == public)
}

/// The secretbox key: the first 32 bytes of scrypt's 64 (as polkadot.js does).
fn derive(password: &[u8], salt: &[u8], log_n: u8, r: u32, p: u32) -> Option<Zeroizing<[u8; 32]>> {
    let params = scrypt::Params::new(log_n, r, p, 64).ok()?;
    let mut out = Zeroizing::new([0u8; 64]);
    scrypt::scrypt(password, salt, &params, out.as_mut_slice()).ok()?;
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&out[..32]);
    Some(key)
}

/// Whether `s` names a key in a keystore rather than being a secret URI: 1–64 ASCII letters,
/// digits, `-` and `_`, not starting with `0x` (secret URIs are `//…`, mnemonics with spaces, or
/// 0x seeds, so the two never overlap).
pub fn is_key_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && !s.starts_with("0x")
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::pair_from_suri;

    #[test]
    fn round_trip_and_wrong_password() {
        let alice = pair_from_suri("//Alice").unwrap();
        let file = KeyFile::encrypt(&alice, b"correct horse", "alice", 1_700_000_000_000);
        assert_eq!(file.address, "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY");
        let parsed = KeyFile::parse(file.to_json().as_bytes()).unwrap();
        assert_eq!(parsed.name(), Some("alice"));
        let back = parsed.decrypt(b"correct horse").unwrap();
        assert_eq!(account_of(&back), account_of(&alice));
        // The decrypted key signs as Alice.
        let sig = crate::keys::sign(&back, b"m");
        assert!(crate::keys::verify(&sig, b"m", &account_of(&alice)));
        assert_eq!(parsed.decrypt(b"wrong").err(), Some(KeystoreError::WrongPassword));
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        assert!(matches!(KeyFile::parse(b"{}"), Err(KeystoreError::Malformed(_))));
        assert!(matches!(
            KeyFile::parse(&vec![b' '; MAX_FILE_BYTES + 1]),
            Err(KeystoreError::TooLarge(_))
        ));
        let alice = pair_from_suri("//Alice").unwrap();
        let mut file = KeyFile::encrypt(&alice, b"pw", "a", 0);
        file.encoding.content[1] = "ed25519".into();
        assert!(matches!(
            KeyFile::parse(file.to_json().as_bytes()),
            Err(KeystoreError::Unsupported(_))
        ));
        // A file asking scrypt for 2^30 blocks is refused before any work.
        let mut file = KeyFile::encrypt(&alice, b"pw", "a", 0);
        let mut raw = base64::engine::general_purpose::STANDARD.decode(&file.encoded).unwrap();
        raw[SALT_LEN..SALT_LEN + 4].copy_from_slice(&(1u32 << 30).to_le_bytes());
        file.encoded = base64::engine::general_purpose::STANDARD.encode(raw);
        assert!(matches!(file.decrypt(b"pw"), Err(KeystoreError::ScryptParams { .. })));
        // A file claiming another address is refused.
        let mut file = KeyFile::encrypt(&alice, b"pw", "a", 0);
        file.address = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty".into();
        assert!(matches!(file.decrypt(b"pw"), Err(KeystoreError::AddressMismatch { .. })));
    }

    #[test]
    fn names_and_secret_uris_do_not_overlap() {
        assert!(is_key_name("alice"));
        assert!(is_key_name("my-worker_2"));
        assert!(!is_key_name("//Alice"));
        assert!(!is_key_name("0x1234"));
        assert!(!is_key_name(
            "bottom drive obey lake curtain smoke basket hold race lonely fit walk"
        ));
        assert!(!is_key_name(""));
    }
}
