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
    /// Room to find the median in, kept between refreshes (one allocation
    /// per job, not one per refresh).
    scratch: Vec<Duration>,
}

impl RecentTimes {
    /// Keeps the latest `capacity` times.
    pub(crate) fn new(capacity: usize) -> Self {
        RecentTimes {
            samples: VecDeque::with_capacity(capacity),
            capacity,
            recorded: 0,
            median: None,
            scratch: Vec::with_capacity(capacity),
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
            // The middle element as a sort would place it, found without
            // sorting the rest (linear, where a sort of the hub's 101
            // samples cost about a thousand instructions per task).
            self.scratch.clear();
            self.scratch.extend(self.samples.iter().copied());
            let middle = self.scratch.len() / 2;
            self.median =
                (!self.scratch.is_empty()).then(|| *self.scratch.select_nth_unstable(middle).1);
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

    /// The median is the element a sort puts in the middle, for odd and
    /// even counts, repeats and any order.
    #[test]
    fn the_median_is_the_sorted_middle() {
        for capacity in [1, 2, 3, 4, 7, 101] {
            let mut times = RecentTimes::new(capacity);
            // A fixed scramble with repeats.
            for i in 0..(3 * capacity as u64 + 5) {
                times.record(ms((i * 7919) % 13));
                let mut sorted: Vec<Duration> = times.samples.iter().copied().collect();
                sorted.sort_unstable();
                if times.recorded <= REFRESH_EVERY || times.recorded % REFRESH_EVERY == 0 {
                    assert_eq!(times.median(), sorted.get(sorted.len() / 2).copied());
                }
            }
        }
    }
}
