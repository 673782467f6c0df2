//! Direct messages between two guests (`dm`), to every tab of each, on any worker.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Deserialize;
use serde_json::json;
use socketioxide::ParserError;
use socketioxide::extract::SocketRef;

use super::guests::{connected, guest_of, guest_room};
use super::protocol::{self, ChatError, Reply, event};
use super::throttle::Spend;
use super::{Chat, now_ms};
use crate::bus::Adapter;

#[derive(Debug, Deserialize)]
struct Direct {
    to: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    file: Option<String>,
}

pub(super) fn handlers(socket: &SocketRef<Adapter>, chat: &Arc<Chat>) {
    protocol::on(socket, chat, event::DM, send);
}

/// `dm {to, text, file?}` → `{ok, id, time}`; the addressee's sockets and the sender's receive
/// `dm {id, from, to, text, time, file?}`.
async fn send(socket: SocketRef<Adapter>, chat: Arc<Chat>, data: Result<Direct, ParserError>) -> Reply {
    chat.throttle.spend(&socket, Spend::Message)?;
    let guest = guest_of(&socket)?;
    let Direct { to, text, file } = protocol::payload(data, "{to, text, file?}")?;
    let file = chat.messages.attached(file.as_deref(), &text).await?;
    if !connected(&socket, &to).await {
        return Err(ChatError::NotConnected(to));
    }
    let (id, time) = (chat.messages.next_id(), now_ms());
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
    chat.messages.delivered.fetch_add(1, Ordering::Relaxed);
    Ok(json!({ "ok": true, "id": id, "time": time }))
}
