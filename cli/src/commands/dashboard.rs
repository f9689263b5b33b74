//! `zcluster dashboard`: a web page of the cluster, live, served by a
//! process of its own (the hub's loop serves no HTTP) that reads the hub
//! through its client API and its notification socket, as any client.
//!
//! The server is a small one on `std::net`: one thread per connection (at
//! most [`MAX_CONNECTIONS`]), requests of bounded size, `Connection:
//! close`. It needs no async runtime and no crate beyond the binary's: the
//! page is `dashboard/page.html`, embedded whole (scripts, styles and
//! charts drawn on canvases: no CDN, it works offline). Aggregation is done
//! here: the page gets summaries (counts, series of a few hundred points, a
//! histogram), never every task.
//!
//! Access: on a loopback address (the default) no token is needed, since
//! only this machine reaches it, as with the default `127.0.0.1`; on any
//! other address every request needs the token printed at start (derived
//! from the cluster's key: whoever holds the connection file can compute
//! it, nobody else). Changing the cluster (kill, cancel) takes
//! `--allow-control`, and then the token in a header on every such
//! request, whatever the address: a header no other site's page can set,
//! so a page elsewhere cannot make the browser send one.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use zcluster::hub::client::HubClient;
use zcluster::hub::connection::ConnectionInfo;
use zcluster::hub::protocol::{EngineId, HubStatus, JobId, Notification};
use zcluster::hub::subscriber::Received;

use super::watch::{poll_hub, HubLink, Update};
use super::HubArg;
use durations::DurationFold;

mod durations;

/// The page, whole: markup, style and script.
const PAGE_HTML: &str = include_str!("../dashboard/page.html");

/// Connections served at once; past it, a 503.
const MAX_CONNECTIONS: usize = 64;

/// Largest request head (request line and headers) read.
const MAX_HEAD_BYTES: usize = 8 << 10;

/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Samples kept for the charts: ten minutes at one a second.
const SAMPLES_KEPT: usize = 600;

/// Failures and events kept for the page.
const FAILURES_KEPT: usize = 100;
const EVENTS_KEPT: usize = 200;

/// How often a live page is sent the board, at most.
const STREAM_PERIOD: Duration = Duration::from_millis(500);

/// Engines given a line of their own in the busy-slots chart.
const ENGINES_CHARTED: usize = 16;

#[derive(Args)]
pub struct DashboardArgs {
    #[command(flatten)]
    hub: HubArg,
    /// Where to serve the page (loopback by default; any other address
    /// requires the printed token).
    #[arg(long, default_value = "127.0.0.1:8787", value_name = "ADDR:PORT")]
    listen: SocketAddr,
    /// Show kill and cancel buttons that act (each a signed hub call).
    #[arg(long)]
    allow_control: bool,
    /// How often to ask the hub.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration, value_name = "TIME")]
    interval: Duration,
}

/// The dashboard's access token for the cluster whose key is `key_hex`:
/// an HMAC of a fixed label, so it is the same at every start and tells
/// nothing of the key.
pub fn token_for(key_hex: &str) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key_hex.trim().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(b"zcluster dashboard token v1");
    mac.finalize()
        .into_bytes()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether requests to `ip` need the token: anything but loopback.
pub fn needs_token(ip: IpAddr) -> bool {
    !ip.is_loopback()
}

/// Compares without an early exit, so the time taken tells nothing.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// One sample for the charts.
struct Sample {
    at: f64,
    finished: u64,
    busy: Vec<(EngineId, u32)>,
}

/// What the page shows, kept up to date from the hub.
#[derive(Default)]
struct Board {
    hub: String,
    link: HubLink,
    status: Option<HubStatus>,
    samples: VecDeque<Sample>,
    failures: VecDeque<Value>,
    events: VecDeque<Value>,
    /// Engines gone: id -> (dead, reason, when).
    gone: HashMap<EngineId, (bool, String, String)>,
    /// Bumped on every change, for the live stream.
    version: u64,
}

fn seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

impl Board {
    fn apply(&mut self, update: Update) {
        self.version += 1;
        match update {
            Update::Status(status, generation) => {
                self.link.answered(generation, Instant::now());
                let finished = status.jobs.iter().map(|j| j.done + j.failed).sum();
                let busy = status.engines.iter().map(|e| (e.id, e.running)).collect();
                for engine in &status.engines {
                    self.gone.remove(&engine.id);
                }
                self.samples.push_back(Sample {
                    at: seconds(SystemTime::now()),
                    finished,
                    busy,
                });
                while self.samples.len() > SAMPLES_KEPT {
                    self.samples.pop_front();
                }
                self.status = Some(status);
            }
            Update::NoAnswer(error) => self.link.silent(error, Instant::now()),
            Update::Event(received) => self.event(received),
        }
    }

    fn event(&mut self, received: Received) {
        if let Notification::Subscribed { .. } = received.notification {
            return;
        }
        let event = super::events::event_json(&received);
        let at = event["at"].clone();
        match &received.notification {
            Notification::TaskFailed { .. } | Notification::TaskRetried { .. } => {
                self.failures.push_front(event.clone());
                self.failures.truncate(FAILURES_KEPT);
            }
            Notification::EngineDead { engine, reason, .. } => {
                self.gone
                    .insert(*engine, (true, reason.clone(), at.to_string()));
                if let Some(status) = self.status.as_mut() {
                    status.engines.retain(|e| e.id != *engine);
                }
            }
            Notification::EngineRetired { engine, reason, .. } => {
                self.gone
                    .insert(*engine, (false, reason.clone(), at.to_string()));
                if let Some(status) = self.status.as_mut() {
                    status.engines.retain(|e| e.id != *engine);
                }
            }
            _ => {}
        }
        self.events.push_front(event);
        self.events.truncate(EVENTS_KEPT);
    }

    /// Tasks finished per second between samples, and busy slots over
    /// time: all engines together, and each of the [`ENGINES_CHARTED`]
    /// busiest now (a thousand lines would say nothing, and weigh a lot),
    /// as series sharing one time axis.
    fn series(&self) -> Value {
        let times: Vec<f64> = self.samples.iter().map(|s| s.at).collect();
        let mut rates = vec![0.0];
        for pair in self.samples.iter().collect::<Vec<_>>().windows(2) {
            let dt = pair[1].at - pair[0].at;
            let done = pair[1].finished.saturating_sub(pair[0].finished) as f64;
            rates.push(if dt > 0.0 { done / dt } else { 0.0 });
        }
        rates.truncate(times.len());
        let mut charted: Vec<(u32, EngineId)> = self
            .status
            .iter()
            .flat_map(|s| &s.engines)
            .map(|e| (e.running, e.id))
            .collect();
        charted.sort_unstable_by(|a, b| b.cmp(a));
        charted.truncate(ENGINES_CHARTED);
        let mut busy: serde_json::Map<String, Value> = serde_json::Map::new();
        let all: Vec<u32> = self
            .samples
            .iter()
            .map(|s| s.busy.iter().map(|(_, n)| n).sum())
            .collect();
        busy.insert("all".into(), json!(all));
        for (_, engine) in charted {
            let points: Vec<u32> = self
                .samples
                .iter()
                .map(|s| {
                    // Listed by id, as the hub's status lists them.
                    s.busy
                        .binary_search_by_key(&engine, |(id, _)| *id)
                        .map_or(0, |at| s.busy[at].1)
                })
                .collect();
            busy.insert(engine.to_string(), json!(points));
        }
        json!({ "t": times, "tasks_per_s": rates, "busy": busy })
    }

    /// What `/api/status` and the live stream send.
    fn summary(&self, allow_control: bool) -> Value {
        let gone: Vec<Value> = self
            .gone
            .iter()
            .map(|(id, (dead, reason, at))| {
                json!({ "id": id, "state": if *dead { "dead" } else { "left" }, "reason": reason, "at": at })
            })
            .collect();
        json!({
            "hub": { "file": self.hub, "link": self.link.describe(Instant::now()) },
            "status": self.status,
            "engines_gone": gone,
            "failures": self.failures,
            "series": self.series(),
            "control": allow_control,
        })
    }
}

/// Locks the board (or another of the server's shared parts); a thread
/// that panicked holding it left it usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// What every request handler needs.
struct Server {
    board: Arc<Mutex<Board>>,
    connection: ConnectionInfo,
    token: String,
    token_required: bool,
    allow_control: bool,
    open: AtomicUsize,
    /// For the job pages' calls: one connection, made when first needed
    /// and again after a call fails.
    ctx: zmq::Context,
    hub: Mutex<Option<HubClient>>,
    /// The task durations of the jobs whose pages were looked at.
    folds: Mutex<HashMap<JobId, DurationFold>>,
}

/// One parsed request.
struct Request {
    method: String,
    path: String,
    query: HashMap<String, String>,
    header_token: Option<String>,
}

fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Reads a request head, at most [`MAX_HEAD_BYTES`]; `None` if it is not
/// one.
fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() >= MAX_HEAD_BYTES {
            return None;
        }
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut header_token = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        if name == "x-zcluster-token" {
            header_token = Some(value.to_string());
        } else if name == "authorization" {
            header_token = value.strip_prefix("Bearer ").map(str::to_string);
        }
    }
    Some(Request {
        method,
        path: path.to_string(),
        query: parse_query(query),
        header_token,
    })
}

fn respond(stream: &mut TcpStream, code: u16, kind: &str, body: &[u8]) {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        502 => "Bad Gateway",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

fn respond_json(stream: &mut TcpStream, code: u16, value: &Value) {
    respond(
        stream,
        code,
        "application/json",
        value.to_string().as_bytes(),
    );
}

impl Server {
    fn handle(&self, mut stream: TcpStream) {
        let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
        let Some(request) = read_request(&mut stream) else {
            respond(&mut stream, 400, "text/plain", b"bad request\n");
            return;
        };
        let given = request
            .header_token
            .as_deref()
            .or(request.query.get("token").map(String::as_str));
        let token_ok = given.is_some_and(|t| same(t, &self.token));
        if self.token_required && !token_ok {
            respond(
                &mut stream,
                401,
                "text/plain",
                b"this dashboard needs its token (printed when it started): ?token=...\n",
            );
            return;
        }
        match (request.method.as_str(), request.path.as_str()) {
            ("GET", "/") => respond(
                &mut stream,
                200,
                "text/html; charset=utf-8",
                PAGE_HTML.as_bytes(),
            ),
            ("GET", "/api/status") => {
                let summary = lock(&self.board).summary(self.allow_control);
                respond_json(&mut stream, 200, &summary);
            }
            ("GET", "/api/events") => {
                let events: Vec<Value> = lock(&self.board).events.iter().rev().cloned().collect();
                respond_json(&mut stream, 200, &Value::Array(events));
            }
            ("GET", "/api/stream") => self.stream(stream),
            ("GET", path) if path.starts_with("/api/jobs/") => {
                match path["/api/jobs/".len()..].parse::<JobId>() {
                    Ok(job) => self.job(&mut stream, job),
                    Err(_) => respond(&mut stream, 404, "text/plain", b"no such job\n"),
                }
            }
            ("POST", path) if path.starts_with("/api/control/") => {
                // The header, not the query: no other site's page can set it.
                let header_ok = request
                    .header_token
                    .as_deref()
                    .is_some_and(|t| same(t, &self.token));
                if !self.allow_control {
                    respond(
                        &mut stream,
                        403,
                        "text/plain",
                        b"control is off (zcluster dashboard --allow-control)\n",
                    );
                } else if !header_ok {
                    respond(
                        &mut stream,
                        403,
                        "text/plain",
                        b"control needs the token in an X-Zcluster-Token header\n",
                    );
                } else {
                    self.control(&mut stream, &path["/api/control/".len()..], &request.query);
                }
            }
            (_, "/" | "/api/status" | "/api/events" | "/api/stream") => {
                respond(&mut stream, 405, "text/plain", b"method not allowed\n")
            }
            _ => respond(&mut stream, 404, "text/plain", b"not found\n"),
        }
    }

    /// Server-sent events: the board each time it changed, until the page
    /// goes.
    fn stream(&self, mut stream: TcpStream) {
        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n";
        if stream.write_all(head.as_bytes()).is_err() {
            return;
        }
        let mut sent = None;
        loop {
            let (version, summary) = {
                let board = lock(&self.board);
                (
                    board.version,
                    (sent != Some(board.version)).then(|| board.summary(self.allow_control)),
                )
            };
            if let Some(summary) = summary {
                if stream
                    .write_all(format!("data: {summary}\n\n").as_bytes())
                    .and_then(|()| stream.flush())
                    .is_err()
                {
                    return;
                }
                sent = Some(version);
            }
            std::thread::sleep(STREAM_PERIOD);
        }
    }

    /// One job: its counts, the failures of it, and its task durations as a
    /// histogram (the store's start and end times; computed here, so the
    /// page gets twenty numbers, not every task).
    fn job(&self, stream: &mut TcpStream, job: JobId) {
        let (status, live) = {
            let board = lock(&self.board);
            let jobs = board
                .status
                .as_ref()
                .map(|s| s.jobs.as_slice())
                .unwrap_or_default();
            let live: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
            (jobs.iter().find(|j| j.id == job).cloned(), live)
        };
        let Some(status) = status else {
            respond_json(stream, 404, &json!({ "error": format!("no job {job}") }));
            return;
        };
        let stored = status.pending + status.running + status.done + status.failed;
        let finished = status.done + status.failed;
        let durations = {
            let mut hub = lock(&self.hub);
            let mut folds = lock(&self.folds);
            folds.retain(|id, _| live.contains(id));
            let fold = folds.entry(job).or_default();
            let refreshed = match hub.as_mut() {
                Some(client) => fold.refresh(client, job, stored, finished),
                None => HubClient::connect(&self.ctx, &self.connection)
                    .and_then(|client| fold.refresh(hub.insert(client), job, stored, finished)),
            };
            match refreshed {
                Ok(()) => fold.to_json(),
                Err(e) => {
                    // Connect again next time, and fold again from the start.
                    *hub = None;
                    folds.remove(&job);
                    respond_json(stream, 502, &json!({ "error": e.to_string() }));
                    return;
                }
            }
        };
        let failures: Vec<Value> = lock(&self.board)
            .failures
            .iter()
            .filter(|f| f["job"] == job)
            .cloned()
            .collect();
        respond_json(
            stream,
            200,
            &json!({
                "job": status,
                "tasks": stored,
                "durations": durations,
                "failures": failures,
            }),
        );
    }

    /// A kill or cancel, as the CLI makes it (a signed hub call).
    fn control(&self, stream: &mut TcpStream, action: &str, query: &HashMap<String, String>) {
        let number = |name: &str| query.get(name).and_then(|v| v.parse::<u64>().ok());
        let ctx = zmq::Context::new();
        let mut client = match HubClient::connect(&ctx, &self.connection) {
            Ok(client) => client,
            Err(e) => return respond_json(stream, 502, &json!({ "error": e.to_string() })),
        };
        let outcome = match (action, number("engine"), number("job")) {
            ("kill", Some(engine), _) => client
                .kill(Some(vec![engine]), false)
                .map(|k| json!({ "acknowledged": k.acknowledged, "silent": k.silent })),
            ("cancel", _, Some(job)) => client
                .cancel_job(job, true)
                .map(|dropped| json!({ "dropped": dropped.len() })),
            _ => {
                return respond_json(
                    stream,
                    400,
                    &json!({ "error": "kill?engine=N or cancel?job=N" }),
                )
            }
        };
        match outcome {
            Ok(value) => respond_json(stream, 200, &value),
            Err(e) => respond_json(stream, 502, &json!({ "error": e.to_string() })),
        }
    }
}

pub fn run(args: DashboardArgs) -> anyhow::Result<ExitCode> {
    let connection = args.hub.connection()?;
    let token = token_for(&connection.key);
    let listener = TcpListener::bind(args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let bound = listener.local_addr()?;
    let token_required = needs_token(bound.ip());
    let board = Arc::new(Mutex::new(Board {
        hub: args.hub.path().display().to_string(),
        ..Board::default()
    }));
    let (updates_in, updates) = crossbeam_channel::unbounded();
    let polled = connection.clone();
    let interval = args.interval;
    std::thread::Builder::new()
        .name("dashboard-poller".into())
        .spawn(move || poll_hub(polled, interval, updates_in))?;
    let kept = board.clone();
    std::thread::Builder::new()
        .name("dashboard-board".into())
        .spawn(move || {
            for update in updates {
                lock(&kept).apply(update);
            }
        })?;
    let url = format!("http://{bound}/");
    if token_required {
        eprintln!("zcluster dashboard: {url}?token={token}");
    } else {
        eprintln!("zcluster dashboard: {url} (token for other addresses: {token})");
    }
    let server = Arc::new(Server {
        board,
        connection,
        token,
        token_required,
        allow_control: args.allow_control,
        open: AtomicUsize::new(0),
        ctx: zmq::Context::new(),
        hub: Mutex::new(None),
        folds: Mutex::new(HashMap::new()),
    });
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        if server.open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            server.open.fetch_sub(1, Ordering::SeqCst);
            respond(&mut stream, 503, "text/plain", b"busy\n");
            continue;
        }
        let server = server.clone();
        let spawned = std::thread::Builder::new()
            .name("dashboard-request".into())
            .spawn({
                let server = server.clone();
                move || {
                    server.handle(stream);
                    server.open.fetch_sub(1, Ordering::SeqCst);
                }
            });
        if spawned.is_err() {
            server.open.fetch_sub(1, Ordering::SeqCst);
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zcluster::hub::protocol::{EngineStatus, JobStatus};

    /// At 1,000 engines and 100 jobs, with ten minutes of samples, what the
    /// page is sent stays small: the engines' list and a few series, not a
    /// line per engine.
    #[test]
    fn a_large_cluster_is_summarised_not_dumped() {
        let mut board = Board::default();
        let engines: Vec<EngineStatus> = (1..=1000)
            .map(|id| EngineStatus {
                id,
                host: format!("node{id:04}"),
                pid: 1000 + id as u32,
                slots: 8,
                running: (id % 9) as u32,
                completed: id * 10,
                last_heartbeat: Duration::from_millis(400),
                ..EngineStatus::default()
            })
            .collect();
        let jobs: Vec<JobStatus> = (1..=100)
            .map(|id| JobStatus {
                id,
                submitted: SystemTime::now(),
                description: format!("extract-features {{}} -o out/{id}"),
                total: Some(10_000),
                pending: 5_000,
                running: 80,
                done: 4_900,
                failed: 20,
                queued_tasks: Vec::new(),
                request: None,
                waiting_for: None,
                client_attached: Some(true),
            })
            .collect();
        let status = HubStatus {
            engines,
            jobs,
            store: "tasks.sqlite".into(),
        };
        for _ in 0..SAMPLES_KEPT + 10 {
            board.apply(Update::Status(status.clone(), 1));
        }
        let started = Instant::now();
        let summary = board.summary(false).to_string();
        let took = started.elapsed();
        assert_eq!(board.samples.len(), SAMPLES_KEPT);
        let series = &board.summary(false)["series"]["busy"];
        assert_eq!(series.as_object().unwrap().len(), ENGINES_CHARTED + 1);
        // Printed for the README's figure.
        println!(
            "summary at 1000 engines, 100 jobs: {} bytes in {took:?}",
            summary.len()
        );
        assert!(summary.len() < 512 << 10, "{} bytes", summary.len());
    }

    #[test]
    fn the_token_is_the_keys_and_only_loopback_goes_without() {
        let a = token_for("00112233445566778899aabbccddeeff");
        assert_eq!(a, token_for("00112233445566778899aabbccddeeff\n"));
        assert_ne!(a, token_for("00112233445566778899aabbccddeefe"));
        assert_eq!(a.len(), 32);
        assert!(!needs_token("127.0.0.1".parse().unwrap()));
        assert!(!needs_token("127.0.0.5".parse().unwrap()));
        assert!(!needs_token("::1".parse().unwrap()));
        assert!(needs_token("0.0.0.0".parse().unwrap()));
        assert!(needs_token("192.168.1.4".parse().unwrap()));
        assert!(same(&a, &a.clone()) && !same(&a, "x"));
    }
}
