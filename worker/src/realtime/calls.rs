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
//! Every worker keeps a copy of the call registry: each change (a call created, a participant gone,
//! a call ended) is applied here and told to the other workers on the bus, which apply it to
//! theirs. So a guest may accept or signal from any worker; all the messages themselves go through
//! the adapter like any other.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use socketioxide::extract::{AckSender, SocketRef, TryData};

use super::{Chat, Spend, answer, connected, guest_of, guest_room, limited, limited_for, send_ice};
use crate::Adapter;
use crate::bus::Channel;

/// At most this many people in one call (a small-room call, not a conference).
pub(super) const MAX_PARTICIPANTS: usize = 8;

#[derive(Debug, Clone)]
pub(super) struct Call {
    pub(super) participants: BTreeSet<String>,
}

/// A change to the registry, as told to the other workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Change {
    Create { id: String, participants: BTreeSet<String> },
    Leave { id: String, guest: String },
    End { id: String },
}

#[derive(Serialize, Deserialize)]
struct Told {
    /// The worker that made the change (it has applied it already).
    origin: String,
    change: Change,
}

#[derive(Default)]
pub(super) struct Calls {
    /// `std::sync::Mutex`: held for a lookup or an update, never across an await.
    calls: Mutex<HashMap<String, Call>>,
    bus: Option<Channel>,
    origin: String,
}

impl Calls {
    pub(super) fn shared(bus: Option<Channel>) -> Calls {
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Calls { calls: Mutex::default(), bus, origin: format!("{}-{}", std::process::id(), since_epoch.as_nanos()) }
    }

    /// Applies the other workers' changes until the worker stops.
    pub(super) async fn listen(&self) {
        let Some(bus) = &self.bus else { return };
        bus.follow(1024, |told: Told| {
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

    /// Every call, for a worker that starts later.
    pub(super) fn dump(&self) -> Vec<(String, BTreeSet<String>)> {
        let Ok(calls) = self.calls.lock() else { return Vec::new() };
        calls.iter().map(|(id, call)| (id.clone(), call.participants.clone())).collect()
    }

    /// Takes in another worker's calls; a call this worker already knows keeps its own state.
    pub(super) fn merge(&self, dump: Vec<(String, BTreeSet<String>)>) {
        let Ok(mut calls) = self.calls.lock() else { return };
        for (id, participants) in dump {
            calls.entry(id).or_insert(Call { participants });
        }
    }

    /// Applies a change; returns who is left in the call and whether it is over (for `Leave`).
    fn apply(&self, change: Change) -> Option<(Vec<String>, bool)> {
        let mut calls = self.calls.lock().ok()?;
        match change {
            Change::Create { id, participants } => {
                calls.insert(id, Call { participants });
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

    pub(super) fn create(&self, id: &str, from: &str, to: &[String]) -> Result<Call, String> {
        let mut participants: BTreeSet<String> = to.iter().cloned().collect();
        participants.remove(from);
        invitees(participants.len())?;
        participants.insert(from.to_owned());
        let call = Call { participants: participants.clone() };
        let change = Change::Create { id: id.to_owned(), participants };
        self.apply(change.clone());
        self.tell(change);
        Ok(call)
    }

    /// The call, if `guest` takes part in it.
    pub(super) fn of(&self, id: &str, guest: &str) -> Result<Call, String> {
        let calls = self.calls.lock().map_err(|_| "call registry unavailable".to_owned())?;
        match calls.get(id) {
            Some(call) if call.participants.contains(guest) => Ok(call.clone()),
            Some(_) => Err("not a participant of this call".into()),
            None => Err(format!("no call {id:?}")),
        }
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
        self.calls
            .lock()
            .map(|calls| {
                calls.iter().filter(|(_, c)| c.participants.contains(guest)).map(|(id, _)| id.clone()).collect()
            })
            .unwrap_or_default()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.calls.lock().map_or(0, |c| c.len())
    }
}

/// Whether a call may have `count` invitees besides its caller.
fn invitees(count: usize) -> Result<(), String> {
    match count {
        0 => Err("invite at least one other guest".into()),
        n if n >= MAX_PARTICIPANTS => Err(format!("a call has at most {MAX_PARTICIPANTS} participants")),
        _ => Ok(()),
    }
}

/// ICE servers for clients: STUN and TURN urls from `ICE_SERVERS`; TURN credentials time-limited
/// with `TURN_SECRET`, the standard TURN REST scheme (username `EXPIRY:GUEST`, credential
/// base64(HMAC-SHA1(secret, username))), which coturn's `use-auth-secret` verifies.
pub struct IceConfig {
    pub urls: Vec<String>,
    pub turn_secret: Option<Vec<u8>>,
    pub turn_ttl: std::time::Duration,
}

impl IceConfig {
    pub fn for_guest(&self, guest: &str, now_secs: u64) -> Value {
        use base64::Engine;
        use hmac::{Hmac, KeyInit, Mac};
        let stun: Vec<&String> = self.urls.iter().filter(|u| u.starts_with("stun")).collect();
        let turn: Vec<&String> = self.urls.iter().filter(|u| u.starts_with("turn")).collect();
        let mut servers = Vec::new();
        if !stun.is_empty() {
            servers.push(json!({ "urls": stun }));
        }
        if !turn.is_empty() {
            match &self.turn_secret {
                Some(secret) => {
                    let username = format!("{}:{guest}", now_secs + self.turn_ttl.as_secs());
                    let mut mac = <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(secret)
                        .expect("UNWRAP: HMAC takes keys of any length");
                    mac.update(username.as_bytes());
                    let credential = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
                    servers.push(json!({ "urls": turn, "username": username, "credential": credential }));
                }
                None => servers.push(json!({ "urls": turn })),
            }
        }
        json!({ "iceServers": servers })
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

pub(super) fn handlers(socket: &SocketRef<Adapter>, chat: &Arc<Chat>) {
    let c = chat.clone();
    socket.on(
        "call:invite",
        move |socket: SocketRef<Adapter>, TryData(data): TryData<Invite>, ack: AckSender<Adapter>| {
            let chat = c.clone();
            async move {
                let reply = async {
                    limited(&socket, &chat)?;
                    let guest = guest_of(&socket)?;
                    let Invite { to, media } = data.map_err(|e| format!("expected {{to: [guest ids], media}}: {e}"))?;
                    if !matches!(media.as_str(), "audio" | "video") {
                        return Err("media is \"audio\" or \"video\"".to_owned());
                    }
                    // Checked before anything is asked of the cluster (a question per invitee):
                    // 3,000 entries naming the caller were 3,000 questions.
                    let to: Vec<String> =
                        to.into_iter().filter(|id| *id != guest.id).collect::<BTreeSet<_>>().into_iter().collect();
                    invitees(to.len())?;
                    for id in &to {
                        if !connected(&socket, id).await {
                            return Err(format!("guest {id:?} is not connected"));
                        }
                    }
                    let id = format!("call-{}", chat.ids.next());
                    let call = chat.calls.create(&id, &guest.id, &to)?;
                    send_ice(&socket, &chat);
                    let invite =
                        json!({ "call": id, "from": guest, "media": media, "participants": call.participants });
                    for invitee in &to {
                        let _ = socket.within(guest_room(invitee)).emit("call:invite", &invite).await;
                    }
                    Ok(json!({ "ok": true, "call": id }))
                }
                .await;
                answer(&socket, ack, reply);
            }
        },
    );
    for event in ["call:accept", "call:reject", "call:end"] {
        let c = chat.clone();
        socket.on(
            event,
            move |socket: SocketRef<Adapter>, TryData(data): TryData<CallRef>, ack: AckSender<Adapter>| {
                let chat = c.clone();
                async move {
                    let reply = async {
                        limited_for(&socket, &chat, Spend::Signal)?;
                        let guest = guest_of(&socket)?;
                        let CallRef { call } = data.map_err(|e| format!("expected {{call}}: {e}"))?;
                        let current = chat.calls.of(&call, &guest.id)?;
                        if event == "call:accept" {
                            send_ice(&socket, &chat);
                        }
                        let (notify, ended) = match event {
                            "call:end" => (chat.calls.end(&call).unwrap_or_default(), true),
                            "call:reject" => match chat.calls.leave(&call, &guest.id) {
                                Some((left, over)) => (left, over),
                                None => (Vec::new(), true),
                            },
                            _ => (current.participants.into_iter().filter(|p| *p != guest.id).collect(), false),
                        };
                        let body = json!({ "call": call, "guest": guest, "by": guest });
                        for id in &notify {
                            let _ = socket.within(guest_room(id)).emit(event, &body).await;
                            if ended && event != "call:end" {
                                let _ = socket.within(guest_room(id)).emit("call:end", &body).await;
                            }
                        }
                        Ok(json!({ "ok": true }))
                    }
                    .await;
                    answer(&socket, ack, reply);
                }
            },
        );
    }
    for event in ["offer", "answer", "ice-candidate"] {
        let c = chat.clone();
        socket.on(event, move |socket: SocketRef<Adapter>, TryData(data): TryData<Signal>, ack: AckSender<Adapter>| {
            let chat = c.clone();
            async move {
                let reply = async {
                    limited_for(&socket, &chat, Spend::Signal)?;
                    let guest = guest_of(&socket)?;
                    let Signal { call, to, mut payload } =
                        data.map_err(|e| format!("expected {{call, to, ...}}: {e}"))?;
                    let current = chat.calls.of(&call, &guest.id)?;
                    if !current.participants.contains(&to) {
                        return Err(format!("{to:?} is not in this call"));
                    }
                    payload.insert("call".into(), Value::from(call));
                    payload.insert("from".into(), json!(guest));
                    payload.insert("to".into(), Value::from(to.clone()));
                    let _ = socket.within(guest_room(&to)).emit(event, &Value::Object(payload)).await;
                    Ok(json!({ "ok": true }))
                }
                .await;
                answer(&socket, ack, reply);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn participants_only_and_ending() {
        let calls = Calls::default();
        assert!(calls.create("c1", "a", &[]).is_err());
        calls.create("c1", "a", &["b".into(), "c".into()]).expect("created");
        assert!(calls.of("c1", "b").is_ok());
        assert_eq!(calls.of("c1", "z").map(|_| ()), Err("not a participant of this call".into()));
        assert_eq!(calls.leave("c1", "c"), Some((vec!["a".into(), "b".into()], false)));
        assert_eq!(calls.of_guest("a"), vec!["c1".to_owned()]);
        assert_eq!(calls.leave("c1", "b"), Some((vec!["a".into()], true)));
        assert_eq!(calls.len(), 0);
    }

    #[test]
    fn a_change_told_by_one_worker_applies_to_another() {
        let (here, there) = (Calls::default(), Calls::default());
        let wire = |change: Change| {
            let told = Told { origin: "here".into(), change };
            serde_json::from_slice::<Told>(&serde_json::to_vec(&told).expect("encodes")).expect("decodes").change
        };
        there.apply(wire(Change::Create { id: "c1".into(), participants: ["a".into(), "b".into()].into() }));
        assert!(there.of("c1", "b").is_ok());
        there.apply(wire(Change::Leave { id: "c1".into(), guest: "b".into() }));
        assert_eq!(there.len(), 0, "one participant left: the call is over everywhere");
        assert!(here.of("c1", "a").is_err());
    }

    #[test]
    fn turn_rest_credentials() {
        let ice = IceConfig {
            urls: vec!["stun:stun.example.org".into(), "turn:turn.example.org?transport=udp".into()],
            turn_secret: Some(b"north".to_vec()),
            turn_ttl: std::time::Duration::from_secs(3600),
        };
        let v = ice.for_guest("g_1", 1_000_000);
        assert_eq!(v["iceServers"][0]["urls"][0], "stun:stun.example.org");
        assert_eq!(v["iceServers"][1]["username"], "1003600:g_1");
        // Computed independently (Python's hmac): base64(HMAC-SHA1("north", "1003600:g_1")).
        assert_eq!(v["iceServers"][1]["credential"], "ijTPA/MrU9LTJMlvj3RvoCQQNeU=");
    }
}
