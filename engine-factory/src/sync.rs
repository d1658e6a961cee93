//! The crate's one lock helper, and the lock type the factory's admission state uses (shuttle's
//! under the `model-check` feature, so tests/model.rs can explore every interleaving).

#[cfg(feature = "model-check")]
pub(crate) use shuttle::sync::{Mutex, MutexGuard};
#[cfg(not(feature = "model-check"))]
pub(crate) use std::sync::{Mutex, MutexGuard};

/// Locks a mutex, recovering from poisoning: no critical section here panics, and a poisoned
/// lock must not take the factory down for every user.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Read-locks an `RwLock`, recovering from poisoning like [`lock`].
pub(crate) fn read<T>(l: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Write-locks an `RwLock`, recovering from poisoning like [`lock`].
pub(crate) fn write<T>(l: &std::sync::RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A map split into independently locked shards by key hash, so that operations on different
/// users rarely wait on each other (two workers creating and closing engines for different
/// users spent a third of their time waiting on one factory-wide lock).
pub(crate) struct Sharded<T> {
    shards: Box<[Mutex<T>]>,
    hasher: std::collections::hash_map::RandomState,
}

/// Shards per map: a power of two, many more than worker threads.
const SHARDS: usize = 64;

impl<T: Default> Sharded<T> {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(T::default())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }
}

impl<T> Sharded<T> {
    /// The shard that holds `key`.
    pub(crate) fn shard<K: std::hash::Hash + ?Sized>(&self, key: &K) -> &Mutex<T> {
        use std::hash::BuildHasher;
        let h = self.hasher.hash_one(key) as usize;
        &self.shards[h & (SHARDS - 1)]
    }

    /// Every shard, in a fixed order (lock one at a time).
    pub(crate) fn all(&self) -> impl Iterator<Item = &Mutex<T>> {
        self.shards.iter()
    }
}
