//! Listening to a hub's notification socket: every [`Notification`] it
//! publishes (engines joining, dying, retiring; jobs opening, finishing,
//! cancelled; tasks failing, retried, copied), each checked against the
//! cluster's key like every other hub message.
//!
//! `zcluster events`, `zcluster status --watch` and the dashboard read the
//! hub through this and the [`HubClient`](super::client::HubClient), as any
//! other program may.

use std::time::{Duration, SystemTime};

use super::connection::{ConnectionError, ConnectionInfo};
use super::curve;
use super::protocol::Notification;
use crate::auth::Channel;
use crate::message::{self, MessageError, MessageKind, SignedSocket};
use crate::socket::{millis, DEFAULT_LINGER};

/// Errors listening to a hub.
#[derive(Debug, thiserror::Error)]
pub enum SubscriberError {
    /// The socket could not be made or connected.
    #[error("cannot subscribe to the hub's notifications at {url}: {source}")]
    Connect {
        /// The notification socket's URL.
        url: String,
        /// The underlying error.
        #[source]
        source: zmq::Error,
    },
    /// The connection file's key is unusable.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// The transport failed (not a bad message: those are dropped).
    #[error("notification socket failed: {0}")]
    Transport(#[from] MessageError),
}

/// One notification as received: what the hub said, and when it happened
/// (the hub's time when it says, this process's time of arrival for the
/// two kinds that carry none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// What the hub published.
    pub notification: Notification,
    /// When it happened.
    pub at: SystemTime,
}

/// A subscriber to a hub's notifications. ZeroMQ reconnects it by itself
/// and sends its subscription again, so it carries on across a hub
/// restart; a [`Notification::Subscribed`] arrives each time the hub
/// applies its subscription.
pub struct Subscriber {
    socket: SignedSocket,
    url: String,
    /// Messages refused (bad signature, replay, undecodable) so far.
    refused: u64,
}

impl Subscriber {
    /// Connects to the notification socket `connection` names and
    /// subscribes to everything.
    pub fn connect(
        ctx: &zmq::Context,
        connection: &ConnectionInfo,
    ) -> Result<Self, SubscriberError> {
        let url = connection.notifications.clone();
        let key = connection.signing_key()?;
        let wrap = |source| SubscriberError::Connect {
            url: url.clone(),
            source,
        };
        let socket = ctx.socket(zmq::SUB).map_err(wrap)?;
        socket.set_linger(millis(DEFAULT_LINGER)).map_err(wrap)?;
        socket
            .set_maxmsgsize(message::MAX_MESSAGE_BYTES as i64)
            .map_err(wrap)?;
        curve::client(&socket, &connection.curve).map_err(wrap)?;
        socket.set_subscribe(b"").map_err(wrap)?;
        socket.connect(&url).map_err(wrap)?;
        let socket =
            SignedSocket::new(socket, &key, Channel::Notifications, Channel::Notifications);
        Ok(Subscriber {
            socket,
            url,
            refused: 0,
        })
    }

    /// The notification socket's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Messages dropped so far because they were not genuine, fresh
    /// notifications of this cluster.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// The next genuine notification, waiting up to `timeout` (`None`: none
    /// came). Anything unsigned, forged, replayed or undecodable is dropped
    /// and counted, never returned.
    pub fn next(&mut self, timeout: Duration) -> Result<Option<Received>, SubscriberError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let ready = match self
                .socket
                .socket()
                .poll(zmq::POLLIN, i64::from(millis(left)))
            {
                Ok(ready) => ready,
                // A signal: the caller looks at its flags.
                Err(zmq::Error::EINTR) => return Ok(None),
                Err(e) => return Err(MessageError::from(e).into()),
            };
            if ready == 0 {
                return Ok(None);
            }
            let envelope = match self.socket.recv(zmq::DONTWAIT) {
                Ok(envelope) => envelope,
                Err(e) if e.is_timeout() => continue,
                Err(MessageError::Zmq(zmq::Error::EINTR)) => return Ok(None),
                Err(MessageError::Zmq(e)) => return Err(MessageError::Zmq(e).into()),
                Err(e) => {
                    tracing::debug!(error = %e, "dropping a notification");
                    self.refused += 1;
                    continue;
                }
            };
            if envelope.header.kind != MessageKind::Control {
                self.refused += 1;
                continue;
            }
            match envelope.control::<Notification>() {
                Ok(notification) => {
                    let at = notification.at().unwrap_or_else(SystemTime::now);
                    return Ok(Some(Received { notification, at }));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "dropping an undecodable notification");
                    self.refused += 1;
                }
            }
        }
    }
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("url", &self.url)
            .field("refused", &self.refused)
            .finish_non_exhaustive()
    }
}
