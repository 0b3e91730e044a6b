//! Operator bans and bans for misbehaviour, on loopback: a ban closes a peer's connections and
//! refuses new ones both ways, its gossip never arrives, and lifting it reconnects at once. The
//! 2 + 2 partition here is what the end-to-end partition test does through RPC.

mod common;

use bitorch_network::{Error, Event, Handle, Misbehaviour, Multiaddr, NodeKey, PeerId, Topic};
use common::{
    blocks, config, drain_all_gossip, eventually, eventually_within, gossip_reaches, heights,
    run_bounded, run_bounded_for, TestNode,
};
use libp2p::futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{gossipsub, noise, tcp, yamux, Swarm};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

const HOUR: Duration = Duration::from_secs(3600);
/// How long a healed partition may take to reconnect fully.
const HEAL_BOUND: Duration = Duration::from_secs(4);

/// A test configuration whose maintenance (redials, discovery walks) runs only every `every`.
fn config_maintained_every(every: Duration, boot_nodes: Vec<Multiaddr>) -> bitorch_network::Config {
    let mut c = config(NodeKey::Ephemeral, boot_nodes);
    c.maintenance_interval = every;
    c.discovery_interval = every;
    c
}

/// Waits until every node is connected to every other, for at most `limit`.
async fn full_mesh(nodes: &[TestNode], limit: Duration, what: &str) {
    let ids: Vec<PeerId> = nodes.iter().map(TestNode::id).collect();
    eventually_within(limit, what, || async {
        for (node, me) in nodes.iter().zip(&ids) {
            let peers = node.peers().await;
            if !ids.iter().filter(|p| *p != me).all(|p| peers.contains(p)) {
                return None;
            }
        }
        Some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_ban_refuses_both_directions_and_unban_redials_at_once() {
    run_bounded(async {
        let every = Duration::from_secs(60);
        let mut a = TestNode::start(config_maintained_every(every, vec![])).await;
        let b = TestNode::start(config_maintained_every(every, vec![a.addr.clone()])).await;
        eventually("A and B connected", || async {
            (a.peers().await.contains(&b.id()) && b.peers().await.contains(&a.id())).then_some(())
        })
        .await;
        // A learns where B listens from B's identify message, which comes with B's first
        // messages; gossip from B has arrived, so it has too.
        let mut a_rx = a.events.take().expect("events");
        gossip_reaches(&b, &mut [&mut a_rx], "hello").await;

        assert!(matches!(a.handle.ban_peer(a.id(), HOUR).await, Err(Error::BanLocalPeer(_))));
        a.handle.ban_peer(b.id(), HOUR).await.expect("ban");
        assert_eq!(a.handle.banned_peers().await.expect("banned"), vec![b.id()]);
        eventually("B disconnected at once", || async {
            (!a.peers().await.contains(&b.id()) && !b.peers().await.contains(&a.id())).then_some(())
        })
        .await;

        // A does not dial B, and refuses B's dials.
        assert!(matches!(a.handle.dial(b.addr.clone()).await, Err(Error::Dial { .. })));
        let until = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < until {
            b.handle.dial(a.addr.clone()).await.expect("dial starts");
            tokio::time::sleep(Duration::from_millis(150)).await;
            assert!(!a.peers().await.contains(&b.id()), "A accepted a banned peer");
        }

        // Lifting the ban dials B at once, at the address A's routing table had for it:
        // neither node's maintenance would redial within the next minute.
        assert!(a.handle.unban_peer(b.id()).await.expect("unban"));
        assert!(!a.handle.unban_peer(b.id()).await.expect("unban"), "no ban left to lift");
        assert!(a.handle.banned_peers().await.expect("banned").is_empty());
        eventually_within(HEAL_BOUND, "B back after the unban", || async {
            (a.peers().await.contains(&b.id()) && b.peers().await.contains(&a.id())).then_some(())
        })
        .await;
        a.stop().await;
        b.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_two_partition_by_bans_stops_gossip_and_heals_on_unban() {
    run_bounded_for(Duration::from_secs(90), async {
        // A full mesh of four: each node has the ones started before it as boot nodes. Their
        // maintenance (redials, discovery walks) is a minute apart, so that only the dials made
        // when the bans are lifted can heal the partition within the bound.
        let every = Duration::from_secs(60);
        let mut nodes: Vec<TestNode> = Vec::new();
        for _ in 0..4 {
            let boot = nodes.iter().map(|n| n.addr.clone()).collect();
            nodes.push(TestNode::start(config_maintained_every(every, boot)).await);
        }
        let ids: Vec<PeerId> = nodes.iter().map(TestNode::id).collect();
        let index = |p: &PeerId| ids.iter().position(|i| i == p).expect("one of the four");
        let half = |i: usize| i / 2;
        let mut rxs: Vec<mpsc::Receiver<Event>> =
            nodes.iter_mut().map(|n| n.events.take().expect("events")).collect();
        full_mesh(&nodes, Duration::from_secs(15), "a full mesh").await;
        // Every node has heard from every other, and so knows where the others listen.
        for (i, node) in nodes.iter().enumerate() {
            let mut others: Vec<&mut mpsc::Receiver<Event>> =
                rxs.iter_mut().enumerate().filter(|(j, _)| *j != i).map(|(_, rx)| rx).collect();
            gossip_reaches(node, &mut others, &format!("hello from {i}")).await;
        }

        // Partition {0, 1} | {2, 3}: each half bans the other.
        for (i, node) in nodes.iter().enumerate() {
            for (j, peer) in ids.iter().enumerate() {
                if half(i) != half(j) {
                    node.handle.ban_peer(*peer, HOUR).await.expect("ban");
                }
            }
        }
        eventually("the halves apart", || async {
            for (i, node) in nodes.iter().enumerate() {
                if node.peers().await != vec![ids[i ^ 1]] {
                    return None;
                }
            }
            Some(())
        })
        .await;
        for rx in &mut rxs {
            drain_all_gossip(rx);
        }

        // For 3 s everyone publishes, while discovery and the boot node lists keep trying to
        // redial: gossip stays inside each half, and so do the connections.
        let mut received: Vec<Vec<PeerId>> = vec![Vec::new(); 4];
        let until = Instant::now() + Duration::from_secs(3);
        for seq in 0u32.. {
            if Instant::now() >= until {
                break;
            }
            for (i, node) in nodes.iter().enumerate() {
                let data = format!("partitioned {i} {seq}").into_bytes();
                let _ = node.handle.publish(Topic::Consensus, data).await;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            for (i, node) in nodes.iter().enumerate() {
                for peer in node.peers().await {
                    assert_eq!(half(index(&peer)), half(i), "node {i} connected across");
                }
                received[i].extend(drain_all_gossip(&mut rxs[i]).into_iter().map(|(a, _)| a));
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (i, rx) in rxs.iter_mut().enumerate() {
            received[i].extend(drain_all_gossip(rx).into_iter().map(|(a, _)| a));
            assert!(received[i].contains(&ids[i ^ 1]), "gossip flows inside node {i}'s half");
            for author in &received[i] {
                assert_eq!(half(index(author)), half(i), "node {i} got gossip across");
            }
            let mut banned = nodes[i].handle.banned_peers().await.expect("banned");
            banned.sort();
            let mut other: Vec<PeerId> = ids
                .iter()
                .enumerate()
                .filter(|(j, _)| half(*j) != half(i))
                .map(|(_, p)| *p)
                .collect();
            other.sort();
            assert_eq!(banned, other);
        }

        // Heal: everyone lifts its bans; all six pairs reconnect within the bound. Nodes 2
        // and 3 go first: their dials to 0 and 1 (their boot nodes) are refused, so it is for
        // 0 and 1 to dial them back, at the addresses their routing tables had.
        let healing = Instant::now();
        for (i, node) in nodes.iter().enumerate().rev() {
            for (j, peer) in ids.iter().enumerate() {
                if half(i) != half(j) {
                    assert!(node.handle.unban_peer(*peer).await.expect("unban"));
                }
            }
        }
        full_mesh(&nodes, HEAL_BOUND, "the mesh to heal").await;
        tracing::info!(elapsed = ?healing.elapsed(), "partition healed");
        for node in &nodes {
            assert!(node.handle.banned_peers().await.expect("banned").is_empty());
        }

        // And gossip crosses again, both ways.
        let (low, high) = rxs.split_at_mut(2);
        let [r0, r1] = low else { unreachable!("two receivers") };
        let [r2, r3] = high else { unreachable!("two receivers") };
        gossip_reaches(&nodes[0], &mut [r2, r3], "healed 0").await;
        gossip_reaches(&nodes[3], &mut [r0, r1], "healed 3").await;
        for node in nodes {
            node.stop().await;
        }
    })
    .await;
}

/// What the owner of the node under test saw, as it handled the node's events.
#[derive(Debug, PartialEq)]
enum Seen {
    /// A consensus message it could decode, by author.
    Valid(Option<PeerId>),
    /// It reported `from` for an undecodable message.
    Reported(PeerId),
    /// A peer connected.
    Connected(PeerId),
}

/// Handles a node's events as the node's owner does: consensus messages that do not decode
/// (here: do not start with `ok:`) get their sender reported; sync requests are served.
fn owner(
    handle: Handle,
    mut events: mpsc::Receiver<Event>,
) -> (mpsc::Receiver<Seen>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(4096);
    let task = tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            let seen = match event {
                Event::Gossip { topic: Topic::Consensus, from, author, data, .. } => {
                    if data.starts_with(b"ok:") {
                        Seen::Valid(author)
                    } else {
                        let _ = handle.report_peer(from, Misbehaviour::UndecodableMessage).await;
                        Seen::Reported(from)
                    }
                }
                Event::SyncRequest { request, reply, .. } => {
                    let _ = reply.send(blocks(request));
                    continue;
                }
                Event::PeerConnected(peer) => Seen::Connected(peer),
                _ => continue,
            };
            if tx.send(seen).await.is_err() {
                break;
            }
        }
    });
    (rx, task)
}

fn consensus_topic() -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(Topic::Consensus.name())
}

/// A peer of another make: gossipsub only (no identify, no DHT, so the node under test
/// cannot introduce it to anyone), subscribed to the consensus topic.
fn rogue() -> Swarm<gossipsub::Behaviour> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .expect("transport")
        .with_behaviour(|key| {
            let config = gossipsub::ConfigBuilder::default().build().expect("gossipsub config");
            let mut gossip = gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                config,
            )
            .expect("gossipsub");
            gossip.subscribe(&consensus_topic()).expect("subscribe");
            gossip
        })
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build()
}

/// Drives `swarm` until `f` picks an event, for at most `limit`.
async fn drive<T>(
    swarm: &mut Swarm<gossipsub::Behaviour>,
    limit: Duration,
    mut f: impl FnMut(&SwarmEvent<gossipsub::Event>) -> Option<T>,
) -> Option<T> {
    let pick = async {
        loop {
            let event = swarm.select_next_some().await;
            if let Some(v) = f(&event) {
                return v;
            }
        }
    };
    tokio::time::timeout(limit, pick).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_consensus_topic_gets_its_sender_banned_and_refused() {
    run_bounded(async {
        let with_long_ban = |boot| {
            let mut c = config(NodeKey::Ephemeral, boot);
            c.ban_duration = HOUR;
            c
        };
        let mut a = TestNode::start(with_long_ban(vec![])).await;
        let mut c = TestNode::start(with_long_ban(vec![a.addr.clone()])).await;
        let (mut seen, owner_task) = owner(a.handle.clone(), a.events.take().expect("events"));
        let mut c_rx = c.events.take().expect("events");
        eventually("A and C connected", || async {
            (a.peers().await.contains(&c.id()) && c.peers().await.contains(&a.id())).then_some(())
        })
        .await;

        // The rogue connects to A, and once A's subscription is in, publishes garbage.
        let mut g = rogue();
        let g_id = *g.local_peer_id();
        g.dial(a.addr.clone()).expect("dial");
        let a_id = a.id();
        drive(&mut g, Duration::from_secs(15), |e| match e {
            SwarmEvent::Behaviour(gossipsub::Event::Subscribed { peer_id, .. })
                if *peer_id == a_id =>
            {
                Some(())
            }
            _ => None,
        })
        .await
        .expect("A's subscription reached the rogue");
        g.behaviour_mut().publish(consensus_topic(), vec![0xff; 64]).expect("publish");

        // A's owner reports it; A bans it and closes the connection.
        drive(&mut g, Duration::from_secs(15), |e| match e {
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. }
                if *peer_id == a_id =>
            {
                Some(())
            }
            _ => None,
        })
        .await
        .expect("A closed the rogue's connection");
        assert_eq!(a.handle.banned_peers().await.expect("banned"), vec![g_id]);
        assert_eq!(a.peers().await, vec![c.id()], "A keeps C, and only C");

        // The rogue redials; A refuses it every time.
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            let _ = g.dial(a.addr.clone());
            drive(&mut g, Duration::from_millis(300), |_| None::<()>).await;
            assert!(!a.peers().await.contains(&g_id), "A accepted the banned rogue");
        }

        // A keeps working with C: gossip both ways and a sync request.
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut log = Vec::new();
        'from_c: for seq in 0u32.. {
            assert!(Instant::now() < deadline, "C's gossip did not reach A's owner: {log:?}");
            let data = format!("ok: from C {seq}").into_bytes();
            let _ = c.handle.publish(Topic::Consensus, data).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            while let Ok(s) = seen.try_recv() {
                let from_c = s == Seen::Valid(Some(c.id()));
                log.push(s);
                if from_c {
                    break 'from_c;
                }
            }
        }
        gossip_reaches(&a, &mut [&mut c_rx], "ok: from A").await;
        let got = c.handle.request_blocks(a.id(), 3, 2).await.expect("sync from A");
        assert_eq!(heights(&got), vec![3, 4]);

        // The owner reported the rogue only (once), and the rogue never got back in.
        a.stop().await;
        owner_task.await.expect("owner task");
        while let Some(s) = seen.recv().await {
            log.push(s);
        }
        let reported: Vec<&Seen> = log.iter().filter(|s| matches!(s, Seen::Reported(_))).collect();
        assert_eq!(reported, vec![&Seen::Reported(g_id)], "{log:?}");
        let rogue_connections = log.iter().filter(|s| **s == Seen::Connected(g_id)).count();
        assert_eq!(rogue_connections, 1, "the rogue reconnected: {log:?}");
        c.stop().await;
    })
    .await;
}
