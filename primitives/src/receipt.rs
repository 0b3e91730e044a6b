//! Compute receipts: what a worker signs for the work it did on a job, and what the jobs pallet
//! pays against; and the client's authorization of a paid stage session ([`SessionAuth`]). They live here, not in the pallet, because the worker that signs them and the
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

/// What a job's client signs to ask a worker for a paid stage session: the session, the model,
/// the layers, the job (whose escrow, price and position budget are on chain) and the worker.
/// A worker serves a session for a job only with this signature from the job's client, so a
/// peer cannot spend someone else's escrow on work it asks for.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct SessionAuth {
    /// The gateway's session id.
    pub session: [u8; 16],
    /// The model.
    pub model: H256,
    /// The layers asked for, `start..end`.
    pub layers: (u32, u32),
    /// The job paying for it.
    pub job: JobId,
    /// The worker asked.
    pub worker: AccountId,
}

impl SessionAuth {
    /// The bytes the client signs: `(b"bitorch/session/1", genesis, self)` SCALE-encoded.
    pub fn signing_payload(&self, genesis: &H256) -> Vec<u8> {
        (b"bitorch/session/1", genesis, self).encode()
    }

    /// The client's signature for the chain with this genesis hash.
    pub fn sign(&self, client: &Pair, genesis: &H256) -> Signature {
        use sp_core::crypto::Pair as _;
        client.sign(&self.signing_payload(genesis))
    }

    /// Whether `signature` is `client`'s over this authorization on the chain `genesis`.
    pub fn verify(&self, signature: &Signature, client: &AccountId, genesis: &H256) -> bool {
        keys::verify(signature, &self.signing_payload(genesis), client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{account_of, pair_from_suri};

    #[test]
    fn a_session_authorization_verifies_only_for_its_client_chain_and_fields() {
        let (alice, bob) = (pair_from_suri("//Alice").unwrap(), pair_from_suri("//Bob").unwrap());
        let g = H256::repeat_byte(1);
        let auth = SessionAuth {
            session: [3; 16],
            model: H256::repeat_byte(9),
            layers: (10, 20),
            job: 7,
            worker: account_of(&bob),
        };
        let sig = auth.sign(&alice, &g);
        assert!(auth.verify(&sig, &account_of(&alice), &g));
        // Another signer, another chain, another job, another worker: refused.
        assert!(!auth.verify(&auth.sign(&bob, &g), &account_of(&alice), &g));
        assert!(!auth.verify(&sig, &account_of(&alice), &H256::repeat_byte(2)));
        assert!(!SessionAuth { job: 8, ..auth.clone() }.verify(&sig, &account_of(&alice), &g));
        let other = SessionAuth { worker: account_of(&alice), ..auth.clone() };
        assert!(!other.verify(&sig, &account_of(&alice), &g));
    }
}
