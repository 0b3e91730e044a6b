//! Random sequences of signed extrinsics through the executive: after every one, total
//! issuance equals the sum of all balances, reserved balance equals stake plus escrow, issuance
//! falls by exactly the fees burned, and a rejected extrinsic changes nothing.

use bitorch_pallet_support::{Context, MemoryState};
use bitorch_primitives::keys::{account_of, pair_from_suri};
use bitorch_primitives::{AccountId, Balance, Pair, H256, UNIT};
use bitorch_runtime::{
    balances, compute_fee, executive, jobs, models, staking, Balances, Call, GenesisConfig, Jobs,
    Staking, UncheckedExtrinsic,
};
use parity_scale_codec::Encode;
use proptest::prelude::*;

const NAMES: [&str; 4] = ["//Alice", "//Bob", "//Charlie", "//Dave"];

fn genesis() -> (MemoryState, Vec<Pair>) {
    let pairs: Vec<Pair> = NAMES.iter().map(|n| pair_from_suri(n).unwrap()).collect();
    let config = GenesisConfig {
        chain_id: "test".into(),
        existential_deposit: UNIT / 1000,
        balances: pairs.iter().map(|p| (account_of(p), 1_000 * UNIT)).collect(),
        validators: vec![(account_of(&pairs[0]), 100 * UNIT)],
        workers: vec![(account_of(&pairs[1]), 10 * UNIT)],
        staking: staking::Params {
            min_validator_bond: 100 * UNIT,
            min_worker_bond: 10 * UNIT,
            unbonding_delay: 3,
            max_validators: 10,
        },
        jobs: jobs::Params {
            job_timeout: 5,
            challenge_window: 2,
            audit_slash_percent: 10,
            max_claims: 8,
            audit_percent: 50,
            auditors: 1,
            audit_window: 1,
            audit_fee_percent: 10,
        },
    };
    (config.build_state().unwrap(), pairs)
}

fn totals(s: &MemoryState, who: &[AccountId]) -> (Balance, Balance) {
    who.iter().fold((0, 0), |(t, r), a| {
        let acc = Balances::account(s, a).unwrap();
        (t + acc.total(), r + acc.reserved)
    })
}

#[derive(Debug, Clone)]
enum Op {
    Transfer {
        to: usize,
        amount: u128,
    },
    Bond(u128),
    Unbond(u128),
    Withdraw,
    RegisterWorker,
    RegisterModel,
    OpenJob {
        tokens: u32,
    },
    /// `worker`'s claim (signed by the worker) with a voucher signed by the op's account
    /// (accepted only when that is the job's client).
    Claim {
        job: u64,
        tokens: u32,
        worker: usize,
    },
    Close {
        job: u64,
    },
    /// The op's account commits to a finding on a job's first claim (accepted only from an
    /// assigned auditor in the commit window).
    Commit {
        job: u64,
        failed: bool,
    },
    /// ... and reveals it (accepted only in the reveal window).
    Reveal {
        job: u64,
        failed: bool,
    },
    NextBlock,
}

fn op() -> impl Strategy<Value = (usize, Op)> {
    let amount = 0u128..2_000 * UNIT;
    (
        0usize..4,
        prop_oneof![
            (0usize..4, amount.clone()).prop_map(|(to, amount)| Op::Transfer { to, amount }),
            amount.clone().prop_map(Op::Bond),
            amount.prop_map(Op::Unbond),
            Just(Op::Withdraw),
            Just(Op::RegisterWorker),
            Just(Op::RegisterModel),
            (0u32..20).prop_map(|tokens| Op::OpenJob { tokens }),
            (0u64..3, 0u32..20, 0usize..4).prop_map(|(job, tokens, worker)| Op::Claim {
                job,
                tokens,
                worker
            }),
            (0u64..3).prop_map(|job| Op::Close { job }),
            (0u64..3, any::<bool>()).prop_map(|(job, failed)| Op::Commit { job, failed }),
            (0u64..3, any::<bool>()).prop_map(|(job, failed)| Op::Reveal { job, failed }),
            Just(Op::NextBlock),
        ],
    )
}

/// Stake slashed by every failed audit so far.
fn slashed(s: &MemoryState) -> Balance {
    (0..Jobs::next_job_id(s).unwrap())
        .filter_map(|id| Jobs::job(s, id).unwrap())
        .flat_map(|j| j.claims)
        .filter_map(|c| match c.audit.and_then(|a| a.outcome) {
            Some(jobs::Outcome::Failed { slashed }) => Some(slashed),
            _ => None,
        })
        .sum()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn extrinsics_conserve_value(ops in prop::collection::vec(op(), 1..60)) {
        let (mut state, pairs) = genesis();
        let accounts: Vec<AccountId> = pairs.iter().map(account_of).collect();
        let genesis_hash = H256::repeat_byte(1);
        let mut ctx = Context { block_number: 1, genesis_hash, author: accounts[0].clone(), parent_hash: Default::default() };
        let model = models::example_manifest(4).id();
        for (who, op) in ops {
            let mut signer = &pairs[who];
            let call = match op {
                Op::NextBlock => {
                    executive::finalize_block(&mut state, &ctx).unwrap();
                    ctx.block_number += 1;
                    let before = Balances::total_issuance(&state).unwrap();
                    let slashed_before = slashed(&state);
                    executive::initialize_block(&mut state, &ctx).unwrap();
                    // Settlement moves value; hooks burn only what failed audits slash.
                    let burned = before - Balances::total_issuance(&state).unwrap();
                    prop_assert_eq!(burned, slashed(&state) - slashed_before);
                    continue;
                }
                Op::Transfer { to, amount } => Call::Balances(balances::Call::Transfer { dest: accounts[to].clone(), amount }),
                Op::Bond(amount) => Call::Staking(staking::Call::Bond { amount }),
                Op::Unbond(amount) => Call::Staking(staking::Call::Unbond { amount }),
                Op::Withdraw => Call::Staking(staking::Call::WithdrawUnbonded),
                Op::RegisterWorker => Call::Staking(staking::Call::RegisterWorker),
                Op::RegisterModel => Call::Models(models::Call::Register { manifest: models::example_manifest(4) }),
                Op::OpenJob { tokens } => Call::Jobs(jobs::Call::OpenJob { model, max_tokens: tokens, price_per_layer_token: UNIT }),
                Op::Claim { job, tokens, worker } => {
                    let voucher = jobs::Voucher { job, session: [tokens as u8; 16], worker: accounts[worker].clone(), layers: (0, 2), positions: tokens, trace: H256::zero() };
                    let voucher = voucher.sign(&pairs[who], &genesis_hash);
                    signer = &pairs[worker];
                    Call::Jobs(jobs::Call::Claim { voucher })
                }
                Op::Close { job } => Call::Jobs(jobs::Call::CloseJob { job }),
                Op::Commit { job, failed } => {
                    let probe = jobs::Probe([0; jobs::PROBE_VALUES]);
                    let finding = if failed { jobs::Finding::Failed { outputs: H256::zero(), probe: Some(probe) } } else { jobs::Finding::Passed { outputs: H256::zero(), probe } };
                    let commitment = jobs::verdict_commitment(job, 0, &accounts[who], &finding, &[0; 32]);
                    Call::Jobs(jobs::Call::CommitVerdict { job, claim_index: 0, commitment })
                }
                Op::Reveal { job, failed } => {
                    let probe = jobs::Probe([0; jobs::PROBE_VALUES]);
                    let finding = if failed { jobs::Finding::Failed { outputs: H256::zero(), probe: Some(probe) } } else { jobs::Finding::Passed { outputs: H256::zero(), probe } };
                    Call::Jobs(jobs::Call::RevealVerdict { job, claim_index: 0, finding, salt: [0; 32] })
                }
            };
            let nonce = Balances::nonce(&state, &account_of(signer)).unwrap();
            let xt = UncheckedExtrinsic::sign(signer, &genesis_hash, nonce, 0, 1_000, call);
            let len = xt.encoded_size();
            let before = state.clone();
            let issuance = Balances::total_issuance(&state).unwrap();
            match executive::apply_checked(&mut state, &xt, len, &ctx) {
                Err(_) => prop_assert_eq!(&state, &before, "a rejected extrinsic changed state"),
                Ok(()) => {
                    let burned = issuance - Balances::total_issuance(&state).unwrap();
                    let fee = compute_fee(&xt.call, len, 0);
                    prop_assert_eq!(burned, fee, "only the fee is burned");
                }
            }
            let (total, reserved) = totals(&state, &accounts);
            prop_assert_eq!(Balances::total_issuance(&state).unwrap(), total);
            let staked: Balance = accounts.iter().map(|a| Staking::ledger(&state, a).unwrap().total()).sum();
            prop_assert_eq!(reserved, staked + Jobs::total_escrow(&state).unwrap());
        }
    }
}

#[test]
fn a_signed_transfer_pays_its_fee_and_bumps_the_nonce() {
    let (mut state, pairs) = genesis();
    let (alice, bob) = (account_of(&pairs[0]), account_of(&pairs[1]));
    let g = H256::repeat_byte(1);
    let ctx = Context {
        block_number: 1,
        genesis_hash: g,
        author: alice.clone(),
        parent_hash: Default::default(),
    };
    let call = Call::Balances(balances::Call::Transfer { dest: bob.clone(), amount: 5 * UNIT });
    let xt = UncheckedExtrinsic::sign(&pairs[0], &g, 0, 0, 10, call);
    let len = xt.encode().len();
    let free = |s: &MemoryState, a: &AccountId| Balances::account(s, a).unwrap().free;
    let (a0, b0) = (free(&state, &alice), free(&state, &bob));
    executive::validate_transaction(&state, &xt, len, &ctx).unwrap();
    executive::apply_checked(&mut state, &xt, len, &ctx).unwrap();
    assert_eq!(free(&state, &bob), b0 + 5 * UNIT);
    // The fee schedule the README states: 0.001 BTR + 0.000001 BTR per byte + 0.0001 BTR per
    // weight unit (a transfer weighs 1), "about 0.00124 BTR" for a transfer.
    let readme_fee = UNIT / 1_000 + len as Balance * (UNIT / 1_000_000) + UNIT / 10_000;
    assert_eq!(compute_fee(&xt.call, len, 0), readme_fee);
    assert!((UNIT * 120 / 100_000..UNIT * 130 / 100_000).contains(&readme_fee), "{readme_fee}");
    assert_eq!(free(&state, &alice), a0 - 5 * UNIT - readme_fee);
    assert_eq!(Balances::nonce(&state, &alice).unwrap(), 1);
    // Replaying it is a stale nonce.
    assert!(executive::apply_checked(&mut state, &xt, len, &ctx).is_err());
}
