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
    /// The job no longer accepts receipts or closing.
    #[error("job {0} is not open")]
    JobNotOpen(JobId),
    /// The job's deadline has passed.
    #[error("job {job} reached its deadline at block {deadline}; it accepts no more receipts")]
    PastDeadline {
        /// The job.
        job: JobId,
        /// Its deadline.
        deadline: BlockNumber,
    },
    /// A receipt submitted by someone other than the job's client, who alone authorizes
    /// payment from its escrow.
    #[error("only the client of job {job} may submit receipts against its escrow")]
    NotJobClient {
        /// The job.
        job: JobId,
    },
    /// The receipt's worker is not a registered worker.
    #[error("the receipt's worker is not a registered worker with the minimum bond")]
    NotAWorker,
    /// The receipt's signature does not verify for its worker.
    #[error("the receipt's signature is not valid for its worker on this chain")]
    BadSignature,
    /// The receipt's layer range is empty or beyond the model.
    #[error("layer range {start}..{end} is empty or beyond the model's {layer_count} layers")]
    InvalidLayerRange {
        /// layer_start.
        start: u32,
        /// layer_end.
        end: u32,
        /// The model's layer count.
        layer_count: u32,
    },
    /// The receipt's token count is zero or above the job's maximum.
    #[error("tokens must be 1 to {max_tokens}, got {tokens}")]
    InvalidTokens {
        /// tokens.
        tokens: u32,
        /// The job's max_tokens.
        max_tokens: u32,
    },
    /// The worker already submitted a receipt for this range.
    #[error("this worker already submitted a receipt for this layer range of the job")]
    DuplicateReceipt,
    /// The job has the maximum number of receipts.
    #[error("the job already has the maximum of {max} receipts")]
    TooManyReceipts {
        /// The maximum.
        max: u32,
    },
    /// The receipt would claim more than is left in escrow.
    #[error("receipt claims {amount} but only {available} of the escrow is unclaimed")]
    ClaimExceedsEscrow {
        /// What the receipt is worth (saturated on overflow).
        amount: Balance,
        /// escrow - claimed.
        available: Balance,
    },
    /// Only the job's client may do this.
    #[error("only the job's client may close it")]
    NotClient,
    /// The auditor is not in the active validator set.
    #[error("only active validators may submit audits")]
    NotAValidator,
    /// The job is already settled, refunded or failed.
    #[error("job {0} is past its challenge window; audits are no longer accepted")]
    AuditWindowClosed(JobId),
    /// No receipt at this index.
    #[error("job has no receipt at index {0}")]
    UnknownReceipt(u32),
    /// The receipt already has a verdict.
    #[error("receipt {0} has already been audited")]
    AlreadyAudited(u32),
    /// This validator already voted on the receipt.
    #[error("this validator has already voted on receipt {0}")]
    AlreadyVoted(u32),
    /// The auditor is the job's client or the receipt's worker.
    #[error("an auditor may not audit a job it is the client of or a receipt it is the worker of")]
    AuditorIsParty,
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
