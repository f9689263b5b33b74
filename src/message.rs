//! The records that travel between components, and the one wire format that
//! carries them all.
//!
//! # Wire format
//!
//! Every zcluster message is one ZeroMQ frame: a fixed prefix, then the
//! body (the layout is in `message/frame.rs`):
//!
//! | part | content |
//! | --- | --- |
//! | protocol | name and version, `zcluster/6` (10 bytes) |
//! | signature | its length (1 byte), then nothing on toolkit sockets; on hub sockets a nonce and an HMAC-SHA256 tag ([`auth`](crate::auth)) |
//! | [`Header`] | kind, job, id: [`HEADER_BYTES`], fixed size |
//! | body | the record named by the kind, bincode |
//!
//! The header reads on its own, so a device, a sink or a hub can route and
//! count messages without decoding bodies (IPython's split send). Decoding is
//! bounded: frames longer than the limits are rejected before any decoding, a
//! length prefix can never make bincode allocate more than
//! [`MAX_MESSAGE_BYTES`], a frame shorter than the prefix it announces is an
//! error, trailing bytes are an error, and every way a message
//! can be wrong is a [`MessageError`], never a panic. On a [`SignedSocket`]
//! the signature is checked before the header is decoded, so nothing from a
//! peer without the key reaches a decoder.
//!
//! One file (about 900 lines of code) for the records and how they are sent and
//! received, so the wire format is read in one place; the frame's layout is
//! `message/frame.rs`, the signed socket `message/signed.rs`, and the hand
//! codec of the two hot bodies (requests and results, in bincode's bytes,
//! without serde) `message/codec.rs`.
//!
//! ```
//! use zcluster::message::{ClusterRequest, Envelope};
//! let request = ClusterRequest::encode(7, &("image.png", 3u32)).unwrap();
//! let frames = Envelope::frames_of_request(&request).unwrap();
//! let envelope = Envelope::from_frames(&frames).unwrap();
//! let back = envelope.request().unwrap();
//! assert_eq!(back.decode::<(String, u32)>().unwrap(), ("image.png".into(), 3));
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::auth::{
    Auth, AuthError, Channel, EpochRule, Key, Signer, Verified, Verifier, SIGNATURE_BYTES,
};

/// First bytes of every message: protocol name and version.
pub const PROTOCOL: &[u8] = b"zcluster/6";
const PROTOCOL_NAME: &[u8] = b"zcluster/";

/// Largest message (its one frame, prefix and body) any zcluster socket
/// accepts: receiving sockets get this as `ZMQ_MAXMSGSIZE` and bincode gets
/// it as its limit, so a length prefix can never claim more memory than
/// this.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_MESSAGE_BYTES>,
>;

/// The one bincode configuration used to encode and decode everything.
const CONFIG: Config = bincode::config::standard().with_limit::<MAX_MESSAGE_BYTES>();

/// Request metadata key an engine sets on a retried request: which attempt
/// it is (absent on the first; the hub sends the number beside the request,
/// see [`TaskItem`](crate::hub::protocol::TaskItem)). Workers copy request metadata into results, so
/// a client reads the number of attempts off the result.
pub const ATTEMPT_KEY: &str = "zcluster.attempt";

/// Free-form request metadata, copied back into the result
/// (`request_metadata`) so a caller can tell results apart without a lookup.
pub type Metadata = BTreeMap<String, String>;

/// Everything that can be wrong with a message on the way in or out.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// Not one frame.
    #[error("expected a message of 1 frame, got {got}")]
    FrameCount {
        /// What arrived.
        got: usize,
    },
    /// The first frame does not name the zcluster protocol.
    #[error("not a zcluster message (first frame {first:?})")]
    NotZcluster {
        /// The start of the first frame, escaped.
        first: String,
    },
    /// A zcluster peer speaking another version.
    #[error("zcluster protocol version `{got}` is not supported (this build speaks zcluster/6)")]
    WrongVersion {
        /// What arrived.
        got: String,
    },
    /// A signature where none is configured.
    #[error("message carries a signature but no signing key is configured")]
    UnexpectedSignature,
    /// A signed socket refused the message: unsigned, forged or replayed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A frame larger than its limit.
    #[error("{part} of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Which part of the message.
        part: &'static str,
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// A frame that bincode could not decode as what it should hold.
    #[error("cannot decode {part}: {source}")]
    Decode {
        /// Which part of the message.
        part: &'static str,
        /// The underlying error.
        #[source]
        source: bincode::error::DecodeError,
    },
    /// Bytes left over after a complete value: a framing bug or tampering.
    #[error("{part} has {extra} trailing bytes")]
    TrailingBytes {
        /// Which part of the message.
        part: &'static str,
        /// How many bytes.
        extra: usize,
    },
    /// A message of one kind where another was expected.
    #[error("expected a {expected} message, got a {got}")]
    UnexpectedKind {
        /// The kind it needs.
        expected: &'static str,
        /// What arrived.
        got: MessageKind,
    },
    /// Header and body disagree about which task this is.
    #[error("header names id {header} but the body names id {body}")]
    IdMismatch {
        /// The id in the header.
        header: u64,
        /// The id in the body.
        body: u64,
    },
    /// A value that cannot be encoded (for example larger than the limit).
    #[error("cannot encode {part}: {source}")]
    Encode {
        /// Which part of the message.
        part: &'static str,
        /// The underlying error.
        #[source]
        source: bincode::error::EncodeError,
    },
    /// The socket failed.
    #[error("socket error: {0}")]
    Zmq(#[from] zmq::Error),
    /// A frame shorter than the prefix it announces.
    #[error("message of {size} bytes is shorter than its {prefix}-byte prefix")]
    Truncated {
        /// The frame's size in bytes.
        size: usize,
        /// The prefix's size in bytes (as far as it could be read).
        prefix: usize,
    },
    /// A header of another size than [`HEADER_BYTES`].
    #[error("header of {size} bytes (expected {HEADER_BYTES})")]
    HeaderSize {
        /// What arrived.
        size: usize,
    },
    /// A header naming no kind of message this build knows.
    #[error("unknown message kind {code}")]
    UnknownKind {
        /// The kind's byte.
        code: u8,
    },
}

impl MessageError {
    /// Whether this is a receive timeout (`EAGAIN` from a socket with
    /// `ZMQ_RCVTIMEO` or a non-blocking receive) rather than a bad message.
    pub fn is_timeout(&self) -> bool {
        matches!(self, MessageError::Zmq(zmq::Error::EAGAIN))
    }
}

/// What a message carries, named in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageKind {
    /// A [`ClusterRequest`] for a worker.
    Request,
    /// A [`ClusterResult`] from a worker, with its status.
    Result(ResultStatus),
    /// A [`Command`] for workers and sinks; the header id is its token.
    Command,
    /// A [`CommandReply`] from a worker; the header id is the command's token.
    Reply,
    /// A hub protocol message (registration, heartbeat, a client's query or
    /// its reply); the body's type belongs to the hub layer.
    Control,
    /// Several [`ClusterRequest`]s in one message (a batching ventilator);
    /// the header id is the first one's.
    Requests,
    /// Several [`ClusterResult`]s in one message, answering a
    /// [`Requests`](MessageKind::Requests); the header id is the first one's.
    Results,
    /// Several tasks of one job from the hub to an engine: a list of (task
    /// id, encoded [`ClusterRequest`]) pairs, each decoded on its own so
    /// that a bad one fails alone. The header id is the first task's.
    Tasks,
    /// Several results from an engine to the hub: a list of (job, task id,
    /// status, encoded [`ClusterResult`]), which the hub records and
    /// forwards one by one without decoding. The header id is the first's.
    TaskResults,
    /// A peer asks a hub for its epoch (see [`auth`](crate::auth#epochs));
    /// the header id is a random challenge, the body empty.
    Hello,
    /// A hub answers a [`Hello`](MessageKind::Hello): the header id is the
    /// challenge, and the signature carries the hub's epoch.
    Welcome,
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MessageKind::Request => "request",
            MessageKind::Result(_) => "result",
            MessageKind::Command => "command",
            MessageKind::Reply => "reply",
            MessageKind::Control => "control",
            MessageKind::Requests => "request batch",
            MessageKind::Results => "result batch",
            MessageKind::Tasks => "task batch",
            MessageKind::TaskResults => "task result batch",
            MessageKind::Hello => "hello",
            MessageKind::Welcome => "welcome",
        })
    }
}

/// The part of every message that can be decoded alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// What the body holds.
    pub kind: MessageKind,
    /// The job a request or result belongs to (0 with no hub).
    pub job: u64,
    /// Task id of a request or result; token of a command or reply.
    pub id: u64,
}

impl Header {
    /// The header of `result` in `job`.
    pub fn result(job: u64, result: &ClusterResult) -> Self {
        Header {
            kind: MessageKind::Result(result.status),
            job,
            id: result.id,
        }
    }
}

/// Whether a worker's handler succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ResultStatus {
    /// The handler returned a payload.
    Ok,
    /// The handler returned an error or panicked; see `exception`.
    Fail,
}

/// One unit of work for a worker: an id, an opaque payload (bincode of the
/// caller's type, see [`ClusterRequest::encode`]) and metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRequest {
    /// Unique within a job; the result carries it back.
    pub id: u64,
    /// The handler's input.
    #[serde(
        serialize_with = "serde_bytes::serialize",
        deserialize_with = "owned::bytes"
    )]
    pub payload: Vec<u8>,
    /// Free-form, returned in the result.
    #[serde(deserialize_with = "owned::metadata")]
    pub metadata: Metadata,
}

impl ClusterRequest {
    /// A request carrying raw bytes.
    pub fn new(id: u64, payload: Vec<u8>) -> Self {
        ClusterRequest {
            id,
            payload,
            metadata: Metadata::new(),
        }
    }

    /// A request carrying any serde value, encoded with the wire's bincode
    /// configuration.
    pub fn encode<T: Serialize + ?Sized>(id: u64, value: &T) -> Result<Self, MessageError> {
        Ok(Self::new(id, encode_value(value, "request payload")?))
    }

    /// The same request with a metadata entry added.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Decodes the payload as `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, MessageError> {
        decode_value(&self.payload, "request payload")
    }

    /// The request as a message body: the bytes [`encode_value`] gives it,
    /// written without serde (see `message/codec.rs`).
    pub fn to_body(&self) -> Vec<u8> {
        codec::Record::Request(self).into_body()
    }

    /// A request from a message body, as [`decode_value`] reads it (the
    /// same value or an error on any bytes), without serde: a fraction of
    /// the instructions.
    pub fn from_body(bytes: &[u8]) -> Result<Self, MessageError> {
        codec::decode_request(bytes, "request body")
    }
}

/// Where and when a result was computed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultMetadata {
    /// Host name of the worker.
    #[serde(deserialize_with = "owned::string")]
    pub host: String,
    /// Process id of the worker.
    pub pid: u32,
    /// The worker's name within its process.
    #[serde(deserialize_with = "owned::string")]
    pub worker: String,
    /// When the handler started.
    pub started: SystemTime,
    /// How long the handler ran.
    pub elapsed: Duration,
}

/// A worker's answer to one [`ClusterRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterResult {
    /// The request's id.
    pub id: u64,
    /// Whether the handler succeeded.
    pub status: ResultStatus,
    /// The handler's output (empty on failure).
    #[serde(
        serialize_with = "serde_bytes::serialize",
        deserialize_with = "owned::bytes"
    )]
    pub payload: Vec<u8>,
    /// The request's metadata, returned as sent.
    #[serde(deserialize_with = "owned::metadata")]
    pub request_metadata: Metadata,
    /// Where and when the work was done.
    pub metadata: ResultMetadata,
    /// The handler's error or panic message on failure.
    #[serde(deserialize_with = "owned::optional_string")]
    pub exception: Option<String>,
}

impl ClusterResult {
    /// The failure of task `id` answered by `worker` of this process
    /// without running it (a hub or engine that cannot run it), so its
    /// client never waits for it.
    pub fn failed_here(id: u64, worker: String, reason: &str) -> Self {
        ClusterResult {
            id,
            status: ResultStatus::Fail,
            payload: Vec::new(),
            request_metadata: Metadata::new(),
            metadata: ResultMetadata {
                host: crate::host_name(),
                pid: std::process::id(),
                worker,
                started: SystemTime::now(),
                elapsed: Duration::ZERO,
            },
            exception: Some(reason.to_string()),
        }
    }

    /// A failure with `reason` in place of this result, keeping where and
    /// when its task ran and its request's metadata (a result that cannot
    /// be delivered as it is, say over a size limit).
    pub fn as_failure(&self, reason: String) -> Self {
        ClusterResult {
            id: self.id,
            status: ResultStatus::Fail,
            payload: Vec::new(),
            request_metadata: self.request_metadata.clone(),
            metadata: self.metadata.clone(),
            exception: Some(reason),
        }
    }

    /// Decodes the payload as `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, MessageError> {
        decode_value(&self.payload, "result payload")
    }

    /// The result as a message body: the bytes [`encode_value`] gives it,
    /// written without serde (see `message/codec.rs`). An error only for a
    /// start time before the Unix epoch, as with serde.
    pub fn to_body(&self) -> Result<Vec<u8>, MessageError> {
        Ok(codec::Record::result(self.into())?.into_body())
    }

    /// A result from a message body, as [`decode_value`] reads it (the
    /// same value or an error on any bytes), without serde: a fraction of
    /// the instructions.
    pub fn from_body(bytes: &[u8]) -> Result<Self, MessageError> {
        codec::decode_result(bytes, "result body")
    }

    /// How long the handler of the result in a message body ran (its
    /// metadata's `elapsed`), read without decoding or copying the rest:
    /// what the hub, which records and forwards results as they came,
    /// takes of one for its job's task times. `None` where the bytes up to
    /// it are not a result's.
    pub fn elapsed_in_body(bytes: &[u8]) -> Option<Duration> {
        codec::result_elapsed(bytes)
    }
}

/// Commands published to workers (and sinks) on the command channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Finish the current request, then exit cleanly.
    Kill,
    /// Finish the current request, then exit with the restart status so a
    /// supervisor starts the worker again.
    Restart,
    /// Reply with who you are and what you have done.
    Ping,
    /// Stop a sink's receive loop (workers ignore it).
    KillSink,
    /// An application command, handled by a worker's
    /// [`Handler::handle_command`](crate::worker::Handler::handle_command).
    Custom {
        /// What to do.
        name: String,
        /// Arguments, in whatever encoding the application chose.
        #[serde(with = "serde_bytes")]
        args: Vec<u8>,
    },
    /// Take no new requests, finish the ones held, then exit cleanly (an
    /// engine gives back the tasks it has not started).
    Drain,
}

impl Command {
    /// A short name for logs and replies.
    pub fn name(&self) -> &str {
        match self {
            Command::Kill => "kill",
            Command::Restart => "restart",
            Command::Ping => "ping",
            Command::KillSink => "kill-sink",
            Command::Drain => "drain",
            Command::Custom { name, .. } => name,
        }
    }
}

/// Who a worker is: sent in every command reply.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Name of the worker within its process.
    pub worker: String,
    /// When the worker started.
    pub started: SystemTime,
}

/// A worker's answer to a command: an acknowledgement of kill or restart, or
/// the answer to a ping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandReply {
    /// The token of the command answered.
    pub token: u64,
    /// The name of the command answered.
    pub command: String,
    /// Who answers.
    pub worker: WorkerInfo,
    /// Requests this worker has handled.
    pub requests_handled: u64,
    /// Mean handler time per request.
    pub mean_time: Duration,
}

/// A received message whose header has been checked and decoded; the body is
/// decoded on demand by the accessor for the kind the receiver expects.
#[derive(Debug)]
pub struct Envelope {
    /// The decoded header.
    pub header: Header,
    body: Body,
}

#[derive(Debug)]
enum Body {
    /// The frame as received, and where its body starts.
    Zmq(zmq::Message, usize),
    Bytes(Vec<u8>),
}

impl Body {
    fn bytes(&self) -> &[u8] {
        match self {
            Body::Zmq(m, at) => &m[*at..],
            Body::Bytes(b) => b,
        }
    }
}

impl Envelope {
    /// Checks and splits already received frames (for a device, a fuzzer or a
    /// ROUTER socket that strips identity frames first): a message is one
    /// frame.
    pub fn from_frames<F: AsRef<[u8]>>(frames: &[F]) -> Result<Self, MessageError> {
        let [frame] = frames else {
            return Err(match frames.first() {
                // Another version's first frame says which it is.
                Some(first) => match frame::check_protocol(first.as_ref()) {
                    Err(e @ MessageError::WrongVersion { .. }) => e,
                    _ => MessageError::FrameCount { got: frames.len() },
                },
                None => MessageError::FrameCount { got: 0 },
            });
        };
        let frame = frame.as_ref();
        let (header, body_at, _) = frame::check(frame, None)?;
        Ok(Envelope {
            header,
            body: Body::Bytes(frame[body_at..].to_vec()),
        })
    }

    /// The body's raw bytes.
    pub fn body(&self) -> &[u8] {
        self.body.bytes()
    }

    /// The body as a request.
    pub fn request(&self) -> Result<ClusterRequest, MessageError> {
        self.expect(matches!(self.header.kind, MessageKind::Request), "request")?;
        let request = codec::decode_request(self.body(), "request body")?;
        self.check_id(request.id)?;
        Ok(request)
    }

    /// The body as a result.
    pub fn result(&self) -> Result<ClusterResult, MessageError> {
        let MessageKind::Result(status) = self.header.kind else {
            return Err(self.unexpected("result"));
        };
        let result = codec::decode_result(self.body(), "result body")?;
        self.check_id(result.id)?;
        if result.status != status {
            return Err(MessageError::Decode {
                part: "result body",
                source: bincode::error::DecodeError::Other("status differs from the header"),
            });
        }
        Ok(result)
    }

    /// The body as a command; the header id is its token.
    pub fn command(&self) -> Result<Command, MessageError> {
        self.expect(self.header.kind == MessageKind::Command, "command")?;
        decode_value(self.body(), "command body")
    }

    /// The body as a command reply.
    pub fn reply(&self) -> Result<CommandReply, MessageError> {
        self.expect(self.header.kind == MessageKind::Reply, "reply")?;
        let reply: CommandReply = decode_value(self.body(), "reply body")?;
        self.check_id(reply.token)?;
        Ok(reply)
    }

    /// The body of a [`MessageKind::Requests`] message.
    pub fn requests(&self) -> Result<Vec<ClusterRequest>, MessageError> {
        self.expect(self.header.kind == MessageKind::Requests, "request batch")?;
        codec::decode_requests(self.body(), "request batch")
    }

    /// The body of a [`MessageKind::Results`] message.
    pub fn results(&self) -> Result<Vec<ClusterResult>, MessageError> {
        self.expect(self.header.kind == MessageKind::Results, "result batch")?;
        codec::decode_results(self.body(), "result batch")
    }

    /// The body of a [`MessageKind::Control`] message as `T`.
    pub fn control<T: DeserializeOwned>(&self) -> Result<T, MessageError> {
        self.expect(self.header.kind == MessageKind::Control, "control")?;
        decode_value(self.body(), "control body")
    }

    fn expect(&self, ok: bool, expected: &'static str) -> Result<(), MessageError> {
        if ok {
            Ok(())
        } else {
            Err(self.unexpected(expected))
        }
    }

    fn unexpected(&self, expected: &'static str) -> MessageError {
        MessageError::UnexpectedKind {
            expected,
            got: self.header.kind,
        }
    }

    fn check_id(&self, body: u64) -> Result<(), MessageError> {
        if body == self.header.id {
            Ok(())
        } else {
            Err(MessageError::IdMismatch {
                header: self.header.id,
                body,
            })
        }
    }

    /// The frames (one) of a request, for sockets this crate does not drive.
    pub fn frames_of_request(request: &ClusterRequest) -> Result<Vec<Vec<u8>>, MessageError> {
        let header = Header {
            kind: MessageKind::Request,
            job: 0,
            id: request.id,
        };
        frames(&header, request)
    }
}

/// Encodes an unsigned message as its frames (one), for sockets this crate
/// does not drive.
pub fn frames<T: Serialize + ?Sized>(
    header: &Header,
    body: &T,
) -> Result<Vec<Vec<u8>>, MessageError> {
    let body = encode_value(body, "body")?;
    Ok(vec![encode_frame(header, &[], &body)?])
}

fn check_size(part: &'static str, size: usize, limit: usize) -> Result<(), MessageError> {
    if size > limit {
        Err(MessageError::TooLarge { part, size, limit })
    } else {
        Ok(())
    }
}

/// At most 32 bytes of a frame, escaped, for an error message.
fn printable(bytes: &[u8]) -> String {
    crate::untrusted::escape_at_most(bytes, 32)
}

/// What [`encode_value`] allocates at first: enough for a small value (a
/// number, a short string) in one allocation, where bincode's own writer
/// starts empty and grows two or three times.
const ENCODE_START_BYTES: usize = 32;

/// Encodes a value with the wire configuration.
pub fn encode_value<T: Serialize + ?Sized>(
    value: &T,
    part: &'static str,
) -> Result<Vec<u8>, MessageError> {
    let mut out = Vec::with_capacity(ENCODE_START_BYTES);
    bincode::serde::encode_into_std_write(value, &mut out, CONFIG)
        .map_err(|source| MessageError::Encode { part, source })?;
    Ok(out)
}

/// Decodes a whole value with the wire configuration: bounded, and with no
/// bytes left over.
pub fn decode_value<T: DeserializeOwned>(
    bytes: &[u8],
    part: &'static str,
) -> Result<T, MessageError> {
    check_size(part, bytes.len(), MAX_MESSAGE_BYTES)?;
    let (value, read) = bincode::serde::decode_from_slice(bytes, CONFIG)
        .map_err(|source| MessageError::Decode { part, source })?;
    if read != bytes.len() {
        return Err(MessageError::TrailingBytes {
            part,
            extra: bytes.len() - read,
        });
    }
    Ok(value)
}

thread_local! {
    /// Reused encode buffer: no allocation per message on the send path.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Largest scratch buffer kept between messages; a larger one is freed.
const SCRATCH_KEEP_BYTES: usize = 1 << 20;

/// Sends one message. `flags` may hold `zmq::DONTWAIT`.
pub fn send<T: Serialize + ?Sized>(
    socket: &zmq::Socket,
    header: &Header,
    body: &T,
    flags: i32,
) -> Result<(), MessageError> {
    with_encoded(body, |bytes| {
        send_frame(socket, header, bytes, flags, None, MAX_MESSAGE_BYTES)
    })
}

/// Encodes `body` into the reused scratch buffer, checks its size, and
/// hands the bytes to `send`: nothing reaches a socket unless the whole
/// message can be sent.
fn with_encoded<T: Serialize + ?Sized>(
    body: &T,
    send: impl FnOnce(&[u8]) -> Result<(), MessageError>,
) -> Result<(), MessageError> {
    SCRATCH.with_borrow_mut(|buf| {
        buf.clear();
        bincode::serde::encode_into_std_write(body, buf, CONFIG).map_err(|source| {
            MessageError::Encode {
                part: "body",
                source,
            }
        })?;
        check_size("body", buf.len(), MAX_MESSAGE_BYTES)?;
        let sent = send(buf);
        if buf.capacity() > SCRATCH_KEEP_BYTES {
            *buf = Vec::new();
        }
        sent
    })
}

/// Sends a message whose body is already encoded, as its one frame, signed
/// when there is a signer (for the peer whose routing identity is the
/// second element; empty for none). The whole frame must fit in `limit`.
fn send_frame(
    socket: &zmq::Socket,
    header: &Header,
    body: &[u8],
    flags: i32,
    signer: Option<(&Signer, &[u8])>,
    limit: usize,
) -> Result<(), MessageError> {
    let signature_len = if signer.is_some() { SIGNATURE_BYTES } else { 0 };
    check_size(
        "message",
        MAX_PREFIX_BYTES - SIGNATURE_BYTES + signature_len + body.len(),
        limit,
    )?;
    let header_bytes = header.to_bytes();
    let signature = signer.map(|(s, recipient)| {
        // A hello is signed for no hub start: the peer is asking which.
        let epoch = if header.kind == MessageKind::Hello {
            0
        } else {
            s.epoch()
        };
        s.sign_for(epoch, recipient, PROTOCOL, &header_bytes, body)
    });
    let frame = frame::build(
        &header_bytes,
        signature.as_ref().map_or(&[][..], |s| &s[..]),
        body,
    )?;
    socket.send(frame, flags)?;
    Ok(())
}

/// Sends a request.
pub fn send_request(
    socket: &zmq::Socket,
    job: u64,
    request: &ClusterRequest,
) -> Result<(), MessageError> {
    let header = Header {
        kind: MessageKind::Request,
        job,
        id: request.id,
    };
    send_record(socket, &header, codec::Record::Request(request), 0)
}

/// Sends several requests as one message ([`MessageKind::Requests`]).
pub fn send_requests(
    socket: &zmq::Socket,
    job: u64,
    requests: &[ClusterRequest],
) -> Result<(), MessageError> {
    let header = Header {
        kind: MessageKind::Requests,
        job,
        id: requests.first().map_or(0, |r| r.id),
    };
    send(socket, &header, requests, 0)
}

/// Sends several results as one message ([`MessageKind::Results`]).
pub fn send_results(
    socket: &zmq::Socket,
    job: u64,
    results: &[ClusterResult],
    flags: i32,
) -> Result<(), MessageError> {
    let header = Header {
        kind: MessageKind::Results,
        job,
        id: results.first().map_or(0, |r| r.id),
    };
    send(socket, &header, results, flags)
}

/// Sends a result. `flags` may hold `zmq::DONTWAIT`.
pub fn send_result(
    socket: &zmq::Socket,
    job: u64,
    result: &ClusterResult,
    flags: i32,
) -> Result<(), MessageError> {
    send_result_ref(socket, job, result.into(), flags)
}

/// Sends a result from its fields, borrowed (a worker's, without copying
/// its host and name into a [`ClusterResult`] first).
pub(crate) fn send_result_ref(
    socket: &zmq::Socket,
    job: u64,
    result: ResultRef<'_>,
    flags: i32,
) -> Result<(), MessageError> {
    let header = Header {
        kind: MessageKind::Result(result.status),
        job,
        id: result.id,
    };
    send_record(socket, &header, codec::Record::result(result)?, flags)
}

/// Sends a request or result unsigned (a toolkit socket), its body written
/// by hand straight into the ZeroMQ message: sized first, then written
/// once, with no buffer in between.
fn send_record(
    socket: &zmq::Socket,
    header: &Header,
    record: codec::Record<'_>,
    flags: i32,
) -> Result<(), MessageError> {
    let body_len = record.len();
    check_size("body", body_len, MAX_MESSAGE_BYTES)?;
    check_size(
        "message",
        MAX_PREFIX_BYTES - SIGNATURE_BYTES + body_len,
        MAX_MESSAGE_BYTES,
    )?;
    let frame = frame::build_with(&header.to_bytes(), &[], body_len, |out| {
        record.write(&mut codec::Fill(out));
        Ok(())
    })?;
    socket.send(frame, flags)?;
    Ok(())
}

/// Receives one message and checks its frames and header. Every frame of a
/// multipart message is consumed even when the message is bad, so the next
/// receive starts at a message boundary.
pub fn recv(socket: &zmq::Socket, flags: i32) -> Result<Envelope, MessageError> {
    recv_checked(socket, flags, None).map(|(envelope, _)| envelope)
}

fn recv_checked(
    socket: &zmq::Socket,
    flags: i32,
    verifier: Option<&mut Verifier>,
) -> Result<(Envelope, Option<Verified>), MessageError> {
    let mut frame = zmq::Message::new();
    socket.recv(&mut frame, flags)?;
    if frame.get_more() {
        // Drain and drop the rest: a message of several frames is another
        // version's (its first frame says which) or a stranger's.
        let mut count = 1;
        let mut extra = zmq::Message::new();
        loop {
            socket.recv(&mut extra, flags)?;
            count += 1;
            if !extra.get_more() {
                break;
            }
        }
        return Err(match frame::check_protocol(&frame) {
            Err(e @ MessageError::WrongVersion { .. }) => e,
            _ => MessageError::FrameCount { got: count },
        });
    }
    let (header, body_at, verified) = frame::check(&frame, verifier)?;
    let envelope = Envelope {
        header,
        body: Body::Zmq(frame, body_at),
    };
    Ok((envelope, verified))
}

// The layout of the one frame every message travels in.
mod frame;

// Owned strings and bytes decoded by borrowing from the message first.
mod owned;

// Requests and results written and read by hand, in bincode's bytes.
mod codec;
pub(crate) use codec::{decode_result_items, decode_submit_items};

pub(crate) use codec::ResultRef;

pub use frame::{encode_frame, Parts, HEADER_BYTES, MAX_PREFIX_BYTES};

// The signed socket every hub connection uses (`message/signed.rs`).
mod signed;

pub use signed::SignedSocket;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    // One generator of records for the wire's tests and the codec's.
    use codec::tests::{any_metadata, any_result};

    fn sample_result(id: u64, status: ResultStatus) -> ClusterResult {
        ClusterResult {
            id,
            status,
            payload: vec![1, 2, 3],
            request_metadata: [("k".to_string(), "v".to_string())].into(),
            metadata: ResultMetadata {
                host: "h".into(),
                pid: 42,
                worker: "w0".into(),
                started: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
                elapsed: Duration::from_micros(1500),
            },
            exception: (status == ResultStatus::Fail).then(|| "boom".to_string()),
        }
    }

    fn result_frames(result: &ClusterResult) -> Vec<Vec<u8>> {
        let header = Header {
            kind: MessageKind::Result(result.status),
            job: 3,
            id: result.id,
        };
        frames(&header, result).unwrap()
    }

    /// The frame's layout, byte by byte: a change to it is a new protocol
    /// version.
    #[test]
    fn a_message_is_one_frame_laid_out_as_documented() {
        let header = Header {
            kind: MessageKind::Request,
            job: 3,
            id: 9,
        };
        let frames = frames(&header, &ClusterRequest::new(9, vec![7])).unwrap();
        assert_eq!(frames.len(), 1);
        let frame = &frames[0];
        assert_eq!(&frame[..10], b"zcluster/6");
        assert_eq!(frame[10], 0, "no signature on a toolkit socket");
        assert_eq!(frame[11], 0, "kind: request");
        assert_eq!(frame[12..20], 3u64.to_le_bytes());
        assert_eq!(frame[20..28], 9u64.to_le_bytes());
        assert_eq!(
            &frame[28..],
            &encode_value(&ClusterRequest::new(9, vec![7]), "body").unwrap()[..]
        );
        let parts = Parts::of(frame).unwrap();
        assert_eq!(parts.header, &header.to_bytes()[..]);
        assert!(parts.signature.is_empty());
    }

    #[test]
    fn result_round_trips_and_header_decodes_alone() {
        let result = sample_result(9, ResultStatus::Fail);
        let frames = result_frames(&result);
        let envelope = Envelope::from_frames(&frames).unwrap();
        assert_eq!(
            envelope.header.kind,
            MessageKind::Result(ResultStatus::Fail)
        );
        assert_eq!(envelope.header.job, 3);
        assert_eq!(envelope.result().unwrap(), result);
        assert!(matches!(
            envelope.request(),
            Err(MessageError::UnexpectedKind { .. })
        ));
    }

    #[test]
    fn bad_messages_are_errors() {
        let good = result_frames(&sample_result(1, ResultStatus::Ok));
        let parts = |frames: &[Vec<u8>]| {
            let p = Parts::of(&frames[0]).unwrap();
            (
                p.signature.to_vec(),
                Header::from_bytes(p.header).unwrap(),
                p.body.to_vec(),
            )
        };
        let (_, good_header, good_body) = parts(&good);
        let mut wrong_version = good.clone();
        wrong_version[0][..10].copy_from_slice(b"zcluster/9");
        assert!(matches!(
            Envelope::from_frames(&wrong_version),
            Err(MessageError::WrongVersion { .. })
        ));
        // A zcluster/5 peer's four frames say which version they are.
        let old = [&b"zcluster/5"[..], b"", b"\x00\x00\x01", b"body"];
        assert!(matches!(
            Envelope::from_frames(&old),
            Err(MessageError::WrongVersion { got }) if got == "zcluster/5"
        ));
        let mut alien = good.clone();
        alien[0][..5].copy_from_slice(b"hello");
        assert!(matches!(
            Envelope::from_frames(&alien),
            Err(MessageError::NotZcluster { .. })
        ));
        let signed = vec![encode_frame(&good_header, &[0; 32], &good_body).unwrap()];
        assert!(matches!(
            Envelope::from_frames(&signed),
            Err(MessageError::UnexpectedSignature)
        ));
        assert!(matches!(
            Envelope::from_frames(&[&good[0][..], &good[0][..]]),
            Err(MessageError::FrameCount { got: 2 })
        ));
        assert!(matches!(
            Envelope::from_frames::<Vec<u8>>(&[]),
            Err(MessageError::FrameCount { got: 0 })
        ));
        let mut trailing = good.clone();
        trailing[0].push(0);
        let envelope = Envelope::from_frames(&trailing).unwrap();
        assert!(matches!(
            envelope.result(),
            Err(MessageError::TrailingBytes { extra: 1, .. })
        ));
        let mut truncated = good.clone();
        truncated[0].truncate(28 + 5);
        let envelope = Envelope::from_frames(&truncated).unwrap();
        assert!(matches!(
            envelope.result(),
            Err(MessageError::Decode { .. })
        ));
        let mut unknown_kind = good.clone();
        unknown_kind[0][11] = 0xee;
        assert!(matches!(
            Envelope::from_frames(&unknown_kind),
            Err(MessageError::UnknownKind { code: 0xee })
        ));
        let mut short = good.clone();
        short[0].truncate(20);
        assert!(matches!(
            Envelope::from_frames(&short),
            Err(MessageError::Truncated {
                size: 20,
                prefix: 28
            })
        ));
        let mismatched = vec![encode_frame(
            &Header {
                kind: MessageKind::Result(ResultStatus::Ok),
                job: 0,
                id: 2,
            },
            &[],
            &good_body,
        )
        .unwrap()];
        let envelope = Envelope::from_frames(&mismatched).unwrap();
        assert!(matches!(
            envelope.result(),
            Err(MessageError::IdMismatch { header: 2, body: 1 })
        ));
    }

    #[test]
    fn huge_length_prefix_is_bounded() {
        // A request claiming a 2^40-byte payload in a few bytes: without a
        // limit bincode would try to allocate it and abort the process.
        let mut body = vec![1u8]; // id = 1
        body.push(253); // varint marker for a u64 length
        body.extend_from_slice(&(1u64 << 40).to_le_bytes());
        let err = decode_value::<ClusterRequest>(&body, "request body").unwrap_err();
        assert!(matches!(err, MessageError::Decode { .. }), "{err}");
        let header = Header {
            kind: MessageKind::Request,
            job: 0,
            id: 1,
        };
        let frames = vec![encode_frame(&header, &[], &body).unwrap()];
        assert!(Envelope::from_frames(&frames).unwrap().request().is_err());
    }

    #[test]
    fn send_and_recv_over_a_socket_pair() {
        let ctx = zmq::Context::new();
        let a = ctx.socket(zmq::PAIR).unwrap();
        a.bind("inproc://message-test").unwrap();
        let b = ctx.socket(zmq::PAIR).unwrap();
        b.connect("inproc://message-test").unwrap();
        let request = ClusterRequest::encode(5, "payload")
            .unwrap()
            .with_metadata("input", "x.png");
        send_request(&a, 11, &request).unwrap();
        let envelope = recv(&b, 0).unwrap();
        assert_eq!(envelope.header.job, 11);
        let back = envelope.request().unwrap();
        assert_eq!(back, request);
        assert_eq!(back.decode::<String>().unwrap(), "payload");
        // A five-frame message is rejected whole and the next one reads
        // fine; so is a zcluster/5 peer's, said to be of another version.
        a.send_multipart([&b"x"[..], b"y", b"z", b"w", b"v"], 0)
            .unwrap();
        a.send_multipart([&b"zcluster/5"[..], b"", b"h", b"b"], 0)
            .unwrap();
        send_request(&a, 0, &request).unwrap();
        assert!(matches!(
            recv(&b, 0),
            Err(MessageError::FrameCount { got: 5 })
        ));
        assert!(matches!(
            recv(&b, 0),
            Err(MessageError::WrongVersion { got }) if got == "zcluster/5"
        ));
        assert_eq!(recv(&b, 0).unwrap().request().unwrap(), request);
    }

    proptest! {
        #[test]
        fn requests_round_trip(id in any::<u64>(), job in any::<u64>(),
                               payload in proptest::collection::vec(any::<u8>(), 0..512),
                               metadata in any_metadata()) {
            let request = ClusterRequest { id, payload, metadata };
            let header = Header { kind: MessageKind::Request, job, id };
            let frames = frames(&header, &request).unwrap();
            let envelope = Envelope::from_frames(&frames).unwrap();
            prop_assert_eq!(envelope.header, header);
            prop_assert_eq!(envelope.request().unwrap(), request);
        }

        #[test]
        fn results_round_trip(result in any_result()) {
            let frames = result_frames(&result);
            prop_assert_eq!(Envelope::from_frames(&frames).unwrap().result().unwrap(), result);
        }

        #[test]
        fn random_frames_never_panic(frames in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..64), 0..6),
            prefixed in any::<bool>()) {
            // Half of them behind this version's name, so the prefix's
            // own checks see random bytes too.
            let frames: Vec<Vec<u8>> = frames.into_iter().map(|frame| {
                if prefixed { [PROTOCOL, &frame[..]].concat() } else { frame }
            }).collect();
            if let Ok(envelope) = Envelope::from_frames(&frames) {
                let _ = envelope.request();
                let _ = envelope.result();
                let _ = envelope.command();
                let _ = envelope.reply();
            }
        }

        #[test]
        fn random_bodies_behind_a_valid_header_never_panic(
            kind in 0u8..4, body in proptest::collection::vec(any::<u8>(), 0..128)) {
            let kind = match kind {
                0 => MessageKind::Request,
                1 => MessageKind::Result(ResultStatus::Ok),
                2 => MessageKind::Command,
                _ => MessageKind::Reply,
            };
            let frames = vec![encode_frame(&Header { kind, job: 0, id: 0 }, &[], &body).unwrap()];
            let envelope = Envelope::from_frames(&frames).unwrap();
            let _ = envelope.request();
            let _ = envelope.result();
            let _ = envelope.command();
            let _ = envelope.reply();
        }

        #[test]
        fn corrupted_valid_messages_never_panic(result in any_result(),
                                                 flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let mut frames = result_frames(&result);
            for (at, byte) in flips {
                // Anywhere past the protocol name: the signature length,
                // the header or the body.
                let frame = &mut frames[0];
                let i = PROTOCOL.len() + at % (frame.len() - PROTOCOL.len());
                frame[i] ^= byte;
            }
            if let Ok(envelope) = Envelope::from_frames(&frames) {
                let _ = envelope.result();
            }
        }
    }
}
