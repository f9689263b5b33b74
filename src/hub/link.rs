//! A peer's connection to a hub (an engine's or a client's): one DEALER
//! under a routing identity of its own, the handshake that learns the hub's
//! epoch, and a watch on the connection.
//!
//! Routing identities are chosen by the peer and travel in clear, so the
//! hub's ROUTERs never hand one over to a new connection (no
//! `ROUTER_HANDOVER`): a connection keeps its identity until it closes. A
//! peer must then never come back under an identity it used before, or a
//! keyless peer that took that identity meanwhile (it saw it on the wire)
//! would hold the route while the genuine reconnection waits unheard. So a
//! link is used for one connection only: when its monitor reports the
//! connection closed ([`HubLink::closed`]), the peer drops it and opens a
//! new link under a new identity, says hello again and proves itself again
//! (an engine registers, a client reattaches its jobs); the hub binds the
//! engine or the job to whichever connection last did.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::curve::{self, CurveKeys};
use crate::auth::{Channel, Key};
use crate::message::{self, SignedSocket};
use crate::socket::{millis, DEFAULT_LINGER};

/// Links opened by this process: part of each identity, so that even two
/// links opened in the same instant never share one.
static LINKS: AtomicU64 = AtomicU64::new(0);

/// One connection to a hub's ROUTER.
pub struct HubLink {
    /// The signed socket (a [`SignedSocket::peer`]).
    pub socket: SignedSocket,
    /// Connection events of `socket`, from its monitor.
    monitor: zmq::Socket,
    /// A ZeroMQ handshake with the hub's port completed, or failed once
    /// connected (a CURVE server with other keys drops the connection
    /// mid-handshake): something listens there (if it then never answers a
    /// signed hello, or refuses the keys, it is most likely not a hub with
    /// this connection file's keys).
    reached: bool,
    /// The connection closed after it was made.
    closed: bool,
    /// When the monitor was last read.
    read_at: Option<Instant>,
}

/// Least time between two reads of a link's monitor: callers ask on every
/// pass of their loops, and the answer need not be fresher than this.
const EVENTS_PERIOD: Duration = Duration::from_millis(20);

impl std::fmt::Debug for HubLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubLink")
            .field("reached", &self.reached)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl HubLink {
    /// Connects to `url` under a fresh routing identity starting with
    /// `name`, as a CURVE client with the cluster's `keys` (ZeroMQ connects
    /// in the background; the hello is up to the caller).
    pub fn open(
        ctx: &zmq::Context,
        url: &str,
        key: &Key,
        keys: &CurveKeys,
        sends: Channel,
        receives: Channel,
        name: &str,
    ) -> Result<Self, zmq::Error> {
        let number = LINKS.fetch_add(1, Ordering::Relaxed);
        let identity = format!("{name}-{number}-{:016x}", crate::auth::random_u64());
        let socket = ctx.socket(zmq::DEALER)?;
        socket.set_linger(millis(DEFAULT_LINGER))?;
        socket.set_identity(identity.as_bytes())?;
        socket.set_sndhwm(0)?;
        socket.set_rcvhwm(0)?;
        socket.set_maxmsgsize(message::MAX_MESSAGE_BYTES as i64)?;
        curve::client(&socket, keys)?;
        let endpoint = format!("inproc://zcluster-link-{identity}");
        let events = zmq::SocketEvent::DISCONNECTED as i32
            | zmq::SocketEvent::HANDSHAKE_SUCCEEDED as i32
            | zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL as i32
            | zmq::SocketEvent::HANDSHAKE_FAILED_AUTH as i32
            | zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL as i32;
        socket.monitor(&endpoint, events)?;
        let monitor = ctx.socket(zmq::PAIR)?;
        monitor.set_linger(0)?;
        monitor.connect(&endpoint)?;
        socket.connect(url)?;
        tracing::debug!(hub = %url, %identity, "connecting to the hub");
        Ok(HubLink {
            socket: SignedSocket::peer(socket, key, sends, receives),
            monitor,
            reached: false,
            closed: false,
            read_at: None,
        })
    }

    /// Whether the connection closed since it was made (the hub went away,
    /// restarted, or refused it): the link is then spent, and the peer opens
    /// a new one.
    pub fn closed(&mut self) -> bool {
        self.read_events();
        self.closed
    }

    /// Whether a ZeroMQ handshake with the hub's port ever completed (or
    /// failed over the CURVE keys: a ZeroMQ peer with other keys).
    pub fn reached(&mut self) -> bool {
        self.read_events();
        self.reached
    }

    /// The monitor's socket, for a peer that sleeps until something
    /// happens: readable when the connection has news (it may have closed;
    /// [`closed`](Self::closed) reads it).
    pub fn monitor_socket(&self) -> &zmq::Socket {
        &self.monitor
    }

    fn read_events(&mut self) {
        let now = Instant::now();
        if self
            .read_at
            .is_some_and(|at| now.duration_since(at) < EVENTS_PERIOD)
        {
            return;
        }
        self.read_at = Some(now);
        // Each event is two frames: 6 bytes (event number, value), then the
        // endpoint. A monitor only ever says what libzmq says, so a short
        // frame is skipped rather than trusted.
        while let Ok(frames) = self.monitor.recv_multipart(zmq::DONTWAIT) {
            let Some(event) = frames
                .first()
                .and_then(|f| f.get(..2))
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
            else {
                continue;
            };
            if event == zmq::SocketEvent::DISCONNECTED as u16 {
                self.closed = true;
            } else if event == zmq::SocketEvent::HANDSHAKE_SUCCEEDED as u16
                || event == zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL as u16
                || event == zmq::SocketEvent::HANDSHAKE_FAILED_AUTH as u16
                || event == zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL as u16
            {
                self.reached = true;
            }
        }
    }
}

impl Drop for HubLink {
    fn drop(&mut self) {
        // libzmq sends monitor events with a blocking send, and keeps the
        // monitor until the socket is destroyed, after its connections are
        // torn down: the `DISCONNECTED` of that teardown, sent to a monitor
        // pipe whose reader (ours, dropped with the link) is gone, would
        // block libzmq's I/O thread, and with it every socket of the
        // context, for good. So the monitor is stopped first.
        // SAFETY: the socket is live for the whole call, and a null endpoint
        // is how zmq_socket_monitor is told to stop.
        let rc = unsafe {
            zmq_sys::zmq_socket_monitor(self.socket.socket_mut().as_mut_ptr(), std::ptr::null(), 0)
        };
        if rc != 0 {
            tracing::debug!("cannot stop a link's monitor");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthError;
    use crate::message::{Header, MessageError, MessageKind};

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A link learns the hub's epoch from the answer to its own hello, says
    /// when its connection closes, and two links never share an identity.
    #[test]
    fn a_link_says_hello_and_notices_its_connection_close() {
        let ctx = zmq::Context::new();
        let hex = "6c696e6b2074657374206b6579206c696e6b2074657374206b6579";
        let key = Key::from_hex(hex).unwrap();
        let keys = CurveKeys::derive(hex).unwrap();
        let _zap = curve::ZapHandler::start(&ctx, &keys).unwrap();
        let mut router = ctx.socket(zmq::ROUTER).unwrap();
        router.set_linger(0).unwrap();
        curve::server(&mut router, &keys).unwrap();
        router.bind("tcp://127.0.0.1:*").unwrap();
        let url = router.get_last_endpoint().unwrap().unwrap();
        let mut hub =
            SignedSocket::hub(router, &key, Channel::HubToClient, Channel::ClientToHub, 42);
        let open = || {
            HubLink::open(
                &ctx,
                &url,
                &key,
                &keys,
                Channel::ClientToHub,
                Channel::HubToClient,
                "test",
            )
            .unwrap()
        };
        let mut link = open();
        let other = open();
        assert_ne!(
            link.socket.socket().get_identity().unwrap(),
            other.socket.socket().get_identity().unwrap()
        );
        // Said twice before its answer came (a caller that timed out while
        // the hub was away), a hello asks with the same challenge.
        link.socket.hello(0).unwrap();
        link.socket.hello(0).unwrap();
        hub.socket().set_rcvtimeo(5000).unwrap();
        let (identity, hello) = hub.recv_routed(0).unwrap();
        let hello = hello.unwrap();
        assert_eq!(hello.header.kind, MessageKind::Hello);
        let (_, again) = hub.recv_routed(0).unwrap();
        assert_eq!(again.unwrap().header.id, hello.header.id);
        // An answer to another challenge is not taken. What a peer expects
        // after a hub restart is told apart (`Superseded`, dropped quietly):
        // a restart notice (challenge 0, the hub's answer to a message
        // signed for its previous start) while the hello is open, or once
        // it is answered, from the start that answered it; the second
        // answer to the hello said twice.
        let expected = [
            (hello.header.id ^ 2, Some("another challenge")),
            (0, None),
            (hello.header.id, None),
            (hello.header.id, None),
            (0, None),
            (
                hello.header.id ^ 4,
                Some("another challenge, after the welcome"),
            ),
        ];
        for (challenge, _) in expected {
            hub.welcome(&identity, challenge).unwrap();
        }
        link.socket.socket().set_rcvtimeo(5000).unwrap();
        let mut welcomed = 0;
        for (i, (challenge, refused)) in expected.into_iter().enumerate() {
            match (link.socket.recv(0), refused) {
                (Err(MessageError::Auth(AuthError::NotHandshake(_))), Some(_)) => {}
                (Err(MessageError::Auth(AuthError::Superseded)), None) if i != 2 => {}
                (Ok(welcome), None) if i == 2 => {
                    assert_eq!(welcome.header.kind, MessageKind::Welcome);
                    assert_eq!(welcome.header.id, challenge);
                    welcomed += 1;
                }
                (other, why) => panic!("welcome {i} ({challenge:x}, {why:?}): {other:?}"),
            }
        }
        assert_eq!(welcomed, 1);
        assert_eq!(link.socket.epoch(), Some(42));
        let ping = Header {
            kind: MessageKind::Control,
            job: 0,
            id: 1,
        };
        link.socket.send(&ping, &(), 0).unwrap();
        let (_, call) = hub.recv_routed(0).unwrap();
        assert_eq!(call.unwrap().header.id, 1, "signed for the hub's epoch");
        wait_for("the handshake event", || link.reached());
        assert!(!link.closed());
        drop(hub);
        wait_for("the close to be seen", || link.closed());
    }
}
