//! The SQLite store alone: reopening, crashes, failed writes, the commit
//! position, its files, and its throughput.

use std::path::Path;
use std::time::{Duration, Instant, UNIX_EPOCH};

use super::schema::SCHEMA_VERSION;
use super::*;
use crate::hub::store::tests::{at, finished, job, states, tasks};
use crate::hub::store::{open, MemoryStore, Store, TaskFilter, TaskState};

// --- SQLite only -------------------------------------------------------

fn reopen(path: &Path) -> SqliteStore {
    SqliteStore::open(path).unwrap()
}

struct Handed {
    engine: EngineId,
    job: JobId,
    task: TaskId,
}

fn hand_out(store: &mut SqliteStore) -> Handed {
    let engine = store.next_engine_id().unwrap();
    let job = store.next_job_id().unwrap();
    let task = store.next_task_ids(5).unwrap().end - 1;
    Handed { engine, job, task }
}

fn assert_past(store: &mut SqliteStore, before: &Handed) {
    assert!(store.next_engine_id().unwrap() > before.engine);
    assert!(store.next_job_id().unwrap() > before.job);
    assert!(store.next_task_ids(1).unwrap().start > before.task);
}

#[test]
fn ids_never_reused_across_reopen_and_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ids.db");

    let mut store = reopen(&path);
    let handed = hand_out(&mut store);
    drop(store);
    let mut store = reopen(&path);
    assert_past(&mut store, &handed);

    // Crash with queued, unflushed writes and ids handed out.
    let handed = hand_out(&mut store);
    let j = handed.job;
    store
        .add_job(&JobRecord {
            id: j,
            submitted: at(0),
            client: "x".into(),
            spec: vec![],
            total: None,
        })
        .unwrap();
    store.crash();
    let mut store = reopen(&path);
    assert_past(&mut store, &handed);

    // Forgotten store (no drop at all).
    let handed = hand_out(&mut store);
    std::mem::forget(store);
    let mut store = reopen(&path);
    assert_past(&mut store, &handed);
}

#[test]
fn flushed_data_is_seen_by_a_second_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("durable.db");
    let mut first = reopen(&path);
    let j = job(&mut first, "heidi");
    let ids = tasks(&mut first, j, &[0, 1]);
    first.task_started(ids[0], 7, at(1), 1).unwrap();
    first
        .task_finished(ids[0], finished(TaskState::Ok, 7, "done"))
        .unwrap();
    first.flush().unwrap();

    let mut second = reopen(&path);
    assert_eq!(second.job(j).unwrap().unwrap().client, "heidi");
    assert_eq!(states(&mut second, j), [TaskState::Ok, TaskState::Pending]);
    drop(second);

    // Written after, never explicitly flushed: the drop commits it.
    first.task_started(ids[1], 7, at(2), 1).unwrap();
    drop(first);
    let mut third = reopen(&path);
    assert_eq!(states(&mut third, j), [TaskState::Ok, TaskState::Running]);
    assert_eq!(third.unfinished().unwrap().len(), 1);
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.db");
    drop(reopen(&path));
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    match SqliteStore::open(&path) {
        Err(StoreError::SchemaTooNew {
            found: 99,
            supported: SCHEMA_VERSION,
            ..
        }) => {}
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

/// A write that fails stops the store: its batch is rolled back (the
/// commit position does not cover it), every later write and flush
/// fails with the first failure, and reads show what was committed.
#[test]
fn a_failed_write_stops_the_store_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = reopen(&dir.path().join("errors.db"));
    let log = store.commits();
    let j = job(&mut store, "ivan");
    let id = tasks(&mut store, j, &[0])[0];
    store.flush().unwrap();
    // Counted once here, the job's counts are then moved as writes queue.
    assert_eq!(store.jobs().unwrap()[0].pending, 1);
    let committed = log.committed();
    assert_eq!(
        committed,
        store.written(),
        "everything flushed is committed"
    );
    let dup = |seq| NewTask {
        id,
        job: j,
        seq,
        request: vec![],
        submitted: at(0),
    };
    store.add_tasks(vec![dup(1), dup(2)]).unwrap();
    store.task_started(id, 3, at(1), 1).unwrap();
    let failure = store.flush().unwrap_err();
    assert!(matches!(failure, StoreError::CannotWrite(_)), "{failure}");
    // The job's counts, moved for the writes now lost, are counted again
    // from what was committed.
    let summary = &store.jobs().unwrap()[0];
    assert_eq!((summary.pending, summary.running), (1, 0), "{summary:?}");
    let text = ErrorChain(&failure).to_string();
    assert!(
        text.contains("recording task") && text.contains("UNIQUE"),
        "{text}"
    );
    assert!(
        failure
            .to_string()
            .starts_with("task store cannot write: UNIQUE"),
        "{failure}"
    );
    assert_eq!(
        log.committed(),
        committed,
        "the failed batch is not counted"
    );
    assert!(log.failure().is_some());
    // Sticky: later writes, flushes and purges fail at once...
    assert!(matches!(
        store.task_started(id, 4, at(2), 1),
        Err(StoreError::CannotWrite(_))
    ));
    assert!(matches!(store.flush(), Err(StoreError::CannotWrite(_))));
    assert!(matches!(
        store.purge_completed(),
        Err(StoreError::CannotWrite(_))
    ));
    // ...while reads show what was committed: the start was rolled back.
    assert_eq!(states(&mut store, j), [TaskState::Pending]);
    assert_eq!(store.tasks(&TaskFilter::Job(j), false).unwrap()[0].seq, 0);
}

/// Each committed batch moves the position on by its writes; the memory
/// store's stays at 0, as its `written` does.
/// A start with nothing after it is carried past its batch's commit (to
/// fold with the finish that usually follows), but not for long: with the
/// writer's queue quiet it is committed alone, as another connection sees
/// without any flush; and one the finish follows is written once, folded.
#[test]
fn a_carried_start_is_committed_once_the_queue_is_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("carried.db");
    let mut store = reopen(&path);
    let j = job(&mut store, "lee");
    let ids = tasks(&mut store, j, &[0, 1]);
    store.flush().unwrap();
    let raw = rusqlite::Connection::open(&path).unwrap();
    let state_of = |id: TaskId| -> String {
        raw.query_row(
            "SELECT state FROM tasks WHERE id = ?1",
            [i64::try_from(id).unwrap()],
            |r| r.get(0),
        )
        .unwrap()
    };
    store.task_started(ids[0], 3, at(1), 1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while state_of(ids[0]) != "running" {
        assert!(
            Instant::now() < deadline,
            "a carried start was never committed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    store.task_started(ids[1], 3, at(2), 1).unwrap();
    store
        .task_finished(ids[1], finished(TaskState::Ok, 3, "done"))
        .unwrap();
    store.flush().unwrap();
    assert_eq!(state_of(ids[1]), "ok");
    assert_eq!(states(&mut store, j), [TaskState::Running, TaskState::Ok]);
}

/// A batch of starts alone (an idle hub's task just sent to its engine)
/// costs no transaction: the position moves on at once, nothing is
/// committed (the side file's count stays), and the start is written with
/// the finish that follows, in one commit.
#[test]
fn a_start_alone_costs_no_commit_and_goes_with_its_finish() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("quiet.db");
    let mut store = reopen(&path);
    let log = store.commits();
    let j = job(&mut store, "ari");
    let ids = tasks(&mut store, j, &[0]);
    store.flush().unwrap();
    let commits = || files::read_record(&path).unwrap().unwrap().commits;
    let before = commits();
    store.task_started(ids[0], 3, at(1), 1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while log.committed() < store.written() {
        assert!(
            Instant::now() < deadline,
            "the start's position never moved"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(commits(), before, "a start alone was committed by itself");
    store
        .task_finished(ids[0], finished(TaskState::Ok, 3, "done"))
        .unwrap();
    let written = store.written();
    while log.committed() < written {
        assert!(Instant::now() < deadline, "the finish was never committed");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        commits(),
        before + 1,
        "the start and its finish: one commit"
    );
    let raw = rusqlite::Connection::open(&path).unwrap();
    let (state, started): (String, Option<i64>) = raw
        .query_row(
            "SELECT state, started FROM tasks WHERE id = ?1",
            [i64::try_from(ids[0]).unwrap()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(state, "ok");
    assert!(started.is_some(), "the start was lost");
}

/// What a crash keeps while starts are carried: a finish the hub let out
/// (its position committed, with no commit of its start alone before it)
/// is in the file with its start, as is a start carried into that same
/// commit; a start that came alone after it is lost, and its task is
/// pending again (to run again, as a restarted hub reruns a running task
/// anyway).
#[test]
fn a_crash_keeps_what_was_let_out_and_loses_only_a_start_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.db");
    let mut store = reopen(&path);
    let log = store.commits();
    let j = job(&mut store, "kai");
    let ids = tasks(&mut store, j, &[0, 1, 2]);
    store.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let settle = |store: &SqliteStore| {
        while log.committed() < store.written() {
            assert!(Instant::now() < deadline, "the position never moved");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    store.task_started(ids[0], 3, at(1), 1).unwrap();
    store.task_started(ids[1], 3, at(1), 1).unwrap();
    settle(&store);
    store
        .task_finished(ids[0], finished(TaskState::Ok, 3, "done"))
        .unwrap();
    // Here the hub lets the result of ids[0] out.
    settle(&store);
    let alone = Instant::now();
    store.task_started(ids[2], 3, at(2), 1).unwrap();
    settle(&store);
    // Past the carry's bound the writer may have committed it alone.
    let within_the_carry = alone.elapsed() < super::fold::CARRY_AT_MOST;
    store.crash();
    let mut store = reopen(&path);
    let states = states(&mut store, j);
    assert_eq!(states[..2], [TaskState::Ok, TaskState::Running]);
    if within_the_carry {
        assert_eq!(states[2], TaskState::Pending, "a start alone was committed");
    } else {
        assert!(matches!(states[2], TaskState::Pending | TaskState::Running));
    }
}

#[test]
fn the_commit_position_follows_the_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = reopen(&dir.path().join("position.db"));
    let log = store.commits();
    let j = job(&mut store, "kim");
    let ids = tasks(&mut store, j, &[0, 1, 2]);
    store.task_started(ids[0], 1, at(1), 1).unwrap();
    assert_eq!(store.written(), 3);
    store.flush().unwrap();
    assert_eq!(log.committed(), 3);
    let mut memory = MemoryStore::new();
    let m = job(&mut memory, "kim");
    tasks(&mut memory, m, &[0]);
    assert_eq!((memory.written(), memory.commits().committed()), (0, 0));
}

fn refusal(path: &Path, options: &StoreOptions) -> String {
    match SqliteStore::open_with(path, options) {
        Err(error) => error.to_string(),
        Ok(_) => panic!("{} was opened", path.display()),
    }
}

/// What is at a store path and is not a zcluster store is refused,
/// named, and left as it was: an empty file, other bytes, another
/// application's database, an empty database, a directory.
#[test]
fn a_path_that_holds_no_zcluster_store_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions::default();
    let empty = dir.path().join("empty.sqlite");
    std::fs::write(&empty, b"").unwrap();
    let text = refusal(&empty, &options);
    assert!(text.contains(&empty.display().to_string()), "{text}");
    assert!(text.contains("an empty file (0 bytes)"), "{text}");
    assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0, "left alone");

    let notes = dir.path().join("notes.sqlite");
    std::fs::write(&notes, "my notes, not a database\n").unwrap();
    let text = refusal(&notes, &options);
    assert!(text.contains("not a SQLite database"), "{text}");
    assert!(text.contains("my notes"), "{text}");

    let other = dir.path().join("other.sqlite");
    Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE photos (id INTEGER); INSERT INTO photos VALUES (1);")
        .unwrap();
    let text = refusal(&other, &options);
    assert!(
        text.contains("without zcluster's tables (it has: photos)"),
        "{text}"
    );
    let photos: i64 = Connection::open(&other)
        .unwrap()
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .unwrap();
    assert_eq!(photos, 1, "nothing added to it");

    let foreign = dir.path().join("foreign.sqlite");
    Connection::open(&foreign)
        .unwrap()
        .pragma_update(None, "application_id", 0x1234)
        .unwrap();
    let text = refusal(&foreign, &options);
    assert!(text.contains("another application"), "{text}");

    let blank = dir.path().join("blank.sqlite");
    Connection::open(&blank)
        .unwrap()
        .pragma_update(None, "journal_mode", "WAL")
        .unwrap();
    let text = refusal(&blank, &options);
    assert!(text.contains("an empty SQLite database"), "{text}");

    let text = refusal(dir.path(), &options);
    assert!(text.contains("a directory"), "{text}");
}

/// A store that holds fewer commits than its side file records is
/// refused, unless the rollback is accepted; then it carries on from
/// what it holds and the record follows it.
#[test]
fn a_store_behind_its_commit_record_is_refused_unless_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("behind.sqlite");
    let mut store = reopen(&path);
    let j = job(&mut store, "lena");
    tasks(&mut store, j, &[0, 1]);
    drop(store);
    let record = files::read_record(&path).unwrap().unwrap();
    assert!(record.commits >= 2, "{record:?}");
    // Reopened as it was: fine.
    drop(reopen(&path));
    // The record says more than the store holds (what a deleted -wal
    // leaves behind; the hub tests delete one for real).
    let ahead = record.commits + 5;
    std::fs::write(
        files::record_path(&path),
        format!("zcluster task store {:016x} {ahead:020}\n", record.store),
    )
    .unwrap();
    let text = refusal(&path, &StoreOptions::default());
    assert!(
        text.contains("is behind what was committed")
            && text.contains(&format!("holds {} commits", record.commits))
            && text.contains(&format!("{ahead} were made"))
            && text.contains("--accept-rollback"),
        "{text}"
    );
    let accept = StoreOptions {
        accept_rollback: true,
    };
    let mut store = SqliteStore::open_with(&path, &accept).unwrap();
    assert_eq!(states(&mut store, j).len(), 2, "what it holds");
    drop(store);
    assert_eq!(
        files::read_record(&path).unwrap().unwrap().store,
        record.store
    );
    drop(reopen(&path));

    // A damaged record cannot rule a rollback out either.
    std::fs::write(files::record_path(&path), "garbage").unwrap();
    let text = refusal(&path, &StoreOptions::default());
    assert!(text.contains("damaged"), "{text}");
    drop(SqliteStore::open_with(&path, &accept).unwrap());
    drop(reopen(&path));
}

/// Past [`CHECKPOINT_PAGES`] of WAL the checkpoint thread copies the
/// WAL into the database file, without the writer waiting for it.
#[test]
fn the_wal_is_checkpointed_by_a_thread_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkpoint.sqlite");
    let mut store = reopen(&path);
    let j = job(&mut store, "nina");
    let before = std::fs::metadata(&path).unwrap().len();
    let ids: Vec<TaskId> = store.next_task_ids(1500).unwrap().collect();
    store
        .add_tasks(
            ids.iter()
                .map(|&id| NewTask {
                    id,
                    job: j,
                    seq: id,
                    // Each its own bytes: the store keeps what a request
                    // shares with its job's first only once.
                    request: (0..4096u64)
                        .map(|i| (i.wrapping_mul(2_654_435_761) ^ id.wrapping_mul(40_503)) as u8)
                        .collect(),
                    submitted: at(0),
                })
                .collect(),
        )
        .unwrap();
    store.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::metadata(&path).unwrap().len() < before + (4 << 20) {
        assert!(Instant::now() < deadline, "no checkpoint");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(states(&mut store, j).len(), 1500);
}

/// A new store's file, its side file and the directories made for it
/// are their owner's only; an old store's 0644 files are narrowed.
#[test]
fn store_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("made").join("for").join("it.sqlite");
    let mut store = reopen(&path);
    let j = job(&mut store, "mo");
    tasks(&mut store, j, &[0]);
    store.flush().unwrap();
    for file in [
        path.clone(),
        files::beside(&path, "-wal"),
        files::beside(&path, "-shm"),
        files::record_path(&path),
    ] {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    assert_eq!(mode(&dir.path().join("made")), 0o700);
    drop(store);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    drop(reopen(&path));
    assert_eq!(mode(&path), 0o600);
}

#[test]
fn out_of_range_values_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = reopen(&dir.path().join("range.db"));
    let j = job(&mut store, "judy");
    assert!(matches!(
        store.set_job_total(j, u64::MAX),
        Err(StoreError::TooLarge { .. })
    ));
    let far = UNIX_EPOCH + Duration::from_secs(400 * 365 * 86_400);
    assert!(matches!(
        store.task_started(1, 1, far, 1),
        Err(StoreError::TimeOutOfRange { .. })
    ));
    let before_1970 = UNIX_EPOCH - Duration::from_secs(86_400);
    let id = store.next_task_ids(1).unwrap().start;
    store
        .add_tasks(vec![NewTask {
            id,
            job: j,
            seq: 0,
            request: vec![],
            submitted: before_1970,
        }])
        .unwrap();
    assert_eq!(
        store.tasks(&TaskFilter::Job(j), false).unwrap()[0].submitted,
        before_1970
    );
}

// --- throughput ----------------------------------------------------------

/// CPU time used so far by live writer threads (Linux; clock ticks of 10 ms).
fn writer_cpu() -> Option<Duration> {
    let mut ticks = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
        if comm.starts_with("zcluster-store") {
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            ticks += fields[11].parse::<u64>().ok()? + fields[12].parse::<u64>().ok()?;
        }
    }
    Some(Duration::from_millis(ticks * 10))
}

/// `cargo test --release -- --ignored --nocapture throughput`
#[test]
#[ignore = "benchmark; run in release"]
fn throughput() {
    const TASKS: u64 = 200_000;
    const BATCH: u64 = 1000;
    let dir = tempfile::tempdir().unwrap();
    let sqlite = dir.path().join("bench.db");
    for spec in [MemoryStore::LOCATION, sqlite.to_str().unwrap()] {
        let mut store = open(spec).unwrap();
        let begin = Instant::now();
        let j = job(&mut *store, "bench");
        let mut all = Vec::with_capacity(TASKS as usize);
        for _ in 0..TASKS / BATCH {
            let ids = store.next_task_ids(BATCH).unwrap();
            all.extend(ids.clone());
            store
                .add_tasks(
                    ids.map(|id| NewTask {
                        id,
                        job: j,
                        seq: id,
                        request: vec![7; 64],
                        submitted: at(0),
                    })
                    .collect(),
                )
                .unwrap();
        }
        for &id in &all {
            store.task_started(id, 1 + id % 16, at(1), 1).unwrap();
        }
        for &id in &all {
            store
                .task_finished(
                    id,
                    Finished {
                        status: TaskState::Ok,
                        result: vec![9; 64],
                        error: None,
                        completed: at(2),
                        engine: 1 + id % 16,
                        attempts: 1,
                    },
                )
                .unwrap();
        }
        let queued = begin.elapsed();
        store.flush().unwrap();
        let total = begin.elapsed();
        let events = (3 * TASKS) as f64;
        let writer = writer_cpu()
            .filter(|cpu| !cpu.is_zero())
            .map(|cpu| {
                format!(
                    "; writer thread CPU {cpu:?} = {:.0} events/CPU-s",
                    events / cpu.as_secs_f64()
                )
            })
            .unwrap_or_default();
        println!(
            "{spec}: {} events in {total:?} = {:.0} events/s end to end; \
             caller busy {queued:?}{writer}",
            3 * TASKS,
            events / total.as_secs_f64(),
        );
        assert_eq!(store.jobs().unwrap()[0].ok, TASKS);
    }
}

/// One task at a time, each write committed on its own (an idle hub's
/// round trips, one after another): the WAL stays within its bound though
/// the writes never pause long enough for the checkpoint thread to finish
/// a pass, and once it restarts, the file is cut back.
#[test]
fn the_wal_stays_bounded_under_back_to_back_commits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("busy.sqlite");
    let wal = dir.path().join("busy.sqlite-wal");
    let mut store = reopen(&path);
    let j = job(&mut store, "nina");
    let (mut largest, mut smallest_after) = (0, u64::MAX);
    let started = Instant::now();
    let mut tasks = 0;
    while started.elapsed() < Duration::from_secs(4) {
        let id = store.next_task_ids(1).unwrap().next().unwrap();
        store
            .add_tasks(vec![NewTask {
                id,
                job: j,
                seq: id,
                request: vec![7; 200],
                submitted: at(0),
            }])
            .unwrap();
        store.flush().unwrap();
        store.task_started(id, 1, at(1), 1).unwrap();
        store.flush().unwrap();
        store
            .task_finished(id, finished(TaskState::Ok, 1, "done"))
            .unwrap();
        store.flush().unwrap();
        tasks += 1;
        let size = std::fs::metadata(&wal).map_or(0, |m| m.len());
        largest = largest.max(size);
        if largest > (JOURNAL_SIZE_LIMIT_BYTES as u64) {
            smallest_after = smallest_after.min(size);
        }
    }
    let frame = 4096 + 24;
    let bound = (INLINE_CHECKPOINT_PAGES as u64 + 64) * frame;
    assert!(
        largest < bound,
        "the WAL reached {largest} bytes (bound {bound}) in {tasks} tasks"
    );
    assert!(
        largest < (JOURNAL_SIZE_LIMIT_BYTES as u64)
            || smallest_after <= JOURNAL_SIZE_LIMIT_BYTES as u64,
        "the WAL file was never cut back after reaching {largest} bytes"
    );
}
