use super::*;
use bitorch_pallet_support::MemoryState;
use bitorch_primitives::{keys, H256};

fn acc(n: u8) -> AccountId {
    AccountId::new([n; 32])
}

fn ctx() -> Context {
    Context {
        block_number: 1,
        genesis_hash: H256::zero(),
        author: acc(9),
        parent_hash: Default::default(),
    }
}

fn setup() -> MemoryState {
    let mut s = MemoryState::default();
    Pallet::set_existential_deposit(&mut s, 10);
    Pallet::mint(&mut s, &acc(1), 1_000).unwrap();
    Pallet::mint(&mut s, &acc(2), 500).unwrap();
    s
}

fn sum_of_balances(s: &MemoryState, who: &[AccountId]) -> Balance {
    who.iter().map(|w| Pallet::account(s, w).unwrap().total()).sum()
}

fn check_invariants(s: &MemoryState) {
    let all = [acc(1), acc(2), acc(3), acc(9)];
    assert_eq!(Pallet::total_issuance(s).unwrap(), sum_of_balances(s, &all));
}

#[test]
fn transfer_moves_balance_and_conserves_issuance() {
    let mut s = setup();
    Pallet::dispatch(&mut s, &acc(1), &Call::Transfer { dest: acc(3), amount: 100 }, &ctx())
        .unwrap();
    assert_eq!(Pallet::account(&s, &acc(1)).unwrap().free, 900);
    assert_eq!(Pallet::account(&s, &acc(3)).unwrap().free, 100);
    check_invariants(&s);
}

#[test]
fn rejections_change_nothing() {
    let mut s = setup();
    let before = s.clone();
    let cases = [
        (Call::Transfer { dest: acc(3), amount: 5 }, "new account below ED"),
        (Call::Transfer { dest: acc(2), amount: 995 }, "sender left below ED"),
        (Call::Transfer { dest: acc(2), amount: 2_000 }, "insufficient"),
        (Call::Transfer { dest: acc(2), amount: 0 }, "zero"),
        (Call::Transfer { dest: acc(1), amount: 10 }, "self"),
    ];
    for (call, what) in cases {
        let r = support::transactional(&mut s, |o| Pallet::dispatch(o, &acc(1), &call, &ctx()));
        assert!(r.is_err(), "{what} must be rejected");
        assert_eq!(s, before, "{what} changed state");
    }
    // Emptying an account entirely is allowed; its nonce survives.
    Pallet::inc_nonce(&mut s, &acc(2)).unwrap();
    Pallet::dispatch(&mut s, &acc(2), &Call::Transfer { dest: acc(1), amount: 500 }, &ctx())
        .unwrap();
    assert_eq!(
        Pallet::account(&s, &acc(2)).unwrap(),
        AccountData { nonce: 1, free: 0, reserved: 0 }
    );
    check_invariants(&s);
}

#[test]
fn reserve_repatriate_and_burn() {
    let mut s = setup();
    Pallet::reserve(&mut s, &acc(1), 300).unwrap();
    assert!(Pallet::reserve(&mut s, &acc(1), 800).is_err());
    Pallet::repatriate_reserved(&mut s, &acc(1), &acc(2), 100).unwrap();
    Pallet::burn_reserved(&mut s, &acc(1), 50).unwrap();
    let a = Pallet::account(&s, &acc(1)).unwrap();
    assert_eq!((a.free, a.reserved), (700, 150));
    assert_eq!(Pallet::account(&s, &acc(2)).unwrap().free, 600);
    assert_eq!(Pallet::total_issuance(&s).unwrap(), 1_450);
    check_invariants(&s);
    let _ = keys::to_ss58(&acc(1));
}

mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn transfers_conserve_issuance(ops in prop::collection::vec((0u8..4, 0u8..4, 0u128..2_000), 0..64)) {
            let mut s = setup();
            for (from, to, amount) in ops {
                let call = Call::Transfer { dest: acc(to), amount };
                let before = s.clone();
                let r = support::transactional(&mut s, |o| Pallet::dispatch(o, &acc(from), &call, &ctx()));
                if r.is_err() { prop_assert_eq!(&s, &before); }
                let all = [acc(0), acc(1), acc(2), acc(3)];
                prop_assert_eq!(Pallet::total_issuance(&s).unwrap(), sum_of_balances(&s, &all));
                for w in &all {
                    let t = Pallet::account(&s, w).unwrap().total();
                    prop_assert!(t == 0 || t >= 10);
                }
            }
        }

        #[test]
        fn account_data_round_trips(nonce: u64, free: u128, reserved: u128) {
            let a = AccountData { nonce, free, reserved };
            prop_assert_eq!(AccountData::decode(&mut &a.encode()[..]).unwrap(), a);
        }
    }
}

#[test]
fn fees_are_burned_and_tips_go_to_the_author() {
    let mut s = setup();
    Pallet::pay_fee(&mut s, &acc(1), 100, 7, &acc(2)).unwrap();
    assert_eq!(Pallet::account(&s, &acc(1)).unwrap().free, 893);
    assert_eq!(Pallet::account(&s, &acc(2)).unwrap().free, 507);
    assert_eq!(Pallet::total_issuance(&s).unwrap(), 1_400);
    check_invariants(&s);
    let before = s.clone();
    let r = support::transactional(&mut s, |o| Pallet::pay_fee(o, &acc(1), 890, 0, &acc(2)));
    assert!(r.is_err(), "a fee that leaves dust below the minimum is refused");
    assert_eq!(s, before);
}
