//! Compute receipts: what a worker signs for the work it did on a job, and what the jobs pallet
//! pays against. They live here, not in the pallet, because the worker that signs them and the
//! gateway that checks them are off-chain and must not depend on a pallet.

use crate::{keys, AccountId, Balance, Pair, Signature, H256};
use parity_scale_codec::{Decode, Encode};

/// A job's id: a counter from 0, assigned by the jobs pallet when the job is opened.
pub type JobId = u64;

/// A worker's claim that it ran `layer_start..layer_end` of a job's model for `tokens` tokens.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Receipt {
    /// The job.
    pub job: JobId,
    /// The worker that did the work (and signs the receipt).
    pub worker: AccountId,
    /// First layer run.
    pub layer_start: u32,
    /// One past the last layer run.
    pub layer_end: u32,
    /// Token positions processed.
    pub tokens: u32,
    /// Merkle root of the activation commitments (one leaf per token position).
    pub activation_root: H256,
}

impl Receipt {
    /// The bytes the worker signs: `(b"bitorch/receipt/1", genesis, self)` SCALE-encoded.
    pub fn signing_payload(&self, genesis: &H256) -> Vec<u8> {
        (b"bitorch/receipt/1", genesis, self).encode()
    }

    /// Signs the receipt with the worker's key for the chain with this genesis hash.
    pub fn sign(self, pair: &Pair, genesis: &H256) -> SignedReceipt {
        use sp_core::crypto::Pair as _;
        let signature = pair.sign(&self.signing_payload(genesis));
        SignedReceipt { receipt: self, signature }
    }

    /// What the receipt earns at `price` per layer-token: `layers × tokens × price`; `None` on
    /// overflow or an inverted range.
    pub fn amount(&self, price: Balance) -> Option<Balance> {
        let layers = self.layer_end.checked_sub(self.layer_start)?;
        Balance::from(layers).checked_mul(Balance::from(self.tokens))?.checked_mul(price)
    }
}

/// A receipt with the worker's sr25519 signature over [`Receipt::signing_payload`].
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct SignedReceipt {
    /// The receipt.
    pub receipt: Receipt,
    /// The worker's signature.
    pub signature: Signature,
}

impl SignedReceipt {
    /// Whether the signature is the worker's over the receipt on the chain `genesis`.
    pub fn verify(&self, genesis: &H256) -> bool {
        keys::verify(&self.signature, &self.receipt.signing_payload(genesis), &self.receipt.worker)
    }
}
