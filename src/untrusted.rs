//! Showing bytes that came from the network in a log line or an error.
//!
//! A routing identity, a host name or a command name is chosen by the
//! peer that sent it, and a peer without the key can send any identity.
//! Written raw into a log, a newline forges a log line and terminal
//! escapes (`ESC [ 2 J`) act on whoever reads the log on a terminal; a
//! megabyte of it fills the log. [`escape`] makes such bytes safe to show:
//! printable ASCII stays as it is, everything else becomes `\xNN`, and
//! the result is bounded.

/// The most bytes of one untrusted value shown; the rest is cut off and
/// marked with an ellipsis. Enough for any honest identity, host name or
/// command name.
pub const MAX_SHOWN_BYTES: usize = 64;

/// The most bytes of an error text shown by [`escape_error`]: an error
/// made from a peer's bytes may quote them, at any length.
pub const MAX_SHOWN_ERROR_BYTES: usize = 512;

/// `bytes` made safe for a log line: printable ASCII (space to `~`) kept,
/// a backslash doubled (so `\x1b` typed by a peer cannot pass for an
/// escaped byte), every other byte written `\xNN`; at most
/// [`MAX_SHOWN_BYTES`] of the input, then `…` if there was more.
///
/// ```
/// use zcluster::untrusted::escape;
/// assert_eq!(escape(b"engine-7"), "engine-7");
/// assert_eq!(escape(b"a\nb\x1b[2J"), "a\\x0ab\\x1b[2J");
/// ```
pub fn escape(bytes: &[u8]) -> String {
    escape_at_most(bytes, MAX_SHOWN_BYTES)
}

/// Like [`escape`], showing at most `limit` bytes of the input (an error
/// message quoting a frame wants fewer).
pub fn escape_at_most(bytes: &[u8], limit: usize) -> String {
    let shown = &bytes[..bytes.len().min(limit)];
    let mut out = String::with_capacity(shown.len() + 3);
    for &byte in shown {
        match byte {
            b'\\' => out.push_str("\\\\"),
            b' '..=b'~' => out.push(char::from(byte)),
            _ => out.push_str(&format!("\\x{byte:02x}")),
        }
    }
    if bytes.len() > shown.len() {
        out.push('…');
    }
    out
}

/// An error whose text may quote a peer's bytes (a decoder's message
/// about a bad value, say), made safe for a log line like [`escape`]
/// does, bounded at [`MAX_SHOWN_ERROR_BYTES`].
pub fn escape_error(error: &impl std::fmt::Display) -> String {
    escape_at_most(error.to_string().as_bytes(), MAX_SHOWN_ERROR_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_ascii_is_kept() {
        let all: String = (b' '..=b'~')
            .filter(|&b| b != b'\\')
            .map(char::from)
            .collect();
        assert_eq!(escape_at_most(all.as_bytes(), all.len()), all);
    }

    #[test]
    fn controls_escapes_and_non_ascii_become_hex() {
        assert_eq!(escape(b"evil\nINFO forged"), "evil\\x0aINFO forged");
        assert_eq!(escape(b"\x1b[2J\r\t\0\x7f"), "\\x1b[2J\\x0d\\x09\\x00\\x7f");
        assert_eq!(escape("é".as_bytes()), "\\xc3\\xa9");
        assert_eq!(escape(b"a\\x1bb"), "a\\\\x1bb");
    }

    #[test]
    fn every_byte_comes_out_printable_ascii() {
        let all: Vec<u8> = (0..=255u8).collect();
        for chunk in all.chunks(MAX_SHOWN_BYTES) {
            let shown = escape(chunk);
            assert!(shown.bytes().all(|b| (b' '..=b'~').contains(&b)), "{shown}");
        }
    }

    #[test]
    fn error_texts_are_escaped_and_bounded() {
        let text = format!("bad value `x\n{}`", "y".repeat(MAX_SHOWN_ERROR_BYTES));
        let shown = escape_error(&text);
        assert!(shown.starts_with("bad value `x\\x0ay"), "{shown}");
        assert!(shown.ends_with('…'), "{shown}");
        assert_eq!(shown.len(), MAX_SHOWN_ERROR_BYTES + 3 + '…'.len_utf8());
    }

    #[test]
    fn long_values_are_cut_with_an_ellipsis() {
        let long = vec![b'a'; 10 * MAX_SHOWN_BYTES];
        let shown = escape(&long);
        assert_eq!(shown, format!("{}…", "a".repeat(MAX_SHOWN_BYTES)));
        assert_eq!(
            escape(&long[..MAX_SHOWN_BYTES]),
            "a".repeat(MAX_SHOWN_BYTES)
        );
        assert_eq!(escape_at_most(b"\n\n\n", 2), "\\x0a\\x0a…");
        assert_eq!(escape(b""), "");
    }
}
