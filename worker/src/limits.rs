//! Rate limits: a token bucket per socket and per client address, so one client cannot flood a
//! room or the worker. Excess is refused with an error; a socket that keeps pushing is
//! disconnected.
//!
//! An address's sockets may be spread over every worker of the cluster (and of every host, with
//! Redis), so each worker tells the others what a *busy* address spent here (its bucket below half
//! full), a few times a second, and takes their spending out of its own bucket for that address:
//! under a sustained flood every worker's bucket sees the whole cluster's spending, and the address
//! gets its rate once, not once per worker. An address well within its rate is never told about
//! (no traffic for ordinary clients); what it spends before its buckets fall below half, and in the
//! moment between reports, is the slack (at most about half a burst per worker).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use chat_shared::sync::Locked;

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
pub(crate) struct Bucket {
    tokens: f64,
    last: Instant,
    /// Refusals in a row: past a bound, the socket is abusive.
    refused: u32,
}

impl Bucket {
    pub(crate) fn new(rate: Rate) -> Bucket {
        Bucket { tokens: rate.burst, last: Instant::now(), refused: 0 }
    }

    /// Takes a token; `false` when none is left.
    pub(crate) fn take(&mut self, rate: Rate, now: Instant) -> bool {
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

    pub(crate) fn refused_in_a_row(&self) -> u32 {
        self.refused
    }

    /// Takes out what was spent elsewhere, into debt down to one burst.
    fn debit(&mut self, rate: Rate, spent: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = ((self.tokens + elapsed * rate.per_second).min(rate.burst) - spent).max(-rate.burst);
    }
}

/// Buckets per client address, shared by all its sockets here, and by the other workers' reports.
pub(crate) struct PerAddress {
    rate: Rate,
    table: Mutex<Table>,
}

struct Table {
    buckets: HashMap<IpAddr, Bucket>,
    /// What busy addresses spent here since the last report to the other workers.
    spent: HashMap<IpAddr, u32>,
    /// The table's size at which addresses whose bucket is full again are forgotten: twice what
    /// was left by the last sweep, so each take costs O(1) however many addresses are busy.
    sweep_at: usize,
}

/// The smallest table that is swept.
const SWEEP_FROM: usize = 10_000;

impl PerAddress {
    pub(crate) fn new(rate: Rate) -> PerAddress {
        let table = Table { buckets: HashMap::new(), spent: HashMap::new(), sweep_at: SWEEP_FROM };
        PerAddress { rate, table: Mutex::new(table) }
    }

    pub(crate) fn take(&self, addr: IpAddr) -> bool {
        let mut table = self.table.locked();
        let now = Instant::now();
        let rate = self.rate;
        table.forget_idle(rate, now);
        let bucket = table.buckets.entry(addr).or_insert_with(|| Bucket::new(rate));
        let taken = bucket.take(rate, now);
        if taken && bucket.tokens < rate.burst / 2.0 {
            *table.spent.entry(addr).or_default() += 1;
        }
        taken
    }

    /// What busy addresses spent here since the last call, for the other workers.
    pub(crate) fn report(&self) -> Vec<(IpAddr, u32)> {
        let mut table = self.table.locked();
        table.spent.drain().collect()
    }

    /// Takes what another worker reported out of this worker's buckets.
    pub(crate) fn debit(&self, spent: &[(IpAddr, u32)]) {
        let mut table = self.table.locked();
        let now = Instant::now();
        let rate = self.rate;
        table.forget_idle(rate, now);
        for (addr, count) in spent {
            table.buckets.entry(*addr).or_insert_with(|| Bucket::new(rate)).debit(rate, f64::from(*count), now);
        }
    }
}

impl Table {
    fn forget_idle(&mut self, rate: Rate, now: Instant) {
        forget_full(&mut self.buckets, &mut self.sweep_at, rate, now);
    }
}

/// Keeps a table of buckets small: once it has reached `sweep_at`, forgets the buckets that are
/// full again (a new one would be the same) and waits for the table to double before the next
/// sweep, so each take costs O(1) however many keys are busy.
fn forget_full<K: std::hash::Hash + Eq>(
    buckets: &mut HashMap<K, Bucket>,
    sweep_at: &mut usize,
    rate: Rate,
    now: Instant,
) {
    if buckets.len() >= *sweep_at {
        buckets.retain(|_, b| {
            let mut probe = Bucket { tokens: b.tokens, last: b.last, refused: 0 };
            probe.take(rate, now);
            probe.tokens + 1.0 < rate.burst
        });
        *sweep_at = (buckets.len() * 2).max(SWEEP_FROM);
    }
}

/// A bucket per key (a guest), in a table kept small: used for the rooms a session token may put
/// its guest back into (a reload, where every client reconnects once, or a whole NAT reconnecting
/// at once restores every room, while a client that reconnects in a loop gets its rooms back once
/// or twice and then a few a minute; without a budget of its own, 20 reconnects of a token holding
/// 12 rooms were 240 joins outside the join limit), and for the files a guest uploads.
pub(crate) struct PerKey {
    rate: Rate,
    table: Mutex<(HashMap<String, Bucket>, usize)>,
}

impl PerKey {
    pub(crate) fn new(rate: Rate) -> PerKey {
        PerKey { rate, table: Mutex::new((HashMap::new(), SWEEP_FROM)) }
    }

    /// Takes up to `count` tokens from `key`'s bucket; returns how many it may have.
    pub(crate) fn take(&self, key: &str, count: usize) -> usize {
        let mut table = self.table.locked();
        let (buckets, sweep_at) = &mut *table;
        let now = Instant::now();
        forget_full(buckets, sweep_at, self.rate, now);
        let bucket = buckets.entry(key.to_owned()).or_insert_with(|| Bucket::new(self.rate));
        (0..count).take_while(|_| bucket.take(self.rate, now)).count()
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

    #[test]
    fn a_table_of_busy_addresses_is_swept_only_when_it_doubles() {
        let per_address = PerAddress::new(Rate { per_second: 0.001, burst: 2.0 });
        for i in 0..=SWEEP_FROM as u32 {
            assert!(per_address.take(IpAddr::from(i.to_be_bytes())), "a first message from each");
        }
        let table = per_address.table.lock().expect("unpoisoned");
        assert_eq!(table.buckets.len(), SWEEP_FROM + 1, "none is full again: none forgotten");
        assert_eq!(table.sweep_at, 2 * SWEEP_FROM, "the next sweep once the table has doubled");
    }

    #[test]
    fn a_guest_gets_its_rooms_back_twice_then_a_few() {
        let restores = PerKey::new(Rate { per_second: 20.0 / 60.0, burst: 40.0 });
        assert_eq!(restores.take("g", 12), 12, "a reload");
        assert_eq!(restores.take("g", 12), 12, "a flaky network");
        assert_eq!(restores.take("g", 12), 12);
        assert_eq!(restores.take("g", 12), 4, "a loop: what is left of the budget");
        assert_eq!(restores.take("g", 12), 0);
        assert_eq!(restores.take("other", 12), 12, "per guest");
    }

    #[test]
    fn busy_addresses_are_reported_and_what_others_spent_is_taken_out() {
        let rate = Rate { per_second: 1.0, burst: 4.0 };
        let (here, there) = (PerAddress::new(rate), PerAddress::new(rate));
        let addr: IpAddr = [10, 0, 0, 1].into();
        assert!(here.take(addr) && here.take(addr), "4 -> 2 tokens: half full, not busy yet");
        assert!(here.report().is_empty(), "an address within its rate is never told about");
        assert!(here.take(addr), "2 -> 1: busy");
        let report = here.report();
        assert_eq!(report, vec![(addr, 1)]);
        assert!(here.report().is_empty(), "reported once");
        there.debit(&[(addr, 3)]);
        assert!(there.take(addr), "4 - 3 = 1 token left there");
        assert!(!there.take(addr), "then none: the address spent its burst across both workers");
        there.debit(&[(addr, 100)]);
        let table = there.table.lock().expect("unpoisoned");
        assert!(table.buckets[&addr].tokens >= -rate.burst, "debt is bounded by one burst");
    }
}
