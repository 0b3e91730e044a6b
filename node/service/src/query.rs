//! Typed queries and commands on the chain service.
//!
//! Every read another service makes of the chain, and every write it asks for, is one method
//! here: callers get plain values (a header, a job, an account) and cannot run code inside the
//! chain task. Each method is one round trip on the service's bounded channel and sees one
//! consistent state (no block is imported half way through a query).
//!
//! Reads: [`Handle::best`], [`Handle::finalized`], [`Handle::spec`], [`Handle::header`],
//! [`Handle::block`], [`Handle::hash_at`], [`Handle::account`], [`Handle::next_nonce`],
//! [`Handle::validators`], [`Handle::total_issuance`], [`Handle::job`],
//! [`Handle::next_job_id`], [`Handle::newest_open_job`], [`Handle::model`], [`Handle::models`],
//! [`Handle::active_model_with_manifest`], [`Handle::pending`], [`Handle::pool_len`],
//! [`Handle::state_root`], [`Handle::blocks_from`].
//!
//! Writes: [`Handle::submit`], [`Handle::sign_and_submit`], [`Handle::submit_gossiped`],
//! [`Handle::import`], [`Handle::author_and_import`], [`Handle::build_block`],
//! [`Handle::check_block`].

use crate::chain::Imported;
use crate::error::Error;
use crate::pool::PoolError;
use crate::service::Handle;
use bitorch_primitives::{keys::account_of, AccountId, BlockNumber, Commit, Hash, Header, Pair};
use bitorch_runtime::{
    balances::AccountData,
    extrinsic::Block,
    jobs::{Job, JobId, JobStatus},
    models::ModelRecord,
    staking::Ledger,
    Balances, Call, Jobs, Models, Staking, TransactionError, UncheckedExtrinsic,
};
use parity_scale_codec::Encode;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// What the chain knows of one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Free and reserved balance, and the nonce of its last included transaction.
    pub data: AccountData,
    /// The nonce its next transaction should carry (counting those in the pool).
    pub next_nonce: u64,
    /// Its staking ledger (empty when it never bonded).
    pub ledger: Ledger,
    /// Whether it is a validator candidate.
    pub candidate: bool,
    /// Whether it is in the active validator set.
    pub active_validator: bool,
    /// Whether it is a registered worker.
    pub worker: bool,
}

/// The validator set of the next height, as consensus starts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validators {
    /// The best block's number (the set is for the height after it).
    pub best: BlockNumber,
    /// Each validator with its voting power.
    pub powers: Vec<(AccountId, u64)>,
}

/// The chain spec's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecInfo {
    /// Its human name (`system_chain`).
    pub name: String,
    /// Its id (the folder under the base path).
    pub id: String,
    /// `Development`, `Local` or `Live` (`system_chainType`).
    pub chain_type: String,
}

/// A final block as sync sends it.
#[derive(Debug, Clone)]
pub struct FinalBlock {
    /// The block.
    pub block: Block,
    /// Its commit certificate.
    pub commit: Commit,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Handle {
    /// The best (and, with instant finality, final) block's header.
    pub async fn best(&self) -> Result<Header, Error> {
        self.with(|s| s.chain.best().clone()).await
    }

    /// The finalized block's header.
    pub async fn finalized(&self) -> Result<Header, Error> {
        self.with(|s| s.chain.finalized().clone()).await
    }

    /// The chain spec's names.
    pub async fn spec(&self) -> Result<SpecInfo, Error> {
        self.with(|s| {
            let spec = s.chain.spec();
            SpecInfo {
                name: spec.name.clone(),
                id: spec.id.clone(),
                chain_type: spec.chain_type.clone(),
            }
        })
        .await
    }

    /// The header with this hash, if the node has it.
    pub async fn header(&self, hash: Hash) -> Result<Option<Header>, Error> {
        self.with(move |s| s.chain.db().header(&hash).map_err(Error::from)).await?
    }

    /// The block with this hash (the best one when `None`) and its commit certificate.
    pub async fn block(
        &self,
        hash: Option<Hash>,
    ) -> Result<Option<(Block, Option<Commit>)>, Error> {
        self.with(move |s| {
            let hash = hash.unwrap_or_else(|| s.chain.best().hash());
            let Some(block) = s.chain.block(&hash)? else { return Ok(None) };
            let commit = s.chain.db().justification(&hash)?;
            Ok(Some((block, commit)))
        })
        .await?
    }

    /// The hash of block `number` (the best block when `None`).
    pub async fn hash_at(&self, number: Option<BlockNumber>) -> Result<Option<Hash>, Error> {
        self.with(move |s| {
            let n = number.unwrap_or(s.chain.best().number);
            s.chain.db().hash_at(n).map_err(Error::from)
        })
        .await?
    }

    /// Up to `max` final blocks from `from` on, with their certificates (for a syncing peer).
    pub async fn blocks_from(&self, from: BlockNumber, max: u32) -> Result<Vec<FinalBlock>, Error> {
        self.with(move |s| {
            let mut out = Vec::new();
            for n in from..from.saturating_add(u64::from(max)) {
                let Some(hash) = s.chain.db().hash_at(n)? else { break };
                let Some(block) = s.chain.block(&hash)? else { break };
                let Some(commit) = s.chain.db().justification(&hash)? else { break };
                out.push(FinalBlock { block, commit });
            }
            Ok(out)
        })
        .await?
    }

    /// What the chain knows of `who`.
    pub async fn account(&self, who: AccountId) -> Result<Account, Error> {
        self.with(move |s| {
            let st = s.chain.state();
            let data = Balances::account(st, &who)?;
            Ok(Account {
                next_nonce: s.pool.next_nonce(&who, data.nonce),
                data,
                ledger: Staking::ledger(st, &who)?,
                candidate: Staking::is_candidate(st, &who)?,
                active_validator: Staking::validator_set(st)?.contains(&who),
                worker: Staking::worker_info(st, &who)?.is_some(),
            })
        })
        .await?
    }

    /// The nonce `who`'s next transaction should carry (counting those in the pool).
    pub async fn next_nonce(&self, who: AccountId) -> Result<u64, Error> {
        self.with(move |s| {
            let n = Balances::nonce(s.chain.state(), &who)?;
            Ok(s.pool.next_nonce(&who, n))
        })
        .await?
    }

    /// The validators of the height after the best block, with their voting power.
    pub async fn validators(&self) -> Result<Validators, Error> {
        self.with(|s| Ok(Validators { best: s.chain.best().number, powers: s.chain.validators()? }))
            .await?
    }

    /// The total issuance of credits.
    pub async fn total_issuance(&self) -> Result<u128, Error> {
        self.with(|s| Ok(Balances::total_issuance(s.chain.state())?)).await?
    }

    /// The newest `limit` jobs (at most) with an id of at least `since` for which `keep`
    /// holds, newest first.
    pub async fn jobs_where(
        &self,
        since: JobId,
        limit: usize,
        keep: impl Fn(&Job) -> bool + Send + 'static,
    ) -> Result<Vec<(JobId, Job)>, Error> {
        self.with(move |s| {
            let st = s.chain.state();
            let next = Jobs::next_job_id(st)?;
            let mut out = Vec::new();
            for id in (since..next).rev() {
                if out.len() >= limit {
                    break;
                }
                if let Some(j) = Jobs::job(st, id)? {
                    if keep(&j) {
                        out.push((id, j));
                    }
                }
            }
            Ok(out)
        })
        .await?
    }

    /// The job with this id, if there is one.
    pub async fn job(&self, id: JobId) -> Result<Option<Job>, Error> {
        self.with(move |s| Ok(Jobs::job(s.chain.state(), id)?)).await?
    }

    /// The audits not yet resolved, as (job, claim index): what an auditor looks through for
    /// those assigned to it.
    pub async fn open_audits(&self) -> Result<Vec<(JobId, u32)>, Error> {
        self.with(move |s| Ok(Jobs::open_audits(s.chain.state())?)).await?
    }

    /// Audits that failed since genesis (each slashed its worker), and the stake they took.
    pub async fn slashes(&self) -> Result<bitorch_runtime::jobs::Slashes, Error> {
        self.with(move |s| Ok(Jobs::slashes(s.chain.state())?)).await?
    }

    /// The id the next job opened will get.
    pub async fn next_job_id(&self) -> Result<JobId, Error> {
        self.with(|s| Ok(Jobs::next_job_id(s.chain.state())?)).await?
    }

    /// The allowance `client` gave `gateway` (`jobs.Approve`), if any.
    pub async fn allowance(
        &self,
        client: AccountId,
        gateway: AccountId,
    ) -> Result<Option<bitorch_runtime::jobs::Allowance>, Error> {
        self.with(move |s| Ok(Jobs::allowance(s.chain.state(), &client, &gateway)?)).await?
    }

    /// The newest job with an id of at least `since` that `agent` opened for `client` from
    /// its allowance and that is still open.
    pub async fn newest_open_job_for(
        &self,
        client: AccountId,
        agent: AccountId,
        since: JobId,
    ) -> Result<Option<(JobId, Job)>, Error> {
        let keep = move |j: &Job| {
            j.client == client && j.agent.as_ref() == Some(&agent) && j.status == JobStatus::Open
        };
        Ok(self.jobs_where(since, 1, keep).await?.pop())
    }

    /// The newest job with an id of at least `since` that `client` opened and that is still
    /// open.
    pub async fn newest_open_job(
        &self,
        client: AccountId,
        since: JobId,
    ) -> Result<Option<(JobId, Job)>, Error> {
        let keep =
            move |j: &Job| j.client == client && j.agent.is_none() && j.status == JobStatus::Open;
        Ok(self.jobs_where(since, 1, keep).await?.pop())
    }

    /// The model registered under this id.
    pub async fn model(&self, id: Hash) -> Result<Option<ModelRecord>, Error> {
        self.with(move |s| Ok(Models::model(s.chain.state(), &id)?)).await?
    }

    /// Every registered model, in registration order.
    pub async fn models(&self) -> Result<Vec<(Hash, ModelRecord)>, Error> {
        self.with(|s| {
            let st = s.chain.state();
            let mut out = Vec::new();
            for id in Models::model_ids(st)? {
                if let Some(r) = Models::model(st, &id)? {
                    out.push((id, r));
                }
            }
            Ok(out)
        })
        .await?
    }

    /// The first registered active model whose manifest hashes to `manifest_hash`.
    pub async fn active_model_with_manifest(
        &self,
        manifest_hash: Hash,
    ) -> Result<Option<Hash>, Error> {
        Ok(self.models().await?.into_iter().find_map(|(id, r)| {
            (r.manifest_hash == manifest_hash
                && r.status == bitorch_runtime::models::ModelStatus::Active)
                .then_some(id)
        }))
    }

    /// The transactions in the pool.
    pub async fn pending(&self) -> Result<Vec<Arc<UncheckedExtrinsic>>, Error> {
        self.with(|s| s.pool.all()).await
    }

    /// How many transactions the pool holds.
    pub async fn pool_len(&self) -> Result<usize, Error> {
        self.with(|s| s.pool.len()).await
    }

    /// What the database holds in memory, and the number of keys in the state (which lives
    /// in memory whole).
    pub async fn memory(&self) -> Result<(bitorch_storage::Memory, usize), Error> {
        let (db, keys) = self.with(|s| (s.chain.db().memory(), s.chain.state().len())).await?;
        Ok((db?, keys))
    }

    /// Blocks imported since the node started, and the time their import took.
    pub async fn import_stats(&self) -> Result<crate::service::ImportStats, Error> {
        self.with(|s| s.imports).await
    }

    /// The encoded transactions among `hashes` that are still in the pool.
    pub async fn pooled(&self, hashes: Vec<Hash>) -> Result<Vec<(Hash, Vec<u8>)>, Error> {
        self.with(move |s| {
            hashes.iter().filter_map(|h| s.pool.get(h).map(|x| (*h, x.encode()))).collect()
        })
        .await
    }

    /// The root of the best block's state.
    pub async fn state_root(&self) -> Result<Hash, Error> {
        self.with(|s| s.chain.state().root()).await
    }

    /// Signs `calls` from `key` with consecutive nonces (after those in the pool), each valid
    /// for `mortality` blocks, and submits them to the pool; returns their hashes. Stops at the
    /// first the pool refuses (those before it stay submitted).
    pub async fn sign_and_submit(
        &self,
        key: Pair,
        calls: Vec<Call>,
        mortality: BlockNumber,
    ) -> Result<Vec<Hash>, Error> {
        self.with(move |s| {
            let me = account_of(&key);
            let genesis = s.chain.genesis();
            let mut out = Vec::with_capacity(calls.len());
            for call in calls {
                let nonce = Balances::nonce(s.chain.state(), &me)?;
                let nonce = s.pool.next_nonce(&me, nonce);
                let valid_until = s.chain.best().number.saturating_add(mortality);
                let xt = UncheckedExtrinsic::sign(&key, &genesis, nonce, 0, valid_until, call);
                out.push(s.submit(&xt.encode())?);
            }
            Ok(out)
        })
        .await?
    }

    /// Submits transactions that came in by gossip; returns whether any of them was forged
    /// (does not decode, or its signature does not verify), which condemns the whole message.
    /// Others the pool refuses (stale nonce, duplicate) are dropped without blame.
    pub async fn submit_gossiped(&self, txs: Vec<Vec<u8>>) -> Result<bool, Error> {
        self.with(move |s| {
            txs.iter().any(|tx| {
                matches!(
                    s.submit(tx),
                    Err(Error::Pool(PoolError::Invalid(
                        TransactionError::Malformed(_) | TransactionError::BadSignature
                    )))
                )
            })
        })
        .await
    }

    /// Imports a final block with its commit certificate.
    pub async fn import(&self, block: Block, commit: Commit) -> Result<Imported, Error> {
        self.with(move |s| s.import(block, commit)).await?
    }

    /// Authors, imports and finalizes the next block as the single validator `key` (dev).
    pub async fn author_and_import(&self, key: Pair) -> Result<Imported, Error> {
        self.with(move |s| s.author_and_import(&key)).await?
    }

    /// Builds a proposal for `height` from the pool's ready transactions, signed by `key`;
    /// `None` when `height` is not the one after the best block or the block cannot be built.
    pub async fn build_block(
        &self,
        key: Pair,
        height: BlockNumber,
    ) -> Result<Option<Block>, Error> {
        self.with(move |s| {
            if s.chain.best().number + 1 != height {
                return None;
            }
            let candidates =
                s.pool.ready(s.chain.state()).into_iter().map(|x| (*x).clone()).collect();
            let (block, _, built) = s.chain.author_block(&key, candidates, now_ms()).ok()?;
            s.drop_rejected(built.rejected);
            Some(block)
        })
        .await
    }

    /// Whether `block` is a valid next block (executes it without importing it).
    pub async fn check_block(&self, block: Block) -> Result<bool, Error> {
        self.with(move |s| s.chain.check_block(&block).is_ok()).await
    }
}

#[cfg(test)]
mod tests {
    use crate::service::spawn;
    use crate::{Chain, Event, PoolLimits, TxStatus};
    use bitorch_chain_spec::ChainSpec;
    use bitorch_primitives::keys::pair_from_suri;
    use bitorch_runtime::{models, Call};

    /// Two nodes register the same content at once: both transactions are valid when
    /// submitted, the block takes the first and refuses the second, which must leave the pool
    /// with its submitter told at once (else it, and every later transaction of its sender,
    /// waits until it expires).
    #[tokio::test]
    async fn a_transaction_the_proposed_block_refuses_leaves_the_pool_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let chain = Chain::open(&dir.path().join("db"), ChainSpec::dev().unwrap()).unwrap();
        let cancel = tokio_util::sync::CancellationToken::new();
        let (handle, _task) = spawn(chain, PoolLimits::default(), cancel.clone());
        let mut events = handle.subscribe();
        let manifest = models::example_manifest(4);
        let register = || Call::Models(models::Call::Register { manifest: manifest.clone() });
        let (alice, bob) = (pair_from_suri("//Alice").unwrap(), pair_from_suri("//Bob").unwrap());
        let first = handle.sign_and_submit(alice.clone(), vec![register()], 64).await.unwrap();
        let second = handle.sign_and_submit(bob.clone(), vec![register()], 64).await.unwrap();
        assert_eq!(handle.pool_len().await.unwrap(), 2);
        let block = handle.build_block(alice, 1).await.unwrap().expect("a block");
        assert_eq!(block.extrinsics.iter().map(|x| x.hash()).collect::<Vec<_>>(), first);
        assert_eq!(handle.pool_len().await.unwrap(), 1, "the refused one is still pooled");
        let told = loop {
            match events.try_recv() {
                Ok(Event::Tx(h, TxStatus::Invalid(why))) if h == second[0] => break why,
                Ok(_) => continue,
                Err(e) => panic!("the submitter was not told: {e}"),
            }
        };
        assert!(told.contains("already") || told.contains("exist"), "{told}");
        // Bob's next transaction takes the freed nonce and is ready at once.
        let again = handle
            .sign_and_submit(
                bob,
                vec![Call::Balances(bitorch_runtime::balances::Call::Transfer {
                    dest: bitorch_primitives::AccountId::new([7; 32]),
                    amount: bitorch_primitives::UNIT,
                })],
                64,
            )
            .await
            .unwrap();
        let pending = handle.pending().await.unwrap();
        assert!(pending.iter().any(|x| x.hash() == again[0] && x.nonce == 0), "{pending:?}");
        cancel.cancel();
    }
}
