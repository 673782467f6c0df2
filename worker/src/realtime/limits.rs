//! Rate limits: a token bucket per socket and per client address, so one client cannot flood a
//! room or the worker. Excess is refused with an error; a socket that keeps pushing is
//! disconnected.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// `rate` tokens a second, at most `burst` saved up.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

impl Rate {
    /// `N/s` or `N/m` (a burst of twice the per-second rate, at least 1), or `off` (`None`).
    pub fn parse(text: &str) -> Result<Option<Rate>, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let (count, per) = text.split_once('/').ok_or_else(|| format!("{text:?}: expected N/s, N/m or off"))?;
        let count: f64 = count.trim().parse().map_err(|_| format!("{count:?} is not a number"))?;
        let seconds = match per.trim() {
            "s" => 1.0,
            "m" => 60.0,
            other => return Err(format!("{other:?}: the unit is s or m")),
        };
        if !(count.is_finite() && count > 0.0) {
            return Err(format!("{text:?}: the count must be positive (or the whole value off)"));
        }
        let per_second = count / seconds;
        Ok(Some(Rate { per_second, burst: (per_second * 2.0).max(1.0) }))
    }
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
    fn rates_parse() {
        assert_eq!(Rate::parse("10/s"), Ok(Some(Rate { per_second: 10.0, burst: 20.0 })));
        assert_eq!(Rate::parse("30/m"), Ok(Some(Rate { per_second: 0.5, burst: 1.0 })));
        assert_eq!(Rate::parse("OFF"), Ok(None));
        for bad in ["10", "0/s", "x/s", "10/h", "-1/s"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

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
