//! Genesis: the initial state of a chain, built from a [`GenesisConfig`].

use crate::extrinsic::extrinsics_root;
use crate::state::StateTree;
use crate::{Balances, Jobs, Staking};
use bitorch_pallet_support::{self as support, Context, MemoryState};
use bitorch_primitives::{keys::to_ss58, AccountId, Balance, Hash, Header};
use std::collections::BTreeSet;

/// Everything the first state is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenesisConfig {
    /// The chain's id (part of the state, so two chains with the same balances differ).
    pub chain_id: String,
    /// Minimum balance of an account.
    pub existential_deposit: Balance,
    /// Initial free balances.
    pub balances: Vec<(AccountId, Balance)>,
    /// Validators and the stake each bonds at genesis (from its balance).
    pub validators: Vec<(AccountId, Balance)>,
    /// Workers and the stake each bonds at genesis (from its balance).
    pub workers: Vec<(AccountId, Balance)>,
    /// Staking parameters.
    pub staking: crate::staking::Params,
    /// Inference market parameters.
    pub jobs: crate::jobs::Params,
}

/// Why a genesis configuration is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenesisError {
    /// An account is listed twice in the balances.
    #[error("account {0} appears more than once in genesis balances")]
    DuplicateAccount(String),
    /// A validator listed twice.
    #[error("account {0} appears more than once in genesis validators")]
    DuplicateValidator(String),
    /// A worker listed twice.
    #[error("account {0} appears more than once in genesis workers")]
    DuplicateWorker(String),
    /// No validators.
    #[error("genesis needs at least one validator")]
    NoValidators,
    /// Zero existential deposit.
    #[error("existential deposit must be greater than zero")]
    ZeroExistentialDeposit,
    /// An invalid parameter.
    #[error("invalid genesis parameter: {0}")]
    InvalidParameter(String),
    /// A balance, bond or registration failed.
    #[error("genesis account {account}: {reason}")]
    Account {
        /// The account.
        account: String,
        /// Why.
        reason: String,
    },
}

fn ensure_unique(
    list: &[(AccountId, Balance)],
    err: fn(String) -> GenesisError,
) -> Result<(), GenesisError> {
    let mut seen = BTreeSet::new();
    for (who, _) in list {
        if !seen.insert(who) {
            return Err(err(to_ss58(who)));
        }
    }
    Ok(())
}

impl GenesisConfig {
    /// Builds the genesis state.
    pub fn build_state(&self) -> Result<MemoryState, GenesisError> {
        ensure_unique(&self.balances, GenesisError::DuplicateAccount)?;
        ensure_unique(&self.validators, GenesisError::DuplicateValidator)?;
        ensure_unique(&self.workers, GenesisError::DuplicateWorker)?;
        if self.validators.is_empty() {
            return Err(GenesisError::NoValidators);
        }
        if self.existential_deposit == 0 {
            return Err(GenesisError::ZeroExistentialDeposit);
        }
        if self.staking.max_validators == 0 {
            return Err(GenesisError::InvalidParameter("staking.maxValidators must be > 0".into()));
        }
        if self.jobs.audit_slash_percent > 100 {
            return Err(GenesisError::InvalidParameter(
                "jobs.auditSlashPercent must be at most 100".into(),
            ));
        }
        if self.jobs.job_timeout == 0 || self.jobs.challenge_window == 0 {
            return Err(GenesisError::InvalidParameter(
                "jobs.jobTimeout and jobs.challengeWindow must be > 0".into(),
            ));
        }
        let mut s = MemoryState::default();
        support::put(&mut s, support::value_key("system", "chain_id"), &self.chain_id);
        Balances::set_existential_deposit(&mut s, self.existential_deposit);
        Staking::set_params(&mut s, &self.staking);
        Jobs::set_params(&mut s, &self.jobs);
        let account_err = |who: &AccountId, reason: String| GenesisError::Account {
            account: to_ss58(who),
            reason,
        };
        for (who, amount) in &self.balances {
            Balances::mint(&mut s, who, *amount).map_err(|e| account_err(who, e.to_string()))?;
        }
        let ctx = Context {
            block_number: 0,
            genesis_hash: Hash::zero(),
            author: AccountId::new([0; 32]),
            parent_hash: Default::default(),
        };
        let workers: BTreeSet<&AccountId> = self.workers.iter().map(|(w, _)| w).collect();
        for (who, stake) in &self.validators {
            let also_worker = workers.contains(who);
            let worker_stake =
                self.workers.iter().find(|(w, _)| w == who).map(|(_, b)| *b).unwrap_or(0);
            let total = stake.saturating_add(worker_stake);
            Staking::genesis_stake(&mut s, who, total, true, also_worker, &ctx)
                .map_err(|e| account_err(who, e.to_string()))?;
        }
        for (who, stake) in &self.workers {
            if self.validators.iter().any(|(v, _)| v == who) {
                continue;
            }
            Staking::genesis_stake(&mut s, who, *stake, false, true, &ctx)
                .map_err(|e| account_err(who, e.to_string()))?;
        }
        Staking::on_finalize(&mut s, &ctx).map_err(|e| GenesisError::Account {
            account: "staking".into(),
            reason: e.to_string(),
        })?;
        Ok(s)
    }

    /// Builds the genesis state tree and header.
    pub fn build(&self) -> Result<(StateTree, Header), GenesisError> {
        let state = self.build_state()?;
        let tree = StateTree::from_pairs(state.0);
        let header = Header {
            parent_hash: Hash::zero(),
            number: 0,
            state_root: tree.root(),
            extrinsics_root: extrinsics_root(&[]),
            author: AccountId::new([0; 32]),
            timestamp_ms: 0,
        };
        Ok((tree, header))
    }
}
