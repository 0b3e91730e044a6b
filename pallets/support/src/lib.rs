//! Support for Bitorch pallets: state access, transactional overlays, typed storage helpers,
//! and the traits through which pallets depend on each other (a currency, a worker registry,
//! a model registry) without depending on each other's crates.
//!
//! Pallets are plain functions over `&mut impl Storage`: they never panic, use checked
//! arithmetic, and return typed errors. The runtime runs every call inside an [`Overlay`] and
//! drops it on error, so a rejected call changes nothing.

use bitorch_primitives::{AccountId, Balance, BlockNumber, Hash};
use parity_scale_codec::{Decode, Encode};
use std::collections::BTreeMap;

pub mod error;
pub use error::{CurrencyError, StorageError};

/// Key-value state as the pallets see it.
pub trait Storage {
    /// Reads a value.
    fn get(&self, key: &[u8]) -> Option<Vec<u8>>;
    /// Writes (`Some`) or deletes (`None`) a value.
    fn put(&mut self, key: Vec<u8>, value: Option<Vec<u8>>);
}

/// A plain in-memory state, for genesis building and tests.
#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub struct MemoryState(pub BTreeMap<Vec<u8>, Vec<u8>>);

impl Storage for MemoryState {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.get(key).cloned()
    }
    fn put(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        match value {
            Some(v) => {
                self.0.insert(key, v);
            }
            None => {
                self.0.remove(&key);
            }
        }
    }
}

/// Changes buffered on top of a read-only base. Reads see the changes first.
pub struct Overlay<'a, S: Storage + ?Sized> {
    base: &'a S,
    changes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a, S: Storage + ?Sized> Overlay<'a, S> {
    /// An empty overlay over `base`.
    pub fn new(base: &'a S) -> Self {
        Self { base, changes: BTreeMap::new() }
    }
    /// The buffered changes, to apply to the base with [`apply_changes`].
    pub fn into_changes(self) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        self.changes
    }
}

impl<S: Storage + ?Sized> Storage for Overlay<'_, S> {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        match self.changes.get(key) {
            Some(v) => v.clone(),
            None => self.base.get(key),
        }
    }
    fn put(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.changes.insert(key, value);
    }
}

/// Writes buffered changes into a state.
pub fn apply_changes<S: Storage + ?Sized>(
    state: &mut S,
    changes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
) {
    for (k, v) in changes {
        state.put(k, v);
    }
}

/// Runs `f` on an overlay of `state`; keeps its changes only if it returns `Ok`.
pub fn transactional<S, T, E>(
    state: &mut S,
    f: impl FnOnce(&mut Overlay<'_, S>) -> Result<T, E>,
) -> Result<T, E>
where
    S: Storage + ?Sized,
{
    let mut overlay = Overlay::new(&*state);
    let out = f(&mut overlay)?;
    let changes = overlay.into_changes();
    apply_changes(state, changes);
    Ok(out)
}

/// `percent`% of `amount` (above 100 counts as 100), rounded down, without overflow.
pub fn percent_of(amount: Balance, percent: u8) -> Balance {
    let p = Balance::from(percent.min(100));
    (amount / 100).saturating_mul(p).saturating_add((amount % 100).saturating_mul(p) / 100)
}

/// The storage key of `item` in `pallet` for map key `k`: `pallet:item:` followed by the
/// SCALE encoding of `k`.
pub fn map_key(pallet: &str, item: &str, k: &impl Encode) -> Vec<u8> {
    let mut key = value_key(pallet, item);
    k.encode_to(&mut key);
    key
}

/// The storage key of a single value `item` in `pallet`.
pub fn value_key(pallet: &str, item: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(pallet.len() + item.len() + 40);
    key.extend_from_slice(pallet.as_bytes());
    key.push(b':');
    key.extend_from_slice(item.as_bytes());
    key.push(b':');
    key
}

/// Reads and decodes a value; a value that does not decode is a [`StorageError::Corrupt`].
pub fn get<T: Decode>(s: &(impl Storage + ?Sized), key: &[u8]) -> Result<Option<T>, StorageError> {
    match s.get(key) {
        None => Ok(None),
        Some(bytes) => T::decode(&mut &bytes[..])
            .map(Some)
            .map_err(|_| StorageError::Corrupt { key: hex_short(key) }),
    }
}

/// Reads a value or its default.
pub fn get_or_default<T: Decode + Default>(
    s: &(impl Storage + ?Sized),
    key: &[u8],
) -> Result<T, StorageError> {
    Ok(get(s, key)?.unwrap_or_default())
}

/// Encodes and writes a value.
pub fn put<T: Encode>(s: &mut (impl Storage + ?Sized), key: Vec<u8>, value: &T) {
    s.put(key, Some(value.encode()));
}

/// Deletes a value.
pub fn remove(s: &mut (impl Storage + ?Sized), key: Vec<u8>) {
    s.put(key, None);
}

fn hex_short(key: &[u8]) -> String {
    let printable: String =
        key.iter().take(48).map(|b| if b.is_ascii_graphic() { *b as char } else { '.' }).collect();
    printable
}

/// What a call knows about the block it runs in.
#[derive(Clone, Debug)]
pub struct Context {
    /// Height of the block being executed.
    pub block_number: BlockNumber,
    /// The chain's genesis hash (for domain-separated signatures).
    pub genesis_hash: Hash,
    /// The block author.
    pub author: AccountId,
    /// The parent block's hash: randomness no transaction of this block could know when it
    /// was signed (what chooses audits).
    pub parent_hash: Hash,
}

/// Native currency operations, implemented by the balances pallet.
///
/// Reserved balance is owned by the account but locked by another pallet (staking bonds, job
/// escrow); the pallet that reserved it is the one that tracks why.
pub trait Currency {
    /// Free balance of `who`.
    fn free_balance<S: Storage + ?Sized>(s: &S, who: &AccountId) -> Result<Balance, StorageError>;
    /// Reserved balance of `who`.
    fn reserved_balance<S: Storage + ?Sized>(
        s: &S,
        who: &AccountId,
    ) -> Result<Balance, StorageError>;
    /// Moves `amount` from free to reserved.
    fn reserve<S: Storage + ?Sized>(
        s: &mut S,
        who: &AccountId,
        amount: Balance,
    ) -> Result<(), CurrencyError>;
    /// Moves `amount` from reserved back to free.
    fn unreserve<S: Storage + ?Sized>(
        s: &mut S,
        who: &AccountId,
        amount: Balance,
    ) -> Result<(), CurrencyError>;
    /// Moves `amount` of `from`'s reserved balance into `to`'s free balance.
    fn repatriate_reserved<S: Storage + ?Sized>(
        s: &mut S,
        from: &AccountId,
        to: &AccountId,
        amount: Balance,
    ) -> Result<(), CurrencyError>;
    /// Destroys `amount` of `who`'s reserved balance, reducing total issuance.
    fn burn_reserved<S: Storage + ?Sized>(
        s: &mut S,
        who: &AccountId,
        amount: Balance,
    ) -> Result<(), CurrencyError>;
}

/// Who may serve and audit work, implemented by the staking pallet.
pub trait WorkerRegistry {
    /// Whether `who` is a registered worker with at least the minimum bond.
    fn is_worker<S: Storage + ?Sized>(s: &S, who: &AccountId) -> Result<bool, StorageError>;
    /// Whether `who` is in the active validator set (validators audit).
    fn is_validator<S: Storage + ?Sized>(s: &S, who: &AccountId) -> Result<bool, StorageError>;
    /// The active validators with their voting weight (what an audit quorum is counted in).
    fn validator_weights<S: Storage + ?Sized>(s: &S)
        -> Result<Vec<(AccountId, u64)>, StorageError>;
    /// `who`'s whole stake (bonded plus unlocking): what a slash takes its percentage of.
    fn stake<S: Storage + ?Sized>(s: &S, who: &AccountId) -> Result<Balance, StorageError>;
    /// Slashes `percent`% of `who`'s bond; returns the amount slashed (burned).
    fn slash_percent<S: Storage + ?Sized>(
        s: &mut S,
        who: &AccountId,
        percent: u8,
        ctx: &Context,
    ) -> Result<Balance, StorageError>;
}

/// What the jobs pallet needs to know about registered models.
pub trait ModelRegistry {
    /// The number of transformer layers of an active model, or `None` if there is no active
    /// model with this id.
    fn active_layer_count<S: Storage + ?Sized>(
        s: &S,
        model: &Hash,
    ) -> Result<Option<u32>, StorageError>;
}
