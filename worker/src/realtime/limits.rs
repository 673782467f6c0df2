//! Rate limits: a token bucket per socket and per client address, so one client cannot flood a
//! room or the worker. Excess is refused with an error; a socket that keeps pushing is
//! disconnected.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// `rate` tokens a second, at most `burst` saved up.
#[derive(Clone, Copy, Debug)]
pub(super) struct Rate {
    pub(super) per_second: f64,
    pub(super) burst: f64,
}

#[derive(Debug)]
pub(super) struct Bucket {
    tokens: f64,
    last: Instant,
    /// Refusals in a row: past a bound, the socket is abusive.
    refused: u32,
}

impl Bucket {
    pub(super) fn new(rate: Rate) -> Bucket {
        Bucket { tokens: rate.burst, last: Instant::now(), refused: 0 }
    }

    /// Takes a token; `false` when none is left.
    pub(super) fn take(&mut self, rate: Rate, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused = 0;
            true
        } else {
            self.refused += 1;
            false
        }
    }

    pub(super) fn refused_in_a_row(&self) -> u32 {
        self.refused
    }
}

/// Buckets per client address, shared by all its sockets.
pub(super) struct PerAddress {
    rate: Rate,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl PerAddress {
    pub(super) fn new(rate: Rate) -> PerAddress {
        PerAddress { rate, buckets: Mutex::new(HashMap::new()) }
    }

    pub(super) fn take(&self, addr: IpAddr) -> bool {
        let Ok(mut buckets) = self.buckets.lock() else { return true };
        let now = Instant::now();
        // Keep the table small: forget addresses whose bucket is full again.
        if buckets.len() > 10_000 {
            let rate = self.rate;
            buckets.retain(|_, b| {
                let mut probe = Bucket { tokens: b.tokens, last: b.last, refused: 0 };
                probe.take(rate, now);
                probe.tokens + 1.0 < rate.burst
            });
        }
        buckets.entry(addr).or_insert_with(|| Bucket::new(self.rate)).take(self.rate, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate() {
        let rate = Rate { per_second: 10.0, burst: 3.0 };
        let t0 = Instant::now();
        let mut bucket = Bucket { tokens: 3.0, last: t0, refused: 0 };
        assert!((0..3).all(|_| bucket.take(rate, t0)));
        assert!(!bucket.take(rate, t0));
        assert_eq!(bucket.refused_in_a_row(), 1);
        assert!(bucket.take(rate, t0 + Duration::from_millis(100)), "one token back after 100 ms");
        assert_eq!(bucket.refused_in_a_row(), 0);
    }
}
