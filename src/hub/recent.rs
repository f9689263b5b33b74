//! The median of a job's recent task times: the hub keeps one per job (how
//! deep to prefetch, when a straggler gets a copy) and an engine one per
//! job it runs (whether a task would still finish before its allocation
//! ends).

use std::collections::VecDeque;
use std::time::Duration;

/// Samples after which the median is refreshed only every so many: sorting
/// on every task would cost more than a no-op task.
const REFRESH_EVERY: u64 = 16;

/// The latest task times, up to a capacity, and their median.
#[derive(Debug, Clone)]
pub(crate) struct RecentTimes {
    samples: VecDeque<Duration>,
    capacity: usize,
    /// Times recorded in all.
    recorded: u64,
    /// Refreshed at each of the first [`REFRESH_EVERY`] times, then at
    /// every [`REFRESH_EVERY`]th.
    median: Option<Duration>,
}

impl RecentTimes {
    /// Keeps the latest `capacity` times.
    pub(crate) fn new(capacity: usize) -> Self {
        RecentTimes {
            samples: VecDeque::with_capacity(capacity),
            capacity,
            recorded: 0,
            median: None,
        }
    }

    /// Takes a task's time.
    pub(crate) fn record(&mut self, took: Duration) {
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(took);
        self.recorded += 1;
        if self.recorded <= REFRESH_EVERY || self.recorded % REFRESH_EVERY == 0 {
            let mut sorted: Vec<Duration> = self.samples.iter().copied().collect();
            sorted.sort_unstable();
            self.median = sorted.get(sorted.len() / 2).copied();
        }
    }

    /// The median of the kept times (as of its last refresh); `None` before
    /// the first.
    pub(crate) fn median(&self) -> Option<Duration> {
        self.median
    }

    /// Times kept.
    pub(crate) fn len(&self) -> usize {
        self.samples.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_median_follows_the_first_times_then_every_sixteenth() {
        let mut times = RecentTimes::new(5);
        assert_eq!(times.median(), None);
        times.record(ms(30));
        assert_eq!(times.median(), Some(ms(30)));
        times.record(ms(10));
        times.record(ms(20));
        assert_eq!(times.median(), Some(ms(20)));
        // Only the latest five count.
        for _ in 0..13 {
            times.record(ms(1));
        }
        assert_eq!((times.len(), times.median()), (5, Some(ms(1))));
        // Past sixteen, a time moves the median only at the next refresh.
        for _ in 0..15 {
            times.record(ms(100));
        }
        assert_eq!(times.median(), Some(ms(1)));
        times.record(ms(100));
        assert_eq!(times.median(), Some(ms(100)));
    }
}
