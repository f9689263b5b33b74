//! The SQLite store with real command tasks' requests and results: what
//! it gives back is what it was given, byte for byte, through every read
//! (after a reopen, to a resubmit, to a restarted hub); what it costs per
//! task; and a version 2 file migrated to version 3.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;

use super::schema::{META_SCHEMA, SCHEMA, SCHEMA_VERSION};
use super::*;
use crate::exec::chunk::{ExecChunk, ExecTask};
use crate::hub::store::tests::{at, job};
use crate::hub::store::{MemoryStore, Store, TaskFilter, TaskState};
use crate::message::{encode_value, ClusterRequest, ClusterResult, ResultMetadata, ResultStatus};

/// Input `seq`'s request in a `zcluster map inputs -- true` job, as the
/// client sends it and the hub records it.
fn command_request(seq: u64) -> Vec<u8> {
    let task = ExecTask {
        seq: seq + 1,
        input: (seq + 1).to_string().into_bytes(),
        argv: vec![serde_bytes::ByteBuf::from(b"true".to_vec())],
        timeout: None,
        slot_at: Vec::new(),
        env: Vec::new(),
        wd: Some(serde_bytes::ByteBuf::from(
            b"/home/someone/project".to_vec(),
        )),
    };
    let request = ClusterRequest::encode(seq, &ExecChunk { tasks: vec![task] }).unwrap();
    encode_value(&request, "request").unwrap()
}

/// Its result from `engine` as the engine sends it, started `started`:
/// ok with no output, or (each seventh) failed with an exception.
fn command_result(seq: u64, job: JobId, engine: u64, started: SystemTime) -> Vec<u8> {
    let failed = seq % 7 == 3;
    let result = ClusterResult {
        id: seq,
        status: if failed {
            ResultStatus::Fail
        } else {
            ResultStatus::Ok
        },
        payload: if seq % 5 == 0 {
            format!("output {seq}\n").into_bytes()
        } else {
            Vec::new()
        },
        request_metadata: [("zcluster.job".to_string(), job.to_string())].into(),
        metadata: ResultMetadata {
            host: format!("node-{engine}.cluster"),
            pid: 40_000 + engine as u32,
            worker: format!("slot-{}", 1 + seq % 2),
            started,
            elapsed: Duration::from_nanos(900_000 + seq * 7919),
        },
        exception: failed.then(|| format!("exit status 1 (input {seq})")),
    };
    encode_value(&result, "result").unwrap()
}

/// Bytes of the store's database as its read connection sees it (the
/// WAL's pages included).
fn database_bytes(store: &mut SqliteStore) -> u64 {
    store.flush().unwrap();
    store
        .read
        .query_row(
            "SELECT page_count * page_size FROM pragma_page_count, pragma_page_size",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
        .unsigned_abs()
}

/// A task's request and result, as given to the stores.
type Sent = (Vec<u8>, Vec<u8>);

/// Records `n` tasks of a new job, starts them on two engines and
/// finishes them (about one in seven failed), the same in `stores`; returns the job
/// and each task's request and result.
fn run_command_job(stores: &mut [&mut dyn Store], n: u64) -> (JobId, HashMap<TaskId, Sent>) {
    let mut jobs: Vec<JobId> = stores.iter_mut().map(|s| job(&mut **s, "ana")).collect();
    jobs.dedup();
    assert_eq!(jobs.len(), 1, "the stores hand out the same job id");
    let j = jobs[0];
    let mut sent = HashMap::new();
    let base = at(1_700_000_000);
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut firsts = Vec::new();
        for store in stores.iter_mut() {
            let ids = store.next_task_ids(chunk.len() as u64).unwrap();
            firsts.push(ids.start);
            let tasks = ids
                .zip(chunk)
                .map(|(id, &seq)| NewTask {
                    id,
                    job: j,
                    seq,
                    request: command_request(seq),
                    submitted: base + Duration::from_micros(seq),
                })
                .collect();
            store.add_tasks(tasks).unwrap();
        }
        firsts.dedup();
        assert_eq!(firsts.len(), 1, "the stores hand out the same task ids");
        for (id, &seq) in (firsts[0]..).zip(chunk) {
            let engine = 1 + seq % 2;
            let started = base + Duration::from_millis(seq);
            let result = command_result(seq, j, engine, started + Duration::from_micros(150));
            let failed = seq % 7 == 3;
            for store in stores.iter_mut() {
                store.task_started(id, engine, started, 1).unwrap();
                store
                    .task_finished(
                        id,
                        Finished {
                            status: if failed {
                                TaskState::Failed
                            } else {
                                TaskState::Ok
                            },
                            result: result.clone(),
                            error: failed.then(|| "exit status 1".to_string()),
                            completed: started + Duration::from_micros(1_400 + seq % 300),
                            engine,
                            attempts: 1,
                        },
                    )
                    .unwrap();
            }
            sent.insert(id, (command_request(seq), result));
        }
    }
    (j, sent)
}

fn all_tasks(store: &mut dyn Store, job: JobId) -> Vec<TaskRecord> {
    store.tasks(&TaskFilter::Job(job), true).unwrap()
}

/// A command job's tasks read back from the SQLite store exactly as the
/// memory store keeps them (requests and results byte for byte), by job,
/// by id, after a reopen, and as a resubmit hands them back; and the
/// tasks cost the file under 150 bytes each beyond their input and output.
#[test]
fn command_tasks_read_back_exactly_and_cost_under_150_bytes_each() {
    const TASKS: u64 = 4000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("forms.sqlite");
    let mut sqlite = SqliteStore::open(&path).unwrap();
    let mut memory = MemoryStore::new();
    let before = database_bytes(&mut sqlite);
    let (j, sent) = run_command_job(&mut [&mut sqlite, &mut memory], TASKS);
    let after = database_bytes(&mut sqlite);

    let expected = all_tasks(&mut memory, j);
    assert_eq!(expected.len() as u64, TASKS);
    for t in &expected {
        let (request, result) = &sent[&t.id];
        assert_eq!(t.request.as_ref(), Some(request));
        assert_eq!(t.result.as_ref(), Some(result));
    }
    assert_eq!(all_tasks(&mut sqlite, j), expected);
    let some: Vec<TaskId> = expected.iter().step_by(97).map(|t| t.id).collect();
    assert_eq!(
        sqlite.tasks(&TaskFilter::Ids(some.clone()), true).unwrap(),
        memory.tasks(&TaskFilter::Ids(some), true).unwrap()
    );

    // Input and output, as a person counts them: the input lines and
    // the commands' output.
    let payload: u64 = (0..TASKS)
        .map(|seq| (seq + 1).to_string().len() as u64 + 1)
        .sum::<u64>()
        + (0..TASKS)
            .filter(|seq| seq % 5 == 0)
            .map(|seq| format!("output {seq}\n").len() as u64)
            .sum::<u64>();
    let per_task = (after - before - payload) / TASKS;
    assert!(
        per_task < 150,
        "{per_task} bytes per task beyond input and output"
    );

    drop(sqlite);
    let mut sqlite = SqliteStore::open(&path).unwrap();
    assert_eq!(all_tasks(&mut sqlite, j), expected, "after a reopen");
    let resubmitted = sqlite.reset_for_resubmit(j, None).unwrap();
    assert_eq!(resubmitted, memory.reset_for_resubmit(j, None).unwrap());
    assert!(!resubmitted.is_empty());
    assert_eq!(sqlite.unfinished().unwrap(), memory.unfinished().unwrap());
    assert_eq!(all_tasks(&mut sqlite, j), all_tasks(&mut memory, j));
}

/// The queries that look for unfinished tasks (a restarted hub's, the live
/// counts' recount, a purge's check) go through an index, though the state
/// index of version 3 holds unfinished tasks only.
#[test]
fn unfinished_tasks_are_found_through_an_index() {
    let conn = Connection::open_in_memory().unwrap();
    super::schema::create_for_tests(&conn);
    let plan = |sql: &str| -> String {
        conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map([1], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
            .join("; ")
    };
    let unfinished = completed_states(false);
    assert_eq!(unfinished, "'pending', 'running'", "as the index says");
    for sql in [
        format!("SELECT id FROM tasks WHERE state IN ({unfinished}) AND ?1 ORDER BY job, seq, id"),
        format!("SELECT id, job, state FROM tasks WHERE state IN ({unfinished}) AND ?1"),
    ] {
        let plan = plan(&sql);
        assert!(
            plan.contains("USING INDEX tasks_unfinished") && !plan.contains("TEMP B-TREE"),
            "{sql}: {plan}"
        );
    }
    let purge = format!("SELECT COUNT(*) FROM tasks WHERE job = ?1 AND state IN ({unfinished})");
    assert!(plan(&purge).contains("INDEX"), "{purge}: {}", plan(&purge));
}

/// Makes a version 2 store at `path` as zcluster wrote it before version
/// 3, with one finished task (a real command task's request and result),
/// one pending and one whose blobs are bytes of every value.
fn version_2_file(path: &Path) -> Vec<(i64, Vec<u8>, Option<Vec<u8>>)> {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(SCHEMA).unwrap();
    conn.execute_batch(META_SCHEMA).unwrap();
    conn.execute("INSERT INTO meta (name, value) VALUES ('store', 77)", [])
        .unwrap();
    conn.pragma_update(None, "application_id", files::APPLICATION_ID)
        .unwrap();
    conn.pragma_update(None, "user_version", 2).unwrap();
    conn.execute(
        "INSERT INTO jobs (id, submitted, client, spec) VALUES (1, 5, 'old', x'01')",
        [],
    )
    .unwrap();
    conn.execute("UPDATE counters SET value = 10", []).unwrap();
    let every: Vec<u8> = (0..=255).collect();
    let rows = vec![
        (
            1,
            command_request(0),
            Some(command_result(0, 1, 1, at(1_700_000_000))),
        ),
        (2, command_request(1), None),
        (3, every.clone(), Some(every)),
    ];
    for (id, request, result) in &rows {
        conn.execute(
            "INSERT INTO tasks (id, job, seq, request, submitted, state, engine, started,
                                completed, result, attempts)
             VALUES (?1, 1, ?1, ?2, 10, ?3, ?4, ?5, ?6, ?7, 1)",
            rusqlite::params![
                id,
                request,
                if result.is_some() { "ok" } else { "pending" },
                result.as_ref().map(|_| 1),
                result.as_ref().map(|_| 11),
                result.as_ref().map(|_| 12),
                result
            ],
        )
        .unwrap();
    }
    rows
}

/// A version 2 file opens migrated to version 3: its tasks read back as
/// they were, its unfinished task is found, and its job takes new tasks,
/// stored in the new forms, that read back as given too.
#[test]
fn a_version_2_file_is_migrated_and_reads_back_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v2.sqlite");
    let rows = version_2_file(&path);
    let mut store = SqliteStore::open(&path).unwrap();
    let version: i64 = store
        .read
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let tasks = all_tasks(&mut store, 1);
    assert_eq!(tasks.len(), rows.len());
    for (task, (id, request, result)) in tasks.iter().zip(&rows) {
        assert_eq!(task.id, id.unsigned_abs());
        assert_eq!(task.request.as_ref(), Some(request));
        assert_eq!(&task.result, result);
    }
    let unfinished: Vec<TaskId> = store.unfinished().unwrap().iter().map(|t| t.id).collect();
    assert_eq!(unfinished, [2]);
    let id = store.next_task_ids(1).unwrap().start;
    store
        .add_tasks(vec![NewTask {
            id,
            job: 1,
            seq: 5,
            request: command_request(5),
            submitted: at(20),
        }])
        .unwrap();
    let result = command_result(5, 1, 3, at(21));
    store.task_started(id, 3, at(21), 1).unwrap();
    store
        .task_finished(
            id,
            Finished {
                status: TaskState::Ok,
                result: result.clone(),
                error: None,
                completed: at(22),
                engine: 3,
                attempts: 1,
            },
        )
        .unwrap();
    drop(store);
    let mut store = SqliteStore::open(&path).unwrap();
    let new = store.tasks(&TaskFilter::Ids(vec![id]), true).unwrap();
    assert_eq!(new[0].request, Some(command_request(5)));
    assert_eq!(new[0].result, Some(result));
    assert_eq!(all_tasks(&mut store, 1)[..3], tasks[..]);
}

/// A job whose first request is too large to be its reference keeps its
/// requests raw; after a reopen a smaller one becomes its reference; every
/// request reads back as given, before and after.
#[test]
fn a_job_whose_first_request_is_large_reads_back_as_given() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("large.sqlite");
    let mut given = Vec::new();
    let mut add = |store: &mut SqliteStore, j: JobId, request: Vec<u8>| {
        let id = store.next_task_ids(1).unwrap().start;
        store
            .add_tasks(vec![NewTask {
                id,
                job: j,
                seq: id,
                request: request.clone(),
                submitted: at(1),
            }])
            .unwrap();
        given.push(request);
    };
    let mut store = SqliteStore::open(&path).unwrap();
    let j = job(&mut store, "large");
    add(&mut store, j, vec![3; 5000]);
    add(&mut store, j, command_request(1));
    drop(store);
    let mut store = SqliteStore::open(&path).unwrap();
    add(&mut store, j, command_request(2));
    add(&mut store, j, command_request(3));
    add(&mut store, j, vec![3; 5001]);
    let read: Vec<Vec<u8>> = all_tasks(&mut store, j)
        .into_iter()
        .filter_map(|t| t.request)
        .collect();
    assert_eq!(read, given);
    drop(store);
    let mut store = SqliteStore::open(&path).unwrap();
    let read: Vec<Vec<u8>> = all_tasks(&mut store, j)
        .into_iter()
        .filter_map(|t| t.request)
        .collect();
    assert_eq!(read, given);
}

/// Times as far apart as the store takes them (a start and a completion
/// stored as offsets from a submission 140 years before 1970) read back as
/// given; a time past the range is refused when the call is made.
#[test]
fn times_far_apart_read_back_as_given() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SqliteStore::open(dir.path().join("far.sqlite")).unwrap();
    let j = job(&mut store, "far");
    let years = |n: u64| Duration::from_secs(n * 365 * 86_400);
    let (submitted, started, completed) = (
        UNIX_EPOCH - years(140),
        UNIX_EPOCH + years(140),
        UNIX_EPOCH + years(145),
    );
    let id = store.next_task_ids(1).unwrap().start;
    store
        .add_tasks(vec![NewTask {
            id,
            job: j,
            seq: 0,
            request: command_request(0),
            submitted,
        }])
        .unwrap();
    store.flush().unwrap();
    store.task_started(id, 1, started, 1).unwrap();
    let finished = Finished {
        status: TaskState::Ok,
        result: command_result(0, j, 1, started),
        error: None,
        completed,
        engine: 1,
        attempts: 1,
    };
    store.task_finished(id, finished.clone()).unwrap();
    let task = &all_tasks(&mut store, j)[0];
    assert_eq!(
        (task.submitted, task.started, task.completed),
        (submitted, Some(started), Some(completed))
    );
    assert_eq!(task.result.as_ref(), Some(&finished.result));
    assert!(matches!(
        store.task_started(id, 1, UNIX_EPOCH + years(150), 2),
        Err(StoreError::TimeOutOfRange { .. })
    ));
}
