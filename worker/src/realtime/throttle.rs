//! Rate limits as sockets meet them: each socket's own buckets (messages, joins, call signals), its
//! client address's bucket shared by every worker (see `limits`), the restore budget per guest,
//! and what a refused socket is told. The buckets themselves are in `limits`.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_shared::sync::Locked;
use serde::{Deserialize, Serialize};
use serde_json::json;
use socketioxide::extract::SocketRef;

use super::protocol::{ChatError, event};
use super::rules::RESTORE_RATE;
use crate::bus::Adapter;
use crate::bus::Channel;
use crate::limits::{Bucket, PerAddress, PerKey, Rate};

/// Messages, typing and DMs per socket, unless configured (`MESSAGE_RATE`).
pub const SOCKET_RATE: Rate = Rate { per_second: 10.0, burst: 20.0 };
/// The same, per client address (several tabs, a NAT), unless configured (`ADDRESS_RATE`).
pub const ADDRESS_RATE: Rate = Rate { per_second: 50.0, burst: 100.0 };
/// Joins (`guest:join`, `room:join`, `room:leave`) per socket, unless configured (`JOIN_RATE`): each
/// asks every worker for the member list and tells the whole room. They also count against the
/// address's bucket.
pub const JOIN_RATE: Rate = Rate { per_second: 5.0, burst: 10.0 };
/// Call signals (`offer`, `answer`, `ice-candidate`, `call:accept|reject|end`) per socket, unless
/// configured (`SIGNAL_RATE`): a call's setup trickles a few dozen ICE candidates within a second,
/// a relay loop must not go unbounded (500 offers of 2 KB were relayed in 51 ms).
pub const SIGNAL_RATE: Rate = Rate { per_second: 50.0, burst: 100.0 };
/// Refusals in a row after which a socket is disconnected.
const ABUSE: u32 = 50;
/// A socket whose events are refused hears so (`chat:error`) at most this often: an event sent
/// without an acknowledgement (`typing`, say) has no other way to learn it, and a flood must not
/// be answered with a flood.
const REFUSALS_TOLD_EVERY: Duration = Duration::from_secs(1);
/// How often a worker tells the others what busy addresses spent: the lag, and so the slack, of a
/// cluster-wide address limit.
const RATE_REPORTS: Duration = Duration::from_millis(100);
/// Reports a worker takes in before it falls behind (they come every [`RATE_REPORTS`] per worker).
const RATE_REPORTS_QUEUED: usize = 64;

/// Who may send how much; `None` rates are off.
#[derive(Clone, Debug)]
pub struct Limits {
    pub socket: Option<Rate>,
    pub joins: Option<Rate>,
    pub signals: Option<Rate>,
    pub address: Option<Rate>,
    /// Peers whose `X-Forwarded-For` / `CF-Connecting-IP` name the client (a reverse proxy, a CDN).
    pub trusted_proxies: Vec<IpAddr>,
    /// How long a call nobody accepted rings (see `calls`).
    pub call_ring: Duration,
}

/// What an event spends.
#[derive(Clone, Copy)]
pub(super) enum Spend {
    Message,
    Join,
    Signal,
}

impl Spend {
    fn what(self) -> &'static str {
        match self {
            Spend::Message => "messages",
            Spend::Join => "joins",
            Spend::Signal => "signals",
        }
    }
}

/// The worker's side of the limits.
pub(super) struct Throttle {
    socket_rate: Option<Rate>,
    join_rate: Option<Rate>,
    signal_rate: Option<Rate>,
    per_address: Option<PerAddress>,
    restores: PerKey,
    trusted_proxies: Vec<IpAddr>,
    /// Where workers tell each other what busy client addresses spent.
    bus: Option<Channel>,
}

/// A socket's own rate limits (`None`: off).
#[derive(Clone)]
struct Limit {
    messages: Option<Arc<Mutex<Bucket>>>,
    joins: Option<Arc<Mutex<Bucket>>>,
    signals: Option<Arc<Mutex<Bucket>>>,
    /// When the socket was last sent `chat:error` for a refusal.
    told: Arc<Mutex<Option<Instant>>>,
}

/// The client address a socket counts against.
#[derive(Clone, Copy)]
struct Address(IpAddr);

/// What busy client addresses spent on one worker since its last report.
#[derive(Serialize, Deserialize)]
struct Spent {
    from: String,
    spent: Vec<(IpAddr, u32)>,
}

impl Throttle {
    pub(super) fn new(limits: &Limits, bus: Option<Channel>) -> Throttle {
        Throttle {
            socket_rate: limits.socket,
            join_rate: limits.joins,
            signal_rate: limits.signals,
            per_address: limits.address.map(PerAddress::new),
            restores: PerKey::new(RESTORE_RATE),
            trusted_proxies: limits.trusted_proxies.clone(),
            bus,
        }
    }

    /// Gives a new socket its buckets and the address it counts against.
    pub(super) fn admit(&self, socket: &SocketRef<Adapter>) {
        let bucket = |rate: Option<Rate>| rate.map(|r| Arc::new(Mutex::new(Bucket::new(r))));
        socket.extensions.insert(Limit {
            messages: bucket(self.socket_rate),
            joins: bucket(self.join_rate),
            signals: bucket(self.signal_rate),
            told: Arc::default(),
        });
        socket.extensions.insert(Address(client_address(socket, &self.trusted_proxies)));
    }

    /// How many of `asked` rooms guest `guest` may be put back in now.
    pub(super) fn restores(&self, guest: &str, asked: usize) -> usize {
        self.restores.take(guest, asked)
    }

    /// Takes a token for what `spend` names from the socket's and its address's buckets;
    /// disconnects an abusive socket.
    pub(super) fn spend(&self, socket: &SocketRef<Adapter>, spend: Spend) -> Result<(), ChatError> {
        let address = socket.extensions.get::<Address>().map(|a| a.0);
        // Call signals come in bursts per call (a few dozen ICE candidates): many calls behind one
        // NAT would spend the address's whole bucket, so they count against the socket's own only.
        let by_address = || match (&self.per_address, address, spend) {
            (_, _, Spend::Signal) => true,
            (Some(per_address), Some(address), _) => per_address.take(address),
            _ => true,
        };
        let limit = socket.extensions.get::<Limit>();
        let (rate, bucket) = match (spend, &limit) {
            (Spend::Message, Some(limit)) => (self.socket_rate, limit.messages.clone()),
            (Spend::Join, Some(limit)) => (self.join_rate, limit.joins.clone()),
            (Spend::Signal, Some(limit)) => (self.signal_rate, limit.signals.clone()),
            (_, None) => (None, None),
        };
        let (allowed, abusive) = match (rate, bucket) {
            (Some(rate), Some(bucket)) => {
                let mut bucket = bucket.locked();
                let allowed = bucket.take(rate, Instant::now()) && by_address();
                (allowed, bucket.refused_in_a_row() >= ABUSE)
            }
            _ => (by_address(), false),
        };
        if abusive {
            tracing::warn!(sid = %socket.id, address = ?address, "disconnecting a socket that keeps exceeding its rate limit");
            let _ = socket.clone().disconnect();
        }
        if allowed {
            return Ok(());
        }
        if let Some(limit) = limit {
            let mut told = limit.told.locked();
            if told.is_none_or(|at| at.elapsed() >= REFUSALS_TOLD_EVERY) {
                *told = Some(Instant::now());
                let refusal = ChatError::RateLimited;
                let _ = socket.emit(
                    event::CHAT_ERROR,
                    &json!({ "error": refusal.to_string(), "code": refusal.code(), "limit": spend.what() }),
                );
            }
        }
        Err(ChatError::RateLimited)
    }

    /// Tells the other workers what busy addresses spent here, and takes what they tell out of
    /// this worker's buckets, so an address gets its rate once in the cluster (see `limits`).
    /// `me` tells this worker's reports from the others'.
    pub(super) async fn share(&self, me: &str) {
        let (Some(bus), Some(per_address)) = (&self.bus, &self.per_address) else { return };
        let tell = async {
            let mut ticks = tokio::time::interval(RATE_REPORTS);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let spent = per_address.report();
                // Alone (or cut off) nobody would hear it.
                if !spent.is_empty() && !bus.is_solo() {
                    bus.tell(&Spent { from: me.to_owned(), spent });
                }
            }
        };
        let hear = bus.follow(RATE_REPORTS_QUEUED, |told: Spent| {
            if told.from != me {
                per_address.debit(&told.spent);
            }
        });
        tokio::join!(tell, hear);
    }
}

/// The client's address: the peer, or what a trusted proxy in front says the client was.
fn client_address(socket: &SocketRef<Adapter>, trusted: &[IpAddr]) -> IpAddr {
    let parts = socket.req_parts();
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<crate::drain::PeerAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.0.ip());
    if !trusted.contains(&peer) {
        return peer;
    }
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    header("cf-connecting-ip")
        .and_then(|v| v.trim().parse().ok())
        // The proxy appends the address it saw last.
        .or_else(|| header("x-forwarded-for").and_then(|v| v.rsplit(',').next()).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(peer)
}
