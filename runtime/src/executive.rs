//! Transaction validation, extrinsic application and block execution.
//!
//! A block is valid only if every extrinsic in it applies successfully: an author leaves out
//! the transactions that fail, so a peer's block with a failing extrinsic is rejected whole.
//! Each extrinsic runs in its own transactional overlay: fee, nonce and call effects are all
//! kept, or none.

use crate::error::BlockError;
use crate::extrinsic::{extrinsics_root, Block, UncheckedExtrinsic};
use crate::{compute_fee, Balances, Jobs, Staking, TransactionError};
use bitorch_pallet_support::{transactional, Context, Overlay, Storage};
use bitorch_primitives::{Balance, Hash, Nonce};
use parity_scale_codec::Encode;
use rayon::prelude::*;

/// What the pool needs to know about a transaction that passed validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidTransaction {
    /// Its nonce.
    pub nonce: Nonce,
    /// The account's next nonce now.
    pub account_nonce: Nonce,
    /// The fee it pays (tip included).
    pub fee: Balance,
}

impl ValidTransaction {
    /// Whether it can go in the next block (its nonce is the account's next one).
    pub fn is_ready(&self) -> bool {
        self.nonce == self.account_nonce
    }
}

/// Checks a transaction against `state` as if it went into block `ctx.block_number`:
/// expiry, signature, nonce, fee, and, when its nonce is the next one, a dry run of the call.
/// Changes nothing.
pub fn validate_transaction<S: Storage + ?Sized>(
    state: &S,
    xt: &UncheckedExtrinsic,
    len: usize,
    ctx: &Context,
) -> Result<ValidTransaction, TransactionError> {
    if xt.valid_until < ctx.block_number {
        return Err(TransactionError::Expired {
            valid_until: xt.valid_until,
            next: ctx.block_number,
        });
    }
    if !xt.verify_signature(&ctx.genesis_hash) {
        return Err(TransactionError::BadSignature);
    }
    let account_nonce = Balances::nonce(state, &xt.signer)?;
    if xt.nonce < account_nonce {
        return Err(TransactionError::StaleNonce { nonce: xt.nonce, expected: account_nonce });
    }
    let fee = compute_fee(&xt.call, len, xt.tip);
    Balances::can_pay_fee(state, &xt.signer, fee)
        .map_err(|cause| TransactionError::CannotPayFee { fee, cause })?;
    if xt.nonce == account_nonce {
        let mut dry = Overlay::new(state);
        apply_checked(&mut dry, xt, len, ctx)?;
    }
    Ok(ValidTransaction { nonce: xt.nonce, account_nonce, fee })
}

/// Applies an extrinsic whose signature has already been checked. On error nothing changes.
pub fn apply_checked<S: Storage + ?Sized>(
    state: &mut S,
    xt: &UncheckedExtrinsic,
    len: usize,
    ctx: &Context,
) -> Result<(), TransactionError> {
    transactional(state, |o| {
        if xt.valid_until < ctx.block_number {
            return Err(TransactionError::Expired {
                valid_until: xt.valid_until,
                next: ctx.block_number,
            });
        }
        let expected = Balances::nonce(o, &xt.signer)?;
        if xt.nonce < expected {
            return Err(TransactionError::StaleNonce { nonce: xt.nonce, expected });
        }
        if xt.nonce > expected {
            return Err(TransactionError::FutureNonce { nonce: xt.nonce, expected });
        }
        let fee = compute_fee(&xt.call, len, 0);
        Balances::pay_fee(o, &xt.signer, fee, xt.tip, &ctx.author).map_err(|cause| {
            TransactionError::CannotPayFee { fee: fee.saturating_add(xt.tip), cause }
        })?;
        Balances::inc_nonce(o, &xt.signer)?;
        xt.call.dispatch(o, &xt.signer, ctx)?;
        Ok(())
    })
}

/// Start-of-block hooks (job deadlines and settlements).
pub fn initialize_block<S: Storage + ?Sized>(
    state: &mut S,
    ctx: &Context,
) -> Result<(), BlockError> {
    Jobs::on_initialize(state, ctx)?;
    Ok(())
}

/// End-of-block hooks (the validator set for the next block).
pub fn finalize_block<S: Storage + ?Sized>(state: &mut S, ctx: &Context) -> Result<(), BlockError> {
    Staking::on_finalize(state, ctx)?;
    Ok(())
}

/// Checks every extrinsic's signature, in parallel. Returns the index of the first bad one.
pub fn check_signatures(extrinsics: &[UncheckedExtrinsic], genesis: &Hash) -> Result<(), usize> {
    let bad = extrinsics
        .par_iter()
        .enumerate()
        .filter(|(_, xt)| !xt.verify_signature(genesis))
        .map(|(i, _)| i)
        .min();
    match bad {
        Some(i) => Err(i),
        None => Ok(()),
    }
}

/// Executes a block on `state` (normally an overlay the caller discards on error).
pub fn execute_block<S: Storage + ?Sized>(
    state: &mut S,
    block: &Block,
    genesis: &Hash,
) -> Result<(), BlockError> {
    if extrinsics_root(&block.extrinsics) != block.header.extrinsics_root {
        return Err(BlockError::ExtrinsicsRoot);
    }
    check_signatures(&block.extrinsics, genesis)
        .map_err(|index| BlockError::Extrinsic { index, error: TransactionError::BadSignature })?;
    let ctx = Context {
        block_number: block.header.number,
        genesis_hash: *genesis,
        author: block.header.author.clone(),
        parent_hash: block.header.parent_hash,
    };
    initialize_block(state, &ctx)?;
    for (index, xt) in block.extrinsics.iter().enumerate() {
        apply_checked(state, xt, xt.encoded_size(), &ctx)
            .map_err(|error| BlockError::Extrinsic { index, error })?;
    }
    finalize_block(state, &ctx)?;
    Ok(())
}

/// The outcome of building a block.
pub struct Built {
    /// Extrinsics that applied, in order.
    pub included: Vec<UncheckedExtrinsic>,
    /// Extrinsics left out, with why.
    pub rejected: Vec<(Hash, TransactionError)>,
}

/// Builds a block body on `state` from candidate extrinsics (whose signatures the pool has
/// checked), keeping those that apply, up to `max_extrinsics` and `max_bytes`.
pub fn build_block<S: Storage + ?Sized>(
    state: &mut S,
    ctx: &Context,
    candidates: impl IntoIterator<Item = UncheckedExtrinsic>,
    max_extrinsics: usize,
    max_bytes: usize,
) -> Result<Built, BlockError> {
    initialize_block(state, ctx)?;
    let mut included = Vec::new();
    let mut rejected = Vec::new();
    let mut bytes = 0usize;
    for xt in candidates {
        if included.len() >= max_extrinsics {
            break;
        }
        let len = xt.encoded_size();
        if bytes.saturating_add(len) > max_bytes {
            continue;
        }
        match apply_checked(state, &xt, len, ctx) {
            Ok(()) => {
                bytes += len;
                included.push(xt);
            }
            Err(e) => rejected.push((xt.hash(), e)),
        }
    }
    finalize_block(state, ctx)?;
    Ok(Built { included, rejected })
}
