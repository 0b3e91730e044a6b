use super::*;
use bitorch_pallet_support::MemoryState;
use bitorch_primitives::keys::{account_of, pair_from_suri};
use bitorch_primitives::H256;

type Balances = bitorch_pallet_balances::Pallet;
type Staking = Pallet<Balances>;

const ACCOUNTS: u8 = 8;

fn acc(n: u8) -> AccountId {
    AccountId::new([n; 32])
}

fn ctx_at(block_number: BlockNumber) -> Context {
    Context {
        block_number,
        genesis_hash: H256::zero(),
        author: acc(99),
        parent_hash: Default::default(),
    }
}

fn ctx() -> Context {
    ctx_at(1)
}

fn params() -> Params {
    Params { min_validator_bond: 100, min_worker_bond: 50, unbonding_delay: 10, max_validators: 3 }
}

fn setup() -> MemoryState {
    let mut s = MemoryState::default();
    Balances::set_existential_deposit(&mut s, 10);
    for n in 1..ACCOUNTS {
        Balances::mint(&mut s, &acc(n), 1_000).unwrap();
    }
    Staking::set_params(&mut s, &params());
    s
}

fn all() -> Vec<AccountId> {
    (0..ACCOUNTS).map(acc).chain([acc(99)]).collect()
}

fn check_invariants(s: &MemoryState) {
    let mut reserved = 0;
    let mut staked = 0;
    let mut total = 0;
    for who in all() {
        let a = Balances::account(s, &who).unwrap();
        reserved += a.reserved;
        total += a.total();
        let l = Staking::ledger(s, &who).unwrap();
        staked += l.total();
        assert!(l.unlocking.len() <= MAX_UNLOCK_CHUNKS as usize);
        // Roles always meet their minimum.
        if Staking::is_candidate(s, &who).unwrap() {
            assert!(l.bonded >= params().min_validator_bond);
        }
        if Staking::worker_info(s, &who).unwrap().is_some() {
            assert!(l.bonded >= params().min_worker_bond);
        }
    }
    assert_eq!(reserved, staked, "reserved balance != bonded + unlocking");
    assert_eq!(Balances::total_issuance(s).unwrap(), total, "issuance != sum of balances");
}

fn call(s: &mut MemoryState, who: u8, c: Call, ctx: &Context) -> Result<(), Error> {
    let r = support::transactional(s, |o| Staking::dispatch(o, &acc(who), &c, ctx));
    check_invariants(s);
    r
}

fn ok(s: &mut MemoryState, who: u8, c: Call) {
    call(s, who, c, &ctx()).unwrap();
}

#[test]
fn bond_reserves_and_unbond_honours_delay() {
    let mut s = setup();
    ok(&mut s, 1, Call::Bond { amount: 300 });
    ok(&mut s, 1, Call::Bond { amount: 100 });
    assert_eq!(Staking::ledger(&s, &acc(1)).unwrap().bonded, 400);
    assert_eq!(Balances::account(&s, &acc(1)).unwrap().reserved, 400);
    ok(&mut s, 1, Call::Unbond { amount: 100 });
    // A second unbonding in the same block merges into the same chunk.
    ok(&mut s, 1, Call::Unbond { amount: 50 });
    let l = Staking::ledger(&s, &acc(1)).unwrap();
    assert_eq!(l.bonded, 250);
    assert_eq!(l.unlocking, vec![UnlockChunk { amount: 150, unlock_at: 11 }]);
    call(&mut s, 1, Call::Unbond { amount: 50 }, &ctx_at(5)).unwrap();
    // Still reserved while unlocking.
    assert_eq!(Balances::account(&s, &acc(1)).unwrap().reserved, 400);
    let before = s.clone();
    assert_eq!(call(&mut s, 1, Call::WithdrawUnbonded, &ctx_at(10)), Err(Error::NothingToWithdraw));
    assert_eq!(s, before);
    call(&mut s, 1, Call::WithdrawUnbonded, &ctx_at(11)).unwrap();
    let a = Balances::account(&s, &acc(1)).unwrap();
    assert_eq!((a.free, a.reserved), (750, 250));
    assert_eq!(Staking::ledger(&s, &acc(1)).unwrap().unlocking.len(), 1);
    call(&mut s, 1, Call::WithdrawUnbonded, &ctx_at(15)).unwrap();
    let a = Balances::account(&s, &acc(1)).unwrap();
    assert_eq!((a.free, a.reserved), (800, 200));
    // Unbonding everything and withdrawing removes the ledger.
    call(&mut s, 1, Call::Unbond { amount: 200 }, &ctx_at(20)).unwrap();
    call(&mut s, 1, Call::WithdrawUnbonded, &ctx_at(30)).unwrap();
    assert!(s.get(&ledger_key(&acc(1))).is_none());
    assert_eq!(Balances::account(&s, &acc(1)).unwrap().free, 1_000);
}

#[test]
fn roles_register_and_deregister() {
    let mut s = setup();
    ok(&mut s, 1, Call::Bond { amount: 150 });
    ok(&mut s, 1, Call::RegisterValidator);
    ok(&mut s, 1, Call::RegisterWorker);
    assert!(Staking::is_candidate(&s, &acc(1)).unwrap());
    assert_eq!(
        Staking::worker_info(&s, &acc(1)).unwrap(),
        Some(WorkerRegistration { registered_at: 1 })
    );
    assert!(Staking::is_worker(&s, &acc(1)).unwrap());
    // Validators are the active set, which changes at the end of the block.
    assert!(!Staking::is_validator(&s, &acc(1)).unwrap());
    Staking::on_finalize(&mut s, &ctx()).unwrap();
    assert!(Staking::is_validator(&s, &acc(1)).unwrap());
    assert_eq!(Staking::validator_set(&s).unwrap(), vec![acc(1)]);

    ok(&mut s, 1, Call::DeregisterValidator);
    // Down to the worker minimum is allowed once the validator role is gone.
    ok(&mut s, 1, Call::Unbond { amount: 100 });
    ok(&mut s, 1, Call::DeregisterWorker);
    assert!(!Staking::is_candidate(&s, &acc(1)).unwrap());
    assert!(!Staking::is_worker(&s, &acc(1)).unwrap());
    Staking::on_finalize(&mut s, &ctx()).unwrap();
    assert!(Staking::validator_set(&s).unwrap().is_empty());
    ok(&mut s, 1, Call::Unbond { amount: 50 });
}

#[test]
fn rejections_change_nothing() {
    let mut s = setup();
    ok(&mut s, 1, Call::Bond { amount: 200 });
    ok(&mut s, 1, Call::RegisterValidator);
    ok(&mut s, 2, Call::Bond { amount: 60 });
    ok(&mut s, 2, Call::RegisterWorker);
    ok(&mut s, 3, Call::Bond { amount: 500 });
    for i in 0..MAX_UNLOCK_CHUNKS {
        call(&mut s, 3, Call::Unbond { amount: 1 }, &ctx_at(u64::from(i) + 1)).unwrap();
    }
    let before = s.clone();
    let cases: Vec<(u8, Call, Error)> = vec![
        (4, Call::Bond { amount: 0 }, Error::ZeroAmount),
        (
            4,
            Call::Bond { amount: 2_000 },
            Error::Currency(CurrencyError::InsufficientBalance { have: 1_000, need: 2_000 }),
        ),
        (1, Call::Unbond { amount: 0 }, Error::ZeroAmount),
        (1, Call::Unbond { amount: 201 }, Error::InsufficientBond { bonded: 200, requested: 201 }),
        (
            1,
            Call::Unbond { amount: 101 },
            Error::BelowValidatorMinimum { remaining: 99, minimum: 100 },
        ),
        (2, Call::Unbond { amount: 11 }, Error::BelowWorkerMinimum { remaining: 49, minimum: 50 }),
        (3, Call::Unbond { amount: 1 }, Error::TooManyUnlockChunks { max: MAX_UNLOCK_CHUNKS }),
        (1, Call::WithdrawUnbonded, Error::NothingToWithdraw),
        (4, Call::WithdrawUnbonded, Error::NothingToWithdraw),
        (2, Call::RegisterValidator, Error::ValidatorBondTooLow { bonded: 60, minimum: 100 }),
        (4, Call::RegisterWorker, Error::WorkerBondTooLow { bonded: 0, minimum: 50 }),
        (1, Call::RegisterValidator, Error::AlreadyValidator),
        (2, Call::RegisterWorker, Error::AlreadyWorker),
        (2, Call::DeregisterValidator, Error::NotValidator),
        (1, Call::DeregisterWorker, Error::NotWorker),
    ];
    let at = ctx_at(MAX_UNLOCK_CHUNKS as u64 + 1);
    for (who, c, err) in cases {
        // Call the pallet directly (no overlay): it must validate before writing.
        let r = Staking::dispatch(&mut s, &acc(who), &c, &at);
        assert_eq!(r, Err(err), "{c:?}");
        assert_eq!(s, before, "{c:?} changed state");
    }
}

#[test]
fn candidate_list_is_bounded() {
    let mut s = setup();
    let mut list: Vec<AccountId> = (0..MAX_CANDIDATES)
        .map(|i| AccountId::new(H256::from_low_u64_be(u64::from(i) + 1_000).0))
        .collect();
    Staking::set_candidates(&mut s, &list);
    ok(&mut s, 1, Call::Bond { amount: 100 });
    let before = s.clone();
    assert_eq!(
        Staking::dispatch(&mut s, &acc(1), &Call::RegisterValidator, &ctx()),
        Err(Error::TooManyCandidates { max: MAX_CANDIDATES })
    );
    assert_eq!(s, before);
    list.pop();
    Staking::set_candidates(&mut s, &list);
    ok(&mut s, 1, Call::RegisterValidator);
}

#[test]
fn validator_set_is_ordered_and_truncated() {
    let mut s = setup();
    // Equal bonds (1 and 3) order by account bytes; 6 later falls below a raised minimum.
    for (who, bond) in [(3u8, 200), (1, 200), (2, 300), (4, 150), (5, 500), (6, 120)] {
        ok(&mut s, who, Call::Bond { amount: bond });
        ok(&mut s, who, Call::RegisterValidator);
    }
    ok(&mut s, 7, Call::Bond { amount: 900 }); // bonded but not a candidate
    assert_eq!(Staking::compute_validator_set(&s).unwrap(), vec![acc(5), acc(2), acc(1)]);
    Staking::set_params(&mut s, &Params { max_validators: 10, ..params() });
    assert_eq!(
        Staking::compute_validator_set(&s).unwrap(),
        vec![acc(5), acc(2), acc(1), acc(3), acc(4), acc(6)]
    );
    Staking::set_params(
        &mut s,
        &Params { max_validators: 10, min_validator_bond: 130, ..params() },
    );
    assert_eq!(
        Staking::compute_validator_set(&s).unwrap(),
        vec![acc(5), acc(2), acc(1), acc(3), acc(4)]
    );
    assert!(Staking::validator_set(&s).unwrap().is_empty());
    Staking::on_finalize(&mut s, &ctx()).unwrap();
    assert_eq!(Staking::validator_set(&s).unwrap().len(), 5);
    Staking::set_params(&mut s, &Params { max_validators: 0, ..params() });
    Staking::on_finalize(&mut s, &ctx()).unwrap();
    assert!(Staking::validator_set(&s).unwrap().is_empty());
}

#[test]
fn slashing_burns_bond_then_latest_unlocking_and_removes_roles() {
    let mut s = setup();
    ok(&mut s, 1, Call::Bond { amount: 400 });
    ok(&mut s, 1, Call::RegisterValidator);
    ok(&mut s, 1, Call::RegisterWorker);
    call(&mut s, 1, Call::Unbond { amount: 100 }, &ctx_at(1)).unwrap(); // unlock at 11
    call(&mut s, 1, Call::Unbond { amount: 100 }, &ctx_at(2)).unwrap(); // unlock at 12
    Staking::on_finalize(&mut s, &ctx()).unwrap();
    let issuance = Balances::total_issuance(&s).unwrap();

    // 150 from the bond of 200: left 50, below the validator minimum, still a worker.
    assert_eq!(Staking::slash(&mut s, &acc(1), 150, &ctx()).unwrap(), 150);
    check_invariants(&s);
    assert_eq!(Balances::total_issuance(&s).unwrap(), issuance - 150);
    assert!(!Staking::is_candidate(&s, &acc(1)).unwrap());
    assert!(Staking::is_worker(&s, &acc(1)).unwrap());

    // 50 from the bond, then 30 from the chunk unlocking at 12: no bond, no worker role.
    assert_eq!(Staking::slash(&mut s, &acc(1), 80, &ctx()).unwrap(), 80);
    check_invariants(&s);
    let l = Staking::ledger(&s, &acc(1)).unwrap();
    assert_eq!(l.bonded, 0);
    assert_eq!(
        l.unlocking,
        vec![UnlockChunk { amount: 100, unlock_at: 11 }, UnlockChunk { amount: 70, unlock_at: 12 }]
    );
    assert!(!Staking::is_worker(&s, &acc(1)).unwrap());
    assert!(Staking::worker_info(&s, &acc(1)).unwrap().is_none());

    // More than is staked: takes everything left.
    assert_eq!(Staking::slash(&mut s, &acc(1), 1_000, &ctx()).unwrap(), 170);
    check_invariants(&s);
    assert!(s.get(&ledger_key(&acc(1))).is_none());
    assert_eq!(Balances::total_issuance(&s).unwrap(), issuance - 400);
    let a = Balances::account(&s, &acc(1)).unwrap();
    assert_eq!((a.free, a.reserved), (600, 0));
    // The active set drops it at the end of the block.
    assert!(Staking::is_validator(&s, &acc(1)).unwrap());
    Staking::on_finalize(&mut s, &ctx()).unwrap();
    assert!(!Staking::is_validator(&s, &acc(1)).unwrap());
    // Nothing staked: nothing slashed, nothing changes.
    let before = s.clone();
    assert_eq!(Staking::slash(&mut s, &acc(1), 10, &ctx()).unwrap(), 0);
    assert_eq!(s, before);
}

#[test]
fn slash_percent_counts_bonded_and_unlocking() {
    let mut s = setup();
    ok(&mut s, 1, Call::Bond { amount: 300 });
    ok(&mut s, 1, Call::RegisterWorker);
    ok(&mut s, 1, Call::Unbond { amount: 100 });
    assert_eq!(Staking::slash_percent(&mut s, &acc(1), 10, &ctx()).unwrap(), 30);
    check_invariants(&s);
    assert_eq!(Staking::ledger(&s, &acc(1)).unwrap().bonded, 170);
    assert_eq!(Staking::slash_percent(&mut s, &acc(1), 0, &ctx()).unwrap(), 0);
    // Above 100% is capped at 100%.
    assert_eq!(Staking::slash_percent(&mut s, &acc(1), 250, &ctx()).unwrap(), 270);
    check_invariants(&s);
    assert_eq!(Staking::ledger(&s, &acc(1)).unwrap(), Ledger::default());
    assert_eq!(support::percent_of(Balance::MAX, 100), Balance::MAX);
    assert_eq!(support::percent_of(199, 50), 99);
}

#[test]
fn genesis_stake_bonds_registers_and_sets_active_set() {
    let mut s = setup();
    Staking::genesis_stake(&mut s, &acc(1), 500, true, true, &ctx_at(0)).unwrap();
    Staking::genesis_stake(&mut s, &acc(2), 100, false, true, &ctx_at(0)).unwrap();
    check_invariants(&s);
    assert_eq!(Staking::validator_set(&s).unwrap(), vec![acc(1)]);
    assert!(Staking::is_worker(&s, &acc(1)).unwrap());
    assert!(Staking::is_worker(&s, &acc(2)).unwrap());
    assert_eq!(
        Staking::genesis_stake(&mut s, &acc(3), 60, true, false, &ctx_at(0)),
        Err(Error::ValidatorBondTooLow { bonded: 60, minimum: 100 })
    );
}

#[test]
fn params_default_and_round_trip() {
    let s = MemoryState::default();
    assert_eq!(Staking::params(&s).unwrap(), Params::default());
    let p = params();
    assert_eq!(Params::decode(&mut &p.encode()[..]).unwrap(), p);
    let c = Call::Unbond { amount: 5 };
    assert_eq!(c.encode(), vec![1, 20]);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Call(u8, Call),
        Slash(u8, Balance),
        SlashPercent(u8, u8),
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        let who = 1u8..5;
        prop_oneof![
            (who.clone(), 0u128..400).prop_map(|(w, a)| Op::Call(w, Call::Bond { amount: a })),
            (who.clone(), 0u128..300).prop_map(|(w, a)| Op::Call(w, Call::Unbond { amount: a })),
            who.clone().prop_map(|w| Op::Call(w, Call::WithdrawUnbonded)),
            who.clone().prop_map(|w| Op::Call(w, Call::RegisterValidator)),
            who.clone().prop_map(|w| Op::Call(w, Call::RegisterWorker)),
            who.clone().prop_map(|w| Op::Call(w, Call::DeregisterValidator)),
            who.clone().prop_map(|w| Op::Call(w, Call::DeregisterWorker)),
            (who.clone(), 0u128..300).prop_map(|(w, a)| Op::Slash(w, a)),
            (who, 0u8..120).prop_map(|(w, p)| Op::SlashPercent(w, p)),
            (0u64..15).prop_map(Op::Advance),
        ]
    }

    proptest! {
        #[test]
        fn random_sequences_keep_invariants(ops in prop::collection::vec(op(), 0..80)) {
            let mut s = setup();
            let mut now = 1;
            for op in ops {
                let ctx = ctx_at(now);
                match op {
                    Op::Call(who, c) => {
                        let before = s.clone();
                        if call(&mut s, who, c, &ctx).is_err() {
                            prop_assert_eq!(&s, &before);
                        }
                    }
                    Op::Slash(who, amount) => {
                        let staked = Staking::ledger(&s, &acc(who)).unwrap().total();
                        let issuance = Balances::total_issuance(&s).unwrap();
                        let slashed = Staking::slash(&mut s, &acc(who), amount, &ctx).unwrap();
                        prop_assert_eq!(slashed, amount.min(staked));
                        prop_assert_eq!(Balances::total_issuance(&s).unwrap(), issuance - slashed);
                        check_invariants(&s);
                    }
                    Op::SlashPercent(who, p) => {
                        Staking::slash_percent(&mut s, &acc(who), p, &ctx).unwrap();
                        check_invariants(&s);
                    }
                    Op::Advance(n) => {
                        Staking::on_finalize(&mut s, &ctx).unwrap();
                        let set = Staking::validator_set(&s).unwrap();
                        prop_assert!(set.len() <= params().max_validators as usize);
                        for v in &set {
                            prop_assert!(Staking::is_candidate(&s, v).unwrap());
                        }
                        now += n;
                    }
                }
            }
        }

        #[test]
        fn ledger_round_trips(bonded: u128, chunks in prop::collection::vec((any::<u128>(), any::<u64>()), 0..32)) {
            let l = Ledger {
                bonded,
                unlocking: chunks.into_iter().map(|(amount, unlock_at)| UnlockChunk { amount, unlock_at }).collect(),
            };
            prop_assert_eq!(Ledger::decode(&mut &l.encode()[..]).unwrap(), l);
        }
    }
}

/// //Alice (a real key, to sign evidence with) bonded 500 and a validator candidate, with the
/// context of block 3 on a chain whose genesis hash is 0x0505….
fn alice_validating() -> (MemoryState, bitorch_primitives::Pair, Context) {
    let mut s = setup();
    let ctx = Context {
        block_number: 3,
        genesis_hash: H256::repeat_byte(5),
        author: acc(99),
        parent_hash: Default::default(),
    };
    let pair = pair_from_suri("//Alice").unwrap();
    let alice = account_of(&pair);
    Balances::mint(&mut s, &alice, 1_000).unwrap();
    Staking::dispatch(&mut s, &alice, &Call::Bond { amount: 500 }, &ctx).unwrap();
    Staking::dispatch(&mut s, &alice, &Call::RegisterValidator, &ctx).unwrap();
    (s, pair, ctx)
}

#[test]
fn equivocation_evidence_slashes_once_and_removes_candidacy() {
    use bitorch_primitives::vote::{vote_sign_bytes, SignedVote, VoteKind};
    use sp_core::crypto::Pair as _;

    let (mut s, pair, ctx) = alice_validating();
    let (alice, genesis) = (account_of(&pair), ctx.genesis_hash);
    let vote = |value: u8| {
        let value = Some(H256::repeat_byte(value));
        let bytes = vote_sign_bytes(&genesis, 7, 0, VoteKind::Precommit, value.as_ref());
        SignedVote {
            height: 7,
            round: 0,
            kind: VoteKind::Precommit,
            value,
            validator: alice.clone(),
            signature: pair.sign(&bytes),
        }
    };
    let evidence = Equivocation { first: vote(1), second: vote(2) };
    let report = Call::ReportEquivocation { evidence: Box::new(evidence.clone()) };

    // Forged or self-consistent "evidence" is refused and changes nothing.
    let before = s.clone();
    let same = Call::ReportEquivocation {
        evidence: Box::new(Equivocation { first: vote(1), second: vote(1) }),
    };
    let r = support::transactional(&mut s, |o| Staking::dispatch(o, &acc(1), &same, &ctx));
    assert_eq!(r, Err(Error::InvalidEvidence));
    let other_chain = Context { genesis_hash: H256::zero(), ..ctx.clone() };
    let r =
        support::transactional(&mut s, |o| Staking::dispatch(o, &acc(1), &report, &other_chain));
    assert_eq!(r, Err(Error::InvalidEvidence));
    assert_eq!(s, before);

    let issuance = Balances::total_issuance(&s).unwrap();
    Staking::dispatch(&mut s, &acc(1), &report, &ctx).unwrap();
    assert_eq!(Staking::ledger(&s, &alice).unwrap().bonded, 450, "10% of 500 slashed");
    assert_eq!(Balances::total_issuance(&s).unwrap(), issuance - 50, "slash is burned");
    assert!(!Staking::is_candidate(&s, &alice).unwrap());
    let before = s.clone();
    let r = support::transactional(&mut s, |o| Staking::dispatch(o, &acc(2), &report, &ctx));
    assert_eq!(r, Err(Error::AlreadyReported));
    assert_eq!(s, before);

    // Double votes of other kinds, rounds or heights up to the jailing block are the same
    // offence: no second slash.
    let other = |height: u64, round: u32, kind: VoteKind, value: u8| {
        let value = Some(H256::repeat_byte(value));
        let bytes = vote_sign_bytes(&genesis, height, round, kind, value.as_ref());
        SignedVote {
            height,
            round,
            kind,
            value,
            validator: alice.clone(),
            signature: pair.sign(&bytes),
        }
    };
    let report_at = |height: u64, round: u32, kind: VoteKind| Call::ReportEquivocation {
        evidence: Box::new(Equivocation {
            first: other(height, round, kind, 1),
            second: other(height, round, kind, 2),
        }),
    };
    for (h, r, k) in [
        (7, 0, VoteKind::Prevote),
        (7, 3, VoteKind::Precommit),
        (ctx.block_number, 0, VoteKind::Prevote),
    ] {
        let res = support::transactional(&mut s, |o| {
            Staking::dispatch(o, &acc(2), &report_at(h, r, k), &ctx)
        });
        assert_eq!(res, Err(Error::AlreadyReported), "height {h} round {r} {k:?}");
    }
    assert_eq!(s, before);
    // A later offence (after registering again) is slashed again.
    Staking::dispatch(&mut s, &alice, &Call::RegisterValidator, &ctx).unwrap();
    let later = report_at(8, 0, VoteKind::Prevote);
    Staking::dispatch(&mut s, &acc(2), &later, &ctx).unwrap();
    assert_eq!(Staking::ledger(&s, &alice).unwrap().bonded, 405, "10% of 450 slashed");
}

#[test]
fn a_double_proposal_slashes_once_like_a_double_vote() {
    use bitorch_primitives::vote::{proposal_sign_bytes, DoubleProposal, SignedProposal};
    use sp_core::crypto::Pair as _;

    let (mut s, pair, ctx) = alice_validating();
    let (alice, genesis) = (account_of(&pair), ctx.genesis_hash);
    let proposal = |block: u8| {
        let (block, bytes_hash) = (H256::repeat_byte(block), H256::repeat_byte(block ^ 0xff));
        let bytes = proposal_sign_bytes(&genesis, 7, 0, None, &block, &bytes_hash, &alice);
        SignedProposal {
            height: 7,
            round: 0,
            pol_round: None,
            block,
            bytes_hash,
            proposer: alice.clone(),
            signature: pair.sign(&bytes),
        }
    };
    let report = |a: u8, b: u8| Call::ReportDoubleProposal {
        evidence: Box::new(DoubleProposal { first: proposal(a), second: proposal(b) }),
    };

    // The same proposal twice, or evidence for another chain: refused, nothing changes.
    let before = s.clone();
    let r = support::transactional(&mut s, |o| Staking::dispatch(o, &acc(1), &report(1, 1), &ctx));
    assert_eq!(r, Err(Error::InvalidEvidence));
    let other_chain = Context { genesis_hash: H256::zero(), ..ctx.clone() };
    let r = support::transactional(&mut s, |o| {
        Staking::dispatch(o, &acc(1), &report(1, 2), &other_chain)
    });
    assert_eq!(r, Err(Error::InvalidEvidence));
    assert_eq!(s, before);

    let issuance = Balances::total_issuance(&s).unwrap();
    Staking::dispatch(&mut s, &acc(1), &report(1, 2), &ctx).unwrap();
    assert_eq!(Staking::ledger(&s, &alice).unwrap().bonded, 450, "10% of 500 slashed");
    assert_eq!(Balances::total_issuance(&s).unwrap(), issuance - 50, "slash is burned");
    assert!(!Staking::is_candidate(&s, &alice).unwrap());
    // Another pair at the same height: the same offence.
    let before = s.clone();
    let r = support::transactional(&mut s, |o| Staking::dispatch(o, &acc(2), &report(3, 4), &ctx));
    assert_eq!(r, Err(Error::AlreadyReported));
    assert_eq!(s, before);
}
