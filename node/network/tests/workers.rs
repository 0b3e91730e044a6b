//! Worker announcements in the DHT on real loopback sockets: found across a line of nodes,
//! updated, withdrawn, expired; forged records rejected where they are written and where they
//! are read.

mod common;

use bitorch_network::behaviour::{IDENTIFY_VERSION, KAD_PROTOCOL};
use bitorch_network::workers::{self, WorkerRecord};
use bitorch_network::{
    Config, ModelId, Multiaddr, NodeKey, PeerId, StageInbound, WorkerAnnouncement,
};
use common::{config, eventually, eventually_within, run_bounded_for, TestNode};
use libp2p::futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::kad::store::RecordStore;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, kad, noise, tcp, yamux, Swarm};
use std::time::Duration;

const MODEL: ModelId = ModelId::repeat_byte(0xab);

fn announcement(model: ModelId, layers: std::ops::Range<u32>, free: u32) -> WorkerAnnouncement {
    WorkerAnnouncement {
        model,
        layer_start: layers.start,
        layer_end: layers.end,
        capacity: 8,
        free,
        tokens_per_sec: 40,
        account: [0x11; 32],
        expires_at_ms: 0,
        price: 1,
    }
}

/// A test node whose worker records live 3 s and are refreshed every second.
fn worker_config(boot_nodes: Vec<Multiaddr>) -> Config {
    let mut c = config(NodeKey::Ephemeral, boot_nodes);
    c.worker_record_ttl = Duration::from_secs(3);
    c.worker_refresh_interval = Duration::from_secs(1);
    c.find_workers_timeout = Duration::from_secs(3);
    c
}

/// A, B, C in a line: C boots from B, B from A.
async fn line() -> (TestNode, TestNode, TestNode) {
    let a = TestNode::start(worker_config(vec![])).await;
    let b = TestNode::start(worker_config(vec![a.addr.clone()])).await;
    let c = TestNode::start(worker_config(vec![b.addr.clone()])).await;
    (a, b, c)
}

/// Polls `node`'s lookup of `model` until `done` holds for its answer.
async fn find_until(
    node: &TestNode,
    model: ModelId,
    what: &str,
    done: impl Fn(&[(PeerId, WorkerAnnouncement)]) -> bool,
) -> Vec<(PeerId, WorkerAnnouncement)> {
    eventually_within(Duration::from_secs(20), what, || async {
        let found = node.handle.find_workers(model).await.expect("lookup");
        done(&found).then_some(found)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_found_across_the_dht_serves_then_withdraws_and_expires() {
    run_bounded_for(Duration::from_secs(90), async {
        let (mut a, b, c) = line().await;
        // A's test task plays the worker: it answers stage requests.
        let mut a_stage = a.stage.take().expect("stage requests");
        tokio::spawn(async move {
            while let Some(StageInbound { request, reply, .. }) = a_stage.recv().await {
                let _ = reply.send([b"layers 0..10 of ".as_slice(), &request].concat());
            }
        });

        let before = std::time::Instant::now();
        a.handle.announce_worker(announcement(MODEL, 0..10, 8)).await.expect("announce");
        // A lists itself at once.
        let own = a.handle.find_workers(MODEL).await.expect("own lookup");
        assert_eq!(own.len(), 1);
        assert_eq!(own[0].0, a.id());

        let found =
            find_until(&c, MODEL, "C finds A", |f| f.iter().any(|(p, _)| *p == a.id())).await;
        println!("C found A's announcement after {:?}", before.elapsed());
        assert_eq!(found.len(), 1, "{found:?}");
        let (peer, ann) = found[0];
        assert_eq!(peer, a.id());
        assert_eq!((ann.layer_start, ann.layer_end, ann.free), (0, 10, 8));
        assert_eq!(ann.account, [0x11; 32]);
        assert!(ann.expires_at_ms > workers::now_ms());

        // C reaches the worker it found.
        let answer = c.handle.stage_request(a.id(), b"hidden state".to_vec()).await.expect("stage");
        assert_eq!(answer, b"layers 0..10 of hidden state");

        // Announcing again replaces the record: C sees the new free count.
        a.handle.announce_worker(announcement(MODEL, 0..10, 3)).await.expect("update");
        find_until(&c, MODEL, "C sees the update", |f| {
            f.len() == 1 && f[0].0 == a.id() && f[0].1.free == 3
        })
        .await;
        // Other models are not mixed in.
        assert!(c
            .handle
            .find_workers(ModelId::repeat_byte(0xcd))
            .await
            .expect("lookup")
            .is_empty());

        // Withdrawn: no longer returned, by C or by A.
        assert!(a.handle.withdraw_worker(MODEL).await.expect("withdraw"));
        assert!(!a.handle.withdraw_worker(MODEL).await.expect("withdraw twice"));
        find_until(&c, MODEL, "C no longer sees A", |f| f.is_empty()).await;
        assert!(a.handle.find_workers(MODEL).await.expect("lookup").is_empty());

        // Expired: A announces another model, then goes away and stops refreshing it. The
        // copies B and C hold keep it listed until its 3 s are over, then C drops it.
        let other = ModelId::repeat_byte(0xef);
        a.handle.announce_worker(announcement(other, 10..20, 8)).await.expect("announce");
        find_until(&c, other, "C finds A for the other model", |f| f.len() == 1).await;
        // Let a refresh reach B and C.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let a_id = a.id();
        a.stop().await;
        let stopped = std::time::Instant::now();
        let still = c.handle.find_workers(other).await.expect("lookup");
        assert_eq!(still.iter().map(|(p, _)| *p).collect::<Vec<_>>(), vec![a_id], "copies held");
        find_until(&c, other, "A's announcement expires", |f| f.is_empty()).await;
        println!("A's announcement gone {:?} after A stopped", stopped.elapsed());
        assert!(stopped.elapsed() < Duration::from_secs(10));
        b.stop().await;
        c.stop().await;
    })
    .await;
}

#[tokio::test]
async fn empty_layer_ranges_are_not_announced() {
    let a = TestNode::start(worker_config(vec![])).await;
    let result = a.handle.announce_worker(announcement(MODEL, 5..5, 1)).await;
    assert!(matches!(result, Err(bitorch_network::Error::InvalidAnnouncement(_))));
    assert!(!a.handle.withdraw_worker(MODEL).await.expect("withdraw"));
    a.stop().await;
}

/// A hostile peer on the DHT: Kademlia and identify only.
#[derive(NetworkBehaviour)]
struct Forger {
    kad: kad::Behaviour<kad::store::MemoryStore>,
    identify: identify::Behaviour,
}

fn forger(key: &Keypair) -> Swarm<Forger> {
    let id = key.public().to_peer_id();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key.clone())
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .expect("transport")
        .with_behaviour(|key| {
            let mut kad = kad::Behaviour::with_config(
                id,
                kad::store::MemoryStore::new(id),
                kad::Config::new(KAD_PROTOCOL),
            );
            kad.set_mode(Some(kad::Mode::Server));
            let identify = identify::Behaviour::new(identify::Config::new(
                IDENTIFY_VERSION.into(),
                key.public(),
            ));
            Forger { kad, identify }
        })
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    swarm.listen_on(common::tcp()).expect("listen");
    swarm
}

/// A record for `MODEL` stored under `peer`'s key but signed by someone else.
fn forged_record(peer: &PeerId) -> kad::Record {
    let impostor = Keypair::generate_ed25519();
    let now = workers::now_ms();
    let mut claim = announcement(MODEL, 0..30, 100);
    claim.expires_at_ms = now + 60_000;
    let forged = WorkerRecord::sign(&impostor, claim, now, false, &[]).expect("sign");
    kad::Record::new(workers::record_key(&MODEL, peer), forged.to_bytes())
}

/// Runs `swarm`, connecting to `to`; once connected, announces itself as a provider of
/// `MODEL` and stores a forged record for itself: in the DHT (`put`), or only locally, to
/// serve it to whoever asks.
fn run_forger(
    mut swarm: Swarm<Forger>,
    to: (PeerId, Multiaddr),
    put: bool,
) -> tokio::task::JoinHandle<()> {
    let record = forged_record(swarm.local_peer_id());
    swarm.behaviour_mut().kad.add_address(&to.0, to.1.clone());
    swarm.dial(to.1).expect("dial");
    tokio::spawn(async move {
        let mut published = false;
        loop {
            let event = swarm.select_next_some().await;
            if let SwarmEvent::ConnectionEstablished { peer_id, .. } = event {
                if peer_id == to.0 && !published {
                    published = true;
                    let kad = &mut swarm.behaviour_mut().kad;
                    if put {
                        kad.put_record(record.clone(), kad::Quorum::One).expect("stored");
                    } else {
                        kad.store_mut().put(record.clone()).expect("stored");
                    }
                    kad.start_providing(workers::model_key(&MODEL)).expect("provider");
                }
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_worker_records_are_rejected_and_their_senders_banned() {
    run_bounded_for(Duration::from_secs(90), async {
        let (a, b, c) = line().await;
        a.handle.announce_worker(announcement(MODEL, 0..10, 8)).await.expect("announce");
        find_until(&c, MODEL, "C finds A", |f| f.len() == 1).await;

        // A writer puts a forged record into the DHT through B: every node it reaches refuses
        // to store it and bans it.
        let writer_key = Keypair::generate_ed25519();
        let writer_id = writer_key.public().to_peer_id();
        let writer = run_forger(forger(&writer_key), (b.id(), b.addr.clone()), true);
        eventually("B bans the writer", || async {
            b.handle.banned_peers().await.ok()?.contains(&writer_id).then_some(())
        })
        .await;

        // A liar only keeps a forged record of its own and provides the model: C, which it
        // connects to, fetches the record from it, rejects it and bans it.
        let liar_key = Keypair::generate_ed25519();
        let liar_id = liar_key.public().to_peer_id();
        let liar = run_forger(forger(&liar_key), (c.id(), c.addr.clone()), false);
        eventually("C bans the liar", || async {
            let found = c.handle.find_workers(MODEL).await.expect("lookup");
            assert_eq!(found.iter().map(|(p, _)| *p).collect::<Vec<_>>(), vec![a.id()]);
            c.handle.banned_peers().await.ok()?.contains(&liar_id).then_some(())
        })
        .await;

        // C still finds A, and only A.
        for _ in 0..3 {
            let found = c.handle.find_workers(MODEL).await.expect("lookup");
            assert_eq!(found.iter().map(|(p, _)| *p).collect::<Vec<_>>(), vec![a.id()]);
        }
        writer.abort();
        liar.abort();
        a.stop().await;
        b.stop().await;
        c.stop().await;
    })
    .await;
}
