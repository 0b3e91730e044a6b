//! The node's Prometheus endpoint (`GET /metrics` on `--prometheus-port`, 9615 as in
//! Substrate, loopback unless `--prometheus-external`): the figures an operator watches, read
//! from the node's services at each scrape and written in the OpenMetrics text format.

use anyhow::{Context, Result};
use bitorch_api::Backend;
use bitorch_network::NatState;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// Where the figures come from: the services this node runs.
#[derive(Clone)]
pub struct Sources {
    /// The chain.
    pub chain: bitorch_service::Handle,
    /// The network, on a networked node.
    pub net: Option<bitorch_network::Handle>,
    /// What the node's seeder sent.
    pub seed: Option<Arc<Mutex<bitorch_serve::SeedStats>>>,
    /// The node's worker, if it serves a model.
    pub worker: Option<bitorch_compute::WorkerHandle>,
    /// The node's API gateway, if it serves a model.
    pub gateway: Option<Arc<bitorch_serve::GatewayBackend>>,
    /// What consensus is deciding, on a networked node.
    pub status: Option<bitorch_service::status::StatusReceiver>,
}

fn gauge(registry: &mut Registry, name: &str, help: &str, v: i64) {
    let g: Gauge = Gauge::default();
    g.set(v);
    registry.register(name, help, g);
}

fn counter(registry: &mut Registry, name: &str, help: &str, v: u64) {
    let c: Counter = Counter::default();
    c.inc_by(v);
    registry.register(name, help, c);
}

/// Panics in any of the node's threads since it started.
static PANICS: AtomicU64 = AtomicU64::new(0);

/// Counts every panic (for `bitorch_panics_total`) before the default hook reports it. A
/// panic in a task (a connection's, a request's) ends that task only, and the node goes on
/// in a state nobody designed: an operator should see it happened.
pub fn count_panics() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::Relaxed);
        report(info)
    }));
}

/// The current figures, in the OpenMetrics text format.
pub async fn render(s: &Sources) -> String {
    let mut r = Registry::with_prefix("bitorch");
    counter(
        &mut r,
        "panics",
        "Panics in the node's threads since it started",
        PANICS.load(Ordering::Relaxed),
    );
    let heights = Family::<Vec<(String, String)>, Gauge>::default();
    if let Ok(best) = s.chain.best().await {
        heights.get_or_create(&vec![("status".into(), "best".into())]).set(best.number as i64);
    }
    if let Ok(fin) = s.chain.finalized().await {
        heights.get_or_create(&vec![("status".into(), "finalized".into())]).set(fin.number as i64);
    }
    r.register("block_height", "Block height of the best and the finalized block", heights);
    if let Some(status) = &s.status {
        let st = status.borrow().clone();
        gauge(&mut r, "consensus_height", "Height consensus is deciding", st.height as i64);
        if let Some(round) = st.round {
            gauge(&mut r, "consensus_round", "Round of the height being decided", i64::from(round));
        }
        gauge(
            &mut r,
            "consensus_validating",
            "Whether this node votes at that height",
            i64::from(st.validating),
        );
        gauge(
            &mut r,
            "syncing",
            "Whether the node is catching up with its peers",
            i64::from(st.syncing),
        );
    }
    if let Ok(audits) = s.chain.open_audits().await {
        gauge(
            &mut r,
            "open_audits",
            "Audits drawn on chain and not yet judged",
            audits.len() as i64,
        );
    }
    if let Ok(sl) = s.chain.slashes().await {
        counter(&mut r, "slashes", "Audits failed on chain, each slashing its worker", sl.count);
        let amount: Counter<f64, AtomicU64> = Counter::default();
        amount.inc_by(sl.amount as f64 / bitorch_primitives::UNIT as f64);
        r.register("slashed_btr", "Stake those audits slashed, in BTR", amount);
    }
    if let Ok(next) = s.chain.next_job_id().await {
        counter(&mut r, "jobs", "Jobs opened on chain", next);
    }
    if let Ok(n) = s.chain.pool_len().await {
        gauge(&mut r, "tx_pool", "Transactions in the pool", n as i64);
    }
    if let Ok(im) = s.chain.import_stats().await {
        counter(&mut r, "block_imports", "Blocks imported since the node started", im.count);
        let secs: Counter<f64, AtomicU64> = Counter::default();
        secs.inc_by(im.seconds);
        r.register("block_import_seconds", "Seconds spent importing those blocks", secs);
    }
    if let Ok((db, keys)) = s.chain.memory().await {
        let by = Family::<Vec<(String, String)>, Gauge>::default();
        for (what, bytes) in [
            ("memtables", db.memtables),
            ("block_cache", db.block_cache),
            ("table_readers", db.table_readers),
        ] {
            by.get_or_create(&vec![("part".into(), what.into())]).set(bytes as i64);
        }
        r.register(
            "db_memory_bytes",
            "What the database holds in memory (memtables at most 16 MiB, block cache 8 MiB)",
            by,
        );
        gauge(
            &mut r,
            "state_keys",
            "Keys in the chain state, which is held in memory",
            keys as i64,
        );
    }
    if let Some(net) = &s.net {
        if let Ok(peers) = net.connected_peers().await {
            gauge(&mut r, "peers", "Connected peers", peers.len() as i64);
        }
        if let Ok(links) = net.peer_links().await {
            let by = Family::<Vec<(String, String)>, Gauge>::default();
            let relayed = links.iter().filter(|l| l.relayed).count() as i64;
            by.get_or_create(&vec![("connection".into(), "direct".into())])
                .set(links.len() as i64 - relayed);
            by.get_or_create(&vec![("connection".into(), "relayed".into())]).set(relayed);
            r.register(
                "peer_connections",
                "Connected peers, reached directly or only through a relay",
                by,
            );
        }
        if let Ok(reach) = net.reachability().await {
            let nat = Family::<Vec<(String, String)>, Gauge>::default();
            for state in [NatState::Public, NatState::Private, NatState::Unknown] {
                nat.get_or_create(&vec![("status".into(), state.as_str().into())])
                    .set(i64::from(reach.nat == state));
            }
            r.register("reachability", "Whether peers can dial this node (AutoNAT)", nat);
            gauge(
                &mut r,
                "relays",
                "Relays holding a reservation for this node",
                reach.relays.len() as i64,
            );
            counter(
                &mut r,
                "hole_punches",
                "Relayed connections made direct by hole punching",
                reach.hole_punches,
            );
            counter(
                &mut r,
                "hole_punch_failures",
                "Hole punching attempts that failed",
                reach.hole_punch_failures,
            );
        }
    }
    if let Some(seed) = &s.seed {
        let st = seed.lock().unwrap_or_else(|e| e.into_inner()).clone();
        counter(&mut r, "seed_pieces", "Model pieces sent to peers", st.pieces);
        counter(&mut r, "seed_bytes", "Model bytes sent to peers", st.bytes);
        counter(&mut r, "seed_refused", "Piece requests refused", st.refused);
    }
    if let Some(w) = &s.worker {
        if let Ok(st) = w.stats().await {
            gauge(
                &mut r,
                "stage_sessions",
                "Stage sessions open on this worker",
                st.sessions as i64,
            );
            gauge(
                &mut r,
                "stage_sessions_max",
                "Most stage sessions at once",
                st.max_sessions as i64,
            );
            let tps: Gauge<f64, AtomicU64> = Gauge::default();
            tps.set(st.tokens_per_sec.unwrap_or(0.0));
            r.register("stage_tokens_per_second", "Measured decoding speed of the stage", tps);
            let work = st.work;
            counter(&mut r, "stage_forwards", "Forward requests the stage computed", work.forwards);
            counter(
                &mut r,
                "stage_positions",
                "Positions (tokens) the stage computed",
                work.positions,
            );
            let bytes = Family::<Vec<(String, String)>, Counter>::default();
            bytes
                .get_or_create(&vec![("direction".into(), "in".into())])
                .inc_by(work.activation_bytes_in);
            bytes
                .get_or_create(&vec![("direction".into(), "out".into())])
                .inc_by(work.activation_bytes_out);
            r.register(
                "stage_activation_bytes",
                "Activation bytes received and sent by the stage",
                bytes,
            );
            counter(
                &mut r,
                "stage_batches",
                "Runs of the stage (sessions stepped together count once)",
                work.batches,
            );
            counter(
                &mut r,
                "stage_batched_forwards",
                "Forwards that ran together with another session's",
                work.batched_forwards,
            );
        }
        gauge(&mut r, "stage_queue", "Requests waiting for the stage", w.queued() as i64);
    }
    if let Some(g) = &s.gateway {
        let st = g.stats().await;
        counter(&mut r, "gateway_generations", "Generations the API gateway ran", st.generations);
        counter(&mut r, "gateway_jobs_opened", "Jobs opened for requests", st.jobs_opened);
        counter(
            &mut r,
            "gateway_channel_requests",
            "Requests paid from channels",
            st.channel_requests,
        );
        counter(&mut r, "gateway_failovers", "Stages failed over to another worker", st.failovers);
        counter(
            &mut r,
            "gateway_refused_no_route",
            "Requests refused for want of a route",
            st.refused_no_route,
        );
        let sessions: u64 = st.sessions_opened.values().sum();
        counter(&mut r, "gateway_sessions_opened", "Stage sessions the gateway opened", sessions);
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &r);
    out
}

/// Serves `GET /metrics` on `addr` until `cancel`; returns the bound address.
pub async fn serve(addr: SocketAddr, s: Sources, cancel: CancellationToken) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("the Prometheus endpoint cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let s = s.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    render(&s).await,
                )
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned()).await;
    });
    Ok(bound)
}
