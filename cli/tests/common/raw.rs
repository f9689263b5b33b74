//! Hand-made messages on raw sockets, for tests that play a peer exactly
//! (a key holder, a stranger, a replayer): the frames a hub expects, signed
//! or not, and the handshake that learns its epoch.

use serde::Serialize;
use zcluster::auth::Signer;
use zcluster::hub::protocol::ClientCall;
use zcluster::message::{encode_value, Envelope, Header, MessageKind, PROTOCOL};

/// The four frames of a message to the hub, signed by `signer` (or
/// unsigned).
pub fn signed_frames<T: Serialize + ?Sized>(
    signer: Option<&Signer>,
    header: &Header,
    body: &T,
) -> Vec<Vec<u8>> {
    let header = encode_value(header, "header").unwrap();
    let body = encode_value(body, "body").unwrap();
    let signature = signer.map_or_else(Vec::new, |s| s.sign(PROTOCOL, &header, &body).to_vec());
    vec![PROTOCOL.to_vec(), signature, header, body]
}

/// Says hello as a key holder on a raw socket, as every engine and client
/// does first, and signs for the hub's epoch from then on (read from the
/// welcome's signature frame: bytes 24..32).
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
    let epoch = u64::from_le_bytes(frames[1][24..32].try_into().unwrap());
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

/// A raw DEALER on one of the hub's ports (`url`), so a test can send
/// exactly the frames it wants.
pub fn raw_dealer(ctx: &zmq::Context, url: &str, identity: &[u8]) -> zmq::Socket {
    let socket = ctx.socket(zmq::DEALER).unwrap();
    socket.set_identity(identity).unwrap();
    socket.set_linger(0).unwrap();
    socket.set_rcvtimeo(500).unwrap();
    socket.connect(url).unwrap();
    socket
}

/// Whether an answer to `request` arrives within the socket's timeout.
pub fn answered(socket: &zmq::Socket, request: u64) -> bool {
    while let Ok(frames) = socket.recv_multipart(0) {
        let envelope = Envelope::from_frames(&[
            frames[0].clone(),
            Vec::new(),
            frames[2].clone(),
            frames[3].clone(),
        ])
        .unwrap();
        if envelope.header.id == request {
            return true;
        }
    }
    false
}
