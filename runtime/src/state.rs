//! The state tree: all key-value state in memory, committed to by a fixed-depth binary Merkle
//! tree over 2^16 buckets.
//!
//! A key lives in bucket `blake2_128(key)[0..2]`. A bucket's leaf hash is blake2-256 over its
//! entries in key order (each as compact-length-prefixed key and value; an empty bucket hashes
//! to zero); an inner node is blake2-256 of its two children, or zero when both are zero. The
//! root therefore depends only on the set of key-value pairs, and applying a block costs one
//! bucket rehash per touched bucket plus the dirty inner nodes (at most 16 per bucket, shared
//! near the root): it grows with what the block changes, not with the number of accounts.
//! Buckets hold about `accounts / 65536` entries each.

use bitorch_pallet_support::Storage;
use bitorch_primitives::Hash;
use parity_scale_codec::{Compact, Encode};
use std::collections::BTreeMap;

/// log2 of the number of buckets.
pub const BUCKET_BITS: u32 = 16;
const BUCKETS: usize = 1 << BUCKET_BITS;
const ZERO: [u8; 32] = [0u8; 32];

/// Buffered state changes: `None` deletes.
pub type Changes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

type ChangeRef<'a> = (&'a Vec<u8>, &'a Option<Vec<u8>>);

/// In-memory state with an incrementally maintained Merkle root.
pub struct StateTree {
    buckets: Vec<BTreeMap<Vec<u8>, Vec<u8>>>,
    /// Heap-ordered tree: index 1 is the root, leaves are at `BUCKETS..2*BUCKETS`.
    nodes: Vec<[u8; 32]>,
    len: usize,
}

/// A root computed for some changes, ready to [`StateTree::commit`].
pub struct Prepared {
    root: Hash,
    nodes: BTreeMap<usize, [u8; 32]>,
}

impl Prepared {
    /// The state root after the changes.
    pub fn root(&self) -> Hash {
        self.root
    }
}

fn bucket_of(key: &[u8]) -> usize {
    let h = sp_crypto_hashing::blake2_128(key);
    ((h[0] as usize) << 8) | h[1] as usize
}

fn hash_entries<'a>(entries: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> [u8; 32] {
    let mut buf = Vec::new();
    for (k, v) in entries {
        Compact(k.len() as u32).encode_to(&mut buf);
        buf.extend_from_slice(k);
        Compact(v.len() as u32).encode_to(&mut buf);
        buf.extend_from_slice(v);
    }
    if buf.is_empty() {
        ZERO
    } else {
        sp_crypto_hashing::blake2_256(&buf)
    }
}

fn hash_node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    if left == &ZERO && right == &ZERO {
        return ZERO;
    }
    let mut buf = [0u8; 64];
    buf[..32].copy_from_slice(left);
    buf[32..].copy_from_slice(right);
    sp_crypto_hashing::blake2_256(&buf)
}

impl Default for StateTree {
    fn default() -> Self {
        Self { buckets: vec![BTreeMap::new(); BUCKETS], nodes: vec![ZERO; 2 * BUCKETS], len: 0 }
    }
}

impl StateTree {
    /// Builds the tree from key-value pairs (e.g. genesis, or everything read from disk).
    pub fn from_pairs(pairs: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) -> Self {
        let mut tree = Self::default();
        for (k, v) in pairs {
            let b = bucket_of(&k);
            if tree.buckets[b].insert(k, v).is_none() {
                tree.len += 1;
            }
        }
        for b in 0..BUCKETS {
            tree.nodes[BUCKETS + b] =
                hash_entries(tree.buckets[b].iter().map(|(k, v)| (&k[..], &v[..])));
        }
        for i in (1..BUCKETS).rev() {
            tree.nodes[i] = hash_node(&tree.nodes[2 * i], &tree.nodes[2 * i + 1]);
        }
        tree
    }

    /// The current state root.
    pub fn root(&self) -> Hash {
        Hash::from(self.nodes[1])
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the state is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// All pairs, in bucket order.
    pub fn iter(&self) -> impl Iterator<Item = (&Vec<u8>, &Vec<u8>)> {
        self.buckets.iter().flat_map(|b| b.iter())
    }

    /// Computes the root the state would have after `changes`, without applying them.
    pub fn prepare(&self, changes: &Changes) -> Prepared {
        let mut by_bucket: BTreeMap<usize, Vec<ChangeRef<'_>>> = BTreeMap::new();
        for (k, v) in changes {
            by_bucket.entry(bucket_of(k)).or_default().push((k, v));
        }
        let mut nodes: BTreeMap<usize, [u8; 32]> = BTreeMap::new();
        for (b, bucket_changes) in &by_bucket {
            let mut merged: BTreeMap<&[u8], &[u8]> =
                self.buckets[*b].iter().map(|(k, v)| (&k[..], &v[..])).collect();
            for (k, v) in bucket_changes {
                match v {
                    Some(v) => merged.insert(&k[..], &v[..]),
                    None => merged.remove(&k[..]),
                };
            }
            nodes.insert(BUCKETS + b, hash_entries(merged.into_iter()));
        }
        let mut level: Vec<usize> = by_bucket.keys().map(|b| (BUCKETS + b) / 2).collect();
        level.dedup();
        while !level.is_empty() {
            let mut next = Vec::with_capacity(level.len());
            for &i in &level {
                let l = nodes.get(&(2 * i)).copied().unwrap_or(self.nodes[2 * i]);
                let r = nodes.get(&(2 * i + 1)).copied().unwrap_or(self.nodes[2 * i + 1]);
                nodes.insert(i, hash_node(&l, &r));
                if i > 1 && next.last() != Some(&(i / 2)) {
                    next.push(i / 2);
                }
            }
            level = next;
        }
        let root = nodes.get(&1).copied().unwrap_or(self.nodes[1]);
        Prepared { root: Hash::from(root), nodes }
    }

    /// Applies `changes` whose root was computed by [`StateTree::prepare`] on this very state.
    pub fn commit(&mut self, changes: Changes, prepared: Prepared) {
        for (k, v) in changes {
            let b = bucket_of(&k);
            match v {
                Some(v) => {
                    if self.buckets[b].insert(k, v).is_none() {
                        self.len += 1;
                    }
                }
                None => {
                    if self.buckets[b].remove(&k).is_some() {
                        self.len -= 1;
                    }
                }
            }
        }
        for (i, h) in prepared.nodes {
            self.nodes[i] = h;
        }
    }

    /// Applies changes and recomputes the root.
    pub fn apply(&mut self, changes: Changes) -> Hash {
        let prepared = self.prepare(&changes);
        let root = prepared.root();
        self.commit(changes, prepared);
        root
    }
}

impl Storage for StateTree {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.buckets[bucket_of(key)].get(key).cloned()
    }
    fn put(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        let mut c = Changes::new();
        c.insert(key, value);
        self.apply(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn incremental_root_equals_full_rebuild(
            initial in prop::collection::btree_map(prop::collection::vec(any::<u8>(), 1..8), prop::collection::vec(any::<u8>(), 0..8), 0..200),
            changes in prop::collection::btree_map(prop::collection::vec(any::<u8>(), 1..8), prop::option::of(prop::collection::vec(any::<u8>(), 0..8)), 0..100),
        ) {
            let mut tree = StateTree::from_pairs(initial.clone());
            let root = tree.apply(changes.clone());
            let mut expected = initial;
            for (k, v) in changes {
                match v { Some(v) => { expected.insert(k, v); } None => { expected.remove(&k); } }
            }
            let full = StateTree::from_pairs(expected.clone());
            prop_assert_eq!(root, full.root());
            prop_assert_eq!(tree.len(), expected.len());
        }
    }

    #[test]
    fn empty_and_order_independent() {
        assert_eq!(StateTree::default().root(), Hash::zero());
        let a = StateTree::from_pairs(vec![
            (b"a".to_vec(), b"1".to_vec()),
            (b"b".to_vec(), b"2".to_vec()),
        ]);
        let mut b = StateTree::default();
        b.put(b"b".to_vec(), Some(b"2".to_vec()));
        b.put(b"a".to_vec(), Some(b"1".to_vec()));
        assert_eq!(a.root(), b.root());
        b.put(b"a".to_vec(), None);
        assert_ne!(a.root(), b.root());
    }
}
