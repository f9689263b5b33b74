//! The one frame every zcluster message travels in: a fixed prefix
//! (protocol, signature, header) and then the body.
//!
//! | bytes | content |
//! | --- | --- |
//! | 0..10 | protocol name and version, `zcluster/6` |
//! | 10 | S, the signature's length: 0 on toolkit sockets, [`SIGNATURE_BYTES`] on hub sockets |
//! | 11..11+S | signature: a nonce and an HMAC-SHA256 tag ([`auth`](crate::auth)) |
//! | 11+S..28+S | [`Header`]: kind (1 byte), job and id (8 bytes each, little endian) |
//! | 28+S.. | body: the record named by the kind, bincode |
//!
//! One frame rather than four because libzmq's cost is per frame (ypipe
//! writes, `msg_t` set-up, the encoder and decoder on the I/O thread, a
//! `ZMQ_RCVMORE` per part): a small message paid it four times.

use super::{check_size, printable, Header, MessageError, MessageKind, ResultStatus};
use super::{MAX_MESSAGE_BYTES, PROTOCOL, PROTOCOL_NAME};
use crate::auth::{Verified, Verifier, SIGNATURE_BYTES};

/// Bytes of a [`Header`] on the wire: kind, job, id.
pub const HEADER_BYTES: usize = 1 + 8 + 8;

/// Bytes before the signature: the protocol and the signature's length.
const SIGNATURE_AT: usize = PROTOCOL.len() + 1;

/// The longest prefix (a signed message's): what a frame holds beyond its
/// body.
pub const MAX_PREFIX_BYTES: usize = SIGNATURE_AT + SIGNATURE_BYTES + HEADER_BYTES;

impl MessageKind {
    /// The kind's byte in the header. Exhaustive on purpose: a new kind
    /// does not compile until it has a code of its own.
    fn code(self) -> u8 {
        match self {
            MessageKind::Request => 0,
            MessageKind::Result(ResultStatus::Ok) => 1,
            MessageKind::Result(ResultStatus::Fail) => 2,
            MessageKind::Command => 3,
            MessageKind::Reply => 4,
            MessageKind::Control => 5,
            MessageKind::Requests => 6,
            MessageKind::Results => 7,
            MessageKind::Tasks => 8,
            MessageKind::TaskResults => 9,
            MessageKind::Hello => 10,
            MessageKind::Welcome => 11,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => MessageKind::Request,
            1 => MessageKind::Result(ResultStatus::Ok),
            2 => MessageKind::Result(ResultStatus::Fail),
            3 => MessageKind::Command,
            4 => MessageKind::Reply,
            5 => MessageKind::Control,
            6 => MessageKind::Requests,
            7 => MessageKind::Results,
            8 => MessageKind::Tasks,
            9 => MessageKind::TaskResults,
            10 => MessageKind::Hello,
            11 => MessageKind::Welcome,
            _ => return None,
        })
    }
}

impl Header {
    /// The header as it travels: fixed size, so it is read without a
    /// decoder and signed as these bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_BYTES] {
        let mut bytes = [0u8; HEADER_BYTES];
        bytes[0] = self.kind.code();
        bytes[1..9].copy_from_slice(&self.job.to_le_bytes());
        bytes[9..17].copy_from_slice(&self.id.to_le_bytes());
        bytes
    }

    /// Reads a header from its [`HEADER_BYTES`] bytes; anything else (another
    /// length, an unknown kind) is an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, MessageError> {
        let bytes: &[u8; HEADER_BYTES] = bytes
            .try_into()
            .map_err(|_| MessageError::HeaderSize { size: bytes.len() })?;
        let kind =
            MessageKind::from_code(bytes[0]).ok_or(MessageError::UnknownKind { code: bytes[0] })?;
        let field = |at: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(word)
        };
        Ok(Header {
            kind,
            job: field(1),
            id: field(9),
        })
    }
}

/// A frame cut at the fields of its prefix; the protocol is checked, the
/// rest is not.
#[derive(Debug, Clone, Copy)]
pub struct Parts<'a> {
    /// The signature (empty when unsigned).
    pub signature: &'a [u8],
    /// The header's [`HEADER_BYTES`] bytes.
    pub header: &'a [u8],
    /// The body.
    pub body: &'a [u8],
}

impl<'a> Parts<'a> {
    /// Cuts `frame` at its fields: an error if it is not zcluster's
    /// protocol and version, or too short for the prefix it announces.
    pub fn of(frame: &'a [u8]) -> Result<Self, MessageError> {
        check_protocol(frame)?;
        let Some(&signature_len) = frame.get(PROTOCOL.len()) else {
            return Err(MessageError::Truncated {
                size: frame.len(),
                prefix: SIGNATURE_AT,
            });
        };
        let signature_len = usize::from(signature_len);
        let header_at = SIGNATURE_AT + signature_len;
        let body_at = header_at + HEADER_BYTES;
        if frame.len() < body_at {
            return Err(MessageError::Truncated {
                size: frame.len(),
                prefix: body_at,
            });
        }
        Ok(Parts {
            signature: &frame[SIGNATURE_AT..header_at],
            header: &frame[header_at..body_at],
            body: &frame[body_at..],
        })
    }
}

/// Whether `frame` starts with this protocol and version: another version
/// of zcluster (its name, then another number) is told apart from a
/// stranger.
pub(super) fn check_protocol(frame: &[u8]) -> Result<(), MessageError> {
    // This version, followed by something other than a digit (the
    // signature's length, or nothing): every message a peer of this
    // version sends, decided in a comparison.
    if frame.starts_with(PROTOCOL)
        && frame
            .get(PROTOCOL.len())
            .is_none_or(|next| !next.is_ascii_digit())
    {
        return Ok(());
    }
    if !frame.starts_with(PROTOCOL_NAME) {
        return Err(MessageError::NotZcluster {
            first: printable(frame),
        });
    }
    let digits = frame[PROTOCOL_NAME.len()..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let version = &frame[..PROTOCOL_NAME.len() + digits];
    if version == PROTOCOL {
        Ok(())
    } else {
        Err(MessageError::WrongVersion {
            got: printable(version),
        })
    }
}

/// Checks a received frame: protocol, size, then the signature (with a
/// verifier: it must verify; without one: there must be none), and only
/// then reads the header. Returns the header, where the body starts and
/// what the verifier found.
pub(super) fn check(
    frame: &[u8],
    verifier: Option<&mut Verifier>,
) -> Result<(Header, usize, Option<Verified>), MessageError> {
    check_size("message", frame.len(), MAX_MESSAGE_BYTES)?;
    let parts = Parts::of(frame)?;
    let verified = match verifier {
        Some(verifier) => {
            Some(verifier.verify(parts.signature, PROTOCOL, parts.header, parts.body)?)
        }
        None if !parts.signature.is_empty() => return Err(MessageError::UnexpectedSignature),
        None => None,
    };
    let header = Header::from_bytes(parts.header)?;
    Ok((header, frame.len() - parts.body.len(), verified))
}

/// The frame of a message: its prefix (with `signature`, which its length
/// byte bounds to 255 bytes) and `body`, written once into a ZeroMQ message
/// so sending it copies nothing more.
pub(super) fn build(
    header: &[u8; HEADER_BYTES],
    signature: &[u8],
    body: &[u8],
) -> Result<zmq::Message, MessageError> {
    build_with(header, signature, body.len(), |out| {
        out.copy_from_slice(body);
        Ok(())
    })
}

/// Like [`build`], with the body's `body_len` bytes written in place by
/// `write` (an encoder that knows its size beforehand): the body is never
/// in a buffer of its own.
pub(super) fn build_with(
    header: &[u8; HEADER_BYTES],
    signature: &[u8],
    body_len: usize,
    write: impl FnOnce(&mut [u8]) -> Result<(), MessageError>,
) -> Result<zmq::Message, MessageError> {
    let signature_len = u8::try_from(signature.len()).map_err(|_| MessageError::TooLarge {
        part: "signature",
        size: signature.len(),
        limit: usize::from(u8::MAX),
    })?;
    let header_at = SIGNATURE_AT + signature.len();
    let body_at = header_at + HEADER_BYTES;
    let mut message = zmq::Message::with_size(body_at + body_len);
    // One slice for all the writes: each index into the message itself is
    // two calls into libzmq.
    let frame: &mut [u8] = &mut message;
    frame[..PROTOCOL.len()].copy_from_slice(PROTOCOL);
    frame[PROTOCOL.len()] = signature_len;
    frame[SIGNATURE_AT..header_at].copy_from_slice(signature);
    frame[header_at..body_at].copy_from_slice(header);
    write(&mut frame[body_at..])?;
    Ok(message)
}

/// The frame of a message as bytes, with any `signature` (a raw peer's,
/// in a test or a tool: the crate's own sockets sign for themselves).
pub fn encode_frame(
    header: &Header,
    signature: &[u8],
    body: &[u8],
) -> Result<Vec<u8>, MessageError> {
    Ok(build(&header.to_bytes(), signature, body)?.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_code() {
        let kinds = [
            MessageKind::Request,
            MessageKind::Result(ResultStatus::Ok),
            MessageKind::Result(ResultStatus::Fail),
            MessageKind::Command,
            MessageKind::Reply,
            MessageKind::Control,
            MessageKind::Requests,
            MessageKind::Results,
            MessageKind::Tasks,
            MessageKind::TaskResults,
            MessageKind::Hello,
            MessageKind::Welcome,
        ];
        for kind in kinds {
            assert_eq!(MessageKind::from_code(kind.code()), Some(kind));
        }
        let header = Header {
            kind: MessageKind::Tasks,
            job: u64::MAX,
            id: 1 << 40,
        };
        assert_eq!(Header::from_bytes(&header.to_bytes()).unwrap(), header);
        assert!(matches!(
            Header::from_bytes(&[200; HEADER_BYTES]),
            Err(MessageError::UnknownKind { code: 200 })
        ));
        assert!(matches!(
            Header::from_bytes(&[0; 3]),
            Err(MessageError::HeaderSize { size: 3 })
        ));
    }

    #[test]
    fn short_and_alien_frames_are_errors() {
        let header = Header {
            kind: MessageKind::Request,
            job: 1,
            id: 2,
        };
        let frame = encode_frame(&header, &[], b"body").unwrap();
        assert_eq!(frame.len(), SIGNATURE_AT + HEADER_BYTES + 4);
        for cut in 0..SIGNATURE_AT + HEADER_BYTES {
            assert!(check(&frame[..cut], None).is_err(), "cut at {cut}");
        }
        // A signature length that runs past the end.
        let mut long_signature = frame.clone();
        long_signature[PROTOCOL.len()] = 255;
        assert!(matches!(
            check(&long_signature, None),
            Err(MessageError::Truncated { .. })
        ));
        assert!(matches!(
            check(b"zcluster/60 and more", None),
            Err(MessageError::WrongVersion { got }) if got == "zcluster/60"
        ));
        assert!(matches!(
            check(PROTOCOL, None),
            Err(MessageError::Truncated { .. })
        ));
        assert!(matches!(
            check(b"zcluster/5", None),
            Err(MessageError::WrongVersion { got }) if got == "zcluster/5"
        ));
        assert!(matches!(
            check(b"GET / HTTP/1.1", None),
            Err(MessageError::NotZcluster { .. })
        ));
        assert!(encode_frame(&header, &[0; 256], b"").is_err());
    }
}
