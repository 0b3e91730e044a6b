//! The keystore: encrypted key files (`<base path>/keystore/NAME.json`, polkadot.js JSON format,
//! mode 0600) and how every option that takes a key resolves it.
//!
//! An option that takes a key (`--suri`, `--validator`, `--worker-key`, `--api-account`) takes
//! either a secret URI (`//Alice`, a mnemonic, a 0x seed; for dev keys) or the name of a key in
//! the keystore (letters, digits, `-`, `_`). A name is decrypted with a password from
//! `--password-file`, else the `BITORCH_PASSWORD` environment variable, else a prompt on the
//! terminal; never from the command line.

use anyhow::{bail, Context, Result};
use bitorch_primitives::keys::{account_of, pair_from_suri, to_ss58};
use bitorch_primitives::keystore::{is_key_name, KeyFile, MAX_FILE_BYTES};
use bitorch_primitives::Pair;
use clap::Args;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use zeroize::Zeroizing;

/// The environment variable a password may come from.
pub const PASSWORD_ENV: &str = "BITORCH_PASSWORD";

/// Where the keystore is and how to unlock it.
#[derive(Args, Debug, Clone, Default)]
pub struct KeystoreArgs {
    /// The keystore folder (default: `<base path>/keystore`, the base path being
    /// `~/.local/share/bitorch` unless `--base-path` says otherwise).
    #[arg(long, env = "BITORCH_KEYSTORE")]
    pub keystore_path: Option<PathBuf>,
    /// Read the keystore password from this file (its first line). Without it the password
    /// comes from `BITORCH_PASSWORD`, else a prompt on the terminal.
    #[arg(long)]
    pub password_file: Option<PathBuf>,
}

impl KeystoreArgs {
    /// The keystore folder, given the command's base path (if it has one).
    pub fn dir(&self, base: Option<&Path>) -> Result<PathBuf> {
        match (&self.keystore_path, base) {
            (Some(p), _) => Ok(p.clone()),
            (None, Some(b)) => Ok(b.join("keystore")),
            (None, None) => Ok(crate::node::default_base_path()?.join("keystore")),
        }
    }
}

/// The key a command signs with: `--suri` (a keystore name or a secret URI) and where the
/// keystore is.
#[derive(Args, Debug, Clone)]
pub struct SignerArgs {
    /// The signer: a keystore name (`bitorch key list`) or a secret URI (`//Alice`, a
    /// mnemonic, …).
    #[arg(long)]
    pub suri: String,
    #[command(flatten)]
    pub keystore: KeystoreArgs,
    /// Base path whose `keystore` folder holds named keys.
    #[arg(long)]
    pub base_path: Option<PathBuf>,
}

impl SignerArgs {
    /// The signer's key pair (decrypted with the keystore password for a name).
    pub fn pair(&self) -> Result<Pair> {
        resolve(&self.suri, &self.keystore, self.base_path.as_deref(), "--suri")
    }
}

/// A password read once per process (a node resolving three keys asks once).
static PASSWORD: Mutex<Option<Zeroizing<String>>> = Mutex::new(None);

/// The keystore password: `--password-file`, else `BITORCH_PASSWORD`, else a prompt (twice,
/// when `confirm`). Fails clearly when none is available.
pub fn password(args: &KeystoreArgs, prompt: &str, confirm: bool) -> Result<Zeroizing<String>> {
    if let Some(path) = &args.password_file {
        let mut raw = Zeroizing::new(String::new());
        std::fs::File::open(path)
            .and_then(|f| f.take(4096).read_to_string(&mut raw))
            .with_context(|| format!("reading --password-file {}", path.display()))?;
        let line = raw.lines().next().unwrap_or("");
        if line.is_empty() {
            bail!("--password-file {} is empty", path.display());
        }
        return Ok(Zeroizing::new(line.to_string()));
    }
    if let Ok(p) = std::env::var(PASSWORD_ENV) {
        if p.is_empty() {
            bail!("{PASSWORD_ENV} is set but empty");
        }
        return Ok(Zeroizing::new(p));
    }
    let mut cached = PASSWORD.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = cached.as_ref() {
        return Ok(p.clone());
    }
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        bail!("a keystore password is needed: pass --password-file FILE or set {PASSWORD_ENV} (no terminal to prompt on)");
    }
    let p = Zeroizing::new(rpassword::prompt_password(prompt).context("reading the password")?);
    if p.is_empty() {
        bail!("empty password");
    }
    if confirm {
        let again = Zeroizing::new(rpassword::prompt_password("Repeat the password: ")?);
        if *again != *p {
            bail!("the passwords differ");
        }
    }
    *cached = Some(p.clone());
    Ok(p)
}

/// A folder of key files.
pub struct Keystore {
    dir: PathBuf,
}

impl Keystore {
    /// The keystore at `dir` (created, mode 0700, when a key is first added).
    pub fn at(dir: PathBuf) -> Keystore {
        Keystore { dir }
    }

    /// Its folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, name: &str) -> Result<PathBuf> {
        if !is_key_name(name) {
            bail!("'{name}' is not a key name: use 1 to 64 letters, digits, '-' or '_' (not starting with 0x)");
        }
        Ok(self.dir.join(format!("{name}.json")))
    }

    /// Whether a file named `name` is in the store (readable or not).
    pub fn contains(&self, name: &str) -> Result<bool> {
        Ok(self.path_of(name)?.exists())
    }

    /// Reads and parses `name`'s file (no decryption).
    pub fn file(&self, name: &str) -> Result<KeyFile> {
        let path = self.path_of(name)?;
        let bytes = read_bounded(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow::anyhow!(
                    "no key named '{name}' in the keystore {} (bitorch key list)",
                    self.dir.display()
                )
            } else {
                anyhow::anyhow!("reading {}: {e}", path.display())
            }
        })?;
        KeyFile::parse(&bytes).with_context(|| format!("reading {}", path.display()))
    }

    /// Decrypts `name` with `password`.
    pub fn load(&self, name: &str, password: &str) -> Result<Pair> {
        self.file(name)?
            .decrypt(password.as_bytes())
            .with_context(|| format!("opening key '{name}' of {}", self.dir.display()))
    }

    /// Writes `file` as `name`, mode 0600, refusing to overwrite. Written to a temporary file
    /// first and renamed, so a crash leaves either no key or the whole key.
    pub fn store(&self, name: &str, file: &KeyFile) -> Result<PathBuf> {
        let path = self.path_of(name)?;
        create_private_dir(&self.dir)?;
        if self.contains(name)? {
            bail!("a key named '{name}' already exists ({}); remove it first", path.display());
        }
        let tmp = self.dir.join(format!(".{name}.json.tmp"));
        write_private(&tmp, file.to_json().as_bytes())?;
        // A hard link fails if the name appeared meanwhile: never overwrite a key.
        std::fs::hard_link(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        let _ = std::fs::remove_file(&tmp);
        Ok(path)
    }

    /// The keys in the store: (name, address), sorted by name. Unreadable files are listed
    /// with the reason instead of an address.
    pub fn list(&self) -> Result<Vec<(String, Result<String, String>)>> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.dir.display())),
        };
        for entry in entries {
            let entry = entry?;
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let Some(name) = file_name.strip_suffix(".json") else { continue };
            if !is_key_name(name) {
                continue;
            }
            let address = read_bounded(&entry.path())
                .map_err(|e| e.to_string())
                .and_then(|b| KeyFile::parse(&b).map_err(|e| e.to_string()))
                .map(|f| f.address);
            out.push((name.to_string(), address));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Deletes `name`'s file.
    pub fn remove(&self, name: &str) -> Result<PathBuf> {
        let path = self.path_of(name)?;
        std::fs::remove_file(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow::anyhow!("no key named '{name}' in {}", self.dir.display())
            } else {
                anyhow::anyhow!("removing {}: {e}", path.display())
            }
        })?;
        Ok(path)
    }
}

/// Reads a file of at most [`MAX_FILE_BYTES`] (one more is read, so the parser reports the
/// size).
pub fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(MAX_FILE_BYTES as u64 + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// Resolves an option that takes a key: a keystore name (decrypted with the keystore
/// password) or a secret URI. `what` names the option in errors.
pub fn resolve(spec: &str, args: &KeystoreArgs, base: Option<&Path>, what: &str) -> Result<Pair> {
    if is_key_name(spec) {
        let store = Keystore::at(args.dir(base)?);
        // Check the file first, so a mistyped name fails before a password prompt.
        store.file(spec).with_context(|| what.to_string())?;
        let pw = password(args, &format!("Password for key '{spec}': "), false)?;
        let pair = store.load(spec, &pw).with_context(|| what.to_string())?;
        tracing::debug!(target: "keystore", name = spec, address = %to_ss58(&account_of(&pair)), "key opened");
        Ok(pair)
    } else {
        pair_from_suri(spec).with_context(|| {
            format!("{what}: not a secret URI (and not a keystore name: letters, digits, '-', '_')")
        })
    }
}
