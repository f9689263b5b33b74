//! How an engine joins a hub: the registration it sends (who it is and
//! what it still holds), and the hello-then-register handshake on a fresh
//! link, retried until the hub answers.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tracing::{info, warn};

use super::send::{send_control, Recent};
use super::{job_of, transport, EngineError, EngineOptions, INITIAL_HEARTBEAT};
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
    stop: &AtomicBool,
) -> Result<Connection, EngineError> {
    let key = options.connection.signing_key()?;
    let url = &options.connection.engines;
    let mut attempt: u32 = 0;
    'connect: loop {
        if stop.load(Ordering::Relaxed) {
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
            match link
                .socket
                .socket()
                .poll(zmq::POLLIN, i64::from(millis(left)))
            {
                Ok(0) => break,
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
                    return Ok(Connection {
                        link,
                        engine: Some(engine),
                        heartbeat,
                        last_heard: Instant::now(),
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

/// Sleeps for `length`, or until `stop` is set.
fn pause(length: Duration, stop: &AtomicBool) {
    let until = Instant::now() + length;
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(
            Duration::from_millis(20).min(until.saturating_duration_since(Instant::now())),
        );
    }
}
