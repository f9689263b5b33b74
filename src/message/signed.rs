//! [`SignedSocket`]: the wire format of the parent module with every
//! message signed and checked with the cluster's key, bound to a hub start.

use super::*;

/// A socket whose messages are all signed and checked with the cluster's
/// key: every hub socket, and the engines' and clients' sockets to it.
///
/// A hub's socket ([`SignedSocket::hub`]) signs for its epoch and takes
/// nothing else but a peer's `Hello`; a peer's ([`SignedSocket::peer`])
/// learns the epoch by [`hello`](SignedSocket::hello) and takes nothing
/// else once it knows it (see [`auth`](crate::auth#epochs)).
pub struct SignedSocket {
    socket: zmq::Socket,
    auth: Auth,
    /// Largest body the peer takes (see [`set_limit`](Self::set_limit)).
    limit: usize,
    /// A peer's hello not answered yet: its challenge.
    challenge: Option<u64>,
    /// The challenge of the peer's last hello that was answered.
    answered: Option<u64>,
}

impl fmt::Debug for SignedSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedSocket")
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

impl SignedSocket {
    /// Wraps a socket: it signs what it sends for `sends` (with a fresh
    /// session of `key`) and accepts only messages signed for `receives`.
    ///
    /// What it receives must also be signed for its routing identity (set
    /// it before wrapping; a hub's sockets have none), and what it sends
    /// through a ROUTER is signed for the peer it goes to: a message meant
    /// for one engine or client is refused by any other.
    pub fn new(socket: zmq::Socket, key: &Key, sends: Channel, receives: Channel) -> Self {
        let me = socket.get_identity().unwrap_or_default();
        SignedSocket {
            socket,
            auth: Auth::new(key, sends, receives, me),
            limit: MAX_MESSAGE_BYTES,
            challenge: None,
            answered: None,
        }
    }

    /// A hub's socket for hub start `epoch`: what it sends is signed for
    /// the epoch, and it takes only messages signed for it, or a peer's
    /// `Hello` (answer with [`welcome`](Self::welcome)).
    pub fn hub(
        socket: zmq::Socket,
        key: &Key,
        sends: Channel,
        receives: Channel,
        epoch: u64,
    ) -> Self {
        let mut this = Self::new(socket, key, sends, receives);
        this.auth.signer.set_epoch(epoch);
        this.auth.verifier.set_epochs(EpochRule::Hub(epoch));
        this
    }

    /// A peer's socket to a hub: it takes nothing but the answer to its
    /// [`hello`](Self::hello) until it knows the hub's epoch, then only
    /// messages of that epoch.
    pub fn peer(socket: zmq::Socket, key: &Key, sends: Channel, receives: Channel) -> Self {
        let mut this = Self::new(socket, key, sends, receives);
        this.auth.verifier.set_epochs(EpochRule::Peer(None));
        this
    }

    /// Asks the hub for its epoch with a fresh challenge; [`recv`](Self::recv)
    /// returns the `Welcome` that answers it, and from then on the socket
    /// signs for and takes that epoch. Until then it takes nothing else
    /// (sent again after a hub restart, what is still in flight from the
    /// old hub start is dropped). Said again before its answer came (a
    /// caller that timed out while the hub was away), it asks with the same
    /// challenge: the hub may answer both.
    pub fn hello(&mut self, flags: i32) -> Result<(), MessageError> {
        // Never 0: the hub answers a message of another epoch with a
        // welcome for challenge 0, which no open hello takes.
        let challenge = self
            .challenge
            .unwrap_or_else(|| crate::auth::random_u64() | 1);
        let header = Header {
            kind: MessageKind::Hello,
            job: 0,
            id: challenge,
        };
        self.auth.verifier.set_epochs(EpochRule::Peer(None));
        self.challenge = Some(challenge);
        self.send(&header, &(), flags)
    }

    /// The hub's epoch, once a [`hello`](Self::hello) was answered (a
    /// hub's socket: its own).
    pub fn epoch(&self) -> Option<u64> {
        match self.auth.verifier.epochs() {
            EpochRule::Hub(epoch) | EpochRule::Peer(Some(epoch)) => Some(epoch),
            EpochRule::Peer(None) | EpochRule::Any => None,
        }
    }

    /// Answers a peer's hello (`challenge` is its header id) through a
    /// ROUTER: the answer is signed for this hub's epoch and for that peer
    /// alone. Challenge 0 answers a message of another epoch: it tells the
    /// peer the hub restarted, and satisfies no hello.
    pub fn welcome(&self, identity: &[u8], challenge: u64) -> Result<(), MessageError> {
        let header = Header {
            kind: MessageKind::Welcome,
            job: 0,
            id: challenge,
        };
        self.send_routed(identity, &header, &())
    }

    /// Sends no message (prefix and body) over `limit` bytes (at most
    /// [`MAX_MESSAGE_BYTES`]): the peer's own limit (a hub's
    /// `--max-message`), so that a message it would not take fails here as
    /// [`MessageError::TooLarge`] instead of making ZeroMQ drop the
    /// connection and the message with it.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit.min(MAX_MESSAGE_BYTES);
    }

    /// The largest message (prefix and body) this socket sends.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The socket itself (to poll it, or set options).
    pub fn socket(&self) -> &zmq::Socket {
        &self.socket
    }

    /// The socket itself, mutably (for calls the `zmq` crate does not wrap).
    pub(crate) fn socket_mut(&mut self) -> &mut zmq::Socket {
        &mut self.socket
    }

    /// Sends one signed message. `flags` may hold `zmq::DONTWAIT`.
    pub fn send<T: Serialize + ?Sized>(
        &self,
        header: &Header,
        body: &T,
        flags: i32,
    ) -> Result<(), MessageError> {
        with_encoded(body, |bytes| self.send_raw(header, bytes, flags))
    }

    /// Like [`send`](Self::send) with a body already encoded (a result
    /// encoded once to see whether it fits a batch).
    pub fn send_raw(&self, header: &Header, body: &[u8], flags: i32) -> Result<(), MessageError> {
        send_frame(
            &self.socket,
            header,
            body,
            flags,
            Some((&self.auth.signer, &[])),
            self.limit,
        )
    }

    /// Sends one signed message through a ROUTER socket to the peer
    /// `identity`, never blocking. On a socket with `ZMQ_ROUTER_MANDATORY`
    /// (the hub's), an unknown peer is an error (`EHOSTUNREACH`) instead of a
    /// silent drop.
    pub fn send_routed<T: Serialize + ?Sized>(
        &self,
        identity: &[u8],
        header: &Header,
        body: &T,
    ) -> Result<(), MessageError> {
        // Encode first: an identity frame sent before a body that turns out
        // too large would glue the next message onto it and misroute it.
        with_encoded(body, |bytes| self.send_raw_routed(identity, header, bytes))
    }

    /// Like [`send_routed`](Self::send_routed) with a body already encoded
    /// (a request or result being forwarded: no decoding, no re-encoding).
    pub fn send_raw_routed(
        &self,
        identity: &[u8],
        header: &Header,
        body: &[u8],
    ) -> Result<(), MessageError> {
        // Checked before the identity goes: an identity frame sent before
        // a message that turns out too large would glue the next message
        // onto it and misroute it.
        let signed = MAX_PREFIX_BYTES + body.len();
        check_size("message", signed, self.limit)?;
        self.socket.send(identity, zmq::SNDMORE | zmq::DONTWAIT)?;
        send_frame(
            &self.socket,
            header,
            body,
            zmq::DONTWAIT,
            Some((&self.auth.signer, identity)),
            self.limit,
        )
    }

    /// Receives one message and checks it, signature first, then its hub
    /// start: a handshake message is returned only if it is the one this
    /// socket takes (a `Hello` on a hub's socket; on a peer's, the
    /// `Welcome` that answers its open challenge, which fixes the epoch).
    pub fn recv(&mut self, flags: i32) -> Result<Envelope, MessageError> {
        let (envelope, verified) =
            recv_checked(&self.socket, flags, Some(&mut self.auth.verifier))?;
        let Some(verified) = verified else {
            return Ok(envelope);
        };
        let kind = envelope.header.kind;
        match (self.auth.verifier.epochs(), kind) {
            (EpochRule::Hub(_), MessageKind::Hello) if verified.handshake => Ok(envelope),
            (EpochRule::Hub(_), _) if verified.handshake => {
                Err(AuthError::NotHandshake("a message signed for no hub start").into())
            }
            (EpochRule::Peer(known), MessageKind::Welcome) => {
                if self.challenge != Some(envelope.header.id) {
                    return Err(self.unasked_welcome(envelope.header.id, known, verified.epoch));
                }
                self.challenge = None;
                self.answered = Some(envelope.header.id);
                self.auth.signer.set_epoch(verified.epoch);
                self.auth
                    .verifier
                    .set_epochs(EpochRule::Peer(Some(verified.epoch)));
                Ok(envelope)
            }
            (EpochRule::Peer(_), _) if verified.handshake => {
                Err(AuthError::NotHandshake("a message from the hub before its welcome").into())
            }
            (_, MessageKind::Hello | MessageKind::Welcome) => {
                Err(AuthError::NotHandshake("a hello or welcome").into())
            }
            _ => Ok(envelope),
        }
    }

    /// Why a welcome that answers no open hello is dropped: one this peer
    /// expects after a hub restart ([`AuthError::Superseded`]), or one it
    /// never asked for.
    fn unasked_welcome(&self, challenge: u64, known: Option<u64>, epoch: u64) -> MessageError {
        let answered = known == Some(epoch);
        // Challenge 0 is the hub's answer to a message signed for its
        // previous start. One comes for every message in flight when it
        // restarted, and for every one sent after the new hello until its
        // welcome: the hello answers them all. A hello said twice before
        // its answer came is welcomed twice.
        let expected = if challenge == 0 {
            self.challenge.is_some() || answered
        } else {
            answered && self.answered == Some(challenge)
        };
        if expected {
            AuthError::Superseded.into()
        } else {
            AuthError::NotHandshake("a welcome to no open hello").into()
        }
    }

    /// Receives one message on a ROUTER socket: the sender's identity and
    /// the checked message. A bad message still yields its sender, so the
    /// caller can log who sent it; only a socket error is the outer error.
    pub fn recv_routed(
        &mut self,
        flags: i32,
    ) -> Result<(Vec<u8>, Result<Envelope, MessageError>), MessageError> {
        let mut identity = zmq::Message::new();
        self.socket.recv(&mut identity, flags)?;
        if !identity.get_more() {
            return Ok((identity.to_vec(), Err(MessageError::FrameCount { got: 0 })));
        }
        let envelope = self.recv(flags);
        match envelope {
            Err(MessageError::Zmq(e)) => Err(MessageError::Zmq(e)),
            other => Ok((identity.to_vec(), other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The limit bounds the whole frame, prefix included, since that is
    /// what the receiver's `ZMQ_MAXMSGSIZE` counts: a body that fits with
    /// its prefix goes, one byte more is refused before anything is sent.
    #[test]
    fn the_limit_counts_the_prefix_and_nothing_over_it_is_sent() {
        const LIMIT_BYTES: usize = 4096;
        let ctx = zmq::Context::new();
        let key = Key::from_bytes(&[7; 32]);
        let a = ctx.socket(zmq::PAIR).unwrap();
        a.bind("inproc://signed-limit").unwrap();
        let b = ctx.socket(zmq::PAIR).unwrap();
        b.connect("inproc://signed-limit").unwrap();
        b.set_maxmsgsize(LIMIT_BYTES as i64).unwrap();
        let mut sender = SignedSocket::new(a, &key, Channel::ClientToHub, Channel::HubToClient);
        sender.set_limit(LIMIT_BYTES);
        let mut receiver = SignedSocket::new(b, &key, Channel::HubToClient, Channel::ClientToHub);
        let header = Header {
            kind: MessageKind::Control,
            job: 0,
            id: 1,
        };
        let over = vec![1u8; LIMIT_BYTES - MAX_PREFIX_BYTES + 1];
        assert!(matches!(
            sender.send_raw(&header, &over, 0),
            Err(MessageError::TooLarge { part: "message", size, limit: LIMIT_BYTES })
                if size == LIMIT_BYTES + 1
        ));
        let fits = vec![2u8; LIMIT_BYTES - MAX_PREFIX_BYTES];
        sender.send_raw(&header, &fits, 0).unwrap();
        let envelope = receiver.recv(0).unwrap();
        assert_eq!(envelope.body(), &fits[..], "the refused message never went");
    }
}
