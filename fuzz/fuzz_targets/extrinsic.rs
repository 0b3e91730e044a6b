//! Fuzzes decoding an extrinsic from untrusted bytes and validating it against the dev
//! genesis state, as the transaction pool does for every submission.
#![no_main]

use bitorch_chain_spec::ChainSpec;
use bitorch_pallet_support::Context;
use bitorch_primitives::AccountId;
use bitorch_runtime::{executive, state::StateTree, UncheckedExtrinsic};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static GENESIS: OnceLock<(StateTree, bitorch_primitives::Hash)> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let (state, genesis) = GENESIS.get_or_init(|| {
        let (tree, header) = ChainSpec::dev().expect("dev spec").build_genesis().expect("genesis");
        (tree, header.hash())
    });
    if let Ok(xt) = UncheckedExtrinsic::decode_untrusted(data) {
        let ctx = Context { block_number: 1, genesis_hash: *genesis, author: AccountId::new([0; 32]), parent_hash: Default::default() };
        let _ = executive::validate_transaction(state, &xt, data.len(), &ctx);
    }
});
