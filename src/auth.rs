//! Message signing: only holders of the cluster's key get in.
//!
//! Every message on a hub socket carries, in its signature (the part of the
//! [wire format](crate::message)'s prefix after the protocol), a nonce and
//! an HMAC-SHA256 tag:
//!
//! | bytes | content |
//! | --- | --- |
//! | 0..8 | session: random per signing socket, little endian |
//! | 8..16 | sequence number within the session, from 1, strictly increasing |
//! | 16..24 | milliseconds since the Unix epoch when it was signed |
//! | 24..32 | the hub start ([epoch](#epochs)) it belongs to; 0 in a handshake |
//! | 32..64 | HMAC-SHA256 over the [`Channel`] label, the recipient, the protocol, the 32 nonce bytes, the header and the body, each preceded by its length |
//!
//! The channel names the direction (engine to hub, hub to client, ...), so
//! a message signed for one direction is refused in any other: one the hub
//! sent cannot be played back to the hub, nor one meant for an engine to a
//! client. The recipient is the routing identity of the one peer a message
//! is for (the hub's messages to an engine or a client), or empty for a
//! message to the hub or to every subscriber: a kill, task or reply meant
//! for one engine cannot be played to another.
//!
//! A [`Verifier`] accepts a message only if its tag verifies (compared in
//! constant time) and it is fresh:
//!
//! - signed within [`REPLAY_WINDOW`] of the receiver's clock, either way;
//! - with a sequence number above every one already seen from its session
//!   (ZeroMQ keeps order per connection, so a genuine sender only counts up);
//! - and of the hub start the receiver expects ([epochs](#epochs)).
//!
//! # Epochs
//!
//! A receiver forgets the sessions it heard when it restarts, so sequence
//! numbers alone cannot stop a message captured before a hub restart from
//! being played to the new hub (a `shutdown`, a `kill`). Every hub start
//! draws a random 64-bit epoch, and every message to or from the hub is
//! signed for it: the hub refuses any other epoch, so nothing captured
//! before it started is obeyed after, whatever the timing. A peer learns
//! the epoch by a challenge: it sends a `Hello` signed for epoch 0 whose
//! header carries a random challenge, the hub answers a `Welcome` with that
//! challenge signed for its epoch and for the peer's routing identity, and
//! from then on the peer signs for that epoch and accepts nothing else. A
//! handshake message is never remembered as a session (replaying one costs
//! the hub one small answer and changes nothing), and a peer takes the
//! epoch only from the answer to its own, still open challenge, so a
//! captured `Welcome` cannot move it to an old hub start.
//!
//! A session's highest sequence number is kept until the session has been
//! quiet for the whole window and everything it signed is stale (a sender
//! whose clock runs ahead signs messages that stay fresh longer), so memory
//! follows the number of live peers. Clocks across the lab
//! must agree to within the window; a peer whose clock lags by more than the
//! slack waits that long after a receiver's restart before it is heard.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Bytes in a signature.
pub const SIGNATURE_BYTES: usize = NONCE_BYTES + TAG_BYTES;
const NONCE_BYTES: usize = 32;
const TAG_BYTES: usize = 32;

/// How far a message's signing time may be from the receiver's clock.
pub const REPLAY_WINDOW: Duration = Duration::from_secs(300);

/// How long before a receiver started a message from an unknown session may
/// have been signed (clock differences between machines, messages in
/// flight). Only for receivers that take any epoch ([`EpochRule::Any`], a
/// subscriber to notifications): hub traffic is bound to an epoch instead.
pub const CLOCK_SLACK: Duration = Duration::from_secs(2);

/// Most sessions a verifier remembers; past this, new sessions are refused
/// until old ones go quiet (only key holders can make sessions at all).
const MAX_SESSIONS: usize = 1 << 16;

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No signature where one is required.
    #[error("unsigned message (this socket requires the cluster's key)")]
    Unsigned,
    /// A signature of the wrong size.
    #[error("signature of {0} bytes (expected {SIGNATURE_BYTES})")]
    Malformed(usize),
    /// The tag does not match: another key, or altered frames.
    #[error("bad signature (another key, or the message was altered)")]
    Forged,
    /// A sequence number already seen from its session.
    #[error("replayed message (session {session:016x}, number {seq}, last seen {last})")]
    Replayed {
        /// The session.
        session: u64,
        /// The message's number.
        seq: u64,
        /// The highest number seen from that session.
        last: u64,
    },
    /// Signed too long ago or too far ahead.
    #[error("message signed {0} from this machine's clock (allowed: {window:?}); a replay, or clocks out of step", window = REPLAY_WINDOW)]
    Stale(Skew),
    /// A first message from a session, signed before this receiver started.
    #[error("first message of a session signed {0:?} before this process started: a replay, or a lagging clock")]
    BeforeStart(Duration),
    /// Too many live sessions.
    #[error("too many live sessions ({MAX_SESSIONS}); refusing a new one")]
    TooManySessions,
    /// Genuinely signed, but for another hub start: a capture replayed
    /// across a restart, or a peer that has not noticed the hub restarted.
    #[error("message of another hub start (epoch {got:016x}, this one is {expected:016x}): a replay across a restart, or a peer that must say hello again")]
    OtherEpoch {
        /// The epoch it was signed for.
        got: u64,
        /// The epoch this receiver takes.
        expected: u64,
    },
    /// A handshake message (signed for no epoch, or before the epoch is
    /// known) that is not the handshake this receiver takes.
    #[error("{0} outside the handshake")]
    NotHandshake(&'static str),
    /// A welcome this peer's latest hello already stands for: the hub's
    /// notices that it restarted (a welcome for challenge 0, its answer to
    /// each message signed for its previous start) once the peer has said
    /// hello again, or the second answer to a hello said twice before its
    /// welcome came. Expected after a restart; it changes nothing.
    #[error("a welcome this peer's latest hello already stands for (after a hub restart)")]
    Superseded,
}

/// Which hub start ([epoch](self#epochs)) a [`Verifier`] takes messages of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochRule {
    /// Any epoch, with the [`CLOCK_SLACK`] rule for new sessions: a
    /// subscriber to the hub's notifications.
    Any,
    /// The hub's own sockets: its epoch, or 0 for a peer's `Hello`.
    Hub(u64),
    /// A peer of the hub: before its handshake, only handshake answers (of
    /// any epoch); after it, that epoch alone.
    Peer(Option<u64>),
}

/// What [`Verifier::verify`] found in a message it accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The epoch it was signed for.
    pub epoch: u64,
    /// A handshake message (a `Hello` to a hub, or the answer to one before
    /// the peer knows the epoch): accepted only as that, and not remembered.
    pub handshake: bool,
}

/// A signed distance between two clocks, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skew {
    /// How far.
    pub by: Duration,
    /// Whether the message's time is ahead of the receiver's.
    pub ahead: bool,
}

impl fmt::Display for Skew {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = if self.ahead { "ahead" } else { "behind" };
        write!(f, "{:.1} s {word}", self.by.as_secs_f64())
    }
}

/// Which way a message goes; part of what is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Hub to engine: tasks, commands, heartbeats.
    HubToEngine,
    /// Engine to hub: registration, heartbeats, results, replies.
    EngineToHub,
    /// Client to hub: calls and tasks.
    ClientToHub,
    /// Hub to client: replies and results.
    HubToClient,
    /// Hub to subscribers: notifications.
    Notifications,
}

impl Channel {
    fn label(self) -> &'static [u8] {
        match self {
            Channel::HubToEngine => b"zcluster hub->engine",
            Channel::EngineToHub => b"zcluster engine->hub",
            Channel::ClientToHub => b"zcluster client->hub",
            Channel::HubToClient => b"zcluster hub->client",
            Channel::Notifications => b"zcluster hub->subscribers",
        }
    }
}

/// The cluster's shared secret.
#[derive(Clone)]
pub struct Key(HmacSha256);

impl Key {
    /// A key from the hex string of a connection file (at least 16 bytes).
    pub fn from_hex(hex: &str) -> Result<Self, String> {
        let hex = hex.trim();
        if hex.len() % 2 != 0 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("the key is not a hex string".into());
        }
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("checked hex"))
            .collect();
        if bytes.len() < 16 {
            return Err(format!(
                "the key has {} bytes; at least 16 are needed",
                bytes.len()
            ));
        }
        Ok(Self::from_bytes(&bytes))
    }

    /// A key from raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Key(HmacSha256::new_from_slice(bytes).expect("HMAC takes keys of any length"))
    }

    /// The tag over a message's parts, each preceded by its length.
    fn tag(
        &self,
        channel: Channel,
        recipient: &[u8],
        protocol: &[u8],
        nonce: &[u8],
        header: &[u8],
        body: &[u8],
    ) -> HmacSha256 {
        let mut mac = self.0.clone();
        for part in [channel.label(), recipient, protocol, nonce, header, body] {
            mac.update(&(part.len() as u64).to_le_bytes());
            mac.update(part);
        }
        mac
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(…)")
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// 64 random bits (time and pid mixed, without OS randomness).
pub(crate) fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // Without OS randomness, fall back on time and pid: sessions only need
    // to differ, not to be secret.
    if getrandom::fill(&mut bytes).is_err() {
        let mixed = now_millis() ^ (u64::from(std::process::id()) << 40);
        bytes = mixed.to_le_bytes();
    }
    u64::from_le_bytes(bytes)
}

/// Signs the messages one socket sends.
#[derive(Debug)]
pub struct Signer {
    key: Key,
    channel: Channel,
    session: u64,
    seq: AtomicU64,
    /// The hub start it signs for (0 until a peer learns it).
    epoch: u64,
}

impl Signer {
    /// A signer for `channel` with a fresh random session.
    pub fn new(key: Key, channel: Channel) -> Self {
        Signer {
            key,
            channel,
            session: random_u64(),
            seq: AtomicU64::new(0),
            epoch: 0,
        }
    }

    /// Signs for hub start `epoch` from now on.
    pub fn set_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
    }

    /// The hub start it signs for.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The signature for a message to the hub, or to every
    /// subscriber (no particular recipient).
    pub fn sign(&self, protocol: &[u8], header: &[u8], body: &[u8]) -> [u8; SIGNATURE_BYTES] {
        self.sign_to(&[], protocol, header, body)
    }

    /// The signature for a message to the one peer whose routing
    /// identity is `recipient`: no other peer accepts it.
    pub fn sign_to(
        &self,
        recipient: &[u8],
        protocol: &[u8],
        header: &[u8],
        body: &[u8],
    ) -> [u8; SIGNATURE_BYTES] {
        self.sign_for(self.epoch, recipient, protocol, header, body)
    }

    /// The signature for a message of hub start `epoch` (0: a
    /// handshake `Hello`, which no hub takes as anything else).
    pub fn sign_for(
        &self,
        epoch: u64,
        recipient: &[u8],
        protocol: &[u8],
        header: &[u8],
        body: &[u8],
    ) -> [u8; SIGNATURE_BYTES] {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let mut frame = [0u8; SIGNATURE_BYTES];
        frame[0..8].copy_from_slice(&self.session.to_le_bytes());
        frame[8..16].copy_from_slice(&seq.to_le_bytes());
        frame[16..24].copy_from_slice(&now_millis().to_le_bytes());
        frame[24..32].copy_from_slice(&epoch.to_le_bytes());
        let tag = self
            .key
            .tag(
                self.channel,
                recipient,
                protocol,
                &frame[..NONCE_BYTES],
                header,
                body,
            )
            .finalize()
            .into_bytes();
        frame[NONCE_BYTES..].copy_from_slice(&tag);
        frame
    }
}

struct Seen {
    last_seq: u64,
    last_heard: Instant,
    /// The latest signing time seen: nothing of the session is stale
    /// before this plus the window.
    last_signed: u64,
}

/// Checks the messages one socket receives.
pub struct Verifier {
    key: Key,
    channel: Channel,
    /// This receiver's routing identity: only messages signed for it (or,
    /// when empty, for no particular recipient) are accepted.
    recipient: Vec<u8>,
    started_millis: u64,
    epochs: EpochRule,
    sessions: HashMap<u64, Seen>,
    next_prune: Instant,
    window: Duration,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for messages on `channel` to no particular recipient (a
    /// hub's sockets, a subscriber) that has heard no session yet.
    pub fn new(key: Key, channel: Channel) -> Self {
        Self::for_recipient(key, channel, Vec::new())
    }

    /// A verifier for messages on `channel` signed for the peer whose
    /// routing identity is `recipient` (see [`Signer::sign_to`]).
    pub fn for_recipient(key: Key, channel: Channel, recipient: Vec<u8>) -> Self {
        Verifier {
            key,
            channel,
            recipient,
            started_millis: now_millis(),
            epochs: EpochRule::Any,
            sessions: HashMap::new(),
            next_prune: Instant::now() + REPLAY_WINDOW,
            window: REPLAY_WINDOW,
        }
    }

    /// The same with another window (tests shrink it to see pruning).
    #[cfg(test)]
    fn with_window(mut self, window: Duration) -> Self {
        self.window = window;
        self.next_prune = Instant::now() + window;
        self
    }

    /// Takes messages of the hub starts `rule` allows.
    pub fn set_epochs(&mut self, rule: EpochRule) {
        self.epochs = rule;
    }

    /// The hub starts it takes messages of.
    pub fn epochs(&self) -> EpochRule {
        self.epochs
    }

    /// Sessions remembered now.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Accepts a message or says why not. Nothing is remembered about a
    /// message that is refused, nor about a handshake message: the caller
    /// must take a [`Verified::handshake`] message as a handshake only.
    pub fn verify(
        &mut self,
        signature: &[u8],
        protocol: &[u8],
        header: &[u8],
        body: &[u8],
    ) -> Result<Verified, AuthError> {
        if signature.is_empty() {
            return Err(AuthError::Unsigned);
        }
        if signature.len() != SIGNATURE_BYTES {
            return Err(AuthError::Malformed(signature.len()));
        }
        let (nonce, tag) = signature.split_at(NONCE_BYTES);
        self.key
            .tag(self.channel, &self.recipient, protocol, nonce, header, body)
            .verify_slice(tag)
            .map_err(|_| AuthError::Forged)?;
        let field = |i: usize| u64::from_le_bytes(nonce[i * 8..i * 8 + 8].try_into().expect("8"));
        let (session, seq, signed, epoch) = (field(0), field(1), field(2), field(3));
        let now = now_millis();
        let window = self.window.as_millis() as u64;
        if signed.abs_diff(now) > window {
            return Err(AuthError::Stale(Skew {
                by: Duration::from_millis(signed.abs_diff(now)),
                ahead: signed > now,
            }));
        }
        let handshake = Verified {
            epoch,
            handshake: true,
        };
        match self.epochs {
            EpochRule::Hub(_) if epoch == 0 => return Ok(handshake),
            EpochRule::Peer(None) => return Ok(handshake),
            EpochRule::Hub(expected) | EpochRule::Peer(Some(expected)) if epoch != expected => {
                return Err(AuthError::OtherEpoch {
                    got: epoch,
                    expected,
                })
            }
            _ => {}
        }
        let verified = Verified {
            epoch,
            handshake: false,
        };
        let clock = Instant::now();
        if clock >= self.next_prune {
            // Forget a session only once it has been quiet for the window
            // and all it signed is stale: a sender whose clock runs ahead
            // signs messages that stay fresh after it falls quiet.
            self.sessions.retain(|_, seen| {
                clock.duration_since(seen.last_heard) <= self.window
                    || now <= seen.last_signed.saturating_add(window)
            });
            self.next_prune = clock + self.window / 4;
        }
        match self.sessions.get_mut(&session) {
            Some(seen) if seq <= seen.last_seq => Err(AuthError::Replayed {
                session,
                seq,
                last: seen.last_seq,
            }),
            Some(seen) => {
                seen.last_seq = seq;
                seen.last_heard = clock;
                seen.last_signed = seen.last_signed.max(signed);
                Ok(verified)
            }
            None => {
                let earliest = self
                    .started_millis
                    .saturating_sub(CLOCK_SLACK.as_millis() as u64);
                // Bound to an epoch, a message cannot come from before this
                // receiver's hub start: no clock rule needed.
                if self.epochs == EpochRule::Any && signed < earliest {
                    return Err(AuthError::BeforeStart(Duration::from_millis(
                        self.started_millis - signed,
                    )));
                }
                if self.sessions.len() >= MAX_SESSIONS {
                    return Err(AuthError::TooManySessions);
                }
                self.sessions.insert(
                    session,
                    Seen {
                        last_seq: seq,
                        last_heard: clock,
                        last_signed: signed,
                    },
                );
                Ok(verified)
            }
        }
    }
}

/// Signing and checking for one socket: its own session out, every peer's
/// sessions in.
#[derive(Debug)]
pub struct Auth {
    /// Signs what this socket sends.
    pub signer: Signer,
    /// Checks what this socket receives.
    pub verifier: Verifier,
}

impl Auth {
    /// Both halves from one key: signing what goes out on `sends`, checking
    /// that what comes in was signed for `receives` and for `me` (this
    /// socket's routing identity; empty on a hub's sockets).
    pub fn new(key: &Key, sends: Channel, receives: Channel, me: Vec<u8>) -> Self {
        Auth {
            signer: Signer::new(key.clone(), sends),
            verifier: Verifier::for_recipient(key.clone(), receives, me),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key::from_hex(&"ab".repeat(32)).unwrap()
    }

    const C: Channel = Channel::ClientToHub;

    /// Accepted by a verifier that takes any epoch, from a signer that has
    /// none.
    const ANY: Result<Verified, AuthError> = Ok(Verified {
        epoch: 0,
        handshake: false,
    });

    fn nonce_with(signature: &mut [u8; SIGNATURE_BYTES], field: usize, value: u64, key: &Key) {
        signature[field * 8..field * 8 + 8].copy_from_slice(&value.to_le_bytes());
        let tag = key
            .tag(C, b"", b"p", &signature[..NONCE_BYTES], b"h", b"b")
            .finalize()
            .into_bytes();
        signature[NONCE_BYTES..].copy_from_slice(&tag);
    }

    #[test]
    fn a_message_signed_for_one_peer_is_refused_by_every_other() {
        let signer = Signer::new(key(), C);
        let to_a = signer.sign_to(b"engine-a", b"p", b"h", b"b");
        let mut b = Verifier::for_recipient(key(), C, b"engine-b".to_vec());
        assert_eq!(b.verify(&to_a, b"p", b"h", b"b"), Err(AuthError::Forged));
        let mut anyone = Verifier::new(key(), C);
        assert_eq!(
            anyone.verify(&to_a, b"p", b"h", b"b"),
            Err(AuthError::Forged)
        );
        let mut a = Verifier::for_recipient(key(), C, b"engine-a".to_vec());
        assert_eq!(a.verify(&to_a, b"p", b"h", b"b"), ANY);
        // A message for no one in particular is not one for a given peer.
        let to_hub = signer.sign(b"p", b"h", b"b");
        let mut a = Verifier::for_recipient(key(), C, b"engine-a".to_vec());
        assert_eq!(a.verify(&to_hub, b"p", b"h", b"b"), Err(AuthError::Forged));
        assert_eq!(anyone.verify(&to_hub, b"p", b"h", b"b"), ANY);
    }

    #[test]
    fn signed_messages_verify_once() {
        let signer = Signer::new(key(), C);
        let mut verifier = Verifier::new(key(), C);
        let first = signer.sign(b"p", b"h", b"b");
        let second = signer.sign(b"p", b"h", b"b");
        assert_ne!(
            first, second,
            "the same message signs differently each time"
        );
        assert_eq!(verifier.verify(&first, b"p", b"h", b"b"), ANY);
        assert_eq!(verifier.verify(&second, b"p", b"h", b"b"), ANY);
        assert!(matches!(
            verifier.verify(&first, b"p", b"h", b"b"),
            Err(AuthError::Replayed {
                seq: 1,
                last: 2,
                ..
            })
        ));
        assert_eq!(verifier.sessions(), 1);
    }

    #[test]
    fn any_change_is_a_forgery() {
        let signer = Signer::new(key(), C);
        let mut verifier = Verifier::new(key(), C);
        let signature = signer.sign(b"p", b"header", b"body");
        for (protocol, header, body) in [
            (&b"q"[..], &b"header"[..], &b"body"[..]),
            (b"p", b"headeR", b"body"),
            (b"p", b"header", b"bodyy"),
            // Moving bytes between frames changes the length prefixes.
            (b"p", b"headerb", b"ody"),
        ] {
            assert_eq!(
                verifier.verify(&signature, protocol, header, body),
                Err(AuthError::Forged)
            );
        }
        let other = Signer::new(Key::from_bytes(b"another key of enough length"), C);
        let forged = other.sign(b"p", b"header", b"body");
        assert_eq!(
            verifier.verify(&forged, b"p", b"header", b"body"),
            Err(AuthError::Forged)
        );
        let mut flipped = signature;
        flipped[SIGNATURE_BYTES - 1] ^= 1;
        assert_eq!(
            verifier.verify(&flipped, b"p", b"header", b"body"),
            Err(AuthError::Forged)
        );
        assert_eq!(
            verifier.verify(&[], b"p", b"header", b"body"),
            Err(AuthError::Unsigned)
        );
        assert_eq!(
            verifier.verify(&signature[..10], b"p", b"header", b"body"),
            Err(AuthError::Malformed(10))
        );
        // Nothing refused was remembered; the genuine one still passes.
        assert_eq!(verifier.sessions(), 0);
        assert_eq!(verifier.verify(&signature, b"p", b"header", b"body"), ANY);
    }

    #[test]
    fn stale_future_and_pre_start_messages_are_refused() {
        let key = key();
        let mut verifier = Verifier::new(key.clone(), C);
        let mut signature = Signer::new(key.clone(), C).sign(b"p", b"h", b"b");
        let now = now_millis();
        let window = REPLAY_WINDOW.as_millis() as u64;
        nonce_with(&mut signature, 2, now - window - 5_000, &key);
        assert!(matches!(
            verifier.verify(&signature, b"p", b"h", b"b"),
            Err(AuthError::Stale(Skew { ahead: false, .. }))
        ));
        nonce_with(&mut signature, 2, now + window + 5_000, &key);
        assert!(matches!(
            verifier.verify(&signature, b"p", b"h", b"b"),
            Err(AuthError::Stale(Skew { ahead: true, .. }))
        ));
        // Inside the window but from before the verifier existed, from a
        // session it has never heard: a replay across a restart.
        nonce_with(&mut signature, 2, now - 60_000, &key);
        assert!(matches!(
            verifier.verify(&signature, b"p", b"h", b"b"),
            Err(AuthError::BeforeStart(d)) if d >= Duration::from_secs(59)
        ));
        // A known session may send what it signed a little earlier.
        nonce_with(&mut signature, 2, now, &key);
        assert_eq!(verifier.verify(&signature, b"p", b"h", b"b"), ANY);
        nonce_with(&mut signature, 1, 2, &key);
        nonce_with(&mut signature, 2, now - 60_000, &key);
        assert_eq!(verifier.verify(&signature, b"p", b"h", b"b"), ANY);
    }

    #[test]
    fn a_message_signed_for_one_direction_is_refused_in_another() {
        let signer = Signer::new(key(), Channel::HubToEngine);
        let signature = signer.sign(b"p", b"h", b"b");
        for channel in [
            Channel::EngineToHub,
            Channel::ClientToHub,
            Channel::HubToClient,
            Channel::Notifications,
        ] {
            let mut verifier = Verifier::new(key(), channel);
            assert_eq!(
                verifier.verify(&signature, b"p", b"h", b"b"),
                Err(AuthError::Forged),
                "{channel:?}"
            );
        }
        let mut engine = Verifier::new(key(), Channel::HubToEngine);
        assert_eq!(engine.verify(&signature, b"p", b"h", b"b"), ANY);
    }

    /// A sender whose clock runs ahead signs messages that stay fresh after
    /// it falls quiet: its session is kept until they are stale, so a replay
    /// in between is still refused.
    #[test]
    fn a_quiet_session_is_remembered_while_its_messages_are_fresh() {
        let key = key();
        let window = Duration::from_millis(300);
        let mut verifier = Verifier::new(key.clone(), C).with_window(window);
        let mut signature = Signer::new(key.clone(), C).sign(b"p", b"h", b"b");
        nonce_with(&mut signature, 2, now_millis() + 250, &key);
        assert_eq!(verifier.verify(&signature, b"p", b"h", b"b"), ANY);
        // Quiet for longer than the window, but the message (signed 250 ms
        // ahead) is fresh until 550 ms: it must still be known.
        std::thread::sleep(Duration::from_millis(400));
        let mut other = Signer::new(key.clone(), C).sign(b"p", b"h", b"b");
        nonce_with(&mut other, 2, now_millis(), &key);
        assert_eq!(verifier.verify(&other, b"p", b"h", b"b"), ANY, "prunes");
        assert!(matches!(
            verifier.verify(&signature, b"p", b"h", b"b"),
            Err(AuthError::Replayed { .. })
        ));
    }

    #[test]
    fn keys_parse_from_hex() {
        assert!(Key::from_hex(&"0f".repeat(16)).is_ok());
        assert!(Key::from_hex("abc").is_err());
        assert!(Key::from_hex(&"zz".repeat(16)).is_err());
        assert!(Key::from_hex(&"00".repeat(8)).unwrap_err().contains("16"));
        assert_eq!(format!("{:?}", key()), "Key(…)");
    }

    /// A hub takes only its own epoch, and epoch 0 only as a handshake
    /// (never remembered): nothing signed for an earlier hub start, however
    /// recently, passes.
    #[test]
    fn a_hub_takes_its_own_epoch_and_handshakes_only() {
        let key = key();
        let mut hub = Verifier::new(key.clone(), C);
        hub.set_epochs(EpochRule::Hub(7));
        let mut old = Signer::new(key.clone(), C);
        old.set_epoch(6);
        // Signed a moment ago for the previous start: refused, not
        // remembered, and refused again.
        let captured = old.sign(b"p", b"h", b"b");
        for _ in 0..2 {
            assert_eq!(
                hub.verify(&captured, b"p", b"h", b"b"),
                Err(AuthError::OtherEpoch {
                    got: 6,
                    expected: 7
                })
            );
        }
        let mut peer = Signer::new(key.clone(), C);
        let hello = peer.sign(b"p", b"h", b"b");
        let handshake = Ok(Verified {
            epoch: 0,
            handshake: true,
        });
        assert_eq!(hub.verify(&hello, b"p", b"h", b"b"), handshake);
        // A handshake is not a session: played again, it is a handshake
        // again, and it fills no table.
        assert_eq!(hub.verify(&hello, b"p", b"h", b"b"), handshake);
        assert_eq!(hub.sessions(), 0);
        peer.set_epoch(7);
        let call = peer.sign(b"p", b"h", b"b");
        let current = Ok(Verified {
            epoch: 7,
            handshake: false,
        });
        assert_eq!(hub.verify(&call, b"p", b"h", b"b"), current);
        assert!(matches!(
            hub.verify(&call, b"p", b"h", b"b"),
            Err(AuthError::Replayed { .. })
        ));
        assert_eq!(hub.sessions(), 1);
    }

    /// A peer takes only handshake answers until it learns the epoch, then
    /// that epoch alone; the epoch is part of what is signed.
    #[test]
    fn a_peer_takes_one_epoch_once_it_knows_it() {
        let key = key();
        let mut hub = Signer::new(key.clone(), C);
        hub.set_epoch(9);
        let mut peer = Verifier::new(key.clone(), C);
        peer.set_epochs(EpochRule::Peer(None));
        let welcome = hub.sign(b"p", b"h", b"b");
        assert_eq!(
            peer.verify(&welcome, b"p", b"h", b"b"),
            Ok(Verified {
                epoch: 9,
                handshake: true
            })
        );
        peer.set_epochs(EpochRule::Peer(Some(9)));
        let next = hub.sign(b"p", b"h", b"b");
        assert_eq!(
            peer.verify(&next, b"p", b"h", b"b"),
            Ok(Verified {
                epoch: 9,
                handshake: false
            })
        );
        let mut restarted = Signer::new(key.clone(), C);
        restarted.set_epoch(10);
        assert!(matches!(
            peer.verify(&restarted.sign(b"p", b"h", b"b"), b"p", b"h", b"b"),
            Err(AuthError::OtherEpoch {
                got: 10,
                expected: 9
            })
        ));
        // Rewriting the epoch breaks the tag.
        let mut moved = next;
        moved[24..32].copy_from_slice(&10u64.to_le_bytes());
        peer.set_epochs(EpochRule::Peer(Some(10)));
        assert_eq!(
            peer.verify(&moved, b"p", b"h", b"b"),
            Err(AuthError::Forged)
        );
    }
}
