//! Pulling a model's chunks from peers, and seeding the ones the store holds.
//!
//! [`pull`] fetches the chunks a range of layers needs (the shared chunk and one per layer)
//! from every peer that provides them in the DHT at once:
//! - the chunk's piece hashes come from one holder and must hash to the root the chain's
//!   manifest names; a resumed pull reuses those it checked before;
//! - each holder gets [`PullOptions::per_peer`] requests in flight, taking the next missing
//!   piece from one queue, so a fast peer takes more pieces and a slow one fewer;
//! - once the queue is empty, idle peers ask for pieces still in flight elsewhere (the first
//!   good answer wins), so the last pieces never wait on the slowest peer (BitTorrent's
//!   endgame);
//! - every piece is checked against its hash before it is written ([`Partial::put`]); a peer
//!   that sends a bad one is penalised on the network and dropped, and its pieces go back to
//!   the queue; a peer that fails [`PullOptions::max_failures`] times in a row is dropped.
//!
//! [`serve_pieces`] answers peers' piece requests from the store, with a bandwidth limit per
//! peer and in all ([`SeedOptions`]) on top of the network's per-peer concurrency limit, and
//! counts what it sent to whom ([`SeedStats`]). [`keep_provided`] keeps the DHT's provider
//! records in step with the store's complete chunks.

use crate::store::{piece_count, Partial, Store, StoreError};
use crate::TARGET;
use bitorch_network::pieces::{Request, Response};
use bitorch_network::{Handle, Misbehaviour, PeerId, StageInbound};
use bitorch_primitives::H256;
use bitorch_runtime::models::{Chunk, ChunkKind, Manifest};
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::{stream, StreamExt};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Piece-hash requests in flight at once.
const HASH_REQUESTS: usize = 4;

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// No peer provides a chunk the layers need.
    #[error("no peer provides chunk {root:?} ({what}); is a node holding the model online?")]
    NoProviders {
        /// The chunk.
        root: H256,
        /// What it holds.
        what: String,
    },
    /// No provider answered a chunk's piece hashes that hash to its root.
    #[error("no provider of chunk {root:?} sent its piece hashes: {reason}")]
    Hashes {
        /// The chunk.
        root: H256,
        /// The last failure.
        reason: String,
    },
    /// Every provider failed or was dropped with pieces still missing.
    #[error("{missing} pieces still missing and no provider left to ask (last failure: {reason})")]
    Stalled {
        /// Pieces missing.
        missing: u64,
        /// The last failure seen.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The network service stopped.
    #[error("the network: {0}")]
    Network(#[from] bitorch_network::Error),
}

/// How a pull behaves.
#[derive(Clone, Debug)]
pub struct PullOptions {
    /// Requests in flight per peer (at most the network's streams per connection,
    /// [`bitorch_network::Config::max_piece_streams_per_connection`], 16 by default).
    pub per_peer: usize,
    /// Time one piece request may take before it is asked elsewhere.
    pub request_timeout: Duration,
    /// Failures in a row (timeouts, refusals) after which a peer is dropped.
    pub max_failures: u32,
    /// How long to keep looking for providers of a chunk none provides yet.
    pub find_for: Duration,
    /// While a pull runs, the holders of the chunks it still lacks are looked up again this
    /// often, and the new ones are asked too.
    pub rediscover_every: Duration,
}

impl Default for PullOptions {
    fn default() -> Self {
        Self {
            per_peer: 8,
            request_timeout: Duration::from_secs(20),
            max_failures: 3,
            find_for: Duration::from_secs(30),
            rediscover_every: Duration::from_secs(5),
        }
    }
}

/// A pull's progress, updated as pieces arrive.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// Pieces the pull needs in all.
    pub pieces_total: u64,
    /// Pieces here (verified), reused ones included.
    pub pieces_done: u64,
    /// Pieces that were already here when the pull began (complete chunks, and pieces of an
    /// interrupted pull).
    pub pieces_reused: u64,
    /// Bytes fetched and verified.
    pub bytes: u64,
    /// Peers pieces are being fetched from now.
    pub peers: usize,
    /// Pieces that did not verify (their senders were dropped).
    pub bad_pieces: u64,
    /// Whether the pull has ended.
    pub finished: bool,
}

/// What a finished pull did.
#[derive(Clone, Debug, Default)]
pub struct PullReport {
    /// Chunks fetched (not already complete).
    pub chunks: usize,
    /// Pieces fetched.
    pub pieces_fetched: u64,
    /// Pieces that were already here, verified (complete chunks, and pieces of an
    /// interrupted pull): `pieces_fetched + pieces_reused` is every piece the layers need.
    pub pieces_reused: u64,
    /// Bytes fetched.
    pub bytes: u64,
    /// Bytes from each peer.
    pub by_peer: BTreeMap<String, u64>,
    /// Pieces that did not verify.
    pub bad_pieces: u64,
    /// Peers dropped for sending bad pieces.
    pub penalised: Vec<String>,
    /// Seconds it took.
    pub secs: f64,
}

/// The chunks of `manifest` that serving `layers` needs: the shared one and every chunk of
/// layers in the range (all of them for a manifest without a shared chunk).
pub fn needed_chunks(manifest: &Manifest, layers: &Range<u32>) -> Vec<Chunk> {
    manifest
        .chunks
        .iter()
        .filter(|c| match c.kind {
            ChunkKind::Layers { start, end } => start < layers.end && layers.start < end,
            _ => true,
        })
        .cloned()
        .collect()
}

fn what(chunk: &Chunk) -> String {
    match chunk.kind {
        ChunkKind::Layers { start, end } if end == start + 1 => format!("layer {start}"),
        ChunkKind::Layers { start, end } => format!("layers {start}..{end}"),
        ChunkKind::Shared => "header, embeddings and head".into(),
        ChunkKind::Embeddings => "embeddings".into(),
        ChunkKind::Head => "head".into(),
    }
}

#[derive(Default)]
struct PeerState {
    chunks: HashSet<usize>,
    failures: u32,
    gone: bool,
    bytes: u64,
    /// Its request slots running now.
    loops: usize,
}

type Key = (usize, u32);

struct Sched {
    partials: Vec<Partial>,
    queue: VecDeque<Key>,
    inflight: HashMap<Key, Vec<PeerId>>,
    peers: HashMap<PeerId, PeerState>,
    remaining: u64,
    last_failure: String,
    bad_pieces: u64,
    penalised: Vec<PeerId>,
}

impl Sched {
    fn live_peers(&self) -> usize {
        self.peers.values().filter(|p| !p.gone).count()
    }

    /// The next piece for `peer`: a queued one of a chunk it holds, or, with the queue empty of
    /// those, one in flight elsewhere (endgame).
    fn next_for(&mut self, peer: &PeerId) -> Option<Key> {
        let state = self.peers.get(peer).filter(|p| !p.gone)?;
        if let Some(pos) = self.queue.iter().position(|(c, _)| state.chunks.contains(c)) {
            let key = self.queue.remove(pos)?;
            self.inflight.insert(key, vec![*peer]);
            return Some(key);
        }
        let key = self
            .inflight
            .iter()
            .filter(|(k, who)| state.chunks.contains(&k.0) && who.len() < 2 && !who.contains(peer))
            .map(|(k, _)| *k)
            .min()?;
        self.inflight.entry(key).or_default().push(*peer);
        Some(key)
    }

    /// `peer` no longer works on `key`; back to the queue if nobody else does and it is
    /// still missing.
    fn release(&mut self, key: Key, peer: &PeerId) {
        if let Some(who) = self.inflight.get_mut(&key) {
            who.retain(|p| p != peer);
            if who.is_empty() {
                self.inflight.remove(&key);
                if !self.partials[key.0].has(key.1) {
                    self.queue.push_front(key);
                }
            }
        }
    }

    fn fail(&mut self, peer: &PeerId, max: u32, reason: String) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.failures += 1;
            if p.failures >= max {
                tracing::warn!(target: TARGET, %peer, %reason, "dropping a seeder after repeated failures");
                p.gone = true;
            }
        }
        self.last_failure = reason;
    }
}

/// Fetches the chunks of `manifest` that `layers` need and the store lacks, from the peers
/// that provide them, into `store`; `progress` follows it. The manifest must be the chain's
/// (its roots are what every piece is checked against).
pub async fn pull(
    net: &Handle,
    store: &Arc<Store>,
    manifest: &Manifest,
    layers: Range<u32>,
    options: &PullOptions,
    progress: &Arc<Mutex<Progress>>,
) -> Result<PullReport, PullError> {
    let t0 = Instant::now();
    store.put_manifest(manifest)?;
    let needed = needed_chunks(manifest, &layers);
    let pieces = |cs: &[Chunk]| cs.iter().map(|c| u64::from(piece_count(c))).sum::<u64>();
    let total = pieces(&needed);
    let (held, chunks): (Vec<Chunk>, Vec<Chunk>) =
        needed.into_iter().partition(|c| store.has_chunk(&c.root));
    let held = pieces(&held);
    set(progress, |p| {
        *p = Progress {
            pieces_total: total,
            pieces_done: held,
            pieces_reused: held,
            ..Default::default()
        }
    });
    if chunks.is_empty() {
        set(progress, |p| p.finished = true);
        return Ok(PullReport {
            pieces_reused: held,
            secs: t0.elapsed().as_secs_f64(),
            ..Default::default()
        });
    }

    // Who holds what: asked of the DHT again (for a while) until every chunk has a holder.
    let mut holders: Vec<Vec<PeerId>> = vec![Vec::new(); chunks.len()];
    let deadline = Instant::now() + options.find_for;
    loop {
        // Many lookups at once.
        let lookups: Vec<BoxFuture<'_, _>> = chunks
            .iter()
            .zip(&holders)
            .map(|(c, h)| {
                let (empty, root) = (h.is_empty(), c.root.0);
                async move {
                    if empty {
                        net.find_chunk_providers(root).await.map(Some)
                    } else {
                        Ok(None)
                    }
                }
                .boxed()
            })
            .collect();
        let found: Vec<_> = stream::iter(lookups).buffered(16).collect().await;
        for (i, found) in found.into_iter().enumerate() {
            if let Some(found) = found? {
                holders[i] = found;
            }
        }
        match holders.iter().position(Vec::is_empty) {
            None => break,
            Some(i) if Instant::now() >= deadline => {
                return Err(PullError::NoProviders { root: chunks[i].root, what: what(&chunks[i]) })
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }

    let found_at = t0.elapsed().as_secs_f64();
    // The piece hashes: kept from an interrupted pull, or from a holder (checked against the
    // root when the partial download opens); every chunk's at once.
    let fetches: Vec<BoxFuture<'_, _>> = chunks
        .iter()
        .zip(&holders)
        .map(|(c, hs)| {
            async move {
                let mut reason = String::from("no holder answered");
                if let Some(h) = store.partial_hashes(c) {
                    return Ok(Ok(h));
                }
                for peer in hs {
                    let request = Request::Hashes { root: c.root.0 };
                    let asked = net.piece_request(*peer, &request);
                    match tokio::time::timeout(options.request_timeout, asked).await {
                        Ok(Ok(Response::Hashes(h))) => match crate::store::check_hashes(c, &h) {
                            Ok(()) => return Ok(Ok(h)),
                            Err(e) => {
                                let _ = net.report_peer(*peer, Misbehaviour::InvalidResponse).await;
                                reason = format!("{peer} sent bad hashes: {e}");
                            }
                        },
                        Ok(Ok(other)) => reason = format!("{peer} answered {other:?}"),
                        Ok(Err(e)) => reason = e.to_string(),
                        Err(_) => reason = format!("{peer} did not answer in time"),
                    }
                }
                Ok::<_, PullError>(Err(PullError::Hashes { root: c.root, reason }))
            }
            .boxed()
        })
        .collect();
    let mut partials = Vec::with_capacity(chunks.len());
    // A few at a time: a connection carries a bounded number of streams.
    let fetched: Vec<_> = stream::iter(fetches).buffered(HASH_REQUESTS).collect().await;
    for (c, hashes) in chunks.iter().zip(fetched) {
        partials.push(store.partial(c, hashes??)?);
    }
    let hashed_at = t0.elapsed().as_secs_f64();

    let mut queue = VecDeque::new();
    let mut reused = held;
    for (i, p) in partials.iter().enumerate() {
        reused += p.present() as u64;
        queue.extend(p.missing().into_iter().map(|k| (i, k)));
    }
    let mut peers: HashMap<PeerId, PeerState> = HashMap::new();
    for (i, hs) in holders.iter().enumerate() {
        for h in hs {
            peers.entry(*h).or_default().chunks.insert(i);
        }
    }
    let remaining = queue.len() as u64;
    set(progress, |p| {
        p.pieces_done = reused;
        p.pieces_reused = reused;
        p.peers = peers.len();
    });
    tracing::info!(target: TARGET, chunks = chunks.len(), pieces = total, reused, peers = peers.len(), found_at, hashed_at, "pulling the model's chunks");
    let peer_list: Vec<PeerId> = peers.keys().copied().collect();
    let sched = Arc::new(Mutex::new(Sched {
        partials,
        queue,
        inflight: HashMap::new(),
        peers,
        remaining,
        last_failure: String::new(),
        bad_pieces: 0,
        penalised: Vec::new(),
    }));
    // Completes the chunks whose pieces are all here (those of an interrupted pull, say).
    {
        let s = lock(&sched);
        for p in &s.partials {
            p.complete()?;
        }
    }
    let mut tasks = tokio::task::JoinSet::new();
    // A peer's request slots; each takes itself off the peer's count when it ends.
    let spawn_slots = |tasks: &mut tokio::task::JoinSet<Result<(), PullError>>, peer: PeerId| {
        let n = options.per_peer.max(1);
        if let Some(p) = lock(&sched).peers.get_mut(&peer) {
            p.loops += n;
        }
        for _ in 0..n {
            let (net, sched, progress, options) =
                (net.clone(), sched.clone(), progress.clone(), options.clone());
            tasks.spawn(async move {
                let r = fetch_loop(net, peer, sched.clone(), progress, options).await;
                if let Some(p) = lock(&sched).peers.get_mut(&peer) {
                    p.loops = p.loops.saturating_sub(1);
                }
                r
            });
        }
    };
    for peer in peer_list {
        spawn_slots(&mut tasks, peer);
    }
    // Holders that appear while the pull runs (a node that just finished pulling the same
    // model, say) are looked up every `rediscover_every` and asked too.
    let (found_tx, mut found_rx) = tokio::sync::mpsc::channel::<Vec<(usize, Vec<PeerId>)>>(4);
    let rediscover = {
        let (net, sched, roots) =
            (net.clone(), sched.clone(), chunks.iter().map(|c| c.root.0).collect::<Vec<_>>());
        let every = options.rediscover_every;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let missing: Vec<usize> = {
                    let s = lock(&sched);
                    (0..roots.len()).filter(|&i| !s.partials[i].missing().is_empty()).collect()
                };
                if missing.is_empty() {
                    return;
                }
                let lookups = missing.into_iter().map(|i| {
                    let (net, root) = (net.clone(), roots[i]);
                    async move { (i, net.find_chunk_providers(root).await.unwrap_or_default()) }
                });
                let found: Vec<_> = stream::iter(lookups).buffered(16).collect().await;
                if found_tx.send(found).await.is_err() {
                    return;
                }
            }
        })
    };
    let mut failure = None;
    loop {
        let done = tokio::select! {
            done = tasks.join_next() => match done {
                Some(done) => done,
                None => break,
            },
            Some(found) = found_rx.recv() => {
                let mut fresh = Vec::new();
                {
                    let mut s = lock(&sched);
                    for (i, holders) in found {
                        for peer in holders {
                            let state = s.peers.entry(peer).or_default();
                            if !state.gone && state.chunks.insert(i) && state.loops == 0 {
                                fresh.push(peer);
                            }
                        }
                    }
                    let live = s.live_peers();
                    set(progress, |p| p.peers = live);
                }
                fresh.sort();
                fresh.dedup();
                for peer in fresh {
                    tracing::info!(target: TARGET, %peer, "a new holder joins the pull");
                    spawn_slots(&mut tasks, peer);
                }
                continue;
            }
        };
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failure.get_or_insert(e);
                tasks.abort_all();
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => {
                failure.get_or_insert(PullError::Stalled { missing: 0, reason: e.to_string() });
            }
        }
    }
    rediscover.abort();
    set(progress, |p| p.finished = true);
    if let Some(e) = failure {
        return Err(e);
    }
    let s = lock(&sched);
    if s.remaining > 0 {
        return Err(PullError::Stalled { missing: s.remaining, reason: s.last_failure.clone() });
    }
    let by_peer: BTreeMap<String, u64> =
        s.peers.iter().map(|(p, st)| (p.to_string(), st.bytes)).collect();
    let bytes = by_peer.values().sum();
    Ok(PullReport {
        chunks: chunks.len(),
        pieces_fetched: total - reused,
        pieces_reused: reused,
        bytes,
        by_peer,
        bad_pieces: s.bad_pieces,
        penalised: s.penalised.iter().map(ToString::to_string).collect(),
        secs: t0.elapsed().as_secs_f64(),
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn set(progress: &Mutex<Progress>, f: impl FnOnce(&mut Progress)) {
    f(&mut lock(progress));
}

/// A piece answer checked against its hash, or another answer.
enum Answer {
    Piece(Result<crate::store::Verified, StoreError>),
    Other(Response),
}

/// One of a peer's request slots: takes pieces for it until nothing is left it can serve.
async fn fetch_loop(
    net: Handle,
    peer: PeerId,
    sched: Arc<Mutex<Sched>>,
    progress: Arc<Mutex<Progress>>,
    options: PullOptions,
) -> Result<(), PullError> {
    loop {
        let next = {
            let mut s = lock(&sched);
            if s.remaining == 0 {
                return Ok(());
            }
            match s.next_for(&peer) {
                Some(key) => match s.partials[key.0].expected(key.1) {
                    Some(expected) => Some((key, s.partials[key.0].chunk().root, expected)),
                    None => {
                        s.release(key, &peer);
                        None
                    }
                },
                None => {
                    let gone = s.peers.get(&peer).is_none_or(|p| p.gone);
                    // Nothing for this peer: done unless pieces are in flight that may come
                    // back to the queue.
                    if gone || s.inflight.is_empty() {
                        return Ok(());
                    }
                    None
                }
            }
        };
        let Some((key, root, expected)) = next else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let request = Request::Piece { root: root.0, index: key.1 };
        let asked = net.piece_request(peer, &request);
        let answer = tokio::time::timeout(options.request_timeout, asked).await;
        // Checked before the download is locked: the request slots hash in parallel.
        let answer = answer.map(|r| {
            r.map(|resp| match resp {
                Response::Piece(bytes) => Answer::Piece(expected.verify(bytes)),
                other => Answer::Other(other),
            })
        });
        let (mut penalise, mut backoff) = (false, false);
        {
            let mut s = lock(&sched);
            match answer {
                Ok(Ok(Answer::Piece(piece))) => {
                    if s.partials[key.0].has(key.1) {
                        // Another peer's copy won the race (endgame).
                        s.release(key, &peer);
                        continue;
                    }
                    let len = piece.as_ref().map_or(0, |p| p.len() as u64);
                    match piece.and_then(|p| s.partials[key.0].put_verified(p)) {
                        Ok(()) => {
                            s.inflight.remove(&key);
                            s.remaining -= 1;
                            if let Some(p) = s.peers.get_mut(&peer) {
                                p.failures = 0;
                                p.bytes += len;
                            }
                            s.partials[key.0].complete()?;
                            let live = s.live_peers();
                            set(&progress, |p| {
                                p.pieces_done += 1;
                                p.bytes += len;
                                p.peers = live;
                            });
                        }
                        Err(StoreError::BadPiece { reason, .. }) => {
                            tracing::warn!(target: TARGET, %peer, %root, piece = key.1, reason, "a seeder sent a bad piece; dropping it");
                            s.bad_pieces += 1;
                            if !s.penalised.contains(&peer) {
                                s.penalised.push(peer);
                            }
                            s.last_failure = format!("{peer} sent a bad piece ({reason})");
                            if let Some(p) = s.peers.get_mut(&peer) {
                                p.gone = true;
                            }
                            s.release(key, &peer);
                            set(&progress, |p| p.bad_pieces += 1);
                            penalise = true;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(Ok(Answer::Other(Response::NotFound | Response::NoSuchPiece))) => {
                    if let Some(p) = s.peers.get_mut(&peer) {
                        p.chunks.remove(&key.0);
                    }
                    s.last_failure = format!("{peer} no longer holds chunk {root:?}");
                    s.release(key, &peer);
                }
                Ok(Ok(Answer::Other(Response::Busy))) => {
                    s.release(key, &peer);
                    backoff = true;
                }
                Ok(Ok(Answer::Other(Response::Hashes(_) | Response::Piece(_)))) => {
                    s.release(key, &peer);
                    if let Some(p) = s.peers.get_mut(&peer) {
                        p.gone = true;
                    }
                    penalise = true;
                }
                Ok(Err(e)) => {
                    s.release(key, &peer);
                    s.fail(&peer, options.max_failures, e.to_string());
                }
                Err(_) => {
                    s.release(key, &peer);
                    s.fail(&peer, options.max_failures, format!("{peer} timed out"));
                }
            }
        }
        if penalise {
            let _ = net.report_peer(peer, Misbehaviour::InvalidResponse).await;
            return Ok(());
        }
        if backoff {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Limits of a seeder.
#[derive(Clone, Debug)]
pub struct SeedOptions {
    /// Bytes per second sent to one peer (`None`: no limit).
    pub per_peer_rate: Option<u64>,
    /// Bytes per second sent in all (`None`: no limit).
    pub total_rate: Option<u64>,
    /// Test only: flip a byte of every piece sent (a corrupt seeder).
    pub unsafe_corrupt: bool,
}

/// What a seeder has sent.
#[derive(Clone, Debug, Default)]
pub struct SeedStats {
    /// Pieces sent.
    pub pieces: u64,
    /// Bytes of pieces sent.
    pub bytes: u64,
    /// Bytes sent to each peer.
    pub by_peer: BTreeMap<String, u64>,
    /// Requests refused (unknown chunk or piece, or malformed).
    pub refused: u64,
    /// Chunks provided in the DHT now.
    pub provided: usize,
}

/// When a rate-limited sender may send next.
#[derive(Debug)]
struct Pace {
    rate: u64,
    next: Instant,
}

impl Pace {
    /// Reserves `bytes` and returns when they may go.
    fn reserve(&mut self, bytes: u64) -> Instant {
        let now = Instant::now();
        let at = self.next.max(now);
        self.next = at + Duration::from_secs_f64(bytes as f64 / self.rate.max(1) as f64);
        at
    }
}

/// Answers peers' piece requests from `store` until the channel closes, within `options`'
/// rate limits; `stats` counts what went out.
pub async fn serve_pieces(
    mut requests: mpsc::Receiver<StageInbound>,
    net: Handle,
    store: Arc<Store>,
    options: SeedOptions,
    stats: Arc<Mutex<SeedStats>>,
) {
    let mut per_peer: HashMap<PeerId, Pace> = HashMap::new();
    let mut total = options.total_rate.map(|rate| Pace { rate, next: Instant::now() });
    let mut piece_sizes: HashMap<H256, u32> = HashMap::new();
    while let Some(StageInbound { peer, request, reply }) = requests.recv().await {
        let request = match Request::decode_bounded(&request) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(target: TARGET, %peer, error = %e, "bad piece request");
                lock(&stats).refused += 1;
                let _ = net.report_peer(peer, Misbehaviour::UndecodableMessage).await;
                continue;
            }
        };
        let answer = match request {
            Request::Hashes { root } => match store.piece_hashes(&H256(root)) {
                Ok(Some(h)) => Response::Hashes(h),
                _ => Response::NotFound,
            },
            Request::Piece { root, index } => {
                let root = H256(root);
                let size = match piece_sizes.get(&root) {
                    Some(s) => Some(*s),
                    None => piece_size_of(&store, &root).inspect(|s| {
                        piece_sizes.insert(root, *s);
                    }),
                };
                match size.map(|s| store.read_piece(&root, s, index)) {
                    Some(Ok(Some(mut bytes))) => {
                        if options.unsafe_corrupt {
                            if let Some(b) = bytes.first_mut() {
                                *b ^= 0xff;
                            }
                        }
                        Response::Piece(bytes)
                    }
                    Some(Ok(None)) if store.has_chunk(&root) => Response::NoSuchPiece,
                    _ => Response::NotFound,
                }
            }
        };
        let len = match &answer {
            Response::Piece(b) => b.len() as u64,
            Response::NotFound | Response::NoSuchPiece => {
                lock(&stats).refused += 1;
                0
            }
            _ => 0,
        };
        if len > 0 {
            let mut s = lock(&stats);
            s.pieces += 1;
            s.bytes += len;
            *s.by_peer.entry(peer.to_string()).or_default() += len;
        }
        let mut at = Instant::now();
        if let Some(rate) = options.per_peer_rate {
            let pace = per_peer.entry(peer).or_insert(Pace { rate, next: Instant::now() });
            at = at.max(pace.reserve(len));
        }
        if let Some(t) = total.as_mut() {
            at = at.max(t.reserve(len));
        }
        use parity_scale_codec::Encode;
        let bytes = answer.encode();
        if at <= Instant::now() {
            let _ = reply.send(bytes);
        } else {
            tokio::spawn(async move {
                tokio::time::sleep_until(at.into()).await;
                let _ = reply.send(bytes);
            });
        }
        if per_peer.len() > 4096 {
            let now = Instant::now();
            per_peer.retain(|_, p| p.next > now);
        }
    }
}

fn piece_size_of(store: &Store, root: &H256) -> Option<u32> {
    let models = store.models().ok()?;
    models
        .iter()
        .flat_map(|m| m.manifest.chunks.iter())
        .find(|c| c.root == *root)
        .map(|c| c.piece_size)
}

/// Keeps the DHT's provider records equal to the store's complete chunks, checking every
/// `every` (chunks pulled, imported or removed with `bitorch model` while the node runs are
/// picked up), until `stop`.
pub async fn keep_provided(
    net: Handle,
    store: Arc<Store>,
    every: Duration,
    stats: Arc<Mutex<SeedStats>>,
    stop: CancellationToken,
) {
    let mut last: Option<Vec<H256>> = None;
    loop {
        match store.complete_chunks() {
            Ok(roots) if last.as_ref() != Some(&roots) => {
                let keys = roots.iter().map(|r| r.0).collect();
                if net.provide_chunks(keys).await.is_err() {
                    return;
                }
                tracing::info!(target: TARGET, chunks = roots.len(), "providing the store's chunks in the DHT");
                lock(&stats).provided = roots.len();
                last = Some(roots);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(target: TARGET, error = %e, "cannot list the store's chunks"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
