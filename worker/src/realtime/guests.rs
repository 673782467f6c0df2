//! Who a socket is: a guest with a display name and an id that stays the same across its tabs
//! and reconnections (`sessions` keeps it), and the internal rooms that find a guest's sockets.

use serde::{Deserialize, Serialize};
use socketioxide::extract::SocketRef;

use super::protocol::ChatError;
use super::rules::{INTERNAL, MAX_NAME_CHARS, valid_name};
use crate::bus::{Adapter, Hearing};

/// A guest: who a socket is, once it has joined with a display name.
#[derive(Clone, Debug, Serialize)]
pub struct Guest {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct JoinGuest {
    pub(super) name: String,
}

/// The room every socket of a guest is in, for direct messages and calls.
pub(super) fn guest_room(id: &str) -> String {
    format!("{INTERNAL}guest:{id}")
}

/// Makes the socket a guest (or renames it): in its guest's room (DMs and calls reach it there)
/// and the room that names it.
pub(super) async fn join_guest(
    socket: &SocketRef<Adapter>,
    hearing: &Hearing,
    join: JoinGuest,
) -> Result<Guest, ChatError> {
    let name = join.name.trim();
    if !valid_name(name) {
        return Err(ChatError::BadName { max: MAX_NAME_CHARS });
    }
    let guest = match socket.extensions.get::<Guest>() {
        // Renaming keeps the id: the guest is the same person.
        Some(existing) => {
            socket.leave(who_room(&existing));
            Guest { id: existing.id, name: name.to_owned() }
        }
        None => Guest { id: format!("g_{}", socket.id), name: name.to_owned() },
    };
    hearing.join(socket, &[guest_room(&guest.id)]).await;
    // Never broadcast to (only asked which rooms its sockets are in): not a room to hear.
    socket.join(who_room(&guest));
    socket.extensions.insert(guest.clone());
    Ok(guest)
}

/// The guest a socket is, or the refusal for one that has not joined.
pub(super) fn guest_of(socket: &SocketRef<Adapter>) -> Result<Guest, ChatError> {
    socket.extensions.get::<Guest>().ok_or(ChatError::NotAGuest)
}

/// Whether any socket of guest `id` is connected, on any worker.
pub(super) async fn connected(socket: &SocketRef<Adapter>, id: &str) -> bool {
    socket.within(guest_room(id)).fetch_sockets().await.is_ok_and(|sockets| !sockets.is_empty())
}

/// The internal room that names a guest: every worker can list who is in a room by asking for the
/// rooms of its sockets (one cluster-wide query), where socket extensions stay on their worker.
pub(super) fn who_room(guest: &Guest) -> String {
    format!("{INTERNAL}who:{}:{}", guest.id, guest.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guests_internal_rooms() {
        let ann = Guest { id: "g_1".into(), name: "ann".into() };
        assert_eq!((guest_room(&ann.id), who_room(&ann)), ("@guest:g_1".into(), "@who:g_1:ann".into()));
    }
}
