//! Room messages: sending (`message`), their order and delivery on every worker through the bus,
//! the recovery history (`room:history`, and what a join or a return missed), the ids, and the
//! shared file a message may carry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_shared::sync::Locked;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use socketioxide::extract::SocketRef;
use socketioxide::{ParserError, SocketIo};
use tokio::sync::oneshot;

use chat_shared::time::unix_millis;

use super::guests::guest_of;
use super::history::{self, History};
use super::presence::is_member;
use super::protocol::{self, ChatError, Dispatch, Reply, event};
use super::throttle::{Spend, Throttle};
use crate::bus::Adapter;
use crate::bus::Channel;
use crate::store::Store;

const MAX_TEXT_CHARS: usize = 4000;

/// The longest a sender waits for its message to come back from the bus before it is acknowledged
/// anyway (a link going down meanwhile).
const ORDERED_WITHIN: Duration = Duration::from_secs(2);

/// Room messages queued for this worker before it falls behind the bus.
const QUEUED: usize = 8192;

/// Default bounds of the recovery history.
pub const HISTORY_COUNT: usize = 200;
pub const HISTORY_AGE: Duration = Duration::from_secs(3600);

#[derive(Debug, Deserialize)]
struct SendMessage {
    room: String,
    /// May be empty when the message carries a file.
    #[serde(default)]
    text: String,
    /// The id of a shared file (`POST /api/files`) the message carries.
    #[serde(default)]
    file: Option<String>,
}

/// `room:history`: the page after `since`, or before `before`, or the latest.
#[derive(Debug, Deserialize)]
struct HistoryAsk {
    room: String,
    since: Option<String>,
    #[serde(default)]
    before: Option<String>,
}

/// A room message as it travels the bus to every worker.
#[derive(Serialize, Deserialize)]
struct ToldMessage {
    room: String,
    id: String,
    message: Value,
}

/// Room messages and their history, on this worker.
pub(super) struct Messages {
    ids: MessageIds,
    pub(super) history: History,
    /// Where room messages travel to every worker (its members and its copy of the history).
    bus: Option<Channel>,
    /// Messages of this worker's senders waiting to come back from the bus, by id (see `share`).
    ordering: Mutex<HashMap<String, oneshot::Sender<()>>>,
    /// Redis itself, which keeps each room's stream, when the app has `REDIS_URL`.
    store: Option<Store>,
    /// Shared files, which a message may carry.
    files: Option<Arc<crate::files::Files>>,
    /// Room messages and DMs sent (reported on `/health`).
    pub(super) delivered: Arc<AtomicU64>,
}

/// What sending and paging through room messages use.
pub(super) struct MessageEvents {
    pub(super) throttle: Arc<Throttle>,
    pub(super) messages: Arc<Messages>,
}

impl MessageEvents {
    pub(super) fn register(self: &Arc<Self>, table: &mut Dispatch) {
        table.on(self, event::MESSAGE, send);
        table.on(self, event::ROOM_HISTORY, page);
    }
}

/// `message {room, text, file?}` → `{ok, id, time}`; every member, the sender included, receives
/// `message {id, room, from, text, time, file?}`.
async fn send(socket: SocketRef<Adapter>, ev: Arc<MessageEvents>, data: Result<SendMessage, ParserError>) -> Reply {
    ev.throttle.spend(&socket, Spend::Message)?;
    let guest = guest_of(&socket)?;
    let SendMessage { room, text, file } = protocol::payload(data, "{room, text, file?}")?;
    // A socket is in its guest's own internal room too: not a room to send (and store) messages in.
    if !is_member(&socket, &room) {
        return Err(ChatError::NotInRoomToSend { room });
    }
    let file = ev.messages.attached(file.as_deref(), &text).await?;
    let (id, time) = (ev.messages.next_id(), unix_millis());
    let mut message = json!({ "id": id, "room": room, "from": guest, "text": text, "time": time });
    if let Some(file) = file {
        message["file"] = file;
    }
    ev.messages.share(&socket, &room, &id, message).await?;
    ev.messages.delivered.fetch_add(1, Ordering::Relaxed);
    Ok(json!({ "ok": true, "id": id, "time": time }))
}

/// `room:history {room, since?, before?}` → `{ok, room, messages, more}`.
async fn page(socket: SocketRef<Adapter>, ev: Arc<MessageEvents>, data: Result<HistoryAsk, ParserError>) -> Reply {
    ev.throttle.spend(&socket, Spend::Message)?;
    let HistoryAsk { room, since, before } = protocol::payload(data, "{room, since?, before?}")?;
    if !socket.rooms().iter().any(|r| r == &room) {
        return Err(ChatError::NotInRoom { room });
    }
    let page = ev.messages.page(&room, since.as_deref(), before.as_deref()).await;
    Ok(json!({ "ok": true, "room": room, "messages": page.messages, "more": page.more }))
}

impl Messages {
    pub(super) fn new(
        instance: Option<&str>,
        history: History,
        bus: Option<Channel>,
        store: Option<Store>,
        files: Option<Arc<crate::files::Files>>,
        delivered: Arc<AtomicU64>,
    ) -> Messages {
        Messages { ids: MessageIds::new(instance), history, bus, ordering: Mutex::default(), store, files, delivered }
    }

    pub(super) fn next_id(&self) -> String {
        self.ids.next()
    }

    fn ordering(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<()>>> {
        self.ordering.locked()
    }

    /// Follows the room messages of every worker (this one's included) until the worker stops:
    /// each is kept for recovery and delivered to this worker's members of its room.
    pub(super) async fn follow(&self, io: &SocketIo<Adapter>) {
        let Some(bus) = &self.bus else { return };
        bus.follow_each(QUEUED, |told: ToldMessage| {
            self.history.push(&told.room, &told.id, told.message.clone());
            if let Some(ordered) = self.ordering().remove(&told.id) {
                let _ = ordered.send(());
            }
            let room = io.of("/").map(|ns| ns.to(told.room).local());
            async move {
                // Before the namespace exists nobody here can be in the room.
                if let Some(room) = room
                    && let Err(e) = room.emit(event::MESSAGE, &told.message).await
                {
                    tracing::warn!(error = %e, "a room message could not be delivered here");
                }
            }
        })
        .await;
    }

    /// Delivers a room message to its members on every worker and keeps it for recovery, with one
    /// publication: each worker (this one included) takes it from the bus, keeps it, and emits it
    /// to its own members, so every worker keeps and delivers a room's messages in the same order
    /// (the bus's). Telling the copies apart from the adapter's broadcast cost two publications and
    /// three deliveries per message. With Redis, the room's stream has the message first, so an
    /// answer to it is always recorded after it, whichever host it was sent to.
    async fn share(&self, socket: &SocketRef<Adapter>, room: &str, id: &str, message: Value) -> Result<(), ChatError> {
        if let Some(store) = &self.store {
            store.append(room, &message).await;
        }
        match &self.bus {
            Some(bus) if !bus.is_solo() => {
                // Acknowledged once the bus has it in its order (it came back here): a reply sent
                // after the acknowledgement, from any worker, is then after it in every worker's
                // history. Acknowledged when the publication was only queued, a reply on another
                // worker could reach the bus first (a late joiner recovered the two the wrong way round).
                let (tx, rx) = oneshot::channel();
                self.ordering().insert(id.to_owned(), tx);
                bus.tell_in(room, &ToldMessage { room: room.to_owned(), id: id.to_owned(), message });
                if tokio::time::timeout(ORDERED_WITHIN, rx).await.is_err() {
                    self.ordering().remove(id);
                    tracing::debug!(room, id, "a message did not come back from the bus in time: acknowledged anyway");
                }
                Ok(())
            }
            _ => {
                self.history.push(room, id, message.clone());
                let delivery = socket.within(room.to_owned()).emit(event::MESSAGE, &message).await;
                delivery.map_err(|e| ChatError::NotBroadcast(e.to_string()))
            }
        }
    }

    /// One page of `room`'s history: after `since` (recovery: the earliest first), or before
    /// `before`, or the latest (a plain join). From Redis's stream when Redis is there, this
    /// worker's copy otherwise.
    pub(super) async fn page(&self, room: &str, since: Option<&str>, before: Option<&str>) -> history::Page {
        let retained = match &self.store {
            Some(store) => match store.since(room, since).await {
                Some(messages) => messages,
                None => self.history.since(room, since),
            },
            None => self.history.since(room, since),
        };
        match (since, before) {
            (Some(_), _) => history::page(retained, history::End::Oldest),
            (None, Some(before)) => {
                // An id this worker does not know (too old) has nothing before it here.
                let cut = retained.iter().position(|m| m["id"] == before).unwrap_or(0);
                history::page(retained.into_iter().take(cut).collect(), history::End::Newest)
            }
            (None, None) => history::page(retained, history::End::Newest),
        }
    }

    /// The shared file a message carries, checked to exist; the text may then be empty.
    pub(super) async fn attached(&self, file: Option<&str>, text: &str) -> Result<Option<Value>, ChatError> {
        let Some(id) = file else {
            checked_text(text)?;
            return Ok(None);
        };
        if !text.is_empty() {
            checked_text(text)?;
        }
        let files = self.files.as_ref().ok_or(ChatError::NoFiles)?;
        match files.attachment(id).await {
            Some(file) => Ok(Some(file)),
            None => Err(ChatError::NoSuchFile(id.to_owned())),
        }
    }
}

fn checked_text(text: &str) -> Result<(), ChatError> {
    if text.is_empty() || text.chars().count() > MAX_TEXT_CHARS {
        return Err(ChatError::BadText { max: MAX_TEXT_CHARS });
    }
    Ok(())
}

/// Message ids: `instance.pid.random-seq`, unique across a cluster and its hosts without
/// coordination (two hosts' workers may well have the same instance and pid, in containers).
struct MessageIds {
    prefix: String,
    next: AtomicU64,
}

impl MessageIds {
    fn new(instance: Option<&str>) -> MessageIds {
        let random = crate::session::random_secret().map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let prefix = format!("{}.{}.{random:08x}", instance.unwrap_or("0"), std::process::id());
        MessageIds { prefix, next: AtomicU64::new(1) }
    }

    fn next(&self) -> String {
        format!("{}-{}", self.prefix, self.next.fetch_add(1, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_ordered_within_a_worker_and_apart_between_two() {
        let (a, b) = (MessageIds::new(Some("1")), MessageIds::new(Some("1")));
        let (first, second) = (a.next(), a.next());
        assert!(first.starts_with(&format!("1.{}.", std::process::id())) && first.ends_with("-1"), "{first}");
        assert!(second.ends_with("-2"));
        assert_ne!(first, b.next(), "two workers of the same instance and pid still differ");
    }

    #[test]
    fn text_is_one_to_four_thousand_characters() {
        assert!(checked_text("hi").is_ok() && checked_text(&"é".repeat(MAX_TEXT_CHARS)).is_ok());
        assert_eq!(checked_text(""), Err(ChatError::BadText { max: MAX_TEXT_CHARS }));
        assert!(checked_text(&"x".repeat(MAX_TEXT_CHARS + 1)).is_err());
    }

    #[tokio::test]
    async fn pages_come_from_the_newest_or_after_since() {
        let messages = Messages::new(None, History::new(HISTORY_COUNT, HISTORY_AGE), None, None, None, Arc::default());
        for i in 1..=60 {
            messages.history.push("r", &format!("m{i}"), json!({ "id": format!("m{i}"), "text": "x" }));
        }
        let latest = messages.page("r", None, None).await;
        assert_eq!((latest.messages.len(), latest.more), (history::PAGE_COUNT, true));
        assert_eq!(latest.messages.last().map(|m| m["id"].clone()), Some(json!("m60")));
        let after = messages.page("r", Some("m55"), None).await;
        assert_eq!(
            after.messages.iter().map(|m| m["id"].clone()).collect::<Vec<_>>(),
            ["m56", "m57", "m58", "m59", "m60"]
        );
        let before = messages.page("r", None, Some("m3")).await;
        assert_eq!(before.messages.len(), 2, "m1 and m2");
        assert!(messages.page("r", None, Some("unknown")).await.messages.is_empty());
    }
}
