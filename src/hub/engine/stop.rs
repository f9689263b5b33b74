//! How an engine is told to stop: a flag, and a wake-up that reaches an
//! engine asleep in its poll at once.
//!
//! An idle engine sleeps until its next heartbeat (a second by default), so
//! a flag alone would be seen up to a period late. The wake-up is one end of
//! a socket pair that every engine sharing the stop polls with its sockets;
//! stopping writes a byte into the other end and nobody ever reads it, so it
//! stays readable and wakes each of them (and any that polls later) at once.
//! A signal does the same from its handler (`zcluster worker` registers
//! [`EngineStop::wake_pipe`] with `signal-hook`: one `send`, safe there).

use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tracing::warn;

/// A stop shared by engines (and whatever else runs beside them, such as an
/// embedded hub, through [`flag`](Self::flag)): [`stop`](Self::stop) sets
/// the flag and wakes every engine waiting on it. Cloning shares it.
#[derive(Clone, Debug)]
pub struct EngineStop {
    flag: Arc<AtomicBool>,
    /// `None` where no socket pair could be made (out of descriptors):
    /// engines then look at the flag every 100 ms (`UNWOKEN_STOP_CHECK`).
    wake: Option<Arc<Wake>>,
}

/// The two ends of the wake-up: engines poll `read`; stopping writes to
/// `write`.
#[derive(Debug)]
struct Wake {
    read: UnixStream,
    write: UnixStream,
}

impl Default for EngineStop {
    fn default() -> Self {
        Self::new()
    }
}

impl EngineStop {
    /// A stop not yet given.
    pub fn new() -> Self {
        let wake = UnixStream::pair()
            .and_then(|(read, write)| {
                write.set_nonblocking(true)?;
                Ok(Wake { read, write })
            })
            .map_err(|e| warn!(error = %e, "no wake-up for stopping engines; they look at the stop flag every 100 ms"))
            .ok();
        EngineStop {
            flag: Arc::new(AtomicBool::new(false)),
            wake: wake.map(Arc::new),
        }
    }

    /// A second writing end of the wake-up, for a signal handler to wake
    /// the engines with (`signal_hook::low_level::pipe::register`, which
    /// takes it; register the [`flag`](Self::flag) for the same signal
    /// first, so an engine woken by the byte finds the flag set). `None`
    /// when this stop has no wake-up.
    pub fn wake_pipe(&self) -> std::io::Result<Option<UnixStream>> {
        self.wake.as_ref().map(|w| w.write.try_clone()).transpose()
    }

    /// Stops every engine sharing this stop, waking those that wait.
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        if let Some(wake) = &self.wake {
            // A full buffer (it is never read) already wakes them.
            let _ = (&wake.write).write(b"x");
        }
    }

    /// Whether the stop was given.
    pub fn is_stopped(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// The flag alone, for code that only looks at it between things it
    /// does (a slot about to start a task, an embedded hub's loop).
    pub fn flag(&self) -> &Arc<AtomicBool> {
        &self.flag
    }

    /// The descriptor an engine polls beside its sockets: readable once
    /// stopped. `None`: there is none (see the `wake` field).
    pub(super) fn wake_fd(&self) -> Option<RawFd> {
        self.wake.as_ref().map(|w| w.read.as_raw_fd())
    }
}
