//! CURVE on every hub socket: encryption, and a ZeroMQ handshake that only
//! holders of the connection file complete.
//!
//! HMAC signing (see [`crate::auth`]) authenticates each message, but it
//! acts only once a whole message has arrived: before that, anyone who
//! reaches a port can hold a connection, send frames the hub must read and
//! hash, and read everything on the wire. CURVE (RFC 26, CurveZMQ) moves
//! the first check below ZMTP: every hub socket is a CURVE server, and the
//! ZAP handler here (RFC 27) admits one client key, the cluster's, so a
//! peer without the connection file fails the handshake and no frame of it
//! ever reaches the hub's code. The HMAC stays, as the per-message
//! authentication and the replay defence across hub restarts.
//!
//! The keys are derived from the cluster's signing key (HMAC-SHA256 of a
//! label under it), so they live and die with it: a restarted hub that
//! keeps its key keeps its CURVE keys, and engines and clients reconnect
//! with what they read once; `zcluster hub --fresh` renews all of them. A
//! random key pair per start would cut off every worker holding a copy of
//! the old file. CurveZMQ's short-term keys still make each connection's
//! traffic secret on its own (forward secrecy).
//!
//! One handler serves a ZeroMQ context (libzmq asks whatever is bound at
//! [`ZAP_ENDPOINT`] in the socket's context); each hub socket names its
//! hub's ZAP domain, and the admitted key is looked up by domain, so two
//! hubs in one process admit only their own clients. Every server socket
//! sets `ZMQ_ZAP_ENFORCE_DOMAIN`: with no handler, libzmq refuses every
//! client instead of admitting any key.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tracing::{debug, warn};

use crate::untrusted::escape;

/// Where libzmq sends authentication requests (RFC 27), in each context.
pub const ZAP_ENDPOINT: &str = "inproc://zeromq.zap.01";

/// Bytes of a CURVE key (an X25519 key).
pub const KEY_BYTES: usize = 32;

/// Characters of a CURVE key in Z85 text, as in the connection file.
pub const KEY_Z85_CHARS: usize = 40;

/// `ZMQ_ZAP_ENFORCE_DOMAIN`: libzmq 4.3's zmq.h hides it behind the draft
/// API, but its option code accepts it in stable builds too.
const ZMQ_ZAP_ENFORCE_DOMAIN: libc::c_int = 93;

/// Distinct peer addresses whose first refusal is logged at warn level
/// (later ones, and any beyond this many addresses, at debug level): a
/// flood of strangers must not become a flood of log lines.
const WARNED_ADDRESSES: usize = 1024;

/// Labels under which the keys are derived from the signing key.
const SERVER_LABEL: &[u8] = b"zcluster CURVE server secret key 1";
const CLIENT_LABEL: &[u8] = b"zcluster CURVE client secret key 1";

/// Errors setting CURVE up.
#[derive(Debug, thiserror::Error)]
pub enum CurveError {
    /// The libzmq linked in was built without CURVE.
    #[error("this libzmq was built without CURVE (zcluster's build links one with it; is another libzmq loaded?)")]
    Unsupported,
    /// A key in the connection file is not a Z85 CURVE key.
    #[error("the {which} CURVE key is not a key: {reason}")]
    BadKey {
        /// Which key.
        which: &'static str,
        /// Why, in words.
        reason: String,
    },
    /// A ZeroMQ call failed.
    #[error("cannot {operation}: {source}")]
    Zmq {
        /// What was being done.
        operation: &'static str,
        /// The underlying error.
        #[source]
        source: zmq::Error,
    },
    /// The handler thread could not be started.
    #[error("cannot start the CURVE authentication thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// The cluster's CURVE keys in Z85 text, as the connection file holds
/// them: the hub's key pair and the one key pair its engines and clients
/// share. Anyone who holds them is in, as with the signing key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurveKeys {
    /// The hub's public key: a peer checks it is talking to the hub.
    pub server_public: String,
    /// The hub's secret key.
    pub server_secret: String,
    /// The public key every engine and client presents; the only one the
    /// hub admits.
    pub client_public: String,
    /// Its secret key.
    pub client_secret: String,
}

impl CurveKeys {
    /// The keys of the cluster whose signing key is `hex_key` (the
    /// connection file's `key`): a function of it, so they change exactly
    /// when it does.
    pub fn derive(hex_key: &str) -> Result<Self, CurveError> {
        let (server_public, server_secret) = pair_from(hex_key, SERVER_LABEL)?;
        let (client_public, client_secret) = pair_from(hex_key, CLIENT_LABEL)?;
        Ok(CurveKeys {
            server_public,
            server_secret,
            client_public,
            client_secret,
        })
    }

    /// The ZAP domain of this cluster's hub sockets: its own, so a handler
    /// shared by two hubs in one context tells their sockets apart.
    pub fn zap_domain(&self) -> String {
        format!("zcluster {}", self.server_public)
    }
}

/// A key pair (public, secret), Z85, from a secret derived under `label`.
fn pair_from(hex_key: &str, label: &[u8]) -> Result<(String, String), CurveError> {
    if zmq::has("curve") != Some(true) {
        return Err(CurveError::Unsupported);
    }
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(hex_key.trim().to_lowercase().as_bytes())
            .map_err(|e| CurveError::BadKey {
                which: "signing",
                reason: e.to_string(),
            })?;
    mac.update(label);
    let secret = mac.finalize().into_bytes();
    // Any 32 bytes are an X25519 secret key (libsodium clamps them).
    let secret = zmq::z85_encode(&secret).map_err(|e| CurveError::BadKey {
        which: "derived secret",
        reason: format!("{e:?}"),
    })?;
    let public = public_of(&secret)?;
    Ok((public, secret))
}

// libzmq has it (zmq.h, stable since 4.2.1); zmq-sys declares it but does
// not export it.
unsafe extern "C" {
    fn zmq_curve_public(
        z85_public_key: *mut libc::c_char,
        z85_secret_key: *const libc::c_char,
    ) -> libc::c_int;
}

/// The Z85 public key of a Z85 secret key (`zmq_curve_public`).
fn public_of(secret_z85: &str) -> Result<String, CurveError> {
    let secret = std::ffi::CString::new(secret_z85).map_err(|e| CurveError::BadKey {
        which: "secret",
        reason: e.to_string(),
    })?;
    if secret.as_bytes().len() != KEY_Z85_CHARS {
        return Err(CurveError::BadKey {
            which: "secret",
            reason: format!("{} characters, not {KEY_Z85_CHARS}", secret_z85.len()),
        });
    }
    let mut public = [0u8; KEY_Z85_CHARS + 1];
    // SAFETY: both buffers are 41 bytes (40 Z85 characters and a NUL), as
    // zmq_curve_public reads and writes; `secret` is NUL-terminated.
    let rc = unsafe { zmq_curve_public(public.as_mut_ptr().cast(), secret.as_ptr()) };
    if rc != 0 {
        return Err(CurveError::Unsupported);
    }
    Ok(String::from_utf8_lossy(&public[..KEY_Z85_CHARS]).into_owned())
}

/// A Z85 key decoded to its 32 bytes.
fn decode(which: &'static str, z85: &str) -> Result<Vec<u8>, CurveError> {
    match zmq::z85_decode(z85) {
        Ok(bytes) if bytes.len() == KEY_BYTES => Ok(bytes),
        Ok(bytes) => Err(CurveError::BadKey {
            which,
            reason: format!("{} bytes, not {KEY_BYTES}", bytes.len()),
        }),
        Err(e) => Err(CurveError::BadKey {
            which,
            reason: format!("not Z85 text ({e:?})"),
        }),
    }
}

/// Checks that `keys` are the cluster's for `hex_key`: all four are keys,
/// and they are the ones derived from it.
pub fn check(keys: &CurveKeys, hex_key: &str) -> Result<(), CurveError> {
    for (which, key) in [
        ("server public", &keys.server_public),
        ("server secret", &keys.server_secret),
        ("client public", &keys.client_public),
        ("client secret", &keys.client_secret),
    ] {
        decode(which, key)?;
    }
    if *keys != CurveKeys::derive(hex_key)? {
        return Err(CurveError::BadKey {
            which: "connection file's",
            reason: "they are not the ones of its signing key (edited, or mixed from two files)"
                .into(),
        });
    }
    Ok(())
}

/// Makes `socket` (one the hub binds) a CURVE server that admits only
/// peers with the cluster's client key, through the ZAP handler of its
/// context ([`ZapHandler`]), and refuses everyone when there is none.
/// Call before `bind`.
pub fn server(socket: &mut zmq::Socket, keys: &CurveKeys) -> Result<(), zmq::Error> {
    let secret = decode("server secret", &keys.server_secret).map_err(|_| zmq::Error::EINVAL)?;
    socket.set_curve_server(true)?;
    socket.set_curve_secretkey(&secret)?;
    socket.set_zap_domain(&keys.zap_domain())?;
    crate::socket::set_int_option(socket, ZMQ_ZAP_ENFORCE_DOMAIN, 1)
}

/// Makes `socket` (an engine's or a client's, before it connects) a CURVE
/// client of the hub: it checks the hub's key and presents the cluster's.
pub fn client(socket: &zmq::Socket, keys: &CurveKeys) -> Result<(), zmq::Error> {
    let server = decode("server public", &keys.server_public).map_err(|_| zmq::Error::EINVAL)?;
    let public = decode("client public", &keys.client_public).map_err(|_| zmq::Error::EINVAL)?;
    let secret = decode("client secret", &keys.client_secret).map_err(|_| zmq::Error::EINVAL)?;
    socket.set_curve_serverkey(&server)?;
    socket.set_curve_publickey(&public)?;
    socket.set_curve_secretkey(&secret)
}

/// Client keys admitted, by ZAP domain (one per hub in this process), with
/// how many handlers registered each.
type Admitted = HashMap<String, (Vec<u8>, usize)>;

/// The [`Admitted`] keys of this process (a `HashMap` cannot be made in a
/// static initialiser, hence the `Option`).
static ADMITTED: Mutex<Option<Admitted>> = Mutex::new(None);

fn admitted() -> MutexGuard<'static, Option<Admitted>> {
    // The map is consistent after any panic (single inserts and removes).
    ADMITTED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The ZAP handler of a hub: admits its cluster's client key on its
/// sockets for as long as it lives. Start it before binding the sockets;
/// dropping it stops its thread (if it started one).
pub struct ZapHandler {
    domain: String,
    /// Tells the thread to stop, and the thread; `None` when another
    /// handler already served this context (it looks up the same table).
    thread: Option<(zmq::Socket, JoinHandle<()>)>,
}

impl std::fmt::Debug for ZapHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZapHandler")
            .field("domain", &self.domain)
            .field("thread", &self.thread.is_some())
            .finish()
    }
}

impl ZapHandler {
    /// Admits `keys`' client key on sockets of `keys`' domain in `ctx`,
    /// starting the context's handler thread unless one runs already.
    pub fn start(ctx: &zmq::Context, keys: &CurveKeys) -> Result<Self, CurveError> {
        let zmq_err = |operation| move |source| CurveError::Zmq { operation, source };
        let client = decode("client public", &keys.client_public)?;
        let domain = keys.zap_domain();
        let zap = ctx
            .socket(zmq::REP)
            .map_err(zmq_err("create the ZAP socket"))?;
        zap.set_linger(0)
            .map_err(zmq_err("configure the ZAP socket"))?;
        let thread = match zap.bind(ZAP_ENDPOINT) {
            Ok(()) => {
                let name = format!(
                    "inproc://zcluster-zap-stop-{:016x}",
                    crate::auth::random_u64()
                );
                let stop_rx = ctx
                    .socket(zmq::PAIR)
                    .map_err(zmq_err("create the ZAP stop socket"))?;
                stop_rx
                    .bind(&name)
                    .map_err(zmq_err("bind the ZAP stop socket"))?;
                let stop_tx = ctx
                    .socket(zmq::PAIR)
                    .map_err(zmq_err("create the ZAP stop socket"))?;
                stop_tx.set_linger(0).map_err(zmq_err("configure"))?;
                stop_tx
                    .connect(&name)
                    .map_err(zmq_err("connect the ZAP stop socket"))?;
                let handle = thread::Builder::new()
                    .name("zcluster-zap".into())
                    .spawn(move || serve(&zap, &stop_rx))
                    .map_err(CurveError::Thread)?;
                Some((stop_tx, handle))
            }
            // Another hub in this context serves ZAP; it reads the table.
            Err(zmq::Error::EADDRINUSE) => None,
            Err(e) => return Err(zmq_err("bind the ZAP socket")(e)),
        };
        admitted()
            .get_or_insert_with(HashMap::new)
            .entry(domain.clone())
            .or_insert((client, 0))
            .1 += 1;
        Ok(ZapHandler { domain, thread })
    }
}

impl Drop for ZapHandler {
    fn drop(&mut self) {
        if let Some(table) = admitted().as_mut() {
            if let Some(entry) = table.get_mut(&self.domain) {
                entry.1 = entry.1.saturating_sub(1);
                if entry.1 == 0 {
                    table.remove(&self.domain);
                }
            }
        }
        if let Some((stop, handle)) = self.thread.take() {
            // If the send fails the thread has already stopped (a blocking
            // send to a PAIR whose peer is gone would wait forever).
            let _ = stop.send("stop", zmq::DONTWAIT);
            let _ = handle.join();
        }
    }
}

/// Answers ZAP requests until told to stop or the context ends.
fn serve(zap: &zmq::Socket, stop: &zmq::Socket) {
    let mut warned = HashSet::new();
    loop {
        let mut items = [
            zap.as_poll_item(zmq::POLLIN),
            stop.as_poll_item(zmq::POLLIN),
        ];
        match zmq::poll(&mut items, -1) {
            Ok(_) => {}
            Err(zmq::Error::EINTR) => continue,
            Err(_) => return,
        }
        if items[1].is_readable() {
            return;
        }
        if !items[0].is_readable() {
            continue;
        }
        let request = match zap.recv_multipart(zmq::DONTWAIT) {
            Ok(frames) => frames,
            Err(zmq::Error::EAGAIN | zmq::Error::EINTR) => continue,
            Err(_) => return,
        };
        let reply = answer(&request, &mut warned);
        match zap.send_multipart(reply, 0) {
            Ok(()) | Err(zmq::Error::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// The reply to one ZAP request (RFC 27): version, request id, domain,
/// address, routing id, mechanism, then the credentials (for CURVE, the
/// client's public key). 200 for the admitted key of the domain, 400 for
/// anything else.
fn answer(request: &[Vec<u8>], warned: &mut HashSet<Vec<u8>>) -> Vec<Vec<u8>> {
    let id = request.get(1).cloned().unwrap_or_default();
    let admitted_key = |domain: &[u8]| {
        let domain = std::str::from_utf8(domain).ok()?;
        admitted()
            .as_ref()
            .and_then(|t| t.get(domain).map(|(key, _)| key.clone()))
    };
    let admit = match request {
        [version, _id, domain, _address, _routing, mechanism, key, ..] => {
            version.as_slice() == b"1.0"
                && mechanism.as_slice() == b"CURVE"
                && admitted_key(domain).is_some_and(|k| k == *key)
        }
        _ => false,
    };
    let reply = |status: &str, text: &str, user: &str| {
        vec![
            b"1.0".to_vec(),
            id.clone(),
            status.as_bytes().to_vec(),
            text.as_bytes().to_vec(),
            user.as_bytes().to_vec(),
            Vec::new(),
        ]
    };
    if admit {
        return reply("200", "OK", "zcluster");
    }
    let address = request.get(3).cloned().unwrap_or_default();
    let mechanism = request.get(5).cloned().unwrap_or_default();
    let first = warned.len() < WARNED_ADDRESSES && warned.insert(address.clone());
    if first {
        warn!(
            peer = %escape(&address),
            mechanism = %escape(&mechanism),
            "refusing a connection without the cluster's CURVE key (further ones from this address are logged at debug level)"
        );
    } else {
        debug!(peer = %escape(&address), "refusing a connection without the cluster's CURVE key");
    }
    reply("400", "not a key of this cluster", "")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn keys_are_a_function_of_the_signing_key() {
        let keys = CurveKeys::derive(HEX).unwrap();
        assert_eq!(keys, CurveKeys::derive(&HEX.to_uppercase()).unwrap());
        assert_ne!(keys.server_secret, keys.client_secret);
        assert_ne!(keys, CurveKeys::derive(&HEX.replace("00", "01")).unwrap());
        for key in [&keys.server_public, &keys.client_secret] {
            assert_eq!(key.len(), KEY_Z85_CHARS);
        }
        check(&keys, HEX).unwrap();
        let mut mixed = keys.clone();
        mixed.client_public = keys.server_public.clone();
        assert!(check(&mixed, HEX).is_err());
    }

    #[test]
    fn the_handler_admits_only_its_domains_key() {
        let keys = CurveKeys::derive(HEX).unwrap();
        let other = CurveKeys::derive(&HEX.replace('f', "e")).unwrap();
        let _handler = ZapHandler::start(&zmq::Context::new(), &keys).unwrap();
        let request = |domain: String, key: &str| {
            vec![
                b"1.0".to_vec(),
                b"7".to_vec(),
                domain.into_bytes(),
                b"127.0.0.1".to_vec(),
                Vec::new(),
                b"CURVE".to_vec(),
                zmq::z85_decode(key).unwrap(),
            ]
        };
        let status = |frames: Vec<Vec<u8>>| {
            let reply = answer(&frames, &mut HashSet::new());
            assert_eq!(reply[1], b"7");
            String::from_utf8(reply[2].clone()).unwrap()
        };
        assert_eq!(
            status(request(keys.zap_domain(), &keys.client_public)),
            "200"
        );
        assert_eq!(
            status(request(keys.zap_domain(), &other.client_public)),
            "400"
        );
        assert_eq!(
            status(request(other.zap_domain(), &other.client_public)),
            "400"
        );
        let truncated = answer(&[b"1.0".to_vec()], &mut HashSet::new());
        assert_eq!(truncated[2], b"400");
    }
}
