//! Devices: streamer and forwarder, the glue of a brokered topology.
//!
//! A *streamer* pulls from its frontend and pushes to its backend, so many
//! ventilators and many workers can meet at two well-known addresses. A
//! *forwarder* subscribes to everything on its frontend and republishes it on
//! its backend, so commands reach workers that only know the broker. Both are
//! payload-agnostic (they copy frames, multipart messages intact), so any
//! ZeroMQ peer in any language can use them, and both can copy every message
//! to a capture socket (IPython's MonitoredQueue idea) for logging or tests.
//!
//! A device relays on its own thread and stops when its [`DeviceHandle`]
//! says so, or when its context is terminated. It never blocks on its
//! capture socket (see `relay`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::{self, JoinHandle};

use tracing::info;

use crate::socket::{last_endpoint, FutureSocket, SocketError, SocketKind};

/// Errors from a device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A socket could not be made.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// The proxy or its control socket failed.
    #[error("{device} failed: {source}")]
    Proxy {
        /// Which device.
        device: &'static str,
        /// The underlying error.
        #[source]
        source: zmq::Error,
    },
    /// The device thread could not be started.
    #[error("cannot start the {device} thread: {source}")]
    Spawn {
        /// Which device.
        device: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The device thread panicked.
    #[error("{0} thread panicked")]
    Panicked(&'static str),
}

/// Which device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// PULL frontend to PUSH backend.
    Streamer,
    /// SUB frontend (subscribed to everything) to PUB backend.
    Forwarder,
}

impl DeviceKind {
    fn name(self) -> &'static str {
        match self {
            DeviceKind::Streamer => "streamer",
            DeviceKind::Forwarder => "forwarder",
        }
    }

    fn kinds(self) -> (SocketKind, SocketKind) {
        match self {
            DeviceKind::Streamer => (SocketKind::Pull, SocketKind::Push),
            DeviceKind::Forwarder => (SocketKind::Sub, SocketKind::Pub),
        }
    }
}

/// A device to be started: its kind and socket descriptors.
#[derive(Debug, Clone)]
pub struct Device {
    kind: DeviceKind,
    frontend: FutureSocket,
    backend: FutureSocket,
    capture: Option<FutureSocket>,
}

/// A streamer from `frontend` to `backend`; their kinds are set to PULL and
/// PUSH whatever the descriptors said.
pub fn streamer(frontend: FutureSocket, backend: FutureSocket) -> Device {
    Device::new(DeviceKind::Streamer, frontend, backend)
}

/// A forwarder from `frontend` to `backend`; their kinds are set to SUB and
/// PUB. The SUB subscribes to everything unless the descriptor names
/// prefixes.
pub fn forwarder(frontend: FutureSocket, backend: FutureSocket) -> Device {
    Device::new(DeviceKind::Forwarder, frontend, backend)
}

impl Device {
    fn new(kind: DeviceKind, mut frontend: FutureSocket, mut backend: FutureSocket) -> Self {
        (frontend.kind, backend.kind) = kind.kinds();
        Device {
            kind,
            frontend,
            backend,
            capture: None,
        }
    }

    /// Copies every message that passes to this socket (PUB, PUSH, PAIR or
    /// DEALER, as its descriptor says).
    pub fn capture(mut self, capture: FutureSocket) -> Self {
        self.capture = Some(capture);
        self
    }

    /// The frontend and backend descriptors.
    pub fn sockets(&self) -> (&FutureSocket, &FutureSocket) {
        (&self.frontend, &self.backend)
    }

    /// Makes the sockets (so a bad address fails here, not on the thread)
    /// and starts the device on its own thread.
    pub fn spawn(self, ctx: &zmq::Context) -> Result<DeviceHandle, DeviceError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = self.kind.name();
        let proxy_error = |source| DeviceError::Proxy {
            device: name,
            source,
        };
        let frontend = self.frontend.make(ctx)?;
        let backend = self.backend.make(ctx)?;
        let capture = self.capture.as_ref().map(|c| c.make(ctx)).transpose()?;
        let url = format!(
            "inproc://zcluster-device-control-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let control = ctx.socket(zmq::PAIR).map_err(proxy_error)?;
        control.set_linger(0).map_err(proxy_error)?;
        control.bind(&url).map_err(proxy_error)?;
        let steer = ctx.socket(zmq::PAIR).map_err(proxy_error)?;
        steer.connect(&url).map_err(proxy_error)?;
        info!(
            device = name,
            frontend = %self.frontend,
            backend = %self.backend,
            capture = ?self.capture.as_ref().map(ToString::to_string),
            "device started"
        );
        let endpoints = DeviceEndpoints {
            frontend: last_endpoint(&frontend)?,
            backend: last_endpoint(&backend)?,
            capture: capture.as_ref().map(last_endpoint).transpose()?,
        };
        let thread = thread::Builder::new()
            .name(format!("zcluster-{name}"))
            .spawn(
                move || match relay(&frontend, &backend, capture.as_ref(), &steer) {
                    // Stopped by the handle, or by the context being terminated.
                    Ok(()) | Err(zmq::Error::ETERM) => Ok(()),
                    Err(source) => Err(DeviceError::Proxy {
                        device: name,
                        source,
                    }),
                },
            )
            .map_err(|source| DeviceError::Spawn {
                device: name,
                source,
            })?;
        Ok(DeviceHandle {
            name,
            control,
            thread,
            endpoints,
        })
    }
}

/// Messages moved per wake-up before the control socket is checked again.
const BURST: usize = 256;

/// The control word that stops a device (as libzmq's steerable proxy).
const TERMINATE: &[u8] = b"TERMINATE";

/// Moves whole messages from `frontend` to `backend` until TERMINATE
/// arrives on `control`, copying each to `capture` without ever blocking on
/// it: a slow or absent capture reader loses copies, never traffic. (libzmq's
/// steerable proxy sends to the capture with blocking sends, TERMINATE
/// included, so a capture PUSH with no reader hangs the device for good.)
/// A full backend is waited for while still listening to `control`.
fn relay(
    frontend: &zmq::Socket,
    backend: &zmq::Socket,
    capture: Option<&zmq::Socket>,
    control: &zmq::Socket,
) -> Result<(), zmq::Error> {
    let mut frame = zmq::Message::new();
    loop {
        let mut items = [
            frontend.as_poll_item(zmq::POLLIN),
            control.as_poll_item(zmq::POLLIN),
        ];
        match zmq::poll(&mut items, -1) {
            Ok(_) => {}
            Err(zmq::Error::EINTR) => continue,
            Err(e) => return Err(e),
        }
        if items[1].is_readable() && terminated(control)? {
            return Ok(());
        }
        if !items[0].is_readable() {
            continue;
        }
        for _ in 0..BURST {
            match frontend.recv(&mut frame, zmq::DONTWAIT) {
                Ok(()) => {}
                Err(zmq::Error::EAGAIN) => break,
                Err(e) => return Err(e),
            }
            let mut copying = capture.is_some();
            let mut first = true;
            loop {
                let more = frame.get_more();
                let flags = if more { zmq::SNDMORE } else { 0 };
                if copying {
                    if let Some(capture) = capture {
                        copying = capture.send(&frame[..], flags | zmq::DONTWAIT).is_ok();
                    }
                }
                if first {
                    // Wait for room on the backend, but stay stoppable.
                    while let Err(e) = backend.send(&frame[..], flags | zmq::DONTWAIT) {
                        if e != zmq::Error::EAGAIN {
                            return Err(e);
                        }
                        let mut wait = [
                            backend.as_poll_item(zmq::POLLOUT),
                            control.as_poll_item(zmq::POLLIN),
                        ];
                        match zmq::poll(&mut wait, -1) {
                            Ok(_) | Err(zmq::Error::EINTR) => {}
                            Err(e) => return Err(e),
                        }
                        if wait[1].is_readable() && terminated(control)? {
                            return Ok(());
                        }
                    }
                    first = false;
                } else {
                    // The rest of a multipart message always fits.
                    backend.send(&frame[..], flags)?;
                }
                if !more {
                    break;
                }
                frontend.recv(&mut frame, 0)?;
            }
        }
    }
}

/// Reads one control message; true when it says TERMINATE.
fn terminated(control: &zmq::Socket) -> Result<bool, zmq::Error> {
    let word = control.recv_bytes(0)?;
    Ok(word == TERMINATE)
}

/// Where a running device's sockets actually are (the ports chosen for
/// `tcp://127.0.0.1:*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceEndpoints {
    /// The frontend's endpoint.
    pub frontend: String,
    /// The backend's endpoint.
    pub backend: String,
    /// The capture socket's endpoint.
    pub capture: Option<String>,
}

/// A running device; [`stop`](Self::stop) ends it and waits for its thread.
pub struct DeviceHandle {
    name: &'static str,
    control: zmq::Socket,
    thread: JoinHandle<Result<(), DeviceError>>,
    endpoints: DeviceEndpoints,
}

impl DeviceHandle {
    /// Tells the proxy to terminate and waits for it; returns the proxy's own
    /// error if it had already failed.
    pub fn stop(self) -> Result<(), DeviceError> {
        if !self.thread.is_finished() {
            self.control
                .send(TERMINATE, 0)
                .map_err(|source| DeviceError::Proxy {
                    device: self.name,
                    source,
                })?;
        }
        self.thread
            .join()
            .map_err(|_| DeviceError::Panicked(self.name))?
    }

    /// Where its sockets are.
    pub fn endpoints(&self) -> &DeviceEndpoints {
        &self.endpoints
    }

    /// Whether the device thread has ended (by itself, on an error or on
    /// context termination).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }
}
