//! The local bus's wire format (see `chatctl`'s `bus` module for the broker): frames of a
//! big-endian `u32` length, an op byte and fields; strings are a `u16` length and UTF-8.

pub const OP_SUB: u8 = 1;
pub const OP_UNSUB: u8 = 2;
pub const OP_PUB: u8 = 3;
pub const OP_NUMSUB: u8 = 4;
pub const OP_NUMSUB_REPLY: u8 = 5;
pub const OP_MSG: u8 = 6;
/// Largest frame accepted.
pub const MAX_FRAME: usize = 16 << 20;
/// Bytes before a frame's fields: the `u32` length and the op byte.
pub const HEADER_BYTES: usize = 4 + 1;
/// Bytes before a string's UTF-8: its `u16` length.
pub const STR_LEN_BYTES: usize = 2;

/// Reads a `u16`-prefixed string at the start of `bytes`; returns it and the rest.
pub fn take_str(bytes: &[u8]) -> Option<(String, &[u8])> {
    let len = usize::from(u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]));
    let text = std::str::from_utf8(bytes.get(STR_LEN_BYTES..STR_LEN_BYTES + len)?).ok()?;
    Some((text.to_owned(), &bytes[STR_LEN_BYTES + len..]))
}

/// Appends a `u16`-prefixed string.
pub fn put_str(frame: &mut Vec<u8>, text: &str) {
    let len = u16::try_from(text.len()).unwrap_or(u16::MAX);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&text.as_bytes()[..usize::from(len)]);
}

/// A whole frame (length prefix included) from its op and body.
pub fn frame(op: u8, body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(HEADER_BYTES + body.len());
    frame.extend_from_slice(&(body.len() as u32 + 1).to_be_bytes());
    frame.push(op);
    frame.extend_from_slice(body);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_round_trip_and_truncated_input_is_refused() {
        let mut body = Vec::new();
        put_str(&mut body, "socket.io#/#room");
        body.extend_from_slice(b"payload");
        let (chan, rest) = take_str(&body).expect("decodes");
        assert_eq!((chan.as_str(), rest), ("socket.io#/#room", &b"payload"[..]));
        assert_eq!(take_str(&body[..5]), None);
        assert_eq!(take_str(&[0]), None);
        assert_eq!(take_str(&[0, 2, 0xff, 0xfe]), None, "not UTF-8");
    }

    #[test]
    fn a_frame_counts_its_op_byte_in_its_length() {
        assert_eq!(frame(OP_PUB, b"ab"), vec![0, 0, 0, 3, OP_PUB, b'a', b'b']);
    }
}
