//! Errors of the jobs pallet.

use crate::JobId;
use bitorch_pallet_support::{CurrencyError, StorageError};
use bitorch_primitives::{Balance, BlockNumber, H256};

/// Why a jobs call was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// `OpenJob` with `max_tokens` zero.
    #[error("max_tokens must be greater than zero")]
    ZeroMaxTokens,
    /// `OpenJob` with a zero price.
    #[error("price_per_layer_token must be greater than zero")]
    ZeroPrice,
    /// The model is unknown or retired.
    #[error("model {0:?} is not an active registered model")]
    ModelNotActive(H256),
    /// max_tokens × layers × price does not fit in a balance.
    #[error("escrow (max_tokens × layers × price) overflows; lower max_tokens or the price")]
    EscrowOverflow,
    /// The schedule of a block is full.
    #[error("too many jobs are already scheduled at block {block}; try again in the next block")]
    TooManyJobsDue {
        /// The block.
        block: BlockNumber,
    },
    /// The job id counter is exhausted.
    #[error("job ids are exhausted")]
    JobIdOverflow,
    /// No job with this id.
    #[error("no job with id {0}")]
    UnknownJob(JobId),
    /// The job is not open (closing it, or opening a session for it).
    #[error("job {0} is not open")]
    JobNotOpen(JobId),
    /// The job is settled, refunded or failed: its claim window is over.
    #[error("job {0} is past its claim window; it accepts no more claims")]
    ClaimWindowClosed(JobId),
    /// A claim submitted by an account other than the worker its voucher names: only that
    /// worker may be paid for the work.
    #[error("only the worker named in the voucher may claim with it (job {job})")]
    NotVoucherWorker {
        /// The job.
        job: JobId,
    },
    /// The claim's worker is not a registered worker.
    #[error("the claim's worker is not a registered worker with the minimum bond")]
    NotAWorker,
    /// The voucher is not signed by the job's client (a voucher the client never gave, or
    /// one changed after signing).
    #[error("the voucher is not signed by the client of job {job} on this chain")]
    BadVoucherSignature {
        /// The job.
        job: JobId,
    },
    /// The voucher's layer range is empty or beyond the model.
    #[error("layer range {start}..{end} is empty or beyond the model's {layer_count} layers")]
    InvalidLayerRange {
        /// First layer.
        start: u32,
        /// One past the last layer.
        end: u32,
        /// The model's layer count.
        layer_count: u32,
    },
    /// The voucher's position count is zero or above the job's maximum.
    #[error("positions must be 1 to {max_tokens}, got {tokens}")]
    InvalidTokens {
        /// Positions claimed.
        tokens: u32,
        /// The job's max_tokens.
        max_tokens: u32,
    },
    /// The worker already claimed for this session (a replayed or second claim).
    #[error("this worker already claimed for this session of the job")]
    DuplicateClaim,
    /// The job has the maximum number of claims.
    #[error("the job already has the maximum of {max} claims")]
    TooManyClaims {
        /// The maximum.
        max: u32,
    },
    /// The claim is worth more than is left in escrow.
    #[error("claim is worth {amount} but only {available} of the escrow is unclaimed")]
    ClaimExceedsEscrow {
        /// What the claim is worth (saturated on overflow).
        amount: Balance,
        /// escrow - claimed.
        available: Balance,
    },
    /// Only the job's client (or the agent that opened it) may do this.
    #[error("only the job's client, or the gateway that opened it for the client, may close it")]
    NotClient,
    /// The client gave the signer no allowance (or revoked it).
    #[error("no allowance: the client has not approved this gateway (or revoked it)")]
    NoAllowance,
    /// The allowance expired.
    #[error("the client's allowance for this gateway expired at block {expired_at}")]
    AllowanceExpired {
        /// Its expiry.
        expired_at: BlockNumber,
    },
    /// The escrow is more than the allowance has left.
    #[error("the job's escrow {escrow} is more than the allowance's remaining {remaining}")]
    AllowanceExceeded {
        /// The escrow.
        escrow: Balance,
        /// What the allowance has left.
        remaining: Balance,
    },
    /// An account approving itself.
    #[error("an account cannot approve itself as a gateway")]
    SelfApproval,
    /// No claim at this index.
    #[error("job has no claim at index {0}")]
    UnknownClaim(u32),
    /// The claim was not chosen for an audit.
    #[error("claim {0} is not being audited")]
    NotAudited(u32),
    /// The claim's audit is already resolved.
    #[error("the audit of claim {0} is already resolved")]
    AuditResolved(u32),
    /// The signer is not one of the auditors the chain assigned to the claim.
    #[error("only the auditors the chain assigned to claim {0} may give a verdict on it")]
    NotAnAuditor(u32),
    /// The commit window is over.
    #[error("commitments were accepted until block {commit_by}")]
    CommitWindowClosed {
        /// First block past the window.
        commit_by: BlockNumber,
    },
    /// This auditor already committed.
    #[error("this auditor already committed to a finding on claim {0}")]
    AlreadyCommitted(u32),
    /// A reveal without a commitment.
    #[error("this auditor did not commit to a finding on claim {0}")]
    NotCommitted(u32),
    /// A reveal before the commit window ended.
    #[error(
        "findings are revealed from block {from}, once every auditor had its chance to commit"
    )]
    RevealTooEarly {
        /// First block of the reveal window.
        from: BlockNumber,
    },
    /// The reveal window is over.
    #[error("findings were revealed until block {reveal_by}")]
    RevealWindowClosed {
        /// First block past the window.
        reveal_by: BlockNumber,
    },
    /// This auditor already revealed.
    #[error("this auditor already revealed its finding on claim {0}")]
    AlreadyRevealed(u32),
    /// The revealed finding and salt do not hash to the commitment.
    #[error("the revealed finding on claim {0} is not the one committed to")]
    CommitmentMismatch(u32),
    /// Arithmetic overflow in amounts or block numbers.
    #[error("arithmetic overflow")]
    Overflow,
    /// The currency operation failed.
    #[error(transparent)]
    Currency(#[from] CurrencyError),
}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        Error::Currency(e.into())
    }
}
