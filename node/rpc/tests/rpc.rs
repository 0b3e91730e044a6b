//! Drives a node's JSON-RPC the way a wallet would, with a chain whose blocks the test authors
//! by hand (deterministic), and checks every kind of bad input is refused with a clear error
//! and changes nothing.

use bitorch_chain_spec::ChainSpec;
use bitorch_primitives::keys::{account_of, pair_from_suri, to_ss58};
use bitorch_primitives::{Hash, Pair, UNIT};
use bitorch_rpc::NodeInfo;
use bitorch_runtime::{balances, Call, UncheckedExtrinsic};
use bitorch_service::{service, Chain, Handle, PoolLimits};
use jsonrpsee::core::client::{ClientT, SubscriptionClientT};
use jsonrpsee::rpc_params;
use jsonrpsee::ws_client::{WsClient, WsClientBuilder};
use parity_scale_codec::Encode;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

struct Node {
    handle: Handle,
    client: WsClient,
    genesis: Hash,
    cancel: CancellationToken,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn start() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::open(&dir.path().join("db"), ChainSpec::dev().unwrap()).unwrap();
    let genesis = chain.genesis();
    let cancel = CancellationToken::new();
    let (handle, _task) = service::spawn(chain, PoolLimits::default(), cancel.clone());
    let module = bitorch_rpc::module(
        handle.clone(),
        NodeInfo { name: "test".into(), version: "0".into() },
        None,
        bitorch_rpc::RpcMethods::Safe,
    )
    .unwrap();
    let (server, addr) =
        bitorch_rpc::start("127.0.0.1:0".parse().unwrap(), module, Default::default())
            .await
            .unwrap();
    let c = cancel.clone();
    tokio::spawn(async move {
        c.cancelled().await;
        let _ = server.stop();
    });
    let client = WsClientBuilder::default().build(format!("ws://{addr}")).await.unwrap();
    Node { handle, client, genesis, cancel, addr, _dir: dir }
}

impl Node {
    async fn author(&self) {
        let alice = pair_from_suri("//Alice").unwrap();
        self.handle.author_and_import(alice).await.unwrap();
    }

    async fn state_root(&self) -> Hash {
        self.handle.state_root().await.unwrap()
    }

    async fn pool_len(&self) -> usize {
        self.handle.pool_len().await.unwrap()
    }

    async fn free(&self, who: &Pair) -> u128 {
        let v: Value = self
            .client
            .request("bitorch_account", rpc_params![to_ss58(&account_of(who))])
            .await
            .unwrap();
        v["free"].as_str().unwrap().parse().unwrap()
    }

    async fn submit_err(&self, hex_xt: String) -> String {
        let r: Result<Value, _> =
            self.client.request("author_submitExtrinsic", rpc_params![hex_xt]).await;
        match r {
            Err(jsonrpsee::core::ClientError::Call(e)) => e.message().to_string(),
            other => panic!("expected an RPC error, got {other:?}"),
        }
    }
}

/// `call` signed by `pair` with `nonce`, valid until block `valid_until`, as RPC hex.
fn signed_hex(pair: &Pair, genesis: &Hash, nonce: u64, valid_until: u64, call: Call) -> String {
    let xt = UncheckedExtrinsic::sign(pair, genesis, nonce, 0, valid_until, call);
    format!("0x{}", hex::encode(xt.encode()))
}

fn transfer(
    pair: &Pair,
    genesis: &Hash,
    nonce: u64,
    valid_until: u64,
    to: &Pair,
    amount: u128,
) -> String {
    let call = Call::Balances(balances::Call::Transfer { dest: account_of(to), amount });
    signed_hex(pair, genesis, nonce, valid_until, call)
}

#[tokio::test]
async fn transfer_is_included_and_watched_to_finality() {
    let node = start().await;
    let (alice, bob) = (pair_from_suri("//Alice").unwrap(), pair_from_suri("//Bob").unwrap());
    let bob_before = node.free(&bob).await;
    let alice_before = node.free(&alice).await;
    let issuance = |v: Value| -> u128 { v.as_str().unwrap().parse().unwrap() };
    let issued_before =
        issuance(node.client.request("bitorch_totalIssuance", rpc_params![]).await.unwrap());
    let xt = transfer(&alice, &node.genesis, 0, 100, &bob, 10 * UNIT);
    let mut sub = node
        .client
        .subscribe::<Value, _>(
            "author_submitAndWatchExtrinsic",
            rpc_params![xt],
            "author_unwatchExtrinsic",
        )
        .await
        .unwrap();
    assert_eq!(sub.next().await.unwrap().unwrap(), Value::from("ready"));
    let pending: Vec<String> =
        node.client.request("author_pendingExtrinsics", rpc_params![]).await.unwrap();
    assert_eq!(pending.len(), 1);
    let next: u64 = node
        .client
        .request("system_accountNextIndex", rpc_params![to_ss58(&account_of(&alice))])
        .await
        .unwrap();
    assert_eq!(next, 1, "the pooled transaction counts toward the next index");
    node.author().await;
    let in_block = sub.next().await.unwrap().unwrap();
    let finalized = sub.next().await.unwrap().unwrap();
    assert!(in_block.get("inBlock").is_some(), "{in_block}");
    assert_eq!(in_block["inBlock"], finalized["finalized"]);
    assert_eq!(node.free(&bob).await, bob_before + 10 * UNIT);
    // The fee is burned: issuance falls by exactly what Alice paid beyond the amount.
    let issued_after =
        issuance(node.client.request("bitorch_totalIssuance", rpc_params![]).await.unwrap());
    let fee = issued_before - issued_after;
    assert!(fee > 0);
    assert_eq!(node.free(&alice).await, alice_before - 10 * UNIT - fee);

    let block: Value = node.client.request("chain_getBlock", rpc_params![]).await.unwrap();
    assert_eq!(block["block"]["extrinsics"].as_array().unwrap().len(), 1);
    assert!(block["justifications"].is_array());
    let head: Value = node.client.request("chain_getHeader", rpc_params![]).await.unwrap();
    assert_eq!(head["number"], "0x1");
    let hash1: Value = node.client.request("chain_getBlockHash", rpc_params![1]).await.unwrap();
    let fin: Value = node.client.request("chain_getFinalizedHead", rpc_params![]).await.unwrap();
    assert_eq!(hash1, fin);
    assert_eq!(hash1, in_block["inBlock"]);
    let health: Value = node.client.request("system_health", rpc_params![]).await.unwrap();
    assert_eq!(health["isSyncing"], false);
    let chain: String = node.client.request("system_chain", rpc_params![]).await.unwrap();
    assert_eq!(chain, "Bitorch Development");
    let props: Value = node.client.request("system_properties", rpc_params![]).await.unwrap();
    assert_eq!(props["ss58Format"], 42);
    let consensus: Value =
        node.client.request("bitorch_consensusState", rpc_params![]).await.unwrap();
    assert_eq!(consensus["height"], 2);
    assert_eq!(consensus["finalizedNumber"], 1);
    assert_eq!(consensus["validators"][0]["address"], to_ss58(&account_of(&alice)));
    assert_eq!(consensus["validators"][0]["votingPower"], 1_100, "Alice bonds 1,100 BTR");

    // Operator methods are refused by a server that serves safe methods only.
    let peer = "12D3KooWKPsswJhqGvMMjDbtzHjaRpcdZoTADHb8XVcuUHSKCva3";
    let refused =
        node.client.request::<Value, _>("system_banPeer", rpc_params![peer, 60]).await.unwrap_err();
    assert!(refused.to_string().contains("--rpc-methods unsafe"), "{refused}");
    let banned: Value = node.client.request("system_bannedPeers", rpc_params![]).await.unwrap();
    assert_eq!(banned, serde_json::json!([]));
}

#[tokio::test]
async fn new_heads_subscription_streams_blocks() {
    let node = start().await;
    let mut sub = node
        .client
        .subscribe::<Value, _>(
            "chain_subscribeNewHeads",
            rpc_params![],
            "chain_unsubscribeNewHeads",
        )
        .await
        .unwrap();
    let mut fin = node
        .client
        .subscribe::<Value, _>(
            "chain_subscribeFinalizedHeads",
            rpc_params![],
            "chain_unsubscribeFinalizedHeads",
        )
        .await
        .unwrap();
    node.author().await;
    node.author().await;
    assert_eq!(sub.next().await.unwrap().unwrap()["number"], "0x1");
    assert_eq!(sub.next().await.unwrap().unwrap()["number"], "0x2");
    assert_eq!(fin.next().await.unwrap().unwrap()["number"], "0x1");
}

#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let node = start().await;
    let (alice, bob) = (pair_from_suri("//Alice").unwrap(), pair_from_suri("//Bob").unwrap());
    // Use nonce 0 once so stale nonces exist.
    let ok = transfer(&alice, &node.genesis, 0, 100, &bob, UNIT);
    let _: Value = node.client.request("author_submitExtrinsic", rpc_params![ok]).await.unwrap();
    node.author().await;
    let root = node.state_root().await;
    let g = node.genesis;

    // Wrong signature: signed by Bob but claiming Alice.
    let call = Call::Balances(balances::Call::Transfer { dest: account_of(&bob), amount: UNIT });
    let mut forged = UncheckedExtrinsic::sign(&bob, &g, 1, 0, 100, call.clone());
    forged.signer = account_of(&alice);
    let cases: Vec<(String, &str)> = vec![
        (format!("0x{}", hex::encode(forged.encode())), "bad signature"),
        (transfer(&alice, &g, 0, 100, &bob, UNIT), "stale nonce 0"),
        (transfer(&alice, &g, 1_000, 100, &bob, UNIT), "too far in the future"),
        (transfer(&alice, &g, 1, 100, &bob, 10_000_000 * UNIT), "insufficient free balance"),
        (transfer(&alice, &g, 1, 0, &bob, UNIT), "expired"),
        (transfer(&alice, &Hash::repeat_byte(7), 1, 100, &bob, UNIT), "bad signature"),
        (format!("0x{}", "ab".repeat(300_000)), "at most"),
        ("0xzz".to_string(), "hex"),
        ("0x0102".to_string(), "malformed"),
        ("0x07".to_string(), "unsupported transaction version"),
        (transfer(&alice, &g, 1, 100, &alice, UNIT), "cannot transfer to the sending account"),
    ];
    for (xt, expected) in cases {
        let msg = node.submit_err(xt).await;
        assert!(msg.contains(expected), "expected '{expected}' in '{msg}'");
        assert_eq!(node.state_root().await, root, "state changed after '{expected}'");
        assert_eq!(node.pool_len().await, 0, "pool changed after '{expected}'");
    }
    // The same via the watching method.
    let r = node
        .client
        .subscribe::<Value, _>(
            "author_submitAndWatchExtrinsic",
            rpc_params![transfer(&alice, &g, 0, 100, &bob, UNIT)],
            "author_unwatchExtrinsic",
        )
        .await;
    match r {
        Err(jsonrpsee::core::ClientError::Call(e)) => {
            assert!(e.message().contains("stale nonce 0"), "{}", e.message())
        }
        other => panic!("a stale transaction was watched: {other:?}"),
    }
    assert_eq!(node.state_root().await, root, "state changed after a watched stale nonce");
    assert_eq!(node.pool_len().await, 0, "pool changed after a watched stale nonce");

    // Unknown account formats.
    for bad in ["hello", "0x1234", "15oF4uVJwmo4TdGW7VfQxNLavjCXviqxT9S1MgbjMNHr6Sp5"] {
        for method in ["bitorch_account", "system_accountNextIndex"] {
            let r: Result<Value, _> = node.client.request(method, rpc_params![bad]).await;
            let Err(jsonrpsee::core::ClientError::Call(e)) = r else {
                panic!("{method}({bad}) accepted")
            };
            assert!(
                e.message().contains("account") || e.message().contains("prefix"),
                "{}",
                e.message()
            );
        }
    }
    let r: Result<Value, _> = node.client.request("chain_getBlockHash", rpc_params!["nope"]).await;
    assert!(r.is_err());
    let r: Result<Value, _> = node.client.request("chain_getHeader", rpc_params!["0x12"]).await;
    assert!(r.is_err());
    // A valid transaction still goes through afterwards.
    let ok = transfer(&alice, &g, 1, 100, &bob, UNIT);
    let _: Value = node.client.request("author_submitExtrinsic", rpc_params![ok]).await.unwrap();
    node.author().await;
    assert_ne!(node.state_root().await, root);
}

#[tokio::test]
async fn future_nonce_waits_then_goes_in_order() {
    let node = start().await;
    let (alice, bob) = (pair_from_suri("//Alice").unwrap(), pair_from_suri("//Bob").unwrap());
    let g = node.genesis;
    let second = transfer(&alice, &g, 1, 100, &bob, UNIT);
    let mut sub = node
        .client
        .subscribe::<Value, _>(
            "author_submitAndWatchExtrinsic",
            rpc_params![second],
            "author_unwatchExtrinsic",
        )
        .await
        .unwrap();
    assert_eq!(sub.next().await.unwrap().unwrap(), Value::from("future"));
    node.author().await;
    assert_eq!(node.pool_len().await, 1, "a future transaction stays queued");
    let first = transfer(&alice, &g, 0, 100, &bob, UNIT);
    let _: Value = node.client.request("author_submitExtrinsic", rpc_params![first]).await.unwrap();
    node.author().await;
    assert!(sub.next().await.unwrap().unwrap().get("inBlock").is_some());
    assert_eq!(node.pool_len().await, 0);
    let v: Value = node
        .client
        .request("bitorch_account", rpc_params![to_ss58(&account_of(&alice))])
        .await
        .unwrap();
    assert_eq!(v["nonce"], 2);
}

#[tokio::test]
async fn job_life_cycle_through_rpc_pays_workers_exactly() {
    use bitorch_runtime::{jobs, models};
    let node = start().await;
    let g = node.genesis;
    let [alice, bob, charlie, eve] =
        ["//Alice", "//Bob", "//Charlie", "//Eve"].map(|s| pair_from_suri(s).unwrap());
    let nonce = std::cell::Cell::new(0u64);
    let send = |call: Call| {
        let xt = signed_hex(&alice, &g, nonce.get(), 1_000, call);
        nonce.set(nonce.get() + 1);
        xt
    };
    let submit = |xt: String| async {
        let r: Result<Value, _> =
            node.client.request("author_submitExtrinsic", rpc_params![xt]).await;
        r.map_err(|e| e.to_string())
    };

    let manifest = models::example_manifest(30);
    let model = manifest.id();
    submit(send(Call::Models(models::Call::Register { manifest }))).await.unwrap();
    node.author().await;
    let listed: Value = node.client.request("bitorch_models", rpc_params![]).await.unwrap();
    assert_eq!(listed[0]["layerCount"], 30);

    let price = UNIT / 1_000;
    submit(send(Call::Jobs(jobs::Call::OpenJob {
        model,
        max_tokens: 10,
        price_per_layer_token: price,
    })))
    .await
    .unwrap();
    node.author().await;
    let job: Value = node.client.request("bitorch_job", rpc_params![0]).await.unwrap();
    assert_eq!(job["escrow"], (10 * 30 * price).to_string());

    // Alice, the client, acknowledges work with vouchers; each worker claims with its own.
    let voucher = |signer: &Pair, worker: &Pair, start: u32, end: u32, positions| {
        jobs::Voucher {
            job: 0,
            session: [start as u8; 16],
            worker: account_of(worker),
            layers: (start, end),
            positions,
            trace: Hash::repeat_byte(start as u8),
        }
        .sign(signer, &g)
    };
    let claim = |voucher| Call::Jobs(jobs::Call::Claim { voucher });
    // A claim from an account that is not a worker is refused, changing nothing.
    let root = node.state_root().await;
    let not_a_worker = claim(voucher(&alice, &eve, 0, 15, 10));
    let refused = node.submit_err(signed_hex(&eve, &g, 0, 1_000, not_a_worker)).await;
    assert!(refused.contains("not a registered worker"), "{refused}");
    assert_eq!(node.state_root().await, root);

    // The attack of issue #11: Bob, a registered worker that served nothing, claims Alice's
    // whole escrow with a voucher he signed himself. Refused with a typed error naming the
    // job, and nothing changes. Bob has sent nothing on this chain: his nonce is 0.
    let theft = claim(voucher(&bob, &bob, 0, 30, 10));
    let theft = node.submit_err(signed_hex(&bob, &g, 0, 1_000, theft)).await;
    assert!(theft.contains("not signed by the client of job 0"), "{theft}");
    // Nor may he claim with a voucher Alice gave Charlie.
    let stolen = claim(voucher(&alice, &charlie, 15, 30, 8));
    let stolen = node.submit_err(signed_hex(&bob, &g, 0, 1_000, stolen)).await;
    assert!(stolen.contains("only the worker named in the voucher"), "{stolen}");
    assert_eq!(node.state_root().await, root);
    assert_eq!(node.pool_len().await, 0);

    let (bob0, charlie0) = (node.free(&bob).await, node.free(&charlie).await);
    // Each pays its claim's fee.
    let fee = |call: &Call, hex: &str| bitorch_runtime::compute_fee(call, (hex.len() - 2) / 2, 0);
    let bobs = claim(voucher(&alice, &bob, 0, 15, 10));
    let xt = signed_hex(&bob, &g, 0, 1_000, bobs.clone());
    let bob_fee = fee(&bobs, &xt);
    submit(xt).await.unwrap();
    let charlies = claim(voucher(&alice, &charlie, 15, 30, 8));
    let xt = signed_hex(&charlie, &g, 0, 1_000, charlies.clone());
    let charlie_fee = fee(&charlies, &xt);
    submit(xt).await.unwrap();
    node.author().await;
    // The same claim again (a replay) is refused.
    let dup = submit(signed_hex(&bob, &g, 1, 1_000, bobs)).await.unwrap_err();
    assert!(dup.contains("already claimed"), "{dup}");
    submit(send(Call::Jobs(jobs::Call::CloseJob { job: 0 }))).await.unwrap();
    node.author().await;
    let job: Value = node.client.request("bitorch_job", rpc_params![0]).await.unwrap();
    assert!(job["status"].get("challenge").is_some(), "{job}");
    // Each claim shows the voucher it was made with and its audit (on this one-validator chain
    // Alice, the client, may not audit: nobody is eligible, and the claim stands).
    let c = &job["claims"][0];
    assert_eq!((c["positions"].as_u64(), c["layerEnd"].as_u64()), (Some(10), Some(15)), "{job}");
    assert!(c["clientSignature"].as_str().unwrap().len() == 130, "{job}");
    if !c["audit"].is_null() {
        assert_eq!(c["audit"]["auditors"], json!([]), "{job}");
        assert_eq!(c["audit"]["outcome"], "inconclusive", "{job}");
    }
    for _ in 0..12 {
        node.author().await;
    }
    let job: Value = node.client.request("bitorch_job", rpc_params![0]).await.unwrap();
    let paid = 15 * 10 * price + 15 * 8 * price;
    assert_eq!(job["status"]["settled"]["paid"], paid.to_string(), "{job}");
    assert_eq!(job["status"]["settled"]["refunded"], (10 * 30 * price - paid).to_string());
    // Each worker is paid exactly its acknowledged work, less the fee of its claim.
    assert_eq!(node.free(&bob).await, bob0 + 15 * 10 * price - bob_fee);
    assert_eq!(node.free(&charlie).await, charlie0 + 15 * 8 * price - charlie_fee);
    let alice_info: Value = node
        .client
        .request("bitorch_account", rpc_params![to_ss58(&account_of(&alice))])
        .await
        .unwrap();
    assert_eq!(alice_info["reserved"], alice_info["staking"]["bonded"], "escrow fully released");
}

/// The status line's code of a raw HTTP request to the server.
async fn status_of(addr: std::net::SocketAddr, request: String) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 256];
    let n = s.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("{head}"))
}

#[tokio::test]
async fn web_pages_of_other_origins_get_403_on_http_and_websocket() {
    let node = start().await;
    let addr = node.addr;
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"system_health","params":[]}"#;
    let post = |origin: Option<&str>| {
        let origin = origin.map(|o| format!("Origin: {o}\r\n")).unwrap_or_default();
        format!(
            "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{origin}\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let upgrade = |origin: &str| {
        format!(
            "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Origin: {origin}\r\n\r\n"
        )
    };
    assert_eq!(status_of(addr, post(None)).await, 200);
    assert_eq!(status_of(addr, post(Some("http://localhost:3000"))).await, 200);
    assert_eq!(status_of(addr, post(Some("https://polkadot.js.org"))).await, 200);
    assert_eq!(status_of(addr, post(Some("http://evil.example"))).await, 403);
    assert_eq!(status_of(addr, upgrade("http://evil.example")).await, 403);
    assert_eq!(status_of(addr, upgrade("http://127.0.0.1:8000")).await, 101);
}
