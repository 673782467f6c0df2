//! Direct messages between two guests (`dm`), to every tab of each, on any worker.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Deserialize;
use serde_json::json;
use socketioxide::ParserError;
use socketioxide::extract::SocketRef;

use chat_shared::time::unix_millis;

use super::guests::{connected, guest_of, guest_room};
use super::messages::MessageEvents;
use super::protocol::{self, ChatError, Dispatch, Reply, event};
use super::throttle::Spend;
use crate::bus::Adapter;

#[derive(Debug, Deserialize)]
struct Direct {
    to: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    file: Option<String>,
}

/// A direct message uses what a room message does (the rate limits, the ids, shared files, the
/// delivery count), but not the bus's ordering or the history.
pub(super) fn register(table: &mut Dispatch, ev: &Arc<MessageEvents>) {
    table.on(ev, event::DM, send);
}

/// `dm {to, text, file?}` → `{ok, id, time}`; the addressee's sockets and the sender's receive
/// `dm {id, from, to, text, time, file?}`.
async fn send(socket: SocketRef<Adapter>, ev: Arc<MessageEvents>, data: Result<Direct, ParserError>) -> Reply {
    ev.throttle.spend(&socket, Spend::Message)?;
    let guest = guest_of(&socket)?;
    let Direct { to, text, file } = protocol::payload(data, "{to, text, file?}")?;
    let file = ev.messages.attached(file.as_deref(), &text).await?;
    if !connected(&socket, &to).await {
        return Err(ChatError::NotConnected(to));
    }
    let (id, time) = (ev.messages.next_id(), unix_millis());
    let mut message = json!({ "id": id, "from": guest, "to": to, "text": text, "time": time });
    if let Some(file) = file {
        message["file"] = file;
    }
    // The addressee, and the sender's other tabs.
    socket
        .within(guest_room(&to))
        .within(guest_room(&guest.id))
        .emit(event::DM, &message)
        .await
        .map_err(|e| ChatError::Undelivered(e.to_string()))?;
    ev.messages.delivered.fetch_add(1, Ordering::Relaxed);
    Ok(json!({ "ok": true, "id": id, "time": time }))
}
