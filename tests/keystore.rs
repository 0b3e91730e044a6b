//! End-to-end: the keystore (`bitorch key add|list|export|import|rm`) writes polkadot.js JSON
//! key files that polkadot.js' own keyring opens and signs with, and reads the files that
//! keyring writes; names from the keystore work wherever a key is taken (`wallet … --suri`,
//! `node --validator`).
//!
//! Needs `BITORCH_POLKADOT_JS`: a folder with `@polkadot/keyring` installed and
//! `interop.mjs` (`scripts/keystore-interop.sh` makes it; `scripts/test.sh` sets it).

mod common;

use common::dev::DevNode;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const ALICE: &str = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";
const BOB: &str = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty";

/// `bitorch args…` with `password` in `BITORCH_PASSWORD` (or none at all), stdin closed.
fn bitorch(args: &[&str], password: Option<&str>) -> Output {
    let mut cmd = Command::new(common::net::BIN);
    cmd.args(args).env_remove("BITORCH_PASSWORD").env_remove("BITORCH_KEYSTORE");
    if let Some(p) = password {
        cmd.env("BITORCH_PASSWORD", p);
    }
    cmd.stdin(std::process::Stdio::null()).output().unwrap()
}

fn ok(args: &[&str], password: Option<&str>) -> String {
    let out = bitorch(args, password);
    assert!(out.status.success(), "bitorch {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn fails(args: &[&str], password: Option<&str>) -> String {
    let out = bitorch(args, password);
    assert!(!out.status.success(), "bitorch {args:?} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn key_names(base: &str) -> Vec<String> {
    let list: Value = serde_json::from_str(&ok(
        &["key", "list", "--base-path", base, "--output-type", "json"],
        None,
    ))
    .unwrap();
    list.as_array().unwrap().iter().map(|k| k["name"].as_str().unwrap().to_string()).collect()
}

/// polkadot.js opens `file` with `password`, signs `message`, and exports the key again under
/// `export_password`.
fn polkadot_js(file: &Path, password: &str, message: &str, export_password: &str) -> Output {
    let dir = std::env::var("BITORCH_POLKADOT_JS").expect(
        "BITORCH_POLKADOT_JS must name a folder with @polkadot/keyring (scripts/test.sh sets it)",
    );
    Command::new("node")
        .current_dir(&dir)
        .arg(Path::new(&dir).join("interop.mjs"))
        .arg(file)
        .arg(message)
        .env("KEY_PASSWORD", password)
        .env("EXPORT_PASSWORD", export_password)
        .output()
        .expect("run node (Node.js)")
}

#[test]
fn key_files_move_to_polkadot_js_and_back_with_the_same_address() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    let base = base.to_str().unwrap();

    // A key added from a secret URI is stored encrypted, mode 0600 in a 0700 folder.
    let added: Value = serde_json::from_str(&ok(
        &["key", "add", "bob", "--suri", "//Bob", "--base-path", base, "--output-type", "json"],
        Some("first password"),
    ))
    .unwrap();
    assert_eq!(added["address"], BOB);
    let file = Path::new(base).join("keystore/bob.json");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let folder = Path::new(base).join("keystore");
    assert_eq!(std::fs::metadata(&folder).unwrap().permissions().mode() & 0o777, 0o700);
    let on_disk = std::fs::read_to_string(&file).unwrap();
    assert!(!on_disk.contains("//Bob"));
    // The same name again is refused and the key is unchanged.
    let err = fails(&["key", "add", "bob", "--suri", "//Alice", "--base-path", base], Some("x"));
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), on_disk);

    // bitorch → polkadot.js: exported, opened by @polkadot/keyring, which signs as Bob.
    let exported = dir.path().join("bob-export.json");
    ok(&["key", "export", "bob", "--file", exported.to_str().unwrap(), "--base-path", base], None);
    assert_eq!(std::fs::metadata(&exported).unwrap().permissions().mode() & 0o777, 0o600);
    let out = polkadot_js(&exported, "first password", "hello from polkadot.js", "second password");
    assert!(out.status.success(), "polkadot.js: {}", String::from_utf8_lossy(&out.stderr));
    let js: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(js["address"], BOB);
    let verified = ok(
        &[
            "key",
            "verify",
            js["signature"].as_str().unwrap(),
            BOB,
            "--message",
            "hello from polkadot.js",
        ],
        None,
    );
    assert!(verified.contains("verifies"), "{verified}");
    // polkadot.js refuses the wrong password too.
    assert!(!polkadot_js(&exported, "not it", "m", "x").status.success());

    // polkadot.js → bitorch: its own export (its own scrypt cost and nonce) imports with its
    // password, and the imported key signs as Bob.
    let from_js = dir.path().join("from-js.json");
    std::fs::write(&from_js, js["exported"].to_string()).unwrap();
    let err = fails(
        &["key", "import", from_js.to_str().unwrap(), "--name", "fromjs", "--base-path", base],
        Some("first password"),
    );
    assert!(err.contains("wrong password"), "{err}");
    assert_eq!(key_names(base), ["bob"], "a refused import stores nothing");
    let imported: Value = serde_json::from_str(&ok(
        &[
            "key",
            "import",
            from_js.to_str().unwrap(),
            "--name",
            "fromjs",
            "--base-path",
            base,
            "--output-type",
            "json",
        ],
        Some("second password"),
    ))
    .unwrap();
    assert_eq!(imported["address"], BOB);
    assert_eq!(key_names(base), ["bob", "fromjs"]);
    let sig = ok(
        &["key", "sign", "--suri", "fromjs", "--message", "m", "--base-path", base],
        Some("second password"),
    );
    ok(&["key", "verify", sig.trim(), BOB, "--message", "m"], None);

    // Passwords: from a file; a wrong one is a clear error; none at all (no terminal) too.
    let pw_file = dir.path().join("pw");
    std::fs::write(&pw_file, "first password\n").unwrap();
    let pw = pw_file.to_str().unwrap();
    let sig = ok(
        &[
            "key",
            "sign",
            "--suri",
            "bob",
            "--message",
            "m",
            "--base-path",
            base,
            "--password-file",
            pw,
        ],
        None,
    );
    ok(&["key", "verify", sig.trim(), BOB, "--message", "m"], None);
    let err = fails(
        &["key", "sign", "--suri", "bob", "--message", "m", "--base-path", base],
        Some("nope"),
    );
    assert!(err.contains("wrong password"), "{err}");
    let err = fails(&["key", "sign", "--suri", "bob", "--message", "m", "--base-path", base], None);
    assert!(err.contains("--password-file") && err.contains("BITORCH_PASSWORD"), "{err}");
    let err = fails(
        &["key", "sign", "--suri", "carol", "--message", "m", "--base-path", base],
        Some("x"),
    );
    assert!(err.contains("no key named 'carol'"), "{err}");

    // A damaged file is a typed error, not a crash.
    std::fs::write(Path::new(base).join("keystore/broken.json"), b"{\"encoded\": 1}").unwrap();
    let err = fails(
        &["key", "sign", "--suri", "broken", "--message", "m", "--base-path", base],
        Some("x"),
    );
    assert!(err.contains("not a polkadot.js keystore file"), "{err}");

    ok(&["key", "rm", "fromjs", "--base-path", base], None);
    assert_eq!(key_names(base), ["bob", "broken"]);
}

#[test]
fn keystore_names_sign_transactions_and_author_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let keys = keys.to_str().unwrap();
    let pw_file = dir.path().join("pw");
    std::fs::write(&pw_file, "validator password\n").unwrap();
    let pw = pw_file.to_str().unwrap();
    ok(
        &[
            "key",
            "add",
            "alice",
            "--suri",
            "//Alice",
            "--keystore-path",
            keys,
            "--password-file",
            pw,
        ],
        None,
    );
    ok(&["key", "add", "bob", "--suri", "//Bob", "--keystore-path", keys], Some("wallet password"));

    // The dev chain's validator, by keystore name, authors blocks.
    let args: Vec<String> =
        ["--validator", "alice", "--keystore-path", keys, "--password-file", pw]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let node = DevNode::start_in(dir.path(), &args, Duration::from_secs(60));
    node.wait_for_height(3);

    // A transfer signed with the keystore's Bob moves Bob's balance.
    let before = node.free(BOB);
    let alice_before = node.free(ALICE);
    ok(
        &[
            "wallet",
            "transfer",
            "--suri",
            "bob",
            "--to",
            ALICE,
            "--amount",
            "2",
            "--rpc",
            &node.url(),
            "--keystore-path",
            keys,
        ],
        Some("wallet password"),
    );
    assert!(before - node.free(BOB) >= 2_000_000_000_000, "Bob paid 2 BTR and a fee");
    assert!(node.free(ALICE) >= alice_before + 2_000_000_000_000);
}
