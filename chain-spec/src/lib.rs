//! Chain specifications: the JSON that names a chain and holds its genesis.
//!
//! The keys follow the Substrate ecosystem (`name`, `id`, `chainType`, `bootNodes`,
//! `properties` with `tokenSymbol`, `tokenDecimals`, `ss58Format`) plus a `genesis` section
//! with balances, validators, workers, staking and job parameters. Amounts are base units,
//! written as decimal strings (numbers are accepted too). Built-in specs: `dev` (Alice the only
//! validator, dev accounts funded) and `local` (N validators). A spec with duplicate accounts,
//! unknown fields or invalid values is rejected with a message that names the problem.

use bitorch_primitives::{
    keys::{account_of, pair_from_suri, parse_account, to_ss58},
    AccountId, Balance, Hash, Header, SS58_PREFIX, TOKEN_DECIMALS, TOKEN_SYMBOL, UNIT,
};
use bitorch_runtime::{jobs, staking, state::StateTree, GenesisConfig};
use serde::{Deserialize, Serialize};
use std::path::Path;

mod error;
pub use error::Error;

/// The largest chain spec file read, in bytes.
pub const MAX_SPEC_BYTES: u64 = 16 * 1024 * 1024;

/// Names of the well-known development accounts, in order.
pub const DEV_ACCOUNTS: [&str; 6] = ["Alice", "Bob", "Charlie", "Dave", "Eve", "Ferdie"];

/// The secret URI of the i-th development account (`//Alice`, …, then `//Node6`, …).
pub fn dev_suri(i: usize) -> String {
    match DEV_ACCOUNTS.get(i) {
        Some(name) => format!("//{name}"),
        None => format!("//Node{i}"),
    }
}

fn dev_account(i: usize) -> Result<AccountId, Error> {
    Ok(account_of(&pair_from_suri(&dev_suri(i)).map_err(|e| Error::Invalid(e.to_string()))?))
}

/// An amount in base units: a decimal string in JSON (a number is accepted on input).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Amount(pub Balance);

impl Serialize for Amount {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Str(String),
            Num(u64),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => Ok(Amount(n as Balance)),
            Raw::Str(s) => s.parse().map(Amount).map_err(|_| {
                serde::de::Error::custom(format!("'{s}' is not an amount in base units"))
            }),
        }
    }
}

/// `properties` of a spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Properties {
    /// Token symbol.
    pub token_symbol: String,
    /// Token decimals.
    pub token_decimals: u8,
    /// SS58 prefix.
    pub ss58_format: u16,
}

/// Staking parameters as written in JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StakingJson {
    /// Minimum bond of a validator.
    pub min_validator_bond: Amount,
    /// Minimum bond of a worker.
    pub min_worker_bond: Amount,
    /// Blocks between unbond and withdraw.
    pub unbonding_delay: u64,
    /// Size cap of the validator set.
    pub max_validators: u32,
}

/// Job-market parameters as written in JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobsJson {
    /// Blocks from opening a job to its deadline (no new sessions after it).
    pub job_timeout: u64,
    /// Blocks after closing (or the deadline) during which claims are still accepted and
    /// audited, before payment.
    pub challenge_window: u64,
    /// Percentage of a worker's bond slashed by a failed audit.
    pub audit_slash_percent: u8,
    /// Most claims a job accepts (a claim per worker and session).
    pub max_claims: u32,
    /// Least share of claims audited, in percent (more for claims large against the worker's
    /// stake).
    #[serde(default = "default_audit_percent")]
    pub audit_percent: u8,
    /// Validators assigned to audit a claim.
    #[serde(default = "default_auditors")]
    pub auditors: u8,
    /// Blocks auditors have to commit to a finding, and again to reveal it.
    #[serde(default = "default_audit_window")]
    pub audit_window: u64,
    /// Audit fee, in percent of a claim, shared by the auditors on the side of the outcome.
    #[serde(default = "default_audit_fee_percent")]
    pub audit_fee_percent: u8,
}

fn default_audit_percent() -> u8 {
    10
}

fn default_auditors() -> u8 {
    3
}

fn default_audit_window() -> u64 {
    5
}

fn default_audit_fee_percent() -> u8 {
    5
}

/// The `genesis` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GenesisJson {
    /// Minimum balance of an account.
    pub existential_deposit: Amount,
    /// `[address, free balance]` pairs.
    pub balances: Vec<(String, Amount)>,
    /// `[address, bonded stake]` of the validators.
    pub validators: Vec<(String, Amount)>,
    /// `[address, bonded stake]` of the workers.
    pub workers: Vec<(String, Amount)>,
    /// Staking parameters.
    pub staking: StakingJson,
    /// Job-market parameters.
    pub jobs: JobsJson,
}

/// A chain specification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChainSpec {
    /// Human-readable name.
    pub name: String,
    /// Short id, used in the data directory name.
    pub id: String,
    /// `Development`, `Local` or `Live`.
    pub chain_type: String,
    /// Multiaddresses of boot nodes.
    pub boot_nodes: Vec<String>,
    /// Token properties.
    pub properties: Properties,
    /// Genesis.
    pub genesis: GenesisJson,
}

fn default_properties() -> Properties {
    Properties {
        token_symbol: TOKEN_SYMBOL.to_string(),
        token_decimals: TOKEN_DECIMALS,
        ss58_format: SS58_PREFIX,
    }
}

fn default_staking() -> StakingJson {
    StakingJson {
        min_validator_bond: Amount(1_000 * UNIT),
        min_worker_bond: Amount(100 * UNIT),
        unbonding_delay: 20,
        max_validators: 100,
    }
}

fn default_jobs() -> JobsJson {
    JobsJson {
        job_timeout: 60,
        challenge_window: 10,
        audit_slash_percent: 10,
        max_claims: 256,
        audit_percent: default_audit_percent(),
        auditors: default_auditors(),
        audit_window: default_audit_window(),
        audit_fee_percent: default_audit_fee_percent(),
    }
}

impl ChainSpec {
    /// The one-node development chain: Alice validates; Alice, Bob, Charlie and Dave are
    /// workers; all six dev accounts hold 1,000,000 BTR.
    pub fn dev() -> Result<Self, Error> {
        let balances = (0..DEV_ACCOUNTS.len())
            .map(|i| Ok((to_ss58(&dev_account(i)?), Amount(1_000_000 * UNIT))))
            .collect::<Result<Vec<_>, Error>>()?;
        let workers = (0..4)
            .map(|i| Ok((to_ss58(&dev_account(i)?), Amount(100 * UNIT))))
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(Self {
            name: "Bitorch Development".into(),
            id: "dev".into(),
            chain_type: "Development".into(),
            boot_nodes: vec![],
            properties: default_properties(),
            genesis: GenesisJson {
                existential_deposit: Amount(UNIT / 1000),
                balances,
                validators: vec![(to_ss58(&dev_account(0)?), Amount(1_000 * UNIT))],
                workers,
                staking: default_staking(),
                jobs: default_jobs(),
            },
        })
    }

    /// A local testnet with `validators` validators (`//Alice`, `//Bob`, …), each also a
    /// worker, and the dev accounts funded.
    pub fn local(validators: usize) -> Result<Self, Error> {
        if validators == 0 || validators > 100 {
            return Err(Error::Invalid("--validators must be between 1 and 100".into()));
        }
        let funded = validators.max(DEV_ACCOUNTS.len());
        let balances = (0..funded)
            .map(|i| Ok((to_ss58(&dev_account(i)?), Amount(1_000_000 * UNIT))))
            .collect::<Result<Vec<_>, Error>>()?;
        let staked = |amount| {
            (0..validators)
                .map(|i| Ok((to_ss58(&dev_account(i)?), Amount(amount))))
                .collect::<Result<Vec<_>, Error>>()
        };
        Ok(Self {
            name: "Bitorch Local Testnet".into(),
            id: "local".into(),
            chain_type: "Local".into(),
            boot_nodes: vec![],
            properties: default_properties(),
            genesis: GenesisJson {
                existential_deposit: Amount(UNIT / 1000),
                balances,
                validators: staked(1_000 * UNIT)?,
                workers: staked(100 * UNIT)?,
                staking: default_staking(),
                jobs: default_jobs(),
            },
        })
    }

    /// `dev`, `local`, or a path to a JSON spec.
    pub fn load(chain: &str) -> Result<Self, Error> {
        match chain {
            "dev" => Self::dev(),
            "local" => Self::local(2),
            path => Self::from_file(Path::new(path)),
        }
    }

    /// Reads a JSON spec from a file (at most [`MAX_SPEC_BYTES`]).
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::Read { path: path.to_path_buf(), source: e })?;
        if meta.len() > MAX_SPEC_BYTES {
            return Err(Error::TooLarge { size: meta.len(), max: MAX_SPEC_BYTES });
        }
        let bytes =
            std::fs::read(path).map_err(|e| Error::Read { path: path.to_path_buf(), source: e })?;
        Self::from_json(&bytes)
    }

    /// Parses and validates a JSON spec.
    pub fn from_json(bytes: &[u8]) -> Result<Self, Error> {
        let spec: Self = serde_json::from_slice(bytes).map_err(|e| Error::Json(e.to_string()))?;
        spec.genesis_config()?;
        Ok(spec)
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> Result<String, Error> {
        serde_json::to_string_pretty(self).map_err(|e| Error::Json(e.to_string()))
    }

    /// Checks the spec and turns its genesis section into the runtime's config.
    pub fn genesis_config(&self) -> Result<GenesisConfig, Error> {
        if self.id.is_empty()
            || !self.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(Error::Invalid(format!(
                "id '{}' must be non-empty ASCII letters, digits, '-' or '_'",
                self.id
            )));
        }
        if self.properties.ss58_format != SS58_PREFIX {
            return Err(Error::Invalid(format!(
                "properties.ss58Format is {}, but Bitorch uses {SS58_PREFIX}",
                self.properties.ss58_format
            )));
        }
        if self.properties.token_decimals != TOKEN_DECIMALS {
            return Err(Error::Invalid(format!(
                "properties.tokenDecimals is {}, but Bitorch balances have {TOKEN_DECIMALS}",
                self.properties.token_decimals
            )));
        }
        let accounts = |field: &str, list: &[(String, Amount)]| {
            list.iter()
                .map(|(a, b)| {
                    parse_account(a)
                        .map(|acc| (acc, b.0))
                        .map_err(|e| Error::Invalid(format!("genesis.{field}: {e}")))
                })
                .collect::<Result<Vec<_>, Error>>()
        };
        let g = &self.genesis;
        let config = GenesisConfig {
            chain_id: self.id.clone(),
            existential_deposit: g.existential_deposit.0,
            balances: accounts("balances", &g.balances)?,
            validators: accounts("validators", &g.validators)?,
            workers: accounts("workers", &g.workers)?,
            staking: staking::Params {
                min_validator_bond: g.staking.min_validator_bond.0,
                min_worker_bond: g.staking.min_worker_bond.0,
                unbonding_delay: g.staking.unbonding_delay,
                max_validators: g.staking.max_validators,
            },
            jobs: jobs::Params {
                job_timeout: g.jobs.job_timeout,
                challenge_window: g.jobs.challenge_window,
                audit_slash_percent: g.jobs.audit_slash_percent,
                max_claims: g.jobs.max_claims,
                audit_percent: g.jobs.audit_percent,
                auditors: g.jobs.auditors,
                audit_window: g.jobs.audit_window,
                audit_fee_percent: g.jobs.audit_fee_percent,
            },
        };
        // Build once so that every invalid value is reported here, not at node start.
        config.build_state()?;
        Ok(config)
    }

    /// The genesis state and header.
    pub fn build_genesis(&self) -> Result<(StateTree, Header), Error> {
        Ok(self.genesis_config()?.build()?)
    }

    /// The genesis hash.
    pub fn genesis_hash(&self) -> Result<Hash, Error> {
        Ok(self.build_genesis()?.1.hash())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_specs_build_and_round_trip() {
        for spec in [ChainSpec::dev().unwrap(), ChainSpec::local(4).unwrap()] {
            let json = spec.to_json().unwrap();
            let back = ChainSpec::from_json(json.as_bytes()).unwrap();
            assert_eq!(back, spec);
            assert_eq!(back.genesis_hash().unwrap(), spec.genesis_hash().unwrap());
        }
        assert_ne!(
            ChainSpec::dev().unwrap().genesis_hash().unwrap(),
            ChainSpec::local(1).unwrap().genesis_hash().unwrap()
        );
    }

    #[test]
    fn rejects_invalid_specs() {
        let mut dup = ChainSpec::dev().unwrap();
        let first = dup.genesis.balances[0].clone();
        dup.genesis.balances.push(first);
        let err = ChainSpec::from_json(dup.to_json().unwrap().as_bytes()).unwrap_err();
        assert!(err.to_string().contains("more than once"), "{err}");

        let mut bad = ChainSpec::dev().unwrap();
        bad.genesis.balances[0].0 = "not-an-address".into();
        let err = ChainSpec::from_json(bad.to_json().unwrap().as_bytes()).unwrap_err();
        assert!(err.to_string().contains("genesis.balances"), "{err}");

        let mut bad = ChainSpec::dev().unwrap();
        bad.genesis.validators.clear();
        assert!(ChainSpec::from_json(bad.to_json().unwrap().as_bytes()).is_err());

        let mut bad = ChainSpec::dev().unwrap();
        bad.properties.ss58_format = 0;
        assert!(ChainSpec::from_json(bad.to_json().unwrap().as_bytes()).is_err());

        let json = ChainSpec::dev().unwrap().to_json().unwrap().replace("\"name\"", "\"nmae\"");
        assert!(ChainSpec::from_json(json.as_bytes()).is_err());
        assert!(ChainSpec::from_json(b"{").is_err());
    }
}
