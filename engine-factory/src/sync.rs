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
