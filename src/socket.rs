//! Socket descriptors: what a socket *will be*, as plain data.
//!
//! A [`FutureSocket`] names a URL, a socket kind, whether to bind or connect,
//! a few options and optional delays. It can be written in a configuration
//! file or on a command line in a short form and turned into a real
//! `zmq::Socket` later with [`FutureSocket::make`]. This is glimpse's
//! `Connect` object: components take a descriptor (or an already built
//! socket, see [`SocketSource`]) so the same code runs over `inproc`, `ipc`
//! and `tcp`, bound or connected, without knowing which.
//!
//! # Short form
//!
//! ```text
//! [bind:|connect:]URL[?option=value&option=value...]
//! ```
//!
//! `bind:tcp://*:5555`, `tcp://head:5555`, `ipc:///tmp/x`, `inproc://x`,
//! `tcp://head:5555?hwm=10&linger=0ms`. Options: `sndhwm`, `rcvhwm`, `hwm`
//! (both), `linger`, `rcvtimeo`, `sndtimeo` (durations such as `250ms` or
//! `2s`; a bare number is milliseconds), `identity`, `subscribe` (repeatable,
//! a prefix; an empty value subscribes to everything), `maxmsgsize` (bytes,
//! `-1` for no limit), `pre_delay`, `post_delay`. The socket kind is not part
//! of the short form: the component that uses the socket decides it (a
//! ventilator always makes a `PUSH`).
//!
//! ```
//! use zcluster::socket::{FutureSocket, SocketKind};
//! let s = FutureSocket::parse("bind:tcp://*:5555?hwm=10", SocketKind::Push).unwrap();
//! assert!(s.bind);
//! assert_eq!(s.to_string(), "bind:tcp://*:5555?sndhwm=10&rcvhwm=10");
//! ```

use std::fmt;
use std::str::FromStr;
use std::thread;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::message::MAX_MESSAGE_BYTES;

/// How long a socket may hold unsent messages after it is dropped.
///
/// libzmq's default is forever, which turns a dropped socket with a queue for
/// a vanished peer into a hang at exit. Long enough to flush a final result
/// or command over loopback or a LAN, short enough never to be noticed.
pub const DEFAULT_LINGER: Duration = Duration::from_millis(500);

/// Errors from describing or building a socket.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// The URL is not one ZeroMQ can use.
    #[error("bad socket URL `{url}`: {reason}")]
    BadUrl {
        /// The URL concerned.
        url: String,
        /// Why, in words.
        reason: String,
    },
    /// An option in the short form is unknown or has a bad value.
    #[error("bad socket option `{option}` in `{spec}`: {reason}")]
    BadOption {
        /// The short form as given.
        spec: String,
        /// The option concerned.
        option: String,
        /// Why, in words.
        reason: String,
    },
    /// The socket kind name is not a ZeroMQ socket type.
    #[error("unknown socket kind `{0}` (expected PUSH, PULL, PUB, SUB, REQ, REP, DEALER, ROUTER, PAIR, XPUB or XSUB)")]
    UnknownKind(String),
    /// An existing socket was handed to a component that needs another kind.
    #[error("wrong socket kind for {role}: expected {expected}, got {actual}")]
    WrongKind {
        /// Which socket of the component.
        role: &'static str,
        /// The kind it needs.
        expected: SocketKind,
        /// The kind it got.
        actual: SocketKind,
    },
    /// libzmq refused an operation.
    #[error("cannot {operation} {kind} socket on `{url}`: {source}")]
    Zmq {
        /// What was being done.
        operation: &'static str,
        /// The socket kind.
        kind: SocketKind,
        /// The URL concerned.
        url: String,
        /// The underlying error.
        #[source]
        source: zmq::Error,
    },
}

/// The ZeroMQ socket types, printed the way the ZeroMQ guide names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum SocketKind {
    /// PAIR: exclusive pair.
    Pair,
    /// PUB: publish to all subscribers.
    Pub,
    /// SUB: subscribe by prefix.
    Sub,
    /// REQ: strict request/reply client.
    Req,
    /// REP: strict request/reply server.
    Rep,
    /// DEALER: asynchronous requests, fair-queued.
    Dealer,
    /// ROUTER: addresses peers by identity.
    Router,
    /// PULL: fair-queued receive.
    Pull,
    /// PUSH: round-robin send.
    Push,
    /// XPUB: PUB that sees subscriptions.
    XPub,
    /// XSUB: SUB that sends subscriptions.
    XSub,
}

impl SocketKind {
    const ALL: [SocketKind; 11] = [
        SocketKind::Pair,
        SocketKind::Pub,
        SocketKind::Sub,
        SocketKind::Req,
        SocketKind::Rep,
        SocketKind::Dealer,
        SocketKind::Router,
        SocketKind::Pull,
        SocketKind::Push,
        SocketKind::XPub,
        SocketKind::XSub,
    ];

    /// The libzmq socket type.
    pub fn to_zmq(self) -> zmq::SocketType {
        match self {
            SocketKind::Pair => zmq::PAIR,
            SocketKind::Pub => zmq::PUB,
            SocketKind::Sub => zmq::SUB,
            SocketKind::Req => zmq::REQ,
            SocketKind::Rep => zmq::REP,
            SocketKind::Dealer => zmq::DEALER,
            SocketKind::Router => zmq::ROUTER,
            SocketKind::Pull => zmq::PULL,
            SocketKind::Push => zmq::PUSH,
            SocketKind::XPub => zmq::XPUB,
            SocketKind::XSub => zmq::XSUB,
        }
    }

    /// The kind of a libzmq socket type (`None` for `STREAM`, which zcluster
    /// does not use).
    pub fn from_zmq(kind: zmq::SocketType) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.to_zmq() == kind)
    }

    /// The name as the ZeroMQ guide spells it (`PUSH`, `XPUB`).
    pub fn name(self) -> &'static str {
        match self {
            SocketKind::Pair => "PAIR",
            SocketKind::Pub => "PUB",
            SocketKind::Sub => "SUB",
            SocketKind::Req => "REQ",
            SocketKind::Rep => "REP",
            SocketKind::Dealer => "DEALER",
            SocketKind::Router => "ROUTER",
            SocketKind::Pull => "PULL",
            SocketKind::Push => "PUSH",
            SocketKind::XPub => "XPUB",
            SocketKind::XSub => "XSUB",
        }
    }

    /// Whether sockets of this kind receive messages, and so need a maximum
    /// message size to keep a hostile peer from making them allocate.
    pub fn receives(self) -> bool {
        !matches!(self, SocketKind::Pub | SocketKind::Push)
    }
}

impl fmt::Display for SocketKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SocketKind {
    type Err = SocketError;
    fn from_str(s: &str) -> Result<Self, SocketError> {
        Self::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| SocketError::UnknownKind(s.to_string()))
    }
}

/// Socket options a descriptor may carry. `None` leaves the zcluster default
/// (libzmq's, except linger and the maximum message size, see
/// [`DEFAULT_LINGER`] and [`MAX_MESSAGE_BYTES`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SocketOptions {
    /// Send high-water mark, in messages.
    pub send_hwm: Option<i32>,
    /// Receive high-water mark, in messages.
    pub receive_hwm: Option<i32>,
    /// How long unsent messages are kept after close.
    #[serde(with = "humantime_serde")]
    pub linger: Option<Duration>,
    /// Socket identity (ROUTER peers address this socket by it).
    pub identity: Option<String>,
    /// SUB prefixes; a SUB socket with none subscribes to everything.
    pub subscribe: Vec<String>,
    /// A blocking receive gives up after this long.
    #[serde(with = "humantime_serde")]
    pub receive_timeout: Option<Duration>,
    /// A blocking send gives up after this long.
    #[serde(with = "humantime_serde")]
    pub send_timeout: Option<Duration>,
    /// Largest message accepted, in bytes; `-1` for no limit.
    pub max_message_size: Option<i64>,
}

/// A socket to be made: URL, kind, bind or connect, options and delays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FutureSocket {
    /// `tcp://host:port`, `ipc:///path` or `inproc://name`.
    pub url: String,
    /// The ZeroMQ socket type.
    pub kind: SocketKind,
    /// Bind when true, connect when false.
    #[serde(default)]
    pub bind: bool,
    /// Options applied before binding or connecting.
    #[serde(default)]
    pub options: SocketOptions,
    /// Wait this long before binding or connecting.
    #[serde(default, with = "humantime_serde")]
    pub pre_delay: Option<Duration>,
    /// Wait this long after binding or connecting (glimpse's crude answer to
    /// slow joiners; zcluster's components do not need it).
    #[serde(default, with = "humantime_serde")]
    pub post_delay: Option<Duration>,
}

impl FutureSocket {
    /// A descriptor that binds `url`.
    pub fn bind(url: impl Into<String>, kind: SocketKind) -> Self {
        Self::new(url, kind, true)
    }

    /// A descriptor that connects to `url`.
    pub fn connect(url: impl Into<String>, kind: SocketKind) -> Self {
        Self::new(url, kind, false)
    }

    fn new(url: impl Into<String>, kind: SocketKind, bind: bool) -> Self {
        FutureSocket {
            url: url.into(),
            kind,
            bind,
            options: SocketOptions::default(),
            pre_delay: None,
            post_delay: None,
        }
    }

    /// The same descriptor with other options.
    pub fn with_options(mut self, options: SocketOptions) -> Self {
        self.options = options;
        self
    }

    /// The same descriptor with send and receive high-water marks set.
    pub fn with_hwm(mut self, hwm: i32) -> Self {
        self.options.send_hwm = Some(hwm);
        self.options.receive_hwm = Some(hwm);
        self
    }

    /// Parses the short form (see the module docs) for a socket of `kind`.
    pub fn parse(spec: &str, kind: SocketKind) -> Result<Self, SocketError> {
        let (bind, rest) = if let Some(rest) = spec.strip_prefix("bind:") {
            (true, rest)
        } else if let Some(rest) = spec.strip_prefix("connect:") {
            (false, rest)
        } else {
            (false, spec)
        };
        let (url, query) = match rest.split_once('?') {
            Some((url, query)) => (url, Some(query)),
            None => (rest, None),
        };
        validate_url(url, bind)?;
        let mut socket = FutureSocket::new(url, kind, bind);
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            if pair.is_empty() {
                continue;
            }
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            socket
                .set_option(name, value)
                .map_err(|reason| SocketError::BadOption {
                    spec: spec.to_string(),
                    option: name.to_string(),
                    reason,
                })?;
        }
        Ok(socket)
    }

    fn set_option(&mut self, name: &str, value: &str) -> Result<(), String> {
        let o = &mut self.options;
        match name {
            "sndhwm" => o.send_hwm = Some(parse_int(value)?),
            "rcvhwm" => o.receive_hwm = Some(parse_int(value)?),
            "hwm" => {
                let hwm = parse_int(value)?;
                o.send_hwm = Some(hwm);
                o.receive_hwm = Some(hwm);
            }
            "linger" => o.linger = Some(parse_duration(value)?),
            "rcvtimeo" => o.receive_timeout = Some(parse_duration(value)?),
            "sndtimeo" => o.send_timeout = Some(parse_duration(value)?),
            "identity" => {
                if value.is_empty() || value.len() > 255 {
                    return Err("an identity is 1 to 255 bytes".into());
                }
                o.identity = Some(value.to_string());
            }
            "subscribe" => o.subscribe.push(value.to_string()),
            "maxmsgsize" => {
                o.max_message_size = Some(value.parse().map_err(|e| format!("{e}"))?);
            }
            "pre_delay" => self.pre_delay = Some(parse_duration(value)?),
            "post_delay" => self.post_delay = Some(parse_duration(value)?),
            _ => {
                return Err(
                    "unknown option (known: sndhwm, rcvhwm, hwm, linger, rcvtimeo, \
                     sndtimeo, identity, subscribe, maxmsgsize, pre_delay, post_delay)"
                        .into(),
                )
            }
        }
        Ok(())
    }

    /// Builds the socket: applies the options, waits `pre_delay`, binds or
    /// connects, waits `post_delay`.
    pub fn make(&self, ctx: &zmq::Context) -> Result<zmq::Socket, SocketError> {
        let fail = |operation, source| SocketError::Zmq {
            operation,
            kind: self.kind,
            url: self.url.clone(),
            source,
        };
        let socket = ctx
            .socket(self.kind.to_zmq())
            .map_err(|e| fail("create", e))?;
        self.apply_options(&socket)
            .map_err(|e| fail("set options on", e))?;
        if let Some(delay) = self.pre_delay {
            thread::sleep(delay);
        }
        if self.bind {
            socket.bind(&self.url).map_err(|e| fail("bind", e))?;
        } else {
            socket.connect(&self.url).map_err(|e| fail("connect", e))?;
        }
        if let Some(delay) = self.post_delay {
            thread::sleep(delay);
        }
        Ok(socket)
    }

    fn apply_options(&self, socket: &zmq::Socket) -> Result<(), zmq::Error> {
        let o = &self.options;
        if let Some(hwm) = o.send_hwm {
            socket.set_sndhwm(hwm)?;
        }
        if let Some(hwm) = o.receive_hwm {
            socket.set_rcvhwm(hwm)?;
        }
        socket.set_linger(millis(o.linger.unwrap_or(DEFAULT_LINGER)))?;
        if let Some(identity) = &o.identity {
            socket.set_identity(identity.as_bytes())?;
        }
        if let Some(timeout) = o.receive_timeout {
            socket.set_rcvtimeo(millis(timeout))?;
        }
        if let Some(timeout) = o.send_timeout {
            socket.set_sndtimeo(millis(timeout))?;
        }
        if self.kind.receives() {
            let limit = o.max_message_size.unwrap_or(MAX_MESSAGE_BYTES as i64);
            socket.set_maxmsgsize(limit)?;
        }
        if self.kind == SocketKind::Sub {
            if o.subscribe.is_empty() {
                socket.set_subscribe(b"")?;
            }
            for prefix in &o.subscribe {
                socket.set_subscribe(prefix.as_bytes())?;
            }
        }
        Ok(())
    }
}

/// Prints the short form; `parse` reads it back to an equal descriptor.
impl fmt::Display for FutureSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.bind {
            f.write_str("bind:")?;
        }
        f.write_str(&self.url)?;
        let o = &self.options;
        let mut pairs: Vec<(&str, String)> = Vec::new();
        if let Some(v) = o.send_hwm {
            pairs.push(("sndhwm", v.to_string()));
        }
        if let Some(v) = o.receive_hwm {
            pairs.push(("rcvhwm", v.to_string()));
        }
        let durations = [
            ("linger", o.linger),
            ("rcvtimeo", o.receive_timeout),
            ("sndtimeo", o.send_timeout),
        ];
        for (name, value) in durations {
            if let Some(d) = value {
                pairs.push((name, format_duration(d)));
            }
        }
        if let Some(v) = &o.identity {
            pairs.push(("identity", v.clone()));
        }
        for prefix in &o.subscribe {
            pairs.push(("subscribe", prefix.clone()));
        }
        if let Some(v) = o.max_message_size {
            pairs.push(("maxmsgsize", v.to_string()));
        }
        for (name, value) in [
            ("pre_delay", self.pre_delay),
            ("post_delay", self.post_delay),
        ] {
            if let Some(d) = value {
                pairs.push((name, format_duration(d)));
            }
        }
        for (i, (name, value)) in pairs.iter().enumerate() {
            write!(f, "{}{name}={value}", if i == 0 { '?' } else { '&' })?;
        }
        Ok(())
    }
}

/// Either a descriptor to build or a socket someone already built.
///
/// Components accept `impl Into<SocketSource>`, so a caller can hand them a
/// [`FutureSocket`] or a ready `zmq::Socket` (glimpse's `init_socket`).
pub enum SocketSource {
    /// Build this descriptor with the component's context.
    Descriptor(FutureSocket),
    /// Use this socket as it is, after checking its kind.
    Socket(zmq::Socket),
}

impl From<FutureSocket> for SocketSource {
    fn from(s: FutureSocket) -> Self {
        SocketSource::Descriptor(s)
    }
}

impl From<zmq::Socket> for SocketSource {
    fn from(s: zmq::Socket) -> Self {
        SocketSource::Socket(s)
    }
}

/// Makes the socket a component needs from a descriptor or checks the kind of
/// an existing socket. `role` names the socket in errors ("worker requests").
pub fn init_socket(
    ctx: &zmq::Context,
    source: impl Into<SocketSource>,
    expected: SocketKind,
    role: &'static str,
) -> Result<zmq::Socket, SocketError> {
    match source.into() {
        SocketSource::Descriptor(descriptor) => {
            if descriptor.kind != expected {
                return Err(SocketError::WrongKind {
                    role,
                    expected,
                    actual: descriptor.kind,
                });
            }
            descriptor.make(ctx)
        }
        SocketSource::Socket(socket) => {
            let actual = socket
                .get_socket_type()
                .ok()
                .and_then(SocketKind::from_zmq)
                .unwrap_or(SocketKind::Pair);
            if actual != expected {
                return Err(SocketError::WrongKind {
                    role,
                    expected,
                    actual,
                });
            }
            Ok(socket)
        }
    }
}

/// Sets an integer option the `zmq` crate has no setter for (a draft
/// option such as `ZMQ_ZAP_ENFORCE_DOMAIN`, or `ZMQ_XPUB_MANUAL`), straight
/// through libzmq.
pub fn set_int_option(
    socket: &mut zmq::Socket,
    option: libc::c_int,
    value: libc::c_int,
) -> Result<(), zmq::Error> {
    // SAFETY: `socket` is live for the whole call, and the value points at
    // a c_int of the size given, as zmq_setsockopt wants.
    let rc = unsafe {
        zmq_sys::zmq_setsockopt(
            socket.as_mut_ptr(),
            option,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<libc::c_int>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        // SAFETY: zmq_errno only reads this thread's last libzmq error.
        Err(zmq::Error::from_raw(unsafe { zmq_sys::zmq_errno() }))
    }
}

/// The endpoint a socket actually bound, e.g. the port chosen for
/// `tcp://127.0.0.1:*`. Tests use it to get free ports without races.
pub fn last_endpoint(socket: &zmq::Socket) -> Result<String, SocketError> {
    let kind = socket
        .get_socket_type()
        .ok()
        .and_then(SocketKind::from_zmq)
        .unwrap_or(SocketKind::Pair);
    let fail = |source| SocketError::Zmq {
        operation: "read the endpoint of",
        kind,
        url: String::new(),
        source,
    };
    match socket.get_last_endpoint() {
        Ok(Ok(endpoint)) => Ok(endpoint),
        Ok(Err(_)) => Err(fail(zmq::Error::EINVAL)),
        Err(e) => Err(fail(e)),
    }
}

/// Which of a socket and its optional second socket became readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Readable {
    /// Nothing within the timeout.
    Timeout,
    /// At least one is readable: (main socket, command socket).
    Ready(bool, bool),
}

/// Waits up to `timeout` (forever when `None`) for `main` or `commands` to
/// have a message, retrying when a signal interrupts the wait. Workers and
/// sinks wait on their data and command sockets this way; the hub and
/// engines on their two sockets.
pub(crate) fn poll_readable(
    main: &zmq::Socket,
    commands: Option<&zmq::Socket>,
    timeout: Option<Duration>,
) -> Result<Readable, zmq::Error> {
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    let mut items = [
        main.as_poll_item(zmq::POLLIN),
        // A second slot even without a command socket keeps this on the
        // stack; it is left out of the poll below.
        commands.unwrap_or(main).as_poll_item(zmq::POLLIN),
    ];
    let used = if commands.is_some() { 2 } else { 1 };
    loop {
        // Round up, so a wait never ends a fraction of a millisecond early.
        let timeout_ms = deadline.map_or(-1, |d| {
            let left = d.saturating_duration_since(std::time::Instant::now());
            i64::from(millis(left + Duration::from_nanos(999_999)))
        });
        match zmq::poll(&mut items[..used], timeout_ms) {
            Ok(0) => return Ok(Readable::Timeout),
            Ok(_) => {
                let commands_ready = used == 2 && items[1].is_readable();
                return Ok(Readable::Ready(items[0].is_readable(), commands_ready));
            }
            Err(zmq::Error::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

fn validate_url(url: &str, bind: bool) -> Result<(), SocketError> {
    let bad = |reason: &str| SocketError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    if url.chars().any(char::is_control) {
        return Err(bad(
            "a URL cannot contain control characters (libzmq would cut it at a NUL)",
        ));
    }
    let Some((transport, address)) = url.split_once("://") else {
        return Err(bad("expected TRANSPORT://ADDRESS with tcp, ipc or inproc"));
    };
    if address.is_empty() {
        return Err(bad("the address after :// is empty"));
    }
    match transport {
        "tcp" => {
            let Some((host, port)) = address.rsplit_once(':') else {
                return Err(bad("a tcp address needs a port: tcp://HOST:PORT"));
            };
            if host.is_empty() {
                return Err(bad("the host is empty (use * to bind every interface)"));
            }
            if port == "*" || port == "!" {
                if !bind {
                    return Err(bad("a wildcard port can only be bound, not connected to"));
                }
            } else if port.parse::<u16>().is_err() {
                return Err(bad("the port must be a number from 0 to 65535 or *"));
            }
            if host == "*" && !bind {
                return Err(bad("cannot connect to the wildcard host *"));
            }
            Ok(())
        }
        "ipc" | "inproc" => Ok(()),
        _ => Err(bad("unknown transport (expected tcp, ipc or inproc)")),
    }
}

fn parse_int(value: &str) -> Result<i32, String> {
    let n: i32 = value.parse().map_err(|e| format!("`{value}`: {e}"))?;
    if n < 0 {
        return Err(format!("`{value}` is negative"));
    }
    Ok(n)
}

/// A duration in humantime form (`250ms`, `2s`), or a bare number of
/// milliseconds as libzmq's options count them.
fn parse_duration(value: &str) -> Result<Duration, String> {
    let duration = match value.parse::<u64>() {
        Ok(ms) => Duration::from_millis(ms),
        Err(_) => humantime::parse_duration(value).map_err(|e| format!("`{value}`: {e}"))?,
    };
    // libzmq counts option milliseconds in an int; a longer delay is a typo.
    if duration > MAX_OPTION_DURATION {
        return Err(format!(
            "`{value}` is longer than {} (the most libzmq can count)",
            humantime::format_duration(MAX_OPTION_DURATION)
        ));
    }
    // Printed back in whole milliseconds, so keep no finer part.
    Ok(Duration::from_millis(duration.as_millis() as u64))
}

/// The longest duration an option may have: `i32::MAX` milliseconds.
const MAX_OPTION_DURATION: Duration = Duration::from_millis(i32::MAX as u64);

fn format_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// A duration as libzmq's int milliseconds, saturating.
pub(crate) fn millis(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_forms_parse() {
        let s = FutureSocket::parse("bind:tcp://*:5555", SocketKind::Push).unwrap();
        assert!(s.bind);
        assert_eq!(s.url, "tcp://*:5555");
        let s = FutureSocket::parse("tcp://head:5555", SocketKind::Pull).unwrap();
        assert!(!s.bind);
        assert_eq!(s.to_string(), "tcp://head:5555");
        for spec in ["ipc:///tmp/x", "inproc://x", "bind:inproc://x"] {
            let s = FutureSocket::parse(spec, SocketKind::Pull).unwrap();
            assert_eq!(s.to_string(), spec);
        }
        let s = FutureSocket::parse("connect:tcp://h:1", SocketKind::Pull).unwrap();
        assert_eq!(s.to_string(), "tcp://h:1");
    }

    #[test]
    fn options_parse_and_print_back() {
        let spec = "bind:tcp://127.0.0.1:*?sndhwm=5&rcvhwm=7&linger=0ms&rcvtimeo=1500ms\
                    &identity=w1&subscribe=a&subscribe=&maxmsgsize=-1&pre_delay=10ms";
        let s = FutureSocket::parse(spec, SocketKind::Sub).unwrap();
        assert_eq!(s.options.send_hwm, Some(5));
        assert_eq!(s.options.linger, Some(Duration::ZERO));
        assert_eq!(s.options.receive_timeout, Some(Duration::from_millis(1500)));
        assert_eq!(s.options.subscribe, vec!["a".to_string(), String::new()]);
        assert_eq!(s.to_string(), spec);
        let s = FutureSocket::parse("tcp://h:1?linger=2s", SocketKind::Push).unwrap();
        assert_eq!(s.options.linger, Some(Duration::from_secs(2)));
    }

    #[test]
    fn bad_urls_and_options_are_named() {
        let cases = [
            ("tcp//x:1", "TRANSPORT://"),
            ("udp://x:1", "unknown transport"),
            ("tcp://x", "needs a port"),
            ("tcp://x:99999", "port must be"),
            ("tcp://x:*", "wildcard port"),
            ("tcp://*:1", "wildcard host"),
            ("inproc://", "empty"),
        ];
        for (spec, want) in cases {
            let err = FutureSocket::parse(spec, SocketKind::Push).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(want), "{spec}: {msg}");
            assert!(msg.contains(spec.trim_start_matches("bind:")), "{msg}");
        }
        let err = FutureSocket::parse("tcp://x:1?hwm=-3", SocketKind::Push).unwrap_err();
        assert!(err.to_string().contains("`hwm`"), "{err}");
        let err = FutureSocket::parse("tcp://x:1?colour=red", SocketKind::Push).unwrap_err();
        assert!(err.to_string().contains("unknown option"), "{err}");
    }

    #[test]
    fn fuzzer_findings_are_errors_not_broken_round_trips() {
        // A NUL in the URL (libzmq takes C strings) and a delay of 15,000
        // years (whose milliseconds overflow humantime's nanoseconds on the
        // way back) once parsed but did not print back to themselves.
        let spec = "ipc://::2\0cvrcvhwm?pre_delay=0000000000497554225488149";
        let err = FutureSocket::parse(spec, SocketKind::Sub).unwrap_err();
        assert!(err.to_string().contains("control characters"), "{err}");
        let err =
            FutureSocket::parse("ipc:///x?pre_delay=497554225488149", SocketKind::Sub).unwrap_err();
        assert!(err.to_string().contains("longer than"), "{err}");
        let s = FutureSocket::parse("ipc:///x?linger=1500us", SocketKind::Sub).unwrap();
        assert_eq!(
            FutureSocket::parse(&s.to_string(), SocketKind::Sub).unwrap(),
            s
        );
    }

    #[test]
    fn kinds_print_and_parse() {
        for kind in SocketKind::ALL {
            assert_eq!(kind.name().parse::<SocketKind>().unwrap(), kind);
            assert_eq!(SocketKind::from_zmq(kind.to_zmq()), Some(kind));
        }
        assert_eq!("push".parse::<SocketKind>().unwrap(), SocketKind::Push);
        assert_eq!(SocketKind::Push.to_string(), "PUSH");
        assert!("SHOVE".parse::<SocketKind>().is_err());
    }

    #[test]
    fn descriptors_serialise() {
        let s = FutureSocket::parse("bind:tcp://*:5?hwm=3&linger=5ms", SocketKind::Push).unwrap();
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"PUSH\""), "{json}");
        let back: FutureSocket = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn make_binds_connects_and_checks_kinds() {
        let ctx = zmq::Context::new();
        let pull = FutureSocket::bind("tcp://127.0.0.1:*", SocketKind::Pull)
            .make(&ctx)
            .unwrap();
        let endpoint = last_endpoint(&pull).unwrap();
        let push = init_socket(
            &ctx,
            FutureSocket::connect(endpoint, SocketKind::Push),
            SocketKind::Push,
            "test",
        )
        .unwrap();
        push.send("hi", 0).unwrap();
        assert_eq!(pull.recv_bytes(0).unwrap(), b"hi");
        let err = init_socket(&ctx, pull, SocketKind::Push, "test sender")
            .map(|_| ())
            .unwrap_err();
        assert!(err.to_string().contains("expected PUSH, got PULL"), "{err}");
        let err = FutureSocket::connect("ipc:///nonexistent/dir/x", SocketKind::Push)
            .make(&ctx)
            .map(|_| ());
        assert!(err.is_ok(), "connect is asynchronous in ZeroMQ");
        let err = FutureSocket::bind("ipc:///nonexistent/dir/x", SocketKind::Pull)
            .make(&ctx)
            .map(|_| ())
            .unwrap_err();
        assert!(err
            .to_string()
            .contains("cannot bind PULL socket on `ipc:///nonexistent/dir/x`"));
    }

    fn any_options() -> impl Strategy<Value = SocketOptions> {
        let ms = proptest::option::of((0u64..100_000).prop_map(Duration::from_millis));
        (
            proptest::option::of(0i32..100_000),
            proptest::option::of(0i32..100_000),
            ms.clone(),
            proptest::option::of("[a-z0-9]{1,12}"),
            proptest::collection::vec("[a-z0-9]{0,6}", 0..3),
            ms.clone(),
            ms,
            proptest::option::of(-1i64..1 << 40),
        )
            .prop_map(
                |(sh, rh, linger, identity, subscribe, rt, st, max)| SocketOptions {
                    send_hwm: sh,
                    receive_hwm: rh,
                    linger,
                    identity,
                    subscribe,
                    receive_timeout: rt,
                    send_timeout: st,
                    max_message_size: max,
                },
            )
    }

    proptest! {
        #[test]
        fn short_form_round_trips(
            bind in any::<bool>(),
            url in prop_oneof![
                "tcp://[a-z]{1,8}:[0-9]{1,4}",
                "ipc:///tmp/[a-z]{1,8}",
                "inproc://[a-z.-]{1,8}",
            ],
            options in any_options(),
        ) {
            let mut s = FutureSocket::new(url, SocketKind::Sub, bind);
            s.options = options;
            let back = FutureSocket::parse(&s.to_string(), SocketKind::Sub).unwrap();
            prop_assert_eq!(back, s);
        }

        #[test]
        fn parse_never_panics(spec in ".{0,64}") {
            let _ = FutureSocket::parse(&spec, SocketKind::Push);
        }
    }
}
