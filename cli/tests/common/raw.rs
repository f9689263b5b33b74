//! Hand-made messages on raw sockets, for tests that play a peer exactly
//! (a key holder, a stranger, a replayer): the frames a hub expects, signed
//! or not, and the handshake that learns its epoch.

use serde::Serialize;
use zcluster::auth::Signer;
use zcluster::hub::curve::{self, CurveKeys};
use zcluster::hub::protocol::ClientCall;
use zcluster::message::{
    encode_frame, encode_value, Envelope, Header, MessageKind, Parts, PROTOCOL,
};

/// The frames (one) of a message to the hub, signed by `signer` (or
/// unsigned).
pub fn signed_frames<T: Serialize + ?Sized>(
    signer: Option<&Signer>,
    header: &Header,
    body: &T,
) -> Vec<Vec<u8>> {
    let body = encode_value(body, "body").unwrap();
    let signature = signer.map_or_else(Vec::new, |s| {
        s.sign(PROTOCOL, &header.to_bytes(), &body).to_vec()
    });
    vec![encode_frame(header, &signature, &body).unwrap()]
}

/// Says hello as a key holder on a raw socket, as every engine and client
/// does first, and signs for the hub's epoch from then on (read from the
/// welcome's signature: bytes 24..32).
pub fn learn_epoch(socket: &zmq::Socket, signer: &mut Signer) {
    let hello = Header {
        kind: MessageKind::Hello,
        job: 0,
        id: 77,
    };
    socket
        .send_multipart(signed_frames(Some(signer), &hello, &()), 0)
        .unwrap();
    let frames = socket.recv_multipart(0).expect("a welcome");
    let signature = Parts::of(&frames[0]).expect("a zcluster message").signature;
    let epoch = u64::from_le_bytes(signature[24..32].try_into().unwrap());
    assert_ne!(epoch, 0, "the welcome carries the hub's epoch");
    signer.set_epoch(epoch);
}

/// The header of a control message (a client call numbered `id`, or an
/// engine's message with id 0).
pub fn control(id: u64) -> Header {
    Header {
        kind: MessageKind::Control,
        job: 0,
        id,
    }
}

/// The frames of a client call, signed by `signer` (or unsigned).
pub fn call_frames(signer: Option<&Signer>, request: u64, call: &ClientCall) -> Vec<Vec<u8>> {
    signed_frames(signer, &control(request), call)
}

/// A raw DEALER on one of the hub's ports (`url`), with the cluster's
/// CURVE `keys` (those of the connection file, so its frames reach the
/// hub), so a test can send exactly the frames it wants.
pub fn raw_dealer(ctx: &zmq::Context, url: &str, keys: &CurveKeys, identity: &[u8]) -> zmq::Socket {
    let socket = ctx.socket(zmq::DEALER).unwrap();
    curve::client(&socket, keys).unwrap();
    socket.set_identity(identity).unwrap();
    socket.set_linger(0).unwrap();
    socket.set_rcvtimeo(500).unwrap();
    socket.connect(url).unwrap();
    socket
}

/// Whether an answer to `request` arrives within the socket's timeout.
pub fn answered(socket: &zmq::Socket, request: u64) -> bool {
    while let Ok(frames) = socket.recv_multipart(0) {
        // Read as unsigned: only its header matters here.
        let parts = Parts::of(&frames[0]).unwrap();
        let header = Header::from_bytes(parts.header).unwrap();
        let envelope =
            Envelope::from_frames(&[encode_frame(&header, &[], parts.body).unwrap()]).unwrap();
        if envelope.header.id == request {
            return true;
        }
    }
    false
}

/// The hub's URLs as its connection file names them, read as plain JSON
/// (so an attack test needs nothing else from the file).
pub fn hub_url(file: &std::path::Path, port: &str) -> String {
    let text = std::fs::read_to_string(file).expect("read the connection file");
    let info: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    info[port]
        .as_str()
        .unwrap_or_else(|| panic!("no `{port}` in {info}"))
        .to_string()
}

/// Watches `socket`'s connections: a PAIR that receives its monitor
/// events. Drop the socket before the monitor (libzmq's blocking event
/// sends must find a reader).
pub fn monitored(ctx: &zmq::Context, socket: &zmq::Socket, name: &str) -> zmq::Socket {
    static MONITORS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = MONITORS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let endpoint = format!("inproc://raw-monitor-{name}-{n}");
    socket
        .monitor(&endpoint, zmq::SocketEvent::ALL as i32)
        .unwrap();
    let monitor = ctx.socket(zmq::PAIR).unwrap();
    monitor.set_linger(0).unwrap();
    monitor.connect(&endpoint).unwrap();
    monitor
}

/// The first handshake outcome `monitor` reports within `limit`: the event
/// (`HANDSHAKE_SUCCEEDED` or one of the `HANDSHAKE_FAILED_*`) and its value
/// (for `HANDSHAKE_FAILED_AUTH`, the ZAP status code).
pub fn handshake_outcome(
    monitor: &zmq::Socket,
    limit: std::time::Duration,
) -> Option<(zmq::SocketEvent, u32)> {
    use zmq::SocketEvent::*;
    let deadline = std::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return None;
        }
        monitor
            .set_rcvtimeo(left.as_millis().clamp(1, i32::MAX as u128) as i32)
            .unwrap();
        let frames = monitor.recv_multipart(0).ok()?;
        let head = &frames[0];
        let event = zmq::SocketEvent::from_raw(u16::from_le_bytes([head[0], head[1]]));
        let value = u32::from_le_bytes([head[2], head[3], head[4], head[5]]);
        if matches!(
            event,
            HANDSHAKE_SUCCEEDED
                | HANDSHAKE_FAILED_NO_DETAIL
                | HANDSHAKE_FAILED_PROTOCOL
                | HANDSHAKE_FAILED_AUTH
        ) {
            return Some((event, value));
        }
    }
}

/// The ZMTP 3.0 greeting of a NULL-mechanism peer (no keys), then its
/// READY command announcing `socket_type`: how a peer without the
/// connection file opens a connection.
pub fn zmtp_null_opening(socket_type: &str) -> Vec<u8> {
    let mut bytes = vec![0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0x7f, 3, 0];
    bytes.extend_from_slice(b"NULL");
    bytes.resize(64, 0);
    let mut body = b"\x05READY\x0bSocket-Type".to_vec();
    body.extend_from_slice(&(socket_type.len() as u32).to_be_bytes());
    body.extend_from_slice(socket_type.as_bytes());
    bytes.extend_from_slice(&[0x04, body.len() as u8]);
    bytes.extend_from_slice(&body);
    bytes
}

/// A ZMTP frame of `body` with the MORE flag: one more part of a message
/// that has not ended.
pub fn zmtp_more_frame(body: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x03];
    frame.extend_from_slice(&(body.len() as u64).to_be_bytes());
    frame.extend_from_slice(body);
    frame
}
