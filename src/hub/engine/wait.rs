//! How an engine waits: asleep until something arrives (the hub, its
//! slots' results, its connection's events, a stop) or until the next
//! thing it must do on its own time, and not a moment before.
//!
//! A thousand idle engines that each woke ten times a second to look at a
//! flag cost a third of a core on this machine; now an idle engine wakes
//! once per hub heartbeat, to answer it.

use std::time::{Duration, Instant, SystemTime};

use super::drain::{DRAIN_MARGIN, HARD_STOP_BEFORE_END, STOP_SIGNAL_GRACE};
use super::{transport, Engine, EngineError};

/// Longest an engine sleeps when its stop has no wake-up (no socket pair
/// could be made): it looks at the stop flag that often.
pub(super) const UNWOKEN_STOP_CHECK: Duration = Duration::from_millis(100);

/// What woke an engine.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Woken {
    /// The hub sent something.
    pub(super) hub: bool,
    /// A slot sent results.
    pub(super) slots: bool,
    /// The connection's monitor has an event (it may have closed).
    pub(super) link: bool,
}

impl Woken {
    /// Nothing arrived: a deadline (or a stop, or a signal) woke it.
    pub(super) fn idle(self) -> bool {
        !(self.hub || self.slots || self.link)
    }
}

/// `before` ahead of `at`, a wall-clock time, on the monotonic clock: now
/// if that is past, `None` if it is beyond what an `Instant` holds.
fn instant_before(at: SystemTime, before: Duration, now: Instant) -> Option<Instant> {
    match at.duration_since(SystemTime::now()) {
        Ok(left) => Some(now.checked_add(left.saturating_sub(before))?),
        Err(_) => Some(now),
    }
}

impl Engine<'_> {
    /// When the engine must next act with nothing arriving: its heartbeat
    /// (see `on_heartbeat_due`), the end of a held result's grace, and
    /// with an end time the start of its drain and its hard stop. Each of
    /// those is looked at again on every turn, so waking early costs one
    /// turn and waking late is what this avoids.
    pub(super) fn next_deadline(&self, now: Instant) -> Instant {
        let mut next = self.next_beat;
        if let Some((at, _, _)) = self.held.iter().min_by_key(|(at, _, _)| *at) {
            next = next.min(*at + STOP_SIGNAL_GRACE);
        }
        if let Some(end) = self.options.end_at {
            let drain = (!self.draining).then(|| self.longest_median() + DRAIN_MARGIN);
            for before in [Some(HARD_STOP_BEFORE_END), drain].into_iter().flatten() {
                if let Some(at) = instant_before(end, before, now) {
                    next = next.min(at);
                }
            }
        }
        if self.stop.wake_fd().is_none() {
            next = next.min(now + UNWOKEN_STOP_CHECK);
        }
        next
    }

    /// Sleeps until something arrives or the next deadline passes.
    pub(super) fn wait(&mut self) -> Result<Woken, EngineError> {
        let now = Instant::now();
        let left = self.next_deadline(now).saturating_duration_since(now);
        // Rounded up: a wait that ended a fraction of a millisecond before
        // its deadline would find nothing due and spin until it passed.
        let timeout_ms = i64::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(i64::MAX);
        let wake_fd = self.stop.wake_fd();
        let hub = self.conn.link.socket.socket();
        let mut items = [
            hub.as_poll_item(zmq::POLLIN),
            self.slots.results_socket().as_poll_item(zmq::POLLIN),
            // ZMQ_FD is edge-triggered: readable once news came after the
            // monitor was last read to the end (`HubLink::closed` does),
            // and it stays so until then. An event it missed would still
            // be read at the next idle turn or heartbeat (see `turn`).
            match self.conn.monitor_fd {
                Some(fd) => zmq::PollItem::from_fd(fd, zmq::POLLIN),
                None => self.conn.link.monitor_socket().as_poll_item(zmq::POLLIN),
            },
            // Without a wake-up, a second look at the hub that is left out.
            match wake_fd {
                Some(fd) => zmq::PollItem::from_fd(fd, zmq::POLLIN),
                None => hub.as_poll_item(zmq::POLLIN),
            },
        ];
        let used = if wake_fd.is_some() { 4 } else { 3 };
        match zmq::poll(&mut items[..used], timeout_ms) {
            Ok(_) => Ok(Woken {
                hub: items[0].is_readable(),
                slots: items[1].is_readable(),
                link: items[2].is_readable(),
            }),
            // A signal: the turn looks at the stop flag, then waits again.
            Err(zmq::Error::EINTR) => Ok(Woken::default()),
            Err(e) => Err(transport("poll", e.into())),
        }
    }
}
