//! End-to-end, against faults a real network meets: a 2 + 2 partition of four validators, a
//! validator that double-votes, and a peer that sends garbage. Every node is a `bitorch`
//! process on loopback; the partition is made with the operator RPC `system_banPeer` (each
//! half bans the other) and healed with `system_unbanPeer`.

mod common;

use common::net::{agree, testnet, wait, Node};
use serde_json::json;
use std::time::{Duration, Instant};

fn stake(node: &Node, who: &str) -> u128 {
    let account = node.rpc("bitorch_account", json!([who])).unwrap();
    account["reserved"].as_str().unwrap().parse().unwrap()
}

const ALICE: &str = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";
const DAVE: &str = "5DAAnrj7VHTznn2AWBemMuyBwZWs6FNFjdyVXUeYum3PTXFy";

#[test]
fn a_two_two_partition_finalizes_nothing_and_heals() {
    let dir = tempfile::tempdir().unwrap();
    let (spec, mut nodes, boot) = testnet(dir.path(), 4);
    nodes[0].start(&spec, "");
    for n in &mut nodes[1..] {
        n.start(&spec, &boot);
    }
    wait("4 nodes at #3", &nodes, || nodes.iter().all(|n| n.height() >= 3));
    let ids: Vec<String> = nodes.iter().map(Node::peer_id).collect();
    wait("a full mesh", &nodes, || {
        nodes.iter().all(|n| n.rpc("system_health", json!([])).unwrap()["peers"] == 3)
    });

    // Partition: {Alice, Bob} | {Charlie, Dave}.
    let halves = [[0usize, 1], [2, 3]];
    for (side, other) in [(0, 1), (1, 0)] {
        for &i in &halves[side] {
            for &j in &halves[other] {
                nodes[i].rpc("system_banPeer", json!([ids[j], 3600])).unwrap();
            }
        }
    }
    wait("the halves to disconnect", &nodes, || {
        nodes.iter().all(|n| n.rpc("system_health", json!([])).unwrap()["peers"] == 1)
    });
    // A block whose precommits were already on their way may still land; after that, nothing.
    std::thread::sleep(Duration::from_secs(1));
    let stalled: Vec<u64> = nodes.iter().map(Node::height).collect();
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        for (n, h) in nodes.iter().zip(&stalled) {
            assert_eq!(n.height(), *h, "{} finalized a block with half of the validators", n.name);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let peers = nodes[0].rpc("system_peers", json!([])).unwrap();
    assert_eq!(peers.as_array().unwrap().len(), 1, "{peers}");
    assert_eq!(peers[0]["peerId"], ids[1].as_str());

    // Heal: everyone lifts the bans; the mesh comes back and finality resumes.
    for (i, node) in nodes.iter().enumerate() {
        for (j, id) in ids.iter().enumerate() {
            if halves[0].contains(&i) != halves[0].contains(&j) {
                node.rpc("system_unbanPeer", json!([id])).unwrap();
            }
        }
    }
    let top = *stalled.iter().max().unwrap();
    wait("finality to resume", &nodes, || nodes.iter().all(|n| n.height() >= top + 3));
    let common_top = nodes.iter().map(Node::height).min().unwrap();
    agree(&nodes.iter().collect::<Vec<_>>(), common_top);
}

#[test]
fn an_equivocating_validator_is_slashed_through_on_chain_evidence() {
    let dir = tempfile::tempdir().unwrap();
    let (spec, mut nodes, boot) = testnet(dir.path(), 4);
    // Dave runs a build of the node that signs a second, conflicting vote for every vote.
    nodes[3].extra = vec!["--unsafe-equivocate".into()];
    nodes[0].start(&spec, "");
    for n in &mut nodes[1..] {
        n.start(&spec, &boot);
    }
    wait("4 nodes at #2", &nodes, || nodes.iter().all(|n| n.height() >= 2));
    let honest = stake(&nodes[0], ALICE);
    assert!(honest > 0);
    // Slashing takes 10% of the offender's stake, once.
    wait("Dave to be slashed", &nodes, || stake(&nodes[0], DAVE) < honest);
    assert_eq!(stake(&nodes[0], DAVE), honest - honest / 10);
    let h = nodes[0].height();
    wait("the chain to go on", &nodes, || nodes.iter().all(|n| n.height() >= h + 3));
    assert_eq!(stake(&nodes[1], DAVE), honest - honest / 10, "slashed once only");
    assert_eq!(stake(&nodes[1], ALICE), honest, "honest validators keep their stake");
    let reports =
        nodes[..3].iter().filter(|n| n.log().contains("reported an equivocating")).count();
    assert!(reports >= 1, "no honest node reported the double vote");
}

#[test]
fn a_peer_sending_garbage_is_banned_and_the_node_goes_on() {
    use bitorch_network::{Config, Event, NodeKey, Topic};
    let dir = tempfile::tempdir().unwrap();
    let (spec, mut nodes, boot) = testnet(dir.path(), 1);
    nodes[0].start(&spec, "");
    wait("#2", &nodes, || nodes[0].height() >= 2);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let node_peer: bitorch_network::PeerId = nodes[0].peer_id().parse().unwrap();
    rt.block_on(async {
        let mut config = Config::new(NodeKey::Ephemeral);
        config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
        config.boot_nodes = vec![boot.parse().unwrap()];
        let service = bitorch_network::spawn(config, cancel.clone()).unwrap();
        let (net, mut events) = (service.handle, service.events);
        let me = net.local_peer_id().to_string();
        // Connected, then garbage on the consensus topic until the node cuts us off.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut disconnected = false;
        while !disconnected && tokio::time::Instant::now() < deadline {
            let _ = net.publish(Topic::Consensus, b"\x01not a consensus message".to_vec()).await;
            let _ = net.publish(Topic::Transactions, vec![0xff; 64]).await;
            let tick = tokio::time::sleep(Duration::from_millis(200));
            tokio::pin!(tick);
            loop {
                tokio::select! {
                    ev = events.recv() => match ev {
                        Some(Event::PeerDisconnected(p)) if p == node_peer => { disconnected = true; break }
                        Some(_) => {}
                        None => break,
                    },
                    _ = &mut tick => break,
                }
            }
        }
        assert!(disconnected, "the node never cut off a peer that sends garbage");
        // Banned (the node's ban list names us), its peers no longer list us, and a new dial
        // is refused.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let banned = nodes[0].rpc("system_bannedPeers", json!([])).unwrap();
            if banned.as_array().unwrap().iter().any(|p| p == me.as_str()) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "not on the ban list: {banned}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = net.dial(boot.parse().unwrap()).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let peers = nodes[0].rpc("system_peers", json!([])).unwrap();
        assert!(!peers.to_string().contains(&me), "banned peer still connected: {peers}");
        assert!(!net.connected_peers().await.unwrap().contains(&node_peer));
        cancel.cancel();
    });
    // The node goes on.
    let h = nodes[0].height();
    wait("the node to go on", &nodes, || nodes[0].height() >= h + 2);
}
