//! Tasks that come several per message from a client: split at the job's
//! window, taken item by item, refused as a whole only when the message
//! does not decode, and dispatched only once their insert is committed.
//! On plain state, a recording outbox and a store whose commits the test
//! moves on by hand: no socket.

use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use super::outbox::{Recorder, Sent};
use super::tests::reactions::{answer_in, engine};
use super::{store, Core, HubOptions};
use crate::hub::commit::CommitLog;
use crate::hub::protocol::{ClientCall, EngineId, JobId, JobKind, Reply, SubmitItem};
use crate::hub::store::{
    EngineCounts, Finished, JobRecord, JobSummary, NewTask, Store, StoreError, StoreOptions,
    TaskFilter, TaskId, TaskRecord,
};
use crate::message::{encode_value, frames, ClusterRequest, Envelope, Header, MessageKind};

const CLIENT: &[u8] = b"client";

/// A memory store whose writes commit only when the test says: each write
/// takes the next position, and [`CommitLog::advance`] moves the committed
/// one, as the SQLite store's writer thread does.
struct CommitsByHand {
    inner: Box<dyn Store>,
    written: u64,
    log: Arc<CommitLog>,
}

impl CommitsByHand {
    fn write<T>(&mut self, done: Result<T, StoreError>) -> Result<T, StoreError> {
        self.written += 1;
        done
    }
}

impl Store for CommitsByHand {
    fn next_engine_id(&mut self) -> Result<EngineId, StoreError> {
        self.inner.next_engine_id()
    }
    fn next_job_id(&mut self) -> Result<JobId, StoreError> {
        self.inner.next_job_id()
    }
    fn next_task_ids(&mut self, n: u64) -> Result<Range<TaskId>, StoreError> {
        self.inner.next_task_ids(n)
    }
    fn add_job(&mut self, job: &JobRecord) -> Result<(), StoreError> {
        let done = self.inner.add_job(job);
        self.write(done)
    }
    fn set_job_total(&mut self, job: JobId, total: u64) -> Result<(), StoreError> {
        let done = self.inner.set_job_total(job, total);
        self.write(done)
    }
    fn add_tasks(&mut self, tasks: Vec<NewTask>) -> Result<(), StoreError> {
        let done = self.inner.add_tasks(tasks);
        self.write(done)
    }
    fn task_started(
        &mut self,
        task: TaskId,
        engine: EngineId,
        started: SystemTime,
        attempts: u32,
    ) -> Result<(), StoreError> {
        let done = self.inner.task_started(task, engine, started, attempts);
        self.write(done)
    }
    fn task_requeued(&mut self, task: TaskId) -> Result<(), StoreError> {
        let done = self.inner.task_requeued(task);
        self.write(done)
    }
    fn task_finished(&mut self, task: TaskId, finished: Finished) -> Result<(), StoreError> {
        let done = self.inner.task_finished(task, finished);
        self.write(done)
    }
    /// Commits everything written (the hub calls it before answering a
    /// call that must be durable: opening a job, say).
    fn flush(&mut self) -> Result<(), StoreError> {
        let behind = self.written - self.log.committed();
        self.log.advance(behind);
        Ok(())
    }
    fn written(&self) -> u64 {
        self.written
    }
    fn commits(&self) -> Arc<CommitLog> {
        Arc::clone(&self.log)
    }
    fn job(&mut self, job: JobId) -> Result<Option<JobRecord>, StoreError> {
        self.inner.job(job)
    }
    fn jobs(&mut self) -> Result<Vec<JobSummary>, StoreError> {
        self.inner.jobs()
    }
    fn tasks(
        &mut self,
        filter: &TaskFilter,
        with_payloads: bool,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        self.inner.tasks(filter, with_payloads)
    }
    fn engine_counts(&mut self) -> Result<Vec<EngineCounts>, StoreError> {
        self.inner.engine_counts()
    }
    fn unfinished(&mut self) -> Result<Vec<TaskRecord>, StoreError> {
        self.inner.unfinished()
    }
    fn purge_job(&mut self, job: JobId) -> Result<u64, StoreError> {
        self.inner.purge_job(job)
    }
    fn purge_engine(&mut self, engine: EngineId) -> Result<u64, StoreError> {
        self.inner.purge_engine(engine)
    }
    fn purge_completed(&mut self) -> Result<u64, StoreError> {
        self.inner.purge_completed()
    }
    fn reset_for_resubmit(
        &mut self,
        job: JobId,
        ids: Option<&[TaskId]>,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        self.inner.reset_for_resubmit(job, ids)
    }
    fn location(&self) -> String {
        "by hand".into()
    }
}

/// A hub with `credit` per job, on a memory store (committing each write
/// at once), or on one committing by hand (its log returned too).
fn hub(credit: u32, by_hand: bool) -> (Core<Recorder>, Option<Arc<CommitLog>>) {
    let inner = store::open_with(":memory:", &StoreOptions::default()).expect("memory store");
    let options = HubOptions {
        credit,
        credit_per_slot: 0,
        speculate: false,
        ..HubOptions::default()
    };
    if !by_hand {
        return (Core::new(Recorder::default(), inner, options, 1), None);
    }
    let log = Arc::new(CommitLog::with_wake().expect("a socket pair"));
    let store = CommitsByHand {
        inner,
        written: 0,
        log: Arc::clone(&log),
    };
    let core = Core::new(Recorder::default(), Box::new(store), options, 1);
    (core, Some(log))
}

/// Opens a job for [`CLIENT`].
fn open(hub: &mut Core<Recorder>) -> JobId {
    let open = ClientCall::OpenJob {
        kind: JobKind::Exec,
        description: "batch".into(),
        retries: 0,
        halt: None,
        cap: None,
        request: None,
    };
    hub.on_call(CLIENT.to_vec(), 1, open).expect("opened");
    match hub.outbox.take().pop() {
        Some(Sent::Reply {
            reply: Reply::JobOpened { job, .. },
            ..
        }) => job,
        other => panic!("not opened: {other:?}"),
    }
}

/// The client sends tasks `ids` of `job` in one message, as
/// `HubClient::send_task` batches them.
fn submit(hub: &mut Core<Recorder>, job: JobId, ids: &[u64]) {
    let items: Vec<SubmitItem> = ids
        .iter()
        .map(|&id| {
            let request = encode_value(&ClusterRequest::new(id, Vec::new()), "request");
            (id, serde_bytes::ByteBuf::from(request.expect("encoded")))
        })
        .collect();
    let header = Header {
        kind: MessageKind::Tasks,
        job,
        id: ids[0],
    };
    let frames = frames(&header, &items).expect("frames");
    hub.on_client(CLIENT.to_vec(), Envelope::from_frames(&frames));
}

/// The tasks sent to engines, in order.
fn dispatched(sent: &[Sent]) -> Vec<u64> {
    sent.iter()
        .filter_map(|s| match s {
            Sent::Tasks { tasks, .. } => Some(tasks.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// The failures sent to the client: (task, reason).
fn failures(sent: &[Sent]) -> Vec<(u64, String)> {
    sent.iter()
        .filter_map(|s| match s {
            Sent::Failure { task, reason, .. } => Some((*task, reason.clone())),
            _ => None,
        })
        .collect()
}

/// The store's tasks of `job`, by the client's id.
fn recorded(hub: &mut Core<Recorder>, job: JobId) -> Vec<u64> {
    let tasks = hub
        .store
        .tasks(&TaskFilter::Job(job), false)
        .expect("tasks");
    tasks.iter().map(|t| t.seq).collect()
}

#[test]
fn a_batch_of_tasks_is_recorded_and_dispatched_in_its_order() {
    let (mut hub, _) = hub(1024, false);
    engine(&mut hub, "a", 8);
    let job = open(&mut hub);
    submit(&mut hub, job, &[3, 1, 2, 5, 4]);
    hub.release();
    hub.dispatch();
    let sent = hub.outbox.take();
    assert_eq!(dispatched(&sent), [3, 1, 2, 5, 4]);
    assert!(failures(&sent).is_empty());
    assert_eq!(recorded(&mut hub, job), [1, 2, 3, 4, 5]);
}

/// A batch that takes the job past its credit is split at the window: the
/// tasks that fit are taken, each one past it refused with a failure of
/// its own (so the client hears about each exactly once). A task sent
/// twice, in the batch or before it, is dropped without an answer, as when
/// tasks came one per message.
#[test]
fn a_batch_past_the_credit_is_split_at_the_window_and_taken_item_by_item() {
    let (mut hub, _) = hub(4, false);
    engine(&mut hub, "a", 8);
    let job = open(&mut hub);
    submit(&mut hub, job, &[1]);
    submit(&mut hub, job, &[1, 2, 2, 3, 4, 5, 6]);
    hub.release();
    hub.dispatch();
    let sent = hub.outbox.take();
    assert_eq!(dispatched(&sent), [1, 2, 3, 4]);
    let refused: Vec<u64> = failures(&sent).iter().map(|f| f.0).collect();
    assert_eq!(refused, [5, 6]);
    assert!(failures(&sent)
        .iter()
        .all(|(_, reason)| reason.contains("credit")));
    assert_eq!(recorded(&mut hub, job), [1, 2, 3, 4]);
}

/// A batch whose body does not decode cannot be answered task by task (its
/// ids are not known): it is refused as a whole, as any bad message, and
/// nothing of it is recorded.
#[test]
fn a_batch_that_does_not_decode_is_refused_as_a_whole() {
    let (mut hub, _) = hub(1024, false);
    engine(&mut hub, "a", 8);
    let job = open(&mut hub);
    let header = Header {
        kind: MessageKind::Tasks,
        job,
        id: 1,
    };
    let frames = frames(&header, &(1u64, "not a list of tasks")).expect("frames");
    let refused = hub.refused;
    hub.on_client(CLIENT.to_vec(), Envelope::from_frames(&frames));
    hub.release();
    hub.dispatch();
    assert_eq!(hub.refused, refused + 1);
    assert!(hub.outbox.take().is_empty());
    assert!(recorded(&mut hub, job).is_empty());
}

/// Tasks of another client's job are refused each with a failure.
#[test]
fn a_batch_for_a_job_the_client_does_not_own_is_refused_task_by_task() {
    let (mut hub, _) = hub(1024, false);
    engine(&mut hub, "a", 8);
    let job = open(&mut hub);
    let items: Vec<SubmitItem> = vec![(7, Default::default()), (8, Default::default())];
    let header = Header {
        kind: MessageKind::Tasks,
        job,
        id: 7,
    };
    let frames = frames(&header, &items).expect("frames");
    hub.on_client(b"stranger".to_vec(), Envelope::from_frames(&frames));
    let sent = hub.outbox.take();
    let refused: Vec<u64> = failures(&sent).iter().map(|f| f.0).collect();
    assert_eq!(refused, [7, 8]);
    assert!(recorded(&mut hub, job).is_empty());
}

fn result_of(hub: &mut Core<Recorder>, engine: EngineId, job: JobId, id: u64) {
    answer_in(hub, engine, job, id, true, std::time::Duration::ZERO);
}

/// Nothing of a batch goes to an engine before its insert is committed,
/// and none of its results goes to the client before their finish is:
/// batching lets out only what the store holds.
#[test]
fn a_batch_is_dispatched_and_its_results_delivered_only_once_committed() {
    let (mut hub, log) = hub(1024, true);
    let log = log.expect("a log moved by hand");
    let a = engine(&mut hub, "a", 8);
    let job = open(&mut hub);
    submit(&mut hub, job, &[1, 2, 3]);
    hub.release();
    hub.dispatch();
    assert!(dispatched(&hub.outbox.take()).is_empty(), "not committed");
    hub.store.flush().expect("committed");
    hub.release();
    hub.dispatch();
    assert_eq!(dispatched(&hub.outbox.take()), [1, 2, 3]);
    for id in [1, 2, 3] {
        result_of(&mut hub, a, job, id);
    }
    hub.release();
    let delivered = |sent: &[Sent]| {
        sent.iter()
            .filter(|s| matches!(s, Sent::Result { .. }))
            .count()
    };
    assert_eq!(delivered(&hub.outbox.take()), 0, "finishes not committed");
    // One write committed: the starts (one per task) come first, so still
    // nothing; then all of them.
    log.advance(1);
    hub.release();
    assert_eq!(delivered(&hub.outbox.take()), 0);
    hub.store.flush().expect("committed");
    hub.release();
    assert_eq!(delivered(&hub.outbox.take()), 3);
}

/// A job opened on a cluster of many slots gets `credit_per_slot` per slot
/// where that is more than the hub's credit (so a thousand one-slot engines
/// can each have a few tasks queued), told in the reply and kept by the hub
/// for that job: tasks within it are taken, one past it refused.
#[test]
fn a_job_gets_credit_per_slot_registered_when_it_opens() {
    let inner = store::open_with(":memory:", &StoreOptions::default()).expect("memory store");
    let options = HubOptions {
        credit: 4,
        credit_per_slot: 2,
        speculate: false,
        ..HubOptions::default()
    };
    let mut hub = Core::new(Recorder::default(), inner, options, 1);
    engine(&mut hub, "a", 3);
    engine(&mut hub, "b", 2);
    let call = ClientCall::OpenJob {
        kind: JobKind::Exec,
        description: "credit".into(),
        retries: 0,
        halt: None,
        cap: None,
        request: None,
    };
    hub.on_call(CLIENT.to_vec(), 1, call).expect("opened");
    let (job, credit) = match hub.outbox.take().pop() {
        Some(Sent::Reply {
            reply: Reply::JobOpened { job, credit, .. },
            ..
        }) => (job, credit),
        other => panic!("not opened: {other:?}"),
    };
    assert_eq!(credit, 10, "2 per slot of 5 slots, more than 4");
    // An engine joining later does not change the job's credit.
    engine(&mut hub, "c", 8);
    let ids: Vec<u64> = (1..=11).collect();
    submit(&mut hub, job, &ids);
    hub.release();
    hub.dispatch();
    let sent = hub.outbox.take();
    let refused: Vec<u64> = failures(&sent).iter().map(|f| f.0).collect();
    assert_eq!(refused, [11]);
    assert_eq!(recorded(&mut hub, job).len(), 10);
}
