//! Gossip validation on loopback: a node that judges gossip (`Config::validate_gossip`, the
//! real node's setting) forwards only what it accepts. A — B — C in a line (A and C take one
//! connection each, so everything A publishes reaches C through B); B rejects A's "bad"
//! messages and accepts its "good" ones; C gets the good ones and never a bad one.

mod common;

use bitorch_network::{Event, NodeKey, Topic, Verdict};
use common::{config, drain_gossip, eventually, run_bounded, TestNode};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validating_node_forwards_only_what_it_accepts() {
    run_bounded(async {
        let mut a_config = config(NodeKey::Ephemeral, vec![]);
        a_config.max_connections = 1;
        let a = TestNode::start(a_config).await;
        let mut b_config = config(NodeKey::Ephemeral, vec![a.addr.clone()]);
        b_config.validate_gossip = true;
        let mut b = TestNode::start(b_config).await;
        let mut c_config = config(NodeKey::Ephemeral, vec![b.addr.clone()]);
        c_config.max_connections = 1;
        let mut c = TestNode::start(c_config).await;

        // B judges what it receives: "good…" is accepted, anything else rejected.
        let mut b_rx = b.events.take().unwrap();
        let judge = b.handle.clone();
        let (judged_tx, mut judged) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(event) = b_rx.recv().await {
                if let Event::Gossip { id, data, .. } = event {
                    let id = id.expect("B validates, so each message has an id");
                    let good = data.starts_with(b"good");
                    let verdict = if good { Verdict::Accept } else { Verdict::Reject };
                    judge.gossip_verdict(id, verdict).await.unwrap();
                    let _ = judged_tx.send(good);
                }
            }
        });
        let mut c_rx = c.events.take().unwrap();
        eventually("B connected to A and C, A and C apart", || async {
            let (a_peers, b_peers) = (a.peers().await, b.peers().await);
            let ok = b_peers.contains(&a.id())
                && b_peers.contains(&c.id())
                && !a_peers.contains(&c.id());
            ok.then_some(())
        })
        .await;

        // A publishes a bad and a good message each round until C has had three good ones.
        let (mut good_at_c, mut bad_at_b) = (0, 0);
        for seq in 0u32..150 {
            let _ = a.handle.publish(Topic::Consensus, format!("bad-{seq}").into_bytes()).await;
            let _ = a.handle.publish(Topic::Consensus, format!("good-{seq}").into_bytes()).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            while let Ok(good) = judged.try_recv() {
                bad_at_b += usize::from(!good);
            }
            for data in drain_gossip(&mut c_rx, a.id()) {
                assert!(data.starts_with(b"good"), "C got a message B rejected: {data:?}");
                good_at_c += 1;
            }
            if good_at_c >= 3 && bad_at_b >= 3 {
                break;
            }
        }
        assert!(bad_at_b >= 3, "B judged only {bad_at_b} bad messages");
        assert!(good_at_c >= 3, "only {good_at_c} good messages reached C through B");
    })
    .await;
}
