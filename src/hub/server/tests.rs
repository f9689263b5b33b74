//! Reactions of the hub on plain state, a memory store and a recording
//! outbox: no socket, no process.

use super::*;

#[test]
fn the_message_limit_stays_within_what_every_peer_accepts() {
    let limit = |max_message| {
        HubOptions {
            max_message,
            ..HubOptions::default()
        }
        .message_limit()
    };
    assert_eq!(limit(0), 1024);
    assert_eq!(limit(5 << 20), 5 << 20);
    assert_eq!(limit(usize::MAX), MAX_MESSAGE_BYTES);
}

pub(in crate::hub::server) mod reactions {
    use std::time::{Duration, Instant, SystemTime};

    use super::super::outbox::{Recorder, Sent};
    use super::super::state::Engine;
    use super::super::Core;
    use super::*;
    use crate::hub::protocol::{
        ClientCall, EngineId, HaltAt, HubToEngine, JobId, JobKind, Notification, Reply,
    };
    use crate::hub::store::StoreOptions;
    use crate::message::{
        frames, ClusterRequest, ClusterResult, Envelope, Header, MessageKind, ResultMetadata,
        ResultStatus,
    };

    const CLIENT: &[u8] = b"client";

    fn hub(options: HubOptions) -> Core<Recorder> {
        let store = store::open_with(":memory:", &StoreOptions::default()).expect("memory store");
        Core::new(Recorder::default(), store, options, 1)
    }

    /// Registers an engine named `name` with `slots` slots; its id (the
    /// batch tests register theirs with it too).
    pub(in crate::hub::server) fn engine(
        hub: &mut Core<Recorder>,
        name: &str,
        slots: u32,
    ) -> EngineId {
        let identity = name.as_bytes().to_vec();
        hub.register(Engine {
            name: name.into(),
            ..Engine::new(0, identity.clone(), slots, Instant::now())
        });
        hub.state.by_identity[&identity]
    }

    /// Opens a job and submits tasks `1..=tasks` to it.
    fn job(hub: &mut Core<Recorder>, tasks: u64) -> JobId {
        job_halting(hub, tasks, None)
    }

    /// The same, with a halt rule.
    fn job_halting(hub: &mut Core<Recorder>, tasks: u64, halt: Option<HaltAt>) -> JobId {
        job_with(hub, tasks, halt, 0)
    }

    /// The same, with a halt rule and `retries`.
    fn job_with(hub: &mut Core<Recorder>, tasks: u64, halt: Option<HaltAt>, retries: u32) -> JobId {
        let open = ClientCall::OpenJob {
            kind: JobKind::Exec,
            description: "test".into(),
            retries,
            halt,
            cap: None,
            request: None,
        };
        hub.on_call(CLIENT.to_vec(), 1, open).expect("opened");
        let job = match hub.outbox.take().pop() {
            Some(Sent::Reply {
                reply: Reply::JobOpened { job, .. },
                ..
            }) => job,
            other => panic!("not opened: {other:?}"),
        };
        for id in 1..=tasks {
            let header = Header {
                kind: MessageKind::Request,
                job,
                id,
            };
            let frames = frames(&header, &ClusterRequest::new(id, Vec::new())).expect("frames");
            hub.on_client(CLIENT.to_vec(), Envelope::from_frames(&frames));
        }
        job
    }

    /// Engine `engine` answers task `id` of `job`.
    fn answer(hub: &mut Core<Recorder>, engine: EngineId, job: JobId, id: u64, ok: bool) {
        answer_in(hub, engine, job, id, ok, Duration::ZERO);
    }

    /// Engine `engine` answers task `id` of `job`, its handler having run
    /// for `elapsed`.
    pub(in crate::hub::server) fn answer_in(
        hub: &mut Core<Recorder>,
        engine: EngineId,
        job: JobId,
        id: u64,
        ok: bool,
        elapsed: Duration,
    ) {
        let status = if ok {
            ResultStatus::Ok
        } else {
            ResultStatus::Fail
        };
        let result = ClusterResult {
            id,
            status,
            payload: Vec::new(),
            request_metadata: Default::default(),
            metadata: ResultMetadata {
                host: "h".into(),
                pid: 1,
                worker: "w".into(),
                started: SystemTime::now(),
                elapsed,
            },
            exception: (!ok).then(|| "failed".to_string()),
        };
        let body = result.to_body().expect("encoded");
        let header = Header::result(job, &result);
        hub.on_result(engine, header, &body, status, result.exception.clone());
    }

    /// A job's task times are how long its handler ran, as the engine
    /// says, not the time since the hub sent the task (which adds the
    /// round trip and the wait at the engine: at a thousand engines, tens
    /// of milliseconds for a no-op, enough to make a job of microsecond
    /// tasks look too long to batch or prefetch).
    #[test]
    fn a_jobs_task_times_are_what_the_engines_measured() {
        let mut hub = hub(HubOptions::default());
        let e = engine(&mut hub, "a", 1);
        let job = job(&mut hub, 1);
        hub.dispatch();
        assert_eq!(tasks_to(&hub.outbox.take(), "a"), [1]);
        // Sent 50 ms ago (as a task waits behind others at a busy engine).
        let task = hub
            .state
            .jobs
            .get_mut(&job)
            .and_then(|j| j.tasks.get_mut(&1));
        let sent = Instant::now() - Duration::from_millis(50);
        task.expect("task").started = Some(sent);
        answer_in(&mut hub, e, job, 1, true, Duration::from_micros(20));
        assert_eq!(
            hub.state.jobs[&job].median(),
            Some(Duration::from_micros(20))
        );
    }

    /// The tasks sent to `engine`, in order.
    fn tasks_to(sent: &[Sent], engine: &str) -> Vec<u64> {
        sent.iter()
            .filter_map(|s| match s {
                Sent::Tasks {
                    engine: to, tasks, ..
                } if to == engine.as_bytes() => Some(tasks.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    #[test]
    fn a_dead_engines_tasks_go_back_to_the_front_of_their_queue() {
        let mut hub = hub(HubOptions::default());
        let a = engine(&mut hub, "a", 1);
        let job = job(&mut hub, 5);
        hub.dispatch();
        // One slot, and a backlog: the task and one prefetched.
        assert_eq!(tasks_to(&hub.outbox.take(), "a"), [1, 2]);
        hub.unregister(a, "missed 3 heartbeats", true);
        let mut front: Vec<u64> = hub.state.jobs[&job].queue.iter().copied().collect();
        front[..2].sort_unstable();
        assert_eq!(front, [1, 2, 3, 4, 5]);
        // They are the first to run again, each in a message of its own
        // and with nothing queued behind it (an engine died holding each).
        let b = engine(&mut hub, "b", 1);
        hub.dispatch();
        let first = tasks_to(&hub.outbox.take(), "b");
        assert!(first == [1] || first == [2], "{first:?}");
        answer(&mut hub, b, job, first[0], true);
        hub.dispatch();
        let sent = hub.outbox.take();
        let other = 3 - first[0];
        assert!(
            sent.iter()
                .any(|s| matches!(s, Sent::Tasks { tasks, .. } if tasks == &[other])),
            "{sent:?}"
        );
        let mut rest = tasks_to(&sent, "b");
        rest.sort_unstable();
        let expected: Vec<u64> = (1..=5).filter(|&t| t != first[0]).collect();
        assert_eq!(rest, expected);
    }

    #[test]
    fn the_hub_halts_a_job_when_its_rule_is_met_and_starts_nothing_more() {
        let rules = [
            (
                HaltAt {
                    failures: Some(2),
                    successes: None,
                },
                [false, true, false],
            ),
            (
                HaltAt {
                    failures: None,
                    successes: Some(1),
                },
                [false, false, true],
            ),
        ];
        for (rule, outcomes) in rules {
            let mut hub = hub(HubOptions::default());
            let a = engine(&mut hub, "a", 1);
            let job = job_halting(&mut hub, 10, Some(rule));
            let mut ran = Vec::new();
            for ok in outcomes {
                hub.dispatch();
                // One slot and a long backlog, yet nothing prefetched.
                let sent = tasks_to(&hub.outbox.take(), "a");
                assert_eq!(sent.len(), 1, "{rule:?}: {sent:?}");
                ran.push(sent[0]);
                answer(&mut hub, a, job, sent[0], ok);
            }
            hub.dispatch();
            assert!(
                tasks_to(&hub.outbox.take(), "a").is_empty(),
                "{rule:?}: a task started after the rule was met"
            );
            assert_eq!(ran, [1, 2, 3], "{rule:?}");
            assert!(hub.state.jobs[&job].halted, "{rule:?}");
        }
    }

    /// The hub routes and records a result by what the engine says beside
    /// it (status, reason) and sends a retry with its attempt number beside
    /// the request: it never decodes a result body, nor rewrites a request.
    #[test]
    fn a_retry_carries_its_attempt_and_a_failure_its_reason_beside_bodies_never_decoded() {
        let mut hub = hub(HubOptions::default());
        let a = engine(&mut hub, "a", 1);
        let job = job_with(&mut hub, 1, None, 1);
        hub.dispatch();
        let first = hub.outbox.take();
        assert!(
            matches!(&first[..], [Sent::Tasks { tasks, attempts, .. }]
            if tasks[..] == [1] && attempts[..] == [1]),
            "{first:?}"
        );
        // A body that is no result at all: the hub must not need to read it.
        let opaque = b"not a bincode result".to_vec();
        let header = Header {
            kind: MessageKind::Result(ResultStatus::Fail),
            job,
            id: 1,
        };
        hub.on_result(
            a,
            header,
            &opaque,
            ResultStatus::Fail,
            Some("boom 1".into()),
        );
        let b = engine(&mut hub, "b", 1);
        hub.dispatch();
        let again: Vec<Sent> = hub
            .outbox
            .take()
            .into_iter()
            .filter(|s| matches!(s, Sent::Tasks { .. }))
            .collect();
        assert!(
            matches!(&again[..], [Sent::Tasks { engine, tasks, attempts, .. }]
                if engine[..] == *b"b" && tasks[..] == [1] && attempts[..] == [2]),
            "{again:?}"
        );
        // The request the engine got is the one recorded, byte for byte.
        let request = &hub.state.jobs[&job].tasks[&1].request;
        let sent = frames(
            &Header {
                kind: MessageKind::Request,
                job,
                id: 1,
            },
            &ClusterRequest::new(1, Vec::new()),
        )
        .expect("frames");
        let sent = Envelope::from_frames(&sent).expect("envelope");
        assert_eq!(request[..], sent.body()[..]);
        hub.on_result(
            b,
            header,
            &opaque,
            ResultStatus::Fail,
            Some("boom 2".into()),
        );
        let records = hub
            .store
            .tasks(&crate::hub::store::TaskFilter::Job(job), true)
            .expect("read");
        assert_eq!(records.len(), 1);
        let record = &records[0];
        assert_eq!(record.state, crate::hub::store::TaskState::Failed);
        assert_eq!(record.error.as_deref(), Some("boom 2"));
        assert_eq!(record.attempts, 2);
        assert_eq!(record.result.as_deref(), Some(&opaque[..]));
    }

    /// An engine that says it is draining gets no new tasks, and the hub
    /// says so on its notification socket, once.
    #[test]
    fn a_draining_engine_is_published_once_and_gets_no_new_tasks() {
        let mut hub = hub(HubOptions::default());
        let a = engine(&mut hub, "a", 1);
        let control = Header {
            kind: MessageKind::Control,
            job: 0,
            id: 0,
        };
        let draining =
            frames(&control, &crate::hub::protocol::EngineMessage::Draining).expect("frames");
        hub.outbox.take();
        for _ in 0..2 {
            hub.on_engine(
                b"a".to_vec(),
                Ok(Envelope::from_frames(&draining).expect("envelope")),
            );
        }
        let published: Vec<Sent> = hub
            .outbox
            .take()
            .into_iter()
            .filter(|s| matches!(s, Sent::Notify(_)))
            .collect();
        assert!(
            matches!(&published[..], [Sent::Notify(Notification::EngineDraining { engine, .. })] if *engine == a),
            "{published:?}"
        );
        assert!(hub.state.engines[&a].draining);
        let _job = job(&mut hub, 2);
        hub.dispatch();
        assert!(tasks_to(&hub.outbox.take(), "a").is_empty());
    }

    #[test]
    fn a_task_that_took_down_poison_limit_engines_fails() {
        let mut hub = hub(HubOptions {
            poison_limit: 2,
            ..HubOptions::default()
        });
        let job = job(&mut hub, 1);
        // An engine that leaves (rather than dies) costs the task nothing.
        let gone = engine(&mut hub, "gone", 1);
        hub.dispatch();
        hub.unregister(gone, "left", false);
        for (died, name) in ["a", "b"].into_iter().enumerate() {
            let id = engine(&mut hub, name, 1);
            hub.dispatch();
            assert_eq!(tasks_to(&hub.outbox.take(), name), [1]);
            hub.unregister(id, "missed 3 heartbeats", true);
            let failed = hub.outbox.take().into_iter().any(|s| {
                matches!(s, Sent::Failure { job: j, task: 1, ref reason, .. }
                    if j == job && reason.starts_with("2 engines died"))
            });
            assert_eq!(failed, died == 1, "after {} deaths", died + 1);
        }
        // Failed and finished: nothing left to run.
        assert!(!hub.state.jobs.contains_key(&job) || hub.state.jobs[&job].tasks.is_empty());
    }

    #[test]
    fn the_first_copy_of_a_straggler_to_finish_wins_and_the_other_is_cancelled() {
        let mut hub = hub(HubOptions::default());
        let a = engine(&mut hub, "a", 1);
        let job = job(&mut hub, 1);
        hub.dispatch();
        assert_eq!(tasks_to(&hub.outbox.take(), "a"), [1]);
        let b = engine(&mut hub, "b", 1);
        hub.outbox.take();
        {
            let j = hub.state.jobs.get_mut(&job).expect("job");
            for _ in 0..5 {
                j.record_duration(Duration::from_millis(10));
            }
            let task = j.tasks.get_mut(&1).expect("task");
            task.started = Instant::now().checked_sub(Duration::from_secs(10));
        }
        hub.speculate();
        assert_eq!(tasks_to(&hub.outbox.take(), "b"), [1]);
        // The copy finishes first: its result goes to the client, and the
        // original is cancelled.
        answer(&mut hub, b, job, 1, true);
        let sent = hub.outbox.take();
        assert!(sent.contains(&Sent::ToEngine {
            engine: b"a".to_vec(),
            message: HubToEngine::CancelTask { job, id: 1 },
        }));
        let delivered = |sent: &[Sent]| {
            sent.iter()
                .filter(|s| matches!(s, Sent::Result { header, .. } if header.id == 1))
                .count()
        };
        assert_eq!(delivered(&sent), 1);
        // The loser's answer (cancelled) is a duplicate: dropped.
        answer(&mut hub, a, job, 1, false);
        let sent = hub.outbox.take();
        assert_eq!(delivered(&sent), 0);
        assert!(!sent.iter().any(|s| matches!(s, Sent::Failure { .. })));
    }

    #[test]
    fn an_engine_that_cannot_be_reached_gets_no_more_and_its_tasks_go_elsewhere() {
        let mut hub = hub(HubOptions::default());
        engine(&mut hub, "a", 1);
        engine(&mut hub, "b", 1);
        hub.outbox.unreachable.insert(b"a".to_vec());
        let job = job(&mut hub, 2);
        hub.dispatch();
        let a = hub.state.by_identity[&b"a".to_vec()];
        assert!(hub.state.engines[&a].unreachable);
        assert!(hub.state.engines[&a].running.is_empty());
        let sent = hub.outbox.take();
        assert_eq!(tasks_to(&sent, "b").len(), 1);
        let queued: Vec<u64> = hub.state.jobs[&job].queue.iter().copied().collect();
        assert_eq!(queued.len(), 1);
        let task = &hub.state.jobs[&job].tasks[&queued[0]];
        assert_eq!((task.engine, task.attempts), (None, 0));
    }

    /// The events a job publishes: a failure with its reason, its end; a
    /// task that succeeds publishes nothing (the hub's cost per
    /// task stays what it was).
    #[test]
    fn a_job_publishes_its_failures_and_end_but_not_its_successes() {
        let mut hub = hub(HubOptions::default());
        let a = engine(&mut hub, "a", 4);
        hub.outbox.take();
        let job = job(&mut hub, 3);
        hub.dispatch();
        let notes = |sent: Vec<Sent>| -> Vec<Notification> {
            sent.into_iter()
                .filter_map(|s| match s {
                    Sent::Notify(n) => Some(n),
                    _ => None,
                })
                .collect()
        };
        hub.outbox.take();
        answer(&mut hub, a, job, 1, true);
        answer(&mut hub, a, job, 2, true);
        assert!(notes(hub.outbox.take()).is_empty());
        answer(&mut hub, a, job, 3, false);
        hub.on_call(CLIENT.to_vec(), 2, ClientCall::CloseJob { job, total: 3 })
            .expect("closed");
        let ended = notes(hub.outbox.take());
        assert!(
            matches!(
                &ended[..],
                [
                    Notification::TaskFailed { job: j, task: 3, engine: Some(e), attempts: 1, reason, .. },
                    Notification::JobFinished { succeeded: 2, failed: 1, .. },
                ] if *j == job && *e == a && reason == "failed"
            ),
            "{ended:?}"
        );
    }

    /// Registers an engine named `name` offering `cpus` cores and `gpus`.
    fn gpu_engine(hub: &mut Core<Recorder>, name: &str, cpus: u32, gpus: &str) -> EngineId {
        let offer =
            crate::resources::ResourceOffer::parse(cpus, Some(gpus), None, &[]).expect("offer");
        let identity = name.as_bytes().to_vec();
        hub.register(
            Engine {
                name: name.into(),
                ..Engine::new(0, identity.clone(), cpus, Instant::now())
            }
            .with_offer(offer),
        );
        hub.state.by_identity[&identity]
    }

    /// Opens a job whose tasks ask for `gpus` GPUs; the hub's reply.
    fn open_gpu_job(hub: &mut Core<Recorder>, gpus: &str) -> Reply {
        let request =
            crate::resources::ResourceRequest::parse(None, Some(gpus), None, &[]).expect("request");
        let open = ClientCall::OpenJob {
            kind: JobKind::Exec,
            description: "gpu".into(),
            retries: 0,
            halt: None,
            cap: None,
            request: Some(request),
        };
        hub.on_call(CLIENT.to_vec(), 1, open).expect("answered");
        match hub.outbox.take().pop() {
            Some(Sent::Reply { reply, .. }) => reply,
            other => panic!("no reply: {other:?}"),
        }
    }

    #[test]
    fn a_request_no_engine_can_ever_run_is_refused_naming_the_largest_offer() {
        let mut hub = hub(HubOptions::default());
        // No engine yet: the job waits for one.
        assert!(matches!(
            open_gpu_job(&mut hub, "2"),
            Reply::JobOpened { .. }
        ));
        gpu_engine(&mut hub, "a", 4, "0");
        let b = gpu_engine(&mut hub, "b", 8, "0");
        match open_gpu_job(&mut hub, "2") {
            Reply::Error(e) => assert_eq!(
                e,
                format!("no engine can ever run a task asking for 1 cpus, 2 gpus: the largest offer is engine {b}'s: 8 cpus, gpus 0")
            ),
            other => panic!("not refused: {other:?}"),
        }
        assert!(matches!(
            open_gpu_job(&mut hub, "1"),
            Reply::JobOpened { .. }
        ));
    }

    #[test]
    fn an_engine_heard_from_again_gets_gpu_tasks_again() {
        let mut hub = hub(HubOptions::default());
        let a = gpu_engine(&mut hub, "a", 4, "0");
        hub.outbox.unreachable.insert(b"a".to_vec());
        let Reply::JobOpened { job, .. } = open_gpu_job(&mut hub, "1") else {
            panic!("not opened");
        };
        let header = Header {
            kind: MessageKind::Request,
            job,
            id: 1,
        };
        let task = frames(&header, &ClusterRequest::new(1, Vec::new())).expect("frames");
        hub.on_client(CLIENT.to_vec(), Envelope::from_frames(&task));
        hub.dispatch();
        assert!(hub.state.engines[&a].unreachable);
        hub.outbox.take();
        hub.dispatch();
        assert!(tasks_to(&hub.outbox.take(), "a").is_empty());
        // It is heard from again: its GPU is on offer again.
        hub.outbox.unreachable.clear();
        let beat = Header {
            kind: MessageKind::Control,
            job: 0,
            id: 0,
        };
        let frames =
            frames(&beat, &crate::hub::protocol::EngineMessage::Heartbeat).expect("frames");
        hub.on_engine(
            b"a".to_vec(),
            Ok(Envelope::from_frames(&frames).expect("envelope")),
        );
        hub.dispatch();
        assert_eq!(tasks_to(&hub.outbox.take(), "a"), [1]);
    }

    #[test]
    fn status_says_what_a_waiting_job_waits_for_and_what_engines_use() {
        let mut hub = hub(HubOptions::default());
        gpu_engine(&mut hub, "a", 4, "0,1");
        let Reply::JobOpened { job, .. } = open_gpu_job(&mut hub, "1") else {
            panic!("not opened");
        };
        for id in 1..=3 {
            let header = Header {
                kind: MessageKind::Request,
                job,
                id,
            };
            let frames = frames(&header, &ClusterRequest::new(id, Vec::new())).expect("frames");
            hub.on_client(CLIENT.to_vec(), Envelope::from_frames(&frames));
        }
        hub.dispatch();
        assert_eq!(tasks_to(&hub.outbox.take(), "a").len(), 2, "one per GPU");
        let status = hub.status(false).expect("status");
        let engine = &status.engines[0];
        assert_eq!(engine.offer.as_deref(), Some("4 cpus, gpus 0,1"));
        assert_eq!(engine.in_use, "2/4 cpus, 2/2 gpus");
        let live = status.jobs.iter().find(|j| j.id == job).expect("job");
        assert_eq!(live.request.as_deref(), Some("1 cpus, 1 gpus"));
        assert_eq!(
            live.waiting_for.as_deref(),
            Some("1 cpus, 1 gpus: no engine has it free")
        );
    }
}

mod specs {
    use std::time::SystemTime;

    use serde::Serialize;

    use super::super::recovery::JobSpec;
    use crate::hub::protocol::{HaltAt, JobKind};
    use crate::hub::store::JobRecord;
    use crate::message::encode_value;

    fn record(spec: Vec<u8>) -> JobRecord {
        JobRecord {
            id: 1,
            submitted: SystemTime::now(),
            client: "described".into(),
            spec,
            total: None,
        }
    }

    #[test]
    fn a_job_keeps_its_cap_and_halt_rule_in_the_store_and_older_specs_theirs() {
        let rule = HaltAt {
            failures: Some(3),
            successes: None,
        };
        let spec = JobSpec::new(
            JobKind::Handler("h".into()),
            "d".into(),
            2,
            Some(rule),
            b"c".to_vec(),
            Some(3),
        );
        let back = JobSpec::of(&record(encode_value(&spec, "spec").expect("encoded")));
        assert_eq!(back.halt, Some(rule));
        assert_eq!((back.cap, back.retries, back.kind), (Some(3), 2, spec.kind));
        // With a resource request, kept; as a hub before requests wrote
        // it (a halt rule and a cap), still read, without one.
        let request = crate::resources::ResourceRequest::parse(None, Some("0.5"), None, &[])
            .expect("request");
        let requested = JobSpec::new(JobKind::Exec, "d".into(), 0, None, Vec::new(), None)
            .with_request(Some(request.clone()));
        let back = JobSpec::of(&record(encode_value(&requested, "spec").expect("encoded")));
        assert_eq!(back.request, Some(request));
        #[derive(Serialize)]
        struct Halting {
            kind: JobKind,
            description: String,
            retries: u32,
            halts: bool,
            client: Vec<u8>,
            cap: Option<u32>,
            halt: Option<HaltAt>,
        }
        let halting = Halting {
            kind: JobKind::Exec,
            description: "d".into(),
            retries: 5,
            halts: true,
            client: b"c".to_vec(),
            cap: Some(7),
            halt: Some(rule),
        };
        let back = JobSpec::of(&record(encode_value(&halting, "spec").expect("encoded")));
        assert_eq!(
            (back.cap, back.retries, back.halt, back.request),
            (Some(7), 5, Some(rule), None)
        );
        // As a hub before halt rules wrote it: a cap, and a halt on the
        // first failure.
        #[derive(Serialize)]
        struct Capped {
            kind: JobKind,
            description: String,
            retries: u32,
            halt_on_failure: bool,
            client: Vec<u8>,
            cap: Option<u32>,
        }
        let capped = Capped {
            kind: JobKind::Exec,
            description: "d".into(),
            retries: 2,
            halt_on_failure: true,
            client: b"c".to_vec(),
            cap: Some(4),
        };
        let back = JobSpec::of(&record(encode_value(&capped, "spec").expect("encoded")));
        assert_eq!(
            (back.cap, back.retries, &back.client[..]),
            (Some(4), 2, &b"c"[..])
        );
        assert_eq!(back.into_job().halt, Some(HaltAt::FIRST_FAILURE));
        // As a hub before caps wrote it: still carried on, retries and all.
        #[derive(Serialize)]
        struct Before {
            kind: JobKind,
            description: String,
            retries: u32,
            halt_on_failure: bool,
            client: Vec<u8>,
        }
        let before = Before {
            kind: JobKind::Exec,
            description: "d".into(),
            retries: 2,
            halt_on_failure: true,
            client: b"c".to_vec(),
        };
        let back = JobSpec::of(&record(encode_value(&before, "spec").expect("encoded")));
        assert_eq!((back.cap, back.retries, back.halts), (None, 2, true));
        assert_eq!(back.client, b"c");
        assert_eq!(back.into_job().halt, Some(HaltAt::FIRST_FAILURE));
        // Not a spec at all: a command job under the record's description.
        let back = JobSpec::of(&record(vec![0xff; 3]));
        assert_eq!(
            (back.kind, back.description),
            (JobKind::Exec, "described".into())
        );
    }
}
