//! Placement by resources on plain state: every kind, fractions, the
//! reservation rule, engines joining and dying with resources held.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::hub::protocol::JobKind;
use crate::hub::server::state::{Engine, Job, State, Task};
use crate::resources::{ResourceOffer, ResourceRequest};

/// Adds engine `id` offering `cpus` cores, GPUs `gpus` (`0,1`), memory
/// `mem` and named `resources`.
fn engine(
    state: &mut State,
    id: EngineId,
    cpus: u32,
    gpus: Option<&str>,
    mem: Option<&str>,
    resources: &[&str],
) {
    let resources: Vec<String> = resources.iter().map(|r| r.to_string()).collect();
    let offer = ResourceOffer::parse(cpus, gpus, mem, &resources).expect("offer");
    let identity = format!("e{id}").into_bytes();
    state.add_engine(Engine::new(id, identity, cpus, Instant::now()).with_offer(offer));
}

/// A request from flag words.
fn request(
    cpus: Option<&str>,
    gpus: Option<&str>,
    mem: Option<&str>,
    resources: &[&str],
) -> Option<Arc<ResourceRequest>> {
    let resources: Vec<String> = resources.iter().map(|r| r.to_string()).collect();
    let r = ResourceRequest::parse(cpus, gpus, mem, &resources).expect("request");
    (!r.is_plain()).then(|| Arc::new(r))
}

/// Adds job `id` with tasks `1..=tasks` queued, each asking `request`.
fn job(state: &mut State, id: JobId, tasks: u64, request: Option<Arc<ResourceRequest>>) {
    let mut job = Job::new(
        format!("client{id}").into_bytes(),
        JobKind::Exec,
        String::new(),
    );
    job.request = request;
    for task in 1..=tasks {
        job.put(task, Task::new(task, vec![0u8; 8], 0));
        job.queue.push_back(task);
    }
    state.jobs.insert(id, job);
    state.take_turn(id);
}

/// Tasks given out by a plan: (engine, job, task) in order.
fn placed(plan: &[Assignment]) -> Vec<(EngineId, JobId, u64)> {
    plan.iter()
        .flat_map(|a| a.tasks.iter().map(move |&t| (a.engine, a.job, t)))
        .collect()
}

/// A task's result came back: its copy on `engine` ends.
fn finish(state: &mut State, engine: EngineId, job_id: JobId, task: u64) {
    if let Some(job) = state.jobs.get_mut(&job_id) {
        job.take(task);
    }
    assert!(state.release(engine, (job_id, task)));
}

/// The GPU ids each task copy on `engine` holds.
fn gpus_held(state: &State, engine: EngineId) -> Vec<Vec<String>> {
    let e = &state.engines[&engine];
    e.allocations
        .values()
        .map(|a| e.resources.gpu_ids(a))
        .collect()
}

/// No engine's grants exceed its offer: each core and whole GPU held once,
/// and the cores taken (by index or not) within its cores at depth 1.
fn assert_within_offers(state: &State) {
    for e in state.engines.values() {
        let mut cores = HashSet::new();
        let mut devices: HashMap<u32, u64> = HashMap::new();
        for a in e.allocations.values() {
            for &c in &a.cpus {
                assert!(cores.insert(c), "engine {} core {c} twice", e.id);
            }
            for &(d, share) in &a.gpus {
                *devices.entry(d).or_default() += share.0;
            }
        }
        assert!(devices
            .values()
            .all(|&s| s <= crate::resources::Amount::ONE.0));
        assert_eq!(
            e.allocations.len() as u32 + e.resources.loose(),
            e.running.len() as u32
        );
    }
}

#[test]
fn gpu_tasks_go_only_where_a_gpu_is_free_each_to_its_own() {
    let mut state = State::default();
    engine(&mut state, 1, 8, Some("0,1,2,3"), None, &[]);
    engine(&mut state, 2, 8, Some("0,1,2,3"), None, &[]);
    job(&mut state, 7, 20, request(None, Some("1"), None, &[]));
    let plan = dispatch(&mut state, Instant::now());
    assert_eq!(placed(&plan).len(), 8, "4 GPUs on each of 2 engines");
    for e in [1, 2] {
        let mut held: Vec<String> = gpus_held(&state, e).concat();
        held.sort();
        assert_eq!(held, ["0", "1", "2", "3"], "engine {e}: one GPU per task");
    }
    assert_within_offers(&state);
    assert!(dispatch(&mut state, Instant::now()).is_empty());
    // A task ends: its GPU goes to the next task, on that engine.
    let (engine_id, _, task) = placed(&plan)[0];
    let freed = {
        let e = &state.engines[&engine_id];
        e.resources.gpu_ids(&e.allocations[&(7, task)])
    };
    finish(&mut state, engine_id, 7, task);
    let next = dispatch(&mut state, Instant::now());
    assert_eq!(placed(&next), [(engine_id, 7, 9)]);
    let e = &state.engines[&engine_id];
    assert_eq!(e.resources.gpu_ids(&e.allocations[&(7, 9)]), freed);
    // An engine without GPUs never gets one of these tasks.
    engine(&mut state, 3, 64, None, None, &[]);
    assert!(dispatch(&mut state, Instant::now()).is_empty());
}

#[test]
fn half_gpus_put_two_tasks_on_each_device() {
    let mut state = State::default();
    engine(&mut state, 1, 8, Some("0,1"), None, &[]);
    job(&mut state, 7, 10, request(None, Some("0.5"), None, &[]));
    let plan = dispatch(&mut state, Instant::now());
    assert_eq!(placed(&plan).len(), 4);
    let mut per_device: HashMap<Vec<String>, usize> = HashMap::new();
    for ids in gpus_held(&state, 1) {
        *per_device.entry(ids).or_default() += 1;
    }
    assert_eq!(per_device.len(), 2);
    assert!(per_device.values().all(|&n| n == 2), "{per_device:?}");
    assert_within_offers(&state);
}

#[test]
fn cores_memory_and_named_resources_bound_what_runs() {
    let mut state = State::default();
    engine(
        &mut state,
        1,
        8,
        None,
        Some("10G"),
        &["licences=a,b", "scratch=5"],
    );
    job(&mut state, 1, 10, request(Some("3"), None, None, &[]));
    assert_eq!(
        placed(&dispatch(&mut state, Instant::now())).len(),
        2,
        "3+3 of 8 cores"
    );
    job(&mut state, 2, 10, request(None, None, Some("4G"), &[]));
    assert_eq!(
        placed(&dispatch(&mut state, Instant::now())).len(),
        2,
        "4G+4G of 10G"
    );
    assert_eq!(state.engines[&1].resources.free_cpus(), 0);
    let mut state = State::default();
    engine(&mut state, 1, 8, None, None, &["licences=a,b", "scratch=5"]);
    job(
        &mut state,
        1,
        10,
        request(None, None, None, &["licences=1"]),
    );
    job(&mut state, 2, 10, request(None, None, None, &["scratch=2"]));
    let plan = placed(&dispatch(&mut state, Instant::now()));
    assert_eq!(plan.iter().filter(|p| p.1 == 1).count(), 2, "two licences");
    assert_eq!(
        plan.iter().filter(|p| p.1 == 2).count(),
        2,
        "2+2 of 5 scratch"
    );
    // Memory an engine did not declare is memory it does not have.
    job(&mut state, 3, 1, request(None, None, Some("1"), &[]));
    assert!(placed(&dispatch(&mut state, Instant::now()))
        .iter()
        .all(|p| p.1 != 3));
    assert_within_offers(&state);
}

#[test]
fn a_cpu_job_and_a_gpu_job_share_an_engine_without_waiting_for_each_other() {
    let mut state = State::default();
    engine(&mut state, 1, 8, Some("0,1,2,3"), None, &[]);
    job(&mut state, 1, 100, None);
    job(&mut state, 2, 100, request(None, Some("1"), None, &[]));
    let plan = placed(&dispatch(&mut state, Instant::now()));
    let cpu = plan.iter().filter(|p| p.1 == 1).count();
    let gpu = plan.iter().filter(|p| p.1 == 2).count();
    assert_eq!(
        (cpu, gpu),
        (4, 4),
        "turns alternate; no prefetch while GPU tasks wait"
    );
    assert_within_offers(&state);
    // A GPU task ends: the next GPU task takes its core and GPU; a CPU
    // task ends: the next CPU task takes its core.
    finish(&mut state, 1, 2, 1);
    finish(&mut state, 1, 1, 1);
    let plan = placed(&dispatch(&mut state, Instant::now()));
    assert_eq!(plan.len(), 2);
    assert!(plan.iter().any(|p| p.1 == 1) && plan.iter().any(|p| p.1 == 2));
    assert_within_offers(&state);
}

#[test]
fn a_job_waiting_too_long_gets_an_engine_reserved_so_small_tasks_cannot_starve_it() {
    // A stream of one-core tasks keeps an 8-core engine full; a job asking
    // for all 8 cores finds them free only if the stream is held back.
    let run = |reserve_after: Duration| -> bool {
        let mut state = State {
            reserve_after,
            ..State::default()
        };
        engine(&mut state, 1, 8, None, None, &[]);
        job(&mut state, 1, 1_000, None);
        let now = Instant::now();
        let mut running: Vec<u64> = placed(&dispatch(&mut state, now))
            .into_iter()
            .map(|p| p.2)
            .collect();
        job(&mut state, 2, 1, request(Some("8"), None, None, &[]));
        for round in 0..40 {
            let now = now + Duration::from_secs(round);
            if !dispatch(&mut state, now).is_empty() && state.jobs[&2].running > 0 {
                return true;
            }
            // One small task ends per round; the stream refills.
            if let Some(task) = running.pop() {
                finish(&mut state, 1, 1, task);
                running.splice(
                    0..0,
                    placed(&dispatch(&mut state, now))
                        .into_iter()
                        .filter(|p| p.1 == 1)
                        .map(|p| p.2),
                );
            }
            if state.jobs[&2].running > 0 {
                return true;
            }
            assert_within_offers(&state);
        }
        false
    };
    assert!(
        !run(Duration::from_secs(3600)),
        "without a reservation it starves"
    );
    assert!(run(Duration::from_secs(5)), "with one it runs");
    // The reservation is gone once it placed its task.
    let mut state = State {
        reserve_after: Duration::ZERO,
        ..State::default()
    };
    engine(&mut state, 1, 2, None, None, &[]);
    job(&mut state, 1, 10, None);
    // (Prefetched: the engine holds more tasks than cores.)
    let small: Vec<u64> = placed(&dispatch(&mut state, Instant::now()))
        .into_iter()
        .map(|p| p.2)
        .collect();
    assert!(small.len() > 2);
    job(&mut state, 2, 1, request(Some("2"), None, None, &[]));
    assert!(dispatch(&mut state, Instant::now()).is_empty());
    assert_eq!(state.engines[&1].reserved_for, Some(2));
    let (last, ended) = small.split_last().expect("tasks");
    for &task in ended {
        finish(&mut state, 1, 1, task);
        assert!(
            dispatch(&mut state, Instant::now()).is_empty(),
            "held for job 2"
        );
    }
    finish(&mut state, 1, 1, *last);
    assert_eq!(placed(&dispatch(&mut state, Instant::now())), [(1, 2, 1)]);
    assert_eq!(state.engines[&1].reserved_for, None);
    assert!(state.reservations.is_empty());
}

#[test]
fn engines_joining_and_dying_keep_the_books_right() {
    let mut state = State::default();
    engine(&mut state, 1, 4, Some("0,1"), None, &[]);
    job(&mut state, 7, 6, request(None, Some("1"), None, &[]));
    let first = placed(&dispatch(&mut state, Instant::now()));
    assert_eq!(first.len(), 2);
    // Engine 1 dies holding two GPU tasks: they go back to the front of
    // the queue (as the engine reactions do) and its pool goes with it.
    let dead = state.remove_engine(1).expect("engine");
    assert_eq!(dead.allocations.len(), 2);
    let job = state.jobs.get_mut(&7).expect("job");
    for (_, _, task) in first.iter().rev() {
        job.set_engine(*task, None);
        job.queue.push_front(*task);
    }
    state.take_turn(7);
    assert!(dispatch(&mut state, Instant::now()).is_empty(), "no engine");
    // A new engine with 4 GPUs joins: the requeued tasks go first.
    engine(&mut state, 2, 8, Some("0,1,2,3"), None, &[]);
    let second = placed(&dispatch(&mut state, Instant::now()));
    assert_eq!(second.iter().map(|p| p.2).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_within_offers(&state);
    // A send that failed gives back what it took.
    let plan_back = Assignment {
        engine: 2,
        job: 7,
        tasks: vec![4],
        before: Before::Queued(vec![None]),
    };
    unsent(&mut state, &plan_back, true);
    assert_eq!(state.engines[&2].allocations.len(), 3);
    assert_eq!(
        state.engines[&2].resources.gpus_in_use(),
        crate::resources::Amount::whole(3)
    );
    assert_eq!(placed(&dispatch(&mut state, Instant::now())), [(2, 7, 4)]);
}

#[test]
fn a_stragglers_copy_goes_only_where_its_request_is_free() {
    let mut state = State::default();
    engine(&mut state, 1, 4, Some("0"), None, &[]);
    engine(&mut state, 2, 4, None, None, &[]);
    job(&mut state, 7, 1, request(None, Some("1"), None, &[]));
    let start = Instant::now();
    assert_eq!(placed(&dispatch(&mut state, start)), [(1, 7, 1)]);
    let j = state.jobs.get_mut(&7).expect("job");
    for _ in 0..SPECULATE_AFTER {
        j.record_duration(Duration::from_millis(10));
    }
    let late = start + STRAGGLER_FLOOR * 2;
    assert!(
        speculate(&mut state, late).is_empty(),
        "engine 2 has no GPU"
    );
    engine(&mut state, 3, 4, Some("0"), None, &[]);
    assert_eq!(placed(&speculate(&mut state, late)), [(3, 7, 1)]);
    assert_eq!(
        state.engines[&3].resources.gpus_in_use(),
        crate::resources::Amount::ONE
    );
    // The first copy wins: the loser's GPU comes back when it answers.
    finish(&mut state, 1, 7, 1);
    assert!(state.release(3, (7, 1)));
    assert_eq!(
        state.engines[&3].resources.gpus_in_use(),
        crate::resources::Amount::ZERO
    );
    assert_within_offers(&state);
}
