//! API tokens: a user lets a gateway spend from their on-chain allowance for it, by a token
//! they make offline and sign with their own key (`bitorch key api-token`). The gateway stores
//! no secret: it checks the signature, that the token names it, that it has not expired, and
//! (on chain) the allowance the user gave it.
//!
//! Who signs what: the **user** signs the token (user, gateway, expiry, chain) and the
//! allowance (`jobs.Approve`, on chain); the **gateway** signs the jobs it opens from the
//! allowance (`jobs.OpenJobFor`) and their sessions and vouchers. A token for another gateway,
//! another chain, or signed by anyone but its user does not verify; a token whose allowance was
//! revoked or spent opens nothing.
//!
//! A token may carry the user's default cap on the price per layer-token (`max_price`): the
//! gateway opens no job above it for a request that names no `max_price` of its own.
//!
//! On the wire: `btr_` and the hex of the SCALE encoding of [`ApiToken`] (137 bytes, or 153
//! with a price cap).

use crate::keys::{sign, verify, AccountId, Pair, Signature};
use crate::H256;
use parity_scale_codec::{Decode, Encode};

/// What every token starts with.
pub const PREFIX: &str = "btr_";
/// Length of a token's text without a price cap.
pub const TEXT_LEN: usize = 4 + 2 * 137;
/// Length of a token's text with a price cap.
pub const TEXT_LEN_CAPPED: usize = 4 + 2 * 153;

/// A signed API token.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct ApiToken {
    /// The user who pays.
    pub user: AccountId,
    /// The gateway it is for.
    pub gateway: AccountId,
    /// When it stops being valid, in milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
    /// The most the user pays per layer per token (base units) unless a request says
    /// otherwise; `None`: the gateway's default.
    pub max_price: Option<crate::Balance>,
    /// The user's sr25519 signature over [`ApiToken::signing_payload`].
    pub signature: [u8; 64],
}

/// Why a token is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token at all.
    #[error("not a Bitorch API token (expected btr_ and 274 or 306 hex digits): {0}")]
    Malformed(&'static str),
    /// The signature is not its user's (forged or altered), or it is for another chain.
    #[error(
        "the token's signature is not its user's (forged, altered, or made for another chain)"
    )]
    BadSignature,
    /// It expired.
    #[error("the token expired")]
    Expired,
    /// It names another gateway.
    #[error("the token is for another gateway ({0})")]
    WrongGateway(String),
}

impl ApiToken {
    /// What the user signs: the domain, the chain's genesis, the user, gateway, expiry and
    /// price cap.
    pub fn signing_payload(
        genesis: &H256,
        user: &AccountId,
        gateway: &AccountId,
        expires_at_ms: u64,
        max_price: Option<crate::Balance>,
    ) -> Vec<u8> {
        (b"bitorch/api-token/2", genesis, user, gateway, expires_at_ms, max_price).encode()
    }

    /// A token signed by `user` for `gateway` on the chain `genesis`, capping the price per
    /// layer-token at `max_price` if given.
    pub fn make(
        user: &Pair,
        gateway: AccountId,
        expires_at_ms: u64,
        max_price: Option<crate::Balance>,
        genesis: &H256,
    ) -> Self {
        let who = crate::keys::account_of(user);
        let payload = Self::signing_payload(genesis, &who, &gateway, expires_at_ms, max_price);
        let signature = sign(user, &payload).0;
        Self { user: who, gateway, expires_at_ms, max_price, signature }
    }

    /// Its text (`btr_…`).
    pub fn to_text(&self) -> String {
        format!("{PREFIX}{}", hex::encode(self.encode()))
    }

    /// Parses a token's text.
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let text = text.trim();
        if text.len() != TEXT_LEN && text.len() != TEXT_LEN_CAPPED {
            return Err(TokenError::Malformed("wrong length"));
        }
        let hex_part = text.strip_prefix(PREFIX).ok_or(TokenError::Malformed("no btr_ prefix"))?;
        let bytes = hex::decode(hex_part).map_err(|_| TokenError::Malformed("not hex"))?;
        let mut input = &bytes[..];
        let token =
            Self::decode(&mut input).map_err(|_| TokenError::Malformed("does not decode"))?;
        if !input.is_empty() {
            return Err(TokenError::Malformed("trailing bytes"));
        }
        Ok(token)
    }

    /// Checks it for `gateway` on the chain `genesis` at `now_ms`.
    pub fn verify(
        &self,
        gateway: &AccountId,
        genesis: &H256,
        now_ms: u64,
    ) -> Result<(), TokenError> {
        let payload = Self::signing_payload(
            genesis,
            &self.user,
            &self.gateway,
            self.expires_at_ms,
            self.max_price,
        );
        if !verify(&Signature::from_raw(self.signature), &payload, &self.user) {
            return Err(TokenError::BadSignature);
        }
        if &self.gateway != gateway {
            return Err(TokenError::WrongGateway(crate::keys::to_ss58(&self.gateway)));
        }
        if now_ms >= self.expires_at_ms {
            return Err(TokenError::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{account_of, pair_from_suri};

    #[test]
    fn tokens_verify_only_for_their_gateway_chain_and_time() {
        let bob = pair_from_suri("//Bob").unwrap();
        let gw = account_of(&pair_from_suri("//Alice").unwrap());
        let other = account_of(&pair_from_suri("//Charlie").unwrap());
        let genesis = H256::repeat_byte(1);
        let t = ApiToken::make(&bob, gw.clone(), 1_000, None, &genesis);
        let text = t.to_text();
        assert_eq!(text.len(), TEXT_LEN);
        let back = ApiToken::parse(&text).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.verify(&gw, &genesis, 999), Ok(()));
        assert_eq!(back.verify(&gw, &genesis, 1_000), Err(TokenError::Expired));
        assert!(matches!(back.verify(&other, &genesis, 0), Err(TokenError::WrongGateway(_))));
        assert_eq!(back.verify(&gw, &H256::repeat_byte(2), 0), Err(TokenError::BadSignature));
        // Altered: a longer expiry, or another user, breaks the signature.
        let mut longer = back.clone();
        longer.expires_at_ms = 10_000;
        assert_eq!(longer.verify(&gw, &genesis, 0), Err(TokenError::BadSignature));
        let mut stolen = back.clone();
        stolen.user = other.clone();
        assert_eq!(stolen.verify(&gw, &genesis, 0), Err(TokenError::BadSignature));
        // A price cap travels signed: it parses back, and raising it breaks the signature.
        let capped = ApiToken::make(&bob, gw.clone(), 1_000, Some(7), &genesis);
        let text_capped = capped.to_text();
        assert_eq!(text_capped.len(), TEXT_LEN_CAPPED);
        let back = ApiToken::parse(&text_capped).unwrap();
        assert_eq!((back.max_price, back.verify(&gw, &genesis, 0)), (Some(7), Ok(())));
        let mut raised = back.clone();
        raised.max_price = Some(8);
        assert_eq!(raised.verify(&gw, &genesis, 0), Err(TokenError::BadSignature));
        let mut dropped = back;
        dropped.max_price = None;
        assert_eq!(dropped.verify(&gw, &genesis, 0), Err(TokenError::BadSignature));
        for bad in ["", "btr_", &text[..text.len() - 2], &text.replace("btr_", "sk-_")] {
            assert!(matches!(ApiToken::parse(bad), Err(TokenError::Malformed(_))), "{bad}");
        }
    }
}
