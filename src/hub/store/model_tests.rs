//! The model check: the memory store and the SQLite store, given the same
//! random calls, answer and hold the same, which keeps the SQL honest.

use std::fmt;

use proptest::prelude::*;

use super::tests::{at, finished};
use super::*;

// --- model check: both stores agree ------------------------------------

#[derive(Debug, Clone)]
enum Action {
    AddJob {
        with_total: bool,
    },
    SetTotal {
        job: usize,
        total: u8,
    },
    AddTasks {
        job: usize,
        count: u8,
    },
    Start {
        task: usize,
        engine: u8,
        attempts: u8,
    },
    Requeue {
        task: usize,
    },
    Finish {
        task: usize,
        ok: bool,
        engine: u8,
    },
    PurgeJob {
        job: usize,
    },
    PurgeEngine {
        engine: u8,
    },
    PurgeCompleted,
    Resubmit {
        job: usize,
        ids: Option<Vec<usize>>,
    },
    NewEngine,
    Flush,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        2 => any::<bool>().prop_map(|with_total| Action::AddJob { with_total }),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(job, total)| Action::SetTotal { job, total }),
        3 => (any::<usize>(), 0..5u8).prop_map(|(job, count)| Action::AddTasks { job, count }),
        4 => (any::<usize>(), 1..4u8, 1..3u8).prop_map(|(task, engine, attempts)| Action::Start { task, engine, attempts }),
        1 => any::<usize>().prop_map(|task| Action::Requeue { task }),
        4 => (any::<usize>(), any::<bool>(), 1..4u8).prop_map(|(task, ok, engine)| Action::Finish { task, ok, engine }),
        1 => any::<usize>().prop_map(|job| Action::PurgeJob { job }),
        1 => (1..4u8).prop_map(|engine| Action::PurgeEngine { engine }),
        1 => Just(Action::PurgeCompleted),
        1 => (any::<usize>(), proptest::option::of(proptest::collection::vec(any::<usize>(), 0..3)))
            .prop_map(|(job, ids)| Action::Resubmit { job, ids }),
        1 => Just(Action::NewEngine),
        1 => Just(Action::Flush),
    ]
}

/// A comparable outcome: the Ok value's Debug text or the error's message.
fn outcome<T: fmt::Debug>(result: Result<T, StoreError>) -> Result<String, String> {
    result.map(|v| format!("{v:?}")).map_err(|e| e.to_string())
}

fn pick<T: Copy>(items: &[T], i: usize) -> Option<T> {
    (!items.is_empty()).then(|| items[i % items.len()])
}

fn step(
    store: &mut dyn Store,
    action: &Action,
    jobs: &[JobId],
    tasks: &[TaskId],
    clock: u64,
) -> Result<String, String> {
    match action.clone() {
        Action::AddJob { with_total } => {
            let id = store.next_job_id().map_err(|e| e.to_string())?;
            outcome(
                store
                    .add_job(&JobRecord {
                        id,
                        submitted: at(clock),
                        client: format!("client{}", id % 3),
                        spec: vec![id as u8; 3],
                        total: with_total.then_some(id % 4),
                    })
                    .map(|()| id),
            )
        }
        Action::SetTotal { job, total } => match pick(jobs, job) {
            Some(job) => outcome(store.set_job_total(job, total.into())),
            None => Ok("no job".into()),
        },
        Action::AddTasks { job, count } => match pick(jobs, job) {
            Some(job) => {
                let ids = store
                    .next_task_ids(count.into())
                    .map_err(|e| e.to_string())?;
                let new = ids
                    .clone()
                    .map(|id| NewTask {
                        id,
                        job,
                        seq: id % 7,
                        request: id.to_le_bytes().to_vec(),
                        submitted: at(clock),
                    })
                    .collect();
                outcome(store.add_tasks(new).map(|()| ids))
            }
            None => Ok("no job".into()),
        },
        Action::Start {
            task,
            engine,
            attempts,
        } => match pick(tasks, task) {
            Some(task) => {
                outcome(store.task_started(task, engine.into(), at(clock), attempts.into()))
            }
            None => Ok("no task".into()),
        },
        Action::Requeue { task } => match pick(tasks, task) {
            Some(task) => outcome(store.task_requeued(task)),
            None => Ok("no task".into()),
        },
        Action::Finish { task, ok, engine } => match pick(tasks, task) {
            Some(task) => {
                let status = if ok { TaskState::Ok } else { TaskState::Failed };
                let mut f = finished(status, engine.into(), &format!("r{task}@{clock}"));
                f.completed = at(clock);
                outcome(store.task_finished(task, f))
            }
            None => Ok("no task".into()),
        },
        Action::PurgeJob { job } => match pick(jobs, job) {
            Some(job) => outcome(store.purge_job(job)),
            None => Ok("no job".into()),
        },
        Action::PurgeEngine { engine } => outcome(store.purge_engine(engine.into())),
        Action::PurgeCompleted => outcome(store.purge_completed()),
        Action::Resubmit { job, ids } => match pick(jobs, job) {
            Some(job) => {
                let ids: Option<Vec<TaskId>> =
                    ids.map(|ids| ids.iter().filter_map(|&i| pick(tasks, i)).collect());
                outcome(store.reset_for_resubmit(job, ids.as_deref()))
            }
            None => Ok("no job".into()),
        },
        Action::NewEngine => outcome(store.next_engine_id()),
        Action::Flush => outcome(store.flush()),
    }
}

fn views(store: &mut dyn Store, jobs: &[JobId], tasks: &[TaskId]) -> String {
    let mut out = format!("{:?}\n", store.jobs().unwrap());
    for &job in jobs {
        out += &format!("{:?}\n", store.tasks(&TaskFilter::Job(job), false).unwrap());
    }
    out += &format!(
        "{:?}\n{:?}\n{:?}",
        store.tasks(&TaskFilter::Ids(tasks.to_vec()), true).unwrap(),
        store.engine_counts().unwrap(),
        store.unfinished().unwrap()
    );
    out
}

/// Whether `store`'s job counts are those of its tasks: each job's tasks
/// counted by state, from the tasks themselves. The stores keep the counts
/// as tasks move rather than count at each status, so this is what keeps
/// them honest.
fn counts_of_tasks(store: &mut dyn Store, jobs: &[JobId]) -> Result<(), String> {
    let summaries = store.jobs().map_err(|e| e.to_string())?;
    let mut expected = Vec::new();
    for &job in jobs {
        let Some(record) = store.job(job).map_err(|e| e.to_string())? else {
            continue;
        };
        let mut summary = JobSummary {
            id: job,
            submitted: record.submitted,
            client: record.client,
            total: record.total,
            pending: 0,
            running: 0,
            ok: 0,
            failed: 0,
        };
        for task in store
            .tasks(&TaskFilter::Job(job), false)
            .map_err(|e| e.to_string())?
        {
            *match task.state {
                TaskState::Pending => &mut summary.pending,
                TaskState::Running => &mut summary.running,
                TaskState::Ok => &mut summary.ok,
                TaskState::Failed => &mut summary.failed,
            } += 1;
        }
        expected.push(summary);
    }
    if summaries == expected {
        Ok(())
    } else {
        Err(format!("kept {summaries:?}\ncounted {expected:?}"))
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn memory_and_sqlite_agree(actions in proptest::collection::vec(action(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let mut memory = MemoryStore::new();
        let mut sqlite = SqliteStore::open(dir.path().join("model.db")).unwrap();
        let (mut jobs, mut tasks) = (Vec::new(), Vec::new());
        for (clock, action) in actions.iter().enumerate() {
            let clock = clock as u64;
            let expected = step(&mut memory, action, &jobs, &tasks, clock);
            let got = step(&mut sqlite, action, &jobs, &tasks, clock);
            prop_assert_eq!(&expected, &got, "after {:?}", action);
            match (action, &expected) {
                (Action::AddJob { .. }, Ok(id)) => jobs.push(id.parse().unwrap()),
                (Action::AddTasks { .. }, Ok(range)) if range.contains("..") => {
                    let (a, b) = range.split_once("..").unwrap();
                    tasks.extend(a.parse::<u64>().unwrap()..b.parse::<u64>().unwrap());
                }
                _ => {}
            }
            for (name, store) in [("memory", &mut memory as &mut dyn Store), ("sqlite", &mut sqlite)] {
                if let Err(wrong) = counts_of_tasks(store, &jobs) {
                    prop_assert!(false, "{} store after {:?}:\n{}", name, action, wrong);
                }
            }
            // The counts moved as writes were queued are those the file
            // holds once they are committed.
            let live = sqlite.jobs().unwrap();
            prop_assert_eq!(live, sqlite.recounted().unwrap(), "after {:?}", action);
            if clock % 8 == 0 || clock + 1 == actions.len() as u64 {
                prop_assert_eq!(
                    views(&mut memory, &jobs, &tasks),
                    views(&mut sqlite, &jobs, &tasks),
                    "after {:?}", action
                );
            }
        }
    }
}
