//! Route planning: which workers, in which order, run a model's layers for one generation.
//!
//! Workers announce a [`WorkerInfo`] (in the node, a signed DHT record). A route is a chain of
//! workers whose layer ranges cover `[0, num_layers)` exactly, each starting where the previous
//! one ends. [`plan_route`] finds the chain of least estimated per-token latency with a
//! shortest-path pass over layer boundaries (a DAG: every range goes forward), where a stage
//! costs one network hop plus the time its worker takes per token ([`CostModel`]); ties go to
//! fewer hops, then to the order of the announcements. [`Bans`] keeps the workers a gateway
//! does not use for a while.

use crate::{error::PlanError, protocol::ModelId};
use bitorch_primitives::{AccountId, Balance};
use std::{
    collections::HashMap,
    hash::Hash,
    ops::Range,
    time::{Duration, Instant},
};

/// What a worker announces about the stage it serves.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerInfo<Id> {
    /// How the transport reaches it (a peer id in the node).
    pub id: Id,
    /// The account that signs its receipts.
    pub account: AccountId,
    /// The model it serves.
    pub model: ModelId,
    /// Its layers `[start, end)`.
    pub layers: Range<u32>,
    /// Sessions it can still open.
    pub capacity: u32,
    /// Its measured decoding throughput over its whole range, tokens per second.
    pub tokens_per_sec: f64,
    /// Its price per layer per token, in base units (it serves jobs paying at least this).
    pub price: Balance,
    /// Reached only through a relay (it is behind NAT and hole punching has not, or not yet,
    /// given a direct connection): every message takes an extra hop.
    pub relayed: bool,
}

/// How a route's per-token latency is estimated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CostModel {
    /// Seconds one hop adds (a round trip between the gateway and a worker).
    pub hop_secs: f64,
    /// Seconds a relay adds to a relayed worker's hop (the detour through the relay, and a
    /// relay's limits), so that a direct worker for the same layers is preferred.
    pub relay_secs: f64,
    /// Throughputs below this (including zero, negative and NaN announcements) count as this.
    pub min_tokens_per_sec: f64,
    /// Throughputs above this count as this (an announcement cannot make a worker free).
    pub max_tokens_per_sec: f64,
}

impl Default for CostModel {
    /// 5 ms per hop (a LAN round trip), 50 ms more through a relay (an internet round trip),
    /// throughputs clamped to 0.1..=100000 tokens/s.
    fn default() -> Self {
        Self {
            hop_secs: 0.005,
            relay_secs: 0.05,
            min_tokens_per_sec: 0.1,
            max_tokens_per_sec: 100_000.0,
        }
    }
}

impl CostModel {
    /// Estimated seconds per token for a stage on this worker: one hop (and the relay's
    /// detour if it is relayed) plus `1 / throughput`.
    pub fn stage_secs<Id>(&self, w: &WorkerInfo<Id>) -> f64 {
        let tps = if w.tokens_per_sec.is_nan() { 0.0 } else { w.tokens_per_sec };
        let tps = tps.clamp(self.min_tokens_per_sec, self.max_tokens_per_sec);
        let relay = if w.relayed { self.relay_secs.max(0.0) } else { 0.0 };
        self.hop_secs.max(0.0) + relay + 1.0 / tps
    }
}

/// A planned route.
#[derive(Debug, Clone, PartialEq)]
pub struct Route<Id> {
    /// The stages in layer order; their ranges meet end to end from 0 to the model's layers.
    pub stages: Vec<WorkerInfo<Id>>,
    /// Estimated seconds per token.
    pub cost: f64,
}

/// Plans the route of least estimated latency over `workers` (all serving one model) for a
/// model of `num_layers` layers, skipping workers for which `banned` holds and workers without
/// capacity, with the default [`CostModel`].
pub fn plan_route<Id: Clone>(
    num_layers: u32,
    workers: &[WorkerInfo<Id>],
    banned: impl Fn(&Id) -> bool,
) -> Result<Route<Id>, PlanError> {
    let cost = CostModel::default();
    plan_route_with(num_layers, workers, |w| {
        (w.capacity > 0 && !banned(&w.id)).then(|| cost.stage_secs(w))
    })
}

/// Like [`plan_route`], with the cost of each worker's stage given by `cost` (`None`: not
/// usable). Costs that are negative or not finite make a worker unusable.
pub fn plan_route_with<Id: Clone>(
    num_layers: u32,
    workers: &[WorkerInfo<Id>],
    cost: impl Fn(&WorkerInfo<Id>) -> Option<f64>,
) -> Result<Route<Id>, PlanError> {
    if num_layers == 0 {
        return Err(PlanError::NoLayers);
    }
    let n = num_layers as usize;
    // Usable workers by the boundary they start at, with their cost.
    let mut by_start: Vec<Vec<(usize, f64)>> = vec![Vec::new(); n];
    let mut covered = vec![false; n];
    for (i, w) in workers.iter().enumerate() {
        let (s, e) = (w.layers.start as usize, w.layers.end as usize);
        if s >= e || e > n {
            continue;
        }
        let Some(c) = cost(w).filter(|c| c.is_finite() && *c >= 0.0) else { continue };
        by_start[s].push((i, c));
        covered[s..e].iter_mut().for_each(|x| *x = true);
    }
    // best[b]: (cost, hops, (worker, previous boundary)) of the cheapest chain from 0 to b.
    let mut best: Vec<Option<Best>> = vec![None; n + 1];
    best[0] = Some((0.0, 0, None));
    for b in 0..n {
        let Some((cb, hb, _)) = best[b] else { continue };
        for &(i, c) in &by_start[b] {
            let e = workers[i].layers.end as usize;
            let cand = (cb + c, hb + 1);
            let better = match best[e] {
                None => true,
                Some((ce, he, _)) => {
                    let eps = 1e-12 * ce.abs().max(1.0);
                    cand.0 < ce - eps || (cand.0 <= ce + eps && cand.1 < he)
                }
            };
            if better {
                best[e] = Some((cand.0, cand.1, Some((i, b))));
            }
        }
    }
    let Some((total, _, _)) = best[n] else {
        let mut missing: Vec<Range<u32>> = Vec::new();
        for (l, &c) in covered.iter().enumerate() {
            if c {
                continue;
            }
            let l = l as u32;
            match missing.last_mut() {
                Some(r) if r.end == l => r.end = l + 1,
                _ => missing.push(l..l + 1),
            }
        }
        if !missing.is_empty() {
            return Err(PlanError::MissingLayers { missing });
        }
        let stuck_at = (0..=n).rev().find(|&b| best[b].is_some()).unwrap_or(0) as u32;
        return Err(PlanError::NoChain { stuck_at });
    };
    let mut stages = Vec::new();
    let mut b = n;
    while let Some((_, _, Some((i, prev)))) = best[b] {
        stages.push(workers[i].clone());
        b = prev;
    }
    stages.reverse();
    Ok(Route { stages, cost: total })
}

/// Plans the route for a request that pays at most `cap` per layer per token, over the
/// workers for which `usable` holds. The rule, cheapest first and then fastest: a job pays one
/// price to every stage, so the price of a route is the highest price among its workers; the
/// planner takes the lowest price `p` at which the workers asking at most `p` cover the model,
/// and among those workers the route of least estimated latency ([`CostModel`]). Returns `p`
/// (what the job is opened at) and the route.
///
/// When no route is within `cap` but one exists at a higher price, the error is
/// [`PlanError::TooExpensive`] naming the cheapest price; when no route exists at any price,
/// the error says which layers are missing, as [`plan_route`] does.
pub fn plan_priced<Id: Clone>(
    num_layers: u32,
    workers: &[WorkerInfo<Id>],
    cap: Balance,
    cost: CostModel,
    usable: impl Fn(&WorkerInfo<Id>) -> bool,
) -> Result<(Balance, Route<Id>), PlanError> {
    let mut levels: Vec<Balance> = workers.iter().filter(|w| usable(w)).map(|w| w.price).collect();
    levels.sort_unstable();
    levels.dedup();
    let at = |p: Balance| {
        plan_route_with(num_layers, workers, |w| {
            (usable(w) && w.price <= p).then(|| cost.stage_secs(w))
        })
    };
    for &p in levels.iter().filter(|&&p| p <= cap) {
        if let Ok(route) = at(p) {
            return Ok((p, route));
        }
    }
    for &p in levels.iter().filter(|&&p| p > cap) {
        if at(p).is_ok() {
            return Err(PlanError::TooExpensive { cap, cheapest: p });
        }
    }
    // No route at any price: say why, over every usable worker.
    at(Balance::MAX).map(|route| (Balance::MAX, route))
}

/// The cheapest chain found to a boundary: cost, hops, and the last stage (worker index and
/// the boundary it starts at).
type Best = (f64, usize, Option<(usize, usize)>);

/// Workers not to use until some time.
#[derive(Debug, Clone)]
pub struct Bans<Id> {
    until: HashMap<Id, Instant>,
}

impl<Id> Default for Bans<Id> {
    fn default() -> Self {
        Self { until: HashMap::new() }
    }
}

impl<Id: Eq + Hash + Clone> Bans<Id> {
    /// No bans.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bans `id` for `duration` from `now` (extending, never shortening, a current ban).
    pub fn ban(&mut self, id: Id, duration: Duration, now: Instant) {
        let until = now + duration;
        let e = self.until.entry(id).or_insert(until);
        *e = (*e).max(until);
    }

    /// Whether `id` is banned at `now`.
    pub fn is_banned(&self, id: &Id, now: Instant) -> bool {
        self.until(id, now).is_some()
    }

    /// When `id`'s ban ends, if it is banned at `now`.
    pub fn until(&self, id: &Id, now: Instant) -> Option<Instant> {
        self.until.get(id).copied().filter(|&t| now < t)
    }

    /// Forgets expired bans.
    pub fn prune(&mut self, now: Instant) {
        self.until.retain(|_, t| now < *t);
    }

    /// Lifts a ban.
    pub fn lift(&mut self, id: &Id) {
        self.until.remove(id);
    }

    /// Workers banned at `now`.
    pub fn banned(&self, now: Instant) -> Vec<Id> {
        self.until.iter().filter(|(_, &t)| now < t).map(|(id, _)| id.clone()).collect()
    }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    fn w(id: u8, layers: Range<u32>, tps: f64) -> WorkerInfo<u8> {
        WorkerInfo {
            id,
            account: AccountId::new([id; 32]),
            model: ModelId::zero(),
            layers,
            capacity: 4,
            tokens_per_sec: tps,
            price: 1,
            relayed: false,
        }
    }

    #[test]
    fn a_direct_worker_is_preferred_to_a_faster_relayed_one_for_the_same_layers() {
        let relayed = |id, layers, tps| WorkerInfo { relayed: true, ..w(id, layers, tps) };
        // Worker 2 (relayed) is twice as fast as worker 1 (direct) over 10..20.
        let ws = vec![w(0, 0..10, 100.0), w(1, 10..20, 100.0), relayed(2, 10..20, 200.0)];
        let route = plan_route(20, &ws, |_| false).unwrap();
        assert_eq!(route.stages.iter().map(|s| s.id).collect::<Vec<_>>(), vec![0, 1]);
        // Without the direct one, the relayed one serves.
        let route = plan_route(20, &ws, |id| *id == 1).unwrap();
        assert_eq!(route.stages.iter().map(|s| s.id).collect::<Vec<_>>(), vec![0, 2]);
        // Relayed or not, a far faster worker still wins: the detour is 50 ms a token.
        let ws = vec![w(0, 0..20, 10.0), relayed(1, 0..20, 1000.0)];
        assert_eq!(plan_route(20, &ws, |_| false).unwrap().stages[0].id, 1);
    }

    fn priced(id: u8, layers: Range<u32>, tps: f64, price: Balance) -> WorkerInfo<u8> {
        WorkerInfo { price, ..w(id, layers, tps) }
    }

    #[test]
    fn cheapest_price_first_then_fastest() {
        let cost = CostModel::default();
        let all = |_: &WorkerInfo<u8>| true;
        // Three whole-model workers at prices 3, 1, 2: the cheapest one, whatever its speed.
        let ws = [priced(1, 0..30, 100.0, 3), priced(2, 0..30, 10.0, 1), priced(3, 0..30, 50.0, 2)];
        let (p, r) = plan_priced(30, &ws, 10, cost, all).unwrap();
        assert_eq!((p, ids(&r)), (1, vec![2]));
        // Within a cap of 2 without worker 2: worker 3 at 2.
        let (p, r) = plan_priced(30, &ws, 2, cost, |w| w.id != 2).unwrap();
        assert_eq!((p, ids(&r)), (2, vec![3]));
        // A cap below every price names the cheapest.
        assert_eq!(
            plan_priced(30, &ws, 0, cost, all).unwrap_err(),
            PlanError::TooExpensive { cap: 0, cheapest: 1 }
        );
        // A route's price is its dearest stage's: halves at 1 and 4 cost 4; the whole at 3
        // is cheaper. At price 4 the faster of the two routes wins.
        let ws = [
            priced(1, 0..15, 100.0, 1),
            priced(2, 15..30, 100.0, 4),
            priced(3, 0..30, 10.0, 3),
            priced(4, 15..30, 300.0, 1),
        ];
        let (p, r) = plan_priced(30, &ws, 10, cost, |w| w.id != 4).unwrap();
        assert_eq!((p, ids(&r)), (3, vec![3]));
        // With worker 4 (price 1) the halves cost 1.
        let (p, r) = plan_priced(30, &ws, 10, cost, all).unwrap();
        assert_eq!((p, ids(&r)), (1, vec![1, 4]));
        // Among workers at or below the price, the fastest route: at a cap of 4 with workers
        // 1–3, price 3 wins (cheapest), never the faster halves at 4.
        let (p, _) = plan_priced(30, &ws, 4, cost, |w| w.id != 4).unwrap();
        assert_eq!(p, 3);
        // Missing layers stay a missing-layers error, whatever the cap.
        assert_eq!(
            plan_priced(30, &ws[..1], 10, cost, all).unwrap_err(),
            PlanError::MissingLayers { missing: vec![15..30] }
        );
    }

    fn ids(r: &Route<u8>) -> Vec<u8> {
        r.stages.iter().map(|s| s.id).collect()
    }

    fn assert_exact_cover(r: &Route<u8>, n: u32) {
        let mut next = 0;
        for s in &r.stages {
            assert_eq!(s.layers.start, next);
            next = s.layers.end;
        }
        assert_eq!(next, n);
    }

    #[test]
    fn prefers_fewer_hops_at_equal_speed() {
        let ws = [w(1, 0..10, 100.0), w(2, 10..20, 100.0), w(3, 20..30, 100.0), w(4, 0..30, 40.0)];
        // Three stages: 3 × (5 ms + 10 ms) = 45 ms; one stage: 5 ms + 25 ms = 30 ms.
        let r = plan_route(30, &ws, |_| false).unwrap();
        assert_eq!(ids(&r), vec![4]);
        assert!((r.cost - 0.030).abs() < 1e-9);
        // A slow whole-model worker loses to three fast ones.
        let ws = [w(1, 0..10, 100.0), w(2, 10..20, 100.0), w(3, 20..30, 100.0), w(4, 0..30, 10.0)];
        let r = plan_route(30, &ws, |_| false).unwrap();
        assert_eq!(ids(&r), vec![1, 2, 3]);
        assert_exact_cover(&r, 30);
    }

    #[test]
    fn prefers_faster_workers_and_fewer_hops_on_ties() {
        let ws = [w(1, 0..10, 50.0), w(2, 0..10, 200.0), w(3, 10..20, 100.0)];
        assert_eq!(ids(&plan_route(20, &ws, |_| false).unwrap()), vec![2, 3]);
        // Equal cost: 2 hops at 1/50 + 2 × 5 ms vs 1 hop at the same total: fewer hops win.
        let a = CostModel::default().stage_secs(&w(0, 0..10, 100.0));
        let one_tps = 1.0 / (2.0 * a - 0.005);
        let ws = [w(1, 0..10, 100.0), w(2, 10..20, 100.0), w(3, 0..20, one_tps)];
        assert_eq!(ids(&plan_route(20, &ws, |_| false).unwrap()), vec![3]);
    }

    #[test]
    fn honours_bans_and_capacity() {
        let mut ws = vec![w(1, 0..10, 100.0), w(2, 10..20, 500.0), w(3, 10..20, 100.0)];
        assert_eq!(ids(&plan_route(20, &ws, |_| false).unwrap()), vec![1, 2]);
        assert_eq!(ids(&plan_route(20, &ws, |id| *id == 2).unwrap()), vec![1, 3]);
        ws[1].capacity = 0;
        assert_eq!(ids(&plan_route(20, &ws, |_| false).unwrap()), vec![1, 3]);
        let mut bans = Bans::new();
        let now = Instant::now();
        bans.ban(3u8, Duration::from_secs(10), now);
        assert!(bans.is_banned(&3, now + Duration::from_secs(9)));
        assert!(!bans.is_banned(&3, now + Duration::from_secs(10)));
        let err = plan_route(20, &ws, |id| bans.is_banned(id, now)).unwrap_err();
        assert_eq!(err, PlanError::MissingLayers { missing: vec![10..20] });
    }

    #[test]
    fn names_missing_layers() {
        let ws = [w(1, 0..10, 100.0), w(2, 20..25, 100.0)];
        let err = plan_route(30, &ws, |_| false).unwrap_err();
        assert_eq!(err, PlanError::MissingLayers { missing: vec![10..20, 25..30] });
        assert!(err.to_string().contains("10..20, 25..30"), "{err}");
        assert_eq!(
            plan_route(30, &[], |_: &u8| false).unwrap_err(),
            PlanError::MissingLayers { missing: vec![0..30] }
        );
        assert_eq!(plan_route(0, &ws, |_| false).unwrap_err(), PlanError::NoLayers);
    }

    #[test]
    fn covered_but_unaligned() {
        let ws = [w(1, 0..10, 100.0), w(2, 5..30, 100.0)];
        assert_eq!(
            plan_route(30, &ws, |_| false).unwrap_err(),
            PlanError::NoChain { stuck_at: 10 }
        );
    }

    #[test]
    #[allow(clippy::reversed_empty_ranges)]
    fn ignores_hostile_announcements() {
        let ws = [
            w(1, 0..40, 1e9),
            w(2, 10..5, 1e9),
            w(3, 0..30, f64::NAN),
            w(4, 0..30, f64::INFINITY),
            w(5, 0..30, 50.0),
        ];
        // Out-of-range and inverted ranges are skipped; NaN counts as the slowest; infinity is
        // clamped, so the planner still picks the fastest plausible one.
        let r = plan_route(30, &ws, |_| false).unwrap();
        assert_eq!(ids(&r), vec![4]);
        assert!(r.cost > 0.0);
        let r = plan_route(30, &ws, |id| *id == 4).unwrap();
        assert_eq!(ids(&r), vec![5]);
    }

    #[test]
    fn exact_cover_on_random_layouts() {
        // A small deterministic sweep: whatever the layout, a route covers exactly.
        let mut seed = 0x1234_5678u32;
        let mut rnd = |m: u32| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed % m
        };
        for _ in 0..200 {
            let n = 1 + rnd(12);
            let ws: Vec<WorkerInfo<u8>> = (0..rnd(10))
                .map(|i| {
                    let s = rnd(n);
                    let e = s + 1 + rnd(n - s);
                    w(i as u8, s..e, 1.0 + rnd(100) as f64)
                })
                .collect();
            match plan_route(n, &ws, |_| false) {
                Ok(r) => assert_exact_cover(&r, n),
                Err(PlanError::MissingLayers { missing }) => assert!(!missing.is_empty()),
                Err(PlanError::NoChain { stuck_at }) => assert!(stuck_at < n),
                Err(e) => panic!("{e}"),
            }
        }
    }
}
