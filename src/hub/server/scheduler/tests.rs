//! Every placement rule on plain state: no socket, no store, no process.

use std::time::{Duration, Instant};

use super::*;
use crate::hub::protocol::{HaltAt, JobKind};
use crate::hub::server::state::{Engine, Job, State, Task};

/// Adds engine `id` with `slots` slots (identity `e{id}`).
fn engine(state: &mut State, id: EngineId, slots: u32) {
    let identity = format!("e{id}").into_bytes();
    state.add_engine(Engine::new(id, identity, slots, Instant::now()));
}

/// Adds job `id` with tasks `1..=tasks` queued, whose tasks took `took`
/// each so far (`samples` of them).
fn job(state: &mut State, id: JobId, tasks: u64, took: Option<Duration>) -> &mut Job {
    let mut job = Job::new(
        format!("client{id}").into_bytes(),
        JobKind::Exec,
        String::new(),
    );
    for task in 1..=tasks {
        job.put(task, Task::new(task, vec![0u8; 8], 0));
        job.queue.push_back(task);
    }
    if let Some(took) = took {
        for _ in 0..SPECULATE_AFTER {
            job.record_duration(took);
        }
    }
    state.jobs.insert(id, job);
    state.take_turn(id);
    state.jobs.get_mut(&id).expect("just added")
}

/// Tasks given out by a plan: (engine, job, task) in order.
fn placed(plan: &[Assignment]) -> Vec<(EngineId, JobId, u64)> {
    plan.iter()
        .flat_map(|a| a.tasks.iter().map(move |&t| (a.engine, a.job, t)))
        .collect()
}

/// What engine `id` holds now.
fn held(state: &State, id: EngineId) -> usize {
    state.engines[&id].running.len()
}

/// A task's result came back: its slot is free, it is done.
fn finish(state: &mut State, job_id: JobId, task: u64) {
    let job = state.jobs.get_mut(&job_id).expect("job");
    let engine = job.take(task).and_then(|t| t.engine).expect("running");
    state.release(engine, (job_id, task));
}

#[test]
fn tasks_go_to_free_slots_only() {
    let mut state = State::default();
    engine(&mut state, 1, 2);
    // The tail of a job (no more tasks than slots): no prefetch.
    job(&mut state, 7, 2, None);
    let plan = dispatch(&mut state, Instant::now());
    assert_eq!(placed(&plan), [(1, 7, 1), (1, 7, 2)]);
    // Both slots taken: a third task waits.
    let j = state.jobs.get_mut(&7).expect("job");
    j.put(3, Task::new(3, vec![0u8; 8], 0));
    j.queue.push_back(3);
    state.take_turn(7);
    assert!(dispatch(&mut state, Instant::now()).is_empty());
    // A result frees a slot.
    finish(&mut state, 7, 1);
    assert_eq!(placed(&dispatch(&mut state, Instant::now())), [(1, 7, 3)]);
    // Dispatched tasks are marked started, once each.
    let task = &state.jobs[&7].tasks[&3];
    assert_eq!((task.engine, task.attempts), (Some(1), 1));
    assert!(task.started.is_some());
}

#[test]
fn a_leaving_or_unreachable_engine_gets_nothing() {
    let mut state = State::default();
    engine(&mut state, 1, 4);
    engine(&mut state, 2, 4);
    engine(&mut state, 3, 1);
    state.engines.get_mut(&1).expect("engine").leaving = true;
    state.engines.get_mut(&2).expect("engine").unreachable = true;
    job(&mut state, 7, 3, None);
    let plan = dispatch(&mut state, Instant::now());
    assert_eq!(placed(&plan), [(3, 7, 1)]);
    assert_eq!(state.jobs[&7].queue, [2, 3]);
}

#[test]
fn the_engine_with_the_most_room_gets_each_task() {
    let mut state = State::default();
    engine(&mut state, 1, 1);
    engine(&mut state, 2, 3);
    job(&mut state, 7, 4, None);
    let plan = dispatch(&mut state, Instant::now());
    // 2 has three free slots, then two, then ties with 1...
    assert_eq!(placed(&plan).len(), 4);
    assert_eq!((held(&state, 1), held(&state, 2)), (1, 3));
}

#[test]
fn engines_prefetch_more_the_shorter_the_tasks_but_not_at_the_tail() {
    // (median task time, tasks one slot may hold while the backlog lasts)
    let cases = [
        (None, 2),
        (Some(Duration::from_secs(1)), 2),
        (Some(Duration::from_millis(5)), 4),
        (Some(Duration::from_micros(500)), 16),
        (Some(Duration::from_micros(50)), 64),
    ];
    for (median, depth) in cases {
        let mut state = State::default();
        engine(&mut state, 1, 1);
        job(&mut state, 7, 1000, median);
        let plan = dispatch(&mut state, Instant::now());
        assert_eq!(held(&state, 1), depth, "median {median:?}");
        // Short tasks go several to a message, long ones one by one.
        let batched = median.is_some_and(|m| m < DISPATCH_BATCH_BELOW);
        let biggest = plan.iter().map(|a| a.tasks.len()).max().unwrap_or(0);
        assert_eq!(biggest > 1, batched, "median {median:?}");
        assert!(biggest <= DISPATCH_BATCH);
    }
    // The tail: no more queued than slots, so one per slot for tasks of a
    // round trip or more (a task queued behind another would wait while
    // another engine idles); shorter ones, see the next test.
    let mut state = State::default();
    engine(&mut state, 1, 2);
    engine(&mut state, 2, 2);
    job(&mut state, 7, 4, Some(SHORT_BATCH_WORK));
    dispatch(&mut state, Instant::now());
    assert_eq!((held(&state, 1), held(&state, 2)), (2, 2));
}

/// With a backlog no longer than the slots (a thousand idle one-slot
/// engines, the client's tasks arriving a few hundred at a time), tasks
/// far shorter than a round trip go several to a message, as many as take
/// together no more than `SHORT_BATCH_WORK`, to a few engines, rather than
/// one to each of as many engines; tasks of a round trip or more, and a
/// job's first tasks (no median yet), still go one to each free slot.
#[test]
fn tiny_tasks_go_several_to_a_message_even_when_the_backlog_is_short() {
    // (median task time, tasks per message)
    let cases = [
        (Some(Duration::from_micros(2)), DISPATCH_BATCH),
        (Some(Duration::from_micros(50)), 5),
        (Some(Duration::from_micros(100)), 2),
        (Some(SHORT_BATCH_WORK), 1),
        (Some(Duration::from_secs(1)), 1),
        (None, 1),
    ];
    for (median, per_message) in cases {
        let mut state = State::default();
        for id in 1..=100 {
            engine(&mut state, id, 1);
        }
        job(&mut state, 7, 40, median);
        let plan = dispatch(&mut state, Instant::now());
        let sizes: Vec<usize> = plan.iter().map(|a| a.tasks.len()).collect();
        let mut expected = vec![per_message; 40 / per_message];
        if 40 % per_message > 0 {
            expected.push(40 % per_message);
        }
        assert_eq!(sizes, expected, "median {median:?}");
        // Each message to an engine of its own, which was idle.
        let mut engines: Vec<EngineId> = plan.iter().map(|a| a.engine).collect();
        engines.sort_unstable();
        engines.dedup();
        assert_eq!(engines.len(), plan.len(), "median {median:?}");
        // Where one went per message, every task has a slot of its own:
        // nothing waits at an engine while another is idle.
        if per_message == 1 {
            assert!((1..=100).all(|id| held(&state, id) <= 1));
        }
    }
    // A job that may halt keeps its tasks at the hub, tiny or not.
    let mut state = State::default();
    for id in 1..=100 {
        engine(&mut state, id, 1);
    }
    job(&mut state, 7, 40, Some(Duration::from_micros(2))).halt = Some(HaltAt::FIRST_FAILURE);
    let plan = dispatch(&mut state, Instant::now());
    assert!(plan.iter().all(|a| a.tasks.len() == 1));
}

#[test]
fn jobs_take_turns_two_and_three() {
    for jobs in [2u64, 3] {
        let mut state = State::default();
        // One task per message (no median yet), two per slot (backlog).
        engine(&mut state, 1, 3);
        for id in 1..=jobs {
            job(&mut state, id, 100, None);
        }
        let plan = dispatch(&mut state, Instant::now());
        let order: Vec<JobId> = plan.iter().map(|a| a.job).collect();
        assert_eq!(order.len(), 6);
        // Round robin: each job once before any job again.
        for (i, window) in order.chunks(jobs as usize).enumerate() {
            let mut seen = window.to_vec();
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), window.len(), "turn {i} of {order:?}");
        }
        for id in 1..=jobs {
            let count = order.iter().filter(|&&j| j == id).count();
            assert_eq!(count, 6 / jobs as usize, "job {id} in {order:?}");
        }
    }
}

#[test]
fn a_retry_goes_to_an_engine_it_has_not_failed_on() {
    let mut state = State::default();
    engine(&mut state, 1, 4);
    engine(&mut state, 2, 1);
    let j = job(&mut state, 7, 1, None);
    j.tasks.get_mut(&1).expect("task").failed_on.push(1);
    // Engine 1 has more room, but the task failed there.
    assert_eq!(placed(&dispatch(&mut state, Instant::now())), [(2, 7, 1)]);

    // Engine 2 busy: the retry waits for it, and the tasks behind it go
    // to engine 1 meanwhile.
    let mut state = State::default();
    engine(&mut state, 1, 4);
    engine(&mut state, 2, 1);
    state
        .engines
        .get_mut(&2)
        .expect("engine")
        .hold((9, 9), None);
    let j = job(&mut state, 7, 3, None);
    j.tasks.get_mut(&1).expect("task").failed_on.push(1);
    // (The turn that finds no engine for the retry moves it back; the
    // next turn takes the others.)
    let plan: Vec<_> = (0..3)
        .flat_map(|_| placed(&dispatch(&mut state, Instant::now())))
        .collect();
    assert!(plan
        .iter()
        .all(|&(engine, _, task)| engine == 1 && task != 1));
    assert_eq!(plan.len(), 2);
    assert_eq!(state.jobs[&7].queue, [1]);

    // Every engine failed it: it may go back to one.
    let mut state = State::default();
    engine(&mut state, 1, 1);
    engine(&mut state, 2, 1);
    let j = job(&mut state, 7, 1, None);
    j.tasks.get_mut(&1).expect("task").failed_on.extend([1, 2]);
    assert_eq!(placed(&dispatch(&mut state, Instant::now())).len(), 1);
}

#[test]
fn a_job_with_a_cap_runs_no_more_than_it_across_the_cluster() {
    let mut state = State::default();
    engine(&mut state, 1, 2);
    engine(&mut state, 2, 2);
    // Short tasks, which would otherwise go 32 to a message.
    job(&mut state, 7, 100, Some(Duration::from_micros(50))).cap = Some(3);
    job(&mut state, 8, 100, None);
    let plan = placed(&dispatch(&mut state, Instant::now()));
    let capped: Vec<_> = plan.iter().filter(|p| p.1 == 7).collect();
    assert_eq!(capped.len(), 3, "{plan:?}");
    // The uncapped job takes what the capped one leaves.
    assert!(plan.iter().filter(|p| p.1 == 8).count() >= 1);
    assert_eq!(state.jobs[&7].running, 3);
    // Nothing more of it while three run...
    finish(&mut state, 8, 1);
    assert!(placed(&dispatch(&mut state, Instant::now()))
        .iter()
        .all(|p| p.1 != 7));
    // ...and one more when one ends.
    let (_, _, task) = *capped[0];
    finish(&mut state, 7, task);
    assert_eq!(state.jobs[&7].running, 2);
    let next = placed(&dispatch(&mut state, Instant::now()));
    assert_eq!(next.iter().filter(|p| p.1 == 7).count(), 1, "{next:?}");
    assert_eq!(state.jobs[&7].running, 3);
}

#[test]
fn a_failed_send_gives_the_tasks_back_in_their_order() {
    let mut state = State::default();
    engine(&mut state, 1, 1);
    engine(&mut state, 2, 1);
    job(&mut state, 7, 5, None);
    let before = Instant::now() - Duration::from_secs(60);
    state
        .jobs
        .get_mut(&7)
        .expect("job")
        .tasks
        .get_mut(&2)
        .expect("task")
        .started = Some(before);
    let plan = dispatch(&mut state, Instant::now());
    // Two, then one more each while the backlog outnumbers the slots.
    assert_eq!(placed(&plan).len(), 3);
    for assignment in plan.iter().rev() {
        unsent(&mut state, assignment, true);
    }
    let job = &state.jobs[&7];
    assert_eq!(job.queue, [1, 2, 3, 4, 5]);
    assert_eq!(job.running, 0);
    assert!(job
        .tasks
        .values()
        .all(|t| t.engine.is_none() && t.attempts == 0));
    assert_eq!(job.tasks[&2].started, Some(before));
    assert_eq!((held(&state, 1), held(&state, 2)), (0, 0));
    assert!(state.turns.contains(&7));
}

/// A job of `tasks` tasks all running on engine 1 since `since`, done
/// with the queue, with five earlier tasks of `took` each.
fn running_job(state: &mut State, tasks: u64, took: Duration, since: Instant) {
    let plan = {
        job(state, 7, tasks, Some(took));
        dispatch(state, since)
    };
    assert_eq!(placed(&plan).len() as u64, tasks);
    assert!(state.jobs[&7].queue.is_empty());
}

#[test]
fn a_straggler_gets_one_second_copy_on_another_engine() {
    let start = Instant::now();
    let mut state = State::default();
    engine(&mut state, 1, 1);
    engine(&mut state, 2, 1);
    state.engines.get_mut(&2).expect("engine").leaving = true;
    running_job(&mut state, 1, Duration::from_millis(10), start);
    state.engines.get_mut(&2).expect("engine").leaving = false;
    // Under the floor (2 s, above four medians of 10 ms): no copy yet.
    assert!(speculate(&mut state, start + Duration::from_secs(1)).is_empty());
    // Past it: a copy on the other engine, never the same one.
    let later = start + STRAGGLER_FLOOR + Duration::from_secs(1);
    let copies = speculate(&mut state, later);
    assert_eq!(placed(&copies), [(2, 7, 1)]);
    assert_eq!(copies[0].before, Before::Copy);
    let task = &state.jobs[&7].tasks[&1];
    assert_eq!(task.spare_engine(), Some(2));
    assert_eq!(task.engine, Some(1));
    // One copy per task.
    engine(&mut state, 3, 1);
    assert!(speculate(&mut state, later + STRAGGLER_FLOOR).is_empty());
}

#[test]
fn no_copy_while_tasks_wait_or_before_the_job_has_a_median() {
    let start = Instant::now();
    let later = start + STRAGGLER_FLOOR * 10;
    // Tasks queued: a free slot is theirs, not a copy's.
    let mut state = State::default();
    engine(&mut state, 1, 1);
    job(&mut state, 7, 3, Some(Duration::from_millis(10)));
    dispatch(&mut state, start);
    engine(&mut state, 2, 1);
    assert!(!state.jobs[&7].queue.is_empty());
    // (Engine 2 would take a queued task, not a copy.)
    assert!(speculate(&mut state, later).is_empty());
    // Fewer than SPECULATE_AFTER results: no median to judge by.
    let mut state = State::default();
    engine(&mut state, 1, 1);
    job(&mut state, 7, 1, None);
    dispatch(&mut state, start);
    engine(&mut state, 2, 1);
    assert!(speculate(&mut state, later).is_empty());
}

#[test]
fn an_unsent_copy_is_simply_not_started() {
    let start = Instant::now();
    let mut state = State::default();
    engine(&mut state, 1, 1);
    running_job(&mut state, 1, Duration::from_millis(10), start);
    engine(&mut state, 2, 1);
    let copies = speculate(&mut state, start + STRAGGLER_FLOOR * 2);
    assert_eq!(copies.len(), 1);
    unsent(&mut state, &copies[0], false);
    let task = &state.jobs[&7].tasks[&1];
    assert!(task.spare.is_none() && !task.speculated);
    assert_eq!(task.engine, Some(1));
    assert_eq!(held(&state, 2), 0);
    // It may be tried again.
    assert_eq!(speculate(&mut state, start + STRAGGLER_FLOOR * 3).len(), 1);
}

#[test]
fn a_job_that_may_halt_is_never_prefetched_and_a_halted_one_gets_nothing() {
    let mut state = State::default();
    engine(&mut state, 1, 2);
    // Microsecond tasks, which would otherwise go 64 to a slot.
    job(&mut state, 7, 1000, Some(Duration::from_micros(50))).halt = Some(HaltAt::FIRST_FAILURE);
    dispatch(&mut state, Instant::now());
    assert_eq!(held(&state, 1), 2, "one task per slot, none queued behind");
    // Halted: a free slot takes nothing more of it.
    let running: Vec<u64> = state.engines[&1].running.iter().map(|&(_, t)| t).collect();
    finish(&mut state, 7, running[0]);
    state.jobs.get_mut(&7).expect("job").halted = true;
    assert!(dispatch(&mut state, Instant::now()).is_empty());
    assert_eq!(held(&state, 1), 1);
}

/// With many one-slot engines all busy, a task looks only at those with a
/// free slot (`State::open`), not at every engine: the full ones are
/// dropped as they are found, and one freed by a result is found again.
#[test]
fn a_task_looks_only_at_engines_with_room() {
    let mut state = State::default();
    for id in 1..=100 {
        engine(&mut state, id, 1);
    }
    // No more tasks than slots: no prefetch, one task per engine.
    job(&mut state, 7, 100, None);
    let plan = dispatch(&mut state, Instant::now());
    assert_eq!(plan.iter().map(|a| a.tasks.len()).sum::<usize>(), 100);
    // Task 101 waits; the scheduler has seen that every engine is full.
    let j = state.jobs.get_mut(&7).expect("job");
    j.put(101, Task::new(101, vec![0u8; 8], 0));
    j.queue.push_back(101);
    state.take_turn(7);
    assert!(dispatch(&mut state, Instant::now()).is_empty());
    assert!(state.open.is_empty(), "{:?}", state.open);
    // A result frees the slot of task 42's engine: it, and only it, is
    // looked at (and stays listed until a search finds it full again).
    let on = state.jobs[&7].tasks[&42].engine.expect("running");
    finish(&mut state, 7, 42);
    assert_eq!(
        placed(&dispatch(&mut state, Instant::now())),
        [(on, 7, 101)]
    );
    assert!(state.open.iter().all(|&id| id == on), "{:?}", state.open);
}

/// Among the open engines the one with the most room still wins, wherever
/// it comes in their order.
#[test]
fn the_open_engine_with_the_most_room_wins() {
    let mut state = State::default();
    engine(&mut state, 1, 1);
    engine(&mut state, 2, 4);
    engine(&mut state, 3, 2);
    // One task: no backlog, no prefetch.
    job(&mut state, 7, 1, None);
    assert_eq!(placed(&dispatch(&mut state, Instant::now())), [(2, 7, 1)]);
}

/// With prefetch, an engine with a free slot takes the next task before one
/// with more room to queue but none free: an idle slot is filled first.
#[test]
fn with_prefetch_an_idle_slot_goes_before_a_longer_queue() {
    let mut state = State::default();
    engine(&mut state, 1, 4);
    let short = Some(Duration::from_micros(50));
    job(&mut state, 7, 100, short);
    dispatch(&mut state, Instant::now());
    // Engine 1's four slots run, and it queues the rest but the tail.
    assert_eq!(held(&state, 1), 96);
    // A one-slot engine joins and a backlog comes: engine 1 has room for
    // 4 * 64 - 96 = 160 more, engine 2 for 64, but engine 2 idles.
    engine(&mut state, 2, 1);
    let j = state.jobs.get_mut(&7).expect("job");
    for task in 101..=200 {
        j.put(task, Task::new(task, vec![0u8; 8], 0));
        j.queue.push_back(task);
    }
    let plan = dispatch(&mut state, Instant::now());
    assert_eq!(plan.first().map(|a| a.engine), Some(2));
}

/// With every engine busy and a backlog, a prefetched task goes to the
/// engine with the most room to queue, found from the ranking
/// (`State::deep`) rather than a look at every engine; each engine queues
/// up to its depth, no more; and the ranking stays within a few entries
/// per engine however many results come back.
#[test]
fn with_every_slot_busy_prefetch_goes_to_the_most_room_and_stops_at_the_depth() {
    let mut state = State::default();
    for id in 1..=4 {
        engine(&mut state, id, 1);
    }
    let short = Some(Duration::from_micros(50));
    job(&mut state, 7, 2000, short);
    dispatch(&mut state, Instant::now());
    for id in 1..=4 {
        assert_eq!(held(&state, id), DEEPEST_PREFETCH as usize, "engine {id}");
    }
    assert!(dispatch(&mut state, Instant::now()).is_empty());
    // Engine 3 returns ten results: it has the most room, and takes the
    // next ten tasks, and only it.
    let on_3: Vec<u64> = state.jobs[&7]
        .tasks
        .iter()
        .filter(|(_, t)| t.engine == Some(3))
        .map(|(&id, _)| id)
        .take(10)
        .collect();
    for task in on_3 {
        finish(&mut state, 7, task);
    }
    let plan = dispatch(&mut state, Instant::now());
    assert!(plan.iter().all(|a| a.engine == 3), "{plan:?}");
    assert_eq!(placed(&plan).len(), 10);
    // Results and refills, many times over the engines: the ranking is
    // rebuilt before it outgrows them.
    for round in 0..500 {
        let id = 1 + round % 4;
        let task = state.jobs[&7]
            .tasks
            .iter()
            .find(|(_, t)| t.engine == Some(id))
            .map(|(&task, _)| task)
            .expect("a task on it");
        finish(&mut state, 7, task);
        dispatch(&mut state, Instant::now());
        assert!(state.deep.len() <= 2 * 4 + 64, "{}", state.deep.len());
    }
}

/// A task an engine died holding (a suspect: it may be a poison input)
/// goes in a message of its own, and nothing is queued on its engine
/// behind it while it is there: were it poison, tasks queued
/// behind it would die with it again, and an innocent one that did so
/// `poison_limit` times would be failed as poison. Tiny tasks, which
/// otherwise go many to a message and a slot.
#[test]
fn nothing_waits_behind_a_task_an_engine_died_holding() {
    let mut state = State::default();
    for id in 1..=3 {
        engine(&mut state, id, 1);
    }
    let job = job(&mut state, 7, 1000, Some(Duration::from_micros(2)));
    let suspect = job.tasks.get_mut(&1).expect("task");
    suspect.lost = 1;
    suspect.failed_on.push(9);
    let plan = dispatch(&mut state, Instant::now());
    let alone = plan
        .iter()
        .find(|a| a.tasks.contains(&1))
        .expect("the suspect is placed");
    assert_eq!(alone.tasks, [1], "the suspect goes alone");
    let its_engine = alone.engine;
    assert_eq!(held(&state, its_engine), 1, "nothing queued behind it");
    // The other engines take the rest, prefetched as usual.
    for id in (1..=3).filter(|&id| id != its_engine) {
        assert_eq!(held(&state, id), DEEPEST_PREFETCH as usize);
    }
    // Once it has finished, its engine takes tasks again.
    finish(&mut state, 7, 1);
    dispatch(&mut state, Instant::now());
    assert_eq!(held(&state, its_engine), DEEPEST_PREFETCH as usize);
}
