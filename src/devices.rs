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
//! A device runs `zmq_proxy_steerable` on its own thread and stops when its
//! [`DeviceHandle`] says so, or when its context is terminated.

use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::{self, JoinHandle};

use tracing::info;

use crate::socket::{FutureSocket, SocketError, SocketKind};

/// Errors from a device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A socket could not be made.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// The proxy or its control socket failed.
    #[error("{device} failed: {source}")]
    Proxy {
        device: &'static str,
        #[source]
        source: zmq::Error,
    },
    /// The device thread could not be started.
    #[error("cannot start the {device} thread: {source}")]
    Spawn {
        device: &'static str,
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
        let mut frontend = self.frontend.make(ctx)?;
        let mut backend = self.backend.make(ctx)?;
        let mut capture = self.capture.as_ref().map(|c| c.make(ctx)).transpose()?;
        let url = format!(
            "inproc://zcluster-device-control-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let control = ctx.socket(zmq::PAIR).map_err(proxy_error)?;
        control.set_linger(0).map_err(proxy_error)?;
        control.bind(&url).map_err(proxy_error)?;
        let mut steer = ctx.socket(zmq::PAIR).map_err(proxy_error)?;
        steer.connect(&url).map_err(proxy_error)?;
        info!(
            device = name,
            frontend = %self.frontend,
            backend = %self.backend,
            capture = ?self.capture.as_ref().map(ToString::to_string),
            "device started"
        );
        let thread = thread::Builder::new()
            .name(format!("zcluster-{name}"))
            .spawn(move || {
                let outcome = match &mut capture {
                    Some(capture) => zmq::proxy_steerable_with_capture(
                        &mut frontend,
                        &mut backend,
                        capture,
                        &mut steer,
                    ),
                    None => zmq::proxy_steerable(&mut frontend, &mut backend, &mut steer),
                };
                match outcome {
                    // Terminated by the control socket (libzmq returns 0) or
                    // by the context being terminated.
                    Ok(()) | Err(zmq::Error::ETERM) => Ok(()),
                    Err(source) => Err(DeviceError::Proxy {
                        device: name,
                        source,
                    }),
                }
            })
            .map_err(|source| DeviceError::Spawn {
                device: name,
                source,
            })?;
        Ok(DeviceHandle {
            name,
            control,
            thread,
        })
    }
}

/// A running device; [`stop`](Self::stop) ends it and waits for its thread.
pub struct DeviceHandle {
    name: &'static str,
    control: zmq::Socket,
    thread: JoinHandle<Result<(), DeviceError>>,
}

impl DeviceHandle {
    /// Tells the proxy to terminate and waits for it; returns the proxy's own
    /// error if it had already failed.
    pub fn stop(self) -> Result<(), DeviceError> {
        if !self.thread.is_finished() {
            self.control
                .send("TERMINATE", 0)
                .map_err(|source| DeviceError::Proxy {
                    device: self.name,
                    source,
                })?;
        }
        self.thread
            .join()
            .map_err(|_| DeviceError::Panicked(self.name))?
    }

    /// Whether the device thread has ended (by itself, on an error or on
    /// context termination).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }
}
