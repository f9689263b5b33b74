//! The behaviour both stores share, each test run on a memory store and on
//! a fresh SQLite file.

use super::*;
use std::time::{Duration, UNIX_EPOCH};

pub(super) fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs) + Duration::from_nanos(123)
}

/// Runs `test` on a memory store and on a fresh SQLite file, both through `open`.
fn both(test: impl Fn(&mut dyn Store)) {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = dir.path().join("hub").join("tasks.db");
    for spec in [MemoryStore::LOCATION, sqlite.to_str().unwrap()] {
        eprintln!("-- store {spec}");
        let mut store = open(spec).unwrap();
        assert_eq!(store.location(), spec);
        test(&mut *store);
    }
}

pub(super) fn job(store: &mut dyn Store, client: &str) -> JobId {
    let id = store.next_job_id().unwrap();
    store
        .add_job(&JobRecord {
            id,
            submitted: at(0),
            client: client.into(),
            spec: b"echo {}".to_vec(),
            total: None,
        })
        .unwrap();
    id
}

/// Adds tasks with these seqs; returns their ids in the same order.
pub(super) fn tasks(store: &mut dyn Store, job: JobId, seqs: &[u64]) -> Vec<TaskId> {
    let ids: Vec<TaskId> = store.next_task_ids(seqs.len() as u64).unwrap().collect();
    store
        .add_tasks(
            ids.iter()
                .zip(seqs)
                .map(|(&id, &seq)| NewTask {
                    id,
                    job,
                    seq,
                    request: format!("request {seq}").into_bytes(),
                    submitted: at(seq),
                })
                .collect(),
        )
        .unwrap();
    ids
}

pub(super) fn finished(status: TaskState, engine: EngineId, result: &str) -> Finished {
    Finished {
        status,
        result: result.as_bytes().to_vec(),
        error: (status == TaskState::Failed).then(|| format!("failed: {result}")),
        completed: at(100),
        engine,
        attempts: 1,
    }
}

pub(super) fn states(store: &mut dyn Store, job: JobId) -> Vec<TaskState> {
    store
        .tasks(&TaskFilter::Job(job), false)
        .unwrap()
        .iter()
        .map(|t| t.state)
        .collect()
}

/// Each task's writes, queued with no flush between (so the SQLite
/// writer may fold them into one statement), leave the same row in both
/// stores: inserted and finished in one go, started again after a
/// requeue, a start for a completed task ignored, a requeue of a task
/// never started ignored.
#[test]
fn writes_queued_together_leave_what_they_leave_one_by_one() {
    both(|store| {
        let j = job(store, "ruth");
        let old = tasks(store, j, &[0, 1, 2]);
        store.task_started(old[2], 7, at(3), 1).unwrap();
        store
            .task_finished(old[2], finished(TaskState::Ok, 7, "first"))
            .unwrap();
        store.flush().unwrap();
        // Old tasks: start then finish; start, requeue; a completed
        // one started and finished again.
        store.task_started(old[0], 7, at(5), 1).unwrap();
        store
            .task_finished(old[0], finished(TaskState::Failed, 7, "boom"))
            .unwrap();
        store.task_started(old[1], 7, at(6), 1).unwrap();
        store.task_requeued(old[1]).unwrap();
        store.task_started(old[2], 8, at(7), 2).unwrap();
        store
            .task_finished(old[2], finished(TaskState::Ok, 8, "second"))
            .unwrap();
        // New tasks: inserted, started, requeued, started elsewhere,
        // finished; and one requeued without a start.
        let new = tasks(store, j, &[3, 4]);
        store.task_started(new[0], 7, at(8), 1).unwrap();
        store.task_requeued(new[0]).unwrap();
        store.task_started(new[0], 8, at(9), 2).unwrap();
        store
            .task_finished(new[0], finished(TaskState::Ok, 8, "done"))
            .unwrap();
        store.task_requeued(new[1]).unwrap();
        store.flush().unwrap();
        let rows = store.tasks(&TaskFilter::Job(j), true).unwrap();
        let row = |seq: u64| rows.iter().find(|t| t.seq == seq).unwrap();
        assert_eq!(row(0).state, TaskState::Failed);
        assert_eq!(row(0).started, Some(at(5)));
        assert_eq!(row(0).error.as_deref(), Some("failed: boom"));
        assert_eq!(row(1).state, TaskState::Pending);
        assert_eq!((row(1).engine, row(1).started), (None, None));
        assert_eq!(row(2).state, TaskState::Ok);
        assert_eq!(
            row(2).result.as_deref(),
            Some(&b"first"[..]),
            "first result kept"
        );
        assert_eq!((row(2).engine, row(2).started), (Some(7), Some(at(3))));
        assert_eq!(row(3).state, TaskState::Ok);
        assert_eq!((row(3).engine, row(3).attempts), (Some(8), 1));
        assert_eq!(row(3).started, Some(at(9)));
        assert_eq!(row(3).result.as_deref(), Some(&b"done"[..]));
        assert_eq!(row(4).state, TaskState::Pending);
        assert_eq!(row(4).request.as_deref(), Some(&b"request 4"[..]));
    });
}

#[test]
fn lifecycle() {
    both(|store| {
        let e1 = store.next_engine_id().unwrap();
        let e2 = store.next_engine_id().unwrap();
        let j = job(store, "alice");
        let ids = tasks(store, j, &[2, 0, 1]);
        let (t2, t0, t1) = (ids[0], ids[1], ids[2]);
        store.task_started(t0, e1, at(10), 1).unwrap();
        store.task_started(t1, e2, at(11), 1).unwrap();
        store
            .task_finished(t0, finished(TaskState::Ok, e1, "zero"))
            .unwrap();
        store
            .task_finished(t1, finished(TaskState::Failed, e2, "one"))
            .unwrap();

        let all = store.tasks(&TaskFilter::Job(j), true).unwrap();
        assert_eq!(all.iter().map(|t| t.id).collect::<Vec<_>>(), [t0, t1, t2]);
        assert_eq!(
            all[0],
            TaskRecord {
                id: t0,
                job: j,
                seq: 0,
                request: Some(b"request 0".to_vec()),
                submitted: at(0),
                engine: Some(e1),
                started: Some(at(10)),
                completed: Some(at(100)),
                state: TaskState::Ok,
                result: Some(b"zero".to_vec()),
                error: None,
                attempts: 1,
            }
        );
        assert_eq!(all[1].state, TaskState::Failed);
        assert_eq!(all[1].error.as_deref(), Some("failed: one"));
        assert_eq!(all[2].state, TaskState::Pending);
        assert_eq!(all[2].request, Some(b"request 2".to_vec()));
        assert_eq!(all[2].result, None);
        assert_eq!(all[2].engine, None);

        let status = store.tasks(&TaskFilter::Job(j), false).unwrap();
        assert!(status
            .iter()
            .all(|t| t.request.is_none() && t.result.is_none()));
        assert_eq!(status[1].error, all[1].error);
        assert_eq!(
            status.iter().map(|t| t.state).collect::<Vec<_>>(),
            all.iter().map(|t| t.state).collect::<Vec<_>>()
        );

        let picked = store
            .tasks(&TaskFilter::Ids(vec![t2, t0, t0, 999_999]), true)
            .unwrap();
        assert_eq!(picked.iter().map(|t| t.id).collect::<Vec<_>>(), [t0, t2]);
        let seqs = |store: &mut dyn Store, job, seqs, payloads| {
            store
                .tasks(&TaskFilter::Seqs { job, seqs }, payloads)
                .unwrap()
                .iter()
                .map(|t| (t.seq, t.request.is_some()))
                .collect::<Vec<_>>()
        };
        assert_eq!(seqs(store, j, 1..=2, true), [(1, true), (2, true)]);
        assert_eq!(
            seqs(store, j, 0..=u64::MAX, false),
            [(0, false), (1, false), (2, false)]
        );
        let (high, low) = (2, 1);
        assert_eq!(seqs(store, j, high..=low, true), [], "a reversed range");
        assert_eq!(seqs(store, j, 3..=9, true), []);
        let page = |store: &mut dyn Store, after, limit| {
            store
                .tasks(
                    &TaskFilter::Page {
                        job: j,
                        after,
                        limit,
                    },
                    false,
                )
                .unwrap()
                .iter()
                .map(|t| (t.seq, t.id))
                .collect::<Vec<_>>()
        };
        let first = page(store, None, 2);
        assert_eq!(first, [(0, t0), (1, all[1].id)]);
        assert_eq!(page(store, first.last().copied(), 2), [(2, t2)]);
        assert_eq!(page(store, Some((2, t2)), 2), []);
        assert_eq!(page(store, None, 0), []);
        assert_eq!(seqs(store, j + 1, 0..=9, true), []);
        assert!(store
            .tasks(&TaskFilter::Job(j + 1), true)
            .unwrap()
            .is_empty());

        store.set_job_total(j, 3).unwrap();
        store.task_started(t2, e1, at(12), 2).unwrap();
        assert_eq!(
            store.jobs().unwrap(),
            [JobSummary {
                id: j,
                submitted: at(0),
                client: "alice".into(),
                total: Some(3),
                pending: 0,
                running: 1,
                ok: 1,
                failed: 1,
            }]
        );
        assert_eq!(
            store.engine_counts().unwrap(),
            [
                EngineCounts {
                    engine: e1,
                    running: 1,
                    completed: 1
                },
                EngineCounts {
                    engine: e2,
                    running: 0,
                    completed: 1
                },
            ]
        );
        let record = store.job(j).unwrap().unwrap();
        assert_eq!((record.client.as_str(), record.total), ("alice", Some(3)));
        assert_eq!(record.spec, b"echo {}");
        assert_eq!(store.job(j + 1).unwrap(), None);
    });
}

#[test]
fn first_finish_wins_requeue_and_unfinished() {
    both(|store| {
        let j = job(store, "bob");
        let ids = tasks(store, j, &[0, 1, 2]);
        let (a, b, c) = (ids[0], ids[1], ids[2]);
        store.task_started(a, 1, at(1), 1).unwrap();
        store
            .task_finished(a, finished(TaskState::Ok, 1, "first"))
            .unwrap();
        store
            .task_finished(a, finished(TaskState::Failed, 2, "second"))
            .unwrap();
        // Late events for a completed task change nothing.
        store.task_started(a, 3, at(5), 2).unwrap();
        store.task_requeued(a).unwrap();

        store.task_started(b, 1, at(2), 1).unwrap();
        store.task_requeued(b).unwrap();
        store.task_started(c, 2, at(3), 1).unwrap();
        // Events for unknown tasks are ignored.
        store.task_started(424_242, 1, at(3), 1).unwrap();
        store.task_requeued(424_242).unwrap();
        store
            .task_finished(424_242, finished(TaskState::Ok, 1, "?"))
            .unwrap();

        let all = store.tasks(&TaskFilter::Job(j), true).unwrap();
        assert_eq!(all[0].state, TaskState::Ok);
        assert_eq!(all[0].result.as_deref(), Some(&b"first"[..]));
        assert_eq!(all[0].engine, Some(1));
        assert_eq!(
            (all[1].state, all[1].engine, all[1].started, all[1].attempts),
            (TaskState::Pending, None, None, 1)
        );
        assert_eq!(all[2].state, TaskState::Running);

        let unfinished = store.unfinished().unwrap();
        assert_eq!(unfinished.iter().map(|t| t.id).collect::<Vec<_>>(), [b, c]);
        assert_eq!(unfinished[0].request, Some(b"request 1".to_vec()));

        let invalid = store.task_finished(b, finished(TaskState::Running, 1, "x"));
        assert!(matches!(
            invalid,
            Err(StoreError::InvalidFinish {
                state: TaskState::Running,
                ..
            })
        ));
    });
}

#[test]
fn unknown_and_duplicate_jobs_are_refused() {
    both(|store| {
        let j = job(store, "carol");
        let task = store.next_task_ids(1).unwrap().start;
        let orphan = NewTask {
            id: task,
            job: j + 100,
            seq: 0,
            request: vec![],
            submitted: at(0),
        };
        assert!(matches!(
            store.add_tasks(vec![orphan]),
            Err(StoreError::UnknownJob(x)) if x == j + 100
        ));
        assert!(matches!(
            store.set_job_total(j + 100, 1),
            Err(StoreError::UnknownJob(_))
        ));
        let record = store.job(j).unwrap().unwrap();
        assert!(matches!(store.add_job(&record), Err(StoreError::DuplicateJob(x)) if x == j));
        store.add_tasks(vec![]).unwrap();
        assert!(store.tasks(&TaskFilter::Job(j), false).unwrap().is_empty());
    });
}

#[test]
fn ids_increase() {
    both(|store| {
        let e: Vec<_> = (0..40).map(|_| store.next_engine_id().unwrap()).collect();
        assert!(e.windows(2).all(|w| w[0] < w[1]) && e[0] >= 1);
        let j: Vec<_> = (0..100).map(|_| store.next_job_id().unwrap()).collect();
        assert!(j.windows(2).all(|w| w[0] < w[1]) && j[0] >= 1);
        let mut last = 0;
        for n in [0, 1, 10, 40_000, 70_000, 3, 100_000] {
            let range = store.next_task_ids(n).unwrap();
            assert_eq!(range.end - range.start, n);
            if n > 0 {
                assert!(range.start > last);
                last = range.end - 1;
            }
        }
    });
}

#[test]
fn purge() {
    both(|store| {
        let j = job(store, "dave");
        let ids = tasks(store, j, &[0, 1, 2]);
        store.task_started(ids[0], 1, at(1), 1).unwrap();
        assert!(matches!(
            store.purge_job(j),
            Err(StoreError::PendingTasks { job, pending: 3 }) if job == j
        ));
        store
            .task_finished(ids[0], finished(TaskState::Ok, 1, "a"))
            .unwrap();
        store
            .task_finished(ids[1], finished(TaskState::Failed, 2, "b"))
            .unwrap();
        assert!(matches!(
            store.purge_job(j),
            Err(StoreError::PendingTasks { pending: 1, .. })
        ));
        store
            .task_finished(ids[2], finished(TaskState::Ok, 1, "c"))
            .unwrap();
        assert_eq!(store.purge_engine(1).unwrap(), 2);
        assert_eq!(store.purge_engine(1).unwrap(), 0);
        assert_eq!(
            store.tasks(&TaskFilter::Job(j), false).unwrap().len(),
            1,
            "only engine 2's task is left"
        );
        assert_eq!(store.purge_job(j).unwrap(), 1);
        assert_eq!(store.job(j).unwrap(), None);
        assert!(store.jobs().unwrap().is_empty());
        assert!(matches!(store.purge_job(j), Err(StoreError::UnknownJob(_))));

        // purge_completed: a finished job with a total goes; one without
        // a total stays (more inputs may come); unfinished work stays.
        let done = job(store, "erin");
        let open_ended = job(store, "erin");
        let busy = job(store, "erin");
        let d = tasks(store, done, &[0, 1]);
        let o = tasks(store, open_ended, &[0]);
        let b = tasks(store, busy, &[0, 1]);
        store.set_job_total(done, 2).unwrap();
        store.set_job_total(busy, 2).unwrap();
        for task in [d[0], d[1], o[0], b[0]] {
            store
                .task_finished(task, finished(TaskState::Ok, 3, "r"))
                .unwrap();
        }
        assert_eq!(store.purge_completed().unwrap(), 4);
        let left: Vec<(JobId, u64, u64)> = store
            .jobs()
            .unwrap()
            .iter()
            .map(|s| (s.id, s.pending, s.ok))
            .collect();
        assert_eq!(left, [(open_ended, 0, 0), (busy, 1, 0)]);
        let late = store.next_task_ids(1).unwrap().start;
        assert!(matches!(
            store.add_tasks(vec![NewTask {
                id: late,
                job: done,
                seq: 9,
                request: vec![],
                submitted: at(0),
            }]),
            Err(StoreError::UnknownJob(_))
        ));
        tasks(store, open_ended, &[1]);
        assert!(store.engine_counts().unwrap().is_empty());
    });
}

/// A finished job's counts, once read, still follow a resubmit, a purge
/// and a purge of its engine (the SQLite store keeps finished jobs' counts
/// rather than counting their tasks at every status).
#[test]
fn a_finished_jobs_counts_follow_resubmit_and_purge() {
    both(|store| {
        let counts = |store: &mut dyn Store| -> Vec<(JobId, u64, u64, u64)> {
            store
                .jobs()
                .unwrap()
                .iter()
                .map(|s| (s.id, s.pending, s.ok, s.failed))
                .collect()
        };
        let j = job(store, "heidi");
        let k = job(store, "ivan");
        let ids = tasks(store, j, &[0, 1]);
        let other = tasks(store, k, &[0])[0];
        store.set_job_total(j, 2).unwrap();
        store.set_job_total(k, 1).unwrap();
        store
            .task_finished(ids[0], finished(TaskState::Ok, 1, "ok"))
            .unwrap();
        store.task_started(ids[1], 7, at(1), 1).unwrap();
        store
            .task_finished(ids[1], finished(TaskState::Failed, 7, "bad"))
            .unwrap();
        store.task_started(other, 8, at(1), 1).unwrap();
        store
            .task_finished(other, finished(TaskState::Ok, 8, "ok"))
            .unwrap();
        // Read twice: the second may come from what the first kept.
        assert_eq!(counts(store), [(j, 0, 1, 1), (k, 0, 1, 0)]);
        assert_eq!(counts(store), [(j, 0, 1, 1), (k, 0, 1, 0)]);
        assert_eq!(store.reset_for_resubmit(j, None).unwrap().len(), 1);
        assert_eq!(counts(store), [(j, 1, 1, 0), (k, 0, 1, 0)]);
        store
            .task_finished(ids[1], finished(TaskState::Ok, 7, "ok"))
            .unwrap();
        assert_eq!(counts(store), [(j, 0, 2, 0), (k, 0, 1, 0)]);
        assert_eq!(store.purge_engine(8).unwrap(), 1);
        assert_eq!(counts(store), [(j, 0, 2, 0), (k, 0, 0, 0)]);
        assert_eq!(store.purge_job(j).unwrap(), 2);
        assert_eq!(counts(store), [(k, 0, 0, 0)]);
    });
}

#[test]
fn resubmit() {
    both(|store| {
        let j = job(store, "frank");
        let other = job(store, "grace");
        let ids = tasks(store, j, &[0, 1, 2, 3, 4]);
        let foreign = tasks(store, other, &[0])[0];
        store
            .task_finished(ids[0], finished(TaskState::Ok, 1, "ok"))
            .unwrap();
        store.task_started(ids[1], 1, at(1), 1).unwrap();
        store
            .task_finished(ids[1], finished(TaskState::Failed, 1, "bad"))
            .unwrap();
        store
            .task_finished(ids[2], finished(TaskState::Failed, 2, "bad"))
            .unwrap();
        store.task_started(ids[4], 2, at(1), 1).unwrap();

        let reset = store.reset_for_resubmit(j, None).unwrap();
        assert_eq!(
            reset.iter().map(|t| t.id).collect::<Vec<_>>(),
            [ids[1], ids[2]]
        );
        for task in &reset {
            assert_eq!(task.state, TaskState::Pending);
            assert_eq!(
                task.request,
                Some(format!("request {}", task.seq).into_bytes())
            );
            assert_eq!(
                (task.engine, task.started, task.completed),
                (None, None, None)
            );
            assert_eq!((&task.result, &task.error), (&None, &None));
            assert_eq!(task.attempts, 1);
        }
        assert_eq!(
            states(store, j),
            [
                TaskState::Ok,
                TaskState::Pending,
                TaskState::Pending,
                TaskState::Pending,
                TaskState::Running
            ]
        );
        assert!(store.reset_for_resubmit(j, None).unwrap().is_empty());

        // Explicit ids: all must be completed tasks of the job, else nothing changes.
        assert!(matches!(
            store.reset_for_resubmit(j, Some(&[ids[0], ids[3]])),
            Err(StoreError::NotCompleted { task, state: TaskState::Pending }) if task == ids[3]
        ));
        assert!(matches!(
            store.reset_for_resubmit(j, Some(&[ids[0], ids[4]])),
            Err(StoreError::NotCompleted {
                state: TaskState::Running,
                ..
            })
        ));
        assert!(matches!(
            store.reset_for_resubmit(j, Some(&[ids[0], foreign])),
            Err(StoreError::UnknownTask { job, task }) if job == j && task == foreign
        ));
        assert!(matches!(
            store.reset_for_resubmit(j + 50, None),
            Err(StoreError::UnknownJob(_))
        ));
        assert_eq!(states(store, j)[0], TaskState::Ok);
        let again = store
            .reset_for_resubmit(j, Some(&[ids[0], ids[0]]))
            .unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].id, ids[0]);
        assert_eq!(states(store, j)[0], TaskState::Pending);
    });
}

#[test]
fn open_spec() {
    assert_eq!(open(":memory:").unwrap().location(), ":memory:");
    assert!(matches!(open(""), Err(StoreError::InvalidSpec(_))));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a").join("b").join("store.db");
    let store = open(path.to_str().unwrap()).unwrap();
    assert_eq!(store.location(), path.display().to_string());
    assert!(path.exists());
}
