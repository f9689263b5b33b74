//! The hub's three sockets: how they are made and bound, how the handshake
//! is answered, and how the [`Outbox`] sends through them.
//!
//! ```text
//! engines ══DEALER/ROUTER══▶ hub ◀══ROUTER/DEALER══ clients
//!                             └─ notifications (XPUB): (un)registrations
//! ```

use tracing::debug;

use super::outbox::{Outbox, TaskOut};
use super::{Endpoints, HubError, HubOptions};
use crate::auth::{AuthError, Channel, Key};
use crate::hub::connection::ConnectionError;
use crate::hub::curve::{self, CurveKeys, ZapHandler};
use crate::hub::protocol::{HubToEngine, JobId, Notification, Reply};
use crate::message::{
    ClusterResult, Command, Envelope, Header, MessageError, MessageKind, ResultStatus, SignedSocket,
};
use crate::socket::{last_endpoint, millis, DEFAULT_LINGER};

/// Most messages buffered per peer before the hub stops reading that
/// peer's connection (TCP pushes back on it; nothing is dropped). Honest
/// peers stay far below it, since credit bounds what they send unanswered.
pub(super) const INBOUND_PER_PEER: i32 = 4096;

/// Bytes of one network peer's messages the hub buffers unread, at most:
/// the receive high-water mark is this over the largest message...
pub(super) const INBOUND_BYTES_PER_PEER: usize = 256 << 20;

/// ...but never below this many messages: over TCP, a mark of 8 costs a
/// fifth of the hub's task rate and one of 4 a third (libzmq wakes the
/// reading I/O thread every half mark), while 16 costs nothing measurable.
const INBOUND_MIN_MESSAGES: i32 = 16;

/// The receive high-water mark of a hub socket. A network peer, which may
/// not hold the key, can make the hub hold at most
/// max([`INBOUND_BYTES_PER_PEER`], 16 × `max_message`) of its messages, plus
/// the one being read: ZeroMQ counts messages, not bytes, so the mark is
/// derived from the largest message. Inproc peers are this process's own
/// threads and keep the full mark.
pub(super) fn inbound_hwm(url: &str, max_message: usize) -> i32 {
    if url.starts_with("inproc://") {
        return INBOUND_PER_PEER;
    }
    let fit = INBOUND_BYTES_PER_PEER / max_message.max(1);
    i32::try_from(fit)
        .unwrap_or(INBOUND_PER_PEER)
        .clamp(INBOUND_MIN_MESSAGES, INBOUND_PER_PEER)
}

/// Largest subscription message the notification socket takes (a flag byte
/// and a topic; the only topic honoured is the empty one).
const SUBSCRIPTION_BYTES: i64 = 512;

/// Subscription messages buffered per peer before the hub stops reading it.
const SUBSCRIPTIONS_IN_FLIGHT: i32 = 64;

/// Puts an XPUB socket in manual mode: subscriptions arrive as messages and
/// apply only when the owner applies them.
fn set_xpub_manual(socket: &mut zmq::Socket) -> Result<(), zmq::Error> {
    crate::socket::set_int_option(socket, zmq_sys::ZMQ_XPUB_MANUAL as libc::c_int, 1)
}

/// Makes and binds one hub socket (a ROUTER, or the notifications' XPUB)
/// with its options; returns it with the endpoint it is bound to.
fn router(
    ctx: &zmq::Context,
    kind: zmq::SocketType,
    url: &str,
    max_message: usize,
    keys: &CurveKeys,
) -> Result<(zmq::Socket, String), HubError> {
    let bind = |operation, source| HubError::Bind {
        operation,
        url: url.to_string(),
        source,
    };
    let mut socket = ctx
        .socket(kind)
        .map_err(|e| bind("create a socket for", e))?;
    socket
        .set_linger(millis(DEFAULT_LINGER))
        .map_err(|e| bind("configure", e))?;
    // Outbound flow control is the hub's (slots, credit), not the
    // socket's: never drop a task or result because a pipe is full.
    socket.set_sndhwm(0).map_err(|e| bind("configure", e))?;
    socket
        .set_rcvhwm(inbound_hwm(url, max_message))
        .map_err(|e| bind("configure", e))?;
    if kind == zmq::ROUTER {
        // A send to a peer that is gone is an error, not a silent drop.
        // Handover stays off: a routing identity is chosen by the peer and
        // travels in clear, so with it anyone could take over an engine's
        // or a client's route by connecting under its identity. Without it,
        // a connection keeps its identity until it closes, and a peer that
        // reconnects does so under a fresh one (see `hub::link`).
        socket
            .set_router_mandatory(true)
            .map_err(|e| bind("configure", e))?;
    }
    if kind == zmq::XPUB {
        // Subscriptions are ZMTP, below signing: anyone who reaches the
        // port can send them. libzmq keeps each one (about 32 bytes per
        // byte) until its peer leaves, so the hub takes them in by hand:
        // only the empty one (everything) is ever applied, the rest are
        // read and dropped, and they are tiny and few in flight.
        set_xpub_manual(&mut socket).map_err(|e| bind("configure", e))?;
        socket
            .set_maxmsgsize(SUBSCRIPTION_BYTES)
            .map_err(|e| bind("configure", e))?;
        socket
            .set_rcvhwm(SUBSCRIPTIONS_IN_FLIGHT)
            .map_err(|e| bind("configure", e))?;
    } else {
        socket
            .set_maxmsgsize(max_message as i64)
            .map_err(|e| bind("configure", e))?;
    }
    curve::server(&mut socket, keys).map_err(|e| bind("set CURVE up on", e))?;
    socket.bind(url).map_err(|e| bind("bind", e))?;
    let endpoint =
        last_endpoint(&socket).map_err(|_| bind("read the endpoint of", zmq::Error::EINVAL))?;
    Ok((socket, endpoint))
}

/// The hub's bound sockets: what its loop reads, and its real outbox.
pub(super) struct Sockets {
    /// Engines' registrations, heartbeats, results and replies.
    pub(super) engines: SignedSocket,
    /// Clients' jobs, tasks and calls.
    pub(super) clients: SignedSocket,
    /// (Un)registration notices for any subscriber.
    pub(super) notifications: SignedSocket,
    /// Results for clients, kept to go several per message at the end of
    /// the loop's turn ([`Outbox::flush`]).
    results: ResultBatches,
    /// Admits the cluster's CURVE client key on the sockets above for as
    /// long as the hub lives (see [`curve`]); held for its drop.
    _zap: ZapHandler,
}

/// Where the sockets ended up bound (free ports resolved).
pub(super) struct Bound {
    pub(super) engines: String,
    pub(super) clients: String,
    pub(super) notifications: String,
}

impl Sockets {
    /// Makes and binds the three sockets where `options` says, with CURVE
    /// `keys` (only holders of the connection file complete a handshake),
    /// signing for hub start `epoch` with `key`.
    pub(super) fn bind(
        ctx: &zmq::Context,
        options: &HubOptions,
        keys: &CurveKeys,
        key: &Key,
        epoch: u64,
    ) -> Result<(Self, Bound), HubError> {
        let (engines_url, clients_url, notifications_url) = match &options.endpoints {
            Endpoints::Tcp { ip, port_base } => {
                let port = |offset: u16| match port_base {
                    Some(base) => format!("tcp://{ip}:{}", base.saturating_add(offset)),
                    None => format!("tcp://{ip}:*"),
                };
                (port(0), port(1), port(2))
            }
            Endpoints::Inproc(name) => (
                format!("inproc://{name}-engines"),
                format!("inproc://{name}-clients"),
                format!("inproc://{name}-notifications"),
            ),
            Endpoints::Urls {
                engines,
                clients,
                notifications,
            } => (engines.clone(), clients.clone(), notifications.clone()),
        };
        // The handler answers the sockets' handshakes: it runs before any
        // of them is bound, so none admits a peer unchecked.
        let zap = ZapHandler::start(ctx, keys).map_err(ConnectionError::from)?;
        let max = options.message_limit();
        let (engines, engines_at) = router(ctx, zmq::ROUTER, &engines_url, max, keys)?;
        let (clients, clients_at) = router(ctx, zmq::ROUTER, &clients_url, max, keys)?;
        let (notifications, notifications_at) =
            router(ctx, zmq::XPUB, &notifications_url, max, keys)?;
        let engines = SignedSocket::hub(
            engines,
            key,
            Channel::HubToEngine,
            Channel::EngineToHub,
            epoch,
        );
        let clients = SignedSocket::hub(
            clients,
            key,
            Channel::HubToClient,
            Channel::ClientToHub,
            epoch,
        );
        // Nothing signed is read from subscribers; the channel is unused.
        let notifications = SignedSocket::hub(
            notifications,
            key,
            Channel::Notifications,
            Channel::Notifications,
            epoch,
        );
        let sockets = Sockets {
            engines,
            clients,
            notifications,
            results: ResultBatches::new(max),
            _zap: zap,
        };
        let bound = Bound {
            engines: engines_at,
            clients: clients_at,
            notifications: notifications_at,
        };
        Ok((sockets, bound))
    }

    /// Takes in what subscribers sent: a subscription to everything (the
    /// empty topic) is applied to its peer, anything else is dropped.
    ///
    /// Once any subscription is applied, a [`Notification::Subscribed`]
    /// tells every subscriber it is heard from now on (ZeroMQ gives a
    /// subscriber no sign of its own).
    pub(super) fn accept_subscriptions(&self) {
        let socket = self.notifications.socket();
        let mut subscribed = false;
        while let Ok(message) = socket.recv_bytes(zmq::DONTWAIT) {
            // In manual mode this applies to the peer that just sent.
            let applied = match message.as_slice() {
                [1] => {
                    subscribed = true;
                    socket.set_subscribe(b"")
                }
                [0] => socket.set_unsubscribe(b""),
                _ => Ok(()),
            };
            if let Err(e) = applied {
                debug!(error = %e, "cannot apply a subscription");
            }
        }
        if subscribed {
            let welcome = Notification::Subscribed {
                at: std::time::SystemTime::now(),
            };
            if let Err(e) = self
                .notifications
                .send(&control(0), &welcome, zmq::DONTWAIT)
            {
                debug!(error = %e, "cannot publish a subscription's welcome");
            }
        }
    }
}

/// Answers what belongs to the handshake (see [`crate::auth#epochs`]): a
/// peer's hello gets its welcome, and a genuine message of another hub
/// start gets a welcome for no challenge, which tells its sender the hub
/// restarted and it must say hello again. True for a hello, which needs
/// nothing more; the other is still refused (and logged) by the caller.
pub(super) fn answer_handshake(
    socket: &SignedSocket,
    identity: &[u8],
    envelope: &Result<Envelope, MessageError>,
) -> bool {
    let challenge = match envelope {
        Ok(envelope) if envelope.header.kind == MessageKind::Hello => envelope.header.id,
        Err(MessageError::Auth(AuthError::OtherEpoch { .. })) => 0,
        _ => return false,
    };
    if let Err(e) = socket.welcome(identity, challenge) {
        debug!(error = %e, "cannot answer a hello");
    }
    challenge != 0
}

/// The header of a control message (registration answers, replies,
/// notifications): the id is the call it answers, if any.
fn control(id: u64) -> Header {
    Header {
        kind: MessageKind::Control,
        job: 0,
        id,
    }
}

impl Outbox for Sockets {
    fn tasks(
        &mut self,
        engine: &[u8],
        job: JobId,
        tasks: &[TaskOut<'_>],
    ) -> Result<(), MessageError> {
        match tasks {
            [] => Ok(()),
            // A first attempt with no grant alone goes as it was recorded;
            // anything else needs its attempt and grant beside it.
            [task] if task.attempt <= 1 && task.grant.is_none() => {
                let header = Header {
                    kind: MessageKind::Request,
                    job,
                    id: task.id,
                };
                self.engines.send_raw_routed(engine, &header, task.request)
            }
            [first, ..] => {
                let header = Header {
                    kind: MessageKind::Tasks,
                    job,
                    id: first.id,
                };
                let items: Vec<(u64, u32, Option<&str>, &serde_bytes::Bytes)> = tasks
                    .iter()
                    .map(|t| {
                        (
                            t.id,
                            t.attempt,
                            t.grant.as_deref(),
                            serde_bytes::Bytes::new(t.request),
                        )
                    })
                    .collect();
                self.engines.send_routed(engine, &header, &items)
            }
        }
    }

    fn command(
        &mut self,
        engine: &[u8],
        token: u64,
        command: &Command,
    ) -> Result<(), MessageError> {
        let header = Header {
            kind: MessageKind::Command,
            job: 0,
            id: token,
        };
        self.engines.send_routed(engine, &header, command)
    }

    fn to_engine(&mut self, engine: &[u8], message: &HubToEngine) {
        if let Err(e) = self.engines.send_routed(engine, &control(0), message) {
            debug!(error = %e, "cannot reach an engine");
        }
    }

    fn reply(&mut self, client: &[u8], request: u64, reply: &Reply) {
        // Results sent before a reply arrive before it.
        self.flush();
        let header = control(request);
        match self.clients.send_routed(client, &header, reply) {
            Err(e @ (MessageError::TooLarge { .. } | MessageError::Encode { .. })) => {
                let error = Reply::Error(format!(
                    "the answer is too large to send ({e}); ask for fewer tasks, or status only"
                ));
                if let Err(e) = self.clients.send_routed(client, &header, &error) {
                    debug!(error = %e, "cannot reply to a client");
                }
            }
            Err(e) => debug!(error = %e, "cannot reply to a client"),
            Ok(()) => {}
        }
    }

    fn result(&mut self, client: &[u8], header: &Header, body: &[u8]) {
        if let Some(full) = self.results.add(client, header, body) {
            send_results(&self.clients, full);
        }
    }

    fn flush(&mut self) {
        for batch in self.results.take() {
            send_results(&self.clients, batch);
        }
    }

    fn failure(&mut self, client: &[u8], job: JobId, task: u64, reason: &str) {
        self.flush();
        let result = ClusterResult::failed_here(task, "hub".into(), reason);
        let header = Header {
            kind: MessageKind::Result(ResultStatus::Fail),
            job,
            id: task,
        };
        if let Err(e) = self.clients.send_routed(client, &header, &result) {
            debug!(error = %e, "cannot tell a client its task failed");
        }
    }

    fn publish(&mut self, notification: &Notification) {
        self.accept_subscriptions();
        if let Err(e) = self
            .notifications
            .send(&control(0), notification, zmq::DONTWAIT)
        {
            debug!(error = %e, "cannot publish a notification");
        }
    }
}

/// Most results a client gets in one message.
const RESULTS_PER_MESSAGE: usize = 1024;

/// Most result bytes a client gets in one message (a larger result goes
/// alone): enough to amortise a signature over many small results, small
/// enough that a batch is never a burst of memory at either end.
const RESULT_BATCH_BYTES: usize = 256 << 10;

/// Bytes a result adds to a batch beside its body, at most: its job, id,
/// status, absent error and the body's length, each a varint.
const RESULT_ITEM_OVERHEAD_BYTES: usize = 40;

/// Results waiting for the end of the loop's turn, per client, in the
/// order they were let out.
struct ResultBatches {
    /// Clients with results waiting, in the order their first came.
    clients: Vec<ResultBatch>,
    /// Bytes a batch may reach: the smaller of [`RESULT_BATCH_BYTES`] and
    /// the hub's message limit (which its clients read with).
    limit: usize,
}

/// One client's waiting results.
struct ResultBatch {
    client: Vec<u8>,
    items: Vec<(Header, Vec<u8>)>,
    bytes: usize,
}

impl ResultBatches {
    fn new(max_message: usize) -> Self {
        ResultBatches {
            clients: Vec::new(),
            limit: RESULT_BATCH_BYTES.min(max_message),
        }
    }

    /// Keeps a result for `client`; returns that client's batch if it must
    /// go now, full (by count or bytes) once this one is in, or so full
    /// that this one would take it past its bytes (then this one starts
    /// the next).
    fn add(&mut self, client: &[u8], header: &Header, body: &[u8]) -> Option<ResultBatch> {
        let size = body.len() + RESULT_ITEM_OVERHEAD_BYTES;
        let at = match self.clients.iter().position(|b| b.client == client) {
            Some(at) => at,
            None => {
                self.clients.push(ResultBatch {
                    client: client.to_vec(),
                    items: Vec::new(),
                    bytes: 0,
                });
                self.clients.len() - 1
            }
        };
        let batch = &mut self.clients[at];
        let mut out = None;
        if !batch.items.is_empty() && batch.bytes + size > self.limit {
            out = Some(ResultBatch {
                client: batch.client.clone(),
                items: std::mem::take(&mut batch.items),
                bytes: std::mem::take(&mut batch.bytes),
            });
        }
        batch.items.push((*header, body.to_vec()));
        batch.bytes += size;
        if out.is_none() && batch.items.len() >= RESULTS_PER_MESSAGE {
            out = Some(self.clients.swap_remove(at));
        }
        out
    }

    /// Every waiting batch, in the order their clients first got one.
    fn take(&mut self) -> Vec<ResultBatch> {
        std::mem::take(&mut self.clients)
    }
}

/// Sends one client's results: one alone as the result message it came
/// as, several as one `TaskResults` message of [`ResultItem`]s.
///
/// [`ResultItem`]: crate::hub::protocol::ResultItem
fn send_results(clients: &SignedSocket, batch: ResultBatch) {
    let sent = match &batch.items[..] {
        [] => Ok(()),
        [(header, body)] => clients.send_raw_routed(&batch.client, header, body),
        [(first, _), ..] => {
            let header = Header {
                kind: MessageKind::TaskResults,
                job: first.job,
                id: first.id,
            };
            // Encoded as a `ResultItem` is, without copying the bodies.
            let items: Vec<(JobId, u64, ResultStatus, Option<&str>, &serde_bytes::Bytes)> = batch
                .items
                .iter()
                .map(|(header, body)| {
                    let status = match header.kind {
                        MessageKind::Result(status) => status,
                        _ => ResultStatus::Fail,
                    };
                    (
                        header.job,
                        header.id,
                        status,
                        None,
                        serde_bytes::Bytes::new(body),
                    )
                })
                .collect();
            clients.send_routed(&batch.client, &header, &items)
        }
    };
    if let Err(e) = sent {
        debug!(error = %e, results = batch.items.len(), "results not delivered (client gone); they stay in the store");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result_header(id: u64) -> Header {
        Header {
            kind: MessageKind::Result(ResultStatus::Ok),
            job: 1,
            id,
        }
    }

    /// Results for clients wait for the end of the loop's turn, one batch
    /// per client in the order they came; a batch goes early once full by
    /// count, or when the next result would take it past its bytes (then
    /// that result starts the next batch, so none is larger than a client
    /// reads).
    #[test]
    fn results_wait_per_client_and_go_early_only_when_a_batch_is_full() {
        let mut batches = ResultBatches::new(64 << 20);
        assert!(batches.add(b"a", &result_header(1), b"x").is_none());
        assert!(batches.add(b"b", &result_header(2), b"y").is_none());
        assert!(batches.add(b"a", &result_header(3), b"z").is_none());
        let waiting = batches.take();
        let ids: Vec<(Vec<u8>, Vec<u64>)> = waiting
            .iter()
            .map(|b| (b.client.clone(), b.items.iter().map(|i| i.0.id).collect()))
            .collect();
        assert_eq!(ids, [(b"a".to_vec(), vec![1, 3]), (b"b".to_vec(), vec![2])]);
        assert!(batches.take().is_empty());

        // By count.
        for id in 0..RESULTS_PER_MESSAGE as u64 - 1 {
            assert!(batches.add(b"a", &result_header(id), b"").is_none());
        }
        let full = batches.add(b"a", &result_header(9999), b"").expect("full");
        assert_eq!(full.items.len(), RESULTS_PER_MESSAGE);
        assert!(batches.take().is_empty());

        // By bytes: a hub limit smaller than the batch size bounds it.
        let mut batches = ResultBatches::new(4096);
        let body = vec![0u8; 3000];
        assert!(batches.add(b"a", &result_header(1), &body).is_none());
        let early = batches.add(b"a", &result_header(2), &body).expect("past");
        assert_eq!(early.items.len(), 1);
        assert_eq!(early.items[0].0.id, 1);
        let rest = batches.take();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].items[0].0.id, 2);
    }

    #[test]
    fn a_network_peer_is_held_to_a_byte_budget_not_just_a_message_count() {
        let mib = 1 << 20;
        // The default limit: 16 messages of 64 MiB.
        assert_eq!(inbound_hwm("tcp://127.0.0.1:5555", 64 * mib), 16);
        // Smaller messages: as many as fit in 256 MiB...
        assert_eq!(inbound_hwm("ipc:///tmp/hub", mib), 256);
        assert_eq!(inbound_hwm("tcp://*:1", 16 * mib), 16);
        // ...up to the message cap.
        assert_eq!(inbound_hwm("tcp://*:1", 1024), INBOUND_PER_PEER);
        // This process's own threads are not held to it.
        assert_eq!(
            inbound_hwm("inproc://x-engines", 64 * mib),
            INBOUND_PER_PEER
        );
        for max in [1024, 4096, mib, 3 * mib, 64 * mib] {
            let hwm = inbound_hwm("tcp://*:1", max) as usize;
            assert!(hwm * max <= (INBOUND_BYTES_PER_PEER).max(16 * max));
        }
    }
}
