//! The scheduler's placement decision on a cluster of plain state, for the
//! micro benchmark (`cargo bench --bench placement`): how much a placed task
//! costs the hub when every engine offers GPUs and the jobs ask for them.
//! Nothing here is used by the hub itself.

use std::sync::Arc;
use std::time::Instant;

use super::scheduler::dispatch;
use super::state::{Engine, Job, State, Task};
use crate::hub::protocol::JobKind;
use crate::resources::{ResourceOffer, ResourceRequest};

/// A cluster with jobs queued, ready for the scheduler to place them.
pub struct PlacementCluster {
    state: State,
    /// Tasks placed, oldest first, as (engine, job, task).
    running: std::collections::VecDeque<(u64, u64, u64)>,
}

impl PlacementCluster {
    /// `engines` engines offering `cpus` cores and `gpus` GPUs each, and
    /// one job per request in `jobs` (each with `tasks` tasks; `None`: a
    /// job without a request, one core per task).
    pub fn new(
        engines: u64,
        cpus: u32,
        gpus: u32,
        jobs: &[Option<ResourceRequest>],
        tasks: u64,
    ) -> Self {
        let mut state = State::default();
        let ids: Vec<String> = (0..gpus).map(|g| g.to_string()).collect();
        for id in 1..=engines {
            let offer = ResourceOffer {
                cpus,
                gpus: ids.clone(),
                ..ResourceOffer::default()
            };
            let engine =
                Engine::new(id, id.to_be_bytes().to_vec(), cpus, Instant::now()).with_offer(offer);
            state.add_engine(engine);
        }
        for (job_id, request) in (1..).zip(jobs) {
            let mut job = Job::new(Vec::new(), JobKind::Exec, String::new());
            job.request = request.clone().map(Arc::new);
            let request: Arc<[u8]> = Arc::from(vec![0u8; 16]);
            for task in 1..=tasks {
                job.put(task, Task::new(task, Arc::clone(&request), 0));
                job.queue.push_back(task);
            }
            state.jobs.insert(job_id, job);
            state.take_turn(job_id);
        }
        PlacementCluster {
            state,
            running: std::collections::VecDeque::new(),
        }
    }

    /// Runs the scheduler until it places nothing more; the tasks placed.
    pub fn place_all(&mut self) -> usize {
        let now = Instant::now();
        let mut placed = 0;
        loop {
            let plan = dispatch(&mut self.state, now);
            if plan.is_empty() {
                return placed;
            }
            for a in &plan {
                placed += a.tasks.len();
                self.running
                    .extend(a.tasks.iter().map(|&t| (a.engine, a.job, t)));
            }
        }
    }

    /// The oldest task placed ends (its resources are freed, as its
    /// result would) and the scheduler runs once, as the hub's loop does
    /// after a result; the tasks placed.
    pub fn replace_one(&mut self) -> usize {
        if let Some((engine, job, task)) = self.running.pop_front() {
            if let Some(j) = self.state.jobs.get_mut(&job) {
                j.take(task);
            }
            self.state.release(engine, (job, task));
        }
        let plan = dispatch(&mut self.state, Instant::now());
        for a in &plan {
            self.running
                .extend(a.tasks.iter().map(|&t| (a.engine, a.job, t)));
        }
        plan.iter().map(|a| a.tasks.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_benchmark_cluster_fills_every_gpu_once() {
        let one_gpu = ResourceRequest::parse(None, Some("1"), None, &[]).expect("request");
        let mut cluster = PlacementCluster::new(10, 64, 8, &[Some(one_gpu)], 1_000);
        assert_eq!(cluster.place_all(), 80);
        assert_eq!(cluster.replace_one(), 1);
    }
}
