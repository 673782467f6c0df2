//! What a guest may name and join: display names, room names, how many rooms at once, and how
//! often a token puts its guest back in them. Pure checks, unit-tested here.

use crate::limits::Rate;

/// Rooms the server uses itself start with this; clients cannot name one so.
pub(super) const INTERNAL: char = '@';

pub(super) const MAX_NAME_CHARS: usize = 32;
pub(super) const MAX_ROOM_CHARS: usize = 64;
/// Rooms one socket may be in (its own internal rooms aside).
pub(super) const MAX_ROOMS: usize = 20;
/// Rooms a session token restores per guest: two full restores at once, then 20 a minute.
pub(super) const RESTORE_RATE: Rate = Rate { per_second: MAX_ROOMS as f64 / 60.0, burst: 2.0 * MAX_ROOMS as f64 };

/// Whether `name` may be a guest's display name (once trimmed).
pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().count() <= MAX_NAME_CHARS && !name.chars().any(unseen)
}

/// Whether `room` may be a room's name.
pub(super) fn valid_room(room: &str) -> bool {
    !room.is_empty()
        && room.chars().count() <= MAX_ROOM_CHARS
        && !room.starts_with(INTERNAL)
        && !room.chars().any(unseen)
}

/// Characters that are not shown but change what is: control characters, bidi controls (a room
/// named "\u{202E}nimda" reads "admin") and zero-width ones. Refused in names, never in message text.
fn unseen(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_and_show_what_they_are() {
        assert!(valid_name("ann"));
        assert!(valid_name(&"é".repeat(MAX_NAME_CHARS)));
        assert!(!valid_name(&"a".repeat(MAX_NAME_CHARS + 1)));
        assert!(!valid_name(""));
        assert!(!valid_name("\u{202E}nimda"), "a bidi override reads backwards");
        assert!(!valid_name("a\u{200B}b"), "zero-width");
    }

    #[test]
    fn room_names_are_visible_and_not_internal() {
        assert!(valid_room("lobby") && valid_room("café ☕"));
        assert!(!valid_room("") && !valid_room("@guest:g_1") && !valid_room(&"r".repeat(MAX_ROOM_CHARS + 1)));
        assert!(!valid_room("lob\u{0007}by") && !valid_room("\u{FEFF}lobby"));
    }
}
