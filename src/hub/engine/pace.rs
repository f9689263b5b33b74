//! How many waiting tasks an engine gives a free slot at once.

use std::collections::VecDeque;
use std::time::Duration;

use crate::message::ClusterRequest;

/// Longest a batch of tasks given to one slot should take: short tasks go
/// several to a message (one message and one wake-up each way for the lot),
/// long ones one at a time, so batching never holds a task back for long
/// behind others on a busy slot while another slot could have run it.
const SLOT_BATCH_TIME: Duration = Duration::from_millis(1);

/// Most tasks in one batch to a slot...
const SLOT_BATCH_TASKS: usize = 32;

/// ...and most payload bytes, well under the message size limit.
const SLOT_BATCH_BYTES: usize = 1 << 20;

/// How long this engine's tasks take lately, to size batches to slots.
#[derive(Default)]
pub(super) struct Pace {
    /// Moving average of task times (none yet: run one at a time).
    mean: Option<Duration>,
}

impl Pace {
    /// Takes one finished task's time into the average.
    pub(super) fn record(&mut self, took: Duration) {
        // An exponential average over about the last 16 tasks: it follows
        // a job that changes pace, and one odd task moves it little.
        self.mean = Some(match self.mean {
            Some(mean) => (mean * 15 + took) / 16,
            None => took,
        });
    }

    /// How many of the `waiting` tasks to give the next free slot, with
    /// `free` slots free: as many as fit in [`SLOT_BATCH_TIME`] at the
    /// current pace, no more than a fair share of what waits (so every free
    /// slot gets some), and within [`SLOT_BATCH_TASKS`] and
    /// [`SLOT_BATCH_BYTES`]. At least one.
    pub(super) fn batch(&self, waiting: &VecDeque<ClusterRequest>, free: usize) -> usize {
        let by_time = match self.mean {
            Some(mean) if mean < SLOT_BATCH_TIME => {
                let nanos = mean.as_nanos().max(1);
                usize::try_from(SLOT_BATCH_TIME.as_nanos() / nanos).unwrap_or(usize::MAX)
            }
            _ => 1,
        };
        let share = waiting.len().div_ceil(free.max(1));
        let want = by_time.min(share).clamp(1, SLOT_BATCH_TASKS);
        let mut bytes = 0;
        let fits = waiting
            .iter()
            .take(want)
            .take_while(|r| {
                bytes += r.payload.len();
                bytes <= SLOT_BATCH_BYTES
            })
            .count();
        fits.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(n: usize, payload: usize) -> VecDeque<ClusterRequest> {
        (0..n as u64)
            .map(|id| ClusterRequest::new(id, vec![0; payload]))
            .collect()
    }

    fn paced(mean: Duration) -> Pace {
        Pace { mean: Some(mean) }
    }

    #[test]
    fn unknown_or_long_tasks_go_one_at_a_time() {
        let queue = waiting(100, 8);
        assert_eq!(Pace::default().batch(&queue, 2), 1);
        assert_eq!(paced(SLOT_BATCH_TIME).batch(&queue, 2), 1);
        assert_eq!(paced(Duration::from_secs(3)).batch(&queue, 1), 1);
    }

    #[test]
    fn short_tasks_fill_a_batch_of_about_the_batch_time() {
        let queue = waiting(100, 8);
        assert_eq!(paced(Duration::from_micros(100)).batch(&queue, 1), 10);
        assert_eq!(paced(Duration::from_micros(400)).batch(&queue, 1), 2);
        assert_eq!(
            paced(Duration::from_nanos(1)).batch(&queue, 1),
            SLOT_BATCH_TASKS
        );
        assert_eq!(paced(Duration::ZERO).batch(&queue, 1), SLOT_BATCH_TASKS);
    }

    #[test]
    fn every_free_slot_gets_a_share_of_what_waits() {
        let fast = paced(Duration::from_micros(1));
        assert_eq!(fast.batch(&waiting(10, 8), 2), 5);
        assert_eq!(fast.batch(&waiting(3, 8), 4), 1);
        assert_eq!(fast.batch(&waiting(1, 8), 1), 1);
    }

    #[test]
    fn a_batch_stays_under_its_byte_bound_but_holds_at_least_one() {
        let fast = paced(Duration::from_micros(1));
        let big = SLOT_BATCH_BYTES / 4;
        assert_eq!(fast.batch(&waiting(32, big), 1), 4);
        assert_eq!(fast.batch(&waiting(32, SLOT_BATCH_BYTES * 2), 1), 1);
    }

    #[test]
    fn the_pace_follows_recent_tasks() {
        let mut pace = Pace::default();
        pace.record(Duration::from_millis(10));
        assert_eq!(pace.mean, Some(Duration::from_millis(10)));
        for _ in 0..200 {
            pace.record(Duration::from_micros(2));
        }
        let mean = pace.mean.unwrap();
        assert!(mean < Duration::from_micros(3), "{mean:?}");
        assert!(pace.batch(&waiting(64, 8), 2) > 1);
    }
}
