//! Micro benchmarks of the hub's task store (`zcluster::hub::store`): what
//! recording a task costs with each store, per batch of tasks, always up to
//! a `flush` (the SQLite store only queues writes for its writer thread;
//! `flush` waits for the commit, as the hub does before acknowledging a
//! job, so the figures include the transaction, not just the queueing).
//!
//! `idle_round_trip` is what the store adds to one task's round trip through
//! an idle hub: its two commits, each waited for.
//!
//! Each benchmark runs for both stores (`memory`, `sqlite`: a file in a
//! temporary directory, WAL, as `zcluster hub` opens it) and for batches of
//! 64 and 1,024 tasks (a hub records what arrived in one poll of its
//! sockets). The stores grow over a run, as a hub's does.
//!
//! ```sh
//! cargo bench --bench store
//! cargo bench --bench store -- --sample-count 10 --max-time 1   # a quick look
//! ```

use std::cell::RefCell;
use std::ops::Range;
use std::time::SystemTime;

use divan::counter::ItemsCount;
use divan::Bencher;
use tempfile::TempDir;
use zcluster::hub::store::{
    EngineId, Finished, JobId, JobRecord, MemoryStore, NewTask, SqliteStore, Store, TaskId,
    TaskState,
};

fn main() {
    divan::main();
}

/// The two stores, as `zcluster hub --store` names them (`:memory:` or a path).
const STORES: [&str; 2] = ["memory", "sqlite"];

/// Bytes of a recorded request and result: a no-op task's encoded request
/// (payload and handler name) and result (payload and metadata) are of this
/// order.
const REQUEST_BYTES: usize = 40;
const RESULT_BYTES: usize = 100;

/// A store with one job and one engine, and the directory its file lives in.
struct Fixture {
    store: Box<dyn Store>,
    job: JobId,
    engine: EngineId,
    next_seq: u64,
    /// Record real encoded requests and results of a command job (see
    /// [`command_request`]) instead of filler bytes.
    command: bool,
    _dir: Option<TempDir>,
}

/// The encoded request of input `seq` of `zcluster map inputs -- true`,
/// as a client sends it and the hub records it: one task per chunk, with
/// the command and the client's directory.
fn command_request(seq: u64) -> Vec<u8> {
    use zcluster::exec::chunk::{ExecChunk, ExecTask};
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
    let request = zcluster::message::ClusterRequest::encode(seq, &ExecChunk { tasks: vec![task] })
        .expect("a request encodes");
    zcluster::message::encode_value(&request, "request").expect("a request encodes")
}

/// The encoded result of [`command_request`]`(seq)` as an engine sends it
/// and the hub records it: empty output, the request's metadata echoed,
/// where and when it ran.
fn command_result(seq: u64, job: JobId) -> Vec<u8> {
    use zcluster::message::{ClusterResult, ResultMetadata, ResultStatus};
    let result = ClusterResult {
        id: seq,
        status: ResultStatus::Ok,
        payload: Vec::new(),
        request_metadata: [("zcluster.job".to_string(), job.to_string())].into(),
        metadata: ResultMetadata {
            host: "node-17.cluster".into(),
            pid: 41_234,
            worker: format!("slot-{}", 1 + seq % 2),
            started: SystemTime::now(),
            elapsed: std::time::Duration::from_micros(900 + seq % 200),
        },
        exception: None,
    };
    zcluster::message::encode_value(&result, "result").expect("a result encodes")
}

impl Fixture {
    fn open(kind: &str) -> Fixture {
        let (mut store, dir): (Box<dyn Store>, _) = match kind {
            "memory" => (Box::new(MemoryStore::new()), None),
            "sqlite" => {
                let dir = tempfile::tempdir().expect("a temporary directory");
                let store = SqliteStore::open(dir.path().join("hub.sqlite"))
                    .expect("a new SQLite store opens");
                (Box::new(store), Some(dir))
            }
            other => panic!("unknown store kind {other:?}"),
        };
        let job = store.next_job_id().expect("a job id");
        store
            .add_job(&JobRecord {
                id: job,
                submitted: SystemTime::now(),
                client: "bench".into(),
                spec: b"noop".to_vec(),
                total: None,
            })
            .expect("the job is recorded");
        let engine = store.next_engine_id().expect("an engine id");
        store.flush().expect("the job is committed");
        Fixture {
            store,
            job,
            engine,
            next_seq: 0,
            command: false,
            _dir: dir,
        }
    }

    /// Records `n` new pending tasks (not flushed) and returns their ids.
    fn add(&mut self, n: usize) -> Range<TaskId> {
        let ids = self.store.next_task_ids(n as u64).expect("task ids");
        let now = SystemTime::now();
        let tasks = ids
            .clone()
            .map(|id| {
                self.next_seq += 1;
                NewTask {
                    id,
                    job: self.job,
                    seq: self.next_seq,
                    request: if self.command {
                        command_request(self.next_seq)
                    } else {
                        vec![7; REQUEST_BYTES]
                    },
                    submitted: now,
                }
            })
            .collect();
        self.store.add_tasks(tasks).expect("tasks are recorded");
        ids
    }

    fn start(&mut self, ids: Range<TaskId>) {
        let now = SystemTime::now();
        for id in ids {
            self.store
                .task_started(id, self.engine, now, 1)
                .expect("the start is recorded");
        }
    }

    fn finish(&mut self, ids: Range<TaskId>) {
        let now = SystemTime::now();
        // (Ids were handed out in seq order from 1, one job per fixture.)
        let first_seq = self.next_seq + 1 - (ids.end - ids.start);
        for (seq, id) in (first_seq..).zip(ids) {
            let finished = Finished {
                status: TaskState::Ok,
                result: if self.command {
                    command_result(seq, self.job)
                } else {
                    vec![9; RESULT_BYTES]
                },
                error: None,
                completed: now,
                engine: self.engine,
                attempts: 1,
            };
            self.store
                .task_finished(id, finished)
                .expect("the result is recorded");
        }
    }

    fn flush(&mut self) {
        self.store.flush().expect("the batch commits");
    }
}

/// A batch of new tasks recorded as pending, then committed.
#[divan::bench(consts = [64, 1024], args = STORES)]
fn add_tasks<const BATCH: usize>(bencher: Bencher, kind: &str) {
    let mut fixture = Fixture::open(kind);
    bencher.counter(ItemsCount::new(BATCH)).bench_local(|| {
        fixture.add(BATCH);
        fixture.flush();
    });
}

/// A batch of pending tasks marked as sent to an engine, then committed.
#[divan::bench(consts = [64, 1024], args = STORES)]
fn task_started<const BATCH: usize>(bencher: Bencher, kind: &str) {
    // The set-up (adding the batch) and the measured part share the store.
    let fixture = RefCell::new(Fixture::open(kind));
    bencher
        .counter(ItemsCount::new(BATCH))
        .with_inputs(|| {
            let mut fixture = fixture.borrow_mut();
            let ids = fixture.add(BATCH);
            fixture.flush();
            ids
        })
        .bench_local_values(|ids| {
            let mut fixture = fixture.borrow_mut();
            fixture.start(ids);
            fixture.flush();
        });
}

/// A batch of running tasks given their results, then committed.
#[divan::bench(consts = [64, 1024], args = STORES)]
fn task_finished<const BATCH: usize>(bencher: Bencher, kind: &str) {
    let fixture = RefCell::new(Fixture::open(kind));
    bencher
        .counter(ItemsCount::new(BATCH))
        .with_inputs(|| {
            let mut fixture = fixture.borrow_mut();
            let ids = fixture.add(BATCH);
            fixture.start(ids.clone());
            fixture.flush();
            ids
        })
        .bench_local_values(|ids| {
            let mut fixture = fixture.borrow_mut();
            fixture.finish(ids);
            fixture.flush();
        });
}

/// A task's whole life as the hub records it (added, started, finished),
/// for a batch, committed once: the store's cost per task of a no-op job.
#[divan::bench(consts = [64, 1024], args = STORES)]
fn lifecycle<const BATCH: usize>(bencher: Bencher, kind: &str) {
    let mut fixture = Fixture::open(kind);
    bencher.counter(ItemsCount::new(BATCH)).bench_local(|| {
        let ids = fixture.add(BATCH);
        fixture.start(ids.clone());
        fixture.finish(ids);
        fixture.flush();
    });
}

/// [`lifecycle`] with the real encoded request and result of a command
/// task (`zcluster map inputs -- true`), as the hub records them: what a
/// stored form that differs from the wire form costs the writer.
#[divan::bench(consts = [1024], args = ["sqlite"])]
fn command_lifecycle<const BATCH: usize>(bencher: Bencher, kind: &str) {
    let mut fixture = Fixture::open(kind);
    fixture.command = true;
    bencher.counter(ItemsCount::new(BATCH)).bench_local(|| {
        let ids = fixture.add(BATCH);
        fixture.start(ids.clone());
        fixture.finish(ids);
        fixture.flush();
    });
}

/// What the store adds to an idle round trip: one task's insert committed
/// (the hub dispatches nothing it did not commit), then its start and
/// finish committed (nor lets out a result it did not commit): two
/// commits of one task, each waited for, as an idle hub waits for them.
/// The memory store's figure is the hand-off alone.
#[divan::bench(args = STORES)]
fn idle_round_trip(bencher: Bencher, kind: &str) {
    let mut fixture = Fixture::open(kind);
    bencher.bench_local(|| {
        let ids = fixture.add(1);
        fixture.flush();
        fixture.start(ids.clone());
        fixture.finish(ids);
        fixture.flush();
    });
}
