//! A job's task durations for the dashboard, folded from the hub's record a
//! little at a time. Reading a whole job on every look (each open page asks
//! every few seconds) would cost the hub a pass over the job's every task:
//! a million of them for a big map. A fold asks only for the tasks it has
//! not yet seen finish, so a look costs the tasks that finished since the
//! last one, and the tasks in flight.

use std::collections::BTreeSet;

use serde_json::{json, Value};
use zcluster::hub::client::{ClientError, HubClient};
use zcluster::hub::protocol::{JobId, TaskReport};

/// Task ids asked for in one call (status only: about 60 bytes each).
const IDS_PER_CALL: u64 = 1024;

/// The shortest duration told apart; shorter ones share the first bucket.
const SHORTEST_S: f64 = 1e-6;

/// Buckets per doubling of the duration: each is about 19% wide.
const BUCKETS_PER_OCTAVE: f64 = 4.0;

/// From 1 µs to about 12 days, and a first bucket for anything shorter.
const BUCKETS: usize = 1 + 40 * BUCKETS_PER_OCTAVE as usize;

/// A job's finished tasks' durations, on a log scale.
#[derive(Debug)]
pub struct DurationFold {
    /// Every id below this has been asked for once. Clients number their
    /// tasks (inputs, chunks) from 0 or 1 up, so new tasks are found by
    /// asking for the next ids; where that misses some (ids with gaps),
    /// the fold reads the whole job instead.
    next_id: u64,
    /// Seen, not finished then: asked for again at each refresh.
    unfinished: BTreeSet<u64>,
    /// Tasks seen, finished or not.
    seen: u64,
    /// The job's stored and finished task counts at the last refresh, as
    /// `zcluster status` gave them: they only grow, unless a resubmit or a
    /// purge took some back. (The fold's own counts cannot tell: the status
    /// the dashboard holds is up to a poll older than what the fold read.)
    last_counts: (u64, u64),
    counts: Vec<u64>,
}

impl Default for DurationFold {
    fn default() -> Self {
        DurationFold {
            next_id: 0,
            unfinished: BTreeSet::new(),
            seen: 0,
            last_counts: (0, 0),
            counts: vec![0; BUCKETS],
        }
    }
}

/// The bucket of a duration of `seconds`.
fn bucket(seconds: f64) -> usize {
    if seconds <= SHORTEST_S {
        return 0;
    }
    let index = ((seconds / SHORTEST_S).log2() * BUCKETS_PER_OCTAVE) as usize + 1;
    index.min(BUCKETS - 1)
}

/// The shortest duration of bucket `index`, seconds.
fn lower_bound(index: usize) -> f64 {
    if index == 0 {
        0.0
    } else {
        SHORTEST_S * ((index - 1) as f64 / BUCKETS_PER_OCTAVE).exp2()
    }
}

impl DurationFold {
    /// Brings the fold up to date with the hub's record of `job`, which
    /// holds `stored` tasks (`zcluster status`'s pending, running, done and
    /// failed together), `finished` of them finished. Those counts going
    /// down means tasks were run again (a resubmit) or purged: the fold
    /// starts over.
    pub fn refresh(
        &mut self,
        client: &mut HubClient,
        job: JobId,
        stored: u64,
        finished: u64,
    ) -> Result<(), ClientError> {
        if stored < self.last_counts.0 || finished < self.last_counts.1 {
            *self = DurationFold::default();
        }
        self.last_counts = (stored, finished);
        let again: Vec<u64> = self.unfinished.iter().copied().collect();
        for ids in again.chunks(IDS_PER_CALL as usize) {
            for report in client.results_of(job, ids.to_vec(), true)? {
                if report.finished() && self.unfinished.remove(&report.id) {
                    self.count(&report);
                }
            }
        }
        while self.seen < stored {
            let ids: Vec<u64> = (self.next_id..self.next_id + IDS_PER_CALL).collect();
            let reports = client.results_of(job, ids, true)?;
            let Some(top) = reports.iter().map(|r| r.id).max() else {
                break;
            };
            for report in &reports {
                self.see(report);
            }
            self.next_id = top + 1;
        }
        if self.seen < stored {
            // Ids with gaps (or not in order): read the whole job once.
            *self = DurationFold {
                last_counts: self.last_counts,
                ..DurationFold::default()
            };
            let mut top = None;
            client.each_result(job, true, |report| {
                top = top.max(Some(report.id));
                self.see(&report);
            })?;
            self.next_id = top.map_or(0, |id| id + 1);
        }
        Ok(())
    }

    fn see(&mut self, report: &TaskReport) {
        self.seen += 1;
        if report.finished() {
            self.count(report);
        } else {
            self.unfinished.insert(report.id);
        }
    }

    fn count(&mut self, report: &TaskReport) {
        let took = match (report.started, report.completed) {
            (Some(started), Some(completed)) => completed.duration_since(started).ok(),
            _ => None,
        };
        // A task that never started (cancelled, refused) took no time.
        if let Some(took) = took {
            self.counts[bucket(took.as_secs_f64())] += 1;
        }
    }

    /// The histogram for the page: the buckets from the first to the last
    /// that hold a task, each with its shortest duration.
    pub fn to_json(&self) -> Value {
        let first = self.counts.iter().position(|&n| n > 0);
        let last = self.counts.iter().rposition(|&n| n > 0);
        let (lower, counts): (Vec<f64>, Vec<u64>) = match (first, last) {
            (Some(first), Some(last)) => (first..=last)
                .map(|i| (lower_bound(i), self.counts[i]))
                .unzip(),
            _ => (Vec::new(), Vec::new()),
        };
        let upper = last.map_or(0.0, |last| lower_bound(last + 1));
        json!({ "lower_s": lower, "upper_s": upper, "counts": counts })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_a_quarter_octave_wide_and_bounded() {
        assert_eq!(bucket(0.0), 0);
        assert_eq!(bucket(1e-7), 0);
        for seconds in [1.5e-6, 0.001, 0.37, 1.0, 3.0, 3600.0] {
            let i = bucket(seconds);
            assert!(lower_bound(i) <= seconds, "{seconds}: {}", lower_bound(i));
            assert!(
                seconds < lower_bound(i + 1),
                "{seconds}: {}",
                lower_bound(i + 1)
            );
            assert!(lower_bound(i + 1) / lower_bound(i) < 1.2);
        }
        assert_eq!(bucket(1e12), BUCKETS - 1);
    }
}

/// Against a real hub (embedded, with a real engine and its sockets).
#[cfg(test)]
mod hub_tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Duration;

    use zcluster::hub::client::{JobHandle, JobOptions};
    use zcluster::hub::embedded::EmbeddedCluster;
    use zcluster::hub::engine::{HandlerFn, HANDLER_KEY};
    use zcluster::hub::protocol::JobKind;
    use zcluster::message::{ClusterRequest, ResultStatus};

    use super::*;

    /// Runs tasks with these ids through `job`, to the end, within its
    /// credit.
    fn run(client: &mut HubClient, job: &mut JobHandle, ids: impl Iterator<Item = u64>) {
        let mut ids = ids.peekable();
        while ids.peek().is_some() || job.outstanding() > 0 {
            while job.outstanding() < job.credit() {
                let Some(id) = ids.next() else { break };
                let request = ClusterRequest::encode(id, &id)
                    .unwrap()
                    .with_metadata(HANDLER_KEY, "nap");
                job.send(client, request).unwrap();
            }
            let result = job.next_result(client, Duration::from_secs(30)).unwrap();
            let result = result.expect("a result within 30 s");
            assert_eq!(result.status, ResultStatus::Ok, "{:?}", result.exception);
        }
    }

    #[test]
    fn a_fold_counts_each_finished_task_once_as_the_job_grows_even_with_gaps() {
        let nap: HandlerFn = Arc::new(|request: &ClusterRequest| {
            std::thread::sleep(Duration::from_millis(2));
            Ok(request.payload.clone())
        });
        let handlers = BTreeMap::from([("nap".to_string(), nap)]);
        let cluster = EmbeddedCluster::with(2, ":memory:", handlers).unwrap();
        let mut client = cluster.client().unwrap();
        let kind = JobKind::Handler("nap".into());
        let mut job =
            JobHandle::open(&mut client, kind, "fold".into(), JobOptions::default()).unwrap();
        let id = job.job();
        let total = |fold: &DurationFold| fold.counts.iter().sum::<u64>();

        let mut fold = DurationFold::default();
        run(&mut client, &mut job, 0..1500);
        fold.refresh(&mut client, id, 1500, 1500).unwrap();
        assert_eq!((fold.seen, total(&fold)), (1500, 1500));
        // The 2 ms tasks land in the buckets around 2 ms.
        let slowest = lower_bound(fold.counts.iter().rposition(|&n| n > 0).unwrap() + 1);
        assert!(slowest >= 0.002, "{slowest}");

        // More tasks: only they are asked for, and counted once.
        run(&mut client, &mut job, 1500..1600);
        fold.refresh(&mut client, id, 1600, 1600).unwrap();
        assert_eq!((fold.seen, total(&fold), fold.next_id), (1600, 1600, 1600));
        fold.refresh(&mut client, id, 1600, 1600).unwrap();
        assert_eq!(total(&fold), 1600, "a second look counted again");

        // Ids with a gap wider than a call's: the fold reads the whole job.
        run(&mut client, &mut job, 9000..9010);
        fold.refresh(&mut client, id, 1610, 1610).unwrap();
        assert_eq!((fold.seen, total(&fold), fold.next_id), (1610, 1610, 9010));
    }
}
