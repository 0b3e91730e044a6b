//! RocksDB storage for a Bitorch node.
//!
//! Column families: `headers` (hash → SCALE header), `bodies` (hash → SCALE extrinsics),
//! `state` (key → value, the current state), `finality` (hash → SCALE commit certificate) and
//! `meta` (genesis hash, best and finalized block, the number → hash index).
//! Every block is written in one atomic write batch (header, body, certificate, its state
//! changes, the index and the best/finalized pointers), so a crash in the middle of an import
//! leaves the last committed block intact, and a restart resumes from it.

use bitorch_primitives::{BlockNumber, Commit, Hash, Header};
use parity_scale_codec::{Decode, Encode};
use rocksdb::{ColumnFamilyDescriptor, Options, WriteBatch, DB};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod error;
pub use error::Error;

const HEADERS: &str = "headers";
const BODIES: &str = "bodies";
const STATE: &str = "state";
const FINALITY: &str = "finality";
const META: &str = "meta";
/// All column families.
pub const COLUMNS: [&str; 5] = [HEADERS, BODIES, STATE, FINALITY, META];

const KEY_GENESIS: &[u8] = b"genesis";
const KEY_BEST: &[u8] = b"best";
const KEY_FINALIZED: &[u8] = b"finalized";

fn number_key(n: BlockNumber) -> Vec<u8> {
    let mut k = b"n".to_vec();
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// A state key and its value.
pub type StatePair = (Vec<u8>, Vec<u8>);

/// A block to write, with the state changes its execution made.
pub struct BlockCommit<'a> {
    /// The header.
    pub header: &'a Header,
    /// The SCALE-encoded extrinsics.
    pub body: &'a [u8],
    /// Its commit certificate, if final.
    pub justification: Option<&'a Commit>,
    /// State changes (`None` deletes).
    pub changes: &'a BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

/// Memory all column families' memtables may take before RocksDB flushes the largest to disk.
/// Its default is 64 MiB per column family and no total: with five of them and a block a
/// second (about 0.2 MB a minute of headers, bodies, certificates and state changes), the
/// memtables grew for hours and the node's resident memory with them.
pub const MEMTABLE_BUDGET: usize = 16 << 20;
/// One column family's memtable is flushed at this size.
const MEMTABLE_SIZE: usize = 4 << 20;
/// Blocks read from the files, kept in memory for all column families together.
const BLOCK_CACHE: usize = 8 << 20;

/// What the database holds in memory, in bytes (RocksDB's own accounting).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    /// Memtables, active and waiting to be flushed, all column families.
    pub memtables: u64,
    /// The block cache (at most [`BLOCK_CACHE`], blocks pinned by readers aside).
    pub block_cache: u64,
    /// Index and filter blocks of the open table files, held outside the cache.
    pub table_readers: u64,
}

/// The node's database.
pub struct Db {
    db: DB,
    path: PathBuf,
    cache: rocksdb::Cache,
}

impl Db {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, Error> {
        std::fs::create_dir_all(path)
            .map_err(|e| Error::Io { path: path.to_path_buf(), source: e })?;
        let cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE);
        let column = || {
            let mut o = Options::default();
            o.set_write_buffer_size(MEMTABLE_SIZE);
            let mut table = rocksdb::BlockBasedOptions::default();
            table.set_block_cache(&cache);
            o.set_block_based_table_factory(&table);
            o
        };
        let mut opts = column();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_open_files(256);
        opts.set_db_write_buffer_size(MEMTABLE_BUDGET);
        let cfs = COLUMNS.iter().map(|c| ColumnFamilyDescriptor::new(*c, column()));
        let db = DB::open_cf_descriptors(&opts, path, cfs)
            .map_err(|e| Error::Open { path: path.to_path_buf(), reason: e.into_string() })?;
        Ok(Self { db, path: path.to_path_buf(), cache })
    }

    /// What the database holds in memory now.
    pub fn memory(&self) -> Result<Memory, Error> {
        let mut m = Memory { block_cache: self.cache.get_usage() as u64, ..Memory::default() };
        for c in COLUMNS {
            let cf = self.cf(c)?;
            let prop = |name: &str| -> Result<u64, Error> {
                Ok(self.db.property_int_value_cf(cf, name)?.unwrap_or(0))
            };
            m.memtables += prop("rocksdb.cur-size-all-mem-tables")?;
            m.table_readers += prop("rocksdb.estimate-table-readers-mem")?;
        }
        Ok(m)
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cf(&self, name: &'static str) -> Result<&rocksdb::ColumnFamily, Error> {
        self.db.cf_handle(name).ok_or(Error::MissingColumn(name))
    }

    fn get(&self, col: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.db.get_cf(self.cf(col)?, key)?)
    }

    fn get_decoded<T: Decode>(&self, col: &'static str, key: &[u8]) -> Result<Option<T>, Error> {
        match self.get(col, key)? {
            None => Ok(None),
            Some(bytes) => T::decode(&mut &bytes[..])
                .map(Some)
                .map_err(|e| Error::Corrupt { column: col, reason: e.to_string() }),
        }
    }

    /// Writes a block, its state changes, and moves the best (and, with a certificate, the
    /// finalized) pointer to it, atomically.
    pub fn commit(&self, c: BlockCommit<'_>) -> Result<(), Error> {
        let hash = c.header.hash();
        let number = c.header.number;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(HEADERS)?, hash.as_bytes(), c.header.encode());
        batch.put_cf(self.cf(BODIES)?, hash.as_bytes(), c.body);
        let state = self.cf(STATE)?;
        for (k, v) in c.changes {
            match v {
                Some(v) => batch.put_cf(state, k, v),
                None => batch.delete_cf(state, k),
            }
        }
        let meta = self.cf(META)?;
        if number == 0 {
            batch.put_cf(meta, KEY_GENESIS, hash.as_bytes());
            batch.put_cf(meta, KEY_FINALIZED, (number, hash).encode());
        }
        batch.put_cf(meta, number_key(number), hash.as_bytes());
        batch.put_cf(meta, KEY_BEST, (number, hash).encode());
        if let Some(j) = c.justification {
            batch.put_cf(self.cf(FINALITY)?, hash.as_bytes(), j.encode());
            batch.put_cf(meta, KEY_FINALIZED, (number, hash).encode());
        }
        self.db.write(batch)?;
        Ok(())
    }

    /// The genesis hash, if the database holds a chain.
    pub fn genesis(&self) -> Result<Option<Hash>, Error> {
        match self.get(META, KEY_GENESIS)? {
            None => Ok(None),
            Some(b) if b.len() == 32 => Ok(Some(Hash::from_slice(&b))),
            Some(_) => Err(Error::Corrupt { column: META, reason: "bad genesis hash".into() }),
        }
    }

    /// The best block.
    pub fn best(&self) -> Result<Option<(BlockNumber, Hash)>, Error> {
        self.get_decoded(META, KEY_BEST)
    }

    /// The last finalized block.
    pub fn finalized(&self) -> Result<Option<(BlockNumber, Hash)>, Error> {
        self.get_decoded(META, KEY_FINALIZED)
    }

    /// A header by hash.
    pub fn header(&self, hash: &Hash) -> Result<Option<Header>, Error> {
        self.get_decoded(HEADERS, hash.as_bytes())
    }

    /// A block body (SCALE-encoded extrinsics) by hash.
    pub fn body(&self, hash: &Hash) -> Result<Option<Vec<u8>>, Error> {
        self.get(BODIES, hash.as_bytes())
    }

    /// A block's commit certificate.
    pub fn justification(&self, hash: &Hash) -> Result<Option<Commit>, Error> {
        self.get_decoded(FINALITY, hash.as_bytes())
    }

    /// The hash of the block at `number` on the chain.
    pub fn hash_at(&self, number: BlockNumber) -> Result<Option<Hash>, Error> {
        match self.get(META, &number_key(number))? {
            None => Ok(None),
            Some(b) if b.len() == 32 => Ok(Some(Hash::from_slice(&b))),
            Some(_) => Err(Error::Corrupt { column: META, reason: "bad index entry".into() }),
        }
    }

    /// Every state pair, to rebuild the in-memory state at start-up.
    pub fn state_pairs(&self) -> Result<Vec<StatePair>, Error> {
        self.db
            .iterator_cf(self.cf(STATE)?, rocksdb::IteratorMode::Start)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(Error::from))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitorch_primitives::AccountId;

    fn header(n: u64, parent: Hash) -> Header {
        Header {
            parent_hash: parent,
            number: n,
            state_root: Hash::repeat_byte(n as u8),
            extrinsics_root: Hash::zero(),
            author: AccountId::new([1; 32]),
            timestamp_ms: n,
        }
    }

    #[test]
    fn commit_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let g = header(0, Hash::zero());
        let b1 = header(1, g.hash());
        {
            let db = Db::open(dir.path()).unwrap();
            let mut changes = BTreeMap::new();
            changes.insert(b"a".to_vec(), Some(b"1".to_vec()));
            changes.insert(b"b".to_vec(), Some(b"2".to_vec()));
            db.commit(BlockCommit {
                header: &g,
                body: &[0],
                justification: None,
                changes: &changes,
            })
            .unwrap();
            let mut changes = BTreeMap::new();
            changes.insert(b"a".to_vec(), None);
            changes.insert(b"c".to_vec(), Some(b"3".to_vec()));
            let commit = Commit { height: 1, round: 0, block_hash: b1.hash(), signatures: vec![] };
            db.commit(BlockCommit {
                header: &b1,
                body: &[0],
                justification: Some(&commit),
                changes: &changes,
            })
            .unwrap();
        }
        let db = Db::open(dir.path()).unwrap();
        assert_eq!(db.genesis().unwrap(), Some(g.hash()));
        assert_eq!(db.best().unwrap(), Some((1, b1.hash())));
        assert_eq!(db.finalized().unwrap(), Some((1, b1.hash())));
        assert_eq!(db.hash_at(0).unwrap(), Some(g.hash()));
        assert_eq!(db.header(&b1.hash()).unwrap(), Some(b1.clone()));
        assert!(db.justification(&b1.hash()).unwrap().is_some());
        assert_eq!(
            db.state_pairs().unwrap(),
            vec![(b"b".to_vec(), b"2".to_vec()), (b"c".to_vec(), b"3".to_vec())]
        );
    }

    /// RocksDB's defaults would keep all of it in memtables (64 MiB per column family).
    #[test]
    fn memtables_stay_within_their_budget() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let body = vec![7u8; 16 << 10];
        let mut parent = Hash::zero();
        let mut most = 0;
        // 48 MiB of bodies, three times the budget, and state changes beside them.
        for n in 0..3072u64 {
            let h = header(n, parent);
            let mut changes = BTreeMap::new();
            changes.insert(n.to_be_bytes().to_vec(), Some(vec![1u8; 512]));
            db.commit(BlockCommit {
                header: &h,
                body: &body,
                justification: None,
                changes: &changes,
            })
            .unwrap();
            parent = h.hash();
            if n % 64 == 0 {
                most = most.max(db.memory().unwrap().memtables);
            }
        }
        let m = db.memory().unwrap();
        most = most.max(m.memtables);
        // A flush runs in the background: the memtable being written out still counts.
        assert!(most <= (MEMTABLE_BUDGET + (MEMTABLE_BUDGET / 2)) as u64, "{most} bytes: {m:?}");
        assert!(m.memtables > 0 && m.block_cache <= BLOCK_CACHE as u64, "{m:?}");
        assert_eq!(db.best().unwrap(), Some((3071, parent)));
        assert_eq!(db.body(&db.hash_at(5).unwrap().unwrap()).unwrap(), Some(body));
    }
}
