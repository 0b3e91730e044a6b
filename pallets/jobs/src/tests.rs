use super::*;
use bitorch_pallet_models::example_manifest;
use bitorch_pallet_staking::Params as StakingParams;
use bitorch_pallet_support::MemoryState;
use bitorch_primitives::keys::{account_of, pair_from_suri};
use bitorch_primitives::Pair;
use std::sync::OnceLock;

type Balances = bitorch_pallet_balances::Pallet;
type Staking = bitorch_pallet_staking::Pallet<Balances>;
type Models = bitorch_pallet_models::Pallet;
type Jobs = Pallet<Balances, Staking, Models>;

const CLIENT: u8 = 1;
const CLIENT2: u8 = 2;
const VALIDATOR: u8 = 3;
const VALIDATOR2: u8 = 4;
const VALIDATOR3: u8 = 5;
const OWNER: u8 = 8;
const GATEWAY: u8 = 99;

/// Account `n`'s key (clients sign vouchers).
fn key(n: u8) -> Pair {
    static KEYS: OnceLock<Vec<Pair>> = OnceLock::new();
    KEYS.get_or_init(|| {
        (0..=u8::MAX).map(|n| pair_from_suri(&format!("//Account{n}")).expect("dev key")).collect()
    })[usize::from(n)]
    .clone()
}

fn acc(n: u8) -> AccountId {
    account_of(&key(n))
}

/// Worker 1, worker 2 (also a validator), and an outsider that is no worker.
fn pairs() -> &'static [Pair; 3] {
    static PAIRS: OnceLock<[Pair; 3]> = OnceLock::new();
    PAIRS.get_or_init(|| {
        ["//Worker1", "//Worker2", "//Outsider"].map(|s| pair_from_suri(s).expect("dev key"))
    })
}

fn w(i: usize) -> AccountId {
    account_of(&pairs()[i])
}

fn genesis() -> H256 {
    H256::repeat_byte(7)
}

fn ctx(block_number: BlockNumber) -> Context {
    Context {
        block_number,
        genesis_hash: genesis(),
        author: acc(GATEWAY),
        parent_hash: Default::default(),
    }
}

fn all_accounts() -> Vec<AccountId> {
    [CLIENT, CLIENT2, VALIDATOR, VALIDATOR2, VALIDATOR3, OWNER, GATEWAY]
        .map(acc)
        .into_iter()
        .chain((0..3).map(w))
        .collect()
}

fn jobs_params() -> Params {
    Params {
        audit_percent: 100,
        auditors: 0,
        audit_window: 2,
        audit_fee_percent: 0,
        job_timeout: 10,
        challenge_window: 5,
        audit_slash_percent: 20,
        max_claims: 4,
    }
}

struct Env {
    s: MemoryState,
    now: BlockNumber,
    model: H256,
    retired: H256,
}

/// Clients with 10,000 each; workers 1 and 2 bonded 1,000 (worker 2 also a validator);
/// validators 1 and 2 bonded 2,000. [`jobs_params`] assigns no auditors: every claim is chosen
/// for audit, finds nobody to audit it, and stands.
fn setup() -> Env {
    setup_with(&[(VALIDATOR, 2_000), (VALIDATOR2, 2_000)], true)
}

/// Like [`setup`], with these validators and stakes (and 10,000 free each), worker 2 a
/// validator or not.
fn setup_with(validators: &[(u8, Balance)], worker2_validates: bool) -> Env {
    let mut s = MemoryState::default();
    let c0 = ctx(0);
    Balances::set_existential_deposit(&mut s, 1);
    for n in [CLIENT, CLIENT2] {
        Balances::mint(&mut s, &acc(n), 10_000).unwrap();
    }
    for who in [w(0), w(1), w(2)] {
        Balances::mint(&mut s, &who, 5_000).unwrap();
    }
    Staking::set_params(
        &mut s,
        &StakingParams {
            min_validator_bond: 1_000,
            min_worker_bond: 500,
            unbonding_delay: 10,
            max_validators: 10,
        },
    );
    for &(v, stake) in validators {
        Balances::mint(&mut s, &acc(v), stake + 10_000).unwrap();
        Staking::genesis_stake(&mut s, &acc(v), stake, true, false, &c0).unwrap();
    }
    Staking::genesis_stake(&mut s, &w(0), 1_000, false, true, &c0).unwrap();
    Staking::genesis_stake(&mut s, &w(1), 1_000, worker2_validates, true, &c0).unwrap();
    let model = Models::register(&mut s, &acc(OWNER), example_manifest(4), &c0).unwrap();
    let retired = Models::register(&mut s, &acc(OWNER), example_manifest(2), &c0).unwrap();
    Models::dispatch(
        &mut s,
        &acc(OWNER),
        &bitorch_pallet_models::Call::Retire { id: retired },
        &c0,
    )
    .unwrap();
    Jobs::set_params(&mut s, &jobs_params());
    check_invariants(&s);
    Env { s, now: 1, model, retired }
}

/// Escrow held by jobs that hold it, per the job records.
fn escrow_held(s: &MemoryState) -> Balance {
    let mut held = 0;
    for id in 0..Jobs::next_job_id(s).unwrap() {
        // Removed RETENTION blocks after it ended (holding no escrow).
        let Some(job) = Jobs::job(s, id).unwrap() else { continue };
        assert!(job.claimed <= job.escrow);
        assert!(job.claims.len() <= Jobs::params(s).unwrap().max_claims as usize);
        let claimed: Balance = job
            .claims
            .iter()
            .map(|r| r.voucher.amount(job.price_per_layer_token).unwrap() + r.audit_fee)
            .sum();
        assert_eq!(claimed, job.claimed);
        if job.status.holds_escrow() {
            held += job.escrow;
        }
    }
    held
}

fn check_invariants(s: &MemoryState) {
    let mut total = 0;
    let mut reserved = 0;
    let mut staked = 0;
    for who in all_accounts() {
        let a = Balances::account(s, &who).unwrap();
        total += a.total();
        reserved += a.reserved;
        staked += Staking::ledger(s, &who).unwrap().total();
    }
    assert_eq!(Balances::total_issuance(s).unwrap(), total, "issuance != sum of balances");
    let held = escrow_held(s);
    assert_eq!(Jobs::total_escrow(s).unwrap(), held, "total_escrow != escrow of open jobs");
    assert_eq!(reserved, staked + held, "reserved != stake + escrow");
}

impl Env {
    fn call(&mut self, who: u8, c: Call) -> Result<(), Error> {
        self.call_as(&acc(who), c)
    }

    fn call_as(&mut self, who: &AccountId, c: Call) -> Result<(), Error> {
        let at = ctx(self.now);
        let before = self.s.clone();
        let r = support::transactional(&mut self.s, |o| Jobs::dispatch(o, who, &c, &at));
        if r.is_err() {
            assert_eq!(self.s, before, "rejected {c:?} changed state");
        }
        check_invariants(&self.s);
        r
    }

    fn open(&mut self, client: u8, max_tokens: u32, price: Balance) -> JobId {
        let id = Jobs::next_job_id(&self.s).unwrap();
        let model = self.model;
        self.call(client, Call::OpenJob { model, max_tokens, price_per_layer_token: price })
            .unwrap();
        id
    }

    /// The key of job `job`'s signer (its client, or the gateway that opened it for it).
    fn client_of(&self, job: JobId) -> u8 {
        let client = self.job(job).signer().clone();
        [CLIENT, CLIENT2, VALIDATOR, VALIDATOR2, OWNER, GATEWAY]
            .into_iter()
            .find(|n| acc(*n) == client)
            .expect("a known client")
    }

    /// `worker` claims, itself, with the job's client's voucher for `positions` of `range`.
    fn claim(&mut self, worker: usize, job: JobId, range: (u32, u32), positions: u32) {
        let v = signed(self.client_of(job), worker, job, range, positions);
        self.call_as(&w(worker), Call::Claim { voucher: v }).unwrap();
    }

    fn advance_to(&mut self, to: BlockNumber) {
        while self.now < to {
            self.now += 1;
            Jobs::on_initialize(&mut self.s, &ctx(self.now)).unwrap();
            check_invariants(&self.s);
        }
    }

    fn job(&self, id: JobId) -> Job {
        Jobs::job(&self.s, id).unwrap().unwrap()
    }

    fn account(&self, who: &AccountId) -> (Balance, Balance) {
        let a = Balances::account(&self.s, who).unwrap();
        (a.free, a.reserved)
    }
}

/// A voucher for `worker`'s session of `range` (one session per range, in these tests).
fn unsigned(worker: usize, job: JobId, (start, end): (u32, u32), positions: u32) -> Voucher {
    let mut session = [0; 16];
    session[0] = start as u8;
    session[1] = end as u8;
    Voucher {
        job,
        session,
        worker: w(worker),
        layers: (start, end),
        positions,
        trace: H256::repeat_byte(start as u8 + 1),
    }
}

/// That voucher signed by account `client`.
fn signed(client: u8, worker: usize, job: JobId, range: (u32, u32), tokens: u32) -> SignedVoucher {
    unsigned(worker, job, range, tokens).sign(&key(client), &genesis())
}

#[test]
fn full_life_cycle_pays_workers_and_refunds_the_rest() {
    let mut e = setup();
    let issuance = Balances::total_issuance(&e.s).unwrap();
    let (w0_free, _) = e.account(&w(0));
    let (w1_free, _) = e.account(&w(1));

    let id = e.open(CLIENT, 10, 3);
    assert_eq!(id, 0);
    assert_eq!(Jobs::next_job_id(&e.s).unwrap(), 1);
    let job = e.job(id);
    assert_eq!((job.escrow, job.layer_count, job.opened_at, job.deadline), (120, 4, 1, 11));
    assert_eq!(job.status, JobStatus::Open);
    assert_eq!(e.account(&acc(CLIENT)), (9_880, 120));
    assert_eq!(Jobs::total_escrow(&e.s).unwrap(), 120);
    assert_eq!(Jobs::due(&e.s, 11).unwrap(), vec![id]);

    e.advance_to(2);
    e.claim(0, id, (0, 2), 10); // 2 × 10 × 3 = 60
    e.claim(1, id, (2, 4), 5); // 2 × 5 × 3 = 30
    assert_eq!(e.job(id).claimed, 90);
    e.advance_to(3);
    // Both claims were chosen for audit, but these parameters assign no auditors: nobody can
    // audit, and the claims stand.
    for c in &e.job(id).claims {
        let audit = c.audit.as_ref().unwrap();
        assert_eq!((audit.auditors.len(), &audit.outcome), (0, &Some(Outcome::Inconclusive)));
    }
    e.call(CLIENT, Call::CloseJob { job: id }).unwrap();
    assert_eq!(e.job(id).status, JobStatus::Challenge { settle_at: 8 });
    e.advance_to(7);
    assert_eq!(e.job(id).status, JobStatus::Challenge { settle_at: 8 });
    e.advance_to(8);
    let job = e.job(id);
    assert_eq!(job.status, JobStatus::Settled { paid: 90, refunded: 30 });
    assert_eq!((job.claims[0].paid, job.claims[1].paid), (60, 30));
    assert_eq!(e.account(&acc(CLIENT)), (9_910, 0));
    assert_eq!(e.account(&w(0)).0, w0_free + 60);
    assert_eq!(e.account(&w(1)).0, w1_free + 30);
    assert_eq!(Jobs::total_escrow(&e.s).unwrap(), 0);
    // The deadline entry is ignored once settled.
    e.advance_to(12);
    assert_eq!(e.job(id).status, JobStatus::Settled { paid: 90, refunded: 30 });
    assert_eq!(Balances::total_issuance(&e.s).unwrap(), issuance);
    assert_eq!(Jobs::due(&e.s, 8).unwrap(), Vec::<JobId>::new());
}

#[test]
fn a_gateway_spends_only_what_the_client_allowed_and_strangers_nothing() {
    let mut e = setup();
    let model = e.model;
    let open_for = |client: u8, max_tokens: u32| Call::OpenJobFor {
        client: acc(client),
        model,
        max_tokens,
        price_per_layer_token: 3,
    };
    let gateway_before = e.account(&acc(GATEWAY));
    // Without an allowance nobody may open a job the client pays for.
    assert_eq!(e.call(GATEWAY, open_for(CLIENT, 10)), Err(Error::NoAllowance));
    let approve = |gateway: u8, amount: Balance, expires_at: BlockNumber| Call::Approve {
        gateway: acc(gateway),
        amount,
        expires_at,
    };
    assert_eq!(e.call(CLIENT, approve(CLIENT, 1, 100)), Err(Error::SelfApproval));
    e.call(CLIENT, approve(GATEWAY, 200, 50)).unwrap();
    // A stranger still may not: the allowance is the gateway's.
    assert_eq!(e.call(CLIENT2, open_for(CLIENT, 10)), Err(Error::NoAllowance));
    // The gateway: 10 × 4 layers × 3 = 120, reserved from the client, taken from the allowance.
    let id = Jobs::next_job_id(&e.s).unwrap();
    e.call(GATEWAY, open_for(CLIENT, 10)).unwrap();
    let job = e.job(id);
    assert_eq!((&job.client, &job.agent, job.escrow), (&acc(CLIENT), &Some(acc(GATEWAY)), 120));
    assert_eq!(e.account(&acc(CLIENT)), (9_880, 120));
    assert_eq!(e.account(&acc(GATEWAY)), gateway_before);
    let left = |e: &Env| Jobs::allowance(&e.s, &acc(CLIENT), &acc(GATEWAY)).unwrap();
    assert_eq!(left(&e), Some(Allowance { remaining: 80, expires_at: 50 }));
    assert_eq!(
        e.call(GATEWAY, open_for(CLIENT, 10)),
        Err(Error::AllowanceExceeded { escrow: 120, remaining: 80 })
    );
    // The gateway signs the job's vouchers; the client's own signature authorizes nothing here.
    e.advance_to(2);
    let by_client = signed(CLIENT, 0, id, (0, 2), 10);
    assert_eq!(
        e.call_as(&w(0), Call::Claim { voucher: by_client }),
        Err(Error::BadVoucherSignature { job: id })
    );
    e.claim(0, id, (0, 2), 10); // 2 × 10 × 3 = 60, signed by the gateway
                                // Neither a stranger nor a worker may close it; the gateway may.
    assert_eq!(e.call(CLIENT2, Call::CloseJob { job: id }), Err(Error::NotClient));
    e.call(GATEWAY, Call::CloseJob { job: id }).unwrap();
    e.advance_to(2 + 5);
    assert_eq!(e.job(id).status, JobStatus::Settled { paid: 60, refunded: 60 });
    assert_eq!(e.account(&acc(CLIENT)), (9_940, 0));
    // What the job did not spend comes back to the allowance: 200 - 60 spent.
    assert_eq!(left(&e), Some(Allowance { remaining: 140, expires_at: 50 }));
    assert_eq!(e.account(&acc(GATEWAY)), gateway_before);
    // Revoked: no more jobs. Expired: neither.
    e.call(CLIENT, Call::Revoke { gateway: acc(GATEWAY) }).unwrap();
    assert_eq!(left(&e), None);
    assert_eq!(e.call(GATEWAY, open_for(CLIENT, 1)), Err(Error::NoAllowance));
    assert_eq!(e.call(CLIENT, Call::Revoke { gateway: acc(GATEWAY) }), Err(Error::NoAllowance));
    let at = e.now + 1;
    e.call(CLIENT, approve(GATEWAY, 200, at)).unwrap();
    e.advance_to(at);
    assert_eq!(
        e.call(GATEWAY, open_for(CLIENT, 1)),
        Err(Error::AllowanceExpired { expired_at: at })
    );
}

#[test]
fn an_ended_job_leaves_the_state_after_its_retention_and_its_payments_stay() {
    let mut e = setup();
    let paid = e.open(CLIENT, 10, 3);
    let refunded = e.open(CLIENT2, 5, 2);
    e.advance_to(2);
    e.claim(0, paid, (0, 2), 10);
    e.call(CLIENT, Call::CloseJob { job: paid }).unwrap();
    e.call(CLIENT2, Call::CloseJob { job: refunded }).unwrap();
    let mut ended = [None, None];
    while ended.iter().any(Option::is_none) {
        assert!(e.now < 100, "the jobs never ended");
        e.advance_to(e.now + 1);
        for (k, id) in [paid, refunded].into_iter().enumerate() {
            let done = matches!(e.job(id).status, JobStatus::Settled { .. } | JobStatus::Refunded);
            if done && ended[k].is_none() {
                ended[k] = Some(e.now);
            }
        }
    }
    assert!(matches!(e.job(paid).status, JobStatus::Settled { paid: 60, .. }));
    assert_eq!(e.job(refunded).status, JobStatus::Refunded);
    let accounts = [acc(CLIENT), acc(CLIENT2), w(0)].map(|a| e.account(&a));
    let [paid_at, refunded_at] = ended.map(Option::unwrap);
    // A job opened later is not touched.
    let later = e.open(CLIENT, 10, 3);
    e.advance_to(paid_at + RETENTION - 1);
    assert!(Jobs::job(&e.s, paid).unwrap().is_some(), "removed before its retention ended");
    e.advance_to(paid_at + RETENTION);
    assert_eq!(Jobs::job(&e.s, paid).unwrap(), None);
    e.advance_to(refunded_at + RETENTION);
    assert_eq!(Jobs::job(&e.s, refunded).unwrap(), None);
    // What they paid and refunded stays; ids are not reused.
    assert_eq!([acc(CLIENT), acc(CLIENT2), w(0)].map(|a| e.account(&a))[1..], accounts[1..]);
    assert_eq!(e.account(&w(0)), accounts[2]);
    assert!(Jobs::job(&e.s, later).unwrap().is_some_and(|j| j.status == JobStatus::Refunded));
    assert_eq!(e.open(CLIENT, 10, 3), later + 1);
}

#[test]
fn a_job_nobody_claims_is_refunded_in_full_after_its_claim_window() {
    let mut e = setup();
    let id = e.open(CLIENT, 5, 2);
    assert_eq!(e.account(&acc(CLIENT)), (9_960, 40));
    e.advance_to(10);
    assert_eq!(e.job(id).status, JobStatus::Open);
    e.advance_to(11);
    assert_eq!(e.job(id).status, JobStatus::Challenge { settle_at: 16 });
    e.advance_to(16);
    assert_eq!(e.job(id).status, JobStatus::Refunded);
    assert_eq!(e.account(&acc(CLIENT)), (10_000, 0));
    // Closing with no claims yet is no refund at once: the workers' claims may still come.
    let id = e.open(CLIENT2, 5, 2);
    e.call(CLIENT2, Call::CloseJob { job: id }).unwrap();
    assert_eq!(e.job(id).status, JobStatus::Challenge { settle_at: 21 });
    e.advance_to(21);
    assert_eq!(e.job(id).status, JobStatus::Refunded);
    assert_eq!(e.account(&acc(CLIENT2)), (10_000, 0));
    e.advance_to(30);
}

#[test]
fn closing_a_job_cannot_cut_off_the_claims_it_acknowledged() {
    let mut e = setup();
    let (w0, _) = e.account(&w(0));
    let id = e.open(CLIENT, 10, 1);
    // The client acknowledged 7 positions of layers 0..4, then closed the job at once, before
    // the worker claimed: the claim still lands in the window and is paid.
    let voucher = signed(CLIENT, 0, id, (0, 4), 7);
    e.call(CLIENT, Call::CloseJob { job: id }).unwrap();
    e.advance_to(4);
    e.call_as(&w(0), Call::Claim { voucher: voucher.clone() }).unwrap();
    // A replay of the same claim is refused.
    assert_eq!(e.call_as(&w(0), Call::Claim { voucher }), Err(Error::DuplicateClaim));
    e.advance_to(6);
    assert_eq!(e.job(id).status, JobStatus::Settled { paid: 28, refunded: 12 });
    assert_eq!(e.account(&w(0)).0, w0 + 28);
    // After settlement the window is shut.
    let late = signed(CLIENT, 0, id, (1, 2), 1);
    assert_eq!(e.call_as(&w(0), Call::Claim { voucher: late }), Err(Error::ClaimWindowClosed(id)));
}

#[test]
fn deadline_with_claims_starts_challenge_then_settles() {
    let mut e = setup();
    let id = e.open(CLIENT, 10, 1);
    e.advance_to(5);
    e.claim(0, id, (0, 4), 7); // 28
    e.advance_to(11);
    assert_eq!(e.job(id).status, JobStatus::Challenge { settle_at: 16 });
    e.advance_to(16);
    assert_eq!(e.job(id).status, JobStatus::Settled { paid: 28, refunded: 12 });
    assert_eq!(e.account(&acc(CLIENT)), (10_000 - 28, 0));
}

/// Three validators with 3, 2 and 1 whole tokens of voting weight (worker 2 not one), and
/// `params` with three auditors per audit: two thirds of the weight (4 of 6) needs the first
/// and one of the others.
fn weighted_with(params: Params) -> Env {
    use bitorch_primitives::UNIT;
    let mut e =
        setup_with(&[(VALIDATOR, 3 * UNIT), (VALIDATOR2, 2 * UNIT), (VALIDATOR3, UNIT)], false);
    Jobs::set_params(&mut e.s, &Params { auditors: 3, ..params });
    e
}

fn weighted() -> Env {
    weighted_with(jobs_params())
}

const SALT: [u8; 32] = [7; 32];

impl Env {
    fn commit(
        &mut self,
        auditor: u8,
        job: JobId,
        claim_index: u32,
        f: &Finding,
    ) -> Result<(), Error> {
        let commitment = verdict_commitment(job, claim_index, &acc(auditor), f, &SALT);
        self.call(auditor, Call::CommitVerdict { job, claim_index, commitment })
    }

    fn reveal(
        &mut self,
        auditor: u8,
        job: JobId,
        claim_index: u32,
        f: &Finding,
    ) -> Result<(), Error> {
        let finding = f.clone();
        self.call(auditor, Call::RevealVerdict { job, claim_index, finding, salt: SALT })
    }

    fn audit(&self, job: JobId, claim_index: usize) -> Audit {
        self.job(job).claims[claim_index].audit.clone().expect("audited")
    }
}

/// The probe every honest auditor of these tests reports.
const PROBE: Probe = Probe([1_000, -2_000, 5, 0, 77, 123_456, -9, 42]);

fn passed() -> Finding {
    Finding::Passed { outputs: H256::repeat_byte(1), probe: PROBE }
}

fn failed() -> Finding {
    Finding::Failed { outputs: H256::repeat_byte(2), probe: Some(PROBE) }
}

/// "Passed" from an auditor that did not re-execute: its guess of the probe is off.
fn lazy() -> Finding {
    let mut guess = PROBE;
    guess.0[5] = 118_000; // 4.4% off
    Finding::Passed { outputs: H256::repeat_byte(1), probe: guess }
}

#[test]
fn probes_agree_within_two_percent_or_sixteen_units() {
    let with = |i: usize, v: i32| {
        let mut p = PROBE;
        p.0[i] = v;
        p
    };
    assert!(probes_agree(&PROBE, &PROBE));
    assert!(probes_agree(&PROBE, &with(5, 123_456 - 2_469)), "2% of the larger");
    assert!(!probes_agree(&PROBE, &with(5, 123_456 - 2_500)));
    assert!(probes_agree(&PROBE, &with(3, 16)) && probes_agree(&PROBE, &with(3, -16)));
    assert!(!probes_agree(&PROBE, &with(3, 17)));
    assert!(!probes_agree(&PROBE, &with(1, 2_000)), "the sign matters");
    assert!(probes_agree(&Probe([i32::MIN; 8]), &Probe([i32::MIN; 8])));
    assert!(!probes_agree(&Probe([i32::MIN; 8]), &Probe([i32::MAX; 8])));
}

#[test]
fn a_lazy_auditors_finding_does_not_count_and_earns_nothing() {
    let mut e = weighted_with(Params { audit_fee_percent: 10, ..jobs_params() });
    let id = e.open(CLIENT, 20, 3); // 20 tokens × 4 layers × 3: an escrow of 240
    e.claim(0, id, (0, 2), 10); // 60 + 6: honest
    e.claim(1, id, (2, 4), 10); // 60 + 6: a cheater
    e.advance_to(2);
    // VALIDATOR2 (weight 2 of 6) never re-executes: it says "passed" with a guessed probe.
    let claim0 = [(VALIDATOR, passed()), (VALIDATOR2, lazy()), (VALIDATOR3, passed())];
    let claim1 = [(VALIDATOR, failed()), (VALIDATOR2, lazy()), (VALIDATOR3, failed())];
    for (i, findings) in [(0, &claim0), (1, &claim1)] {
        for (a, f) in findings {
            e.commit(*a, id, i, f).unwrap();
        }
    }
    e.advance_to(4);
    for (i, findings) in [(0, &claim0), (1, &claim1)] {
        for (a, f) in findings {
            e.reveal(*a, id, i, f).unwrap();
        }
    }
    let (w0, w1) = (e.account(&w(0)), e.account(&w(1)));
    e.advance_to(6);
    // Its findings did not count (4 of the 6 assigned decide each), and say so on chain.
    for i in 0..2 {
        assert_eq!(e.audit(id, i).unconfirmed, vec![acc(VALIDATOR2)]);
    }
    assert_eq!(e.audit(id, 0).outcome, Some(Outcome::Passed));
    assert_eq!(e.audit(id, 1).outcome, Some(Outcome::Failed { slashed: 200 }));
    assert_eq!(Jobs::slashes(&e.s).unwrap(), Slashes { count: 1, amount: 200 });
    assert_eq!(e.account(&w(0)), w0);
    assert_eq!(e.account(&w(1)), (w1.0, w1.1 - 200), "20% of its stake");
    let before = [VALIDATOR, VALIDATOR2, VALIDATOR3].map(|v| e.account(&acc(v)).0);
    e.call(CLIENT, Call::CloseJob { job: id }).unwrap();
    e.advance_to(12);
    // The worker is paid; each fee of 6 goes to the two who re-executed, none to the lazy one.
    assert_eq!(e.job(id).status, JobStatus::Settled { paid: 72, refunded: 168 });
    let after = [VALIDATOR, VALIDATOR2, VALIDATOR3].map(|v| e.account(&acc(v)).0);
    assert_eq!([after[0] - before[0], after[1] - before[1], after[2] - before[2]], [6, 0, 6]);
}

#[test]
fn the_chain_draws_each_audit_from_the_parent_hash_and_never_a_party() {
    let mut e = weighted();
    let id = e.open(CLIENT, 10, 3);
    e.claim(0, id, (0, 2), 10);
    assert_eq!(e.job(id).claims[0].audit, None, "decided in the next block");
    e.advance_to(2);
    let audit = e.audit(id, 0);
    let mut who: Vec<AccountId> = audit.auditors.iter().map(|(a, _)| a.clone()).collect();
    who.sort();
    let mut want = vec![acc(VALIDATOR), acc(VALIDATOR2), acc(VALIDATOR3)];
    want.sort();
    assert_eq!(who, want, "three eligible validators, three auditors");
    assert!(audit.last < 10);
    assert_eq!((audit.commit_by, audit.reveal_by, &audit.outcome), (4, 6, &None));
    assert_eq!(Jobs::open_audits(&e.s).unwrap(), vec![(id, 0)]);
    // The client and the worker never audit themselves: a job of VALIDATOR's, and a claim of
    // worker 2 (a validator too, without weight).
    let j = e.open(VALIDATOR, 10, 3);
    e.claim(1, j, (0, 1), 1);
    e.advance_to(3);
    let audit = e.audit(j, 0);
    assert_eq!(audit.auditors.len(), 2);
    assert!(audit.auditors.iter().all(|(a, _)| *a != acc(VALIDATOR) && *a != w(1)));
    // The same parent hash and claim give the same draw; another parent hash, another.
    let draw = |parent: H256| {
        let mut e = weighted();
        let id = e.open(CLIENT, 10, 3);
        e.claim(0, id, (0, 2), 10);
        let at = Context { parent_hash: parent, ..ctx(2) };
        Jobs::on_initialize(&mut e.s, &at).unwrap();
        e.audit(id, 0)
    };
    assert_eq!(draw(H256::repeat_byte(3)), draw(H256::repeat_byte(3)));
    let draws: Vec<Audit> = (0..8).map(|b| draw(H256::repeat_byte(b))).collect();
    assert!(draws.iter().any(|a| a.last != draws[0].last || a.auditors != draws[0].auditors));
}

#[test]
fn two_thirds_against_a_cheater_slash_it_void_its_claim_and_pay_them() {
    let mut e =
        weighted_with(Params { audit_fee_percent: 10, challenge_window: 1, ..jobs_params() });
    let issuance = Balances::total_issuance(&e.s).unwrap();
    let id = e.open(CLIENT, 10, 3);
    e.claim(0, id, (0, 2), 10); // 60, and a fee of 6 reserved
    assert_eq!(e.job(id).claimed, 66);
    e.advance_to(2);
    // VALIDATOR re-executed and found other outputs, VALIDATOR3 got no opening, VALIDATOR2
    // says it passed (a liar, or lazy).
    let findings =
        [(VALIDATOR, failed()), (VALIDATOR3, Finding::NoOpening), (VALIDATOR2, passed())];
    for (a, f) in &findings {
        e.commit(*a, id, 0, f).unwrap();
    }
    assert_eq!(e.commit(VALIDATOR, id, 0, &failed()), Err(Error::AlreadyCommitted(0)));
    // Nothing is revealed before everyone could commit; nothing is committed after.
    assert_eq!(e.reveal(VALIDATOR, id, 0, &failed()), Err(Error::RevealTooEarly { from: 4 }));
    e.call(CLIENT, Call::CloseJob { job: id }).unwrap();
    e.advance_to(4);
    assert_eq!(e.job(id).status, JobStatus::Challenge { settle_at: 7 }, "waits for the audit");
    for (a, f) in &findings {
        e.reveal(*a, id, 0, f).unwrap();
    }
    assert_eq!(e.reveal(VALIDATOR, id, 0, &failed()), Err(Error::AlreadyRevealed(0)));
    let (w0_free, w0_reserved) = e.account(&w(0));
    e.advance_to(6);
    // 3 + 1 of 6 is two thirds: 20% of the worker's 1,000 is burned.
    assert_eq!(e.audit(id, 0).outcome, Some(Outcome::Failed { slashed: 200 }));
    assert_eq!(e.account(&w(0)), (w0_free, w0_reserved - 200));
    assert_eq!(Balances::total_issuance(&e.s).unwrap(), issuance - 200);
    assert!(Jobs::open_audits(&e.s).unwrap().is_empty());
    let before = [VALIDATOR, VALIDATOR2, VALIDATOR3].map(|v| e.account(&acc(v)).0);
    e.advance_to(7);
    // The claim is void; the two who found against it share its fee, the liar gets nothing.
    let job = e.job(id);
    assert_eq!(job.status, JobStatus::Settled { paid: 6, refunded: 114 });
    assert_eq!(job.claims[0].paid, 0);
    assert_eq!(e.account(&w(0)).0, w0_free);
    let after = [VALIDATOR, VALIDATOR2, VALIDATOR3].map(|v| e.account(&acc(v)).0);
    assert_eq!([after[0] - before[0], after[1] - before[1], after[2] - before[2]], [3, 0, 3]);
    assert_eq!(e.account(&acc(CLIENT)), (10_000 - 6, 0));
}

#[test]
fn a_lone_liar_can_neither_slash_nor_clear_and_silence_pays_the_worker() {
    let mut e = weighted_with(Params { audit_fee_percent: 10, ..jobs_params() });
    let id = e.open(CLIENT, 10, 3);
    e.claim(0, id, (0, 2), 10); // 60 + 6
    e.claim(1, id, (2, 4), 5); // 30 + 3
    e.advance_to(2);
    // Claim 0 is honest: VALIDATOR3 alone says it failed. Claim 1: VALIDATOR alone (3 of 6)
    // says it failed, the others never reveal.
    for (a, f) in [(VALIDATOR, passed()), (VALIDATOR2, passed()), (VALIDATOR3, failed())] {
        e.commit(a, id, 0, &f).unwrap();
    }
    e.commit(VALIDATOR, id, 1, &failed()).unwrap();
    e.commit(VALIDATOR2, id, 1, &passed()).unwrap();
    e.advance_to(4);
    for (a, f) in [(VALIDATOR, passed()), (VALIDATOR2, passed()), (VALIDATOR3, failed())] {
        e.reveal(a, id, 0, &f).unwrap();
    }
    e.reveal(VALIDATOR, id, 1, &failed()).unwrap();
    let (w0, w1) = (e.account(&w(0)), e.account(&w(1)));
    let v = [VALIDATOR, VALIDATOR2, VALIDATOR3].map(|v| e.account(&acc(v)).0);
    e.advance_to(6);
    assert_eq!(e.audit(id, 0).outcome, Some(Outcome::Passed));
    assert_eq!(e.audit(id, 1).outcome, Some(Outcome::Inconclusive));
    assert_eq!((e.account(&w(0)), e.account(&w(1))), (w0, w1), "nobody slashed");
    e.call(CLIENT, Call::CloseJob { job: id }).unwrap();
    e.advance_to(12);
    let job = e.job(id);
    // Both workers paid; the two who passed claim 0 share its fee of 6; nobody is paid for
    // the inconclusive audit.
    assert_eq!(job.status, JobStatus::Settled { paid: 96, refunded: 24 });
    assert_eq!((e.account(&w(0)).0, e.account(&w(1)).0), (w0.0 + 60, w1.0 + 30));
    let after = [VALIDATOR, VALIDATOR2, VALIDATOR3].map(|v| e.account(&acc(v)).0);
    assert_eq!([after[0] - v[0], after[1] - v[1], after[2] - v[2]], [3, 3, 0]);
}

#[test]
fn verdicts_only_from_assigned_auditors_in_their_windows() {
    let mut e = weighted();
    let id = e.open(CLIENT, 10, 3);
    e.claim(0, id, (0, 2), 10);
    let commitment = verdict_commitment(id, 0, &acc(VALIDATOR), &passed(), &SALT);
    let commit = |claim_index| Call::CommitVerdict { job: id, claim_index, commitment };
    // Not chosen yet (the next block decides).
    assert_eq!(e.call(VALIDATOR, commit(0)), Err(Error::NotAudited(0)));
    e.advance_to(2);
    assert_eq!(e.call(VALIDATOR, commit(1)), Err(Error::UnknownClaim(1)));
    let other = Call::CommitVerdict { job: 99, claim_index: 0, commitment };
    assert_eq!(e.call(VALIDATOR, other), Err(Error::UnknownJob(99)));
    // Neither the client, nor the worker, nor a stranger may give a verdict.
    assert_eq!(e.call(CLIENT, commit(0)), Err(Error::NotAnAuditor(0)));
    assert_eq!(e.call_as(&w(0), commit(0)), Err(Error::NotAnAuditor(0)));
    assert_eq!(e.call(GATEWAY, commit(0)), Err(Error::NotAnAuditor(0)));
    e.commit(VALIDATOR, id, 0, &passed()).unwrap();
    e.advance_to(4);
    assert_eq!(
        e.commit(VALIDATOR2, id, 0, &passed()),
        Err(Error::CommitWindowClosed { commit_by: 4 })
    );
    assert_eq!(e.reveal(VALIDATOR2, id, 0, &passed()), Err(Error::NotCommitted(0)));
    // A reveal must be what was committed to.
    assert_eq!(e.reveal(VALIDATOR, id, 0, &failed()), Err(Error::CommitmentMismatch(0)));
    let late = Call::RevealVerdict { job: id, claim_index: 0, finding: passed(), salt: SALT };
    let r = Jobs::dispatch(&mut e.s.clone(), &acc(VALIDATOR), &late, &ctx(6));
    assert_eq!(r, Err(Error::RevealWindowClosed { reveal_by: 6 }));
    e.advance_to(6);
    // One revealer of three (3 of 6) is not a quorum: inconclusive, and no more verdicts.
    assert_eq!(e.audit(id, 0).outcome, Some(Outcome::Inconclusive));
    assert_eq!(e.reveal(VALIDATOR, id, 0, &passed()), Err(Error::AuditResolved(0)));
}

/// Over many claims with the chain's own draws, the share audited (what an honest auditor set
/// catches of a cheater's claims) is the probability `audit_ppm` promises.
/// Worker 0 claims `n` sessions of `positions` positions of layer 0 on job `id`, each with
/// `client`'s voucher.
fn claim_sessions(e: &mut Env, id: JobId, client: u8, n: u32, positions: u32) {
    for i in 0..n {
        let mut session = [0u8; 16];
        session[..4].copy_from_slice(&i.to_le_bytes());
        let v = Voucher {
            job: id,
            session,
            worker: w(0),
            layers: (0, 1),
            positions,
            trace: H256::repeat_byte(1),
        };
        e.call_as(&w(0), Call::Claim { voucher: v.sign(&key(client), &genesis()) }).unwrap();
    }
}

#[test]
fn the_share_of_claims_audited_is_the_promised_probability() {
    let mut e = weighted_with(Params { audit_percent: 10, max_claims: 1_024, ..jobs_params() });
    // Worker 1's stake is 1,000 and the slash 20%: a claim worth 1 is audited at the 10% base
    // rate, one worth 40 at 2 × 40 / 200 = 40%.
    for (amount, n, client) in [(1u32, 400u32, CLIENT), (40, 240, CLIENT2)] {
        let id = e.open(client, amount * n / 4, 1);
        claim_sessions(&mut e, id, client, n, amount);
        e.advance_to(e.now + 1);
        let job = e.job(id);
        let audited = job.claims.iter().filter(|c| c.audit.is_some()).count() as f64;
        let p = audit_ppm(10, 20, Balance::from(amount), 1_000) as f64 / 1e6;
        let (mean, sd) = (p * f64::from(n), (p * (1.0 - p) * f64::from(n)).sqrt());
        eprintln!("claims worth {amount}: {audited} of {n} audited, expected {mean:.0} ± {sd:.1}");
        assert!((audited - mean).abs() <= 4.0 * sd, "{audited} audited, expected {mean} ± {sd}");
        e.call(client, Call::CloseJob { job: id }).unwrap();
    }
}

#[test]
fn half_the_audits_open_the_whole_claim_and_the_others_a_uniform_prefix() {
    let mut e = weighted_with(Params { audit_percent: 100, max_claims: 1_024, ..jobs_params() });
    let (n, positions) = (200u32, 40u32);
    // An escrow of 4 layers × 2,200 tokens: room for the 200 claims and their audit fees.
    let id = e.open(CLIENT, 2_200, 1);
    claim_sessions(&mut e, id, CLIENT, n, positions);
    e.advance_to(e.now + 1);
    let lasts: Vec<u32> = e.job(id).claims.iter().map(|c| c.audit.as_ref().unwrap().last).collect();
    assert_eq!(lasts.len(), n as usize);
    assert!(lasts.iter().all(|&l| l < positions));
    // A cheat on the last position only is caught by the audits that open it: 1/2 + 1/80.
    let whole = lasts.iter().filter(|&&l| l == positions - 1).count() as f64;
    let p = 0.5 + 0.5 / f64::from(positions);
    let (mean, sd) = (p * f64::from(n), (p * (1.0 - p) * f64::from(n)).sqrt());
    eprintln!("whole claim opened by {whole} of {n} audits, expected {mean:.0} ± {sd:.1}");
    assert!((whole - mean).abs() <= 4.0 * sd, "{whole}, expected {mean} ± {sd}");
    // The others spread over the prefixes: both halves are drawn.
    assert!(lasts.iter().any(|&l| l < positions / 2) && lasts.iter().any(|&l| l >= positions / 2));
}

#[test]
fn a_last_stages_audits_open_its_whole_claim() {
    let mut e = weighted_with(Params { audit_percent: 100, max_claims: 1_024, ..jobs_params() });
    let id = e.open(CLIENT, 2_200, 1);
    let layer_count = e.job(id).layer_count;
    // Claims of the last layers, and of the layers before them.
    for i in 0..40u32 {
        let layers = if i % 2 == 0 { (1, layer_count) } else { (0, layer_count - 1) };
        let mut session = [0u8; 16];
        session[..4].copy_from_slice(&i.to_le_bytes());
        let trace = H256::repeat_byte(1);
        let v = Voucher { job: id, session, worker: w(0), layers, positions: 40, trace };
        e.call_as(&w(0), Call::Claim { voucher: v.sign(&key(CLIENT), &genesis()) }).unwrap();
    }
    e.advance_to(e.now + 1);
    let job = e.job(id);
    let (last, before): (Vec<_>, Vec<_>) =
        job.claims.iter().partition(|c| c.voucher.layers.1 == layer_count);
    assert_eq!((last.len(), before.len()), (20, 20));
    assert!(last.iter().all(|c| c.audit.as_ref().unwrap().last == 39), "the whole claim");
    assert!(before.iter().any(|c| c.audit.as_ref().unwrap().last < 39), "a prefix, at times");
}

#[test]
fn audits_are_likelier_for_claims_large_against_the_stake() {
    // At least the base rate; enough that probability × slash covers twice the claim.
    assert_eq!(audit_ppm(10, 10, 0, 1_000), 100_000);
    assert_eq!(audit_ppm(10, 10, 5, 1_000), 100_000);
    assert_eq!(audit_ppm(10, 10, 20, 1_000), 400_000);
    assert_eq!(audit_ppm(10, 10, 50, 1_000), 1_000_000);
    assert_eq!(audit_ppm(100, 10, 0, 1_000), 1_000_000);
    assert_eq!(audit_ppm(1, 10, 1, 0), 1_000_000, "nothing to slash: always audited");
    assert_eq!(audit_ppm(0, 10, 1_000, 1), 0, "a base rate of 0 turns audits off");
    for (amount, stake) in [(1u128, 1_000_000u128), (3_000, 1_000_000), (77, 5_000)] {
        let p = audit_ppm(10, 10, amount, stake) as u128;
        assert!(p * (stake / 10) >= 2 * amount * 1_000_000, "{amount} {stake}");
    }
    // The dev chain's numbers: a 100 BTR worker bond, 10% slash, 10% base rate; a claim of
    // 300 positions on 30 layers at 0.0001 BTR is 0.9 BTR: audited 18% of the time.
    let unit = bitorch_primitives::UNIT;
    assert_eq!(audit_ppm(10, 10, 9 * unit / 10, 100 * unit), 180_000);
}

#[test]
fn every_rejection_changes_nothing() {
    let mut e = setup();
    // Job 0: open, claims from both workers.
    let j0 = e.open(CLIENT, 10, 3);
    e.claim(0, j0, (0, 2), 10);
    e.claim(1, j0, (2, 4), 5);
    // Job 1: in its challenge window.
    let j1 = e.open(CLIENT, 10, 3);
    e.claim(0, j1, (0, 1), 1);
    e.call(CLIENT, Call::CloseJob { job: j1 }).unwrap();
    // Job 2: closed with no claims; refunded after its window (block 7).
    let j2 = e.open(CLIENT, 10, 3);
    e.call(CLIENT, Call::CloseJob { job: j2 }).unwrap();
    e.advance_to(7);
    assert_eq!(e.job(j2).status, JobStatus::Refunded);
    // Job 3: full of claims.
    let j3 = e.open(CLIENT, 10, 3);
    for l in 0..4 {
        e.claim(0, j3, (l, l + 1), 1);
    }
    // Job 4: escrow of 8, all claimed.
    let j4 = e.open(CLIENT2, 2, 1);
    e.claim(0, j4, (0, 4), 2);
    // Job 5: opened by a validator.
    let j5 = e.open(VALIDATOR, 10, 3);
    e.claim(0, j5, (0, 1), 1);

    let model = e.model;
    let open =
        |max_tokens, price| Call::OpenJob { model, max_tokens, price_per_layer_token: price };
    let claim = |voucher| Call::Claim { voucher };
    // Worker 2 (index 1) claims on job 0 with vouchers in every wrong way.
    let by_client = |worker, job, range, n| signed(CLIENT, worker, job, range, n);
    let forged = signed(CLIENT2, 1, j0, (0, 1), 1);
    let own = unsigned(1, j0, (0, 1), 1).sign(&pairs()[1], &genesis()); // the worker's own
    let other_chain = unsigned(1, j0, (0, 1), 1).sign(&key(CLIENT), &H256::repeat_byte(8));
    let mut tampered = by_client(1, j0, (0, 1), 1);
    tampered.voucher.positions = 2;
    let (w1, w2) = (201u8, 202u8);
    const STRANGER: u8 = GATEWAY;

    // (signer, call, block, error); signer `w1`/`w2` stand for workers 2 and 3 (see below).
    let cases: Vec<(u8, Call, BlockNumber, Error)> = vec![
        (CLIENT, open(0, 3), 2, Error::ZeroMaxTokens),
        (CLIENT, open(10, 0), 2, Error::ZeroPrice),
        (
            CLIENT,
            Call::OpenJob { model: H256::zero(), max_tokens: 1, price_per_layer_token: 1 },
            2,
            Error::ModelNotActive(H256::zero()),
        ),
        (
            CLIENT,
            Call::OpenJob { model: e.retired, max_tokens: 1, price_per_layer_token: 1 },
            2,
            Error::ModelNotActive(e.retired),
        ),
        (CLIENT, open(u32::MAX, Balance::MAX / 2), 2, Error::EscrowOverflow),
        (
            CLIENT2,
            open(1_000, 1_000),
            2,
            Error::Currency(CurrencyError::InsufficientBalance { have: 9_992, need: 4_000_000 }),
        ),
        (w1, claim(by_client(1, 99, (0, 1), 1)), 2, Error::UnknownJob(99)),
        // A stranger, the client, and another registered worker, filing a valid voucher of
        // worker 2's: only worker 2 may claim with it.
        (STRANGER, claim(by_client(1, j0, (0, 1), 1)), 2, Error::NotVoucherWorker { job: j0 }),
        (CLIENT, claim(by_client(1, j0, (0, 1), 1)), 2, Error::NotVoucherWorker { job: j0 }),
        (w2, claim(by_client(1, j0, (0, 1), 1)), 2, Error::NotVoucherWorker { job: j0 }),
        (w1, claim(signed(CLIENT, 1, j2, (1, 2), 1)), 9, Error::ClaimWindowClosed(j2)),
        (w2, claim(by_client(2, j0, (0, 1), 1)), 2, Error::NotAWorker),
        // Vouchers the client never signed.
        (w1, claim(forged), 2, Error::BadVoucherSignature { job: j0 }),
        (w1, claim(own), 2, Error::BadVoucherSignature { job: j0 }),
        (w1, claim(other_chain), 2, Error::BadVoucherSignature { job: j0 }),
        (w1, claim(tampered), 2, Error::BadVoucherSignature { job: j0 }),
        (
            w1,
            claim(by_client(1, j0, (2, 2), 1)),
            2,
            Error::InvalidLayerRange { start: 2, end: 2, layer_count: 4 },
        ),
        (
            w1,
            claim(by_client(1, j0, (3, 2), 1)),
            2,
            Error::InvalidLayerRange { start: 3, end: 2, layer_count: 4 },
        ),
        (
            w1,
            claim(by_client(1, j0, (2, 5), 1)),
            2,
            Error::InvalidLayerRange { start: 2, end: 5, layer_count: 4 },
        ),
        (
            w1,
            claim(by_client(1, j0, (0, 1), 0)),
            2,
            Error::InvalidTokens { tokens: 0, max_tokens: 10 },
        ),
        (
            w1,
            claim(by_client(1, j0, (0, 1), 11)),
            2,
            Error::InvalidTokens { tokens: 11, max_tokens: 10 },
        ),
        // The same session claimed again (a replay, or a later voucher of it).
        (w1, claim(by_client(1, j0, (2, 4), 5)), 2, Error::DuplicateClaim),
        (w1, claim(by_client(1, j0, (2, 4), 6)), 2, Error::DuplicateClaim),
        (w1, claim(by_client(1, j3, (0, 1), 1)), 2, Error::TooManyClaims { max: 4 }),
        (
            w1,
            claim(signed(CLIENT2, 1, j4, (0, 1), 1)),
            2,
            Error::ClaimExceedsEscrow { amount: 1, available: 0 },
        ),
        (
            w1,
            claim(by_client(1, j0, (0, 4), 10)),
            2,
            Error::ClaimExceedsEscrow { amount: 120, available: 30 },
        ),
        (CLIENT, Call::CloseJob { job: 99 }, 2, Error::UnknownJob(99)),
        (CLIENT2, Call::CloseJob { job: j0 }, 2, Error::NotClient),
        (CLIENT, Call::CloseJob { job: j1 }, 2, Error::JobNotOpen(j1)),
        (CLIENT, Call::CloseJob { job: j2 }, 2, Error::JobNotOpen(j2)),
    ];
    let before = e.s.clone();
    for (who, call, at, err) in cases {
        let signer = match who {
            201 => w(1),
            202 => w(2),
            n => acc(n),
        };
        // Straight on the state, no overlay: the pallet validates before it writes.
        let r = Jobs::dispatch(&mut e.s, &signer, &call, &ctx(at));
        assert_eq!(r, Err(err), "{call:?}");
        assert_eq!(e.s, before, "{call:?} changed state");
    }
    check_invariants(&e.s);
}

#[test]
fn unpayable_share_is_refunded_and_stuck_jobs_do_not_stop_the_block() {
    let mut e = setup();
    Balances::set_existential_deposit(&mut e.s, 100);
    let a = e.open(CLIENT, 10, 1);
    e.claim(0, a, (0, 1), 10); // 10, to worker 1
    e.claim(1, a, (1, 2), 10); // 10, to worker 2
                               // Worker 1 loses its whole stake and empties its account: a payment of 10 would leave it
                               // below the existential deposit.
    Staking::slash(&mut e.s, &w(0), Balance::MAX, &ctx(1)).unwrap();
    let free = e.account(&w(0)).0;
    Balances::transfer(&mut e.s, &w(0), &acc(GATEWAY), free).unwrap();
    e.call(CLIENT, Call::CloseJob { job: a }).unwrap();
    e.advance_to(6);
    let job = e.job(a);
    assert_eq!(job.status, JobStatus::Settled { paid: 10, refunded: 30 });
    assert_eq!((job.claims[0].paid, job.claims[1].paid), (0, 10));
    assert_eq!(e.account(&w(0)), (0, 0));

    // Two jobs settle in the same block; one client's reserve was tampered with.
    let b = e.open(CLIENT, 10, 1);
    let c = e.open(CLIENT2, 10, 1);
    e.claim(1, b, (0, 1), 1);
    e.claim(1, c, (0, 1), 1);
    e.call(CLIENT, Call::CloseJob { job: b }).unwrap();
    e.call(CLIENT2, Call::CloseJob { job: c }).unwrap();
    let mut client = Balances::account(&e.s, &acc(CLIENT)).unwrap();
    client.reserved -= 35;
    Balances::set_account(&mut e.s, &acc(CLIENT), &client);
    let now = e.now + 5;
    e.now = now;
    Jobs::on_initialize(&mut e.s, &ctx(now)).unwrap();
    let JobStatus::Stuck { reason } = e.job(b).status else { panic!("job b must be stuck") };
    assert!(String::from_utf8(reason).unwrap().contains("insufficient reserved"));
    assert_eq!(e.job(c).status, JobStatus::Settled { paid: 1, refunded: 39 });
    // A stuck job keeps counting in total escrow.
    assert_eq!(Jobs::total_escrow(&e.s).unwrap(), 40);
}

#[test]
fn zero_timeouts_still_give_a_block() {
    let mut e = setup();
    Jobs::set_params(&mut e.s, &Params { job_timeout: 0, challenge_window: 0, ..jobs_params() });
    let id = e.open(CLIENT, 1, 1);
    assert_eq!(e.job(id).deadline, 2);
    e.claim(0, id, (0, 4), 1);
    e.advance_to(2);
    assert_eq!(e.job(id).status, JobStatus::Challenge { settle_at: 3 });
    e.advance_to(3);
    assert_eq!(e.job(id).status, JobStatus::Settled { paid: 4, refunded: 0 });
}

#[test]
fn full_schedules_are_rejected_or_spill_over() {
    let mut e = setup();
    let full: Vec<JobId> = (1_000..1_000 + u64::from(MAX_DUE_PER_BLOCK)).collect();
    support::put(&mut e.s, due_key(11), &full);
    let model = e.model;
    assert_eq!(
        e.call(CLIENT, Call::OpenJob { model, max_tokens: 1, price_per_layer_token: 1 }),
        Err(Error::TooManyJobsDue { block: 11 })
    );
    support::remove(&mut e.s, due_key(11));
    let id = e.open(CLIENT, 1, 1);
    e.claim(0, id, (0, 4), 1);
    support::put(&mut e.s, due_key(16), &full);
    support::put(&mut e.s, due_key(17), &full);
    e.advance_to(11);
    assert_eq!(e.job(id).status, JobStatus::Challenge { settle_at: 18 });
    assert_eq!(Jobs::due(&e.s, 18).unwrap(), vec![id]);
}

#[test]
fn codec_round_trips_and_payload_is_domain_separated() {
    let v = signed(CLIENT, 0, 3, (1, 2), 5);
    let call = Call::Claim { voucher: v.clone() };
    assert_eq!(Call::decode(&mut &call.encode()[..]).unwrap(), call);
    assert!(v.verify(&acc(CLIENT), &genesis()));
    assert!(!v.verify(&acc(CLIENT), &H256::zero()));
    let payload = v.voucher.signing_payload(&genesis());
    assert!(payload.starts_with(b"bitorch/voucher/1"));
    assert_eq!(&payload[17..49], genesis().as_bytes());
    assert_eq!(&payload[49..], &v.voucher.encode()[..]);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Open(u8, u32, Balance),
        Receipt(usize, JobId, u32, u32, u32),
        Close(u8, JobId),
        /// An auditor's commitment (finding: passed, failed, no opening by `u8 % 3`).
        Commit(u8, JobId, u32, u8),
        /// An auditor's reveal of what it committed to.
        Reveal(u8, JobId, u32),
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        let client = prop_oneof![Just(CLIENT), Just(CLIENT2), Just(VALIDATOR)];
        let auditor =
            prop_oneof![Just(VALIDATOR), Just(VALIDATOR2), Just(VALIDATOR3), Just(CLIENT)];
        prop_oneof![
            2 => (client.clone(), 0u32..12, 0u128..5).prop_map(|(c, t, p)| Op::Open(c, t, p)),
            4 => (prop_oneof![4 => 0usize..2, 1 => Just(2usize)], 0u64..8, 0u32..5, 0u32..3, 0u32..12)
                .prop_map(|(w, j, s, l, t)| Op::Receipt(w, j, s, l, t)),
            1 => (client, 0u64..8).prop_map(|(c, j)| Op::Close(c, j)),
            3 => (auditor.clone(), 0u64..8, 0u32..4, 0u8..3).prop_map(|(a, j, i, f)| Op::Commit(a, j, i, f)),
            3 => (auditor, 0u64..8, 0u32..4).prop_map(|(a, j, i)| Op::Reveal(a, j, i)),
            1 => (1u64..8).prop_map(Op::Advance),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn random_markets_keep_invariants(ops in prop::collection::vec(op(), 1..80)) {
            // Validators with weight: audits are assigned, committed, revealed and resolved.
            let mut e = weighted_with(Params { audit_fee_percent: 10, ..jobs_params() });
            let model = e.model;
            let mut committed = std::collections::HashMap::new();
            // Job numbers pick among the three latest jobs, so most ops hit a live job.
            let pick = |e: &Env, j: JobId| {
                let next = Jobs::next_job_id(&e.s).unwrap();
                if next == 0 { j } else { next - 1 - j % next.min(3) }
            };
            for op in ops {
                // `call` checks that rejections change nothing and the invariants hold.
                match op {
                    Op::Open(c, t, p) => {
                        let _ = e.call(c, Call::OpenJob { model, max_tokens: t, price_per_layer_token: p });
                    }
                    Op::Receipt(w, j, s, l, t) => {
                        let j = pick(&e, j);
                        // Mostly the job's client's voucher, sometimes another client's.
                        let client = Jobs::job(&e.s, j).unwrap().map(|_| e.client_of(j)).unwrap_or(CLIENT);
                        let client = if t % 5 == 4 { CLIENT2 } else { client };
                        let _ = e.call_as(&super::w(w), Call::Claim { voucher: signed(client, w, j, (s, s + l), t) });
                    }
                    Op::Close(c, j) => {
                        let j = pick(&e, j);
                        let _ = e.call(c, Call::CloseJob { job: j });
                    }
                    Op::Commit(a, j, i, f) => {
                        let j = pick(&e, j);
                        // Mostly an existing claim, sometimes one past the end.
                        let n = Jobs::job(&e.s, j).unwrap().map_or(0, |job| job.claims.len() as u32);
                        let i = i % (n + 1);
                        let f = [passed(), failed(), Finding::NoOpening][usize::from(f)].clone();
                        if e.commit(a, j, i, &f).is_ok() {
                            committed.insert((a, j, i), f);
                        }
                    }
                    Op::Reveal(a, j, i) => {
                        let j = pick(&e, j);
                        let n = Jobs::job(&e.s, j).unwrap().map_or(0, |job| job.claims.len() as u32);
                        let i = i % (n + 1);
                        let f = committed.get(&(a, j, i)).cloned().unwrap_or_else(passed);
                        let _ = e.reveal(a, j, i, &f);
                    }
                    Op::Advance(n) => e.advance_to(e.now + n),
                }
            }
            // Everything settles eventually and all escrow is released.
            e.advance_to(e.now + 40);
            prop_assert_eq!(Jobs::total_escrow(&e.s).unwrap(), 0);
            prop_assert!(Jobs::open_audits(&e.s).unwrap().is_empty());
            for id in 0..Jobs::next_job_id(&e.s).unwrap() {
                let job = e.job(id);
                prop_assert!(matches!(job.status, JobStatus::Settled { .. } | JobStatus::Refunded), "{:?}", job.status);
                for c in &job.claims {
                    // Every audit resolved; a voided claim paid nothing.
                    if let Some(a) = &c.audit {
                        prop_assert!(a.outcome.is_some());
                        if matches!(a.outcome, Some(Outcome::Failed { .. })) {
                            prop_assert_eq!(c.paid, 0);
                        }
                    }
                }
            }
        }

        #[test]
        fn jobs_round_trip(max_tokens: u32, price: u128, escrow: u128, settle_at: u64, paid: u128) {
            let job = Job {
                client: acc(1),
                model: H256::repeat_byte(3),
                layer_count: 4,
                max_tokens,
                price_per_layer_token: price,
                escrow,
                opened_at: 1,
                deadline: settle_at,
                status: JobStatus::Challenge { settle_at },
                agent: (paid % 2 == 0).then(|| acc(GATEWAY)),
                claims: vec![ClaimRecord {
                    voucher: unsigned(0, 1, (0, 1), 1),
                    signature: Signature::from_raw([5; 64]),
                    submitted_at: 2,
                    audit_fee: 7,
                    audit: Some(Audit {
                        last: 0,
                        auditors: vec![(acc(3), 2)],
                        commit_by: 4,
                        reveal_by: 6,
                        commits: vec![(acc(3), H256::repeat_byte(4))],
                        reveals: vec![(acc(3), Finding::NoOpening)],
                        outcome: Some(Outcome::Failed { slashed: 9 }),
                        probe: H256::repeat_byte(6),
                        unconfirmed: vec![acc(4)],
                    }),
                    paid,
                }],
                claimed: 0,
            };
            prop_assert_eq!(Job::decode(&mut &job.encode()[..]).unwrap(), job);
        }
    }
}
