//! WebRTC call signalling: invitations, answers and the SDP/ICE relay between a call's participants
//! only. Messages go to each participant's guest room, so they reach every tab of that guest.
//!
//! Events (client → server; acknowledged `{ok, ...}` or `{ok: false, error}`):
//! - `call:invite {to: [guest ids], media}` → `{ok, call}`; each invitee gets
//!   `call:invite {call, from, media, participants}`.
//! - `call:accept {call}` / `call:reject {call}`: the other participants get
//!   `call:accept|call:reject {call, guest}`; a call with one participant left ends.
//! - `offer|answer|ice-candidate {call, to, ...}`: relayed to `to` with `from` added, only between
//!   participants of that call.
//! - `call:end {call}`: everyone gets `call:end {call, by}`. A participant whose last socket
//!   disconnects leaves the call the same way.
//!
//! A call nobody accepted ends after `CALL_RING_TIMEOUT` (default 60 s) and any call after
//! [`LONGEST`], told as `call:end {call, reason}`; a guest starts at most [`PER_GUEST`] calls at
//! once and a worker keeps at most [`MAX_CALLS`]. Without these a call lived as long as its
//! participants stayed connected, accepted or not.
//!
//! Every worker keeps a copy of the call registry: each change (a call created, a participant gone,
//! a call ended) is applied here and told to the other workers on the bus, which apply it to
//! theirs. So a guest may accept or signal from any worker; all the messages themselves go through
//! the adapter like any other.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_shared::sync::Locked;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use socketioxide::ParserError;
use socketioxide::SocketIo;
use socketioxide::extract::SocketRef;

use super::guests::{Guest, connected, guest_of, guest_room};
use super::ice::{self, IceConfig};
use super::messages::Messages;
use super::protocol::{self, ChatError, Dispatch, Reply, event};
use super::throttle::{Spend, Throttle};
use crate::bus::Adapter;
use crate::bus::Channel;

/// Changes queued for this worker before it falls behind the other workers' registries.
const CHANGES_QUEUED: usize = 1024;

/// At most this many people in one call (a small-room call, not a conference).
pub(super) const MAX_PARTICIPANTS: usize = 8;

/// How long a call nobody accepted rings, unless configured (`CALL_RING_TIMEOUT`).
pub const CALL_RING: Duration = Duration::from_secs(60);

/// The longest a call lasts.
pub(super) const LONGEST: Duration = Duration::from_secs(12 * 3600);

/// Calls a guest may have started and still be in at once.
pub(super) const PER_GUEST: usize = 4;

/// Calls one worker's registry holds at most (and a snapshot carries).
pub(super) const MAX_CALLS: usize = 10_000;

#[derive(Debug, Clone)]
pub(super) struct Call {
    pub(super) participants: BTreeSet<String>,
    /// Who started it (it counts against that guest's calls).
    pub(super) caller: String,
    /// When it started (as near as this worker can tell: when it learnt of it, less the age a
    /// snapshot gave).
    since: Instant,
    accepted: bool,
    /// Started on this worker, which ends it when it rings too long or lasts too long (the others
    /// hear it as any end). Another worker's is ended here [`ORPHANED_AFTER`] later, if it still
    /// rings or lasts: its worker is gone (a reload replaced it), and its guests must hear the end.
    here: bool,
}

/// How much later than its own worker another worker ends a call that rang or lasted too long.
const ORPHANED_AFTER: Duration = Duration::from_secs(5);

/// What a snapshot says of a call beside its participants (absent from earlier releases', which
/// sent participants only: such a call counts as accepted and as new).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Detail {
    id: String,
    caller: String,
    age_ms: u64,
    accepted: bool,
}

/// Why a call ended by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Expiry {
    NoAnswer,
    TooLong,
}

impl Expiry {
    pub(super) fn reason(self) -> &'static str {
        match self {
            Expiry::NoAnswer => "no answer",
            Expiry::TooLong => "too long",
        }
    }
}

/// A change to the registry, as told to the other workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Change {
    Create {
        id: String,
        participants: BTreeSet<String>,
        /// Absent from workers of earlier releases.
        #[serde(default)]
        caller: String,
    },
    Accept {
        id: String,
    },
    Leave {
        id: String,
        guest: String,
    },
    End {
        id: String,
    },
}

#[derive(Serialize, Deserialize)]
struct Told {
    /// The worker that made the change (it has applied it already).
    origin: String,
    change: Change,
}

pub(super) struct Calls {
    /// `std::sync::Mutex`: held for a lookup or an update, never across an await.
    calls: Mutex<HashMap<String, Call>>,
    bus: Option<Channel>,
    origin: String,
    ring: Duration,
}

impl Calls {
    pub(super) fn shared(bus: Option<Channel>, ring: Duration) -> Calls {
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let origin = format!("{}-{}", std::process::id(), since_epoch.as_nanos());
        Calls { calls: Mutex::default(), bus, origin, ring }
    }

    /// How often [`Calls::expire`] should run: often enough for the ring timeout.
    pub(super) fn sweep_every(&self) -> Duration {
        (self.ring / 4).clamp(Duration::from_millis(100), Duration::from_secs(10))
    }

    /// Ends the calls of this worker that rang unanswered for the ring timeout or lasted
    /// [`LONGEST`] (the others are told), and drops quietly the calls of workers that are gone;
    /// returns the ended calls with their participants, for them to be told.
    pub(super) fn expire(&self, now: Instant) -> Vec<(String, Vec<String>, Expiry)> {
        let mut calls = self.lock();
        let ring = self.ring;
        let mut ended = Vec::new();
        calls.retain(|id, call| {
            let age = now.saturating_duration_since(call.since);
            let late = if call.here { Duration::ZERO } else { ORPHANED_AFTER };
            let expiry = match call.accepted {
                false if age >= ring + late => Some(Expiry::NoAnswer),
                _ if age >= LONGEST + late => Some(Expiry::TooLong),
                _ => None,
            };
            if expiry.is_some() && !call.here {
                tracing::info!(call = %id, "ending a call whose worker is gone");
            }
            if let Some(expiry) = expiry {
                ended.push((id.clone(), call.participants.iter().cloned().collect(), expiry));
            }
            expiry.is_none()
        });
        drop(calls);
        for (id, _, _) in &ended {
            self.tell(Change::End { id: id.clone() });
        }
        ended
    }

    /// Applies the other workers' changes until the worker stops.
    pub(super) async fn listen(&self) {
        let Some(bus) = &self.bus else { return };
        bus.follow(CHANGES_QUEUED, |told: Told| {
            // This worker applied its own changes when it made them.
            if told.origin != self.origin {
                self.apply(told.change);
            }
        })
        .await;
    }

    fn tell(&self, change: Change) {
        if let Some(bus) = &self.bus {
            bus.tell(&Told { origin: self.origin.clone(), change });
        }
    }

    /// Identifies this worker on the bus.
    pub(super) fn origin(&self) -> &str {
        &self.origin
    }

    /// Every call, for a worker that starts later: participants (what earlier releases read) and
    /// the rest apart.
    pub(super) fn dump(&self) -> (Vec<(String, BTreeSet<String>)>, Vec<Detail>) {
        let calls = self.lock();
        let now = Instant::now();
        calls
            .iter()
            .take(MAX_CALLS)
            .map(|(id, call)| {
                let detail = Detail {
                    id: id.clone(),
                    caller: call.caller.clone(),
                    age_ms: now.saturating_duration_since(call.since).as_millis() as u64,
                    accepted: call.accepted,
                };
                ((id.clone(), call.participants.clone()), detail)
            })
            .unzip()
    }

    /// Takes in another worker's calls; a call this worker already knows keeps its own state.
    pub(super) fn merge(&self, dump: Vec<(String, BTreeSet<String>)>, details: Vec<Detail>) {
        let mut details: HashMap<String, Detail> = details.into_iter().map(|d| (d.id.clone(), d)).collect();
        let mut calls = self.lock();
        let now = Instant::now();
        for (id, participants) in dump.into_iter().take(MAX_CALLS.saturating_sub(calls.len())) {
            let call = match details.remove(&id) {
                Some(Detail { caller, age_ms, accepted, .. }) => {
                    let since = now.checked_sub(Duration::from_millis(age_ms)).unwrap_or(now);
                    Call { participants, caller, since, accepted, here: false }
                }
                // From an earlier release: its age and state unknown, kept as accepted and new.
                None => {
                    let caller = participants.iter().next().cloned().unwrap_or_default();
                    Call { participants, caller, since: now, accepted: true, here: false }
                }
            };
            calls.entry(id).or_insert(call);
        }
    }

    /// Applies a change; returns who is left in the call and whether it is over (for `Leave`).
    fn apply(&self, change: Change) -> Option<(Vec<String>, bool)> {
        let mut calls = self.lock();
        match change {
            Change::Create { id, participants, caller } => {
                if calls.len() < MAX_CALLS {
                    let call = Call { participants, caller, since: Instant::now(), accepted: false, here: false };
                    calls.insert(id, call);
                }
                None
            }
            Change::Accept { id } => {
                if let Some(call) = calls.get_mut(&id) {
                    call.accepted = true;
                }
                None
            }
            Change::Leave { id, guest } => {
                let call = calls.get_mut(&id)?;
                call.participants.remove(&guest);
                let left: Vec<String> = call.participants.iter().cloned().collect();
                let over = left.len() < 2;
                if over {
                    calls.remove(&id);
                }
                Some((left, over))
            }
            Change::End { id } => calls.remove(&id).map(|c| (c.participants.into_iter().collect(), true)),
        }
    }

    pub(super) fn create(&self, id: &str, from: &str, to: &[String]) -> Result<Call, ChatError> {
        let mut participants: BTreeSet<String> = to.iter().cloned().collect();
        participants.remove(from);
        invitees(participants.len())?;
        participants.insert(from.to_owned());
        let call = Call { participants, caller: from.to_owned(), since: Instant::now(), accepted: false, here: true };
        {
            let mut calls = self.lock();
            if calls.values().filter(|c| c.caller == from).count() >= PER_GUEST {
                return Err(ChatError::TooManyCalls { max: PER_GUEST });
            }
            if calls.len() >= MAX_CALLS {
                return Err(ChatError::ServerBusy);
            }
            calls.insert(id.to_owned(), call.clone());
        }
        self.tell(Change::Create {
            id: id.to_owned(),
            participants: call.participants.clone(),
            caller: from.to_owned(),
        });
        Ok(call)
    }

    /// Marks a call answered: it no longer ends for want of an answer.
    pub(super) fn accept(&self, id: &str) {
        let change = Change::Accept { id: id.to_owned() };
        self.apply(change.clone());
        self.tell(change);
    }

    /// The call, if `guest` takes part in it.
    pub(super) fn of(&self, id: &str, guest: &str) -> Result<Call, ChatError> {
        match self.lock().get(id) {
            Some(call) if call.participants.contains(guest) => Ok(call.clone()),
            Some(_) => Err(ChatError::NotInCall),
            None => Err(ChatError::NoSuchCall(id.to_owned())),
        }
    }

    /// The registry (`std::sync::Mutex`: held for a lookup or an update, never across an await; a
    /// panic while it was held left it consistent, since every update is one insert or remove).
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Call>> {
        self.calls.locked()
    }

    /// Removes `guest` from a call; returns who is left, and whether the call is over.
    pub(super) fn leave(&self, id: &str, guest: &str) -> Option<(Vec<String>, bool)> {
        let change = Change::Leave { id: id.to_owned(), guest: guest.to_owned() };
        let outcome = self.apply(change.clone());
        self.tell(change);
        outcome
    }

    /// Ends a call; returns its participants.
    pub(super) fn end(&self, id: &str) -> Option<Vec<String>> {
        let change = Change::End { id: id.to_owned() };
        let outcome = self.apply(change.clone());
        self.tell(change);
        outcome.map(|(participants, _)| participants)
    }

    /// Calls `guest` takes part in.
    pub(super) fn of_guest(&self, guest: &str) -> Vec<String> {
        self.lock().iter().filter(|(_, c)| c.participants.contains(guest)).map(|(id, _)| id.clone()).collect()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Whether a call may have `count` invitees besides its caller.
fn invitees(count: usize) -> Result<(), ChatError> {
    match count {
        0 => Err(ChatError::NoInvitee),
        n if n >= MAX_PARTICIPANTS => Err(ChatError::CallTooLarge { max: MAX_PARTICIPANTS }),
        _ => Ok(()),
    }
}

#[derive(Debug, Deserialize)]
struct Invite {
    to: Vec<String>,
    #[serde(default = "audio")]
    media: String,
}

fn audio() -> String {
    "audio".into()
}

#[derive(Debug, Deserialize)]
struct CallRef {
    call: String,
}

/// `offer`, `answer`, `ice-candidate`: the payload is relayed as it is, with `from` added.
#[derive(Debug, Deserialize)]
struct Signal {
    call: String,
    to: String,
    #[serde(flatten)]
    payload: serde_json::Map<String, Value>,
}

/// What calls use: what a socket may spend, the registry, the ICE servers a caller and an
/// answerer are sent, and the message ids (a call's id is one).
pub(super) struct CallEvents {
    pub(super) throttle: Arc<Throttle>,
    pub(super) calls: Arc<Calls>,
    pub(super) ice: Arc<IceConfig>,
    pub(super) messages: Arc<Messages>,
}

impl CallEvents {
    pub(super) fn register(self: &Arc<Self>, table: &mut Dispatch) {
        table.on(self, event::CALL_INVITE, invite);
        for answer in [event::CALL_ACCEPT, event::CALL_REJECT, event::CALL_END] {
            table.on(self, answer, move |socket, ev, data| respond(socket, ev, data, answer));
        }
        for signal in event::SIGNALS {
            table.on(self, signal, move |socket, ev, data| relay(socket, ev, data, signal));
        }
    }
}

/// `call:invite {to, media}` → `{ok, call}`; each invitee gets `call:invite {call, from, media,
/// participants}`.
async fn invite(socket: SocketRef<Adapter>, ev: Arc<CallEvents>, data: Result<Invite, ParserError>) -> Reply {
    ev.throttle.spend(&socket, Spend::Message)?;
    let guest = guest_of(&socket)?;
    let Invite { to, media } = protocol::payload(data, "{to: [guest ids], media}")?;
    if !matches!(media.as_str(), "audio" | "video") {
        return Err(ChatError::BadMedia);
    }
    // Checked before anything is asked of the cluster (a question per invitee): 3,000 entries
    // naming the caller were 3,000 questions.
    let to: Vec<String> = to.into_iter().filter(|id| *id != guest.id).collect::<BTreeSet<_>>().into_iter().collect();
    invitees(to.len())?;
    for id in &to {
        if !connected(&socket, id).await {
            return Err(ChatError::NotConnected(id.clone()));
        }
    }
    let id = format!("call-{}", ev.messages.next_id());
    let call = ev.calls.create(&id, &guest.id, &to)?;
    ice::send(&socket, &ev.ice);
    let invite = json!({ "call": id, "from": guest, "media": media, "participants": call.participants });
    for invitee in &to {
        let _ = socket.within(guest_room(invitee)).emit(event::CALL_INVITE, &invite).await;
    }
    Ok(json!({ "ok": true, "call": id }))
}

/// `call:accept|call:reject|call:end {call}`: the other participants are told; a call with one
/// participant left ends.
async fn respond(
    socket: SocketRef<Adapter>,
    ev: Arc<CallEvents>,
    data: Result<CallRef, ParserError>,
    answer: &'static str,
) -> Reply {
    ev.throttle.spend(&socket, Spend::Signal)?;
    let guest = guest_of(&socket)?;
    let CallRef { call } = protocol::payload(data, "{call}")?;
    let current = ev.calls.of(&call, &guest.id)?;
    if answer == event::CALL_ACCEPT {
        if current.caller == guest.id {
            return Err(ChatError::OwnCall);
        }
        ev.calls.accept(&call);
        ice::send(&socket, &ev.ice);
    }
    let (notify, ended) = match answer {
        event::CALL_END => (ev.calls.end(&call).unwrap_or_default(), true),
        event::CALL_REJECT => ev.calls.leave(&call, &guest.id).unwrap_or((Vec::new(), true)),
        _ => (current.participants.into_iter().filter(|p| *p != guest.id).collect(), false),
    };
    let body = json!({ "call": call, "guest": guest, "by": guest });
    for id in &notify {
        let _ = socket.within(guest_room(id)).emit(answer, &body).await;
        if ended && answer != event::CALL_END {
            let _ = socket.within(guest_room(id)).emit(event::CALL_END, &body).await;
        }
    }
    Ok(json!({ "ok": true }))
}

/// `offer|answer|ice-candidate {call, to, ...}`: relayed to `to` with `from` added, only between
/// participants of the call.
async fn relay(
    socket: SocketRef<Adapter>,
    ev: Arc<CallEvents>,
    data: Result<Signal, ParserError>,
    signal: &'static str,
) -> Reply {
    ev.throttle.spend(&socket, Spend::Signal)?;
    let guest = guest_of(&socket)?;
    let Signal { call, to, mut payload } = protocol::payload(data, "{call, to, ...}")?;
    let current = ev.calls.of(&call, &guest.id)?;
    if !current.participants.contains(&to) {
        return Err(ChatError::PeerNotInCall(to));
    }
    payload.insert("call".into(), Value::from(call));
    payload.insert("from".into(), json!(guest));
    payload.insert("to".into(), Value::from(to.clone()));
    let _ = socket.within(guest_room(&to)).emit(signal, &Value::Object(payload)).await;
    Ok(json!({ "ok": true }))
}

/// A guest's last socket anywhere gone: it leaves its calls, whose other participants are told
/// (`call:leave`, or `call:end` when one is left). Another tab may be on another worker, so this
/// asks the cluster, after the socket left the guest's room; and only for a guest in a call: a
/// cluster-wide question per disconnect flooded the bus when 10,000 clients left at once.
pub(super) async fn left(socket: &SocketRef<Adapter>, registry: &Calls, guest: &Guest) {
    let theirs = registry.of_guest(&guest.id);
    if theirs.is_empty() || connected(socket, &guest.id).await {
        return;
    }
    for call in theirs {
        if let Some((left, over)) = registry.leave(&call, &guest.id) {
            let told = if over { event::CALL_END } else { event::CALL_LEAVE };
            for id in left {
                let body = json!({ "call": call, "by": guest, "guest": guest });
                let _ = socket.within(guest_room(&id)).emit(told, &body).await;
            }
        }
    }
}

/// Ends the calls that rang unanswered or lasted too long, telling their participants.
pub(super) async fn end_expired(calls: &Calls, io: &SocketIo<Adapter>) {
    let mut ticks = tokio::time::interval(calls.sweep_every());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticks.tick().await;
        for (call, participants, expiry) in calls.expire(Instant::now()) {
            tracing::debug!(call, reason = expiry.reason(), "call ended by itself");
            let body = json!({ "call": call, "reason": expiry.reason() });
            for id in participants {
                let _ = io.to(guest_room(&id)).emit(event::CALL_END, &body).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn participants_only_and_ending() {
        let calls = Calls::shared(None, CALL_RING);
        assert!(calls.create("c1", "a", &[]).is_err());
        calls.create("c1", "a", &["b".into(), "c".into()]).expect("created");
        assert!(calls.of("c1", "b").is_ok());
        assert_eq!(calls.of("c1", "z").map(|_| ()), Err(ChatError::NotInCall));
        assert_eq!(calls.leave("c1", "c"), Some((vec!["a".into(), "b".into()], false)));
        assert_eq!(calls.of_guest("a"), vec!["c1".to_owned()]);
        assert_eq!(calls.leave("c1", "b"), Some((vec!["a".into()], true)));
        assert_eq!(calls.len(), 0);
    }

    #[test]
    fn calls_end_unanswered_or_too_long_and_a_guest_starts_a_few() {
        let calls = Calls::shared(None, Duration::from_secs(60));
        calls.create("rings", "a", &["b".into()]).expect("created");
        calls.create("talks", "a", &["c".into()]).expect("created");
        calls.accept("talks");
        let now = Instant::now();
        assert!(calls.expire(now).is_empty(), "nothing yet");
        let ended = calls.expire(now + Duration::from_secs(61));
        assert_eq!(ended.len(), 1);
        assert_eq!((ended[0].0.as_str(), ended[0].2), ("rings", Expiry::NoAnswer));
        assert_eq!(ended[0].1, vec!["a".to_owned(), "b".to_owned()], "its participants, to be told");
        let ended = calls.expire(now + LONGEST + Duration::from_secs(1));
        assert_eq!((ended[0].0.as_str(), ended[0].2), ("talks", Expiry::TooLong));
        for i in 0..PER_GUEST {
            calls.create(&format!("c{i}"), "a", &["b".into()]).expect("created");
        }
        assert!(calls.create("one more", "a", &["b".into()]).is_err(), "at most {PER_GUEST} at once");
        assert!(calls.create("b's", "b", &["a".into()]).is_ok(), "per guest");
    }

    #[test]
    fn a_change_told_by_one_worker_applies_to_another() {
        let (here, there) = (Calls::shared(None, CALL_RING), Calls::shared(None, CALL_RING));
        let wire = |change: Change| {
            let told = Told { origin: "here".into(), change };
            serde_json::from_slice::<Told>(&serde_json::to_vec(&told).expect("encodes")).expect("decodes").change
        };
        let participants = ["a".into(), "b".into()].into();
        there.apply(wire(Change::Create { id: "c1".into(), participants, caller: "a".into() }));
        assert!(there.of("c1", "b").is_ok());
        there.apply(wire(Change::Leave { id: "c1".into(), guest: "b".into() }));
        assert_eq!(there.len(), 0, "one participant left: the call is over everywhere");
        assert!(here.of("c1", "a").is_err());
    }

    #[test]
    fn a_call_taken_in_from_a_snapshot_keeps_its_caller_and_age_and_ends_if_its_worker_is_gone() {
        let (here, there) = (Calls::shared(None, CALL_RING), Calls::shared(None, CALL_RING));
        here.create("rings", "a", &["b".into()]).expect("created");
        here.create("talks", "c", &["d".into()]).expect("created");
        here.accept("talks");
        let (calls, details) = here.dump();
        there.merge(calls, details);
        assert_eq!(there.of("rings", "b").expect("known").caller, "a", "the caller, not the first participant");
        let now = Instant::now();
        assert!(there.expire(now + CALL_RING).is_empty(), "its own worker ends it first");
        let ended = there.expire(now + CALL_RING + ORPHANED_AFTER);
        assert_eq!(ended.len(), 1, "then this one does: its worker is gone");
        assert_eq!((ended[0].0.as_str(), ended[0].2), ("rings", Expiry::NoAnswer));
        assert!(there.of("talks", "c").is_ok(), "an accepted call goes on");
        // An earlier release's snapshot has no details: its calls count as accepted and new.
        let old = Calls::shared(None, CALL_RING);
        old.merge(vec![("c9".into(), ["x".into(), "y".into()].into())], Vec::new());
        assert!(old.expire(Instant::now() + CALL_RING + ORPHANED_AFTER).is_empty());
    }
}
