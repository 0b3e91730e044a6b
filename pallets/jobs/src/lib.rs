//! The jobs pallet: the inference market.
//!
//! A client opens a job for an active model and escrows `max_tokens × layers × price` credits
//! (reserved in its own account): a channel that pays for any number of stage sessions, on any
//! workers, until its escrow or its time runs out. The client acknowledges each session's work
//! as it goes with signed cumulative [`Voucher`]s (job, session, worker, layers, positions,
//! running trace hash); a worker claims its pay itself ([`Call::Claim`], signed by the worker)
//! with the latest voucher of a session. A claim is valid only with the job's client's
//! signature ([`Error::BadVoucherSignature`]), only from the worker it names
//! ([`Error::NotVoucherWorker`]), once per worker and session ([`Error::DuplicateClaim`]), and
//! within the escrow. Active validators audit claims. At settlement the escrow pays each claim
//! `layers × positions × price` and refunds the rest.
//!
//! Life cycle of a job ([`JobStatus`]):
//! - `Open` from [`Call::OpenJob`] until its deadline (`opened_at + job_timeout`): workers
//!   open sessions for it and claim.
//! - [`Call::CloseJob`] by the client, or the deadline in [`Pallet::on_initialize`]: the job
//!   enters `Challenge { settle_at }` (`challenge_window` blocks later), the claim window:
//!   claims are still accepted, so closing a job cannot cut off the work it acknowledged.
//! - At `settle_at`, [`Pallet::on_initialize`] pays the claims and refunds the rest
//!   (`Settled`), or refunds everything when nobody claimed (`Refunded`).
//! - A failed audit, any time before settlement, slashes the worker's stake by
//!   `audit_slash_percent` (burned by staking), refunds the client's whole escrow and ends the
//!   job (`Failed`); nobody is paid.
//!
//! Settlement never fails a block: each due job is processed in its own overlay, and a job whose
//! processing fails is marked `Stuck` with the reason, its escrow left reserved (and counted in
//! [`Pallet::total_escrow`]). A payment that cannot be made to one worker (its account would be
//! left below the existential deposit) is refunded to the client instead and recorded as unpaid.
//!
//! A `job_timeout` or `challenge_window` of zero is treated as one block: a job always has at
//! least one block to receive claims, and settles in a later block than the one that closed
//! it.

use bitorch_pallet_support::{
    self as support, Context, Currency, CurrencyError, ModelRegistry, Storage, StorageError,
    WorkerRegistry,
};
use bitorch_primitives::{AccountId, Balance, BlockNumber, Signature, H256};
use parity_scale_codec::{Decode, Encode};
use std::marker::PhantomData;

mod error;
pub use error::Error;

#[cfg(test)]
mod tests;

const PALLET: &str = "jobs";

pub use bitorch_primitives::receipt::{JobId, SignedVoucher, Voucher};

/// Hard cap on claims per job, whatever `Params::max_claims` says.
pub const MAX_CLAIMS: u32 = 1_024;
/// Most jobs scheduled at one block.
pub const MAX_DUE_PER_BLOCK: u32 = 1_024;
/// How many blocks past its intended settlement block a job may be pushed when that block's
/// schedule is full.
pub const MAX_SCHEDULE_SEARCH: u64 = 1_024;
/// Longest reason stored with a `Stuck` job.
pub const MAX_STUCK_REASON: usize = 256;

/// Jobs parameters, set at genesis.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Params {
    /// Blocks from opening to the deadline (0 is treated as 1).
    #[codec(compact)]
    pub job_timeout: BlockNumber,
    /// Blocks between closing (or the deadline) and settlement, during which claims and
    /// audits are still accepted (0 is treated as 1).
    #[codec(compact)]
    pub challenge_window: BlockNumber,
    /// Percentage of a worker's stake slashed on a failed audit (above 100 counts as 100).
    pub audit_slash_percent: u8,
    /// Most claims per job (capped at [`MAX_CLAIMS`]).
    #[codec(compact)]
    pub max_claims: u32,
}

impl Default for Params {
    /// Development values: 100-block timeout, 20-block challenge window, 10% slash, 256
    /// claims.
    fn default() -> Self {
        Self { job_timeout: 100, challenge_window: 20, audit_slash_percent: 10, max_claims: 256 }
    }
}

/// An auditor's verdict on a claim.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Verdict {
    /// The validator that audited.
    pub auditor: AccountId,
    /// Whether the re-execution matched.
    pub passed: bool,
    /// Block of the verdict.
    #[codec(compact)]
    pub at: BlockNumber,
}

/// A claim as the job holds it.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct ClaimRecord {
    /// The client's voucher it claims with.
    pub voucher: Voucher,
    /// The client's signature on it (evidence that the client acknowledged the work).
    pub signature: Signature,
    /// Block in which it was submitted.
    #[codec(compact)]
    pub submitted_at: BlockNumber,
    /// The audit verdict, if audited.
    pub verdict: Option<Verdict>,
    /// What settlement paid the worker (0 until settled, or if the payment could not be made).
    #[codec(compact)]
    pub paid: Balance,
}

/// Where a job is in its life cycle.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum JobStatus {
    /// Accepting sessions and claims until the deadline.
    #[codec(index = 0)]
    Open,
    /// Closed (or past its deadline); claims and audits still accepted; settles at
    /// `settle_at`.
    #[codec(index = 1)]
    Challenge {
        /// Block at whose start the job settles.
        #[codec(compact)]
        settle_at: BlockNumber,
    },
    /// Paid out.
    #[codec(index = 2)]
    Settled {
        /// Paid to workers.
        #[codec(compact)]
        paid: Balance,
        /// Returned to the client.
        #[codec(compact)]
        refunded: Balance,
    },
    /// Settled with no claims; the whole escrow returned to the client.
    #[codec(index = 3)]
    Refunded,
    /// A claim failed its audit: the worker was slashed, the client refunded in full.
    #[codec(index = 4)]
    Failed {
        /// The claim that failed.
        #[codec(compact)]
        claim_index: u32,
        /// The auditor.
        auditor: AccountId,
        /// Stake slashed (burned) from the worker.
        #[codec(compact)]
        slashed: Balance,
    },
    /// Processing at its due block failed; the escrow stays reserved. Should never happen.
    #[codec(index = 5)]
    Stuck {
        /// Why (UTF-8, at most [`MAX_STUCK_REASON`] bytes).
        reason: Vec<u8>,
    },
}

impl JobStatus {
    /// Whether the job still holds its escrow (Open, Challenge or Stuck).
    pub fn holds_escrow(&self) -> bool {
        matches!(self, JobStatus::Open | JobStatus::Challenge { .. } | JobStatus::Stuck { .. })
    }
}

/// An inference job.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Job {
    /// The client that opened it and pays.
    pub client: AccountId,
    /// The model.
    pub model: H256,
    /// The model's layer count when the job opened.
    pub layer_count: u32,
    /// Token positions the escrow covers over the whole model (a claim covers at most this
    /// many positions).
    pub max_tokens: u32,
    /// Price per layer per token.
    #[codec(compact)]
    pub price_per_layer_token: Balance,
    /// Escrowed (reserved from the client): max_tokens × layer_count × price.
    #[codec(compact)]
    pub escrow: Balance,
    /// Block it opened in.
    #[codec(compact)]
    pub opened_at: BlockNumber,
    /// Block at whose start it stops accepting sessions (claims go on until settlement).
    #[codec(compact)]
    pub deadline: BlockNumber,
    /// Where it is in its life cycle.
    pub status: JobStatus,
    /// Claims submitted (at most `max_claims`).
    pub claims: Vec<ClaimRecord>,
    /// Sum of what the claims are worth (never above `escrow`).
    #[codec(compact)]
    pub claimed: Balance,
}

/// Calls of the jobs pallet.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Call {
    /// Opens a job; the signer is the client and escrows max_tokens × layers × price.
    #[codec(index = 0)]
    OpenJob {
        /// An active model.
        model: H256,
        /// Token positions over the whole model the escrow covers.
        #[codec(compact)]
        max_tokens: u32,
        /// Price per layer per token.
        #[codec(compact)]
        price_per_layer_token: Balance,
    },
    /// A worker's claim for one session of a job, signed by the worker the voucher names
    /// ([`Error::NotVoucherWorker`] otherwise), with the job's client's signature on the
    /// voucher, which is what authorizes paying from its escrow. Accepted while the job is open
    /// or in its claim window, once per worker and session.
    #[codec(index = 1)]
    Claim {
        /// The client's latest voucher of the session.
        voucher: SignedVoucher,
    },
    /// Closes an open job (client only): it takes no new sessions, and settles after the claim
    /// window.
    #[codec(index = 2)]
    CloseJob {
        /// The job.
        #[codec(compact)]
        job: JobId,
    },
    /// An active validator's vote on a claim. The claim's verdict is reached when the
    /// validators voting one way hold at least two thirds of the active set's weight: failed
    /// slashes the worker and refunds the client, passed closes the audit. One vote decides
    /// only where one validator holds that much (a one-validator dev chain).
    #[codec(index = 3)]
    SubmitAudit {
        /// The job.
        #[codec(compact)]
        job: JobId,
        /// Index of the claim in the job.
        #[codec(compact)]
        claim_index: u32,
        /// Whether re-execution matched the commitment.
        passed: bool,
    },
}

/// The jobs pallet, over a currency `C`, the staking registry `W` (workers, validators,
/// slashing) and the model registry `M`.
pub struct Pallet<C, W, M>(PhantomData<(C, W, M)>);

fn job_key(id: JobId) -> Vec<u8> {
    support::map_key(PALLET, "job", &id)
}

fn due_key(block: BlockNumber) -> Vec<u8> {
    support::map_key(PALLET, "due", &block)
}

fn params_key() -> Vec<u8> {
    support::value_key(PALLET, "params")
}

fn next_id_key() -> Vec<u8> {
    support::value_key(PALLET, "next_job_id")
}

fn votes_key(job: JobId, claim_index: u32) -> Vec<u8> {
    support::map_key(PALLET, "votes", &(job, claim_index))
}

fn total_escrow_key() -> Vec<u8> {
    support::value_key(PALLET, "total_escrow")
}

impl<C: Currency, W: WorkerRegistry, M: ModelRegistry> Pallet<C, W, M> {
    /// The jobs parameters (the [`Params::default`] values when none were set).
    pub fn params<S: Storage + ?Sized>(s: &S) -> Result<Params, StorageError> {
        Ok(support::get(s, &params_key())?.unwrap_or_default())
    }

    /// Genesis: sets the jobs parameters.
    pub fn set_params<S: Storage + ?Sized>(s: &mut S, params: &Params) {
        support::put(s, params_key(), params);
    }

    /// The job with this id.
    pub fn job<S: Storage + ?Sized>(s: &S, id: JobId) -> Result<Option<Job>, StorageError> {
        support::get(s, &job_key(id))
    }

    /// The id the next job will get (also the number of jobs ever opened).
    pub fn next_job_id<S: Storage + ?Sized>(s: &S) -> Result<JobId, StorageError> {
        support::get_or_default(s, &next_id_key())
    }

    /// Sum of the escrow held by jobs that are Open, in Challenge, or Stuck.
    pub fn total_escrow<S: Storage + ?Sized>(s: &S) -> Result<Balance, StorageError> {
        support::get_or_default(s, &total_escrow_key())
    }

    /// Jobs scheduled for processing at the start of `block`.
    pub fn due<S: Storage + ?Sized>(s: &S, block: BlockNumber) -> Result<Vec<JobId>, StorageError> {
        support::get_or_default(s, &due_key(block))
    }

    fn put_job<S: Storage + ?Sized>(s: &mut S, id: JobId, job: &Job) {
        support::put(s, job_key(id), job);
    }

    /// Total escrow less `amount`, to write once the escrow has left.
    fn total_escrow_less<S: Storage + ?Sized>(s: &S, amount: Balance) -> Result<Balance, Error> {
        Self::total_escrow(s)?.checked_sub(amount).ok_or(Error::Overflow)
    }

    /// The schedule of `block` with `id` added, or `None` if it is full.
    fn with_due<S: Storage + ?Sized>(
        s: &S,
        block: BlockNumber,
        id: JobId,
    ) -> Result<Option<Vec<JobId>>, StorageError> {
        let mut due = Self::due(s, block)?;
        if due.contains(&id) {
            return Ok(Some(due));
        }
        if due.len() >= MAX_DUE_PER_BLOCK as usize {
            return Ok(None);
        }
        due.push(id);
        Ok(Some(due))
    }

    /// Schedules `id` at the first block from `from` whose schedule has room.
    fn schedule_near<S: Storage + ?Sized>(
        s: &mut S,
        from: BlockNumber,
        id: JobId,
    ) -> Result<BlockNumber, Error> {
        for offset in 0..MAX_SCHEDULE_SEARCH {
            let block = from.checked_add(offset).ok_or(Error::Overflow)?;
            if let Some(due) = Self::with_due(s, block, id)? {
                support::put(s, due_key(block), &due);
                return Ok(block);
            }
        }
        Err(Error::TooManyJobsDue { block: from })
    }

    /// Dispatches a call signed by `who`.
    pub fn dispatch<S: Storage + ?Sized>(
        s: &mut S,
        who: &AccountId,
        call: &Call,
        ctx: &Context,
    ) -> Result<(), Error> {
        match call {
            Call::OpenJob { model, max_tokens, price_per_layer_token } => {
                Self::open_job(s, who, model, *max_tokens, *price_per_layer_token, ctx)
            }
            Call::Claim { voucher } => Self::claim(s, who, voucher, ctx),
            Call::CloseJob { job } => Self::close_job(s, who, *job, ctx),
            Call::SubmitAudit { job, claim_index, passed } => {
                Self::submit_audit(s, who, *job, *claim_index, *passed, ctx)
            }
        }
    }

    fn open_job<S: Storage + ?Sized>(
        s: &mut S,
        client: &AccountId,
        model: &H256,
        max_tokens: u32,
        price: Balance,
        ctx: &Context,
    ) -> Result<(), Error> {
        if max_tokens == 0 {
            return Err(Error::ZeroMaxTokens);
        }
        if price == 0 {
            return Err(Error::ZeroPrice);
        }
        let layer_count = M::active_layer_count(s, model)?.ok_or(Error::ModelNotActive(*model))?;
        let escrow = Balance::from(max_tokens)
            .checked_mul(Balance::from(layer_count))
            .and_then(|v| v.checked_mul(price))
            .ok_or(Error::EscrowOverflow)?;
        if escrow == 0 {
            // Only a model with zero layers, which the registry never accepts.
            return Err(Error::ModelNotActive(*model));
        }
        let params = Self::params(s)?;
        let id = Self::next_job_id(s)?;
        let next = id.checked_add(1).ok_or(Error::JobIdOverflow)?;
        let deadline =
            ctx.block_number.checked_add(params.job_timeout.max(1)).ok_or(Error::Overflow)?;
        let due =
            Self::with_due(s, deadline, id)?.ok_or(Error::TooManyJobsDue { block: deadline })?;
        let total = Self::total_escrow(s)?.checked_add(escrow).ok_or(Error::Overflow)?;
        C::reserve(s, client, escrow)?;
        let job = Job {
            client: client.clone(),
            model: *model,
            layer_count,
            max_tokens,
            price_per_layer_token: price,
            escrow,
            opened_at: ctx.block_number,
            deadline,
            status: JobStatus::Open,
            claims: Vec::new(),
            claimed: 0,
        };
        Self::put_job(s, id, &job);
        support::put(s, next_id_key(), &next);
        support::put(s, due_key(deadline), &due);
        support::put(s, total_escrow_key(), &total);
        Ok(())
    }

    fn claim<S: Storage + ?Sized>(
        s: &mut S,
        who: &AccountId,
        signed: &SignedVoucher,
        ctx: &Context,
    ) -> Result<(), Error> {
        let v = &signed.voucher;
        // Who may claim: the worker the client's voucher names, and nobody else. The client's
        // signature proves it asked for the work; the worker's on the extrinsic that it is the
        // one being paid (a stranger replaying the voucher gains nothing either way).
        if *who != v.worker {
            return Err(Error::NotVoucherWorker { job: v.job });
        }
        let mut job = Self::job(s, v.job)?.ok_or(Error::UnknownJob(v.job))?;
        if !matches!(job.status, JobStatus::Open | JobStatus::Challenge { .. }) {
            return Err(Error::ClaimWindowClosed(v.job));
        }
        if !W::is_worker(s, &v.worker)? {
            return Err(Error::NotAWorker);
        }
        if !signed.verify(&job.client, &ctx.genesis_hash) {
            return Err(Error::BadVoucherSignature { job: v.job });
        }
        let (start, end) = v.layers;
        if start >= end || end > job.layer_count {
            return Err(Error::InvalidLayerRange { start, end, layer_count: job.layer_count });
        }
        if v.positions == 0 || v.positions > job.max_tokens {
            return Err(Error::InvalidTokens { tokens: v.positions, max_tokens: job.max_tokens });
        }
        if job.claims.iter().any(|x| x.voucher.worker == v.worker && x.voucher.session == v.session)
        {
            return Err(Error::DuplicateClaim);
        }
        let max = Self::params(s)?.max_claims.min(MAX_CLAIMS);
        if job.claims.len() >= max as usize {
            return Err(Error::TooManyClaims { max });
        }
        let available = job.escrow.saturating_sub(job.claimed);
        let amount = v.amount(job.price_per_layer_token);
        let claimed = amount.and_then(|a| job.claimed.checked_add(a)).filter(|c| *c <= job.escrow);
        let Some(claimed) = claimed else {
            return Err(Error::ClaimExceedsEscrow {
                amount: amount.unwrap_or(Balance::MAX),
                available,
            });
        };
        job.claimed = claimed;
        job.claims.push(ClaimRecord {
            voucher: v.clone(),
            signature: signed.signature,
            submitted_at: ctx.block_number,
            verdict: None,
            paid: 0,
        });
        Self::put_job(s, v.job, &job);
        Ok(())
    }

    /// Starts the claim window of job `id`: it settles `challenge_window` blocks from `now`.
    fn start_claim_window<S: Storage + ?Sized>(
        s: &mut S,
        id: JobId,
        job: &mut Job,
        now: BlockNumber,
    ) -> Result<(), Error> {
        let window = Self::params(s)?.challenge_window.max(1);
        let from = now.checked_add(window).ok_or(Error::Overflow)?;
        let settle_at = Self::schedule_near(s, from, id)?;
        job.status = JobStatus::Challenge { settle_at };
        Self::put_job(s, id, job);
        Ok(())
    }

    fn close_job<S: Storage + ?Sized>(
        s: &mut S,
        who: &AccountId,
        id: JobId,
        ctx: &Context,
    ) -> Result<(), Error> {
        let mut job = Self::job(s, id)?.ok_or(Error::UnknownJob(id))?;
        if &job.client != who {
            return Err(Error::NotClient);
        }
        if job.status != JobStatus::Open {
            return Err(Error::JobNotOpen(id));
        }
        // Not a refund now: workers may still claim what the client acknowledged.
        Self::start_claim_window(s, id, &mut job, ctx.block_number)
    }

    /// Returns the whole escrow to the client; the job becomes `Refunded`.
    fn refund<S: Storage + ?Sized>(s: &mut S, id: JobId, job: &mut Job) -> Result<(), Error> {
        let total = Self::total_escrow_less(s, job.escrow)?;
        C::unreserve(s, &job.client, job.escrow)?;
        support::put(s, total_escrow_key(), &total);
        job.status = JobStatus::Refunded;
        Self::put_job(s, id, job);
        Ok(())
    }

    fn submit_audit<S: Storage + ?Sized>(
        s: &mut S,
        auditor: &AccountId,
        id: JobId,
        claim_index: u32,
        passed: bool,
        ctx: &Context,
    ) -> Result<(), Error> {
        if !W::is_validator(s, auditor)? {
            return Err(Error::NotAValidator);
        }
        let mut job = Self::job(s, id)?.ok_or(Error::UnknownJob(id))?;
        if !matches!(job.status, JobStatus::Open | JobStatus::Challenge { .. }) {
            return Err(Error::AuditWindowClosed(id));
        }
        let index = usize::try_from(claim_index).map_err(|_| Error::UnknownClaim(claim_index))?;
        let record = job.claims.get(index).ok_or(Error::UnknownClaim(claim_index))?;
        if record.verdict.is_some() {
            return Err(Error::AlreadyAudited(claim_index));
        }
        if &record.voucher.worker == auditor || &job.client == auditor {
            return Err(Error::AuditorIsParty);
        }
        let worker = record.voucher.worker.clone();
        // Votes are counted in the weights of the active set now; a vote from a validator that
        // has left it no longer counts.
        let mut votes = Self::votes(s, id, claim_index)?;
        if votes.iter().any(|v| &v.auditor == auditor) {
            return Err(Error::AlreadyVoted(claim_index));
        }
        votes.push(Verdict { auditor: auditor.clone(), passed, at: ctx.block_number });
        let weights = W::validator_weights(s)?;
        let total: u128 = weights.iter().map(|(_, w)| u128::from(*w)).sum();
        let side: u128 = votes
            .iter()
            .filter(|v| v.passed == passed)
            .filter_map(|v| weights.iter().find(|(a, _)| *a == v.auditor))
            .map(|(_, w)| u128::from(*w))
            .sum();
        support::put(s, votes_key(id, claim_index), &votes);
        if side.saturating_mul(3) < total.saturating_mul(2) {
            // No quorum yet: the vote is recorded, nothing else changes.
            return Ok(());
        }
        let verdict = Some(Verdict { auditor: auditor.clone(), passed, at: ctx.block_number });
        if passed {
            if let Some(record) = job.claims.get_mut(index) {
                record.verdict = verdict;
            }
            Self::put_job(s, id, &job);
            return Ok(());
        }
        let percent = Self::params(s)?.audit_slash_percent;
        let total = Self::total_escrow_less(s, job.escrow)?;
        C::unreserve(s, &job.client, job.escrow)?;
        support::put(s, total_escrow_key(), &total);
        let slashed = W::slash_percent(s, &worker, percent, ctx)?;
        if let Some(record) = job.claims.get_mut(index) {
            record.verdict = verdict;
        }
        job.status = JobStatus::Failed { claim_index, auditor: auditor.clone(), slashed };
        Self::put_job(s, id, &job);
        Ok(())
    }

    /// The validators' votes on claim `claim_index` of job `id`, in the order cast.
    pub fn votes<S: Storage + ?Sized>(
        s: &S,
        id: JobId,
        claim_index: u32,
    ) -> Result<Vec<Verdict>, StorageError> {
        support::get_or_default(s, &votes_key(id, claim_index))
    }

    /// Start of block: processes the jobs scheduled at `ctx.block_number`. Jobs reaching their
    /// deadline enter the claim window; jobs at its end settle (or are refunded when nobody
    /// claimed). Each job is processed on its own: one that fails is
    /// marked `Stuck` and the others proceed. Fails only on a corrupt schedule.
    pub fn on_initialize<S: Storage + ?Sized>(
        s: &mut S,
        ctx: &Context,
    ) -> Result<(), StorageError> {
        let ids = Self::due(s, ctx.block_number)?;
        support::remove(s, due_key(ctx.block_number));
        for id in ids {
            if let Err(e) = support::transactional(s, |o| Self::process_due(o, id, ctx)) {
                Self::mark_stuck(s, id, &e);
            }
        }
        Ok(())
    }

    fn mark_stuck<S: Storage + ?Sized>(s: &mut S, id: JobId, e: &Error) {
        if let Ok(Some(mut job)) = Self::job(s, id) {
            let mut reason = e.to_string();
            let mut end = reason.len().min(MAX_STUCK_REASON);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
            job.status = JobStatus::Stuck { reason: reason.into_bytes() };
            Self::put_job(s, id, &job);
        }
    }

    fn process_due<S: Storage + ?Sized>(s: &mut S, id: JobId, ctx: &Context) -> Result<(), Error> {
        let Some(mut job) = Self::job(s, id)? else {
            return Ok(());
        };
        let now = ctx.block_number;
        match job.status {
            JobStatus::Open if now >= job.deadline => {
                Self::start_claim_window(s, id, &mut job, now)
            }
            JobStatus::Challenge { settle_at } if settle_at <= now && job.claims.is_empty() => {
                Self::refund(s, id, &mut job)
            }
            JobStatus::Challenge { settle_at } if settle_at <= now => Self::settle(s, id, job),
            _ => Ok(()),
        }
    }

    /// Pays every claim from the client's escrow and refunds the rest.
    fn settle<S: Storage + ?Sized>(s: &mut S, id: JobId, mut job: Job) -> Result<(), Error> {
        let mut paid: Balance = 0;
        for record in job.claims.iter_mut() {
            let amount = record.voucher.amount(job.price_per_layer_token).ok_or(Error::Overflow)?;
            let worker = &record.voucher.worker;
            match support::transactional(s, |o| {
                C::repatriate_reserved(o, &job.client, worker, amount)
            }) {
                Ok(()) => {
                    record.paid = amount;
                    paid = paid.checked_add(amount).ok_or(Error::Overflow)?;
                }
                // Corrupt state is not the worker's fault, but it is not a payment problem
                // either: the job must not settle.
                Err(CurrencyError::Storage(e)) => return Err(e.into()),
                // The payment cannot be made (e.g. it would leave the worker's account below
                // the existential deposit): the share goes back to the client.
                Err(_) => {}
            }
        }
        let refunded = job.escrow.checked_sub(paid).ok_or(Error::Overflow)?;
        let total = Self::total_escrow_less(s, job.escrow)?;
        if refunded > 0 {
            C::unreserve(s, &job.client, refunded)?;
        }
        support::put(s, total_escrow_key(), &total);
        job.status = JobStatus::Settled { paid, refunded };
        Self::put_job(s, id, &job);
        Ok(())
    }
}
