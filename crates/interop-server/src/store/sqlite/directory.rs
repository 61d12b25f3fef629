//! An in-memory cache of the directory facts every routed stanza consults: an account's
//! identity, opt-in, devices and the accounts it blocks.
//!
//! The block list comes with the account's other facts (it is nearly always empty), so that the
//! first message between two accounts whose facts are cached (both logged in) needs no read: a
//! per-pair "does a block b" entry made every new pair of correspondents a database read on the
//! routing path, and under load those reads queued behind the busy runtime for seconds.
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

/// Block lists longer than this are not cached: such an account's blocks are read per pair.
pub(super) const MAX_CACHED_BLOCKS: usize = 1024;

/// What the router needs to know about one account (`identity: None`: no such account).
#[derive(Debug, Clone)]
pub(super) struct AccountFacts {
    pub identity: Option<Identity>,
    pub opted_in: bool,
    pub devices: Vec<u32>,
    pub blocks: Blocks,
}

/// The accounts an account blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Blocks {
    /// All of them, sorted.
    Sorted(Vec<String>),
    /// More than [`MAX_CACHED_BLOCKS`]: ask the database.
    TooMany,
}

impl Blocks {
    /// From the first `MAX_CACHED_BLOCKS + 1` blocked accounts, sorted.
    pub fn from_sorted(list: Vec<String>) -> Self {
        if list.len() > MAX_CACHED_BLOCKS { Self::TooMany } else { Self::Sorted(list) }
    }

    /// Whether `account` is blocked; `None`: not known here.
    pub fn contains(&self, account: &str) -> Option<bool> {
        match self {
            Self::Sorted(list) => Some(list.binary_search_by(|b| b.as_str().cmp(account)).is_ok()),
            Self::TooMany => None,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    generation: u64,
    accounts: HashMap<String, Arc<AccountFacts>>,
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

    /// After a write to `account`'s identity, opt-in, devices or block list.
    pub fn forget_account(&self, account: &str) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.accounts.remove(account);
    }

    /// After deleting an account: its facts, and those of every account whose block list names
    /// it (the blocks went with it).
    pub fn forget_everything_about(&self, account: &str) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.accounts.remove(account);
        inner.accounts.retain(|_, f| f.blocks.contains(account) == Some(false));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(devices: &[u32]) -> Arc<AccountFacts> {
        blocking(devices, &[])
    }

    fn blocking(devices: &[u32], blocks: &[&str]) -> Arc<AccountFacts> {
        let list = blocks.iter().map(|b| (*b).to_owned()).collect();
        Arc::new(AccountFacts {
            identity: None,
            opted_in: true,
            devices: devices.to_vec(),
            blocks: Blocks::from_sorted(list),
        })
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
    fn block_lists_answer_per_pair_and_deleting_an_account_forgets_who_blocked_it() {
        let d = Directory::default();
        for (account, blocks) in [("a", &["b", "d"][..]), ("c", &[][..]), ("e", &["x"][..])] {
            let t = d.account(account).unwrap_err();
            d.put_account(t, account, blocking(&[1], blocks));
        }
        let a = d.account("a").unwrap();
        assert_eq!(
            ["b", "c", "d"].map(|x| a.blocks.contains(x)),
            [Some(true), Some(false), Some(true)]
        );
        assert_eq!(d.account("c").unwrap().blocks.contains("a"), Some(false));
        // Deleting b drops b and the facts that name it (a's), nothing else.
        d.forget_everything_about("b");
        assert!(d.account("a").is_err());
        assert!(d.account("b").is_err());
        assert!(d.account("c").is_ok());
        assert!(d.account("e").is_ok());
    }

    #[test]
    fn long_block_lists_are_not_cached() {
        let list: Vec<String> = (0..=MAX_CACHED_BLOCKS).map(|i| format!("{i:05}")).collect();
        let blocks = Blocks::from_sorted(list.clone());
        assert_eq!(blocks, Blocks::TooMany);
        assert_eq!(blocks.contains("00001"), None);
        let fits = Blocks::from_sorted(list[..MAX_CACHED_BLOCKS].to_vec());
        assert_eq!(fits.contains("00001"), Some(true));
        assert_eq!(fits.contains("zzz"), Some(false));
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
