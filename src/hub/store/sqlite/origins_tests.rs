//! What a purge gives back in a real SQLite file: the `origins` rows no
//! task names any more and the reference requests of purged jobs go in
//! the purge's transaction; an origin another task still names stays;
//! and the writer forgets what was deleted, so a later result from the
//! same worker reads back byte for byte.

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::*;
use crate::hub::store::tests::{at, job};
use crate::hub::store::{Finished, Store, TaskFilter, TaskState};
use crate::message::{encode_value, ClusterRequest, ClusterResult, ResultMetadata, ResultStatus};

/// A worker as a result names it: its process and its name in it (the
/// result's origin, with the request metadata, which these tests leave
/// empty so that one origin can serve several jobs).
#[derive(Clone, Copy)]
struct Worker {
    pid: u32,
    slot: u32,
}

/// Task `seq`'s request: a command line, so that every request after a
/// job's first is stored as a difference from it.
fn request(seq: u64) -> Vec<u8> {
    let line = format!("extract-features /data/in/{seq}.png -o /data/out/{seq}.npy");
    encode_value(&ClusterRequest::encode(seq, &line).unwrap(), "request").unwrap()
}

/// Its result from `worker`, started at `started`.
fn result(seq: u64, worker: Worker, started: SystemTime) -> Vec<u8> {
    let result = ClusterResult {
        id: seq,
        status: ResultStatus::Ok,
        payload: format!("{seq}\n").into_bytes(),
        request_metadata: Default::default(),
        metadata: ResultMetadata {
            host: "node-1.cluster".to_string(),
            pid: worker.pid,
            worker: format!("slot-{}", worker.slot),
            started,
            elapsed: Duration::from_nanos(700_000 + seq),
        },
        exception: None,
    };
    encode_value(&result, "result").unwrap()
}

/// A task as it was given to the store: id, request, result.
type Given = (TaskId, Vec<u8>, Vec<u8>);

/// Records a job of `n` tasks, each run on engine 1 by the next of
/// `workers` in turn and finished ok, and gives the job its total (so
/// that a purge of completed tasks removes the job too).
fn run_job(store: &mut SqliteStore, n: u64, workers: &[Worker]) -> (JobId, Vec<Given>) {
    let j = job(store, "ana");
    let ids = store.next_task_ids(n).unwrap();
    let base = at(100);
    let tasks = ids
        .clone()
        .zip(0..n)
        .map(|(id, seq)| NewTask {
            id,
            job: j,
            seq,
            request: request(seq),
            submitted: base,
        })
        .collect();
    store.add_tasks(tasks).unwrap();
    let mut given = Vec::new();
    for ((id, seq), worker) in ids.zip(0..n).zip(workers.iter().cycle()) {
        let started = base + Duration::from_millis(seq + 1);
        let result = result(seq, *worker, started + Duration::from_micros(20));
        store.task_started(id, 1, started, 1).unwrap();
        store
            .task_finished(
                id,
                Finished {
                    status: TaskState::Ok,
                    result: result.clone(),
                    error: None,
                    completed: started + Duration::from_millis(1),
                    engine: 1,
                    attempts: 1,
                },
            )
            .unwrap();
        given.push((id, request(seq), result));
    }
    store.set_job_total(j, n).unwrap();
    (j, given)
}

/// Each task of `job` reads back with the request and result it was given.
fn assert_reads_back(store: &mut SqliteStore, job: JobId, given: &[Given]) {
    let read = store.tasks(&TaskFilter::Job(job), true).unwrap();
    assert_eq!(read.len(), given.len());
    for (task, (id, request, result)) in read.iter().zip(given) {
        assert_eq!(task.id, *id);
        assert_eq!(task.request.as_ref(), Some(request), "request of task {id}");
        assert_eq!(task.result.as_ref(), Some(result), "result of task {id}");
    }
}

/// Rows in the `origins` table, and jobs holding a reference request.
fn stored_rows(store: &mut SqliteStore) -> (i64, i64) {
    store.flush().unwrap();
    store
        .read
        .query_row(
            "SELECT (SELECT COUNT(*) FROM origins),
                    (SELECT COUNT(*) FROM jobs WHERE request_ref IS NOT NULL)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
}

fn workers(pids: std::ops::Range<u32>) -> Vec<Worker> {
    pids.flat_map(|pid| (1..=2).map(move |slot| Worker { pid, slot }))
        .collect()
}

/// Each way to purge everything (every job by id, every completed task,
/// every engine's tasks) leaves neither origins nor reference requests.
#[test]
fn purging_everything_leaves_no_origins_and_no_reference_requests() {
    let dir = tempfile::tempdir().unwrap();
    for way in ["jobs", "completed", "engine"] {
        let path = dir.path().join(format!("{way}.sqlite"));
        let mut store = SqliteStore::open(&path).unwrap();
        let (a, _) = run_job(&mut store, 50, &workers(100..103));
        let (b, _) = run_job(&mut store, 50, &workers(102..105));
        assert_eq!(stored_rows(&mut store), (10, 2), "before purging by {way}");
        match way {
            "jobs" => {
                store.purge_job(a).unwrap();
                store.purge_job(b).unwrap();
            }
            "completed" => assert_eq!(store.purge_completed().unwrap(), 100),
            _ => assert_eq!(store.purge_engine(1).unwrap(), 100),
        }
        let (origins, references) = stored_rows(&mut store);
        assert_eq!(origins, 0, "origins left after purging by {way}");
        if way != "engine" {
            // A purge of an engine's tasks keeps their jobs.
            assert_eq!(references, 0, "reference requests after purging by {way}");
        }
    }
}

/// Of two jobs sharing a worker, purging one keeps the shared origin (the
/// other job's results read back right, before and after a reopen) and
/// drops the one only the purged job named, though a task left names none.
#[test]
fn purging_one_job_keeps_the_origins_another_job_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.sqlite");
    let shared = Worker { pid: 7, slot: 1 };
    let own = Worker { pid: 8, slot: 1 };
    let mut store = SqliteStore::open(&path).unwrap();
    let (a, _) = run_job(&mut store, 30, &[shared, own]);
    let (b, given) = run_job(&mut store, 30, &[shared]);
    // And a task not run yet, which names no origin.
    let c = job(&mut store, "ana");
    let waiting = store.next_task_ids(1).unwrap().start;
    store
        .add_tasks(vec![NewTask {
            id: waiting,
            job: c,
            seq: 0,
            request: request(0),
            submitted: at(100),
        }])
        .unwrap();
    assert_eq!(stored_rows(&mut store), (2, 3));
    store.purge_job(a).unwrap();
    assert_eq!(stored_rows(&mut store), (1, 2));
    assert_reads_back(&mut store, b, &given);
    drop(store);
    let mut store = SqliteStore::open(&path).unwrap();
    assert_reads_back(&mut store, b, &given);
}

/// After a purge deleted a worker's origin, the next result from the same
/// worker adds it again instead of naming the deleted row (which the
/// writer remembered), and reads back byte for byte after a reopen.
#[test]
fn a_result_after_its_origin_was_purged_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("again.sqlite");
    let same = Worker { pid: 7, slot: 1 };
    let mut store = SqliteStore::open(&path).unwrap();
    // Two origins, so that the one added again does not simply take the
    // deleted row's id back.
    let (a, _) = run_job(&mut store, 10, &[same, Worker { pid: 8, slot: 1 }]);
    store.purge_job(a).unwrap();
    assert_eq!(stored_rows(&mut store), (0, 0));
    let (b, given) = run_job(&mut store, 10, &[same]);
    assert_eq!(stored_rows(&mut store), (1, 1));
    assert_reads_back(&mut store, b, &given);
    drop(store);
    let mut store = SqliteStore::open(&path).unwrap();
    assert_reads_back(&mut store, b, &given);
}

/// Bytes of the file at `path` once the store is closed (its WAL
/// checkpointed into it).
fn file_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

/// A hub whose workers restart between rounds (new pids every round) and
/// which purges everything after each: the file stops growing, as the
/// pages the purge freed are used again.
#[test]
fn rounds_of_new_workers_and_purges_do_not_grow_the_file() {
    const ROUNDS: u32 = 6;
    const TASKS: u64 = 2000;
    const PROCESSES: u32 = 300;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rounds.sqlite");
    let mut sizes = Vec::new();
    for round in 0..ROUNDS {
        let mut store = SqliteStore::open(&path).unwrap();
        let first = 1000 + round * PROCESSES;
        run_job(&mut store, TASKS, &workers(first..first + PROCESSES));
        store.purge_completed().unwrap();
        drop(store);
        sizes.push(file_bytes(&path));
    }
    eprintln!("file bytes after each round: {sizes:?}");
    // How a round's writes fall into batches shapes its pages, so the
    // first rounds may take a few pages more than the first one did; then
    // the file stops growing. (Each round's new origins, kept, took some
    // fifty thousand bytes more every round.)
    let settled = &sizes[sizes.len() - 3..];
    let grown = settled[2] - settled[0];
    assert!(grown <= sizes[0] / 20, "the file grew: {sizes:?}");
}
