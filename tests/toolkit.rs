//! The toolkit layer over real ZeroMQ sockets: ventilator, workers, sink,
//! devices and commands, over inproc, ipc and tcp on 127.0.0.1, with worker
//! threads and example-worker processes.
//!
//! Readiness is always observed (a ping answered, a probe received, a result
//! collected), never assumed after a sleep; [`FAIL_AFTER`] only bounds waits
//! that a passing test ends early.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command as Process;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use zcluster::commands::{CommandSender, Delivery};
use zcluster::devices::{forwarder, streamer, DeviceHandle};
use zcluster::message::{
    self, ClusterRequest, ClusterResult, Command, Envelope, Header, MessageKind, ResultMetadata,
    ResultStatus, PROTOCOL,
};
use zcluster::sink::{Sink, SinkError};
use zcluster::socket::{FutureSocket, SocketKind};
use zcluster::ventilator::Ventilator;
use zcluster::worker::{typed, Worker, WorkerError, WorkerExit, RESTART_EXIT_CODE};

use crate::common::*;

/// How long a device may take to stop, a process to exit after its kill
/// acknowledgement, and so on: "promptly", generously for a loaded machine.
const PROMPTLY: Duration = Duration::from_secs(5);

/// A short wait that must pass with nothing arriving.
const QUIET: Duration = Duration::from_millis(200);

/// How early libzmq's poll may return: it times out on a coarse,
/// millisecond clock.
const CLOCK_SLACK: Duration = Duration::from_millis(5);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// The example worker's handler, for worker threads.
fn square(n: u64) -> Result<u64, String> {
    n.checked_mul(n)
        .ok_or_else(|| format!("{n} squared would overflow u64"))
}

/// Request `id` carries this input.
fn input_of(id: u64) -> u64 {
    id * 7 + 3
}

/// Requests `0..n`, each with its input in the payload and the metadata.
fn square_requests(n: u64) -> Vec<ClusterRequest> {
    (0..n)
        .map(|id| {
            ClusterRequest::encode(id, &input_of(id))
                .expect("encode a request")
                .with_metadata("n", input_of(id).to_string())
        })
        .collect()
}

/// Asserts the results are exactly one success per id in `0..n`, each with
/// the square of its input and its request's metadata; returns how many each
/// worker handled.
fn assert_squares(results: &[Result<ClusterResult, SinkError>], n: u64) -> BTreeMap<String, u64> {
    let mut seen = BTreeSet::new();
    let mut per_worker = BTreeMap::new();
    for result in results {
        let result = result
            .as_ref()
            .unwrap_or_else(|e| panic!("unexpected failure: {e}"));
        assert!(result.id < n, "unknown id {}", result.id);
        assert!(seen.insert(result.id), "result {} arrived twice", result.id);
        assert_eq!(result.status, ResultStatus::Ok);
        assert_eq!(result.decode::<u64>().unwrap(), input_of(result.id).pow(2));
        assert_eq!(
            result.request_metadata.get("n"),
            Some(&input_of(result.id).to_string())
        );
        assert_eq!(result.exception, None);
        *per_worker
            .entry(result.metadata.worker.clone())
            .or_insert(0) += 1;
    }
    assert_eq!(
        seen.len() as u64,
        n,
        "{} distinct results for {n} requests",
        seen.len()
    );
    per_worker
}

/// Asserts nothing more arrives at the sink: one timeout, then the end.
fn assert_no_more_results(sink: &mut Sink) {
    let rest: Vec<_> = sink.receive(None, Some(QUIET)).collect();
    assert!(
        matches!(rest.as_slice(), [Err(SinkError::Timeout { .. })]),
        "expected only a timeout, got {rest:?}"
    );
}

fn expect_worker_failure(item: &Result<ClusterResult, SinkError>) -> &ClusterResult {
    match item {
        Err(SinkError::Worker(exception)) => &exception.result,
        other => panic!("expected a worker failure, got {other:?}"),
    }
}

fn expect_ok(item: &Result<ClusterResult, SinkError>) -> &ClusterResult {
    item.as_ref()
        .unwrap_or_else(|e| panic!("expected a result, got {e}"))
}

/// A result as a worker would send it.
fn result_of(id: u64, status: ResultStatus, payload: Vec<u8>) -> ClusterResult {
    ClusterResult {
        id,
        status,
        payload,
        request_metadata: Default::default(),
        metadata: ResultMetadata {
            host: "test-host".into(),
            pid: 4242,
            worker: "test-worker".into(),
            started: SystemTime::now(),
            elapsed: Duration::from_millis(1),
        },
        exception: (status == ResultStatus::Fail).then(|| "it broke".to_string()),
    }
}

fn result_frames(result: &ClusterResult) -> Vec<Vec<u8>> {
    let header = Header {
        kind: MessageKind::Result(result.status),
        job: 0,
        id: result.id,
    };
    message::frames(&header, result).unwrap()
}

fn request_frames(id: u64, n: u64) -> Vec<Vec<u8>> {
    Envelope::frames_of_request(&ClusterRequest::encode(id, &n).unwrap()).unwrap()
}

fn header(kind: MessageKind, id: u64) -> Header {
    Header { kind, job: 0, id }
}

/// A message's one frame with some of its parts replaced: another header,
/// signature or body (`None`: as it was).
fn altered(
    frames: &[Vec<u8>],
    header: Option<Header>,
    signature: Option<&[u8]>,
    body: Option<&[u8]>,
) -> Vec<Vec<u8>> {
    let parts = message::Parts::of(&frames[0]).unwrap();
    let header = header.unwrap_or_else(|| Header::from_bytes(parts.header).unwrap());
    let frame = message::encode_frame(
        &header,
        signature.unwrap_or(parts.signature),
        body.unwrap_or(parts.body),
    )
    .unwrap();
    vec![frame]
}

/// The same message, said to be of another protocol version.
fn of_version(frames: &[Vec<u8>], version: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = frames.to_vec();
    frames[0][..PROTOCOL.len()].copy_from_slice(version);
    frames
}

/// 1 to 6 frames of random bytes whose first frame cannot name a protocol.
fn random_frames(rng: &mut StdRng) -> Vec<Vec<u8>> {
    (0..rng.random_range(1..=6))
        .map(|i| {
            let mut frame = vec![0u8; rng.random_range(0..64)];
            rng.fill(&mut frame[..]);
            if i == 0 {
                frame.insert(0, b'!');
            }
            frame
        })
        .collect()
}

/// A seeded generator; the seed is printed so a failure can be replayed.
fn seeded_rng() -> StdRng {
    let seed: u64 = rand::rng().random();
    println!("random seed {seed}");
    StdRng::seed_from_u64(seed)
}

fn send_frames(socket: &zmq::Socket, frames: &[Vec<u8>]) {
    socket.send_multipart(frames, 0).expect("send raw frames");
}

/// A plain ZeroMQ socket connected to `url`, with a receive timeout so a
/// missing message fails the test instead of hanging it.
fn raw_socket(ctx: &zmq::Context, kind: zmq::SocketType, url: &str) -> zmq::Socket {
    let socket = ctx.socket(kind).unwrap();
    socket.set_linger(0).unwrap();
    socket.set_rcvtimeo(FAIL_AFTER.as_millis() as i32).unwrap();
    if kind == zmq::SUB {
        socket.set_subscribe(b"").unwrap();
    }
    socket.connect(url).unwrap();
    socket
}

/// Stops a device, asserting it ends cleanly and promptly. `stop` runs on
/// a thread so that a device that never stops fails the test instead of
/// hanging it (the stuck thread is left behind).
fn stop_promptly(device: DeviceHandle) {
    let stopper = thread::Builder::new()
        .name("device-stop".into())
        .spawn(move || device.stop())
        .unwrap();
    join_within(stopper, PROMPTLY).expect("device stops cleanly");
}

/// An example worker process connecting to `cluster`.
fn worker_process(cluster: &Cluster, name: &str) -> Process {
    let mut command = Process::new(example_binary("worker"));
    command.args([
        "--requests",
        &cluster.requests_url,
        "--results",
        &cluster.results_url,
        "--commands",
        &cluster.commands_url,
        "--responses",
        &cluster.responses_url,
        "--name",
        name,
    ]);
    command
}

// ---------------------------------------------------------------------------
// 1. Every request gives exactly one right result, over each transport.
// ---------------------------------------------------------------------------

fn pipeline_delivers_every_result_once(transport: Transport) {
    init_tracing();
    const N: u64 = 2_000;
    let mut cluster = Cluster::new(transport);
    let workers = cluster.spawn_workers("square", 3, |_| typed(square));
    cluster.wait_for_workers(3);
    let results = cluster.run(square_requests(N));
    let per_worker = assert_squares(&results, N);
    for (worker, handled) in &per_worker {
        assert!(worker.starts_with("square-"), "{worker} handled {handled}");
    }
    assert_no_more_results(&mut cluster.sink);
    cluster.kill_workers(workers);
}

#[test]
fn pipeline_delivers_every_result_once_over_inproc() {
    pipeline_delivers_every_result_once(Transport::Inproc);
}

#[test]
fn pipeline_delivers_every_result_once_over_ipc() {
    pipeline_delivers_every_result_once(Transport::Ipc);
}

#[test]
fn pipeline_delivers_every_result_once_over_tcp() {
    pipeline_delivers_every_result_once(Transport::Tcp);
}

#[test]
fn typed_sink_pairs_ids_with_decoded_payloads() {
    init_tracing();
    const N: u64 = 100;
    let mut cluster = Cluster::new(Transport::Inproc);
    let workers = cluster.spawn_workers("typed", 2, |_| typed(square));
    cluster.wait_for_workers(2);
    // N requests fit in the socket buffers, so one thread can send them all
    // before collecting.
    for request in square_requests(N) {
        message::send_request(cluster.ventilator_socket(), 9, &request).unwrap();
    }
    let pairs: BTreeMap<u64, u64> = cluster
        .sink
        .receive_typed::<u64>(Some(N as usize), Some(FAIL_AFTER))
        .map(|item| item.expect("typed result"))
        .collect();
    let expected: BTreeMap<u64, u64> = (0..N).map(|id| (id, input_of(id).pow(2))).collect();
    assert_eq!(pairs, expected);
    cluster.kill_workers(workers);
}

// ---------------------------------------------------------------------------
// 2. Kill stops every worker, thread or process.
// ---------------------------------------------------------------------------

#[test]
fn kill_stops_every_worker_thread() {
    init_tracing();
    let cluster = Cluster::new(Transport::Tcp);
    let workers = cluster.spawn_workers("doomed", 3, |_| typed(square));
    cluster.wait_for_workers(3);
    let acks = cluster
        .commands
        .send_kill(Delivery::expecting(3, FAIL_AFTER))
        .unwrap();
    let names: BTreeSet<_> = acks.iter().map(|a| a.worker.worker.as_str()).collect();
    assert_eq!(names, BTreeSet::from(["doomed-0", "doomed-1", "doomed-2"]));
    assert!(acks
        .iter()
        .all(|a| a.command == "kill" && a.token == acks[0].token));
    for worker in workers {
        assert_eq!(join_within(worker, PROMPTLY).unwrap(), WorkerExit::Killed);
    }
}

#[test]
fn kill_stops_every_worker_process() {
    init_tracing();
    const N: u64 = 300;
    let mut cluster = Cluster::new(Transport::Tcp);
    let mut processes = Processes::new();
    let names = ["proc-0", "proc-1", "proc-2"];
    for name in names {
        processes.spawn(name, worker_process(&cluster, name));
    }
    let pids: BTreeSet<u32> = (0..3).map(|i| processes.pid(i)).collect();
    let replies = cluster.wait_for_workers(3);
    let replied: BTreeSet<u32> = replies.iter().map(|r| r.worker.pid).collect();
    assert_eq!(replied, pids, "ping replies come from the three processes");
    let replied: BTreeSet<&str> = replies.iter().map(|r| r.worker.worker.as_str()).collect();
    assert_eq!(replied, BTreeSet::from(names));

    let results = cluster.run(square_requests(N));
    assert_squares(&results, N);
    for result in results.iter().flatten() {
        assert!(pids.contains(&result.metadata.pid), "{:?}", result.metadata);
    }

    let acks = cluster
        .commands
        .send_kill(Delivery::expecting(3, FAIL_AFTER))
        .unwrap();
    assert_eq!(acks.len(), 3, "kill acknowledgements: {acks:?}");
    let acked: BTreeSet<u32> = acks.iter().map(|a| a.worker.pid).collect();
    assert_eq!(acked, pids);
    for i in 0..3 {
        let status = processes.wait_exit(i, PROMPTLY);
        assert_eq!(
            status.code(),
            Some(0),
            "{status}; stderr:\n{}",
            processes.stderr(i)
        );
    }
}

// ---------------------------------------------------------------------------
// 3. Restart ends a worker with the restart status.
// ---------------------------------------------------------------------------

#[test]
fn restart_ends_a_worker_thread_with_the_restart_exit() {
    init_tracing();
    let cluster = Cluster::new(Transport::Inproc);
    let workers = cluster.spawn_workers("restarted", 1, |_| typed(square));
    cluster.wait_for_workers(1);
    let acks = cluster
        .commands
        .send_restart(Delivery::expecting(1, FAIL_AFTER))
        .unwrap();
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].command, "restart");
    let exit = join_within(workers.into_iter().next().unwrap(), PROMPTLY).unwrap();
    assert_eq!(exit, WorkerExit::Restart);
    assert_eq!(exit.exit_code(), RESTART_EXIT_CODE);
}

#[test]
fn restart_makes_a_worker_process_exit_75() {
    init_tracing();
    let cluster = Cluster::new(Transport::Tcp);
    let mut processes = Processes::new();
    processes.spawn("restarting", worker_process(&cluster, "restarting"));
    cluster.wait_for_workers(1);
    let acks = cluster
        .commands
        .send_restart(Delivery::expecting(1, FAIL_AFTER))
        .unwrap();
    assert_eq!(acks.len(), 1, "restart acknowledgements: {acks:?}");
    assert_eq!(acks[0].command, "restart");
    assert_eq!(acks[0].worker.pid, processes.pid(0));
    let status = processes.wait_exit(0, PROMPTLY);
    assert_eq!(RESTART_EXIT_CODE, 75);
    assert_eq!(
        status.code(),
        Some(RESTART_EXIT_CODE),
        "{status}; stderr:\n{}",
        processes.stderr(0)
    );
}

// ---------------------------------------------------------------------------
// 4. Ping: exactly one reply per worker, saying who and how much.
// ---------------------------------------------------------------------------

#[test]
fn ping_gets_exactly_one_reply_per_worker() {
    init_tracing();
    const N: u64 = 600;
    let mut cluster = Cluster::new(Transport::Ipc);
    let workers = cluster.spawn_workers("pinged", 3, |_| typed(square));
    let idle = cluster.wait_for_workers(3);
    for reply in &idle {
        assert_eq!(reply.requests_handled, 0, "{reply:?}");
        assert_eq!(reply.mean_time, Duration::ZERO, "{reply:?}");
    }

    let results = cluster.run(square_requests(N));
    let per_worker = assert_squares(&results, N);

    let replies = cluster
        .commands
        .ping(Delivery::expecting(3, FAIL_AFTER))
        .unwrap();
    assert_eq!(replies.len(), 3, "{replies:?}");
    let names: BTreeSet<&str> = replies.iter().map(|r| r.worker.worker.as_str()).collect();
    assert_eq!(names, BTreeSet::from(["pinged-0", "pinged-1", "pinged-2"]));
    let host = zcluster::host_name();
    let mut total = 0;
    for reply in &replies {
        assert_eq!(reply.command, "ping");
        assert_eq!(reply.token, replies[0].token);
        assert_eq!(reply.worker.host, host);
        assert_eq!(reply.worker.pid, std::process::id());
        let handled = per_worker.get(&reply.worker.worker).copied().unwrap_or(0);
        assert_eq!(
            reply.requests_handled, handled,
            "{reply:?} vs {per_worker:?}"
        );
        total += reply.requests_handled;
    }
    assert_eq!(total, N);

    // On the wire: a ping published ten times under one token is answered
    // once by each worker (all subscribed, as the pings above proved).
    let token = 0x5eed_0001;
    let header = Header {
        kind: MessageKind::Command,
        job: 0,
        id: token,
    };
    for _ in 0..10 {
        message::send(cluster.commands.publisher(), &header, &Command::Ping, 0).unwrap();
    }
    let replies_socket = cluster.commands.replies().unwrap();
    let mut answered = Vec::new();
    let deadline = Instant::now() + FAIL_AFTER;
    loop {
        let left = if answered.len() < 3 {
            deadline.saturating_duration_since(Instant::now())
        } else {
            QUIET
        };
        if replies_socket
            .poll(zmq::POLLIN, left.as_millis() as i64)
            .unwrap()
            == 0
        {
            break;
        }
        let reply = message::recv(replies_socket, 0).unwrap().reply().unwrap();
        if reply.token == token {
            answered.push(reply.worker.worker);
        }
    }
    answered.sort();
    assert_eq!(answered, ["pinged-0", "pinged-1", "pinged-2"]);

    cluster.kill_workers(workers);
}

// ---------------------------------------------------------------------------
// 5. Handler failures are results, and the worker goes on.
// ---------------------------------------------------------------------------

/// Squares its input, except 13 (panics) and 7 (an error).
fn fragile(request: &ClusterRequest) -> Result<Vec<u8>, String> {
    let n: u64 = request.decode().map_err(|e| e.to_string())?;
    match n {
        13 => panic!("unlucky number {n}"),
        7 => Err(format!("{n} is not allowed")),
        _ => message::encode_value(&(n * n), "square").map_err(|e| e.to_string()),
    }
}

#[test]
fn handler_panic_and_error_fail_one_request_and_the_worker_goes_on() {
    init_tracing();
    let mut cluster = Cluster::new(Transport::Inproc);
    let workers = cluster.spawn_workers("fragile", 1, |_| fragile);
    cluster.wait_for_workers(1);
    let inputs: [(u64, u64); 4] = [(1, 13), (2, 3), (3, 7), (4, 4)];
    let requests = inputs
        .iter()
        .map(|&(id, n)| ClusterRequest::encode(id, &n).unwrap())
        .collect();
    // One worker: results come back in request order.
    let results = cluster.run(requests);
    assert_eq!(results.len(), 4, "{results:?}");
    let host = zcluster::host_name();
    let pid = std::process::id();

    let panicked = expect_worker_failure(&results[0]);
    assert_eq!(panicked.id, 1);
    assert_eq!(panicked.status, ResultStatus::Fail);
    assert!(panicked.payload.is_empty());
    let message = panicked.exception.as_deref().unwrap();
    assert!(message.contains("panicked"), "{message}");
    assert!(message.contains("unlucky number 13"), "{message}");
    assert_eq!(panicked.metadata.host, host);
    assert_eq!(panicked.metadata.pid, pid);
    assert_eq!(panicked.metadata.worker, "fragile-0");
    let shown = results[0].as_ref().unwrap_err().to_string();
    assert!(
        shown.contains(&host) && shown.contains(&pid.to_string()) && shown.contains("unlucky"),
        "{shown}"
    );

    let after_panic = expect_ok(&results[1]);
    assert_eq!(
        (after_panic.id, after_panic.decode::<u64>().unwrap()),
        (2, 9)
    );
    assert_eq!(after_panic.metadata.worker, "fragile-0");
    assert_eq!(after_panic.metadata.pid, pid);

    let failed = expect_worker_failure(&results[2]);
    assert_eq!(failed.id, 3);
    assert_eq!(failed.exception.as_deref(), Some("7 is not allowed"));
    assert_eq!(failed.metadata.worker, "fragile-0");

    let after_error = expect_ok(&results[3]);
    assert_eq!(
        (after_error.id, after_error.decode::<u64>().unwrap()),
        (4, 16)
    );

    let replies = cluster.wait_for_workers(1);
    assert_eq!(replies[0].requests_handled, 4, "failures count as handled");
    cluster.kill_workers(workers);
}

/// With a batching ventilator (7 requests per message, so the last batch
/// is short), every request still gets exactly one result, a panic or an
/// error fails only its own request, and the workers go on.
#[test]
fn batched_requests_get_one_result_each_and_fail_alone() {
    init_tracing();
    const N: u64 = 500;
    let mut cluster = Cluster::new(Transport::Tcp);
    cluster.batch(7);
    let workers = cluster.spawn_workers("batched", 2, |_| fragile);
    cluster.wait_for_workers(2);
    let requests = (0..N)
        .map(|id| {
            ClusterRequest::encode(id, &id)
                .unwrap()
                .with_metadata("n", id.to_string())
        })
        .collect();
    let results = cluster.run(requests);
    let mut seen = BTreeSet::new();
    for item in &results {
        let result = match item {
            Ok(result) => result,
            Err(SinkError::Worker(exception)) => &exception.result,
            Err(e) => panic!("unexpected {e}"),
        };
        assert!(seen.insert(result.id), "result {} twice", result.id);
        assert_eq!(
            result.request_metadata.get("n"),
            Some(&result.id.to_string())
        );
        match result.id {
            13 => assert!(result.exception.as_deref().unwrap().contains("panicked")),
            7 => assert_eq!(result.exception.as_deref(), Some("7 is not allowed")),
            id => assert_eq!(expect_ok(item).decode::<u64>().unwrap(), id * id),
        }
    }
    assert_eq!(seen.len() as u64, N);
    assert_no_more_results(&mut cluster.sink);
    let handled: u64 = cluster
        .wait_for_workers(2)
        .iter()
        .map(|r| r.requests_handled)
        .sum();
    assert_eq!(handled, N);
    cluster.kill_workers(workers);
}

#[test]
fn overflow_in_a_worker_process_is_a_failure() {
    init_tracing();
    let mut cluster = Cluster::new(Transport::Tcp);
    let mut processes = Processes::new();
    processes.spawn("overflowing", worker_process(&cluster, "overflowing"));
    cluster.wait_for_workers(1);
    let requests = vec![
        ClusterRequest::encode(1, &(1u64 << 32)).unwrap(),
        ClusterRequest::encode(2, &12u64).unwrap(),
        ClusterRequest::encode(3, &u64::from(u32::MAX)).unwrap(),
    ];
    let results = cluster.run(requests);
    assert_eq!(results.len(), 3, "{results:?}");
    let overflow = expect_worker_failure(&results[0]);
    assert_eq!(overflow.id, 1);
    let message = overflow.exception.as_deref().unwrap();
    assert!(message.contains("overflow"), "{message}");
    assert_eq!(overflow.metadata.pid, processes.pid(0));
    assert_eq!(overflow.metadata.worker, "overflowing");
    let ok = expect_ok(&results[1]);
    assert_eq!((ok.id, ok.decode::<u64>().unwrap()), (2, 144));
    let ok = expect_ok(&results[2]);
    assert_eq!(ok.decode::<u64>().unwrap(), u64::from(u32::MAX).pow(2));

    let acks = cluster
        .commands
        .send_kill(Delivery::expecting(1, FAIL_AFTER))
        .unwrap();
    assert_eq!(acks.len(), 1);
    let status = processes.wait_exit(0, PROMPTLY);
    assert_eq!(
        status.code(),
        Some(0),
        "{status}; stderr:\n{}",
        processes.stderr(0)
    );
}

// ---------------------------------------------------------------------------
// 6. Sink: timeouts, counts and kill-sink.
// ---------------------------------------------------------------------------

#[test]
fn sink_with_no_workers_times_out_exactly_once() {
    init_tracing();
    let ctx = zmq::Context::new();
    let (results, _) = bind_tcp(&ctx, SocketKind::Pull);
    let mut sink = Sink::new(&ctx, results).unwrap();
    let timeout = Duration::from_millis(200);
    let started = Instant::now();
    let items: Vec<_> = sink.receive(None, Some(timeout)).collect();
    let elapsed = started.elapsed();
    assert!(
        matches!(items.as_slice(), [Err(SinkError::Timeout { waited })] if *waited == timeout),
        "{items:?}"
    );
    assert!(
        elapsed + CLOCK_SLACK >= timeout,
        "timed out after {elapsed:?}"
    );
    // A typed receive ends the same way.
    let items: Vec<_> = sink.receive_typed::<u64>(Some(5), Some(timeout)).collect();
    assert!(
        matches!(items.as_slice(), [Err(SinkError::Timeout { .. })]),
        "{items:?}"
    );
}

#[test]
fn sink_stops_after_the_requested_number_of_results() {
    init_tracing();
    let ctx = zmq::Context::new();
    let endpoints = Endpoints::new(Transport::Inproc);
    let (results, url) = endpoints.bind(&ctx, SocketKind::Pull, "counted");
    let mut sink = Sink::new(&ctx, results).unwrap();
    let push = raw_socket(&ctx, zmq::PUSH, &url);
    for id in 0..5 {
        let status = if id == 2 {
            ResultStatus::Fail
        } else {
            ResultStatus::Ok
        };
        let payload = message::encode_value(&id, "payload").unwrap();
        let payload = if id == 2 { Vec::new() } else { payload };
        message::send_result(&push, 0, &result_of(id, status, payload), 0).unwrap();
    }
    let first: Vec<_> = sink.receive(Some(3), Some(FAIL_AFTER)).collect();
    assert_eq!(first.len(), 3, "{first:?}");
    assert_eq!(expect_ok(&first[0]).id, 0);
    assert_eq!(expect_ok(&first[1]).id, 1);
    let failure = expect_worker_failure(&first[2]);
    assert_eq!(
        (failure.id, failure.exception.as_deref()),
        (2, Some("it broke"))
    );
    let rest: Vec<u64> = sink
        .receive(Some(2), Some(FAIL_AFTER))
        .map(|item| item.unwrap().decode::<u64>().unwrap())
        .collect();
    assert_eq!(rest, [3, 4]);
    assert_no_more_results(&mut sink);
}

#[test]
fn kill_sink_command_ends_a_receive_loop() {
    init_tracing();
    let ctx = zmq::Context::new();
    let (results, results_url) = bind_tcp(&ctx, SocketKind::Pull);
    let (publisher, commands_url) = bind_tcp(&ctx, SocketKind::Pub);
    let commands = CommandSender::new(&ctx, publisher, None).unwrap();
    let mut sink = Sink::new(&ctx, results)
        .unwrap()
        .commands(&ctx, FutureSocket::connect(commands_url, SocketKind::Sub))
        .unwrap();
    let (items, received) = mpsc::channel();
    let receiver = thread::spawn(move || {
        // No count and no timeout: only a kill-sink ends this loop.
        for item in sink.receive(None, None) {
            items
                .send(item.map(|r| r.id).map_err(|e| e.to_string()))
                .unwrap();
        }
    });
    let push = raw_socket(&ctx, zmq::PUSH, &results_url);
    for id in [10, 11] {
        message::send_result(&push, 0, &result_of(id, ResultStatus::Ok, vec![0]), 0).unwrap();
    }
    for id in [10, 11] {
        assert_eq!(received.recv_timeout(FAIL_AFTER).unwrap(), Ok(id));
    }
    // Sinks send no reply, so `send_kill_sink` cannot confirm delivery:
    // repeat short deliveries until the loop ends.
    let deadline = Instant::now() + FAIL_AFTER;
    while !receiver.is_finished() {
        assert!(Instant::now() < deadline, "the sink ignored kill-sink");
        commands
            .send_kill_sink(Delivery {
                wait: Duration::from_millis(100),
                expect: None,
                repeat_every: Duration::from_millis(20),
            })
            .unwrap();
    }
    join_within(receiver, PROMPTLY);
    assert_eq!(received.try_recv(), Err(mpsc::TryRecvError::Disconnected));
}

/// The timeout bounds the wait for a result, whatever else arrives. Fails
/// with the sink as of this writing: `Sink::next_result` polls again with the
/// full timeout after every command or bad message, so commands repeated on
/// a shared command bus (every 50 ms while a ping is delivered) keep the
/// sink waiting. Fix: poll until a deadline fixed when `next_result` starts.
#[test]
fn sink_timeout_is_not_reset_by_commands_it_ignores() {
    init_tracing();
    let ctx = zmq::Context::new();
    let (results, _) = bind_tcp(&ctx, SocketKind::Pull);
    let (publisher, commands_url) = bind_tcp(&ctx, SocketKind::Pub);
    let mut sink = Sink::new(&ctx, results)
        .unwrap()
        .commands(&ctx, FutureSocket::connect(commands_url, SocketKind::Sub))
        .unwrap();
    // Pings every 20 ms, as a ping delivery repeats them, for up to 3 s or
    // until the sink has timed out.
    let stop = Arc::new(AtomicBool::new(false));
    let pinging = Arc::clone(&stop);
    let pinger = thread::spawn(move || {
        let header = Header {
            kind: MessageKind::Command,
            job: 0,
            id: 77,
        };
        let deadline = Instant::now() + Duration::from_secs(3);
        while !pinging.load(Ordering::Relaxed) && Instant::now() < deadline {
            message::send(&publisher, &header, &Command::Ping, 0).unwrap();
            thread::sleep(Duration::from_millis(20));
        }
    });
    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    let items: Vec<_> = sink.receive(None, Some(timeout)).collect();
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    join_within(pinger, FAIL_AFTER);
    assert!(
        matches!(items.as_slice(), [Err(SinkError::Timeout { .. })]),
        "{items:?}"
    );
    assert!(
        elapsed < Duration::from_millis(1500),
        "a {timeout:?} timeout took {elapsed:?} while commands arrived"
    );
}

// ---------------------------------------------------------------------------
// 7. A worker's receive timeout.
// ---------------------------------------------------------------------------

#[test]
fn worker_receive_timeout_ends_run() {
    init_tracing();
    let ctx = zmq::Context::new();
    let endpoints = Endpoints::new(Transport::Inproc);
    // A ventilator and a sink that never speak.
    let (_requests, requests_url) = endpoints.bind(&ctx, SocketKind::Push, "idle-requests");
    let (_results, results_url) = endpoints.bind(&ctx, SocketKind::Pull, "idle-results");
    let timeout = Duration::from_millis(250);
    let mut worker = Worker::builder(
        FutureSocket::connect(requests_url, SocketKind::Pull),
        FutureSocket::connect(results_url, SocketKind::Push),
    )
    .receive_timeout(timeout)
    .build(&ctx, typed(square))
    .unwrap();
    let started = Instant::now();
    let outcome = worker.run();
    let elapsed = started.elapsed();
    assert!(
        matches!(outcome, Err(WorkerError::Timeout { waited }) if waited == timeout),
        "{outcome:?}"
    );
    assert!(
        elapsed + CLOCK_SLACK >= timeout && elapsed < PROMPTLY,
        "{elapsed:?}"
    );
    assert!(outcome.unwrap_err().to_string().contains("250ms"));
    assert_eq!(worker.stats().requests_handled, 0);
}

#[test]
fn worker_process_exits_1_on_receive_timeout() {
    init_tracing();
    let ctx = zmq::Context::new();
    let (_requests, requests_url) = bind_tcp(&ctx, SocketKind::Push);
    let (_results, results_url) = bind_tcp(&ctx, SocketKind::Pull);
    let mut processes = Processes::new();
    let mut command = Process::new(example_binary("worker"));
    command.args([
        "--requests",
        &requests_url,
        "--results",
        &results_url,
        "--commands",
        "none",
        "--responses",
        "none",
        "--timeout",
        "300ms",
    ]);
    processes.spawn("idle", command);
    let status = processes.wait_exit(0, FAIL_AFTER);
    let stderr = processes.stderr(0);
    assert_eq!(status.code(), Some(1), "{status}; stderr:\n{stderr}");
    assert!(stderr.contains("no request arrived"), "stderr:\n{stderr}");
}

// ---------------------------------------------------------------------------
// 8. Devices.
// ---------------------------------------------------------------------------

/// What a capture reader collected, and its socket: keep the socket open
/// until the device has stopped, as a PUSH capture blocks the device when its
/// reader is gone (see `device_stops_promptly_when_nobody_reads_its_capture`).
type Captured = (Vec<Vec<Vec<u8>>>, zmq::Socket);

/// Collects multipart messages from a PULL connected to `url` on a thread
/// (a device's PUSH capture blocks when nobody reads it) until it has `n`
/// that `keep` accepts.
fn collect_capture(
    ctx: &zmq::Context,
    url: &str,
    n: usize,
    keep: impl Fn(&[Vec<u8>]) -> bool + Send + 'static,
) -> thread::JoinHandle<Captured> {
    let capture = raw_socket(ctx, zmq::PULL, url);
    thread::spawn(move || {
        let mut copies = Vec::new();
        while copies.len() < n {
            let frames = capture
                .recv_multipart(0)
                .unwrap_or_else(|e| panic!("capture message {} of {n}: {e}", copies.len()));
            if keep(&frames) {
                copies.push(frames);
            }
        }
        (copies, capture)
    })
}

/// Ventilator -> streamer -> workers -> sink, the brokered topology. Not
/// over tcp: `DeviceHandle` does not tell which port a device bound for
/// `tcp://127.0.0.1:*`, and a fixed port could be taken.
fn streamer_brokers_requests_to_workers(transport: Transport) {
    init_tracing();
    const N: u64 = 500;
    let ctx = zmq::Context::new();
    let endpoints = Endpoints::new(transport);
    let front = endpoints.bind_url("streamer-front");
    let back = endpoints.bind_url("streamer-back");
    let capture = endpoints.bind_url("streamer-capture");
    let device = streamer(
        FutureSocket::bind(front.clone(), SocketKind::Pull),
        FutureSocket::bind(back.clone(), SocketKind::Push),
    )
    .capture(FutureSocket::bind(capture.clone(), SocketKind::Push))
    .spawn(&ctx)
    .unwrap();
    let captured = collect_capture(&ctx, &capture, N as usize, |_| true);

    let (results, results_url) = endpoints.bind(&ctx, SocketKind::Pull, "results");
    let (publisher, commands_url) = endpoints.bind(&ctx, SocketKind::Pub, "commands");
    let (replies, responses_url) = endpoints.bind(&ctx, SocketKind::Pull, "responses");
    let mut sink = Sink::new(&ctx, results).unwrap();
    let commands = CommandSender::new(&ctx, publisher, Some(replies.into())).unwrap();
    let setup = WorkerSetup {
        requests: back,
        results: results_url,
        commands: Some(commands_url),
        responses: Some(responses_url),
        name_prefix: "brokered".into(),
        receive_timeout: None,
    };
    let workers = spawn_workers(&ctx, &setup, 3, |_| typed(square));
    let ready = commands.ping(Delivery::expecting(3, FAIL_AFTER)).unwrap();
    assert_eq!(ready.len(), 3);

    let mut ventilator = Ventilator::new(&ctx, FutureSocket::connect(front, SocketKind::Push))
        .unwrap()
        .worker_connect_delay(Duration::ZERO);
    let sender = thread::spawn(move || ventilator.send(square_requests(N)).unwrap());
    let results: Vec<_> = sink.receive(Some(N as usize), Some(FAIL_AFTER)).collect();
    assert_eq!(join_within(sender, FAIL_AFTER), N as usize);
    assert_squares(&results, N);
    assert_no_more_results(&mut sink);

    // The capture saw a copy of every request, intact.
    let (copies, capture_socket) = join_within(captured, FAIL_AFTER);
    let copies: BTreeSet<u64> = copies
        .iter()
        .map(|frames| {
            let request = Envelope::from_frames(frames).unwrap().request().unwrap();
            assert_eq!(request.decode::<u64>().unwrap(), input_of(request.id));
            request.id
        })
        .collect();
    assert_eq!(copies, (0..N).collect());

    let acks = commands
        .send_kill(Delivery::expecting(3, FAIL_AFTER))
        .unwrap();
    assert_eq!(acks.len(), 3);
    for worker in workers {
        assert_eq!(join_within(worker, PROMPTLY).unwrap(), WorkerExit::Killed);
    }
    stop_promptly(device);
    drop(capture_socket);
}

#[test]
fn streamer_brokers_requests_to_workers_over_inproc() {
    streamer_brokers_requests_to_workers(Transport::Inproc);
}

#[test]
fn streamer_brokers_requests_to_workers_over_ipc() {
    streamer_brokers_requests_to_workers(Transport::Ipc);
}

/// Command sender -> forwarder -> workers: a kill reaches every worker.
fn forwarder_relays_kill_to_every_worker(transport: Transport) {
    init_tracing();
    let ctx = zmq::Context::new();
    let endpoints = Endpoints::new(transport);
    let (publisher, upstream) = endpoints.bind(&ctx, SocketKind::Pub, "commands");
    let (replies, responses_url) = endpoints.bind(&ctx, SocketKind::Pull, "responses");
    let commands = CommandSender::new(&ctx, publisher, Some(replies.into())).unwrap();
    let back = endpoints.bind_url("forwarder-back");
    // Over inproc, everything the device copied is readable once it stops.
    let capture = Endpoints::new(Transport::Inproc).bind_url("forwarder-capture");
    let device = forwarder(
        FutureSocket::connect(upstream, SocketKind::Sub),
        FutureSocket::bind(back.clone(), SocketKind::Pub),
    )
    .capture(FutureSocket::bind(capture.clone(), SocketKind::Push))
    .spawn(&ctx)
    .unwrap();
    let captured = raw_socket(&ctx, zmq::PULL, &capture);

    // Workers that get no work: only commands matter here.
    let (_requests, requests_url) = endpoints.bind(&ctx, SocketKind::Push, "requests");
    let (_results, results_url) = endpoints.bind(&ctx, SocketKind::Pull, "results");
    let setup = WorkerSetup {
        requests: requests_url,
        results: results_url,
        commands: Some(back),
        responses: Some(responses_url),
        name_prefix: "forwarded".into(),
        receive_timeout: None,
    };
    let workers = spawn_workers(&ctx, &setup, 3, |_| typed(square));
    let acks = commands
        .send_kill(Delivery::expecting(3, FAIL_AFTER))
        .unwrap();
    let names: BTreeSet<&str> = acks.iter().map(|a| a.worker.worker.as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["forwarded-0", "forwarded-1", "forwarded-2"])
    );
    for worker in workers {
        assert_eq!(join_within(worker, PROMPTLY).unwrap(), WorkerExit::Killed);
    }
    stop_promptly(device);

    // Every copy is the kill that was acknowledged, except that libzmq
    // (4.3.4, proxy.cpp:420) also copies the control socket's TERMINATE.
    let mut copies = Vec::new();
    while captured
        .poll(zmq::POLLIN, QUIET.as_millis() as i64)
        .unwrap()
        > 0
    {
        copies.push(captured.recv_multipart(0).unwrap());
    }
    if copies.last() == Some(&vec![b"TERMINATE".to_vec()]) {
        copies.pop();
    }
    assert!(!copies.is_empty(), "the capture saw no command");
    for frames in &copies {
        let envelope = Envelope::from_frames(frames).unwrap();
        assert_eq!(envelope.header.id, acks[0].token);
        assert_eq!(envelope.command().unwrap(), Command::Kill);
    }
}

#[test]
fn forwarder_relays_kill_to_every_worker_over_inproc() {
    forwarder_relays_kill_to_every_worker(Transport::Inproc);
}

#[test]
fn forwarder_relays_kill_to_every_worker_over_ipc() {
    forwarder_relays_kill_to_every_worker(Transport::Ipc);
}

/// Three-frame messages of arbitrary bytes that no zcluster peer would send.
fn foreign_messages(n: usize, rng: &mut StdRng) -> Vec<Vec<Vec<u8>>> {
    (0..n)
        .map(|i| {
            let mut last = vec![0u8; rng.random_range(0..2_000)];
            rng.fill(&mut last[..]);
            vec![format!("foreign-{i}").into_bytes(), Vec::new(), last]
        })
        .collect()
}

#[test]
fn streamer_relays_foreign_multipart_messages_intact() {
    init_tracing();
    let mut rng = seeded_rng();
    let ctx = zmq::Context::new();
    let endpoints = Endpoints::new(Transport::Ipc);
    let front = endpoints.bind_url("front");
    let back = endpoints.bind_url("back");
    let capture = endpoints.bind_url("capture");
    let device = streamer(
        FutureSocket::bind(front.clone(), SocketKind::Pull),
        FutureSocket::bind(back.clone(), SocketKind::Push),
    )
    .capture(FutureSocket::bind(capture.clone(), SocketKind::Push))
    .spawn(&ctx)
    .unwrap();
    let messages = foreign_messages(50, &mut rng);
    let captured = collect_capture(&ctx, &capture, messages.len(), |_| true);
    let push = raw_socket(&ctx, zmq::PUSH, &front);
    let pull = raw_socket(&ctx, zmq::PULL, &back);
    for frames in &messages {
        send_frames(&push, frames);
    }
    for (i, sent) in messages.iter().enumerate() {
        let got = pull
            .recv_multipart(0)
            .unwrap_or_else(|e| panic!("message {i}: {e}"));
        assert_eq!(&got, sent, "message {i}");
    }
    let (copies, capture_socket) = join_within(captured, FAIL_AFTER);
    assert_eq!(copies, messages);
    stop_promptly(device);
    drop(capture_socket);
}

#[test]
fn forwarder_relays_foreign_multipart_messages_intact() {
    init_tracing();
    let mut rng = seeded_rng();
    let ctx = zmq::Context::new();
    let endpoints = Endpoints::new(Transport::Ipc);
    let (publisher, upstream) = endpoints.bind(&ctx, SocketKind::Pub, "upstream");
    let back = endpoints.bind_url("back");
    let capture = endpoints.bind_url("capture");
    let device = forwarder(
        FutureSocket::connect(upstream, SocketKind::Sub),
        FutureSocket::bind(back.clone(), SocketKind::Pub),
    )
    .capture(FutureSocket::bind(capture.clone(), SocketKind::Push))
    .spawn(&ctx)
    .unwrap();
    let probe = vec![b"probe".to_vec()];
    let messages = foreign_messages(50, &mut rng);
    let not_probe = probe.clone();
    let captured = collect_capture(&ctx, &capture, messages.len(), move |frames| {
        frames != not_probe.as_slice()
    });
    let subscriber = raw_socket(&ctx, zmq::SUB, &back);

    // PUB/SUB drops whatever precedes a subscription: probe until the whole
    // path (publisher -> forwarder -> subscriber) is live.
    let deadline = Instant::now() + FAIL_AFTER;
    loop {
        assert!(Instant::now() < deadline, "no probe crossed the forwarder");
        send_frames(&publisher, &probe);
        if subscriber.poll(zmq::POLLIN, 20).unwrap() > 0 {
            break;
        }
    }
    for frames in &messages {
        send_frames(&publisher, frames);
    }
    let mut got = Vec::new();
    while got.len() < messages.len() {
        let frames = subscriber.recv_multipart(0).expect("a relayed message");
        if frames != probe {
            got.push(frames);
        }
    }
    assert_eq!(got, messages);
    // The capture saw every message that crossed, probes aside.
    let (copies, capture_socket) = join_within(captured, FAIL_AFTER);
    assert_eq!(copies, messages);
    stop_promptly(device);
    drop(capture_socket);
}

/// A capture nobody reads must not keep a device from stopping. Fails with
/// the devices as of this writing: libzmq 4.3.4 (proxy.cpp:420) copies the
/// TERMINATE command that `DeviceHandle::stop` sends to the capture socket
/// with a blocking send, and a PUSH capture with no reader blocks forever.
/// Fix: relay in Rust and copy to the capture with `DONTWAIT`.
#[test]
fn device_stops_promptly_when_nobody_reads_its_capture() {
    init_tracing();
    let ctx = zmq::Context::new();
    let endpoints = Endpoints::new(Transport::Inproc);
    let device = streamer(
        FutureSocket::bind(endpoints.bind_url("front"), SocketKind::Pull),
        FutureSocket::bind(endpoints.bind_url("back"), SocketKind::Push),
    )
    .capture(FutureSocket::bind(
        endpoints.bind_url("capture"),
        SocketKind::Push,
    ))
    .spawn(&ctx)
    .unwrap();
    assert!(!device.is_finished());
    stop_promptly(device);
}

// ---------------------------------------------------------------------------
// 9. Bad input is dropped, or answered with a failure when it has an id.
// ---------------------------------------------------------------------------

#[test]
fn worker_drops_garbage_and_fails_requests_with_corrupt_bodies() {
    init_tracing();
    let mut rng = seeded_rng();
    let mut cluster = Cluster::new(Transport::Tcp);
    let workers = cluster.spawn_workers("sturdy", 1, |_| typed(square));
    cluster.wait_for_workers(1);

    let mut garbage: Vec<Vec<Vec<u8>>> = (0..20).map(|_| random_frames(&mut rng)).collect();
    garbage.push(vec![Vec::new()]);
    garbage.push(vec![vec![0xff; 4]; 4]);
    garbage.push(of_version(&request_frames(1001, 5), b"zcluster/9"));
    // A zcluster/5 peer's four frames.
    garbage.push(vec![
        b"zcluster/5".to_vec(),
        Vec::new(),
        vec![0, 0, 1],
        vec![1, 2],
    ]);
    garbage.push(altered(
        &request_frames(1002, 5),
        None,
        Some(&[1; 32]),
        None,
    ));
    let mut bad_header = request_frames(1003, 5);
    bad_header[0][PROTOCOL.len() + 1] = 0xff;
    garbage.push(bad_header);
    let mut truncated = request_frames(1003, 5);
    truncated[0].truncate(PROTOCOL.len() + 5);
    garbage.push(truncated);
    let mut two_frames = request_frames(1004, 5);
    two_frames.push(b"extra".to_vec());
    garbage.push(two_frames);
    // Well-formed, but not requests: a result, and a kill on the request
    // socket (which must not kill the worker).
    garbage.push(result_frames(&result_of(1005, ResultStatus::Ok, vec![1])));
    garbage.push(
        message::frames(
            &Header {
                kind: MessageKind::Command,
                job: 0,
                id: 1006,
            },
            &Command::Kill,
        )
        .unwrap(),
    );

    // A valid request header with a corrupt body, and one whose body names
    // another id: the worker knows the id, so it answers with a failure.
    let corrupt =
        vec![message::encode_frame(&header(MessageKind::Request, 2002), &[], &[0xff; 7]).unwrap()];
    let mismatched = altered(
        &request_frames(4, 5),
        Some(header(MessageKind::Request, 3003)),
        None,
        None,
    );

    let requests = cluster.ventilator_socket();
    for frames in &garbage {
        send_frames(requests, frames);
    }
    send_frames(requests, &corrupt);
    for frames in &garbage {
        send_frames(requests, frames);
    }
    send_frames(requests, &mismatched);
    send_frames(requests, &request_frames(1, 5));

    // One worker over one connection: results come in order, and once the
    // last is in, all the garbage before it has been read.
    let results: Vec<_> = cluster.sink.receive(Some(3), Some(FAIL_AFTER)).collect();
    assert_eq!(results.len(), 3, "{results:?}");
    let failed = expect_worker_failure(&results[0]);
    assert_eq!(failed.id, 2002);
    let message = failed.exception.as_deref().unwrap();
    assert!(message.contains("bad request"), "{message}");
    let failed = expect_worker_failure(&results[1]);
    assert_eq!(failed.id, 3003);
    let message = failed.exception.as_deref().unwrap();
    assert!(
        message.contains("bad request") && message.contains("3003"),
        "{message}"
    );
    let ok = expect_ok(&results[2]);
    assert_eq!((ok.id, ok.decode::<u64>().unwrap()), (1, 25));

    // Garbage and a wrong-version kill on the command channel are dropped
    // too; the ping after them is answered, so they were read first.
    let publisher = cluster.commands.publisher();
    for frames in garbage.iter().take(5) {
        send_frames(publisher, frames);
    }
    let wrong_version_kill = of_version(
        &message::frames(&header(MessageKind::Command, 1007), &Command::Kill).unwrap(),
        b"zcluster/0",
    );
    send_frames(publisher, &wrong_version_kill);
    let replies = cluster.wait_for_workers(1);
    assert_eq!(
        replies[0].requests_handled, 3,
        "garbage is not counted as handled"
    );

    // And the worker goes on serving.
    for frames in &garbage {
        send_frames(cluster.ventilator_socket(), frames);
    }
    let results = cluster.run(vec![ClusterRequest::encode(2, &6u64).unwrap()]);
    let ok = expect_ok(&results[0]);
    assert_eq!((ok.id, ok.decode::<u64>().unwrap()), (2, 36));
    assert_no_more_results(&mut cluster.sink);
    cluster.kill_workers(workers);
}

#[test]
fn sink_drops_garbage_and_wrong_versions() {
    init_tracing();
    let mut rng = seeded_rng();
    let ctx = zmq::Context::new();
    let endpoints = Endpoints::new(Transport::Ipc);
    let (results, url) = endpoints.bind(&ctx, SocketKind::Pull, "results");
    let mut sink = Sink::new(&ctx, results).unwrap();
    let push = raw_socket(&ctx, zmq::PUSH, &url);

    let ok = result_of(
        1,
        ResultStatus::Ok,
        message::encode_value(&1u64, "p").unwrap(),
    );
    for frames in (0..20).map(|_| random_frames(&mut rng)) {
        send_frames(&push, &frames);
    }
    let wrong_version = of_version(
        &result_frames(&result_of(100, ResultStatus::Ok, vec![])),
        b"zcluster/9",
    );
    send_frames(&push, &wrong_version);
    send_frames(&push, &request_frames(101, 5));
    // The header says OK, the body says FAIL.
    let status_mismatch = altered(
        &result_frames(&result_of(102, ResultStatus::Fail, vec![])),
        Some(header(MessageKind::Result(ResultStatus::Ok), 102)),
        None,
        None,
    );
    send_frames(&push, &status_mismatch);
    let corrupt = vec![message::encode_frame(
        &header(MessageKind::Result(ResultStatus::Ok), 103),
        &[],
        &[0xff; 9],
    )
    .unwrap()];
    send_frames(&push, &corrupt);
    let signed = altered(
        &result_frames(&result_of(104, ResultStatus::Ok, vec![])),
        None,
        Some(&[7; 32]),
        None,
    );
    send_frames(&push, &signed);
    send_frames(&push, &result_frames(&ok));
    send_frames(
        &push,
        &result_frames(&result_of(2, ResultStatus::Fail, vec![])),
    );

    let items: Vec<_> = sink.receive(Some(2), Some(FAIL_AFTER)).collect();
    assert_eq!(items.len(), 2, "{items:?}");
    assert_eq!(expect_ok(&items[0]), &ok);
    assert_eq!(expect_worker_failure(&items[1]).id, 2);
    assert_no_more_results(&mut sink);
}

// ---------------------------------------------------------------------------
// 10. Slow joiners still get commands.
// ---------------------------------------------------------------------------

#[test]
fn kill_reaches_a_worker_that_subscribes_after_the_first_publish() {
    init_tracing();
    let ctx = zmq::Context::new();
    let endpoints = Endpoints::new(Transport::Tcp);
    let (publisher, commands_url) = endpoints.bind(&ctx, SocketKind::Pub, "commands");
    let (replies, responses_url) = endpoints.bind(&ctx, SocketKind::Pull, "responses");
    let (_requests, requests_url) = endpoints.bind(&ctx, SocketKind::Push, "requests");
    let (_results, results_url) = endpoints.bind(&ctx, SocketKind::Pull, "results");
    let commands = CommandSender::new(&ctx, publisher, Some(replies.into())).unwrap();
    let probe = raw_socket(&ctx, zmq::SUB, &commands_url);

    let sender = thread::spawn(move || commands.send_kill(Delivery::expecting(1, FAIL_AFTER)));
    // Once the probe has a copy, the kill has been published at least once,
    // and the worker below did not exist yet.
    let first = probe.recv_multipart(0).expect("the kill is published");
    let envelope = Envelope::from_frames(&first).unwrap();
    assert_eq!(envelope.command().unwrap(), Command::Kill);
    let token = envelope.header.id;

    let setup = WorkerSetup {
        requests: requests_url,
        results: results_url,
        commands: Some(commands_url),
        responses: Some(responses_url),
        name_prefix: "late".into(),
        receive_timeout: None,
    };
    let worker = spawn_workers(&ctx, &setup, 1, |_| typed(square))
        .pop()
        .unwrap();
    assert_eq!(join_within(worker, FAIL_AFTER).unwrap(), WorkerExit::Killed);
    let acks = join_within(sender, FAIL_AFTER).unwrap();
    assert_eq!(acks.len(), 1, "{acks:?}");
    assert_eq!(acks[0].token, token);
    assert_eq!(acks[0].worker.worker, "late-0");
}
