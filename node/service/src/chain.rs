//! The chain: database, in-memory state and the block import path.
//!
//! [`Chain::import_block`] is the one way a block enters the chain, whether this node authored
//! it or (with the consensus of a later release) a peer did: it checks the parent, the
//! commit certificate against the validator set of the parent state, executes the block on an
//! overlay, compares the state root, and writes block, certificate and state changes in one
//! atomic batch. Only final blocks (with a certificate of more than two thirds of the
//! validators) are imported, so there is never a fork to choose between.

use crate::error::Error;
use bitorch_chain_spec::ChainSpec;
use bitorch_pallet_support::{Context, Overlay};
use bitorch_primitives::{
    voting_power, AccountId, Commit, CommitSignature, Hash, Header, Pair, VotingPower,
};
use bitorch_runtime::{
    executive,
    extrinsic::{extrinsics_root, Block, UncheckedExtrinsic},
    state::{Changes, Prepared, StateTree},
    Staking,
};
use bitorch_storage::{BlockCommit, Db};
use parity_scale_codec::{DecodeLimit, Encode};
use sp_core::crypto::Pair as _;
use std::collections::BTreeMap;
use std::path::Path;

/// Most extrinsics in one block.
pub const MAX_BLOCK_EXTRINSICS: usize = 20_000;
/// Most extrinsic bytes in one block.
pub const MAX_BLOCK_BYTES: usize = 8 * 1024 * 1024;

/// A block that was imported.
#[derive(Clone, Debug)]
pub struct Imported {
    /// Its header.
    pub header: Header,
    /// Its hash.
    pub hash: Hash,
    /// Hashes of its extrinsics.
    pub extrinsics: Vec<Hash>,
}

/// The chain as this node holds it.
pub struct Chain {
    db: Db,
    state: StateTree,
    genesis: Hash,
    best: Header,
    finalized: Header,
    spec: ChainSpec,
    /// Blocks on top of `best` that were already executed (checked before a vote, or built
    /// by us), with their results, so that importing one once it is decided does not execute
    /// it again. Cleared whenever `best` moves; a few entries (one per round's proposal).
    executed: Vec<(Hash, Changes, Prepared)>,
}

/// Most executed-but-not-imported blocks kept (one per proposal seen at a height).
const MAX_EXECUTED: usize = 4;

impl Chain {
    /// Opens the chain at `db_path` for `spec`, writing genesis into an empty database, or
    /// resuming from the best block of an existing one.
    pub fn open(db_path: &Path, spec: ChainSpec) -> Result<Self, Error> {
        let (genesis_state, genesis_header) = spec.build_genesis()?;
        let genesis = genesis_header.hash();
        let db = Db::open(db_path)?;
        match db.genesis()? {
            None => {
                let changes: BTreeMap<Vec<u8>, Option<Vec<u8>>> =
                    genesis_state.iter().map(|(k, v)| (k.clone(), Some(v.clone()))).collect();
                db.commit(BlockCommit {
                    header: &genesis_header,
                    body: &Vec::<UncheckedExtrinsic>::new().encode(),
                    justification: None,
                    changes: &changes,
                })?;
                tracing::info!(target: "chain", %genesis, "initialized a new chain");
                Ok(Self {
                    db,
                    state: genesis_state,
                    genesis,
                    best: genesis_header.clone(),
                    finalized: genesis_header,
                    spec,
                    executed: Vec::new(),
                })
            }
            Some(stored) if stored != genesis => {
                Err(Error::GenesisMismatch { stored, spec: genesis })
            }
            Some(_) => {
                let (_, best_hash) = db.best()?.ok_or(Error::Corrupt("no best block".into()))?;
                let best =
                    db.header(&best_hash)?.ok_or(Error::Corrupt("best header missing".into()))?;
                let (_, fin_hash) =
                    db.finalized()?.ok_or(Error::Corrupt("no finalized block".into()))?;
                let finalized = db
                    .header(&fin_hash)?
                    .ok_or(Error::Corrupt("finalized header missing".into()))?;
                let state = StateTree::from_pairs(db.state_pairs()?);
                if state.root() != best.state_root {
                    return Err(Error::Corrupt(format!(
                        "stored state root {:?} does not match best block #{} ({:?})",
                        state.root(),
                        best.number,
                        best.state_root
                    )));
                }
                tracing::info!(target: "chain", number = best.number, hash = %best_hash, "resumed from disk");
                Ok(Self { db, state, genesis, best, finalized, spec, executed: Vec::new() })
            }
        }
    }

    /// The genesis hash.
    pub fn genesis(&self) -> Hash {
        self.genesis
    }

    /// The chain spec.
    pub fn spec(&self) -> &ChainSpec {
        &self.spec
    }

    /// The best block header.
    pub fn best(&self) -> &Header {
        &self.best
    }

    /// The last finalized header.
    pub fn finalized(&self) -> &Header {
        &self.finalized
    }

    /// The state at the best block.
    pub fn state(&self) -> &StateTree {
        &self.state
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The context of the next block, authored by `author`.
    pub fn next_context(&self, author: AccountId) -> Context {
        Context {
            block_number: self.best.number + 1,
            genesis_hash: self.genesis,
            author,
            parent_hash: self.best.hash(),
        }
    }

    /// A full block by hash.
    pub fn block(&self, hash: &Hash) -> Result<Option<Block>, Error> {
        let Some(header) = self.db.header(hash)? else { return Ok(None) };
        let body =
            self.db.body(hash)?.ok_or(Error::Corrupt(format!("body of {hash:?} missing")))?;
        let extrinsics = Vec::<UncheckedExtrinsic>::decode_with_depth_limit(
            bitorch_runtime::DECODE_DEPTH_LIMIT,
            &mut &body[..],
        )
        .map_err(|e| Error::Corrupt(format!("body of {hash:?}: {e}")))?;
        Ok(Some(Block { header, extrinsics }))
    }

    /// Builds and signs the next block from `candidates` as the single validator `key`,
    /// returning it with its commit certificate. Changes nothing: the result still has to go
    /// through [`Chain::import_block`].
    pub fn author_block(
        &mut self,
        key: &Pair,
        candidates: Vec<UncheckedExtrinsic>,
        timestamp_ms: u64,
    ) -> Result<(Block, Commit, executive::Built), Error> {
        let author = AccountId::from(key.public());
        let ctx = self.next_context(author.clone());
        let mut overlay = Overlay::new(&self.state);
        let built = executive::build_block(
            &mut overlay,
            &ctx,
            candidates,
            MAX_BLOCK_EXTRINSICS,
            MAX_BLOCK_BYTES,
        )?;
        let changes = overlay.into_changes();
        let prepared = self.state.prepare(&changes);
        let header = Header {
            parent_hash: self.best.hash(),
            number: ctx.block_number,
            state_root: prepared.root(),
            extrinsics_root: extrinsics_root(&built.included),
            author,
            timestamp_ms,
        };
        let hash = header.hash();
        let payload = Commit::signing_payload(&self.genesis, header.number, 0, &hash);
        let commit = Commit {
            height: header.number,
            round: 0,
            block_hash: hash,
            signatures: vec![CommitSignature {
                validator: AccountId::from(key.public()),
                signature: key.sign(&payload),
            }],
        };
        let block = Block { header, extrinsics: built.included.clone() };
        self.remember(hash, changes, prepared);
        Ok((block, commit, built))
    }

    /// The validator set of the next block with each member's voting power, from the best
    /// state (the set the staking pallet chose at the end of the best block).
    pub fn validators(&self) -> Result<Vec<(AccountId, VotingPower)>, Error> {
        Ok(Staking::validator_stakes(&self.state)?
            .into_iter()
            .map(|(who, stake)| (who, voting_power(stake)))
            .collect())
    }

    /// Checks a proposed next block without importing it: parent, author, execution and
    /// state root. Consensus asks this before voting for a block.
    pub fn check_block(&mut self, block: &Block) -> Result<(), Error> {
        let hash = block.header.hash();
        let validators = self.validators()?;
        if self.executed.iter().any(|(h, ..)| *h == hash) {
            // Executed on top of best already (as we built it, or checked it before); the
            // author rule is the one check that execution result does not carry.
            return check_author(&block.header, &validators);
        }
        let (changes, prepared) = self.execute(block, &validators)?;
        self.remember(hash, changes, prepared);
        Ok(())
    }

    fn remember(&mut self, hash: Hash, changes: Changes, prepared: Prepared) {
        if self.executed.len() >= MAX_EXECUTED {
            self.executed.remove(0);
        }
        self.executed.push((hash, changes, prepared));
    }

    /// Parent, author (a member of `validators`), execution and state root.
    fn execute(
        &self,
        block: &Block,
        validators: &[(AccountId, VotingPower)],
    ) -> Result<(Changes, Prepared), Error> {
        let header = &block.header;
        let best_hash = self.best.hash();
        if header.parent_hash != best_hash || header.number != self.best.number + 1 {
            return Err(Error::NotNextBlock {
                number: header.number,
                parent: header.parent_hash,
                best_number: self.best.number,
                best: best_hash,
            });
        }
        check_author(header, validators)?;
        let mut overlay = Overlay::new(&self.state);
        executive::execute_block(&mut overlay, block, &self.genesis)?;
        let changes = overlay.into_changes();
        let prepared = self.state.prepare(&changes);
        if prepared.root() != header.state_root {
            return Err(Error::StateRootMismatch {
                header: header.state_root,
                computed: prepared.root(),
            });
        }
        Ok((changes, prepared))
    }

    /// Imports a final block: checks its commit certificate against the validator set (more
    /// than two thirds of the voting power), executes it, and writes it atomically.
    pub fn import_block(&mut self, block: Block, commit: Commit) -> Result<Imported, Error> {
        let hash = block.header.hash();
        if commit.block_hash != hash || commit.height != block.header.number {
            return Err(Error::CommitForOtherBlock);
        }
        let validators = self.validators()?;
        commit.verify(&self.genesis, &validators)?;
        let cached = self.executed.iter().position(|(h, ..)| *h == hash);
        let (changes, prepared) = match cached {
            // Executed on top of the current best (the cache is cleared when best moves), and
            // the parent/author checks are part of that execution.
            Some(i) => {
                check_author(&block.header, &validators)?;
                let (_, changes, prepared) = self.executed.swap_remove(i);
                (changes, prepared)
            }
            None => self.execute(&block, &validators)?,
        };
        let header = &block.header;
        let body = block.extrinsics.encode();
        self.db.commit(BlockCommit {
            header,
            body: &body,
            justification: Some(&commit),
            changes: &changes,
        })?;
        self.state.commit(changes, prepared);
        self.executed.clear();
        self.best = block.header.clone();
        self.finalized = block.header.clone();
        tracing::debug!(target: "chain", number = header.number, %hash, txs = block.extrinsics.len(), "imported");
        Ok(Imported {
            header: block.header.clone(),
            hash,
            extrinsics: block.extrinsics.iter().map(|x| x.hash()).collect(),
        })
    }
}

/// A block's author must be a member of the validator set.
fn check_author(header: &Header, validators: &[(AccountId, VotingPower)]) -> Result<(), Error> {
    if validators.iter().any(|(v, _)| v == &header.author) {
        Ok(())
    } else {
        Err(Error::AuthorNotValidator(header.author.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitorch_primitives::keys::pair_from_suri;

    #[test]
    fn check_and_import_enforce_parent_root_author_and_commit() {
        let dir = tempfile::tempdir().unwrap();
        let mut chain = Chain::open(&dir.path().join("db"), ChainSpec::dev().unwrap()).unwrap();
        let alice = pair_from_suri("//Alice").unwrap();
        let bob = pair_from_suri("//Bob").unwrap();
        let (block, commit, _) = chain.author_block(&alice, vec![], 1).unwrap();
        chain.check_block(&block).unwrap();

        let mut bad_root = block.clone();
        bad_root.header.state_root = Hash::repeat_byte(1);
        assert!(matches!(chain.check_block(&bad_root), Err(Error::StateRootMismatch { .. })));
        // Bob is no validator: neither his block nor his signature on Alice's counts.
        let (bobs, bobs_commit, _) = chain.author_block(&bob, vec![], 1).unwrap();
        assert!(matches!(chain.check_block(&bobs), Err(Error::AuthorNotValidator(_))));
        assert!(matches!(chain.import_block(bobs, bobs_commit), Err(Error::Commit(_))));
        let mut forged = commit.clone();
        forged.signatures[0].validator = AccountId::from(bob.public());
        assert!(chain.import_block(block.clone(), forged).is_err());
        let best = chain.best().number;
        chain.import_block(block.clone(), commit.clone()).unwrap();
        assert_eq!(chain.best().number, best + 1);
        // The same block again no longer extends the best block.
        assert!(matches!(chain.import_block(block, commit), Err(Error::NotNextBlock { .. })));
        assert!(chain.executed.is_empty(), "execution results are dropped when best moves");
    }

    #[test]
    fn a_block_executed_once_imports_to_the_same_state_as_a_fresh_execution() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ChainSpec::dev().unwrap();
        let mut builder = Chain::open(&dir.path().join("a"), spec.clone()).unwrap();
        let mut follower = Chain::open(&dir.path().join("b"), spec).unwrap();
        let alice = pair_from_suri("//Alice").unwrap();
        let genesis = builder.genesis();
        let call = bitorch_runtime::Call::Balances(bitorch_runtime::balances::Call::Transfer {
            dest: AccountId::from(pair_from_suri("//Bob").unwrap().public()),
            amount: bitorch_primitives::UNIT,
        });
        let xt = UncheckedExtrinsic::sign(&alice, &genesis, 0, 0, 100, call);
        let (block, commit, _) = builder.author_block(&alice, vec![xt], 1).unwrap();
        follower.check_block(&block).unwrap();
        assert_eq!(follower.executed.len(), 1);
        builder.import_block(block.clone(), commit.clone()).unwrap();
        follower.import_block(block, commit).unwrap();
        assert_eq!(builder.state().root(), follower.state().root());
        assert_eq!(builder.best(), follower.best());
    }
}
