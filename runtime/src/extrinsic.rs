//! Signed extrinsics and blocks.
//!
//! Wire format (SCALE): `version: u8 (=1)`, `signer: [u8; 32]`, `signature: [u8; 64]`,
//! `nonce: Compact<u64>`, `tip: Compact<u128>`, `valid_until: Compact<u64>`, `call: Call`.
//! The signature is sr25519 over blake2-256 of
//! `("bitorch/tx/1", version, genesis_hash, nonce, tip, valid_until, call)`, so a transaction
//! cannot be replayed on another chain (genesis), twice on this one (nonce), or after it
//! expired (`valid_until`, the last block that may include it).

use crate::{Call, TransactionError, DECODE_DEPTH_LIMIT, MAX_EXTRINSIC_BYTES};
use bitorch_primitives::{
    blake2_256, keys, merkle::merkle_root, AccountId, Balance, BlockNumber, Hash, Header, Nonce,
    Pair, Signature,
};
use parity_scale_codec::{Decode, DecodeLimit, Encode};
use sp_core::crypto::Pair as _;

/// Current extrinsic format version.
pub const EXTRINSIC_VERSION: u8 = 1;

/// A signed transaction as it travels and is stored.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct UncheckedExtrinsic {
    /// Format version; only [`EXTRINSIC_VERSION`] is accepted.
    pub version: u8,
    /// The account that signed and pays.
    pub signer: AccountId,
    /// sr25519 signature over [`UncheckedExtrinsic::signing_hash`].
    pub signature: Signature,
    /// Must equal the signer's account nonce when applied.
    #[codec(compact)]
    pub nonce: Nonce,
    /// Extra fee to the block author.
    #[codec(compact)]
    pub tip: Balance,
    /// The last block number that may include this transaction.
    #[codec(compact)]
    pub valid_until: BlockNumber,
    /// What to do.
    pub call: Call,
}

impl UncheckedExtrinsic {
    /// Hash the signer signs.
    pub fn signing_hash(
        genesis: &Hash,
        nonce: Nonce,
        tip: Balance,
        valid_until: BlockNumber,
        call: &Call,
    ) -> Hash {
        blake2_256(
            &(b"bitorch/tx/1", EXTRINSIC_VERSION, genesis, nonce, tip, valid_until, call).encode(),
        )
    }

    /// Signs a call.
    pub fn sign(
        pair: &Pair,
        genesis: &Hash,
        nonce: Nonce,
        tip: Balance,
        valid_until: BlockNumber,
        call: Call,
    ) -> Self {
        let h = Self::signing_hash(genesis, nonce, tip, valid_until, &call);
        Self {
            version: EXTRINSIC_VERSION,
            signer: keys::account_of(pair),
            signature: pair.sign(h.as_bytes()),
            nonce,
            tip,
            valid_until,
            call,
        }
    }

    /// Whether the signature is valid for this chain.
    pub fn verify_signature(&self, genesis: &Hash) -> bool {
        let h = Self::signing_hash(genesis, self.nonce, self.tip, self.valid_until, &self.call);
        keys::verify(&self.signature, h.as_bytes(), &self.signer)
    }

    /// The transaction hash (blake2-256 of the encoding).
    pub fn hash(&self) -> Hash {
        blake2_256(&self.encode())
    }

    /// Decodes untrusted bytes: bounded size and nesting, the whole input consumed, a known
    /// version.
    pub fn decode_untrusted(bytes: &[u8]) -> Result<Self, TransactionError> {
        if bytes.len() > MAX_EXTRINSIC_BYTES {
            return Err(TransactionError::TooLarge { size: bytes.len(), max: MAX_EXTRINSIC_BYTES });
        }
        if bytes.first().is_some_and(|v| *v != EXTRINSIC_VERSION) {
            return Err(TransactionError::UnsupportedVersion(bytes[0]));
        }
        let xt = Self::decode_all_with_depth_limit(DECODE_DEPTH_LIMIT, &mut &bytes[..])
            .map_err(|e| TransactionError::Malformed(e.to_string()))?;
        Ok(xt)
    }
}

/// A block: header and extrinsics.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Block {
    /// The header.
    pub header: Header,
    /// The extrinsics, applied in order.
    pub extrinsics: Vec<UncheckedExtrinsic>,
}

/// The extrinsics root of a list of extrinsics.
pub fn extrinsics_root(extrinsics: &[UncheckedExtrinsic]) -> Hash {
    let leaves: Vec<[u8; 32]> = extrinsics.iter().map(|x| x.hash().0).collect();
    merkle_root(&leaves)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balances;
    use bitorch_primitives::keys::pair_from_suri;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn extrinsic_round_trips_and_signature_binds_every_field(
            nonce: u64, tip: u128, valid_until: u64, amount: u128, dest: [u8; 32], genesis: [u8; 32],
        ) {
            let pair = pair_from_suri("//Alice").unwrap();
            let genesis = Hash::from(genesis);
            let call = Call::Balances(balances::Call::Transfer { dest: AccountId::new(dest), amount });
            let xt = UncheckedExtrinsic::sign(&pair, &genesis, nonce, tip, valid_until, call);
            let bytes = xt.encode();
            let back = UncheckedExtrinsic::decode_untrusted(&bytes).unwrap();
            prop_assert_eq!(&back, &xt);
            prop_assert!(back.verify_signature(&genesis));
            let mut other = back.clone();
            other.nonce = other.nonce.wrapping_add(1);
            prop_assert!(!other.verify_signature(&genesis));
            let mut other = back.clone();
            other.tip = other.tip.wrapping_add(1);
            prop_assert!(!other.verify_signature(&genesis));
            prop_assert!(!back.verify_signature(&Hash::from([genesis[0].wrapping_add(1); 32])));
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = UncheckedExtrinsic::decode_untrusted(&bytes);
        }
    }

    #[test]
    fn trailing_bytes_and_oversize_are_rejected() {
        let pair = pair_from_suri("//Alice").unwrap();
        let call =
            Call::Balances(balances::Call::Transfer { dest: AccountId::new([1; 32]), amount: 1 });
        let mut bytes = UncheckedExtrinsic::sign(&pair, &Hash::zero(), 0, 0, 9, call).encode();
        bytes.push(0);
        assert!(matches!(
            UncheckedExtrinsic::decode_untrusted(&bytes),
            Err(TransactionError::Malformed(_))
        ));
        let big = vec![EXTRINSIC_VERSION; crate::MAX_EXTRINSIC_BYTES + 1];
        assert!(matches!(
            UncheckedExtrinsic::decode_untrusted(&big),
            Err(TransactionError::TooLarge { .. })
        ));
    }
}
