//! End-to-end: a 4-validator network on loopback, each node a `bitorch` process. Finality,
//! agreement, a transfer through one node seen at another, a validator killed and restarted
//! (it catches up from peers), and two of four down (finality stops, then resumes).

mod common;

use common::net::{agree, testnet, wait, Node, BIN};
use common::rpc;
use serde_json::json;
use std::process::Command;
use std::time::Duration;

const BOB: &str = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty";

#[test]
fn four_validators_finalize_agree_and_survive_failures() {
    let dir = tempfile::tempdir().unwrap();
    let (spec, mut nodes, boot) = testnet(dir.path(), 4);
    let boot_peer = boot.rsplit('/').next().unwrap().to_string();
    nodes[0].start(&spec, "");
    for n in &mut nodes[1..] {
        n.start(&spec, &boot);
    }
    wait("4 nodes at #3", &nodes, || nodes.iter().all(|n| n.height() >= 3));
    agree(&nodes.iter().collect::<Vec<_>>(), 3);
    assert_eq!(rpc(nodes[0].rpc, "system_localPeerId", json!([])).unwrap(), boot_peer.as_str());
    let state = rpc(nodes[1].rpc, "bitorch_consensusState", json!([])).unwrap();
    assert_eq!(state["validating"], true, "{state}");
    assert_eq!(state["validators"].as_array().unwrap().len(), 4, "{state}");
    assert!(state["round"].is_null() || state["round"].is_u64(), "{state}");
    wait("every node to see peers", &nodes, || {
        nodes
            .iter()
            .all(|n| rpc(n.rpc, "system_health", json!([])).unwrap()["peers"].as_u64() >= Some(1))
    });
    let listen = rpc(nodes[1].rpc, "system_localListenAddresses", json!([])).unwrap();
    assert!(
        listen[0].as_str().unwrap().contains(&format!("/tcp/{}/p2p/", nodes[1].p2p)),
        "{listen}"
    );

    // A transfer submitted to node 4 is finalized and visible from node 1.
    let before: u128 = rpc(nodes[0].rpc, "bitorch_account", json!([BOB])).unwrap()["free"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let out = Command::new(BIN)
        .args([
            "wallet",
            "transfer",
            "--suri",
            "//Eve",
            "--to",
            BOB,
            "--amount",
            "7",
            "--wait",
            "finalized",
        ])
        .args(["--rpc", &format!("ws://127.0.0.1:{}", nodes[3].rpc)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait("the transfer on node 1", &nodes, || {
        rpc(nodes[0].rpc, "bitorch_account", json!([BOB])).unwrap()["free"].as_str().unwrap()
            == (before + 7_000_000_000_000).to_string()
    });

    // One validator down: the other three go on.
    nodes[3].stop();
    let h = nodes[0].height();
    wait("finality with 3 of 4", &nodes, || nodes[0].height() >= h + 3);
    // Restarted, it catches up from its peers.
    nodes[3].start(&spec, &boot);
    wait("node 4 to catch up", &nodes, || {
        nodes[3].height() >= nodes[0].height().saturating_sub(1) && nodes[3].height() > h + 3
    });

    // Two of four down: no block is finalized by fewer than three.
    nodes[2].stop();
    nodes[3].stop();
    // A block whose precommits were on their way may still land. Then node 1 stays alive
    // (`height` panics on a node that does not answer) with its engine running the next
    // height, and decides nothing.
    std::thread::sleep(Duration::from_secs(2));
    let stalled = nodes[0].height();
    std::thread::sleep(Duration::from_secs(3));
    let now = nodes[0].height();
    assert!(now <= stalled + 1, "finality went on with 2 of 4 validators");
    let state = nodes[0].rpc("bitorch_consensusState", json!([])).unwrap();
    assert_eq!(state["validating"], true, "{state}");
    assert_eq!(state["height"], now + 1, "{state}");
    nodes[2].start(&spec, &boot);
    nodes[3].start(&spec, &boot);
    wait("finality to resume", &nodes, || nodes.iter().all(|n| n.height() >= stalled + 3));
    let top = nodes.iter().map(|n| n.height()).min().unwrap();
    agree(&nodes.iter().collect::<Vec<_>>(), top);

    // A fifth, non-validator node started after 50 finalized blocks, given one boot node,
    // syncs to the head and follows.
    wait("50 finalized blocks", &nodes, || nodes[0].height() >= 50);
    let mut follower = Node::new(dir.path(), "Follower");
    follower.start_as(&spec, &boot, false);
    wait("the follower to reach the head", &nodes, || follower.height() + 1 >= nodes[0].height());
    let caught_up = follower.height();
    let state = follower.rpc("bitorch_consensusState", json!([])).unwrap();
    assert_eq!(state["validating"], false, "{state}");
    assert_eq!(follower.rpc("system_health", json!([])).unwrap()["isSyncing"], false);
    wait("the follower to follow", &nodes, || follower.height() >= caught_up + 3);
    let top = follower.height().min(nodes[0].height());
    agree(&[&nodes[0], &follower], top);
}

/// A transfer submitted to a node that has no peer yet (its gossip cannot go out) is relayed
/// once the node connects, and the validator includes it: nothing stays stuck in one pool.
#[test]
fn a_transaction_sent_before_any_peer_is_relayed_once_there_is_one() {
    let dir = tempfile::tempdir().unwrap();
    let (spec, mut nodes, boot) = testnet(dir.path(), 1);
    // A follower (no validator key) whose only boot node, Alice, is not up yet.
    let mut follower = Node::new(dir.path(), "Bob");
    follower.start_as(&spec, &boot, false);
    wait("the follower's RPC", &[], || follower.rpc("system_health", json!([])).is_ok());
    let bob_before = |n: &Node| -> Option<u128> {
        let a = n.rpc("bitorch_account", json!([BOB])).ok()?;
        a["free"].as_str()?.parse().ok()
    };
    let before = bob_before(&follower).unwrap();
    let mut transfer = Command::new(BIN)
        .args(["wallet", "transfer", "--suri", "//Eve", "--to", BOB, "--amount", "5"])
        .args(["--timeout", "120", "--rpc", &format!("ws://127.0.0.1:{}", follower.rpc)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait("the transfer in the follower's pool", &[], || {
        let pending = follower.rpc("author_pendingExtrinsics", json!([])).unwrap();
        pending.as_array().is_some_and(|p| p.len() == 1)
    });
    // Its relay has failed for want of peers for a while; now the validator comes up.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(follower.rpc("system_health", json!([])).unwrap()["peers"], 0);
    nodes[0].start(&spec, "");
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = transfer.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "the transfer was never included");
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(transfer.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "wallet transfer: {err}");
    wait("Alice to show the transfer", &nodes, || {
        bob_before(&nodes[0]) == Some(before + 5_000_000_000_000)
    });
}
