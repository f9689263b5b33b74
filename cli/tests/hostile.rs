//! Hostile input at every port a real hub binds (engines, clients,
//! notifications): random frames and multipart messages from every ZeroMQ
//! socket kind that can connect (and the handshakes of those that cannot),
//! hand-made ZMTP that lies about a frame's length, and raw TCP garbage.
//! Afterwards, and while more of it keeps coming, a real map must get every
//! result exactly once and in order, and the hub must still be alive and
//! small.
//!
//! The hostile peers here hold the cluster's CURVE keys (read from the
//! connection file), so their frames reach the hub's code: what a peer
//! without them gets (nothing past the handshake) is `attacks.rs`'s.
//!
//! Nothing here depends on whether messages are signed: the random messages
//! are dropped either way, and a random body that happens to decode as a
//! well-formed call is never sent (an unsigned but well-formed call is a
//! question for signing, not for malformed input).
//!
//! The input is drawn from a seeded RNG (`ZCLUSTER_HOSTILE_SEED=N` to try
//! another seed; the seed is printed).

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::Value;
use zcluster::hub::curve::{self, CurveKeys};
use zcluster::hub::protocol::{ClientCall, EngineMessage};
use zcluster::message::{self, Header, MessageKind, ResultStatus, PROTOCOL};

use crate::common::*;

const DEFAULT_SEED: u64 = 20_251_123;
/// Largest random frame.
const MAX_FRAME: usize = 100 * 1024;
/// The hub's resident memory must stay under this.
const RSS_LIMIT_KIB: u64 = 500 * 1024;
/// Most hostile messages sent while the map runs.
const DURING_CAP: usize = 2000;
/// How long a hostile socket may take to write out what it queued.
const LINGER_MS: i32 = 5000;
/// Inputs of the map that must come through.
const INPUTS: usize = 200;

/// The three URLs of the connection file, and its CURVE keys.
struct Ports {
    engines: String,
    clients: String,
    notifications: String,
    curve: CurveKeys,
}

impl Ports {
    fn read(hub: &Hub) -> Self {
        let text = std::fs::read_to_string(&hub.file).expect("read the connection file");
        let info: Value = serde_json::from_str(&text).expect("the connection file is JSON");
        let url = |key: &str| {
            let url = info[key]
                .as_str()
                .unwrap_or_else(|| panic!("no `{key}` URL in {info}"));
            assert!(url.starts_with("tcp://"), "{key}: {url}");
            url.to_string()
        };
        Ports {
            engines: url("engines"),
            clients: url("clients"),
            notifications: url("notifications"),
            curve: serde_json::from_value(info["curve"].clone()).expect("CURVE keys"),
        }
    }

    fn all(&self) -> [(&'static str, &str); 3] {
        [
            ("engines", &self.engines),
            ("clients", &self.clients),
            ("notifications", &self.notifications),
        ]
    }
}

/// `host:port` of a `tcp://host:port` URL.
fn address(url: &str) -> &str {
    url.strip_prefix("tcp://").expect("a tcp:// URL")
}

/// The resident set of process `pid`, in KiB.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// Random hostile messages, and counts of what was sent.
struct Attacker {
    rng: StdRng,
    /// Messages accepted by a socket (or written to TCP) for the hub.
    sent: usize,
    bytes: usize,
    /// Random messages that happened to be well-formed calls: not sent.
    skipped: usize,
}

impl Attacker {
    fn new(seed: u64) -> Self {
        Attacker {
            rng: StdRng::seed_from_u64(seed),
            sent: 0,
            bytes: 0,
            skipped: 0,
        }
    }

    /// A size skewed to small (where decoders are most likely to get far)
    /// but reaching [`MAX_FRAME`].
    fn size(&mut self) -> usize {
        match self.rng.random_range(0..10) {
            0..=3 => self.rng.random_range(0..=16),
            4..=6 => self.rng.random_range(17..=1024),
            _ => self.rng.random_range(1025..=MAX_FRAME),
        }
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut bytes = vec![0; len];
        self.rng.fill_bytes(&mut bytes);
        bytes
    }

    fn frame(&mut self) -> Vec<u8> {
        let len = self.size();
        self.bytes(len)
    }

    /// A header that decodes, naming any kind, a small job and any id.
    fn valid_header(&mut self) -> Header {
        let kind = match self.rng.random_range(0..6) {
            0 => MessageKind::Request,
            1 => MessageKind::Result(ResultStatus::Ok),
            2 => MessageKind::Result(ResultStatus::Fail),
            3 => MessageKind::Command,
            4 => MessageKind::Reply,
            _ => MessageKind::Control,
        };
        Header {
            kind,
            job: self.rng.random_range(0..4),
            id: if self.rng.random_bool(0.5) {
                self.rng.random_range(0..300)
            } else {
                self.rng.random()
            },
        }
    }

    /// One hostile multipart message.
    fn message(&mut self) -> Vec<Vec<u8>> {
        loop {
            let frames = match self.rng.random_range(0..6) {
                // One random frame.
                0 => vec![self.frame()],
                // 1 to 8 random frames.
                1 => {
                    let n = self.rng.random_range(1..=8);
                    (0..n).map(|_| self.frame()).collect()
                }
                // The protocol's name and version, then garbage (in the
                // same frame or in more).
                2 => {
                    let n = self.rng.random_range(0..=7);
                    let first = [PROTOCOL, &self.frame()].concat();
                    std::iter::once(first)
                        .chain((0..n).map(|_| self.frame()))
                        .collect()
                }
                // The right shape: protocol (sometimes another version),
                // a signature length (sometimes a lie), then signature,
                // header and body all random.
                3 => {
                    let protocol = match self.rng.random_range(0..4) {
                        0 => b"zcluster/2".to_vec(),
                        1 => b"zcluster/".to_vec(),
                        _ => PROTOCOL.to_vec(),
                    };
                    let signature = self.signature();
                    let claimed = if self.rng.random_bool(0.8) {
                        signature.len() as u8
                    } else {
                        self.rng.random()
                    };
                    let header_len = self.rng.random_range(0..=40);
                    let header = self.bytes(header_len);
                    let body = self.frame();
                    vec![[&protocol[..], &[claimed], &signature, &header, &body].concat()]
                }
                // A header that decodes, with a random body (and signature).
                _ => {
                    let signature = self.signature();
                    let header = self.valid_header();
                    let body = self.frame();
                    vec![message::encode_frame(&header, &signature, &body).expect("a frame")]
                }
            };
            if well_formed_call(&frames) {
                self.skipped += 1;
                continue;
            }
            return frames;
        }
    }

    /// Empty (no signing), 64 random bytes (a nonce and an HMAC-SHA256's
    /// size), or any random bytes up to the 255 a signature's length byte
    /// can say.
    fn signature(&mut self) -> Vec<u8> {
        match self.rng.random_range(0..3) {
            0 => Vec::new(),
            1 => self.bytes(zcluster::auth::SIGNATURE_BYTES),
            _ => {
                let len = self.rng.random_range(0..=255);
                self.bytes(len)
            }
        }
    }
}

/// Whether `frames` would be a well-formed control call to a hub that did not
/// check signatures (whatever its signature frame holds).
fn well_formed_call(frames: &[Vec<u8>]) -> bool {
    let [frame] = frames else {
        return false;
    };
    let Ok(parts) = message::Parts::of(frame) else {
        return false;
    };
    match Header::from_bytes(parts.header) {
        Ok(header) if header.kind == MessageKind::Control => {
            message::decode_value::<ClientCall>(parts.body, "body").is_ok()
                || message::decode_value::<EngineMessage>(parts.body, "body").is_ok()
        }
        _ => false,
    }
}

/// Waits up to `limit` for the socket `monitor` watches to finish a ZMTP
/// handshake with its peer.
fn handshake_within(monitor: &zmq::Socket, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        monitor
            .set_rcvtimeo(left.as_millis().max(1) as i32)
            .expect("set rcvtimeo");
        match monitor.recv_multipart(0) {
            Ok(event) if event_code(&event) == zmq::SocketEvent::HANDSHAKE_SUCCEEDED as u16 => {
                return true
            }
            Ok(_) => {}
            Err(_) => return false,
        }
    }
}

/// Whether any event already queued on `monitor` is a successful handshake.
fn handshake_queued(monitor: &zmq::Socket) -> bool {
    let mut succeeded = false;
    while let Ok(event) = monitor.recv_multipart(zmq::DONTWAIT) {
        succeeded |= event_code(&event) == zmq::SocketEvent::HANDSHAKE_SUCCEEDED as u16;
    }
    succeeded
}

/// The event number of a monitor message (first frame: u16 event, u32 value).
fn event_code(event: &[Vec<u8>]) -> u16 {
    let first = &event[0];
    u16::from_le_bytes([first[0], first[1]])
}

/// A socket of `kind` connected to `url` with the cluster's CURVE `keys`,
/// with a monitor to tell whether its handshake succeeded.
fn hostile_socket(
    ctx: &zmq::Context,
    kind: zmq::SocketType,
    url: &str,
    keys: &CurveKeys,
) -> (zmq::Socket, zmq::Socket) {
    static MONITORS: AtomicUsize = AtomicUsize::new(0);
    let socket = ctx.socket(kind).expect("create a socket");
    curve::client(&socket, keys).expect("CURVE keys");
    // Queue only to a peer whose handshake is done; flush at close.
    socket.set_immediate(true).unwrap();
    socket.set_linger(LINGER_MS).unwrap();
    socket.set_sndhwm(100_000).unwrap();
    if kind == zmq::REQ {
        // Send again without waiting for a reply the hub never sends.
        socket.set_req_relaxed(true).unwrap();
    }
    let endpoint = format!(
        "inproc://hostile-monitor-{}",
        MONITORS.fetch_add(1, Ordering::Relaxed)
    );
    socket
        .monitor(&endpoint, zmq::SocketEvent::ALL as i32)
        .expect("monitor a socket");
    let monitor = ctx.socket(zmq::PAIR).unwrap();
    monitor.set_linger(0).unwrap();
    monitor.connect(&endpoint).unwrap();
    socket.connect(url).expect("connect");
    (socket, monitor)
}

/// A hostile socket connected to one of the hub's ports, in a context of
/// its own (so closing it can wait for what it queued).
struct Conn {
    name: &'static str,
    kind: zmq::SocketType,
    socket: zmq::Socket,
    monitor: zmq::Socket,
    ctx: zmq::Context,
}

impl Conn {
    /// Connects and waits (bounded) for the handshake.
    fn open(kind: zmq::SocketType, name: &'static str, url: &str, keys: &CurveKeys) -> Self {
        let ctx = zmq::Context::new();
        let (socket, monitor) = hostile_socket(&ctx, kind, url, keys);
        assert!(
            handshake_within(&monitor, FAIL_AFTER),
            "a {kind:?} socket never completed its handshake with the hub's {name} port {url}"
        );
        // Have the socket take its new pipe now: a SUB's setsockopt does not
        // process commands, so its subscriptions would otherwise wait in its
        // own trie until it closes.
        socket.get_events().expect("ZMQ_EVENTS");
        Conn {
            name,
            kind,
            socket,
            monitor,
            ctx,
        }
    }

    /// Sends `count` hostile messages (a SUB: subscriptions, half of them
    /// cancelled again).
    fn send(&self, attacker: &mut Attacker, count: usize) {
        let name = self.name;
        let deadline = Instant::now() + FAIL_AFTER;
        for _ in 0..count {
            if self.kind == zmq::SUB {
                // All a SUB can say is (un)subscribe; each is a message to
                // the PUB.
                let prefix = attacker.frame();
                self.socket.set_subscribe(&prefix).unwrap();
                if attacker.rng.random_bool(0.5) {
                    self.socket.set_unsubscribe(&prefix).unwrap();
                }
                attacker.sent += 1;
                attacker.bytes += prefix.len();
                continue;
            }
            let frames = attacker.message();
            loop {
                match self.socket.send_multipart(&frames, zmq::DONTWAIT) {
                    Ok(()) => break,
                    Err(zmq::Error::EAGAIN) => {
                        assert!(
                            Instant::now() < deadline,
                            "the hub's {name} port stopped taking messages"
                        );
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) => panic!("send to the hub's {name} port: {e}"),
                }
            }
            attacker.sent += 1;
            attacker.bytes += frames.iter().map(Vec::len).sum::<usize>();
        }
    }

    /// Closes, waiting (bounded by the linger) until everything queued has
    /// been written out.
    fn close(self) {
        let Conn {
            name,
            socket,
            monitor,
            ctx,
            ..
        } = self;
        drop(monitor);
        drop(socket);
        let started = Instant::now();
        drop(ctx);
        assert!(
            started.elapsed() < Duration::from_millis(LINGER_MS as u64),
            "hostile messages to the hub's {name} port were still queued after the linger"
        );
    }
}

/// Sends `count` hostile messages from a new `kind` socket and closes it.
fn attack_with(
    attacker: &mut Attacker,
    kind: zmq::SocketType,
    name: &'static str,
    url: &str,
    keys: &CurveKeys,
    count: usize,
) {
    let conn = Conn::open(kind, name, url, keys);
    conn.send(attacker, count);
    conn.close();
}

/// Connects socket kinds the port's ROUTER or PUB does not accept, offers a
/// message, and leaves: the hub sees a failed handshake.
fn mismatched_kinds(ports: &Ports) {
    let ctx = zmq::Context::new();
    let mut sockets = Vec::new();
    for (name, url) in ports.all() {
        let kinds: &[zmq::SocketType] = if name == "notifications" {
            &[zmq::DEALER, zmq::PUSH, zmq::REQ, zmq::PAIR, zmq::PUB]
        } else {
            &[
                zmq::PUSH,
                zmq::PULL,
                zmq::PUB,
                zmq::SUB,
                zmq::PAIR,
                zmq::XPUB,
            ]
        };
        for &kind in kinds {
            let (socket, monitor) = hostile_socket(&ctx, kind, url, &ports.curve);
            socket.set_linger(0).unwrap();
            // With ZMQ_IMMEDIATE nothing is queued without a handshake.
            let _ = socket.send(PROTOCOL, zmq::DONTWAIT);
            sockets.push((name, kind, socket, monitor));
        }
    }
    // Long enough for a few handshakes and reconnects.
    std::thread::sleep(Duration::from_millis(300));
    for (name, kind, _, monitor) in &sockets {
        assert!(
            !handshake_queued(monitor),
            "a {kind:?} socket completed a handshake with the hub's {name} port"
        );
    }
}

/// The 64-byte ZMTP 3.0 greeting of a NULL-mechanism client.
fn zmtp_greeting() -> Vec<u8> {
    let mut greeting = vec![0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0x7f, 3, 0];
    greeting.extend_from_slice(b"NULL");
    greeting.resize(64, 0);
    greeting
}

/// A ZMTP READY command announcing `socket_type`.
fn zmtp_ready(socket_type: &str) -> Vec<u8> {
    let mut body = b"\x05READY\x0bSocket-Type".to_vec();
    body.extend_from_slice(&(socket_type.len() as u32).to_be_bytes());
    body.extend_from_slice(socket_type.as_bytes());
    let mut command = vec![0x04, body.len() as u8];
    command.extend_from_slice(&body);
    command
}

/// Raw TCP at every port: garbage from the first byte, garbage after a
/// valid greeting, and a proper handshake followed by a frame claiming more
/// than the hub accepts (sent only in part).
fn raw_tcp(attacker: &mut Attacker, ports: &Ports, per_port: usize) {
    for (name, url) in ports.all() {
        for i in 0..per_port {
            let mut stream = match TcpStream::connect(address(url)) {
                Ok(stream) => stream,
                Err(e) => panic!("connect to the hub's {name} port {url}: {e}"),
            };
            stream
                .set_write_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let mut bytes = match i % 4 {
                // Garbage that does not start like a ZMTP greeting.
                0 | 1 => {
                    let mut garbage = attacker.frame();
                    if garbage.first() == Some(&0xff) {
                        garbage[0] = 0;
                    }
                    garbage
                }
                // A greeting, then garbage.
                2 => {
                    let mut bytes = zmtp_greeting();
                    bytes.extend(attacker.frame());
                    bytes
                }
                // A handshake, then one frame of 2^40 or just over 64 MiB,
                // of which a little arrives.
                _ => {
                    let peer = if name == "notifications" {
                        "SUB"
                    } else {
                        "DEALER"
                    };
                    let mut bytes = zmtp_greeting();
                    bytes.extend(zmtp_ready(peer));
                    let claim: u64 = if attacker.rng.random_bool(0.5) {
                        1 << 40
                    } else {
                        (message::MAX_MESSAGE_BYTES + 1) as u64
                    };
                    bytes.push(0x02);
                    bytes.extend_from_slice(&claim.to_be_bytes());
                    bytes.extend(attacker.bytes(4096));
                    bytes
                }
            };
            if bytes.is_empty() {
                bytes.push(0);
            }
            // The hub may hang up mid-write: that is its right.
            let _ = stream.write_all(&bytes);
            attacker.sent += 1;
            attacker.bytes += bytes.len();
        }
    }
}

/// Stack for the thread that subscribes: libzmq 4.3.4 keeps a SUB's (and an
/// XSUB's) own subscriptions in a trie whose insert recurses once per byte of
/// the prefix, so a 100 KiB prefix needs several MiB of stack in the
/// subscribing thread, more than a test thread's 2 MiB. (Only virtual: pages
/// are touched as the recursion goes.)
const SUBSCRIBER_STACK: usize = 256 << 20;

/// Runs `body` on a thread with [`SUBSCRIBER_STACK`], passing its panic on.
fn on_big_stack(body: impl FnOnce() + Send + 'static) {
    let thread = std::thread::Builder::new()
        .name("hostile".into())
        .stack_size(SUBSCRIBER_STACK)
        .spawn(body)
        .expect("spawn a thread");
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn hostile_input_at_every_port_leaves_the_hub_serving() {
    on_big_stack(hostile_input_at_every_port);
}

fn hostile_input_at_every_port() {
    let seed = std::env::var("ZCLUSTER_HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    eprintln!("hostile input seed {seed} (ZCLUSTER_HOSTILE_SEED to change)");
    let started = Instant::now();
    let mut hub = Hub::start();
    let workers = hub.workers(2, 2);
    let ports = Ports::read(&hub);
    let pid = hub.proc.pid();
    let rss_before = rss_kib(pid);
    let mut attacker = Attacker::new(seed);

    // The engine and client ports (ROUTER): the kinds that can talk to one.
    for (name, url) in [("engines", &ports.engines), ("clients", &ports.clients)] {
        attack_with(&mut attacker, zmq::DEALER, name, url, &ports.curve, 600);
        attack_with(&mut attacker, zmq::REQ, name, url, &ports.curve, 200);
    }
    // The notification port (PUB): subscriptions from a SUB, anything from
    // an XSUB. The hub reads what subscribers sent only when it publishes,
    // so they stay connected while an engine registers and leaves.
    let sub = Conn::open(
        zmq::SUB,
        "notifications",
        &ports.notifications,
        &ports.curve,
    );
    sub.send(&mut attacker, 200);
    let xsub = Conn::open(
        zmq::XSUB,
        "notifications",
        &ports.notifications,
        &ports.curve,
    );
    xsub.send(&mut attacker, 300);
    drop(hub.workers(1, 1));
    wait_until("the extra engine to leave", || hub.engines().len() == 2);
    sub.close();
    xsub.close();
    // Every port: socket kinds it does not accept, then raw TCP.
    mismatched_kinds(&ports);
    raw_tcp(&mut attacker, &ports, 40);
    let flood = (attacker.sent, attacker.bytes);
    eprintln!(
        "sent {} hostile messages ({} MiB) in {:?}; skipped {} well-formed calls",
        flood.0,
        flood.1 >> 20,
        started.elapsed(),
        attacker.skipped
    );
    assert!(hub.proc.running(), "the hub died:\n{}", hub.proc.log());
    hub.wait_ready();
    let rss_after = rss_kib(pid);

    // A map, while more hostile messages keep arriving at the engine and
    // client ports (from before it starts until it ends, or a cap).
    let stop = Arc::new(AtomicBool::new(false));
    let sending = Arc::new(AtomicUsize::new(0));
    let during = {
        let (stop, sending) = (stop.clone(), sending.clone());
        let (engines, clients) = (ports.engines.clone(), ports.clients.clone());
        let keys = ports.curve.clone();
        std::thread::spawn(move || {
            let mut attacker = Attacker::new(seed.wrapping_add(1));
            let conns = [
                Conn::open(zmq::DEALER, "engines", &engines, &keys),
                Conn::open(zmq::DEALER, "clients", &clients, &keys),
            ];
            while !stop.load(Ordering::Relaxed) && attacker.sent < DURING_CAP {
                conns[attacker.sent % 2].send(&mut attacker, 1);
                sending.store(attacker.sent, Ordering::Relaxed);
            }
            for conn in conns {
                conn.close();
            }
            attacker.sent
        })
    };
    wait_until("hostile messages to flow", || {
        sending.load(Ordering::Relaxed) >= 50
    });
    let (file, inputs) = numbered_inputs(hub.dir(), "in.txt", "input-", INPUTS);
    let results = hub.dir().join("results.jsonl");
    let mut map = hub.spawn_map(
        "map",
        &[
            file.to_str().unwrap(),
            "--results",
            results.to_str().unwrap(),
            "--",
            "echo",
        ],
    );
    let status = map.wait();
    stop.store(true, Ordering::Relaxed);
    let during = during.join().expect("the hostile thread panicked");
    eprintln!(
        "{during} more hostile messages while the map ran; whole test {:?}",
        started.elapsed()
    );
    assert!(
        status.success(),
        "map failed: {}\nhub log (tail):\n{}",
        map.stderr(),
        tail(&hub.proc.log(), 40)
    );

    // Every result exactly once, in input order: on stdout, in the results
    // file and in the hub's store.
    assert_eq!(map.stdout(), lines_text(&inputs));
    let records = json_lines(&results);
    let seqs: Vec<u64> = records.iter().map(|r| field_u64(r, "seq")).collect();
    assert_eq!(seqs, (1..=INPUTS as u64).collect::<Vec<_>>());
    for (record, input) in records.iter().zip(&inputs) {
        assert_eq!(record["status"], "ok", "{record}");
        assert_eq!(record["stdout"], format!("{input}\n"), "{record}");
    }
    let job = map.job().expect("the map names its job");
    let (code, stored) = hub.results(job);
    assert_eq!(code, Some(0));
    let stored: Vec<u64> = stored.iter().map(|r| field_u64(r, "seq")).collect();
    assert_eq!(stored, (1..=INPUTS as u64).collect::<Vec<_>>());
    let job_status = hub.job(job).expect("the job is in status");
    assert_eq!(
        field_u64(&job_status, "done"),
        INPUTS as u64,
        "{job_status}"
    );
    assert_eq!(field_u64(&job_status, "failed"), 0, "{job_status}");

    // Still alive, still small, workers still there.
    assert!(hub.proc.running() && alive(pid), "the hub died");
    let rss_end = rss_kib(pid);
    eprintln!("hub VmRSS: {rss_before} KiB before, {rss_after} KiB after the flood, {rss_end} KiB at the end");
    for rss in [rss_after, rss_end] {
        assert!(
            rss < RSS_LIMIT_KIB,
            "hub resident memory {rss} KiB (limit {RSS_LIMIT_KIB} KiB)"
        );
    }
    wait_until("both workers to be registered", || hub.engines().len() == 2);
    for mut worker in workers {
        assert!(worker.running(), "a worker died: {}", worker.log());
    }
}

/// Subscriptions are ZMTP, below message signing, so anyone who reaches the
/// notification port can send them; libzmq would keep each (about 32 bytes
/// per byte) until its peer leaves. Before the hub took them in by hand
/// (XPUB manual mode, only the empty topic applied, 64-byte frames), 200
/// subscriptions of 100 KiB took it from 16 MiB to about 650 MiB.
#[test]
fn subscriptions_to_the_notification_port_stay_cheap() {
    on_big_stack(|| {
        const SUBSCRIPTIONS: usize = 200;
        let hub = Hub::start();
        let ports = Ports::read(&hub);
        let pid = hub.proc.pid();
        let before = rss_kib(pid);
        let mut attacker = Attacker::new(DEFAULT_SEED);
        let sub = Conn::open(
            zmq::SUB,
            "notifications",
            &ports.notifications,
            &ports.curve,
        );
        for _ in 0..SUBSCRIPTIONS {
            let prefix = attacker.bytes(MAX_FRAME);
            sub.socket.set_subscribe(&prefix).unwrap();
        }
        // The hub reads subscriptions when it next publishes: an engine
        // registering (done once status lists it).
        let _worker = hub.workers(1, 1);
        let grown = rss_kib(pid).saturating_sub(before);
        // The hub drops a peer that sends oversized subscriptions, so what
        // is still queued here never drains: no flush to wait for.
        drop(sub);
        let sent_kib = (SUBSCRIPTIONS * MAX_FRAME) >> 10;
        eprintln!("{sent_kib} KiB of subscriptions grew the hub by {grown} KiB");
        assert!(
            grown < 64 * 1024,
            "{sent_kib} KiB of subscriptions from one unauthenticated SUB grew the hub by {grown} KiB"
        );
    });
}

/// Forged messages as large as the hub takes cost it a full HMAC each
/// before it can refuse them: a burst of them keeps the hub away from its
/// sockets for longer than an engine may be silent. That time is the hub's,
/// not the engine's: no engine is declared dead for it, and no task runs
/// twice.
#[test]
fn a_hub_busy_refusing_large_forged_messages_declares_no_engine_dead() {
    const FORGED: usize = 8;
    const FORGED_BYTES: usize = 24 << 20;
    let hub = Hub::start();
    let _worker = hub.workers(1, 2);
    let ports = Ports::read(&hub);
    let inputs = input_file(hub.dir(), "sleeps", &["1.5", "1.5"]);
    let mut map = hub.spawn_map("stall", &[inputs.to_str().unwrap(), "--", "sleep"]);
    wait_until("both tasks to start", || {
        hub.status()["jobs"]
            .as_array()
            .is_some_and(|jobs| jobs.iter().any(|j| field_u64(j, "running") == 2))
    });
    let ctx = zmq::Context::new();
    let attacker = ctx.socket(zmq::DEALER).unwrap();
    attacker.set_linger(LINGER_MS).unwrap();
    attacker.set_sndhwm(FORGED as i32).unwrap();
    // A holder of the file's CURVE keys: without them nothing would arrive.
    curve::client(&attacker, &ports.curve).unwrap();
    attacker.connect(&ports.clients).unwrap();
    let header = Header {
        kind: MessageKind::Control,
        job: 0,
        id: 1,
    };
    let body = vec![0x5a; FORGED_BYTES];
    let signature = vec![0xa5; zcluster::auth::SIGNATURE_BYTES];
    let forged = message::encode_frame(&header, &signature, &body).unwrap();
    let started = Instant::now();
    for _ in 0..FORGED {
        attacker.send(&forged[..], 0).unwrap();
    }
    drop(attacker);
    drop(ctx);
    eprintln!(
        "{FORGED} forged messages of {FORGED_BYTES} bytes sent in {:?}",
        started.elapsed()
    );
    let status = map.wait();
    assert!(status.success(), "map failed: {}", map.stderr());
    let log = hub.proc.log();
    assert!(
        !log.contains("declared dead"),
        "an engine was declared dead:\n{}",
        tail(&log, 30)
    );
    let (code, records) = hub.results(map.job().expect("a job id"));
    assert_eq!(code, Some(0));
    assert_eq!(records.len(), 2);
    for record in &records {
        assert_eq!(
            field_u64(record, "attempts"),
            1,
            "a task ran twice: {record}"
        );
    }
}

/// A keyless peer picks its own routing identity, bytes and all. One that
/// holds a newline and a terminal escape, sending garbage to the engine
/// and client ports, reaches the hub's log escaped: no forged log line, no
/// escape acting on whoever reads the log on a terminal.
#[test]
fn a_peer_identity_with_a_newline_and_escapes_is_logged_escaped() {
    const FORGED_LINE: &str = "WARN forged: engine 99 declared dead";
    let hub = Hub::start();
    let ports = Ports::read(&hub);
    let ctx = zmq::Context::new();
    let mut sockets = Vec::new();
    for (n, (side, url)) in [("engines", &ports.engines), ("clients", &ports.clients)]
        .into_iter()
        .enumerate()
    {
        let identity = format!("evil-{side}\n{FORGED_LINE}\x1b[2J");
        let socket = ctx.socket(zmq::DEALER).unwrap();
        socket.set_linger(0).unwrap();
        socket.set_identity(identity.as_bytes()).unwrap();
        curve::client(&socket, &ports.curve).unwrap();
        socket.connect(url).unwrap();
        let garbage: [&[u8]; 2] = [b"garbage\n\x1b[31m", b"\x1b]0;title\x07"];
        socket.send_multipart(garbage, 0).unwrap();
        sockets.push(socket);
        wait_until(
            &format!("the hub to log the peer on its {side} port"),
            || hub.proc.log().matches("dropping a bad message").count() > n,
        );
        let log = hub.proc.log();
        let escaped = format!("evil-{side}\\x0a{FORGED_LINE}\\x1b[2J");
        assert!(
            log.contains(&escaped),
            "no `{escaped}` in the hub's log:\n{log}"
        );
    }
    let log = hub.proc.log();
    assert!(
        !log.contains('\x1b'),
        "a raw ESC byte in the hub's log:\n{}",
        log.escape_debug()
    );
    let forged: Vec<&str> = log
        .lines()
        .filter(|line| line.starts_with(FORGED_LINE))
        .collect();
    assert!(forged.is_empty(), "a peer forged log lines: {forged:?}");
}
