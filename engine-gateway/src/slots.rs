//! Connection caps and one-time tickets: the global and per-IP limits on open WebSockets (a
//! slot is a guard, released by its `Drop` on every path), and the short-lived tickets that
//! `POST /ws/ticket` trades for a bearer token.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::auth::{AuthError, VerifiedToken};
use crate::session::lock;

/// Why no slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotRefused {
    /// The gateway holds `max_connections` sockets.
    ServerFull,
    /// The address holds `max_connections_per_ip` sockets.
    AddressFull,
}

/// Open WebSockets, counted globally and per peer IP address.
#[derive(Debug, Default)]
pub(crate) struct ConnectionSlots {
    total: AtomicUsize,
    // ssot-allow: shared-state counts of sockets per peer address (a network limit, no user's data)
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// One taken slot; dropping it gives it back (also when the upgrade never completes or the
/// connection's future is dropped).
#[derive(Debug)]
pub(crate) struct Slot {
    slots: Arc<ConnectionSlots>,
    ip: Option<IpAddr>,
}

impl ConnectionSlots {
    /// Takes a slot for a socket from `ip` (`None`: no peer address known, only the global
    /// cap applies).
    pub(crate) fn take(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        max_total: usize,
        max_per_ip: usize,
    ) -> Result<Slot, SlotRefused> {
        // Reserve globally first; give it back if the address is full.
        let taken = self
            .total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max_total).then_some(n + 1)
            });
        if taken.is_err() {
            return Err(SlotRefused::ServerFull);
        }
        if let Some(ip) = ip {
            let mut per_ip = lock(&self.per_ip);
            let n = per_ip.entry(ip).or_insert(0);
            if *n >= max_per_ip {
                if *n == 0 {
                    per_ip.remove(&ip);
                }
                drop(per_ip);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err(SlotRefused::AddressFull);
            }
            *n += 1;
        }
        Ok(Slot {
            slots: Arc::clone(self),
            ip,
        })
    }

    /// Sockets holding a slot.
    pub(crate) fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Addresses holding at least one slot.
    #[cfg(test)]
    fn addresses(&self) -> usize {
        lock(&self.per_ip).len()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut per_ip = lock(&self.slots.per_ip);
            if let Some(n) = per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
        self.slots.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Most tickets outstanding at once (each a few dozen bytes); past it the oldest go first.
const MAX_TICKETS: usize = 100_000;

/// One-time tickets: a random id standing for a verified token for a short time.
#[derive(Debug, Default)]
pub(crate) struct Tickets {
    // ssot-allow: shared-state keyed by an unguessable one-time id; a ticket yields only its own user's token
    open: Mutex<HashMap<String, (VerifiedToken, Instant)>>,
}

impl Tickets {
    /// A new ticket for `token`, valid for `ttl` (or until the token expires, if sooner).
    pub(crate) fn issue(&self, token: VerifiedToken, ttl: Duration) -> String {
        let id = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let until = Instant::now()
            + ttl.min(
                token
                    .expires_at
                    .duration_since(SystemTime::now())
                    .unwrap_or_default(),
            );
        let mut open = lock(&self.open);
        let now = Instant::now();
        open.retain(|_, (_, until)| *until > now);
        if open.len() >= MAX_TICKETS {
            if let Some(oldest) = open
                .iter()
                .min_by_key(|(_, (_, u))| *u)
                .map(|(k, _)| k.clone())
            {
                open.remove(&oldest);
            }
        }
        open.insert(id.clone(), (token, until));
        id
    }

    /// Redeems a ticket once.
    pub(crate) fn redeem(&self, id: &str) -> Result<VerifiedToken, AuthError> {
        let (token, until) = lock(&self.open).remove(id).ok_or(AuthError::BadTicket)?;
        if until <= Instant::now() {
            return Err(AuthError::BadTicket);
        }
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine_core::UserId;

    fn verified(user: &str, secs: u64) -> VerifiedToken {
        VerifiedToken {
            user: UserId::new(user).unwrap(),
            expires_at: SystemTime::now() + Duration::from_secs(secs),
        }
    }

    #[test]
    fn slots_are_capped_globally_and_per_address_and_come_back_on_drop() {
        let slots = Arc::new(ConnectionSlots::default());
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let a1 = slots.take(Some(a), 3, 2).unwrap();
        let a2 = slots.take(Some(a), 3, 2).unwrap();
        assert_eq!(
            slots.take(Some(a), 3, 2).unwrap_err(),
            SlotRefused::AddressFull
        );
        let b1 = slots.take(Some(b), 3, 2).unwrap();
        assert_eq!(
            slots.take(Some(b), 3, 2).unwrap_err(),
            SlotRefused::ServerFull
        );
        assert_eq!(slots.open(), 3);
        drop((a1, a2, b1));
        assert_eq!(slots.open(), 0);
        assert_eq!(slots.addresses(), 0, "no address left behind");
    }

    #[test]
    fn a_ticket_is_redeemed_once_and_not_after_its_time() {
        let tickets = Tickets::default();
        let t = tickets.issue(verified("alice", 60), Duration::from_secs(30));
        assert_eq!(tickets.redeem(&t).unwrap().user.as_str(), "alice");
        assert_eq!(tickets.redeem(&t), Err(AuthError::BadTicket));
        let short = tickets.issue(verified("alice", 60), Duration::ZERO);
        assert_eq!(tickets.redeem(&short), Err(AuthError::BadTicket));
        assert_eq!(tickets.redeem("forged"), Err(AuthError::BadTicket));
    }
}
