//! [`UserMap`]: the factory's and the hub's per-user state, split into independently locked
//! shards, with each user's hash computed once per operation.
//!
//! Admitting and closing an engine touches two maps keyed by user (the factory's engines and
//! the hub's channels); hashing the user id anew for every shard pick, lookup, insert and
//! remove was half the instructions of an admission (SipHash, nine times). Here both maps share
//! one [`UserHasher`], so one [`UserHash`] serves both; an engine handle and a hub channel keep
//! theirs for the removal, and tables keep each entry's hash so growing never rehashes.
//! The hasher is `std`'s keyed SipHash with a per-process random key, as in a `HashMap`: user
//! ids come from requests, and a predictable hash would let one user crowd a shard. An entry
//! matches on its user, not only its hash: a wrong or colliding hash can miss an entry, never
//! reach another user's.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use engine_core::UserId;
use hashbrown::HashTable;

use crate::sync::{lock, Mutex, MutexGuard};

/// Shards per map: a power of two, many more than worker threads.
const SHARDS: usize = 64;
/// The shard is picked from hash bits neither the table's bucket index (the low bits) nor its
/// control byte (the top seven) uses, so a shard's entries still spread over its buckets.
const SHARD_SHIFT: u32 = 48;

/// The keyed hash every [`UserMap`] built from one `UserHasher` uses. Cheap to clone (the key
/// is copied).
#[derive(Clone, Debug, Default)]
pub(crate) struct UserHasher(RandomState);

/// A user's hash under one [`UserHasher`]: valid for every map built from that hasher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct UserHash(u64);

impl UserHasher {
    /// A hasher with a fresh random key.
    pub(crate) fn new() -> Self {
        Self(RandomState::new())
    }

    /// `user`'s hash.
    pub(crate) fn hash(&self, user: &UserId) -> UserHash {
        UserHash(self.0.hash_one(user))
    }
}

/// A map from user to `V` in [`SHARDS`] shards, each behind its own lock.
pub(crate) struct UserMap<V> {
    shards: Box<[Mutex<Shard<V>>]>,
    hasher: UserHasher,
}

/// One shard of a [`UserMap`]: its users' entries.
pub(crate) struct Shard<V> {
    table: HashTable<Entry<V>>,
}

struct Entry<V> {
    hash: u64,
    user: UserId,
    value: V,
}

impl<V> UserMap<V> {
    /// An empty map hashing with `hasher`.
    pub(crate) fn new(hasher: UserHasher) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        table: HashTable::new(),
                    })
                })
                .collect(),
            hasher,
        }
    }

    /// `user`'s hash in this map (and every map sharing its hasher).
    pub(crate) fn hash(&self, user: &UserId) -> UserHash {
        self.hasher.hash(user)
    }

    /// Locks the shard holding the users of `hash`.
    pub(crate) fn lock(&self, hash: UserHash) -> MutexGuard<'_, Shard<V>> {
        lock(&self.shards[(hash.0 >> SHARD_SHIFT) as usize & (SHARDS - 1)])
    }

    /// Every shard, in a fixed order (lock one at a time).
    pub(crate) fn shards(&self) -> impl Iterator<Item = &Mutex<Shard<V>>> {
        self.shards.iter()
    }
}

impl<V> Shard<V> {
    fn matches(hash: UserHash, user: &UserId) -> impl Fn(&Entry<V>) -> bool + '_ {
        move |e| e.hash == hash.0 && e.user == *user
    }

    /// `user`'s value.
    pub(crate) fn get(&self, hash: UserHash, user: &UserId) -> Option<&V> {
        self.table
            .find(hash.0, Self::matches(hash, user))
            .map(|e| &e.value)
    }

    /// `user`'s value, inserted by `make` if absent.
    pub(crate) fn get_or_insert_with(
        &mut self,
        hash: UserHash,
        user: &UserId,
        make: impl FnOnce() -> V,
    ) -> &mut V {
        let entry = self
            .table
            .entry(hash.0, Self::matches(hash, user), |e| e.hash)
            .or_insert_with(|| Entry {
                hash: hash.0,
                user: user.clone(),
                value: make(),
            });
        &mut entry.into_mut().value
    }

    /// Sets `user`'s value.
    pub(crate) fn insert(&mut self, hash: UserHash, user: &UserId, value: V) {
        match self
            .table
            .entry(hash.0, Self::matches(hash, user), |e| e.hash)
        {
            hashbrown::hash_table::Entry::Occupied(mut e) => e.get_mut().value = value,
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert(Entry {
                    hash: hash.0,
                    user: user.clone(),
                    value,
                });
            }
        }
    }

    /// Removes `user`'s entry if `remove` says so, given its value.
    pub(crate) fn remove_if(
        &mut self,
        hash: UserHash,
        user: &UserId,
        remove: impl FnOnce(&mut V) -> bool,
    ) -> Option<V> {
        let mut found = self
            .table
            .find_entry(hash.0, Self::matches(hash, user))
            .ok()?;
        if !remove(&mut found.get_mut().value) {
            return None;
        }
        Some(found.remove().0.value)
    }

    /// Removes and returns `user`'s value.
    pub(crate) fn remove(&mut self, hash: UserHash, user: &UserId) -> Option<V> {
        self.remove_if(hash, user, |_| true)
    }

    /// Every user and value.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&UserId, &V)> {
        self.table.iter().map(|e| (&e.user, &e.value))
    }

    /// Every value.
    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.table.iter().map(|e| &e.value)
    }

    /// Removes every entry, handing the values out.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = V> + '_ {
        self.table.drain().map(|e| e.value)
    }

    /// Keeps the entries for which `keep` returns true.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&mut V) -> bool) {
        self.table.retain(|e| keep(&mut e.value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(i: usize) -> UserId {
        UserId::new(format!("user-{i:05}")).expect("valid id")
    }

    #[test]
    fn one_hash_serves_every_map_of_a_hasher() {
        let hasher = UserHasher::new();
        let (a, b) = (
            UserMap::<usize>::new(hasher.clone()),
            UserMap::<&str>::new(hasher),
        );
        let alice = user(1);
        let h = a.hash(&alice);
        assert_eq!(h, b.hash(&alice));
        a.lock(h).insert(h, &alice, 7);
        b.lock(h).insert(h, &alice, "seven");
        assert_eq!(a.lock(a.hash(&alice)).get(h, &alice), Some(&7));
        assert_eq!(b.lock(h).get(h, &alice), Some(&"seven"));
    }

    #[test]
    fn entries_survive_growth_and_removal_by_user() {
        let map = UserMap::<usize>::new(UserHasher::new());
        let users: Vec<UserId> = (0..5_000).map(user).collect();
        for (i, u) in users.iter().enumerate() {
            let h = map.hash(u);
            *map.lock(h).get_or_insert_with(h, u, || 0) += i;
        }
        for (i, u) in users.iter().enumerate() {
            let h = map.hash(u);
            assert_eq!(map.lock(h).get(h, u), Some(&i), "{u}");
        }
        // Every shard holds some users: the shard bits are spread.
        let per_shard: Vec<usize> = map.shards().map(|s| lock(s).iter().count()).collect();
        assert!(per_shard.iter().all(|&n| n > 0), "{per_shard:?}");
        assert_eq!(per_shard.iter().sum::<usize>(), users.len());
        for u in users.iter().step_by(2) {
            let h = map.hash(u);
            assert!(map.lock(h).remove(h, u).is_some());
        }
        for (i, u) in users.iter().enumerate() {
            let h = map.hash(u);
            let expected = (i % 2 == 1).then_some(i);
            assert_eq!(map.lock(h).get(h, u).copied(), expected, "{u}");
        }
    }

    #[test]
    fn users_with_one_hash_keep_their_own_entries() {
        let map = UserMap::<usize>::new(UserHasher::new());
        let same = UserHash(42);
        let (a, b) = (user(1), user(2));
        map.lock(same).insert(same, &a, 1);
        assert_eq!(map.lock(same).get(same, &b), None);
        *map.lock(same).get_or_insert_with(same, &b, || 0) += 2;
        assert_eq!(map.lock(same).get(same, &a), Some(&1));
        assert_eq!(map.lock(same).remove(same, &a), Some(1));
        assert_eq!(map.lock(same).get(same, &b), Some(&2));
        // The right user under a wrong hash is a miss, not someone else's entry.
        assert_eq!(map.lock(UserHash(7)).get(UserHash(7), &b), None);
    }

    #[test]
    fn remove_if_keeps_the_entry_when_told_to() {
        let map = UserMap::<usize>::new(UserHasher::new());
        let u = user(3);
        let h = map.hash(&u);
        map.lock(h).insert(h, &u, 1);
        assert_eq!(map.lock(h).remove_if(h, &u, |v| *v == 2), None);
        assert_eq!(map.lock(h).get(h, &u), Some(&1));
        assert_eq!(map.lock(h).remove_if(h, &u, |v| *v == 1), Some(1));
        assert_eq!(map.lock(h).get(h, &u), None);
        assert_eq!(map.lock(h).remove(h, &u), None);
    }
}
