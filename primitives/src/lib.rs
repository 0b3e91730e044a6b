//! Bitorch primitives: the types every other crate agrees on.
//!
//! Accounts are sr25519 public keys (shown as SS58, prefix 42), hashes are blake2-256, and
//! everything that is hashed, signed, stored or sent is SCALE-encoded. This crate holds the
//! block header, the commit certificate that finalizes a block, key handling (secret URIs as in
//! the Substrate ecosystem) and the binary Merkle root used for a block's extrinsics.
//! It has no I/O and no heavy dependencies.

pub mod api_token;
pub mod error;
pub mod header;
pub mod keys;
pub mod keystore;
pub mod merkle;
pub mod origins;
pub mod receipt;
pub mod vote;

pub use error::Error;
pub use header::{Commit, CommitSignature, Header};
pub use keys::{parse_account, AccountId, Pair, Public, Signature};
pub use sp_core::H256;

/// A balance in base units (1 token = 10^[`TOKEN_DECIMALS`] base units).
pub type Balance = u128;
/// A block number (height). Genesis is 0.
pub type BlockNumber = u64;
/// A per-account transaction counter.
pub type Nonce = u64;
/// A blake2-256 hash.
pub type Hash = H256;
/// A model's id in the registry (the models pallet): the blake2-256 of
/// `(b"bitorch/model", owner, name)`, given when the owner registers the model's manifest
/// (whose own hash is recorded beside it). Jobs, workers and stage sessions name models by it.
pub type ModelId = H256;

/// SS58 address format used by Bitorch (the generic Substrate prefix).
pub const SS58_PREFIX: u16 = 42;
/// Symbol of the native token.
pub const TOKEN_SYMBOL: &str = "BTR";
/// Decimals of the native token.
pub const TOKEN_DECIMALS: u8 = 12;
/// One whole token in base units.
pub const UNIT: Balance = 1_000_000_000_000;

/// A validator's weight in consensus.
pub type VotingPower = u64;

/// The largest voting power of one validator: keeps sums of many far from `u64` overflow.
pub const MAX_VOTING_POWER: VotingPower = 1 << 40;

/// A validator's voting power: its bonded stake in whole tokens (at least 1, at most
/// [`MAX_VOTING_POWER`]). Consensus and commit verification both weigh votes by it.
pub fn voting_power(stake: Balance) -> VotingPower {
    let whole = stake / UNIT;
    VotingPower::try_from(whole).unwrap_or(MAX_VOTING_POWER).clamp(1, MAX_VOTING_POWER)
}

/// A count as a `u32`, saturating at `u32::MAX`: for counts of tokens, sessions or layers
/// that cannot reach it in practice, where a wrap would be a silent lie.
pub fn saturating_u32(x: usize) -> u32 {
    u32::try_from(x).unwrap_or(u32::MAX)
}

/// blake2-256 of some bytes.
pub fn blake2_256(data: &[u8]) -> Hash {
    H256(sp_crypto_hashing::blake2_256(data))
}

/// blake2-256 of everything `reader` yields, read in 1 MiB pieces (a model file is hashed
/// without being held in memory), and how many bytes that was. Equal to [`blake2_256`] of the
/// same bytes.
pub fn blake2_256_reader(mut reader: impl std::io::Read) -> std::io::Result<(Hash, u64)> {
    let mut state = blake2b_simd::Params::new().hash_length(32).to_state();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                state.update(&buf[..n]);
                len += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((H256::from_slice(state.finalize().as_bytes()), len))
}

/// Formats a base-unit amount as whole tokens with the symbol, e.g. `1.5 BTR`.
pub fn format_balance(amount: Balance) -> String {
    let whole = amount / UNIT;
    let frac = amount % UNIT;
    if frac == 0 {
        format!("{whole} {TOKEN_SYMBOL}")
    } else {
        let frac = format!("{frac:012}");
        format!("{whole}.{} {TOKEN_SYMBOL}", frac.trim_end_matches('0'))
    }
}

/// Parses an amount given in whole tokens (`10`, `1.5`, `0.000000000001`) into base units.
pub fn parse_amount(s: &str) -> Result<Balance, Error> {
    let bad = || Error::InvalidAmount(s.to_string());
    let s = s.trim().trim_end_matches(TOKEN_SYMBOL).trim();
    if s.is_empty() {
        return Err(bad());
    }
    let (whole, frac) = match s.split_once('.') {
        Some((w, f)) => (w, f),
        None => (s, ""),
    };
    if (whole.is_empty() && frac.is_empty())
        || !whole.chars().all(|c| c.is_ascii_digit())
        || !frac.chars().all(|c| c.is_ascii_digit())
        || frac.len() > TOKEN_DECIMALS as usize
    {
        return Err(bad());
    }
    let whole: Balance = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| bad())? };
    let frac_units: Balance = if frac.is_empty() {
        0
    } else {
        let padded = format!("{frac:0<12}");
        padded.parse().map_err(|_| bad())?
    };
    whole.checked_mul(UNIT).and_then(|w| w.checked_add(frac_units)).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_hash_equals_the_one_shot_hash() {
        // Across the 1 MiB read size, and for no bytes at all.
        for len in [0usize, 1, 1 << 20, (1 << 20) + 7, 3 * (1 << 20) + 1] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let (streamed, n) = blake2_256_reader(&data[..]).unwrap();
            assert_eq!(n, len as u64);
            assert_eq!(streamed, blake2_256(&data), "{len} bytes");
        }
    }

    #[test]
    fn amounts_round_trip() {
        assert_eq!(parse_amount("10").unwrap(), 10 * UNIT);
        assert_eq!(parse_amount("1.5").unwrap(), UNIT + UNIT / 2);
        assert_eq!(parse_amount("0.000000000001").unwrap(), 1);
        assert_eq!(parse_amount("2 BTR").unwrap(), 2 * UNIT);
        assert!(parse_amount("1.0000000000001").is_err());
        assert!(parse_amount("-1").is_err());
        assert!(parse_amount("abc").is_err());
        assert!(parse_amount(".").is_err());
        assert!(parse_amount("999999999999999999999999999999999").is_err());
        assert_eq!(format_balance(UNIT + UNIT / 2), "1.5 BTR");
        assert_eq!(format_balance(10 * UNIT), "10 BTR");
    }

    #[test]
    fn voting_power_is_whole_tokens_bounded() {
        assert_eq!(voting_power(0), 1);
        assert_eq!(voting_power(1_000 * UNIT + 5), 1_000);
        assert_eq!(voting_power(Balance::MAX), MAX_VOTING_POWER);
    }
}
