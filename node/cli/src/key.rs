//! `bitorch key`: sr25519 keys with the same fields and output as Substrate's `subkey`.

use crate::keystore::{Keystore, KeystoreArgs, SignerArgs};
use anyhow::{bail, Context, Result};
use bitorch_primitives::keys::{account_of, decode_hex, parse_account, to_ss58, verify};
use bitorch_primitives::keystore::KeyFile;
use bitorch_primitives::{Pair, Signature};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use sp_core::crypto::Pair as _;
use std::path::PathBuf;

/// How to print.
#[derive(Clone, Copy, Debug, Default, ValueEnum, PartialEq, Eq)]
pub enum OutputType {
    /// Human-readable text.
    #[default]
    Text,
    /// JSON.
    Json,
}

/// Where the keystore is, for `key add|list|export|import|rm`.
#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    #[command(flatten)]
    keystore: KeystoreArgs,
    /// Base path whose `keystore` folder is the keystore.
    #[arg(long)]
    base_path: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    output_type: OutputType,
}

impl StoreArgs {
    fn open(&self) -> Result<Keystore> {
        Ok(Keystore::at(self.keystore.dir(self.base_path.as_deref())?))
    }
}

/// `bitorch key` subcommands.
#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// Make an API token (`btr_…`) for a gateway, signed offline with your key: the gateway's
    /// OpenAI API (as `api_key`) and JSON-RPC (`api_key`) then spend from the allowance you
    /// gave it with `wallet approve`.
    ApiToken {
        /// Your key (the account that pays).
        #[command(flatten)]
        signer: SignerArgs,
        /// The gateway's address (its API account).
        #[arg(long)]
        gateway: String,
        /// How long it is valid: `30d`, `12h`, `30m`, `90s`.
        #[arg(long, default_value = "30d")]
        expires: String,
        /// The most the gateway may pay per layer per token for your requests, in BTR, unless
        /// a request names its own `max_price` (default: the gateway's `--max-price`).
        #[arg(long)]
        max_price: Option<String>,
        /// The chain's genesis hash (0x…); asked of `--rpc` when absent.
        #[arg(long)]
        genesis: Option<String>,
        /// A node of the chain, to learn its genesis hash.
        #[arg(long, default_value = "ws://127.0.0.1:9944")]
        rpc: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output_type: OutputType,
    },
    /// Generate a new sr25519 key with a mnemonic.
    Generate {
        /// Number of mnemonic words (12, 15, 18, 21 or 24).
        #[arg(long, short = 'w', default_value_t = 12)]
        words: usize,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output_type: OutputType,
    },
    /// Show the public key and address of a secret URI, or of an address with `--public`.
    Inspect {
        /// A secret URI (`//Alice`, a mnemonic, `phrase//hard/soft///password`), or an address.
        uri: String,
        /// Treat the input as a public key or SS58 address.
        #[arg(long)]
        public: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output_type: OutputType,
    },
    /// Sign a message; prints the signature as hex.
    Sign {
        /// The signer.
        #[command(flatten)]
        signer: SignerArgs,
        /// The message.
        #[arg(long)]
        message: String,
        /// The message is hex.
        #[arg(long)]
        hex: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output_type: OutputType,
    },
    /// Verify a signature.
    Verify {
        /// The signature, hex.
        signature: String,
        /// The signer's SS58 address or hex public key.
        address: String,
        /// The message.
        #[arg(long)]
        message: String,
        /// The message is hex.
        #[arg(long)]
        hex: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output_type: OutputType,
    },
    /// Add a key to the keystore, encrypted with a password: a new one (its recovery phrase is
    /// printed once), or the key of `--suri`.
    Add {
        /// The key's name (letters, digits, `-`, `_`).
        name: String,
        /// Store this secret URI's key instead of generating one.
        #[arg(long)]
        suri: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List the keystore's keys and their addresses.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Print a key's file (encrypted, polkadot.js JSON: polkadot.js apps and the browser
    /// extensions import it), or write it to `--file`.
    Export {
        /// The key's name.
        name: String,
        /// Write here (mode 0600) instead of standard output.
        #[arg(long)]
        file: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Import a polkadot.js JSON key file (as the polkadot.js apps and extensions export it);
    /// its password is checked before it is stored.
    Import {
        /// The file.
        file: PathBuf,
        /// Name to store it under (default: the file's `meta.name`).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Delete a key from the keystore.
    Rm {
        /// The key's name.
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Generate a libp2p node key (ed25519); writes the secret as hex and prints the peer id.
    GenerateNodeKey {
        /// Write the secret here instead of standard output.
        #[arg(long)]
        file: Option<std::path::PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output_type: OutputType,
    },
}

fn message_bytes(message: &str, is_hex: bool) -> Result<Vec<u8>> {
    if is_hex {
        Ok(decode_hex(message)?)
    } else {
        Ok(message.as_bytes().to_vec())
    }
}

fn print_key(
    pair: &Pair,
    phrase: Option<&str>,
    seed: Option<[u8; 32]>,
    uri: Option<&str>,
    out: OutputType,
) {
    let account = account_of(pair);
    let public = format!("0x{}", hex::encode(pair.public().0));
    let address = to_ss58(&account);
    let seed_hex = seed.map(|s| format!("0x{}", hex::encode(s))).unwrap_or_else(|| "n/a".into());
    match out {
        OutputType::Json => {
            let mut v = json!({
                "secretSeed": seed_hex,
                "publicKey": public,
                "accountId": public,
                "ss58PublicKey": address,
                "ss58Address": address,
                "networkId": "substrate",
            });
            if let Some(p) = phrase {
                v["secretPhrase"] = json!(p);
            }
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        OutputType::Text => {
            match (phrase, uri) {
                (Some(p), _) => println!("Secret phrase:       {p}"),
                (None, Some(u)) => println!("Secret Key URI `{u}` is account:"),
                _ => {}
            }
            println!("  Network ID:        substrate");
            println!("  Secret seed:       {seed_hex}");
            println!("  Public key (hex):  {public}");
            println!("  Account ID:        {public}");
            println!("  Public key (SS58): {address}");
            println!("  SS58 Address:      {address}");
        }
    }
}

/// The libp2p peer id of an ed25519 public key: base58 of the identity multihash of the
/// protobuf-encoded public key (type Ed25519 = 1, 32 data bytes).
pub fn peer_id_of_ed25519(public: &[u8; 32]) -> String {
    let mut proto = vec![0x08, 0x01, 0x12, 0x20];
    proto.extend_from_slice(public);
    let mut mh = vec![0x00, proto.len() as u8];
    mh.extend_from_slice(&proto);
    bs58::encode(mh).into_string()
}

/// Runs a key subcommand.
pub fn run(cmd: KeyCmd) -> Result<()> {
    match cmd {
        KeyCmd::ApiToken { signer, gateway, expires, max_price, genesis, rpc, output_type } => {
            let max_price = max_price
                .as_deref()
                .map(bitorch_primitives::parse_amount)
                .transpose()
                .context("--max-price")?;
            let pair = signer.pair()?;
            let gateway = bitorch_primitives::keys::parse_account(&gateway).context("--gateway")?;
            let secs = crate::wallet::parse_blocks(&expires)?;
            let genesis = match genesis {
                Some(g) => {
                    let raw = bitorch_primitives::keys::decode_hex(&g)?;
                    if raw.len() != 32 {
                        bail!("--genesis must be 32 bytes of hex");
                    }
                    bitorch_primitives::H256::from_slice(&raw)
                }
                None => crate::wallet::genesis_of(&rpc)?,
            };
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let expires_at_ms = now_ms.saturating_add(secs.saturating_mul(1000));
            let token = bitorch_primitives::api_token::ApiToken::make(
                &pair,
                gateway,
                expires_at_ms,
                max_price,
                &genesis,
            );
            match output_type {
                OutputType::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "token": token.to_text(),
                        "user": to_ss58(&token.user),
                        "gateway": to_ss58(&token.gateway),
                        "expiresAtMs": token.expires_at_ms,
                        "maxPrice": token.max_price.map(|p| p.to_string()),
                    }))?
                ),
                OutputType::Text => println!("{}", token.to_text()),
            }
        }
        KeyCmd::Generate { words, output_type } => {
            if ![12, 15, 18, 21, 24].contains(&words) {
                bail!("--words must be 12, 15, 18, 21 or 24");
            }
            let mut entropy = vec![0u8; words / 3 * 4];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut entropy);
            let mnemonic = bip39_phrase(&entropy)?;
            let (pair, seed) =
                Pair::from_phrase(&mnemonic, None).map_err(|e| anyhow::anyhow!("{e:?}"))?;
            print_key(&pair, Some(&mnemonic), Some(seed), None, output_type);
        }
        KeyCmd::Inspect { uri, public, output_type } => {
            if public || parse_account(&uri).is_ok() {
                let account = parse_account(&uri)?;
                let public_hex = format!("0x{}", hex::encode(<[u8; 32]>::from(account.clone())));
                match output_type {
                    OutputType::Json => println!(
                        "{}",
                        serde_json::to_string_pretty(&json!({
                            "publicKey": public_hex,
                            "accountId": public_hex,
                            "ss58PublicKey": to_ss58(&account),
                            "ss58Address": to_ss58(&account),
                            "networkId": "substrate",
                        }))?
                    ),
                    OutputType::Text => {
                        println!("Public Key URI `{uri}` is account:");
                        println!("  Network ID/Version: substrate");
                        println!("  Public key (hex):   {public_hex}");
                        println!("  Account ID:         {public_hex}");
                        println!("  Public key (SS58):  {}", to_ss58(&account));
                        println!("  SS58 Address:       {}", to_ss58(&account));
                    }
                }
            } else {
                let (pair, seed) = Pair::from_string_with_seed(&uri, None)
                    .map_err(|e| anyhow::anyhow!("invalid secret URI: {e:?}"))?;
                let is_phrase = !uri.starts_with("//") && !uri.starts_with("0x");
                let phrase =
                    is_phrase.then(|| uri.split("//").next().unwrap_or("").trim().to_string());
                print_key(
                    &pair,
                    phrase.as_deref().filter(|_| !uri.contains("//")),
                    seed,
                    Some(&uri),
                    output_type,
                );
            }
        }
        KeyCmd::Sign { signer, message, hex: is_hex, output_type } => {
            let pair = signer.pair()?;
            let sig = format!("0x{}", hex::encode(pair.sign(&message_bytes(&message, is_hex)?).0));
            match output_type {
                OutputType::Json => println!(
                    "{}",
                    json!({ "signature": sig, "signer": to_ss58(&account_of(&pair)) })
                ),
                OutputType::Text => println!("{sig}"),
            }
        }
        KeyCmd::Verify { signature, address, message, hex: is_hex, output_type } => {
            let raw: [u8; 64] = decode_hex(&signature)?
                .try_into()
                .map_err(|_| anyhow::anyhow!("a signature is 64 bytes"))?;
            let who = parse_account(&address)?;
            let valid = verify(&Signature::from_raw(raw), &message_bytes(&message, is_hex)?, &who);
            if output_type == OutputType::Json {
                println!("{}", json!({ "valid": valid, "signer": to_ss58(&who) }));
            } else if valid {
                println!("Signature verifies correctly.");
            }
            if !valid {
                bail!("Signature invalid.");
            }
        }
        KeyCmd::Add { name, suri, store } => {
            let keystore = store.open()?;
            // Checked before the password is asked (store() checks again as it writes).
            if keystore.contains(&name)? {
                bail!("a key named '{name}' already exists in {}", keystore.dir().display());
            }
            let (pair, phrase) = match &suri {
                Some(s) => (bitorch_primitives::keys::pair_from_suri(s).context("--suri")?, None),
                None => {
                    let mut entropy = [0u8; 16];
                    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut entropy);
                    let phrase = zeroize::Zeroizing::new(bip39_phrase(&entropy)?);
                    let (pair, _) =
                        Pair::from_phrase(&phrase, None).map_err(|e| anyhow::anyhow!("{e:?}"))?;
                    (pair, Some(phrase))
                }
            };
            let pw = crate::keystore::password(
                &store.keystore,
                &format!("Password for the new key '{name}': "),
                true,
            )?;
            let file = KeyFile::encrypt(&pair, pw.as_bytes(), &name, now_ms());
            let path = keystore.store(&name, &file)?;
            let address = to_ss58(&account_of(&pair));
            match store.output_type {
                OutputType::Json => {
                    let mut v = json!({ "name": name, "address": address, "file": path });
                    if let Some(p) = &phrase {
                        v["secretPhrase"] = json!(p.as_str());
                    }
                    println!("{}", serde_json::to_string_pretty(&v)?);
                }
                OutputType::Text => {
                    println!("Key '{name}' stored in {}", path.display());
                    println!("  SS58 Address:      {address}");
                    if let Some(p) = &phrase {
                        println!("  Secret phrase:     {}", p.as_str());
                        println!("Write the phrase down: it recovers the key if the file or its password is lost.");
                    }
                }
            }
        }
        KeyCmd::List { store } => {
            let keystore = store.open()?;
            let keys = keystore.list()?;
            match store.output_type {
                OutputType::Json => {
                    let v: Vec<_> = keys
                        .iter()
                        .map(|(name, a)| match a {
                            Ok(address) => json!({ "name": name, "address": address }),
                            Err(e) => json!({ "name": name, "error": e }),
                        })
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&v)?);
                }
                OutputType::Text => {
                    if keys.is_empty() {
                        println!("no keys in {} (bitorch key add NAME)", keystore.dir().display());
                    }
                    for (name, a) in keys {
                        match a {
                            Ok(address) => println!("{name:<24} {address}"),
                            Err(e) => println!("{name:<24} unreadable: {e}"),
                        }
                    }
                }
            }
        }
        KeyCmd::Export { name, file, store } => {
            let keystore = store.open()?;
            let json = keystore.file(&name)?.to_json();
            match file {
                Some(path) => {
                    use std::io::Write;
                    use std::os::unix::fs::OpenOptionsExt;
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&path)
                        .with_context(|| {
                            format!("creating {} (it must not exist)", path.display())
                        })?;
                    f.write_all(json.as_bytes())?;
                    f.write_all(b"\n")?;
                    eprintln!("key '{name}' written to {}", path.display());
                }
                None => println!("{json}"),
            }
        }
        KeyCmd::Import { file, name, store } => {
            let keystore = store.open()?;
            let bytes = crate::keystore::read_bounded(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let key_file =
                KeyFile::parse(&bytes).with_context(|| format!("reading {}", file.display()))?;
            let name = match name.or_else(|| key_file.name().map(str::to_string)) {
                Some(n) => n,
                None => bail!("the file has no meta.name; pass --name"),
            };
            let pw = crate::keystore::password(
                &store.keystore,
                &format!("Password of {}: ", file.display()),
                false,
            )?;
            let pair = key_file
                .decrypt(pw.as_bytes())
                .with_context(|| format!("opening {}", file.display()))?;
            let mut key_file = key_file;
            key_file.meta.insert("name".into(), json!(name));
            let path = keystore.store(&name, &key_file)?;
            let address = to_ss58(&account_of(&pair));
            match store.output_type {
                OutputType::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({ "name": name, "address": address, "file": path })
                    )?
                ),
                OutputType::Text => {
                    println!("Key '{name}' imported into {}", path.display());
                    println!("  SS58 Address:      {address}");
                }
            }
        }
        KeyCmd::Rm { name, store } => {
            let path = store.open()?.remove(&name)?;
            match store.output_type {
                OutputType::Json => {
                    println!("{}", json!({ "name": name, "removed": path }))
                }
                OutputType::Text => println!("removed {}", path.display()),
            }
        }
        KeyCmd::GenerateNodeKey { file, output_type } => {
            let (pair, seed) = sp_core::ed25519::Pair::generate();
            let peer = peer_id_of_ed25519(&pair.public().0);
            let secret = hex::encode(seed);
            if let Some(path) = &file {
                if path.exists() {
                    bail!("{} already exists; not overwriting a node key", path.display());
                }
                std::fs::write(path, &secret)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            match (output_type, &file) {
                (OutputType::Json, Some(path)) => {
                    println!("{}", json!({ "peerId": peer, "file": path }))
                }
                (OutputType::Json, None) => {
                    println!("{}", json!({ "peerId": peer, "secret": secret }))
                }
                (OutputType::Text, Some(_)) => eprintln!("{peer}"),
                (OutputType::Text, None) => {
                    println!("{secret}");
                    eprintln!("{peer}");
                }
            }
        }
    }
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn bip39_phrase(entropy: &[u8]) -> Result<String> {
    Ok(bip39::Mnemonic::from_entropy(entropy).map_err(|e| anyhow::anyhow!("{e}"))?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_id_has_libp2p_shape() {
        let id = peer_id_of_ed25519(&[7u8; 32]);
        assert!(id.starts_with("12D3KooW"), "{id}");
    }
}
