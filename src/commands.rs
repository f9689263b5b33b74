//! Commands to workers and sinks: kill, restart, ping, kill-sink.
//!
//! Commands go out on a PUB socket that workers' SUB sockets reach (directly
//! or through a [forwarder](crate::devices::forwarder)); replies come back on
//! a PULL socket that workers' reply PUSH sockets connect to.
//!
//! PUB/SUB drops what is published before a subscription arrives, so a
//! command fired once after a fixed sleep (glimpse's way) is lost by any
//! worker that is slow to join. Instead every command carries a token and is
//! *repeated* every [`Delivery::repeat_every`] until the expected number of
//! workers have replied or [`Delivery::wait`] runs out; workers remember
//! recent tokens and act on each command once. Delivery is thus confirmed
//! when replies are collected, and repeated for the whole wait when not.

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::message::{self, Command, CommandReply, Header, MessageError, MessageKind};
use crate::socket::{init_socket, millis, SocketError, SocketKind, SocketSource};

/// The first repeat interval of a command; it doubles up to
/// [`Delivery::repeat_every`].
const FIRST_REPEAT: Duration = Duration::from_millis(2);

/// Errors from sending commands.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// A socket could not be made.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// A command could not be sent or a reply received.
    #[error("cannot {operation}: {source}")]
    Transport {
        /// What was being done.
        operation: &'static str,
        /// The underlying error.
        #[source]
        source: MessageError,
    },
}

/// How hard to try to deliver a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Give up (and return the replies so far) after this long.
    pub wait: Duration,
    /// Return as soon as this many distinct workers have replied.
    pub expect: Option<usize>,
    /// Publish the command again at most this far apart until then (the
    /// first repeats come sooner and back off to this).
    pub repeat_every: Duration,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            wait: Duration::from_secs(1),
            expect: None,
            repeat_every: Duration::from_millis(50),
        }
    }
}

impl Delivery {
    /// Waits up to `wait`, returning early once `expect` workers replied.
    pub fn expecting(expect: usize, wait: Duration) -> Self {
        Delivery {
            wait,
            expect: Some(expect),
            ..Delivery::default()
        }
    }
}

/// The sending end of a command channel.
pub struct CommandSender {
    publisher: zmq::Socket,
    replies: Option<zmq::Socket>,
}

impl CommandSender {
    /// Publishes on `publisher` (PUB) and, when given, collects replies on
    /// `replies` (PULL).
    pub fn new(
        ctx: &zmq::Context,
        publisher: impl Into<SocketSource>,
        replies: Option<SocketSource>,
    ) -> Result<Self, CommandError> {
        Ok(CommandSender {
            publisher: init_socket(ctx, publisher, SocketKind::Pub, "command publisher")?,
            replies: replies
                .map(|r| init_socket(ctx, r, SocketKind::Pull, "command replies"))
                .transpose()?,
        })
    }

    /// The publisher socket, e.g. to read the endpoint it bound.
    pub fn publisher(&self) -> &zmq::Socket {
        &self.publisher
    }

    /// The replies socket, when there is one.
    pub fn replies(&self) -> Option<&zmq::Socket> {
        self.replies.as_ref()
    }

    /// Publishes `command` repeatedly as `delivery` says and returns one reply
    /// per worker that answered (first reply wins).
    pub fn broadcast(
        &self,
        command: &Command,
        delivery: Delivery,
    ) -> Result<Vec<CommandReply>, CommandError> {
        let token = new_token();
        let header = Header {
            kind: MessageKind::Command,
            job: 0,
            id: token,
        };
        let deadline = Instant::now() + delivery.wait;
        let mut replies = Vec::new();
        let mut seen = HashSet::new();
        // Repeat quickly at first (a subscription usually arrives within a
        // millisecond or two), then back off to `repeat_every`.
        let mut interval = FIRST_REPEAT.min(delivery.repeat_every);
        loop {
            message::send(&self.publisher, &header, command, zmq::DONTWAIT).map_err(|source| {
                CommandError::Transport {
                    operation: "publish a command",
                    source,
                }
            })?;
            let next_send = (Instant::now() + interval).min(deadline);
            interval = (interval * 2).min(delivery.repeat_every);
            self.collect(token, next_send, &mut seen, &mut replies)?;
            if delivery.expect.is_some_and(|n| replies.len() >= n) || Instant::now() >= deadline {
                debug!(
                    command = command.name(),
                    replies = replies.len(),
                    "command delivered"
                );
                return Ok(replies);
            }
        }
    }

    /// Reads replies to `token` until `until`, deduplicating by worker.
    fn collect(
        &self,
        token: u64,
        until: Instant,
        seen: &mut HashSet<(String, u32, String)>,
        replies: &mut Vec<CommandReply>,
    ) -> Result<(), CommandError> {
        let Some(socket) = &self.replies else {
            std::thread::sleep(until.saturating_duration_since(Instant::now()));
            return Ok(());
        };
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let ready = match socket.poll(zmq::POLLIN, i64::from(millis(left))) {
                Ok(n) => n > 0,
                Err(zmq::Error::EINTR) => continue,
                Err(e) => {
                    return Err(CommandError::Transport {
                        operation: "wait for replies",
                        source: e.into(),
                    })
                }
            };
            if !ready {
                return Ok(());
            }
            let reply = message::recv(socket, zmq::DONTWAIT).and_then(|e| e.reply());
            match reply {
                Ok(reply) if reply.token == token => {
                    let w = &reply.worker;
                    if seen.insert((w.host.clone(), w.pid, w.worker.clone())) {
                        replies.push(reply);
                    }
                }
                Ok(reply) => debug!(token = reply.token, "reply to an earlier command"),
                Err(e) if e.is_timeout() => {}
                Err(e) => warn!(error = %e, "dropping a bad reply"),
            }
        }
    }

    /// Tells workers to finish their current request and exit.
    pub fn send_kill(&self, delivery: Delivery) -> Result<Vec<CommandReply>, CommandError> {
        self.broadcast(&Command::Kill, delivery)
    }

    /// Tells workers to exit with the restart status.
    pub fn send_restart(&self, delivery: Delivery) -> Result<Vec<CommandReply>, CommandError> {
        self.broadcast(&Command::Restart, delivery)
    }

    /// Asks workers who they are; collects replies for `delivery.wait` or
    /// until `delivery.expect` answered.
    pub fn ping(&self, delivery: Delivery) -> Result<Vec<CommandReply>, CommandError> {
        self.broadcast(&Command::Ping, delivery)
    }

    /// Ends sinks' receive loops. Sinks do not reply, so delivery cannot be
    /// confirmed: this repeats for the whole `delivery.wait` (give it at
    /// least as long as a sink may take to subscribe); `expect` is ignored.
    pub fn send_kill_sink(&self, delivery: Delivery) -> Result<(), CommandError> {
        let delivery = Delivery {
            expect: None,
            ..delivery
        };
        self.broadcast(&Command::KillSink, delivery).map(drop)
    }
}

/// A token no other command from this or another process is likely to have.
fn new_token() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one((std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)))
}
