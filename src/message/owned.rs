//! Owned strings and bytes decoded by borrowing from the message first.
//!
//! bincode's serde decoder reads a `String` or a `Vec<u8>` field by
//! allocating a zeroed buffer and reading into it, then (for a string)
//! checking it: about 280 instructions for a field of a few bytes, three
//! of them per result (payload, host, worker) and two more per metadata
//! entry. Asked for a borrowed `&str` or `&[u8]` instead, it hands out a
//! slice of the message, which is copied once into a buffer of the right
//! size. These functions, used with `#[serde(deserialize_with)]` on the
//! hot messages' fields, ask for that; with any other format (JSON for
//! `--json` output) they accept owned and borrowed values alike.

use std::fmt;

use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::Metadata;

struct StringVisitor;

impl Visitor<'_> for StringVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
}

/// A `String`, from a borrowed `&str` where the format lends one.
pub(crate) fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    d.deserialize_str(StringVisitor)
}

/// A string for a map's key or value.
struct Owned(String);

impl<'de> Deserialize<'de> for Owned {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string(d).map(Owned)
    }
}

/// An `Option<String>`, its string as [`string`].
pub(crate) fn optional_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<Owned>::deserialize(d)?.map(|Owned(s)| s))
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bytes")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
        Ok(v.as_bytes().to_vec())
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Vec<u8>, E> {
        Ok(v.into_bytes())
    }

    /// Formats without a bytes type (JSON) write bytes as a list of numbers.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(byte) = seq.next_element()? {
            out.push(byte);
        }
        Ok(out)
    }
}

/// A `Vec<u8>` written with `serde_bytes`, from a borrowed `&[u8]` where
/// the format lends one.
pub(crate) fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    d.deserialize_bytes(BytesVisitor)
}

struct MetadataVisitor;

impl<'de> Visitor<'de> for MetadataVisitor {
    type Value = Metadata;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of strings")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Metadata, A::Error> {
        let mut out = Metadata::new();
        while let Some((Owned(key), Owned(value))) = map.next_entry()? {
            out.insert(key, value);
        }
        Ok(out)
    }
}

/// [`Metadata`], its keys and values as [`string`].
pub(crate) fn metadata<'de, D: Deserializer<'de>>(d: D) -> Result<Metadata, D::Error> {
    d.deserialize_map(MetadataVisitor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{ClusterRequest, ClusterResult, ResultMetadata, ResultStatus};
    use std::time::{Duration, UNIX_EPOCH};

    fn result() -> ClusterResult {
        ClusterResult {
            id: 7,
            status: ResultStatus::Fail,
            payload: vec![0, 1, 255],
            request_metadata: Metadata::from([("zcluster.job".into(), "1".into())]),
            metadata: ResultMetadata {
                host: "héte".into(),
                pid: 42,
                worker: "slot-1".into(),
                started: UNIX_EPOCH + Duration::from_secs(5),
                elapsed: Duration::from_millis(3),
            },
            exception: Some("boom".into()),
        }
    }

    /// What the fields decode to is what was encoded, through the wire's
    /// bincode (borrowed) and through JSON (owned strings, bytes as lists).
    #[test]
    fn the_borrowing_fields_round_trip_in_bincode_and_json() {
        let result = result();
        let wire = bincode::serde::encode_to_vec(&result, crate::message::CONFIG).unwrap();
        let (back, _): (ClusterResult, usize) =
            bincode::serde::decode_from_slice(&wire, crate::message::CONFIG).unwrap();
        assert_eq!(back, result);
        let json = serde_json::to_string(&result).unwrap();
        assert_eq!(
            serde_json::from_str::<ClusterResult>(&json).unwrap(),
            result
        );
        let request = ClusterRequest::new(3, b"in".to_vec()).with_metadata("k", "v");
        let json = serde_json::to_string(&request).unwrap();
        assert_eq!(
            serde_json::from_str::<ClusterRequest>(&json).unwrap(),
            request
        );
        let no_exception = ClusterResult {
            exception: None,
            ..result
        };
        let wire = bincode::serde::encode_to_vec(&no_exception, crate::message::CONFIG).unwrap();
        let (back, _): (ClusterResult, usize) =
            bincode::serde::decode_from_slice(&wire, crate::message::CONFIG).unwrap();
        assert_eq!(back, no_exception);
    }

    /// A string that is not UTF-8 is refused, as before.
    #[test]
    fn a_string_that_is_not_utf8_is_refused() {
        let mut wire = bincode::serde::encode_to_vec(result(), crate::message::CONFIG).unwrap();
        let at = wire
            .windows(5)
            .position(|w| w == "héte".as_bytes())
            .unwrap();
        wire[at + 1] = 0xff;
        let decoded: Result<(ClusterResult, usize), _> =
            bincode::serde::decode_from_slice(&wire, crate::message::CONFIG);
        assert!(decoded.is_err());
    }
}
