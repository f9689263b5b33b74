//! The bodies of the two hot records, [`ClusterRequest`] and
//! [`ClusterResult`], written and read by hand in exactly the bytes bincode
//! gives them (the wire's configuration: little endian, variable-length
//! integers, the size limit), without serde in between.
//!
//! Through serde a result costs its sink about 1,150 instructions to decode
//! and its worker about 680 to encode: a visitor call, a `Result` and a
//! limit check per field, and the `SystemTime` and `Duration` structs field
//! by field. Here a field is a few loads. The bytes are the same, so
//! nothing on the wire moves and every other reader (a device, the hub, a
//! peer that decodes with serde) is unaffected; the tests hold both codecs
//! to the same bytes, and to the same answer (the same value or an error)
//! on arbitrary input.
//!
//! bincode's rules, followed here to the letter:
//!
//! - an unsigned integer is one byte below 251, else a marker (251, 252,
//!   253 for 2, 4, 8 little-endian bytes) and the value; a `u32` refuses
//!   the 8-byte marker, a `u64` the 16-byte one (254); a longer form than
//!   needed is accepted;
//! - a string or byte string is its length (as a `u64`) and its bytes; a
//!   map its entry count and its entries; an `Option` one byte, 0 or 1; an
//!   enum's variant its index as a `u32`;
//! - `SystemTime` and `Duration` are seconds (`u64`) and nanoseconds
//!   (`u32`), refused where serde refuses them (a sum that overflows);
//! - every integer and every length claims bytes against the limit (8 for
//!   a `u64`, 4 for a `u32`, 1 for a `u8`, a string's length), and the
//!   total must stay within [`MAX_MESSAGE_BYTES`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bincode::error::DecodeError;

use super::{
    ClusterRequest, ClusterResult, MessageError, Metadata, ResultMetadata, ResultStatus,
    MAX_MESSAGE_BYTES,
};

/// The markers of bincode's variable-length integers.
const U16_MARKER: u8 = 251;
const U32_MARKER: u8 = 252;
const U64_MARKER: u8 = 253;

/// A result's fields, borrowed: what a worker writes without first making
/// a [`ClusterResult`] of owned copies (its host and name, the request's
/// metadata).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResultRef<'a> {
    pub id: u64,
    pub status: ResultStatus,
    pub payload: &'a [u8],
    pub request_metadata: &'a Metadata,
    pub host: &'a str,
    pub pid: u32,
    pub worker: &'a str,
    pub started: SystemTime,
    pub elapsed: Duration,
    pub exception: Option<&'a str>,
}

impl<'a> From<&'a ClusterResult> for ResultRef<'a> {
    fn from(result: &'a ClusterResult) -> Self {
        ResultRef {
            id: result.id,
            status: result.status,
            payload: &result.payload,
            request_metadata: &result.request_metadata,
            host: &result.metadata.host,
            pid: result.metadata.pid,
            worker: &result.metadata.worker,
            started: result.metadata.started,
            elapsed: result.metadata.elapsed,
            exception: result.exception.as_deref(),
        }
    }
}

/// Where an encoder writes: a growing buffer, a counter (the exact size of
/// a body before it is written), or a slice of that size (a ZeroMQ
/// message's, so the body is written once, in place).
pub(crate) trait Out {
    /// Appends `bytes`.
    fn put(&mut self, bytes: &[u8]);
}

impl Out for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Counts what would be written.
#[derive(Debug, Default)]
pub(crate) struct Count(pub usize);

impl Out for Count {
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
}

/// Fills a slice of exactly the size [`Count`] found, front to back.
#[derive(Debug)]
pub(crate) struct Fill<'a>(pub &'a mut [u8]);

impl Out for Fill<'_> {
    fn put(&mut self, bytes: &[u8]) {
        // Sized by the same encoder beforehand: a shorter slice is a bug
        // here, not something a peer can cause.
        let (head, rest) = std::mem::take(&mut self.0).split_at_mut(bytes.len());
        head.copy_from_slice(bytes);
        self.0 = rest;
    }
}

fn put_u64(out: &mut impl Out, value: u64) {
    if value < u64::from(U16_MARKER) {
        out.put(&[value as u8]);
    } else if let Ok(value) = u16::try_from(value) {
        let [a, b] = value.to_le_bytes();
        out.put(&[U16_MARKER, a, b]);
    } else if let Ok(value) = u32::try_from(value) {
        let [a, b, c, d] = value.to_le_bytes();
        out.put(&[U32_MARKER, a, b, c, d]);
    } else {
        let [a, b, c, d, e, f, g, h] = value.to_le_bytes();
        out.put(&[U64_MARKER, a, b, c, d, e, f, g, h]);
    }
}

fn put_bytes(out: &mut impl Out, bytes: &[u8]) {
    put_u64(out, bytes.len() as u64);
    out.put(bytes);
}

fn put_metadata(out: &mut impl Out, metadata: &Metadata) {
    put_u64(out, metadata.len() as u64);
    for (key, value) in metadata {
        put_bytes(out, key.as_bytes());
        put_bytes(out, value.as_bytes());
    }
}

/// Seconds and nanoseconds, as serde writes a `Duration`.
fn put_duration(out: &mut impl Out, duration: Duration) {
    put_u64(out, duration.as_secs());
    put_u64(out, u64::from(duration.subsec_nanos()));
}

/// A record to write: a request, or a result's fields.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Record<'a> {
    /// A request, as the ventilator sends it.
    Request(&'a ClusterRequest),
    /// A result, as a worker sends it, with its start time as time since
    /// the Unix epoch (see [`Record::result`]).
    Result(ResultRef<'a>, Duration),
}

impl<'a> Record<'a> {
    /// A result to write: an error only for a start time before the Unix
    /// epoch, which serde refuses too. The time is read once here rather
    /// than at each of the two passes (size, then bytes).
    pub(crate) fn result(result: ResultRef<'a>) -> Result<Self, MessageError> {
        let since_epoch =
            result
                .started
                .duration_since(UNIX_EPOCH)
                .map_err(|_| MessageError::Encode {
                    part: "body",
                    source: bincode::error::EncodeError::Other(
                        "SystemTime must be later than UNIX_EPOCH",
                    ),
                })?;
        Ok(Record::Result(result, since_epoch))
    }
}

impl Record<'_> {
    /// Writes the record's body to `out`.
    pub(crate) fn write(&self, out: &mut impl Out) {
        match self {
            Record::Request(request) => encode_request(out, request),
            Record::Result(result, since_epoch) => write_result(out, result, *since_epoch),
        }
    }

    /// The body's size in bytes.
    pub(crate) fn len(&self) -> usize {
        let mut count = Count::default();
        self.write(&mut count);
        count.0
    }

    /// The body in a buffer of its size (one allocation).
    pub(crate) fn into_body(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        self.write(&mut out);
        out
    }
}

/// Appends a request's body to `out`.
pub(crate) fn encode_request(out: &mut impl Out, request: &ClusterRequest) {
    put_u64(out, request.id);
    put_bytes(out, &request.payload);
    put_metadata(out, &request.metadata);
}

fn write_result(out: &mut impl Out, result: &ResultRef<'_>, since_epoch: Duration) {
    put_u64(out, result.id);
    put_u64(out, status_index(result.status));
    put_bytes(out, result.payload);
    put_metadata(out, result.request_metadata);
    put_bytes(out, result.host.as_bytes());
    put_u64(out, u64::from(result.pid));
    put_bytes(out, result.worker.as_bytes());
    put_duration(out, since_epoch);
    put_duration(out, result.elapsed);
    match result.exception {
        None => out.put(&[0]),
        Some(exception) => {
            out.put(&[1]);
            put_bytes(out, exception.as_bytes());
        }
    }
}

/// The variant index serde gives a status: its place in the enum.
fn status_index(status: ResultStatus) -> u64 {
    match status {
        ResultStatus::Ok => 0,
        ResultStatus::Fail => 1,
    }
}

/// Reads bincode's forms off a slice, counting what it claims against the
/// limit as bincode does.
struct Reader<'a> {
    bytes: &'a [u8],
    claimed: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.bytes.len() {
            return Err(DecodeError::UnexpectedEnd {
                additional: n - self.bytes.len(),
            });
        }
        let (taken, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let Some((taken, rest)) = self.bytes.split_first_chunk::<N>() else {
            return Err(DecodeError::UnexpectedEnd {
                additional: N - self.bytes.len(),
            });
        };
        self.bytes = rest;
        Ok(*taken)
    }

    fn claim(&mut self, n: usize) {
        self.claimed = self.claimed.saturating_add(n);
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.claim(1);
        let [byte] = self.array::<1>()?;
        Ok(byte)
    }

    /// A variable-length integer of at most `widest` bytes (4 or 8).
    fn varint(&mut self, widest: usize) -> Result<u64, DecodeError> {
        let [marker] = self.array::<1>()?;
        match marker {
            0..=250 => Ok(u64::from(marker)),
            U16_MARKER => Ok(u64::from(u16::from_le_bytes(self.array()?))),
            U32_MARKER => Ok(u64::from(u32::from_le_bytes(self.array()?))),
            U64_MARKER if widest == 8 => Ok(u64::from_le_bytes(self.array()?)),
            _ => Err(DecodeError::Other("invalid integer marker")),
        }
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.claim(4);
        // At most four bytes were read: it fits.
        Ok(self.varint(4)? as u32)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.claim(8);
        self.varint(8)
    }

    fn len(&mut self) -> Result<usize, DecodeError> {
        let len = self.u64()?;
        usize::try_from(len).map_err(|_| DecodeError::OutsideUsizeRange(len))
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.len()?;
        self.claim(len);
        self.take(len)
    }

    fn str(&mut self) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes()?).map_err(|inner| DecodeError::Utf8 { inner })
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        self.str().map(str::to_owned)
    }

    fn metadata(&mut self) -> Result<Metadata, DecodeError> {
        let mut metadata = Metadata::new();
        for _ in 0..self.len()? {
            let key = self.string()?;
            let value = self.string()?;
            metadata.insert(key, value);
        }
        Ok(metadata)
    }

    /// Seconds and nanoseconds, refused where serde refuses them.
    fn duration(&mut self) -> Result<Duration, DecodeError> {
        let secs = self.u64()?;
        let nanos = self.u32()?;
        if secs.checked_add(u64::from(nanos / 1_000_000_000)).is_none() {
            return Err(DecodeError::Other("overflow deserializing Duration"));
        }
        Ok(Duration::new(secs, nanos))
    }

    fn status(&mut self) -> Result<ResultStatus, DecodeError> {
        match self.u32()? {
            0 => Ok(ResultStatus::Ok),
            1 => Ok(ResultStatus::Fail),
            found => Err(DecodeError::UnexpectedVariant {
                type_name: "ResultStatus",
                allowed: &bincode::error::AllowedEnumVariants::Range { min: 0, max: 1 },
                found,
            }),
        }
    }

    fn optional_string(&mut self) -> Result<Option<String>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.string().map(Some),
            found => Err(DecodeError::UnexpectedVariant {
                type_name: "Option<T>",
                allowed: &bincode::error::AllowedEnumVariants::Range { min: 0, max: 1 },
                found: u32::from(found),
            }),
        }
    }

    /// The end of a value: within the limit, and nothing left over.
    fn finish(self, part: &'static str) -> Result<(), MessageError> {
        if self.claimed > MAX_MESSAGE_BYTES {
            return Err(MessageError::Decode {
                part,
                source: DecodeError::LimitExceeded,
            });
        }
        if !self.bytes.is_empty() {
            return Err(MessageError::TrailingBytes {
                part,
                extra: self.bytes.len(),
            });
        }
        Ok(())
    }
}

fn decode_error(part: &'static str) -> impl FnOnce(DecodeError) -> MessageError {
    move |source| MessageError::Decode { part, source }
}

/// A request's body, whole: bad bytes are an error, never a panic.
pub(crate) fn decode_request(
    bytes: &[u8],
    part: &'static str,
) -> Result<ClusterRequest, MessageError> {
    decode_whole(bytes, part, read_request)
}

fn read_request(reader: &mut Reader<'_>) -> Result<ClusterRequest, DecodeError> {
    Ok(ClusterRequest {
        id: reader.u64()?,
        payload: reader.bytes()?.to_vec(),
        metadata: reader.metadata()?,
    })
}

/// One value read by `read` from the whole of `bytes`: bounded, and with
/// nothing left over.
fn decode_whole<'a, T>(
    bytes: &'a [u8],
    part: &'static str,
    read: impl FnOnce(&mut Reader<'a>) -> Result<T, DecodeError>,
) -> Result<T, MessageError> {
    super::check_size(part, bytes.len(), MAX_MESSAGE_BYTES)?;
    let mut reader = Reader { bytes, claimed: 0 };
    let value = read(&mut reader).map_err(decode_error(part))?;
    reader.finish(part)?;
    Ok(value)
}

/// A sequence of what `read` reads, as serde writes a `Vec`: its length,
/// then each item. Room is made at first for no more items than serde's
/// `Vec` makes room for (1 MiB of them), whatever the length claims.
fn read_seq<'a, T>(
    reader: &mut Reader<'a>,
    read: fn(&mut Reader<'a>) -> Result<T, DecodeError>,
) -> Result<Vec<T>, DecodeError> {
    let len = reader.len()?;
    let room = (1 << 20) / std::mem::size_of::<T>().max(1);
    let mut items = Vec::with_capacity(len.min(room).min(reader.bytes.len()));
    for _ in 0..len {
        items.push(read(reader)?);
    }
    Ok(items)
}

/// A batch of requests' body (a [`MessageKind::Requests`] message, as
/// serde writes a `Vec<ClusterRequest>`), whole: bad bytes are an error,
/// never a panic.
///
/// [`MessageKind::Requests`]: super::MessageKind::Requests
pub(crate) fn decode_requests(
    bytes: &[u8],
    part: &'static str,
) -> Result<Vec<ClusterRequest>, MessageError> {
    decode_whole(bytes, part, |reader| read_seq(reader, read_request))
}

/// A batch of results' body (a [`MessageKind::Results`] message, as serde
/// writes a `Vec<ClusterResult>`), whole: bad bytes are an error, never a
/// panic.
///
/// [`MessageKind::Results`]: super::MessageKind::Results
pub(crate) fn decode_results(
    bytes: &[u8],
    part: &'static str,
) -> Result<Vec<ClusterResult>, MessageError> {
    decode_whole(bytes, part, |reader| read_seq(reader, read_result))
}

/// A result's body, whole: bad bytes are an error, never a panic.
pub(crate) fn decode_result(
    bytes: &[u8],
    part: &'static str,
) -> Result<ClusterResult, MessageError> {
    decode_whole(bytes, part, read_result)
}

/// An engine's batch of results (a [`MessageKind::TaskResults`] body, as
/// serde writes a `Vec<`[`ResultItem`]`>`), whole, each body borrowed from
/// `bytes`: bad bytes are an error, never a panic. The hub reads every
/// result of a busy engine through it.
///
/// [`MessageKind::TaskResults`]: super::MessageKind::TaskResults
/// [`ResultItem`]: crate::hub::protocol::ResultItem
pub(crate) fn decode_result_items<'a>(
    bytes: &'a [u8],
    part: &'static str,
) -> Result<Vec<ResultItemRef<'a>>, MessageError> {
    decode_whole(bytes, part, |reader| read_seq(reader, read_result_item))
}

/// A [`ResultItem`](crate::hub::protocol::ResultItem), its body borrowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResultItemRef<'a> {
    pub(crate) job: u64,
    pub(crate) id: u64,
    pub(crate) status: ResultStatus,
    pub(crate) error: Option<String>,
    pub(crate) body: &'a [u8],
}

fn read_result_item<'a>(reader: &mut Reader<'a>) -> Result<ResultItemRef<'a>, DecodeError> {
    Ok(ResultItemRef {
        job: reader.u64()?,
        id: reader.u64()?,
        status: reader.status()?,
        error: reader.optional_string()?,
        body: reader.bytes()?,
    })
}

/// A client's batch of tasks (a [`MessageKind::Tasks`] body, as serde
/// writes a `Vec<`[`SubmitItem`]`>`: the client's id and the encoded
/// request of each), whole: bad bytes are an error, never a panic.
///
/// [`MessageKind::Tasks`]: super::MessageKind::Tasks
/// [`SubmitItem`]: crate::hub::protocol::SubmitItem
pub(crate) fn decode_submit_items(
    bytes: &[u8],
    part: &'static str,
) -> Result<Vec<(u64, Vec<u8>)>, MessageError> {
    decode_whole(bytes, part, |reader| {
        read_seq(reader, |reader| {
            Ok((reader.u64()?, reader.bytes()?.to_vec()))
        })
    })
}

fn read_result(reader: &mut Reader<'_>) -> Result<ClusterResult, DecodeError> {
    let id = reader.u64()?;
    let status = reader.status()?;
    let payload = reader.bytes()?.to_vec();
    let request_metadata = reader.metadata()?;
    let host = reader.string()?;
    let pid = reader.u32()?;
    let worker = reader.string()?;
    let since_epoch = reader.duration()?;
    let started = UNIX_EPOCH
        .checked_add(since_epoch)
        .ok_or(DecodeError::Other("overflow deserializing SystemTime"))?;
    let elapsed = reader.duration()?;
    let exception = reader.optional_string()?;
    Ok(ClusterResult {
        id,
        status,
        payload,
        request_metadata,
        metadata: ResultMetadata {
            host,
            pid,
            worker,
            started,
            elapsed,
        },
        exception,
    })
}

/// A result body's `elapsed`, the fields before it skipped (not decoded,
/// not copied, not checked beyond their framing); `None` where the bytes up
/// to it are not a result's.
pub(crate) fn result_elapsed(bytes: &[u8]) -> Option<Duration> {
    let mut reader = Reader { bytes, claimed: 0 };
    let mut read = || -> Result<Duration, DecodeError> {
        reader.u64()?; // id
        reader.status()?;
        reader.bytes()?; // payload
        for _ in 0..reader.len()? {
            // Each entry takes at least two bytes: a claimed count larger
            // than the body ends at its end.
            reader.bytes()?;
            reader.bytes()?;
        }
        reader.bytes()?; // host
        reader.u32()?; // pid
        reader.bytes()?; // worker
        reader.duration()?; // started
        reader.duration()
    };
    read().ok()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::message::{decode_value, encode_value};
    use proptest::prelude::*;

    /// The hub's `ResultItem` and `SubmitItem`, field for field: this layer
    /// cannot name the hub's types (the hub's protocol tests hold those to
    /// the decoders on their own encoded batches).
    #[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    struct ResultItem {
        job: u64,
        id: u64,
        status: ResultStatus,
        error: Option<String>,
        body: serde_bytes::ByteBuf,
    }
    type SubmitItem = (u64, serde_bytes::ByteBuf);

    /// Also the message tests' metadata (`message.rs`).
    pub(in crate::message) fn any_metadata() -> impl Strategy<Value = Metadata> {
        proptest::collection::btree_map(".{0,8}", ".{0,300}", 0..4)
    }

    /// Integers of every width bincode distinguishes, and their edges.
    fn any_int() -> impl Strategy<Value = u64> {
        prop_oneof![
            0u64..300,
            Just(250u64),
            Just(251u64),
            Just(u64::from(u16::MAX)),
            Just(u64::from(u16::MAX) + 1),
            Just(u64::from(u32::MAX)),
            Just(u64::from(u32::MAX) + 1),
            Just(u64::MAX),
            any::<u64>(),
        ]
    }

    fn any_duration() -> impl Strategy<Value = Duration> {
        (any_int(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n))
    }

    fn any_request() -> impl Strategy<Value = ClusterRequest> {
        (
            any_int(),
            proptest::collection::vec(any::<u8>(), 0..300),
            any_metadata(),
        )
            .prop_map(|(id, payload, metadata)| ClusterRequest {
                id,
                payload,
                metadata,
            })
    }

    /// Also the message tests' results (`message.rs`): integers at every
    /// width's edge, any host, worker and times.
    pub(in crate::message) fn any_result() -> impl Strategy<Value = ClusterResult> {
        (
            (any_int(), any::<bool>()),
            proptest::collection::vec(any::<u8>(), 0..300),
            any_metadata(),
            (".{0,16}", any::<u32>(), ".{0,16}"),
            (any_duration(), any_duration()),
            proptest::option::of(".{0,32}"),
        )
            .prop_map(
                |((id, ok), payload, md, (host, pid, worker), (since, elapsed), exception)| {
                    ClusterResult {
                        id,
                        status: if ok {
                            ResultStatus::Ok
                        } else {
                            ResultStatus::Fail
                        },
                        payload,
                        request_metadata: md,
                        metadata: ResultMetadata {
                            host,
                            pid,
                            worker,
                            started: UNIX_EPOCH.checked_add(since).unwrap_or(UNIX_EPOCH),
                            elapsed,
                        },
                        exception,
                    }
                },
            )
    }

    fn by_hand_request(request: &ClusterRequest) -> Vec<u8> {
        request.to_body()
    }

    fn by_hand_result(result: &ClusterResult) -> Vec<u8> {
        result.to_body().unwrap()
    }

    /// Both codecs' answers to the same bytes: equal values, or both errors.
    fn same_answer<T: PartialEq + std::fmt::Debug>(
        by_hand: Result<T, MessageError>,
        by_serde: Result<T, MessageError>,
    ) -> Result<(), TestCaseError> {
        prop_assert_eq!(by_hand.ok(), by_serde.ok());
        Ok(())
    }

    /// `bytes` with each `(at, byte)` of `flips` XORed in (at its place
    /// modulo the length), then up to 3 bytes cut off and `extra` added.
    fn altered(mut bytes: Vec<u8>, flips: &[(usize, u8)], cut: usize, extra: &[u8]) -> Vec<u8> {
        if !bytes.is_empty() {
            for &(at, byte) in flips {
                let i = at % bytes.len();
                bytes[i] ^= byte;
            }
        }
        bytes.truncate(bytes.len() - cut % 4.min(bytes.len()));
        bytes.extend_from_slice(extra);
        bytes
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn requests_encode_to_serde_bytes_and_back(request in any_request()) {
            let bytes = by_hand_request(&request);
            prop_assert_eq!(&bytes, &encode_value(&request, "t").unwrap());
            prop_assert_eq!(ClusterRequest::from_body(&bytes).unwrap(), request);
        }

        #[test]
        fn results_encode_to_serde_bytes_and_back(result in any_result()) {
            let bytes = by_hand_result(&result);
            prop_assert_eq!(&bytes, &encode_value(&result, "t").unwrap());
            prop_assert_eq!(ClusterResult::from_body(&bytes).unwrap(), result);
        }

        /// Altered, cut or lengthened bodies: the same answer as serde's,
        /// whatever the bytes.
        #[test]
        fn altered_bodies_get_serde_answers(
            request in any_request(),
            result in any_result(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
            cut in any::<usize>(),
            extra in proptest::collection::vec(any::<u8>(), 0..3),
        ) {
            for bytes in [by_hand_request(&request), by_hand_result(&result)] {
                let bytes = altered(bytes, &flips, cut, &extra);
                same_answer(decode_request(&bytes, "t"), decode_value(&bytes, "t"))?;
                same_answer(decode_result(&bytes, "t"), decode_value(&bytes, "t"))?;
            }
        }

        /// The hub's read of a result's run time: what the whole decode
        /// gives, on any result; on altered bytes, never a panic, and where
        /// the whole decode succeeds, its answer.
        #[test]
        fn a_results_elapsed_is_read_alone_as_the_whole_decode_reads_it(
            result in any_result(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        ) {
            let bytes = by_hand_result(&result);
            prop_assert_eq!(result_elapsed(&bytes), Some(result.metadata.elapsed));
            let changed = altered(bytes, &flips, 0, &[]);
            let read = result_elapsed(&changed);
            if let Ok(whole) = decode_result(&changed, "t") {
                prop_assert_eq!(read, Some(whole.metadata.elapsed));
            }
        }

        #[test]
        fn random_bytes_get_serde_answers(
            bytes in proptest::collection::vec(
                prop_oneof![any::<u8>(), 0u8..4, 249u8..=255], 0..96)
        ) {
            same_answer(decode_request(&bytes, "t"), decode_value(&bytes, "t"))?;
            same_answer(decode_result(&bytes, "t"), decode_value(&bytes, "t"))?;
            same_answer(decode_requests(&bytes, "t"), decode_value(&bytes, "t"))?;
            same_answer(decode_results(&bytes, "t"), decode_value(&bytes, "t"))?;
        }

        /// Batches (a `Vec` as serde writes it), whole or altered, cut or
        /// lengthened: serde's value or serde's refusal.
        #[test]
        fn batches_get_serde_answers(
            requests in proptest::collection::vec(any_request(), 0..4),
            results in proptest::collection::vec(any_result(), 0..4),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
            cut in any::<usize>(),
            extra in proptest::collection::vec(any::<u8>(), 0..3),
        ) {
            let requests_bytes = encode_value(&requests, "t").unwrap();
            let results_bytes = encode_value(&results, "t").unwrap();
            prop_assert_eq!(decode_requests(&requests_bytes, "t").unwrap(), requests);
            prop_assert_eq!(decode_results(&results_bytes, "t").unwrap(), results);
            for bytes in [requests_bytes, results_bytes] {
                let bytes = altered(bytes, &flips, cut, &extra);
                same_answer(decode_requests(&bytes, "t"), decode_value(&bytes, "t"))?;
                same_answer(decode_results(&bytes, "t"), decode_value(&bytes, "t"))?;
            }
        }
    }

    fn any_result_item() -> impl Strategy<Value = ResultItem> {
        (
            any_int(),
            any_int(),
            any::<bool>(),
            proptest::option::of(".{0,40}"),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(job, id, ok, error, body)| ResultItem {
                job,
                id,
                status: if ok {
                    ResultStatus::Ok
                } else {
                    ResultStatus::Fail
                },
                error,
                body: serde_bytes::ByteBuf::from(body),
            })
    }

    fn owned(items: Vec<ResultItemRef<'_>>) -> Vec<ResultItem> {
        items
            .into_iter()
            .map(|item| ResultItem {
                job: item.job,
                id: item.id,
                status: item.status,
                error: item.error,
                body: serde_bytes::ByteBuf::from(item.body),
            })
            .collect()
    }

    fn submit_owned(items: Vec<SubmitItem>) -> Vec<(u64, Vec<u8>)> {
        items
            .into_iter()
            .map(|(id, request)| (id, request.into_vec()))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The hub's batches (an engine's results, a client's tasks),
        /// whole or altered, cut or lengthened: serde's value or serde's
        /// refusal.
        #[test]
        fn hub_batches_get_serde_answers(
            results in proptest::collection::vec(any_result_item(), 0..4),
            tasks in proptest::collection::vec(
                (any_int(), proptest::collection::vec(any::<u8>(), 0..200)), 0..4),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
            cut in any::<usize>(),
            extra in proptest::collection::vec(any::<u8>(), 0..3),
        ) {
            let tasks: Vec<SubmitItem> = tasks
                .into_iter()
                .map(|(id, request)| (id, serde_bytes::ByteBuf::from(request)))
                .collect();
            let results_bytes = encode_value(&results, "t").unwrap();
            let tasks_bytes = encode_value(&tasks, "t").unwrap();
            prop_assert_eq!(owned(decode_result_items(&results_bytes, "t").unwrap()), results);
            prop_assert_eq!(decode_submit_items(&tasks_bytes, "t").unwrap(), submit_owned(tasks));
            for bytes in [results_bytes, tasks_bytes] {
                same_hub_batch_answers(&altered(bytes, &flips, cut, &extra))?;
            }
        }

        #[test]
        fn random_bytes_get_serde_answers_as_hub_batches(
            bytes in proptest::collection::vec(
                prop_oneof![any::<u8>(), 0u8..4, 249u8..=255], 0..96)
        ) {
            same_hub_batch_answers(&bytes)?;
        }
    }

    /// Both codecs' answers to `bytes` read as each of the hub's batches.
    fn same_hub_batch_answers(bytes: &[u8]) -> Result<(), TestCaseError> {
        same_answer(
            decode_result_items(bytes, "t").map(owned),
            decode_value::<Vec<ResultItem>>(bytes, "t"),
        )?;
        same_answer(
            decode_submit_items(bytes, "t"),
            decode_value::<Vec<SubmitItem>>(bytes, "t").map(submit_owned),
        )
    }

    /// A batch that claims more items than it holds is refused, as serde
    /// refuses it, and makes no room for what it claims.
    #[test]
    fn a_batch_claiming_more_than_it_holds_is_refused() {
        let claims_u32_max = [&[U32_MARKER][..], &u32::MAX.to_le_bytes(), &[0u8; 8]].concat();
        assert!(decode_results(&claims_u32_max, "t").is_err());
        assert!(decode_value::<Vec<ClusterResult>>(&claims_u32_max, "t").is_err());
        assert!(decode_requests(&claims_u32_max, "t").is_err());
        assert!(decode_value::<Vec<ClusterRequest>>(&claims_u32_max, "t").is_err());
    }

    /// The forms only a hostile peer writes: integers longer than needed,
    /// markers a field cannot take, times that overflow, tags out of range,
    /// entries claiming more than the limit.
    #[test]
    fn hostile_forms_get_serde_answers() {
        // Id 1, Ok, no payload, no metadata, no host; then the pid; no
        // worker name; then the start time; no elapsed time; no exception.
        let result = |pid: &[u8], started: &[u8]| {
            [&[1u8, 0, 0, 0, 0][..], pid, &[0], started, &[0, 0], &[0]].concat()
        };
        let max_secs = [&[U64_MARKER][..], &u64::MAX.to_le_bytes()].concat();
        let two_secs_of_nanos = [&[U32_MARKER][..], &2_000_000_000u32.to_le_bytes()].concat();
        let accepted = [
            result(&[5], &[0, 0]),
            result(&[U32_MARKER, 5, 0, 0, 0], &[0, 0]),
            result(&[5], &[1, U32_MARKER, 0x00, 0x2f, 0x68, 0x59]),
            [&[U64_MARKER][..], &7u64.to_le_bytes(), &[0, 0]].concat(),
        ];
        let refused = [
            result(&[U64_MARKER, 5, 0, 0, 0, 0, 0, 0, 0], &[0, 0]),
            result(&[5], &[&max_secs[..], &two_secs_of_nanos].concat()),
            result(&[5], &[&max_secs[..], &[0]].concat()),
            [&[1u8, 2][..], &result(&[5], &[0, 0])[2..]].concat(),
            {
                let mut bad_option = result(&[5], &[0, 0]);
                bad_option.pop();
                bad_option.push(2);
                bad_option
            },
            [&[254u8][..], &[0; 16], &[0, 0]].concat(),
            {
                // Each empty entry claims 16 bytes against the limit.
                let entries = MAX_MESSAGE_BYTES / 16 + 1;
                let mut many = vec![1, 0];
                put_u64(&mut many, entries as u64);
                many.resize(many.len() + 2 * entries, 0);
                many
            },
        ];
        for bytes in accepted.iter().chain(&refused) {
            assert_eq!(
                decode_request(bytes, "t").ok(),
                decode_value::<ClusterRequest>(bytes, "t").ok()
            );
            assert_eq!(
                decode_result(bytes, "t").ok(),
                decode_value::<ClusterResult>(bytes, "t").ok(),
                "{bytes:?}"
            );
        }
        for bytes in &accepted {
            assert!(
                decode_result(bytes, "t").is_ok() || decode_request(bytes, "t").is_ok(),
                "{bytes:?}"
            );
        }
        for bytes in &refused[..refused.len() - 1] {
            assert!(decode_result(bytes, "t").is_err(), "{bytes:?}");
        }
        assert!(decode_request(&refused[refused.len() - 1], "t").is_err());
    }
}
