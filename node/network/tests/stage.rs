//! The stage protocol (`/bitorch/stage/1`) on real loopback sockets: round trips and their
//! latency, size limits on both sides, the bounded inbound queue, and a hostile peer that
//! sends an oversized request while honest requests are in flight.

mod common;

use bitorch_network::stage::{self, Response};
use bitorch_network::Refusal;
use bitorch_network::{Config, Error, NodeKey, StageInbound};
use common::{config, eventually, run_bounded, send_raw, TestNode};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Answers every stage request with its bytes reversed, after `delay`; a request starting
/// with `drop` gets no answer, one starting with `huge` gets `huge_len` bytes.
fn serve_stage(
    mut requests: mpsc::Receiver<StageInbound>,
    delay: Duration,
    huge_len: usize,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut served = 0;
        while let Some(StageInbound { request: data, reply, .. }) = requests.recv().await {
            served += 1;
            tokio::spawn(async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if data.starts_with(b"drop") {
                    drop(reply);
                } else if data.starts_with(b"huge") {
                    let _ = reply.send(vec![0; huge_len]);
                } else {
                    let _ = reply.send(data.into_iter().rev().collect());
                }
            });
        }
        served
    })
}

fn reversed(data: &[u8]) -> Vec<u8> {
    data.iter().rev().copied().collect()
}

/// Two connected nodes: B boots from A, and A serves stage requests.
async fn pair(a_config: Config, delay: Duration) -> (TestNode, TestNode) {
    let mut a = TestNode::start(a_config.clone()).await;
    let huge_len = a_config.max_stage_response_bytes + 1;
    serve_stage(a.stage.take().expect("stage requests"), delay, huge_len);
    let b = TestNode::start(config(NodeKey::Ephemeral, vec![a.addr.clone()])).await;
    eventually("B connected to A", || async { b.peers().await.contains(&a.id()).then_some(()) })
        .await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_requests_round_trip_fast_on_loopback() {
    run_bounded(async {
        let (a, b) = pair(config(NodeKey::Ephemeral, vec![]), Duration::ZERO).await;

        // One hidden state of a small model per request: 576 f32.
        let request: Vec<u8> = (0..576 * 4).map(|i| (i % 251) as u8).collect();
        let answer = b.handle.stage_request(a.id(), request.clone()).await.expect("warm-up");
        assert_eq!(answer, reversed(&request));

        let mut times = Vec::new();
        for i in 0..50u32 {
            let mut data = request.clone();
            data[..4].copy_from_slice(&i.to_le_bytes());
            let started = Instant::now();
            let answer = b.handle.stage_request(a.id(), data.clone()).await.expect("round trip");
            times.push(started.elapsed());
            assert_eq!(answer, reversed(&data));
        }
        let total: Duration = times.iter().sum();
        let mean = total / times.len() as u32;
        let (min, max) = (times.iter().min().expect("50"), times.iter().max().expect("50"));
        println!(
            "stage round trip over loopback TCP, 2304-byte request and answer: mean {mean:?}, \
             min {min:?}, max {max:?} over {} requests",
            times.len()
        );
        assert!(mean < Duration::from_millis(100), "mean round trip {mean:?}");

        // Logits of a 49,152-token vocabulary come back whole; so does a long prefill.
        let logits = b.handle.stage_request(a.id(), vec![1; 49_152 * 4]).await.expect("logits");
        assert_eq!(logits.len(), 49_152 * 4);
        let prefill: Vec<u8> = (0..4 << 20).map(|i| (i % 253) as u8).collect();
        let started = Instant::now();
        let answer = b.handle.stage_request(a.id(), prefill.clone()).await.expect("prefill");
        println!("4 MiB request and answer: {:?}", started.elapsed());
        assert_eq!(answer, reversed(&prefill));

        // Many at once on the one connection.
        let many = (0..64u8).map(|i| {
            let handle = b.handle.clone();
            let peer = a.id();
            async move { (i, handle.stage_request(peer, vec![i, 0, 1]).await) }
        });
        for (i, answer) in libp2p::futures::future::join_all(many).await {
            assert_eq!(answer.expect("concurrent request"), vec![1, 0, i]);
        }

        // No answer from the node: a typed refusal.
        let dropped = b.handle.stage_request(a.id(), b"drop me".to_vec()).await;
        assert!(
            matches!(dropped, Err(Error::StageRefused { error: Refusal::Unavailable, .. })),
            "{dropped:?}"
        );
        a.stop().await;
        b.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_requests_past_the_queue_or_the_size_limits_are_refused() {
    run_bounded(async {
        let mut a_config = config(NodeKey::Ephemeral, vec![]);
        a_config.max_pending_stage_requests = 4;
        a_config.max_stage_response_bytes = 64 * 1024;
        let (a, b) = pair(a_config, Duration::from_millis(500)).await;

        // Eight at once where four may wait: four answers, four refusals as busy.
        let requests = (0..8u8).map(|i| {
            let handle = b.handle.clone();
            let peer = a.id();
            async move { handle.stage_request(peer, vec![i]).await }
        });
        let results = libp2p::futures::future::join_all(requests).await;
        let answered = results.iter().filter(|r| r.is_ok()).count();
        let busy = results
            .iter()
            .filter(|r| matches!(r, Err(Error::StageRefused { error: Refusal::Busy, .. })))
            .count();
        assert_eq!((answered, busy), (4, 4), "{results:?}");

        // An answer over the node's limit is refused by the node, not sent.
        let huge = b.handle.stage_request(a.id(), b"huge".to_vec()).await;
        assert!(
            matches!(huge, Err(Error::StageRefused { error: Refusal::ResponseTooLarge, .. })),
            "{huge:?}"
        );

        // A request over the sender's own limit never leaves it.
        let limit = b_limit();
        let oversized = b.handle.stage_request(a.id(), vec![0; limit + 1]).await;
        assert!(matches!(oversized, Err(Error::MessageTooLarge { .. })), "{oversized:?}");
        a.stop().await;
        b.stop().await;
    })
    .await;
}

fn b_limit() -> usize {
    Config::new(NodeKey::Ephemeral).max_stage_request_bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_stage_request_is_refused_without_harming_requests_in_flight() {
    run_bounded(async {
        let mut a_config = config(NodeKey::Ephemeral, vec![]);
        a_config.max_stage_request_bytes = 256 * 1024;
        let (a, b) = pair(a_config, Duration::from_millis(700)).await;

        // B's requests wait 700 ms for their answers at A...
        let in_flight: Vec<_> = (0..16u8)
            .map(|i| {
                let handle = b.handle.clone();
                let peer = a.id();
                tokio::spawn(async move { handle.stage_request(peer, vec![i; 1000]).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;

        // ...while a hostile peer sends A a request over its limit: refused (or its stream cut
        // at the limit) and banned.
        let (hostile, answer) =
            send_raw(&a, stage::PROTOCOL, Duration::from_secs(10), vec![0; 256 * 1024 * 4]).await;
        if let Some(bytes) = answer {
            let refusal: Response =
                parity_scale_codec::Decode::decode(&mut bytes.as_slice()).expect("a refusal");
            assert_eq!(refusal, Response::Refused(Refusal::BadRequest));
        }
        eventually("the hostile peer banned", || async {
            let banned = a.handle.banned_peers().await.ok()?;
            banned.contains(&hostile).then_some(())
        })
        .await;

        // B's requests are all answered, and B is still welcome.
        for (i, request) in in_flight.into_iter().enumerate() {
            let answer = request.await.expect("task").expect("answered");
            assert_eq!(answer, vec![i as u8; 1000]);
        }
        assert!(!a.handle.banned_peers().await.expect("banned").contains(&b.id()));
        assert_eq!(b.handle.stage_request(a.id(), vec![1, 2]).await.expect("after"), vec![2, 1]);
        a.stop().await;
        b.stop().await;
    })
    .await;
}
