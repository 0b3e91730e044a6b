//! The node's persistent libp2p identity: an ed25519 secret in a file under the base path.
//!
//! The file holds the 32-byte secret as 64 hex characters, the format that
//! `bitorch key generate-node-key --file` writes; 32 raw bytes are accepted too. It is
//! created (mode 0600 on Unix) on first start and reused after, so the `PeerId` is stable.

use crate::error::Error;
use libp2p::identity::Keypair;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Name of the key file inside the network directory.
pub const KEY_FILE: &str = "secret_ed25519";

/// Where the node key lives or what it is.
#[derive(Clone, Debug)]
pub enum NodeKey {
    /// `dir/secret_ed25519`, created on first start and reused after.
    Dir(PathBuf),
    /// A key the caller already holds.
    Keypair(Keypair),
    /// A fresh random key for this run only (tests, throwaway nodes).
    Ephemeral,
}

impl NodeKey {
    /// Loads, creates or generates the keypair.
    pub fn keypair(&self) -> Result<Keypair, Error> {
        match self {
            NodeKey::Dir(dir) => load_or_create(dir),
            NodeKey::Keypair(k) => Ok(k.clone()),
            NodeKey::Ephemeral => Ok(Keypair::generate_ed25519()),
        }
    }
}

/// Reads `dir/secret_ed25519`, or creates it with a new random key if it does not exist.
pub fn load_or_create(dir: &Path) -> Result<Keypair, Error> {
    let path = dir.join(KEY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => parse(&bytes).ok_or(Error::MalformedKey { path }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(dir, &path),
        Err(source) => Err(Error::KeyIo { path, source }),
    }
}

/// Reads a key file in the `generate-node-key` format.
pub fn read(path: &Path) -> Result<Keypair, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::KeyIo { path: path.into(), source })?;
    parse(&bytes).ok_or_else(|| Error::MalformedKey { path: path.into() })
}

fn parse(bytes: &[u8]) -> Option<Keypair> {
    let secret: [u8; 32] = match std::str::from_utf8(bytes).ok().map(str::trim) {
        Some(text) if text.len() == 64 => hex::decode(text).ok()?.try_into().ok()?,
        _ => bytes.try_into().ok()?,
    };
    Keypair::ed25519_from_bytes(secret).ok()
}

fn create(dir: &Path, path: &Path) -> Result<Keypair, Error> {
    let io = |source| Error::KeyIo { path: path.into(), source };
    std::fs::create_dir_all(dir).map_err(io)?;
    let (keypair, secret) = generate();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io)?;
    file.write_all(hex::encode(secret).as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    tracing::info!(target: "network", path = %path.display(), peer = %keypair.public().to_peer_id(), "created a new node key");
    Ok(keypair)
}

fn generate() -> (Keypair, [u8; 32]) {
    let secret = libp2p::identity::ed25519::SecretKey::generate();
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(secret.as_ref());
    let keypair: Keypair = libp2p::identity::ed25519::Keypair::from(secret).into();
    (keypair, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let net = dir.path().join("network");
        let a = load_or_create(&net).expect("create");
        let b = load_or_create(&net).expect("reuse");
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        let text = std::fs::read_to_string(net.join(KEY_FILE)).expect("read");
        assert_eq!(text.len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(net.join(KEY_FILE)).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn reads_the_cli_hex_format_and_raw_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let expected = Keypair::ed25519_from_bytes([7u8; 32]).expect("key").public().to_peer_id();
        let hex_file = dir.path().join("hex");
        std::fs::write(&hex_file, format!("{}\n", hex::encode([7u8; 32]))).expect("write");
        assert_eq!(read(&hex_file).expect("hex").public().to_peer_id(), expected);
        let raw_file = dir.path().join("raw");
        std::fs::write(&raw_file, [7u8; 32]).expect("write");
        assert_eq!(read(&raw_file).expect("raw").public().to_peer_id(), expected);
    }

    #[test]
    fn malformed_key_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(KEY_FILE), "not a key").expect("write");
        assert!(matches!(load_or_create(dir.path()), Err(Error::MalformedKey { .. })));
    }
}
