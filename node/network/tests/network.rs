//! Real-socket tests on loopback (127.0.0.1, OS-assigned ports), each bounded in time. Every
//! node is stopped when its `TestNode` drops, so a failing test cleans up too.

mod common;

use bitorch_network::sync::{self, Response};
use bitorch_network::Refusal;
use bitorch_network::{spawn, Config, Error, Misbehaviour, Multiaddr, NodeKey, Topic};
use common::{
    config, drain_gossip, eventually, run_bounded, send_raw, serve_blocks, TestNode, BAN,
};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_discover_each_other_gossip_and_sync() {
    run_bounded(async {
        // C knows only B, B knows only A.
        let mut a = TestNode::start(config(NodeKey::Ephemeral, vec![])).await;
        let mut b = TestNode::start(config(NodeKey::Ephemeral, vec![a.addr.clone()])).await;
        let mut c = TestNode::start(config(NodeKey::Ephemeral, vec![b.addr.clone()])).await;
        let server = serve_blocks(a.events.take().expect("events"));
        let mut b_rx = b.events.take().expect("events");
        let mut c_rx = c.events.take().expect("events");

        let ids = [a.id(), b.id(), c.id()];
        eventually("all three connected to each other", || async {
            for (node, me) in [(&a, ids[0]), (&b, ids[1]), (&c, ids[2])] {
                let peers = node.peers().await;
                if !ids.iter().filter(|p| **p != me).all(|p| peers.contains(p)) {
                    return None;
                }
            }
            Some(())
        })
        .await;

        // Gossip published by A reaches B and C. Publishing fails until the peers'
        // subscriptions have arrived, so publish until both have seen a message.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let (mut b_got, mut c_got) = (false, false);
        for seq in 0u32.. {
            assert!(tokio::time::Instant::now() < deadline, "gossip from A did not reach B and C");
            let _ = a.handle.publish(Topic::Consensus, format!("hello {seq}").into_bytes()).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let hello = |d: &Vec<u8>| d.starts_with(b"hello ");
            b_got |= drain_gossip(&mut b_rx, a.id()).iter().any(hello);
            c_got |= drain_gossip(&mut c_rx, a.id()).iter().any(hello);
            if b_got && c_got {
                break;
            }
        }

        // A sync request from C to A returns A's answer.
        let blocks = c.handle.request_blocks(a.id(), 5, 3).await.expect("sync from A");
        let heights: Vec<u64> = blocks
            .iter()
            .map(|b| u64::from_le_bytes(b.block.as_slice().try_into().expect("8 bytes")))
            .collect();
        assert_eq!(heights, vec![5, 6, 7]);
        assert!(blocks.iter().all(|b| b.commit == vec![0xc0]));
        // Requests for too many blocks are clamped, on both sides.
        let many = c.handle.request_blocks(a.id(), 0, 100_000).await.expect("sync from A");
        assert_eq!(many.len(), sync::MAX_BLOCKS_PER_REQUEST as usize);

        // Gossip that is too large is refused before it leaves.
        let huge = vec![0u8; Config::new(NodeKey::Ephemeral).max_gossip_bytes + 1];
        assert!(matches!(
            a.handle.publish(Topic::Transactions, huge).await,
            Err(Error::MessageTooLarge { .. })
        ));

        // B, the only link between A and C at the start, leaves; A and C, which found each
        // other through the DHT, stay connected.
        let (a_id, c_id) = (a.id(), c.id());
        b.stop().await;
        eventually("A and C connected without B", || async {
            (a.peers().await == vec![c_id] && c.peers().await == vec![a_id]).then_some(())
        })
        .await;

        a.stop().await;
        let seen = server.await.expect("server task");
        assert_eq!(seen.len(), 2);
        assert!(seen.iter().all(|r| r.max <= sync::MAX_BLOCKS_PER_REQUEST));
        c.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_sync_requests_are_refused_and_banned() {
    run_bounded(async {
        let mut a = TestNode::start(config(NodeKey::Ephemeral, vec![])).await;
        let server = serve_blocks(a.events.take().expect("events"));

        let refused = Some(Response::Refused(Refusal::BadRequest));
        let decode = |bytes: Option<Vec<u8>>| {
            bytes.and_then(|b| parity_scale_codec::Decode::decode(&mut b.as_slice()).ok())
        };
        // Garbage: does not decode (a request is 12 bytes; these are 13).
        let (garbage_peer, answer) =
            send_raw(&a, sync::PROTOCOL, Duration::from_secs(5), vec![0xff; 13]).await;
        assert_eq!(decode(answer), refused);
        // Cut: the stream ends inside a request, as an honest peer's does when its request
        // times out half written. No answer, and no penalty.
        let (cut_peer, answer) =
            send_raw(&a, sync::PROTOCOL, Duration::from_secs(5), vec![0xff; 3]).await;
        assert_eq!(decode(answer), None);
        // Oversized: more than the request limit. The node stops reading at the limit, so the
        // sender may see its stream reset before the refusal; it never gets blocks.
        let (big_peer, answer) = send_raw(
            &a,
            sync::PROTOCOL,
            Duration::from_secs(5),
            vec![0; sync::MAX_REQUEST_BYTES * 100],
        )
        .await;
        let answer = answer.map(|b| decode(Some(b)));
        assert!(matches!(answer, None | Some(Some(Response::Refused(Refusal::BadRequest)))));

        // Both senders are banned and disconnected.
        eventually("both bad senders banned and gone", || async {
            let banned = a.handle.banned_peers().await.ok()?;
            let peers = a.peers().await;
            let done =
                [garbage_peer, big_peer].iter().all(|p| banned.contains(p) && !peers.contains(p));
            done.then_some(())
        })
        .await;
        assert!(!a.handle.banned_peers().await.unwrap().contains(&cut_peer), "a cut stream banned");

        // The node keeps working: a well-behaved peer syncs from it.
        let b = TestNode::start(config(NodeKey::Ephemeral, vec![a.addr.clone()])).await;
        let blocks = b.handle.request_blocks(a.id(), 1, 2).await.expect("sync from A");
        assert_eq!(blocks.len(), 2);

        a.stop().await;
        let seen = server.await.expect("server task");
        assert_eq!(
            seen,
            vec![sync::Request { from: 1, max: 2 }],
            "bad requests never reach the node"
        );
        b.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_peer_is_disconnected_and_refused_during_its_ban() {
    run_bounded(async {
        let a = TestNode::start(config(NodeKey::Ephemeral, vec![])).await;
        let b = TestNode::start(config(NodeKey::Ephemeral, vec![a.addr.clone()])).await;
        eventually("A and B connected", || async {
            (a.peers().await.contains(&b.id()) && b.peers().await.contains(&a.id())).then_some(())
        })
        .await;

        let banned_at = tokio::time::Instant::now();
        a.handle.report_peer(b.id(), Misbehaviour::InvalidBlock).await.expect("report");
        assert_eq!(a.handle.banned_peers().await.expect("banned"), vec![b.id()]);
        eventually("B disconnected from A", || async {
            (!a.peers().await.contains(&b.id()) && !b.peers().await.contains(&a.id())).then_some(())
        })
        .await;

        // B keeps dialing; A refuses it for as long as the ban lasts.
        while banned_at.elapsed() < BAN - Duration::from_millis(700) {
            b.handle.dial(a.addr.clone()).await.expect("dial starts");
            tokio::time::sleep(Duration::from_millis(150)).await;
            assert!(!a.peers().await.contains(&b.id()), "A accepted a banned peer");
        }

        // Once the ban expires, B gets back in on its own: it redials the peers its routing
        // table knows while it has fewer than it wants.
        eventually("B reconnected after the ban", || async {
            a.peers().await.contains(&b.id()).then_some(())
        })
        .await;
        assert!(a.handle.banned_peers().await.expect("banned").is_empty());
        a.stop().await;
        b.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_key_persists_across_restarts() {
    run_bounded(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let net = dir.path().join("network");
        let first = TestNode::start(config(NodeKey::Dir(net.clone()), vec![])).await;
        let id = first.id();
        first.stop().await;
        let second = TestNode::start(config(NodeKey::Dir(net.clone()), vec![])).await;
        assert_eq!(second.id(), id, "same directory, same PeerId");
        second.stop().await;

        // A key written by `bitorch key generate-node-key` (32 bytes as hex) is used as is.
        let cli_dir = dir.path().join("cli");
        std::fs::create_dir_all(&cli_dir).expect("mkdir");
        std::fs::write(cli_dir.join(bitorch_network::key::KEY_FILE), "07".repeat(32))
            .expect("write key");
        let expected = libp2p::identity::Keypair::ed25519_from_bytes([7u8; 32])
            .expect("key")
            .public()
            .to_peer_id();
        let node = TestNode::start(config(NodeKey::Dir(cli_dir), vec![])).await;
        assert_eq!(node.id(), expected);
        node.stop().await;
    })
    .await;
}

#[tokio::test]
async fn bad_configuration_is_reported() {
    let no_peer_id: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().expect("addr");
    let result = spawn(config(NodeKey::Ephemeral, vec![no_peer_id]), CancellationToken::new());
    assert!(matches!(result, Err(Error::BootNodeWithoutPeerId(_))));
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(bitorch_network::key::KEY_FILE), "garbage").expect("write");
    let result = spawn(config(NodeKey::Dir(dir.path().into()), vec![]), CancellationToken::new());
    assert!(matches!(result, Err(Error::MalformedKey { .. })));
}
