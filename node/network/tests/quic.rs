//! QUIC (`quic-v1`) beside TCP, on loopback: nodes that speak only QUIC, and a node listening
//! on both that peers of either kind reach.

mod common;

use bitorch_network::NodeKey;
use common::{
    config_on, eventually, gossip_reaches, heights, is_quic, is_tcp, quic, run_bounded,
    serve_blocks, tcp, TestNode,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_quic_only_nodes_gossip_and_sync() {
    run_bounded(async {
        let mut a = TestNode::start(config_on(NodeKey::Ephemeral, vec![quic()], vec![])).await;
        assert!(a.addrs.iter().all(is_quic), "A listens on QUIC only: {:?}", a.addrs);
        let boot = vec![a.quic_addr()];
        let mut b = TestNode::start(config_on(NodeKey::Ephemeral, vec![quic()], boot)).await;
        assert!(b.addrs.iter().all(is_quic), "B listens on QUIC only: {:?}", b.addrs);

        eventually("A and B connected over QUIC", || async {
            (a.peers().await.contains(&b.id()) && b.peers().await.contains(&a.id())).then_some(())
        })
        .await;

        // Gossip both ways.
        let mut a_rx = a.events.take().expect("events");
        let mut b_rx = b.events.take().expect("events");
        gossip_reaches(&a, &mut [&mut b_rx], "from A").await;
        gossip_reaches(&b, &mut [&mut a_rx], "from B").await;

        // A sync request over QUIC.
        let server = serve_blocks(a_rx);
        let blocks = b.handle.request_blocks(a.id(), 10, 4).await.expect("sync from A");
        assert_eq!(heights(&blocks), vec![10, 11, 12, 13]);

        a.stop().await;
        assert_eq!(server.await.expect("server task").len(), 1);
        b.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_tcp_and_quic_is_reached_by_a_quic_peer_and_a_tcp_peer() {
    run_bounded(async {
        let mut both =
            TestNode::start(config_on(NodeKey::Ephemeral, vec![tcp(), quic()], vec![])).await;
        assert!(both.addrs.iter().any(is_tcp) && both.addrs.iter().any(is_quic));
        // Each peer listens on one transport and knows the other node by that transport only.
        let q_boot = vec![both.quic_addr()];
        let mut q = TestNode::start(config_on(NodeKey::Ephemeral, vec![quic()], q_boot)).await;
        let t_boot = vec![both.tcp_addr()];
        let mut t = TestNode::start(config_on(NodeKey::Ephemeral, vec![tcp()], t_boot)).await;

        eventually("both peers connected to the dual-stack node", || async {
            let peers = both.peers().await;
            let done = peers.contains(&q.id())
                && peers.contains(&t.id())
                && q.peers().await.contains(&both.id())
                && t.peers().await.contains(&both.id());
            done.then_some(())
        })
        .await;

        // Gossip from the dual-stack node reaches both; each peer's reaches it.
        let mut both_rx = both.events.take().expect("events");
        let mut q_rx = q.events.take().expect("events");
        let mut t_rx = t.events.take().expect("events");
        gossip_reaches(&both, &mut [&mut q_rx, &mut t_rx], "from both").await;
        gossip_reaches(&q, &mut [&mut both_rx], "from Q").await;
        gossip_reaches(&t, &mut [&mut both_rx], "from T").await;

        // And both peers sync from it.
        let server = serve_blocks(both_rx);
        for peer in [&q, &t] {
            let blocks = peer.handle.request_blocks(both.id(), 0, 2).await.expect("sync");
            assert_eq!(heights(&blocks), vec![0, 1]);
        }

        both.stop().await;
        assert_eq!(server.await.expect("server task").len(), 2);
        q.stop().await;
        t.stop().await;
    })
    .await;
}
