//! The balances pallet: free and reserved balances, transfers, transaction fees, the minimum
//! balance rule and total issuance.
//!
//! Each account's record also carries its transaction nonce, as Substrate's
//! `frame_system::AccountInfo` does, so that a signed transfer touches one record per party.
//!
//! Rules:
//! - An account's total (free + reserved) is either zero or at least the existential deposit
//!   (ED). A transfer or fee that would leave 0 < total < ED is rejected; a transfer that would
//!   create an account with less than ED is rejected. Records are never deleted, so nonces
//!   (replay protection) survive an account being emptied.
//! - Transaction fees are burned; tips go to the block author (see the runtime for how fees
//!   are computed).
//! - Total issuance changes only at genesis, by fees (burned) and by slashing (burned).

use bitorch_pallet_support::{
    self as support, Context, Currency, CurrencyError, Storage, StorageError,
};
use bitorch_primitives::{AccountId, Balance, Nonce};
use parity_scale_codec::{Decode, Encode};

mod error;
pub use error::Error;

#[cfg(test)]
mod tests;

const PALLET: &str = "balances";

/// An account's record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct AccountData {
    /// Number of extrinsics this account has signed that were included.
    pub nonce: Nonce,
    /// Spendable balance.
    pub free: Balance,
    /// Balance locked by other pallets (staking bonds, job escrow).
    pub reserved: Balance,
}

impl AccountData {
    /// free + reserved.
    pub fn total(&self) -> Balance {
        self.free.saturating_add(self.reserved)
    }
}

/// Calls of the balances pallet.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Call {
    /// Moves `amount` of the signer's free balance to `dest`.
    #[codec(index = 0)]
    Transfer {
        /// Recipient.
        dest: AccountId,
        /// Amount in base units.
        #[codec(compact)]
        amount: Balance,
    },
}

/// The balances pallet.
pub struct Pallet;

fn account_key(who: &AccountId) -> Vec<u8> {
    support::map_key(PALLET, "account", who)
}

impl Pallet {
    /// Reads an account (default when absent).
    pub fn account<S: Storage + ?Sized>(
        s: &S,
        who: &AccountId,
    ) -> Result<AccountData, StorageError> {
        support::get_or_default(s, &account_key(who))
    }

    /// Writes an account.
    pub fn set_account<S: Storage + ?Sized>(s: &mut S, who: &AccountId, data: &AccountData) {
        support::put(s, account_key(who), data);
    }

    /// Total issuance.
    pub fn total_issuance<S: Storage + ?Sized>(s: &S) -> Result<Balance, StorageError> {
        support::get_or_default(s, &support::value_key(PALLET, "total_issuance"))
    }

    fn set_total_issuance<S: Storage + ?Sized>(s: &mut S, v: Balance) {
        support::put(s, support::value_key(PALLET, "total_issuance"), &v);
    }

    /// The existential deposit (minimum balance).
    pub fn existential_deposit<S: Storage + ?Sized>(s: &S) -> Result<Balance, StorageError> {
        support::get_or_default(s, &support::value_key(PALLET, "existential_deposit"))
    }

    /// Genesis: sets the existential deposit.
    pub fn set_existential_deposit<S: Storage + ?Sized>(s: &mut S, ed: Balance) {
        support::put(s, support::value_key(PALLET, "existential_deposit"), &ed);
    }

    /// Genesis: mints `amount` into `who`'s free balance.
    pub fn mint<S: Storage + ?Sized>(
        s: &mut S,
        who: &AccountId,
        amount: Balance,
    ) -> Result<(), CurrencyError> {
        let mut acc = Self::account(s, who)?;
        acc.free = acc.free.checked_add(amount).ok_or(CurrencyError::Overflow)?;
        let issuance =
            Self::total_issuance(s)?.checked_add(amount).ok_or(CurrencyError::Overflow)?;
        Self::check_minimum(s, &acc)?;
        Self::set_account(s, who, &acc);
        Self::set_total_issuance(s, issuance);
        Ok(())
    }

    /// The nonce the next extrinsic of `who` must carry.
    pub fn nonce<S: Storage + ?Sized>(s: &S, who: &AccountId) -> Result<Nonce, StorageError> {
        Ok(Self::account(s, who)?.nonce)
    }

    /// Increments `who`'s nonce.
    pub fn inc_nonce<S: Storage + ?Sized>(s: &mut S, who: &AccountId) -> Result<(), StorageError> {
        let mut acc = Self::account(s, who)?;
        acc.nonce = acc.nonce.saturating_add(1);
        Self::set_account(s, who, &acc);
        Ok(())
    }

    fn check_minimum<S: Storage + ?Sized>(s: &S, acc: &AccountData) -> Result<(), CurrencyError> {
        let ed = Self::existential_deposit(s)?;
        let total = acc.total();
        if total != 0 && total < ed {
            return Err(CurrencyError::BelowMinimumBalance { minimum: ed });
        }
        Ok(())
    }

    /// Moves `amount` from `from`'s free balance to `to`'s free balance, enforcing the
    /// minimum balance rule on both.
    pub fn transfer<S: Storage + ?Sized>(
        s: &mut S,
        from: &AccountId,
        to: &AccountId,
        amount: Balance,
    ) -> Result<(), CurrencyError> {
        if from == to || amount == 0 {
            return Ok(());
        }
        let mut src = Self::account(s, from)?;
        src.free = src
            .free
            .checked_sub(amount)
            .ok_or(CurrencyError::InsufficientBalance { have: src.free, need: amount })?;
        Self::check_minimum(s, &src)?;
        let mut dst = Self::account(s, to)?;
        dst.free = dst.free.checked_add(amount).ok_or(CurrencyError::Overflow)?;
        Self::check_minimum(s, &dst)?;
        Self::set_account(s, from, &src);
        Self::set_account(s, to, &dst);
        Ok(())
    }

    /// Charges a transaction's fee: `fee` is burned (total issuance falls) and `tip` goes to
    /// the block author.
    pub fn pay_fee<S: Storage + ?Sized>(
        s: &mut S,
        who: &AccountId,
        fee: Balance,
        tip: Balance,
        author: &AccountId,
    ) -> Result<(), CurrencyError> {
        let mut acc = Self::account(s, who)?;
        acc.free = acc
            .free
            .checked_sub(fee)
            .ok_or(CurrencyError::InsufficientBalance { have: acc.free, need: fee })?;
        Self::check_minimum(s, &acc)?;
        let issuance = Self::total_issuance(s)?
            .checked_sub(fee)
            .ok_or(CurrencyError::InsufficientBalance { have: 0, need: fee })?;
        Self::set_account(s, who, &acc);
        Self::set_total_issuance(s, issuance);
        Self::transfer(s, who, author, tip)
    }

    /// Checks that `who` can pay `fee` without changing anything.
    pub fn can_pay_fee<S: Storage + ?Sized>(
        s: &S,
        who: &AccountId,
        fee: Balance,
    ) -> Result<(), CurrencyError> {
        let mut acc = Self::account(s, who)?;
        acc.free = acc
            .free
            .checked_sub(fee)
            .ok_or(CurrencyError::InsufficientBalance { have: acc.free, need: fee })?;
        Self::check_minimum(s, &acc)
    }

    /// Dispatches a call signed by `who`.
    pub fn dispatch<S: Storage + ?Sized>(
        s: &mut S,
        who: &AccountId,
        call: &Call,
        _ctx: &Context,
    ) -> Result<(), Error> {
        match call {
            Call::Transfer { dest, amount } => {
                if *amount == 0 {
                    return Err(Error::ZeroAmount);
                }
                if dest == who {
                    return Err(Error::TransferToSelf);
                }
                Self::transfer(s, who, dest, *amount)?;
                Ok(())
            }
        }
    }
}

impl Currency for Pallet {
    fn free_balance<S: Storage + ?Sized>(s: &S, who: &AccountId) -> Result<Balance, StorageError> {
        Ok(Self::account(s, who)?.free)
    }

    fn reserved_balance<S: Storage + ?Sized>(
        s: &S,
        who: &AccountId,
    ) -> Result<Balance, StorageError> {
        Ok(Self::account(s, who)?.reserved)
    }

    fn reserve<S: Storage + ?Sized>(
        s: &mut S,
        who: &AccountId,
        amount: Balance,
    ) -> Result<(), CurrencyError> {
        let mut acc = Self::account(s, who)?;
        acc.free = acc
            .free
            .checked_sub(amount)
            .ok_or(CurrencyError::InsufficientBalance { have: acc.free, need: amount })?;
        acc.reserved = acc.reserved.checked_add(amount).ok_or(CurrencyError::Overflow)?;
        Self::set_account(s, who, &acc);
        Ok(())
    }

    fn unreserve<S: Storage + ?Sized>(
        s: &mut S,
        who: &AccountId,
        amount: Balance,
    ) -> Result<(), CurrencyError> {
        let mut acc = Self::account(s, who)?;
        acc.reserved = acc
            .reserved
            .checked_sub(amount)
            .ok_or(CurrencyError::InsufficientReserved { have: acc.reserved, need: amount })?;
        acc.free = acc.free.checked_add(amount).ok_or(CurrencyError::Overflow)?;
        Self::set_account(s, who, &acc);
        Ok(())
    }

    fn repatriate_reserved<S: Storage + ?Sized>(
        s: &mut S,
        from: &AccountId,
        to: &AccountId,
        amount: Balance,
    ) -> Result<(), CurrencyError> {
        if from == to {
            return Self::unreserve(s, from, amount);
        }
        let mut src = Self::account(s, from)?;
        src.reserved = src
            .reserved
            .checked_sub(amount)
            .ok_or(CurrencyError::InsufficientReserved { have: src.reserved, need: amount })?;
        // The payer may legitimately end below ED (e.g. its last escrow paid out); only the
        // recipient's new total is checked.
        let mut dst = Self::account(s, to)?;
        dst.free = dst.free.checked_add(amount).ok_or(CurrencyError::Overflow)?;
        Self::check_minimum(s, &dst)?;
        Self::set_account(s, from, &src);
        Self::set_account(s, to, &dst);
        Ok(())
    }

    fn burn_reserved<S: Storage + ?Sized>(
        s: &mut S,
        who: &AccountId,
        amount: Balance,
    ) -> Result<(), CurrencyError> {
        let mut acc = Self::account(s, who)?;
        acc.reserved = acc
            .reserved
            .checked_sub(amount)
            .ok_or(CurrencyError::InsufficientReserved { have: acc.reserved, need: amount })?;
        let issuance = Self::total_issuance(s)?
            .checked_sub(amount)
            .ok_or(CurrencyError::InsufficientReserved { have: 0, need: amount })?;
        Self::set_account(s, who, &acc);
        Self::set_total_issuance(s, issuance);
        Ok(())
    }
}
