//! How an engine joins a hub: the registration it sends (who it is and
//! what it still holds), and the hello-then-register handshake on a fresh
//! link, retried until the hub answers.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use tracing::{info, warn};

use super::send::{send_control, Recent};
use super::wait::UNWOKEN_STOP_CHECK;
use super::{job_of, transport, EngineError, EngineOptions, EngineStop, INITIAL_HEARTBEAT};
use crate::auth::Channel;
use crate::hub::link::HubLink;
use crate::hub::protocol::{EngineId, EngineMessage, HubToEngine, JobId};
use crate::ids::IdMap;
use crate::message::{ClusterRequest, MessageKind};
use crate::socket::millis;

/// One registration with the hub: a link, the engine id it gave and the
/// heartbeat it asked for. Replaced as a whole when the engine reconnects.
pub(super) struct Connection {
    pub(super) link: HubLink,
    pub(super) engine: Option<EngineId>,
    pub(super) heartbeat: Duration,
    pub(super) last_heard: Instant,
    /// The descriptor that signals news on the link's monitor (ZeroMQ's
    /// `ZMQ_FD`), read once: polled as a plain descriptor, it costs an
    /// engine's wait nothing per turn, where the monitor as a ZeroMQ poll
    /// item costs two option reads each time. `None`: poll the socket.
    pub(super) monitor_fd: Option<std::os::fd::RawFd>,
}

/// Who this engine is, as it registers and answers commands.
pub(super) struct Identity {
    /// Unguessable, so another peer cannot take over its routing.
    pub(super) name: String,
    pub(super) host: String,
    pub(super) pid: u32,
    pub(super) started: SystemTime,
}

/// The registration an engine sends: who it is, and the tasks it still
/// holds (running, waiting, finished lately) so a hub that restarted or lost
/// it knows what not to run again (it sends those results again once
/// registered).
pub(super) fn register_message(
    identity: &Identity,
    options: &EngineOptions,
    tickets: &IdMap<u64, (JobId, u64)>,
    waiting: &VecDeque<ClusterRequest>,
    recent: &Recent,
) -> EngineMessage {
    EngineMessage::Register {
        identity: identity.name.clone(),
        host: identity.host.clone(),
        pid: identity.pid,
        slots: options.slots as u32,
        handlers: options.handlers.keys().cloned().collect(),
        running: tickets
            .values()
            .copied()
            .chain(waiting.iter().map(|r| (job_of(r), r.id)))
            .chain(recent.tasks())
            .collect(),
        origin: options.origin.clone(),
        resources: options.resources.clone(),
    }
}

/// Connects, says hello and registers, retrying until the hub answers.
/// Each attempt is a new [`HubLink`], under a routing identity never used
/// before (`name` and a number): the hub binds this engine to the
/// connection it registers on.
pub(super) fn connect(
    ctx: &zmq::Context,
    options: &EngineOptions,
    name: &str,
    register: &EngineMessage,
    stop: &EngineStop,
) -> Result<Connection, EngineError> {
    let key = options.connection.signing_key()?;
    let url = &options.connection.engines;
    let mut attempt: u32 = 0;
    'connect: loop {
        if stop.is_stopped() {
            return Err(EngineError::Stopped);
        }
        attempt += 1;
        let mut link = HubLink::open(
            ctx,
            url,
            &key,
            &options.connection.curve,
            Channel::EngineToHub,
            Channel::HubToEngine,
            name,
        )
        .map_err(|e| transport("connect to the hub", e.into()))?;
        link.socket
            .hello(zmq::DONTWAIT)
            .map_err(|e| transport("say hello to the hub", e))?;
        let deadline = Instant::now() + INITIAL_HEARTBEAT * options.misses.max(1);
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            match wait_for_hub(&link, left, stop) {
                // The deadline (the loop's condition), or the stop's check.
                Ok(0) => continue,
                Ok(_) if stop.is_stopped() => return Err(EngineError::Stopped),
                Ok(_) => {}
                Err(zmq::Error::EINTR) => continue,
                Err(e) => return Err(transport("wait for the hub", e.into())),
            }
            let envelope = match link.socket.recv(zmq::DONTWAIT) {
                Ok(envelope) => envelope,
                Err(e) if e.is_timeout() => continue,
                Err(e) => {
                    // Said, not swallowed: a hub whose clock is far from
                    // this machine's, or another key, would otherwise look
                    // like a hub that never answers.
                    if attempt == 1 || attempt % 10 == 0 {
                        warn!(hub = %url, error = %e, "refusing the hub's answer");
                    }
                    continue;
                }
            };
            if envelope.header.kind == MessageKind::Welcome {
                // The hub's epoch is known: now register, signed for it.
                send_control(&link.socket, register);
                continue;
            }
            match envelope.control::<HubToEngine>() {
                Ok(HubToEngine::Registered {
                    engine,
                    heartbeat,
                    max_message,
                }) => {
                    info!(engine, hub = %url, "registered with the hub");
                    link.socket
                        .set_limit(usize::try_from(max_message).unwrap_or(usize::MAX));
                    let monitor_fd = link.monitor_socket().get_fd().ok();
                    return Ok(Connection {
                        link,
                        engine: Some(engine),
                        heartbeat,
                        last_heard: Instant::now(),
                        monitor_fd,
                    });
                }
                Ok(HubToEngine::Refused { reason }) => {
                    // What a hub refuses a registration for passes (its store
                    // failing, say): say so and try again on a fresh
                    // connection, rather than leave the lab one worker short
                    // for good.
                    if attempt == 1 || attempt % 10 == 0 {
                        warn!(hub = %url, %reason, attempt, "the hub refused the registration; trying again");
                    }
                    pause(REFUSED_PAUSE, stop);
                    continue 'connect;
                }
                _ => {}
            }
        }
        if attempt == 1 || attempt % 10 == 0 {
            if link.reached() {
                warn!(hub = %url, attempt, "the hub's port answers, but not to this engine's signed hello: is the connection file's key this hub's? (a hub with another key logs \"bad signature\"); retrying");
            } else {
                warn!(hub = %url, attempt, "no answer from the hub; retrying");
            }
        }
    }
}

/// How long an engine waits after a refused registration before trying
/// again.
const REFUSED_PAUSE: Duration = Duration::from_secs(1);

/// Waits up to `left` for the hub's answer on `link`, or for `stop`:
/// what `zmq::poll` returns (0: neither came).
fn wait_for_hub(link: &HubLink, left: Duration, stop: &EngineStop) -> Result<i32, zmq::Error> {
    let timeout_ms = i64::from(millis(left));
    let socket = link.socket.socket();
    match stop.wake_fd() {
        Some(fd) => zmq::poll(
            &mut [
                socket.as_poll_item(zmq::POLLIN),
                zmq::PollItem::from_fd(fd, zmq::POLLIN),
            ],
            timeout_ms,
        ),
        // No wake-up: the stop is looked at every `UNWOKEN_STOP_CHECK`.
        None => socket.poll(
            zmq::POLLIN,
            timeout_ms.min(i64::from(millis(UNWOKEN_STOP_CHECK))),
        ),
    }
}

/// Sleeps for `length`, or until `stop` is given.
fn pause(length: Duration, stop: &EngineStop) {
    let until = Instant::now() + length;
    while Instant::now() < until && !stop.is_stopped() {
        std::thread::sleep(
            Duration::from_millis(20).min(until.saturating_duration_since(Instant::now())),
        );
    }
}
