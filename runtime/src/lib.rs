//! The Bitorch runtime: the chain's state machine.
//!
//! It composes the pallets (balances, staking, models, jobs) behind one [`Call`] enum, defines
//! the signed extrinsic format and its validation, computes fees, and executes blocks. It is
//! pure: state in, state out, deterministic, no I/O, no clocks. The node owns storage and the
//! network and drives this crate through [`executive`].
//!
//! Fees: `BASE_FEE + BYTE_FEE × encoded length + WEIGHT_FEE × call weight` is burned, and the
//! optional tip goes to the block author. Burning keeps the fee a pure cost (an author cannot
//! recycle its own fees), so total issuance falls by fees and by slashing, and nothing else.

pub mod error;
pub mod executive;
pub mod extrinsic;
pub mod genesis;
pub mod state;

pub use error::{DispatchError, TransactionError};
pub use extrinsic::{Block, UncheckedExtrinsic};
pub use genesis::{GenesisConfig, GenesisError};

use bitorch_pallet_support::{Context, Storage};
use bitorch_primitives::{AccountId, Balance};
use parity_scale_codec::{Decode, Encode};

pub use bitorch_pallet_balances as balances;
pub use bitorch_pallet_jobs as jobs;
pub use bitorch_pallet_models as models;
pub use bitorch_pallet_staking as staking;

/// The balances pallet as configured in this runtime.
pub type Balances = balances::Pallet;
/// The staking pallet, holding bonds in `Balances`.
pub type Staking = staking::Pallet<Balances>;
/// The model registry.
pub type Models = models::Pallet;
/// The inference market, escrowing in `Balances`, with workers from `Staking` and models from
/// `Models`.
pub type Jobs = jobs::Pallet<Balances, Staking, Models>;

/// Fixed part of every transaction fee (0.001 BTR).
pub const BASE_FEE: Balance = 1_000_000_000;
/// Fee per byte of the encoded extrinsic.
pub const BYTE_FEE: Balance = 1_000_000;
/// Fee per unit of call weight.
pub const WEIGHT_FEE: Balance = 100_000_000;
/// The largest extrinsic accepted, in bytes.
pub const MAX_EXTRINSIC_BYTES: usize = 128 * 1024;
/// Nesting depth limit when decoding untrusted SCALE.
pub const DECODE_DEPTH_LIMIT: u32 = 32;

/// Every call the chain accepts.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Call {
    /// Balances calls.
    #[codec(index = 0)]
    Balances(balances::Call),
    /// Staking calls.
    #[codec(index = 1)]
    Staking(staking::Call),
    /// Model registry calls.
    #[codec(index = 2)]
    Models(models::Call),
    /// Inference market calls.
    #[codec(index = 3)]
    Jobs(jobs::Call),
}

impl Call {
    /// Relative execution cost, charged at [`WEIGHT_FEE`] per unit.
    pub fn weight(&self) -> u64 {
        match self {
            Call::Balances(_) => 1,
            // Two vote signatures to verify.
            Call::Staking(staking::Call::ReportEquivocation { .. }) => 10,
            Call::Staking(staking::Call::ReportDoubleProposal { .. }) => 10,
            Call::Staking(_) => 2,
            Call::Models(_) => 10,
            // A claim carries the client's voucher signature to verify.
            Call::Jobs(jobs::Call::Claim { .. }) => 5,
            // A commitment to check against the finding revealed.
            Call::Jobs(jobs::Call::RevealVerdict { .. }) => 4,
            Call::Jobs(_) => 3,
        }
    }

    /// Dispatches the call signed by `who`. Runs inside the caller's transactional overlay.
    pub fn dispatch<S: Storage + ?Sized>(
        &self,
        s: &mut S,
        who: &AccountId,
        ctx: &Context,
    ) -> Result<(), DispatchError> {
        match self {
            Call::Balances(c) => Balances::dispatch(s, who, c, ctx)?,
            Call::Staking(c) => Staking::dispatch(s, who, c, ctx)?,
            Call::Models(c) => Models::dispatch(s, who, c, ctx)?,
            Call::Jobs(c) => Jobs::dispatch(s, who, c, ctx)?,
        }
        Ok(())
    }
}

/// The total charge for an extrinsic of `len` encoded bytes: the burned fee plus the tip.
pub fn compute_fee(call: &Call, len: usize, tip: Balance) -> Balance {
    BASE_FEE
        .saturating_add(BYTE_FEE.saturating_mul(len as Balance))
        .saturating_add(WEIGHT_FEE.saturating_mul(call.weight() as Balance))
        .saturating_add(tip)
}
