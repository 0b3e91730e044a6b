//! The service's side of worker announcements ([`crate::workers`]): what this node announces
//! and keeps fresh, the lookups in progress, and the check of records other peers ask it to
//! store. Owned by the service task; every method takes the swarm it acts on.

use crate::behaviour::Behaviour;
use crate::error::Error;
use crate::peers::Misbehaviour;
use crate::workers::{self, ModelId, VerifiedRecord, WorkerAnnouncement, WorkerRecord};
use libp2p::identity::Keypair;
use libp2p::kad::store::RecordStore;
use libp2p::kad::{self, GetProvidersOk, GetRecordOk, QueryId, QueryResult, Quorum, Record};
use libp2p::{Multiaddr, PeerId, Swarm};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

const TARGET: &str = "network::workers";
/// Most models one node announces at once.
pub(crate) const MAX_ANNOUNCED_MODELS: usize = 16;
/// Most lookups in progress at once; more are refused as busy.
const MAX_FINDS: usize = 16;
/// Most record fetches in flight for one lookup; the other providers wait their turn.
const MAX_RECORD_FETCHES: usize = 16;
/// Most peers whose announced addresses are remembered.
const MAX_ADDRESS_BOOK: usize = 4096;

/// The answer to a lookup.
pub(crate) type FindReply = oneshot::Sender<Result<Vec<(PeerId, WorkerAnnouncement)>, Error>>;

/// What a query of this module is for.
#[derive(Clone, Copy, Debug)]
enum Role {
    /// The providers of the model of lookup `find`.
    Providers { find: u64 },
    /// The record of `peer` for lookup `find`.
    Record { find: u64, peer: PeerId },
    /// Publishing this node's record or provider record.
    Publish,
}

/// A lookup in progress.
struct Find {
    model: ModelId,
    reply: FindReply,
    /// The provider query, until it has finished.
    providers: Option<QueryId>,
    /// Providers whose record is yet to be fetched.
    waiting: VecDeque<PeerId>,
    /// Providers seen (fetched, being fetched or waiting).
    seen: HashSet<PeerId>,
    /// Record queries in flight.
    fetching: HashSet<QueryId>,
    /// The latest valid record of each provider.
    found: HashMap<PeerId, VerifiedRecord>,
}

/// What this node announces for one model.
struct Announced {
    announcement: WorkerAnnouncement,
    published_at_ms: u64,
}

pub(crate) struct Directory {
    key: Keypair,
    local: PeerId,
    ttl: Duration,
    max_workers: usize,
    announced: HashMap<ModelId, Announced>,
    /// When this node last published anything: publications are strictly increasing in time,
    /// so that a later one always replaces an earlier one.
    last_published_ms: u64,
    finds: HashMap<u64, Find>,
    next_find: u64,
    queries: HashMap<QueryId, Role>,
    /// Where found workers said they can be dialed.
    addresses: HashMap<PeerId, Vec<Multiaddr>>,
    /// A publication reached no peer (the node had none yet): publish again as soon as the
    /// routing table gains one, rather than at the next refresh.
    unpublished: bool,
}

impl Directory {
    pub(crate) fn new(key: Keypair, ttl: Duration, max_workers: usize) -> Self {
        Self {
            local: key.public().to_peer_id(),
            key,
            ttl,
            max_workers: max_workers.max(1),
            announced: HashMap::new(),
            last_published_ms: 0,
            finds: HashMap::new(),
            next_find: 0,
            queries: HashMap::new(),
            addresses: HashMap::new(),
            unpublished: false,
        }
    }

    /// Whether `id` is one of this module's queries.
    pub(crate) fn owns(&self, id: &QueryId) -> bool {
        self.queries.contains_key(id)
    }

    /// Whether a publication failed to reach any peer since the last refresh.
    pub(crate) fn needs_republish(&self) -> bool {
        self.unpublished && !self.announced.is_empty()
    }

    /// Whether this node announces anything.
    pub(crate) fn is_announcing(&self) -> bool {
        !self.announced.is_empty()
    }

    /// Where `peer` said it can be dialed, if it was found as a worker.
    pub(crate) fn addresses_of(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.addresses.get(peer).cloned().unwrap_or_default()
    }

    /// Announces (or replaces the announcement of) this node as a worker for
    /// `announcement.model`, and publishes it at once.
    pub(crate) fn announce(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        announcement: WorkerAnnouncement,
    ) -> Result<(), Error> {
        if announcement.layer_start >= announcement.layer_end {
            return Err(Error::InvalidAnnouncement("the layer range is empty"));
        }
        let model = announcement.model;
        if !self.announced.contains_key(&model) && self.announced.len() >= MAX_ANNOUNCED_MODELS {
            return Err(Error::TooManyAnnouncements { limit: MAX_ANNOUNCED_MODELS });
        }
        self.announced.insert(model, Announced { announcement, published_at_ms: 0 });
        self.publish(swarm, model)
    }

    /// Stops announcing `model`: no more refreshes, no more provider record, and a signed
    /// withdrawal replaces the record other nodes hold. Returns whether it was announced.
    pub(crate) fn withdraw(&mut self, swarm: &mut Swarm<Behaviour>, model: ModelId) -> bool {
        let Some(announced) = self.announced.remove(&model) else {
            return false;
        };
        let kad = &mut swarm.behaviour_mut().kad;
        kad.stop_providing(&workers::model_key(&model));
        let now = workers::now_ms();
        let published_at_ms = self.next_publication(now);
        let mut tombstone = announced.announcement;
        tombstone.expires_at_ms = now.saturating_add(self.ttl.as_millis() as u64);
        match WorkerRecord::sign(&self.key, tombstone, published_at_ms, true, &[]) {
            Ok(record) => self.put(swarm, model, record),
            Err(e) => tracing::warn!(target: TARGET, error = %e, "cannot sign a withdrawal"),
        }
        tracing::info!(target: TARGET, model = %model, "worker announcement withdrawn");
        true
    }

    /// Publishes every announcement again, with a new expiry and the current addresses.
    pub(crate) fn refresh(&mut self, swarm: &mut Swarm<Behaviour>) {
        self.unpublished = false;
        let models: Vec<ModelId> = self.announced.keys().copied().collect();
        for model in models {
            if let Err(e) = self.publish(swarm, model) {
                tracing::warn!(target: TARGET, error = %e, "cannot refresh a worker announcement");
            }
        }
    }

    fn next_publication(&mut self, now: u64) -> u64 {
        self.last_published_ms = now.max(self.last_published_ms.saturating_add(1));
        self.last_published_ms
    }

    fn publish(&mut self, swarm: &mut Swarm<Behaviour>, model: ModelId) -> Result<(), Error> {
        let now = workers::now_ms();
        let published_at_ms = self.next_publication(now);
        let expires_at_ms = now.saturating_add(self.ttl.as_millis() as u64);
        let Some(announced) = self.announced.get_mut(&model) else {
            return Ok(());
        };
        announced.announcement.expires_at_ms = expires_at_ms;
        announced.published_at_ms = published_at_ms;
        let announcement = announced.announcement;
        let addresses: Vec<Multiaddr> =
            swarm.external_addresses().chain(swarm.listeners()).cloned().collect();
        let record =
            WorkerRecord::sign(&self.key, announcement, published_at_ms, false, &addresses)
                .map_err(|e| Error::Sign(e.to_string()))?;
        self.put(swarm, model, record);
        match swarm.behaviour_mut().kad.start_providing(workers::model_key(&model)) {
            Ok(query) => {
                self.queries.insert(query, Role::Publish);
            }
            Err(e) => {
                tracing::warn!(target: TARGET, error = ?e, "cannot store the provider record")
            }
        }
        tracing::debug!(target: TARGET, model = %model, layers = ?(announcement.layer_start..announcement.layer_end), free = announcement.free, "worker announcement published");
        Ok(())
    }

    fn put(&mut self, swarm: &mut Swarm<Behaviour>, model: ModelId, record: WorkerRecord) {
        let mut dht = Record::new(workers::record_key(&model, &self.local), record.to_bytes());
        dht.expires = Some(Instant::now() + self.ttl);
        match swarm.behaviour_mut().kad.put_record(dht, Quorum::One) {
            Ok(query) => {
                self.queries.insert(query, Role::Publish);
            }
            Err(e) => tracing::warn!(target: TARGET, error = ?e, "cannot store the worker record"),
        }
    }

    /// Starts a lookup of the workers of `model`. Returns its id, for the deadline the caller
    /// sets with [`Directory::expire`]; `None` when it was answered at once.
    pub(crate) fn find(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        model: ModelId,
        reply: FindReply,
    ) -> Option<u64> {
        if self.finds.len() >= MAX_FINDS {
            let _ = reply.send(Err(Error::Busy));
            return None;
        }
        let id = self.next_find;
        self.next_find = self.next_find.wrapping_add(1);
        let query = swarm.behaviour_mut().kad.get_providers(workers::model_key(&model));
        self.queries.insert(query, Role::Providers { find: id });
        self.finds.insert(
            id,
            Find {
                model,
                reply,
                providers: Some(query),
                waiting: VecDeque::new(),
                seen: HashSet::new(),
                fetching: HashSet::new(),
                found: HashMap::new(),
            },
        );
        Some(id)
    }

    /// The deadline of lookup `id` passed: answers with what it found so far.
    pub(crate) fn expire(&mut self, swarm: &mut Swarm<Behaviour>, id: u64) {
        if self.finds.contains_key(&id) {
            tracing::debug!(target: TARGET, find = id, "worker lookup ends at its deadline");
            self.complete(swarm, id);
        }
    }

    /// Progress of one of this module's queries. Returns the peers that sent forged records.
    pub(crate) fn on_query(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        id: QueryId,
        result: QueryResult,
        last: bool,
        is_banned: &dyn Fn(&PeerId) -> bool,
    ) -> Vec<(PeerId, Misbehaviour)> {
        let mut penalties = Vec::new();
        let Some(role) = self.queries.get(&id).copied() else {
            return penalties;
        };
        if last {
            self.queries.remove(&id);
        }
        let find_id = match role {
            Role::Providers { find } | Role::Record { find, .. } => find,
            Role::Publish => {
                let reached = match &result {
                    QueryResult::PutRecord(r) => r.is_ok(),
                    QueryResult::StartProviding(r) => r.is_ok(),
                    _ => true,
                };
                if !reached {
                    tracing::debug!(target: TARGET, result = ?result, "publication reached no peer");
                    self.unpublished = true;
                }
                return penalties;
            }
        };
        let Some(find) = self.finds.get_mut(&find_id) else {
            return penalties;
        };
        match (role, result) {
            (Role::Providers { .. }, QueryResult::GetProviders(result)) => {
                if let Ok(GetProvidersOk::FoundProviders { providers, .. }) = result {
                    for peer in providers {
                        let fresh = peer != self.local
                            && !is_banned(&peer)
                            && find.seen.len() < self.max_workers
                            && find.seen.insert(peer);
                        if fresh {
                            find.waiting.push_back(peer);
                        }
                    }
                }
                if last {
                    find.providers = None;
                }
            }
            (Role::Record { peer, .. }, QueryResult::GetRecord(result)) => {
                if let Ok(GetRecordOk::FoundRecord(found)) = result {
                    let record = &found.record;
                    match workers::verify(
                        &record.value,
                        &record.key,
                        Some(&peer),
                        workers::now_ms(),
                    ) {
                        Ok(verified) => {
                            let newer = find.found.get(&peer).is_none_or(|old| {
                                old.record.published_at_ms < verified.record.published_at_ms
                            });
                            if newer {
                                find.found.insert(peer, verified);
                            }
                        }
                        Err(e) => {
                            tracing::debug!(target: TARGET, worker = %peer, from = ?found.peer, error = %e, "worker record rejected");
                            if let Some(from) = found.peer.filter(|_| e.is_forgery()) {
                                penalties.push((from, Misbehaviour::BadSignature));
                            }
                        }
                    }
                }
                if last {
                    find.fetching.remove(&id);
                }
            }
            (_, other) => {
                tracing::debug!(target: TARGET, result = ?other, "unexpected query result");
            }
        }
        self.advance(swarm, find_id);
        penalties
    }

    /// Starts record fetches up to the limit; answers when nothing is left to wait for.
    fn advance(&mut self, swarm: &mut Swarm<Behaviour>, id: u64) {
        let Some(find) = self.finds.get_mut(&id) else {
            return;
        };
        while find.fetching.len() < MAX_RECORD_FETCHES {
            let Some(peer) = find.waiting.pop_front() else {
                break;
            };
            let query =
                swarm.behaviour_mut().kad.get_record(workers::record_key(&find.model, &peer));
            find.fetching.insert(query);
            self.queries.insert(query, Role::Record { find: id, peer });
        }
        if find.providers.is_none() && find.waiting.is_empty() && find.fetching.is_empty() {
            self.complete(swarm, id);
        }
    }

    fn complete(&mut self, swarm: &mut Swarm<Behaviour>, id: u64) {
        let Some(find) = self.finds.remove(&id) else {
            return;
        };
        let kad = &mut swarm.behaviour_mut().kad;
        for query in find.providers.iter().chain(find.fetching.iter()) {
            self.queries.remove(query);
            if let Some(mut q) = kad.query_mut(query) {
                q.finish();
            }
        }
        let mut workers = Vec::new();
        if let Some(own) = self.announced.get(&find.model) {
            workers.push((self.local, own.announcement));
        }
        for (peer, verified) in find.found {
            if verified.record.withdrawn {
                continue;
            }
            if !verified.addresses.is_empty() {
                for addr in &verified.addresses {
                    swarm.add_peer_address(peer, addr.clone());
                }
                if self.addresses.len() >= MAX_ADDRESS_BOOK && !self.addresses.contains_key(&peer) {
                    // Forget an arbitrary peer: the book is a cache, the DHT has them all.
                    if let Some(old) = self.addresses.keys().next().copied() {
                        self.addresses.remove(&old);
                    }
                }
                self.addresses.insert(peer, verified.addresses);
            }
            workers.push((peer, verified.record.announcement));
        }
        tracing::debug!(target: TARGET, model = %find.model, found = workers.len(), "worker lookup done");
        let _ = find.reply.send(Ok(workers));
    }

    /// A peer asks this node to store a record. Only valid worker records are kept, and a
    /// record never replaces a later one of the same worker. Returns the misbehaviour of a
    /// sender of a forged record.
    pub(crate) fn on_inbound_record(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        source: PeerId,
        mut record: Record,
    ) -> Option<Misbehaviour> {
        let verified = match workers::verify(&record.value, &record.key, None, workers::now_ms()) {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(target: TARGET, %source, error = %e, "record not stored");
                return e.is_forgery().then_some(Misbehaviour::BadSignature);
            }
        };
        let store = swarm.behaviour_mut().kad.store_mut();
        let newer = store.get(&record.key).is_none_or(|old| {
            workers::decode_record(&old.value)
                .map_or(true, |old| old.published_at_ms < verified.record.published_at_ms)
        });
        if newer {
            // Kademlia already set an expiry from its TTL; the record's own may come sooner.
            let lifetime =
                verified.record.announcement.expires_at_ms.saturating_sub(workers::now_ms());
            let own = Instant::now() + Duration::from_millis(lifetime);
            record.expires = Some(record.expires.map_or(own, |e| e.min(own)));
            if let Err(e) = store.put(record) {
                tracing::debug!(target: TARGET, %source, error = ?e, "record not stored");
            }
        }
        None
    }

    /// A peer says it provides a key: kept (Kademlia checked that the sender is the provider).
    pub(crate) fn on_inbound_provider(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        record: kad::ProviderRecord,
    ) {
        if let Err(e) = swarm.behaviour_mut().kad.store_mut().add_provider(record) {
            tracing::debug!(target: TARGET, error = ?e, "provider record not stored");
        }
    }
}
