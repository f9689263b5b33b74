//! What the hub may let out only once the task store has committed it.
//!
//! The SQLite store writes on a thread of its own, in batches, so the hub's
//! loop never waits on the disk. The price is that a write the hub has
//! queued may not be committed yet, and may never be (a full disk). The hub
//! promises that nothing it acknowledges is lost, so two things wait for
//! their write to commit:
//!
//! - a task goes to an engine only once its insert is committed (a
//!   restarted hub would otherwise know nothing of a task that ran);
//! - a result (or a failure the hub decided) goes to its client only once
//!   its record is committed, so what a client printed is in the store and
//!   nothing it printed runs again after a restart.
//!
//! The mechanism is a position, as in a log: every queued write gets the
//! next number ([`Store::written`](super::store::Store::written) after
//! queueing it), and the writer publishes how many writes it has committed
//! ([`CommitLog::committed`], one atomic). What waits is held in a
//! [`Gate`] with the position of its write and released, in order, once the
//! committed position reaches it. The writer commits whatever is queued in
//! one transaction, so many held items go out per commit: the gate adds the
//! latency of one commit, never one commit round trip per task.
//!
//! The writer wakes the hub's loop through a socket pair polled with the
//! hub's ZeroMQ sockets ([`wait_readable`]); it writes one byte only when
//! the hub has not been woken yet, so a busy writer costs the hub a read per
//! loop turn at most.
//!
//! A write that fails stops the log for good ([`CommitLog::failure`]):
//! writes after it would land on top of a lost one (a result for a task
//! whose insert is lost), so the committed position never moves again and
//! the hub stops dispatching and delivering until it is restarted.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::store::StoreError;
use crate::socket::millis;

/// How far the store's queued writes are committed, and whether the store
/// stopped at a failed write: published by the store's writer, read by the
/// hub's loop without locking.
#[derive(Debug)]
pub struct CommitLog {
    /// Writes committed since the store was opened.
    committed: AtomicU64,
    /// The first write failure; set once, never cleared.
    failure: OnceLock<Arc<StoreError>>,
    /// Wakes the hub when the position moves; `None` for a store that
    /// commits on the caller's thread (the memory store).
    wake: Option<Wake>,
}

/// A socket pair: the writer writes a byte, the hub's poll sees it.
#[derive(Debug)]
struct Wake {
    reader: UnixStream,
    writer: UnixStream,
    /// A byte is on its way and the hub has not looked since: no need for another.
    raised: AtomicBool,
}

impl CommitLog {
    /// The log of a store that commits each write before the call returns:
    /// its position stays 0, as does [`Store::written`](super::store::Store::written),
    /// so everything held is released at once.
    pub fn immediate() -> Self {
        CommitLog {
            committed: AtomicU64::new(0),
            failure: OnceLock::new(),
            wake: None,
        }
    }

    /// The log of a store whose writes commit on another thread, which
    /// wakes the hub as its position moves.
    pub fn with_wake() -> std::io::Result<Self> {
        let (reader, writer) = UnixStream::pair()?;
        reader.set_nonblocking(true)?;
        writer.set_nonblocking(true)?;
        Ok(CommitLog {
            committed: AtomicU64::new(0),
            failure: OnceLock::new(),
            wake: Some(Wake {
                reader,
                writer,
                raised: AtomicBool::new(false),
            }),
        })
    }

    /// Writes committed so far: a write queued as position `n` is durable
    /// once this is at least `n`.
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::SeqCst)
    }

    /// The write failure that stopped the store, if one did.
    pub fn failure(&self) -> Option<&Arc<StoreError>> {
        self.failure.get()
    }

    /// Writer side: `writes` more writes are committed.
    pub(crate) fn advance(&self, writes: u64) {
        self.committed.fetch_add(writes, Ordering::SeqCst);
        self.raise();
    }

    /// Writer side: `writes` more writes count as committed without waking
    /// the hub, for writes nothing is held for (starts carried to a later
    /// commit): the hub holds each item for a write of its own, never a
    /// start, so no held item is released by these.
    pub(crate) fn advance_quietly(&self, writes: u64) {
        self.committed.fetch_add(writes, Ordering::SeqCst);
    }

    /// Writer side: a write failed; the log stops here. Returns the failure
    /// that stopped it (the first one, if it had already stopped).
    pub(crate) fn fail(&self, error: StoreError) -> Arc<StoreError> {
        let first = Arc::clone(self.failure.get_or_init(|| Arc::new(error)));
        self.raise();
        first
    }

    /// Wakes the hub unless a wake-up is already on its way.
    fn raise(&self) {
        if let Some(wake) = &self.wake {
            if !wake.raised.swap(true, Ordering::SeqCst) {
                // Full (cannot be: one byte at a time) or closed (the hub
                // is gone): either way nobody needs another byte.
                let _ = (&wake.writer).write(&[1]);
            }
        }
    }

    /// Hub side: takes the wake-up, so the next one comes only after the
    /// position moves again. Read [`committed`](Self::committed) after
    /// this, never before, or a commit in between would not wake the hub.
    pub fn take_wake(&self) {
        if let Some(wake) = &self.wake {
            // One byte per raise, and none until the flag is lowered: one
            // read takes all there is (a short read means nothing is left).
            let mut buffer = [0u8; 64];
            while matches!((&wake.reader).read(&mut buffer), Ok(n) if n == buffer.len()) {}
            wake.raised.store(false, Ordering::SeqCst);
        }
    }

    /// What the hub's poll watches for wake-ups, if anything.
    fn wake_fd(&self) -> Option<RawFd> {
        self.wake.as_ref().map(|w| w.reader.as_raw_fd())
    }
}

/// Items waiting for the write queued just before them to commit, in the
/// order they were held (positions never decrease).
#[derive(Debug)]
pub struct Gate<T> {
    held: VecDeque<(u64, T)>,
}

impl<T> Default for Gate<T> {
    fn default() -> Self {
        Gate {
            held: VecDeque::new(),
        }
    }
}

impl<T> Gate<T> {
    /// Holds `item` until the write at `position` is committed.
    pub fn hold(&mut self, position: u64, item: T) {
        self.held.push_back((position, item));
    }

    /// Takes out, in order, everything whose write is committed at `committed`.
    pub fn release(&mut self, committed: u64) -> Vec<T> {
        let ready = self
            .held
            .partition_point(|(position, _)| *position <= committed);
        self.held.drain(..ready).map(|(_, item)| item).collect()
    }

    /// Items still held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Drops everything held: their writes will never commit.
    pub fn clear(&mut self) {
        self.held.clear();
    }
}

/// What [`wait_readable`] found ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    /// The first socket has a message.
    pub first: bool,
    /// The second socket has a message.
    pub second: bool,
    /// The store committed (or failed) since the last [`CommitLog::take_wake`].
    pub commits: bool,
}

/// Waits up to `timeout` for either socket to have a message or for the
/// store's log to move, retrying when a signal interrupts the wait: the
/// hub's loop sleeps here.
pub fn wait_readable(
    first: &zmq::Socket,
    second: &zmq::Socket,
    log: &CommitLog,
    timeout: Duration,
) -> Result<Ready, zmq::Error> {
    let deadline = std::time::Instant::now() + timeout;
    let wake = log.wake_fd();
    let mut items = [
        first.as_poll_item(zmq::POLLIN),
        second.as_poll_item(zmq::POLLIN),
        // Without a wake-up fd the third slot repeats the first socket and
        // is left out of the poll.
        match wake {
            Some(fd) => zmq::PollItem::from_fd(fd, zmq::POLLIN),
            None => first.as_poll_item(zmq::POLLIN),
        },
    ];
    let used = if wake.is_some() { 3 } else { 2 };
    loop {
        // Round up, so a wait never ends a fraction of a millisecond early.
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let timeout_ms = i64::from(millis(left + Duration::from_nanos(999_999)));
        match zmq::poll(&mut items[..used], timeout_ms) {
            Ok(_) => {
                return Ok(Ready {
                    first: items[0].is_readable(),
                    second: items[1].is_readable(),
                    commits: used == 3 && items[2].is_readable(),
                })
            }
            Err(zmq::Error::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_releases_in_order_up_to_the_committed_position() {
        let mut gate = Gate::default();
        gate.hold(1, "a");
        gate.hold(3, "b");
        gate.hold(3, "c");
        gate.hold(7, "d");
        assert!(gate.release(0).is_empty());
        assert_eq!(gate.release(3), ["a", "b", "c"]);
        assert_eq!(gate.len(), 1);
        assert!(gate.release(6).is_empty());
        assert_eq!(gate.release(9), ["d"]);
        assert!(gate.is_empty());
    }

    #[test]
    fn a_commit_wakes_the_poll_once_and_a_failure_sticks() {
        let ctx = zmq::Context::new();
        let a = ctx.socket(zmq::PAIR).unwrap();
        let b = ctx.socket(zmq::PAIR).unwrap();
        let log = CommitLog::with_wake().unwrap();
        let idle = wait_readable(&a, &b, &log, Duration::from_millis(1)).unwrap();
        assert!(!idle.commits);
        log.advance(2);
        log.advance(3);
        let woken = wait_readable(&a, &b, &log, Duration::from_secs(5)).unwrap();
        assert!(woken.commits);
        log.take_wake();
        assert_eq!(log.committed(), 5);
        let quiet = wait_readable(&a, &b, &log, Duration::from_millis(1)).unwrap();
        assert!(!quiet.commits, "taken: no wake-up until the next commit");
        let first = log.fail(StoreError::WriterGone);
        let second = log.fail(StoreError::InvalidSpec("later".into()));
        assert!(Arc::ptr_eq(&first, &second), "the first failure stays");
        assert!(
            wait_readable(&a, &b, &log, Duration::from_secs(5))
                .unwrap()
                .commits
        );
        assert!(log.failure().is_some());
    }
}
