//! Shared set-up for the integration tests: endpoints on every transport,
//! worker threads, a whole ventilator/workers/sink/commands cluster, and
//! example-binary processes that are always killed and reaped.
//!
//! Every wait here is bounded by [`FAIL_AFTER`], which a passing test never
//! comes near: it only turns a hang into a failure with a message.

// Each test module uses a different part of this one.
#![allow(dead_code)]

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use zcluster::commands::{CommandSender, Delivery};
use zcluster::message::{ClusterRequest, ClusterResult, CommandReply};
use zcluster::sink::{Sink, SinkError};
use zcluster::socket::{last_endpoint, FutureSocket, SocketKind};
use zcluster::ventilator::Ventilator;
use zcluster::worker::{Handler, Worker, WorkerError, WorkerExit};

/// Bound on any single wait: reached only when something is broken.
pub const FAIL_AFTER: Duration = Duration::from_secs(20);

/// Logs to the test's captured output when `RUST_LOG` asks for it.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// The ZeroMQ transports the toolkit runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Inproc,
    Ipc,
    Tcp,
}

/// Fresh addresses on one transport; ipc ones live in a temporary directory
/// removed on drop (keep this alive as long as the sockets).
pub struct Endpoints {
    transport: Transport,
    dir: Option<TempDir>,
}

static NEXT_NAME: AtomicU64 = AtomicU64::new(0);

impl Endpoints {
    pub fn new(transport: Transport) -> Self {
        let dir = (transport == Transport::Ipc).then(|| {
            tempfile::Builder::new()
                .prefix("zc")
                .tempdir()
                .expect("temp dir for ipc")
        });
        Endpoints { transport, dir }
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// A URL to bind a new socket on: a wildcard port on 127.0.0.1 for tcp
    /// (read the real one back with [`last_endpoint`]), a new path or name
    /// otherwise, which peers can connect to as it is.
    pub fn bind_url(&self, name: &str) -> String {
        let n = NEXT_NAME.fetch_add(1, Ordering::Relaxed);
        match self.transport {
            Transport::Tcp => "tcp://127.0.0.1:*".to_string(),
            Transport::Ipc => {
                let dir = self.dir.as_ref().expect("ipc endpoints have a directory");
                format!("ipc://{}/{name}-{n}", dir.path().display())
            }
            Transport::Inproc => format!("inproc://{name}-{n}"),
        }
    }

    /// A socket of `kind` bound on a fresh address, and the address peers
    /// connect to.
    pub fn bind(&self, ctx: &zmq::Context, kind: SocketKind, name: &str) -> (zmq::Socket, String) {
        let url = self.bind_url(name);
        let socket = FutureSocket::bind(url.clone(), kind)
            .make(ctx)
            .unwrap_or_else(|e| panic!("cannot bind {kind} on {url}: {e}"));
        let endpoint = last_endpoint(&socket).expect("bound socket has an endpoint");
        (socket, endpoint)
    }
}

/// A socket of `kind` bound on `tcp://127.0.0.1:*` and its real endpoint.
pub fn bind_tcp(ctx: &zmq::Context, kind: SocketKind) -> (zmq::Socket, String) {
    Endpoints::new(Transport::Tcp).bind(ctx, kind, "tcp")
}

/// An `ipc://` endpoint named `name` in `dir`.
pub fn ipc_endpoint(dir: &TempDir, name: &str) -> String {
    format!("ipc://{}/{name}", dir.path().display())
}

/// Where worker threads connect, and how they are named.
#[derive(Debug, Clone)]
pub struct WorkerSetup {
    pub requests: String,
    pub results: String,
    pub commands: Option<String>,
    pub responses: Option<String>,
    /// Worker `i` is called `{name_prefix}-{i}`.
    pub name_prefix: String,
    pub receive_timeout: Option<Duration>,
}

impl WorkerSetup {
    pub fn name(&self, i: usize) -> String {
        format!("{}-{i}", self.name_prefix)
    }
}

/// A worker thread: its run's outcome (building it included).
pub type WorkerThread = JoinHandle<Result<WorkerExit, WorkerError>>;

/// Starts `n` worker threads, each building its own sockets from `ctx` and
/// its handler with `make_handler(i)`, connecting as `setup` says.
pub fn spawn_workers<H, F>(
    ctx: &zmq::Context,
    setup: &WorkerSetup,
    n: usize,
    make_handler: F,
) -> Vec<WorkerThread>
where
    H: Handler,
    F: Fn(usize) -> H + Clone + Send + 'static,
{
    (0..n)
        .map(|i| {
            let ctx = ctx.clone();
            let setup = setup.clone();
            let make_handler = make_handler.clone();
            thread::Builder::new()
                .name(setup.name(i))
                .spawn(move || {
                    let mut builder = Worker::builder(
                        FutureSocket::connect(setup.requests.clone(), SocketKind::Pull),
                        FutureSocket::connect(setup.results.clone(), SocketKind::Push),
                    )
                    .name(setup.name(i));
                    if let Some(url) = &setup.commands {
                        builder =
                            builder.commands(FutureSocket::connect(url.clone(), SocketKind::Sub));
                    }
                    if let Some(url) = &setup.responses {
                        builder =
                            builder.responses(FutureSocket::connect(url.clone(), SocketKind::Push));
                    }
                    if let Some(timeout) = setup.receive_timeout {
                        builder = builder.receive_timeout(timeout);
                    }
                    builder.build(&ctx, make_handler(i))?.run()
                })
                .expect("spawn a worker thread")
        })
        .collect()
}

/// Joins a thread, failing the test if it has not finished within `limit`
/// (a hung thread is then left behind) and re-raising its panic.
pub fn join_within<T>(handle: JoinHandle<T>, limit: Duration) -> T {
    let deadline = Instant::now() + limit;
    while !handle.is_finished() {
        assert!(
            Instant::now() < deadline,
            "thread {:?} did not finish within {limit:?}",
            handle.thread().name()
        );
        thread::sleep(Duration::from_millis(5));
    }
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// A ventilator, a sink and a command channel, each bound on a fresh
/// address of one transport, for workers (threads or processes) to connect
/// to.
pub struct Cluster {
    pub ctx: zmq::Context,
    pub endpoints: Endpoints,
    /// Where workers pull requests (the ventilator's PUSH).
    pub requests_url: String,
    /// Where workers push results (the sink's PULL).
    pub results_url: String,
    /// Where workers subscribe to commands (the command PUB).
    pub commands_url: String,
    /// Where workers push command replies (the command sender's PULL).
    pub responses_url: String,
    ventilator: Option<Ventilator>,
    pub sink: Sink,
    pub commands: CommandSender,
}

impl Cluster {
    pub fn new(transport: Transport) -> Self {
        let ctx = zmq::Context::new();
        let endpoints = Endpoints::new(transport);
        let (requests, requests_url) = endpoints.bind(&ctx, SocketKind::Push, "requests");
        let (results, results_url) = endpoints.bind(&ctx, SocketKind::Pull, "results");
        let (publisher, commands_url) = endpoints.bind(&ctx, SocketKind::Pub, "commands");
        let (replies, responses_url) = endpoints.bind(&ctx, SocketKind::Pull, "responses");
        // Readiness comes from pings, not from a delay.
        let ventilator = Ventilator::new(&ctx, requests)
            .expect("ventilator")
            .worker_connect_delay(Duration::ZERO);
        let sink = Sink::new(&ctx, results).expect("sink");
        let commands = CommandSender::new(&ctx, publisher, Some(replies.into())).expect("commands");
        Cluster {
            ctx,
            endpoints,
            requests_url,
            results_url,
            commands_url,
            responses_url,
            ventilator: Some(ventilator),
            sink,
            commands,
        }
    }

    /// Sends `n` requests per message from now on.
    pub fn batch(&mut self, n: usize) {
        self.ventilator = self.ventilator.take().map(|v| v.batch(n));
    }

    /// The ventilator's PUSH socket, to send raw frames to the workers.
    pub fn ventilator_socket(&self) -> &zmq::Socket {
        self.ventilator
            .as_ref()
            .expect("the ventilator is not in use")
            .socket()
    }

    /// Worker sockets connecting to this cluster, commands included.
    pub fn worker_setup(&self, name_prefix: &str) -> WorkerSetup {
        WorkerSetup {
            requests: self.requests_url.clone(),
            results: self.results_url.clone(),
            commands: Some(self.commands_url.clone()),
            responses: Some(self.responses_url.clone()),
            name_prefix: name_prefix.to_string(),
            receive_timeout: None,
        }
    }

    /// Starts `n` worker threads on this cluster.
    pub fn spawn_workers<H, F>(
        &self,
        name_prefix: &str,
        n: usize,
        make_handler: F,
    ) -> Vec<WorkerThread>
    where
        H: Handler,
        F: Fn(usize) -> H + Clone + Send + 'static,
    {
        spawn_workers(&self.ctx, &self.worker_setup(name_prefix), n, make_handler)
    }

    /// Pings until `n` distinct workers answer: they are then subscribed to
    /// commands and connected. Returns their replies.
    pub fn wait_for_workers(&self, n: usize) -> Vec<CommandReply> {
        let replies = self
            .commands
            .ping(Delivery::expecting(n, FAIL_AFTER))
            .expect("ping workers");
        assert_eq!(
            replies.len(),
            n,
            "only {} of {n} workers answered a ping within {FAIL_AFTER:?}: {replies:?}",
            replies.len()
        );
        replies
    }

    /// Sends `requests` from a ventilator thread while the sink collects as
    /// many results (or stops at a timeout); returns what the sink yielded.
    pub fn run(&mut self, requests: Vec<ClusterRequest>) -> Vec<Result<ClusterResult, SinkError>> {
        let n = requests.len();
        let mut ventilator = self
            .ventilator
            .take()
            .expect("the ventilator is not in use");
        let sender = thread::Builder::new()
            .name("ventilator".into())
            .spawn(move || {
                let sent = ventilator.send(requests);
                (ventilator, sent)
            })
            .expect("spawn the ventilator thread");
        let results: Vec<_> = self.sink.receive(Some(n), Some(FAIL_AFTER)).collect();
        let (ventilator, sent) = join_within(sender, FAIL_AFTER);
        assert_eq!(sent.expect("ventilator send"), n);
        self.ventilator = Some(ventilator);
        results
    }

    /// Kills worker threads: every one acknowledges and ends its run with
    /// [`WorkerExit::Killed`].
    pub fn kill_workers(&self, workers: Vec<WorkerThread>) {
        let acks = self
            .commands
            .send_kill(Delivery::expecting(workers.len(), FAIL_AFTER))
            .expect("send kill");
        assert_eq!(acks.len(), workers.len(), "kill acknowledgements: {acks:?}");
        assert!(acks.iter().all(|a| a.command == "kill"), "{acks:?}");
        for worker in workers {
            let exit = join_within(worker, FAIL_AFTER).expect("worker run");
            assert_eq!(exit, WorkerExit::Killed);
        }
    }
}

/// The path of example binary `name`, as `cargo test` (or `cargo build
/// --examples`) leaves it: tests run from `target/<profile>/deps/`, examples
/// are at `target/<profile>/examples/`.
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in target/<profile>/deps");
    let path = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "example binary `{name}` not found at {}: run `cargo build --examples` (plain \
         `cargo test` builds it, `cargo test --test integration` does not)",
        path.display()
    );
    path
}

/// Child processes that are killed (SIGKILL) and reaped when this is
/// dropped, however the test ends. Each child's stderr goes to a file, shown
/// when a wait fails.
pub struct Processes {
    children: Vec<(String, Child)>,
    logs: TempDir,
}

impl Default for Processes {
    fn default() -> Self {
        Self::new()
    }
}

impl Processes {
    pub fn new() -> Self {
        Processes {
            children: Vec::new(),
            logs: tempfile::tempdir().expect("temp dir for child logs"),
        }
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.logs.path().join(format!("{name}.stderr"))
    }

    /// Starts `command` (stdin and stdout null, stderr to a log file) and
    /// returns its index.
    pub fn spawn(&mut self, name: &str, mut command: Command) -> usize {
        let log = File::create(self.log_path(name)).expect("child log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({command:?}): {e}"));
        self.children.push((name.to_string(), child));
        self.children.len() - 1
    }

    pub fn pid(&self, i: usize) -> u32 {
        self.children[i].1.id()
    }

    /// What child `i` wrote to stderr so far.
    pub fn stderr(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(&self.children[i].0)).unwrap_or_default()
    }

    /// Waits for child `i` to exit, failing the test (with its stderr) if it
    /// is still running after `limit`.
    pub fn wait_exit(&mut self, i: usize, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            let (name, child) = &mut self.children[i];
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let name = name.clone();
                panic!(
                    "{name} still running after {limit:?}; stderr:\n{}",
                    self.stderr(i)
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            // Fails harmlessly for a child already reaped.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Says hello on a peer's signed socket and waits (up to 10 s) for the
/// hub's welcome, as an engine or a client does before anything else: from
/// then on the socket signs for the hub's epoch.
pub fn say_hello(socket: &mut zcluster::message::SignedSocket) {
    socket.hello(0).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while socket.epoch().is_none() {
        assert!(Instant::now() < deadline, "no welcome within 10 s");
        if socket.socket().poll(zmq::POLLIN, 100).unwrap() > 0 {
            let _ = socket.recv(0);
        }
    }
}
