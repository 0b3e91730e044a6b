//! What a job's client signs for the work it asks of workers: the authorization of a paid stage
//! session ([`SessionAuth`]) and the vouchers that acknowledge the work as it is done
//! ([`Voucher`]), with which a worker claims its pay from the job's escrow. They live here, not
//! in the jobs pallet, because the gateway that signs them and the worker that checks them are
//! off-chain and must not depend on a pallet.

use crate::{keys, AccountId, Balance, Pair, Signature, H256};
use parity_scale_codec::{Decode, Encode};

/// A job's id: a counter from 0, assigned by the jobs pallet when the job is opened.
pub type JobId = u64;

/// A client's acknowledgement of the work a worker did in one stage session of a job: the
/// first `positions` token positions of layers `layers.0..layers.1`, whose leaves hash to
/// `trace` (`bitorch_commitment::chain_of`). The client signs it ([`SignedVoucher`]) as the
/// session goes (with each step's request, acknowledging everything before it) and at its
/// close; the worker claims its pay on chain with the latest one. It is cumulative: a later
/// voucher of the session supersedes the earlier ones, and the chain pays one per session.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Voucher {
    /// The job whose escrow pays.
    pub job: JobId,
    /// The gateway's session id (one claim per worker and session).
    pub session: [u8; 16],
    /// The worker that did the work, the only account that may claim with it.
    pub worker: AccountId,
    /// The layers run, `start..end`.
    pub layers: (u32, u32),
    /// Token positions acknowledged, from position 0.
    pub positions: u32,
    /// Running hash of the session's leaves at those positions (what an audit opens).
    pub trace: H256,
}

impl Voucher {
    /// The bytes the client signs: `(b"bitorch/voucher/1", genesis, self)` SCALE-encoded.
    pub fn signing_payload(&self, genesis: &H256) -> Vec<u8> {
        (b"bitorch/voucher/1", genesis, self).encode()
    }

    /// Signs the voucher with the client's key for the chain with this genesis hash.
    pub fn sign(self, client: &Pair, genesis: &H256) -> SignedVoucher {
        use sp_core::crypto::Pair as _;
        let signature = client.sign(&self.signing_payload(genesis));
        SignedVoucher { voucher: self, signature }
    }

    /// What it earns at `price` per layer-token: `layers × positions × price`; `None` on
    /// overflow or an inverted range.
    pub fn amount(&self, price: Balance) -> Option<Balance> {
        Balance::from(self.layer_positions()?).checked_mul(price)
    }

    /// `layers × positions`, the work it acknowledges; `None` on an inverted range.
    pub fn layer_positions(&self) -> Option<u64> {
        let layers = self.layers.1.checked_sub(self.layers.0)?;
        Some(u64::from(layers) * u64::from(self.positions))
    }
}

/// A voucher with the client's sr25519 signature over [`Voucher::signing_payload`].
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct SignedVoucher {
    /// The voucher.
    pub voucher: Voucher,
    /// The client's signature.
    pub signature: Signature,
}

impl SignedVoucher {
    /// Whether the signature is `client`'s over the voucher on the chain `genesis`.
    pub fn verify(&self, client: &AccountId, genesis: &H256) -> bool {
        keys::verify(&self.signature, &self.voucher.signing_payload(genesis), client)
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
    fn a_voucher_verifies_only_for_its_client_chain_and_fields() {
        let (alice, bob) = (pair_from_suri("//Alice").unwrap(), pair_from_suri("//Bob").unwrap());
        let g = H256::repeat_byte(1);
        let v = Voucher {
            job: 3,
            session: [5; 16],
            worker: account_of(&bob),
            layers: (0, 10),
            positions: 7,
            trace: H256::repeat_byte(4),
        };
        assert_eq!(v.amount(3), Some(210));
        let signed = v.clone().sign(&alice, &g);
        assert!(signed.verify(&account_of(&alice), &g));
        assert!(!signed.verify(&account_of(&bob), &g), "the client's, not the worker's");
        assert!(!signed.verify(&account_of(&alice), &H256::repeat_byte(2)), "another chain");
        let more = SignedVoucher {
            voucher: Voucher { positions: 8, ..v.clone() },
            signature: signed.signature,
        };
        assert!(!more.verify(&account_of(&alice), &g), "more positions than signed");
        let other = SignedVoucher {
            voucher: Voucher { worker: account_of(&alice), ..v },
            signature: signed.signature,
        };
        assert!(!other.verify(&account_of(&alice), &g), "another worker");
    }

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
