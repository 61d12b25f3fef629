//! Token buckets keyed by a string, with time passed in. Memory stays bounded: when the table
//! is full, buckets that have refilled completely (they hold no information) are dropped, and
//! if that frees nothing the request is refused rather than the table grown.

use std::collections::HashMap;
use std::sync::Mutex;

/// A rate: `burst` requests at once, refilled at `per_minute`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Bucket size.
    pub burst: f64,
    /// Tokens added per minute.
    pub per_minute: f64,
}

/// Per-key token buckets.
#[derive(Debug)]
pub struct RateLimiter {
    rate: Rate,
    max_keys: usize,
    buckets: Mutex<HashMap<String, (f64, i64)>>,
}

impl RateLimiter {
    /// A limiter tracking at most `max_keys` keys.
    pub fn new(rate: Rate, max_keys: usize) -> Self {
        Self { rate, max_keys, buckets: Mutex::default() }
    }

    /// The rate of this limiter.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Takes one token for `key` at `now_ms`; false when the key is over its rate.
    pub fn check(&self, key: &str, now_ms: i64) -> bool {
        let mut buckets = self.buckets.lock().expect("rate lock is never poisoned");
        let refill = |(tokens, at): (f64, i64)| {
            let elapsed_min = (now_ms.saturating_sub(at)).max(0) as f64 / 60_000.0;
            (tokens + elapsed_min * self.rate.per_minute).min(self.rate.burst)
        };
        if !buckets.contains_key(key) && buckets.len() >= self.max_keys {
            let burst = self.rate.burst;
            buckets.retain(|_, b| refill(*b) < burst);
            if buckets.len() >= self.max_keys {
                return false;
            }
        }
        let tokens = buckets.get(key).map_or(self.rate.burst, |b| refill(*b));
        if tokens < 1.0 {
            buckets.insert(key.to_owned(), (tokens, now_ms));
            return false;
        }
        buckets.insert(key.to_owned(), (tokens - 1.0, now_ms));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills_with_time() {
        let l = RateLimiter::new(Rate { burst: 3.0, per_minute: 60.0 }, 100);
        assert!((0..3).all(|_| l.check("a", 0)));
        assert!(!l.check("a", 0));
        assert!(l.check("b", 0), "keys are independent");
        assert!(!l.check("a", 999), "one token per second");
        assert!(l.check("a", 1_000));
        assert!(!l.check("a", 1_000));
        assert!((0..3).all(|_| l.check("a", 1_000_000)), "refills up to the burst only");
        assert!(!l.check("a", 1_000_000));
    }

    #[test]
    fn the_table_never_grows_past_its_bound() {
        let l = RateLimiter::new(Rate { burst: 1.0, per_minute: 1.0 }, 2);
        assert!(l.check("a", 0));
        assert!(l.check("b", 0));
        assert!(!l.check("c", 0), "full of live buckets: refused, not grown");
        // After a minute the old buckets are full again and can be forgotten.
        assert!(l.check("c", 60_000));
        assert!(l.buckets.lock().unwrap().len() <= 2);
    }
}
