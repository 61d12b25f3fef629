//! An in-memory cache of the directory facts every routed stanza consults: an account's
//! identity, opt-in and devices, and whether one account blocks another.
//!
//! Sound only because SQLite is a single-node store: every write to these facts goes through
//! this process's [`SqliteStore`](super::SqliteStore), which invalidates the cache after the write
//! committed. A read that raced with a write is not cached (a generation counter: a value read
//! before an invalidation is never inserted after it). Bounded: a full map is emptied.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::store::Identity;

type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Entries per map before it is emptied.
const MAX_ENTRIES: usize = 100_000;

/// What the router needs to know about one account (`identity: None`: no such account).
#[derive(Debug, Clone)]
pub(super) struct AccountFacts {
    pub identity: Option<Identity>,
    pub opted_in: bool,
    pub devices: Vec<u32>,
}

#[derive(Debug, Default)]
struct Inner {
    generation: u64,
    accounts: HashMap<String, Arc<AccountFacts>>,
    blocks: HashMap<(String, String), bool>,
}

#[derive(Debug, Default)]
pub(super) struct Directory {
    inner: Mutex<Inner>,
}

/// Where a read started: pass it back with the value read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ticket(u64);

impl Directory {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("directory cache lock is never poisoned")
    }

    /// The cached facts of `account`, or a ticket to read them with.
    pub fn account(&self, account: &str) -> Result<Arc<AccountFacts>, Ticket> {
        let inner = self.lock();
        inner.accounts.get(account).cloned().ok_or(Ticket(inner.generation))
    }

    /// Caches facts read since `ticket`, unless a write came in between.
    pub fn put_account(&self, ticket: Ticket, account: &str, facts: Arc<AccountFacts>) {
        let mut inner = self.lock();
        if inner.generation != ticket.0 {
            return;
        }
        if inner.accounts.len() >= MAX_ENTRIES {
            inner.accounts.clear();
        }
        inner.accounts.insert(account.to_owned(), facts);
    }

    /// Whether `blocker` blocks `blocked`, if cached, or a ticket to read it with.
    pub fn blocked(&self, blocker: &str, blocked: &str) -> Result<bool, Ticket> {
        let inner = self.lock();
        // A lookup without building an owned key would need a borrowed pair type; the two small
        // allocations are far cheaper than the query they replace.
        inner
            .blocks
            .get(&(blocker.to_owned(), blocked.to_owned()))
            .copied()
            .ok_or(Ticket(inner.generation))
    }

    /// Caches a block fact read since `ticket`, unless a write came in between.
    pub fn put_blocked(&self, ticket: Ticket, blocker: &str, blocked: &str, on: bool) {
        let mut inner = self.lock();
        if inner.generation != ticket.0 {
            return;
        }
        if inner.blocks.len() >= MAX_ENTRIES {
            inner.blocks.clear();
        }
        inner.blocks.insert((blocker.to_owned(), blocked.to_owned()), on);
    }

    /// After a write to `account`'s identity, opt-in or devices.
    pub fn forget_account(&self, account: &str) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.accounts.remove(account);
    }

    /// After a write to a block.
    pub fn forget_block(&self, blocker: &str, blocked: &str) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.blocks.remove(&(blocker.to_owned(), blocked.to_owned()));
    }

    /// After deleting an account: its facts and every block naming it.
    pub fn forget_everything_about(&self, account: &str) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.accounts.remove(account);
        inner.blocks.retain(|(a, b), _| a != account && b != account);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(devices: &[u32]) -> Arc<AccountFacts> {
        Arc::new(AccountFacts { identity: None, opted_in: true, devices: devices.to_vec() })
    }

    #[test]
    fn a_value_read_before_a_write_is_not_cached_after_it() {
        let d = Directory::default();
        let ticket = d.account("a").unwrap_err();
        // A write lands (and invalidates) while the read is in flight.
        d.forget_account("a");
        d.put_account(ticket, "a", facts(&[1]));
        assert!(d.account("a").is_err(), "the stale read must not be cached");
        let ticket = d.account("a").unwrap_err();
        d.put_account(ticket, "a", facts(&[1, 2]));
        assert_eq!(d.account("a").unwrap().devices, [1, 2]);
        d.forget_account("a");
        assert!(d.account("a").is_err());
    }

    #[test]
    fn blocks_are_per_pair_and_deleting_an_account_forgets_its_blocks() {
        let d = Directory::default();
        let t = d.blocked("a", "b").unwrap_err();
        d.put_blocked(t, "a", "b", true);
        let t = d.blocked("c", "d").unwrap_err();
        d.put_blocked(t, "c", "d", false);
        assert_eq!(d.blocked("a", "b"), Ok(true));
        assert!(d.blocked("b", "a").is_err());
        d.forget_everything_about("b");
        assert!(d.blocked("a", "b").is_err());
        assert_eq!(d.blocked("c", "d"), Ok(false));
        d.forget_block("c", "d");
        assert!(d.blocked("c", "d").is_err());
    }

    #[test]
    fn the_cache_is_bounded() {
        let d = Directory::default();
        for i in 0..MAX_ENTRIES + 10 {
            let t = d.account(&i.to_string()).unwrap_err();
            d.put_account(t, &i.to_string(), facts(&[1]));
        }
        assert!(d.lock().accounts.len() <= MAX_ENTRIES);
    }
}
