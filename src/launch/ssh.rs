//! `zcluster launch ssh`: one `zcluster worker` per host of a host file,
//! started with the system's OpenSSH client and kept alive.
//!
//! Per host, a thread of its own (`ssh/supervisor.rs`) does, and does
//! again after a crash:
//!
//! 1. **Prepare**, in one ssh session: copy the connection file (fed on
//!    ssh's stdin, written 0600 under a private directory through a
//!    `mktemp` name and renamed into place, so no other user can read the
//!    key nor redirect the write), then `zcluster --version`. The session's
//!    exit status and stderr say why a host cannot be used: ssh's own
//!    failures exit 255 (unreachable, auth refused, host key), a missing
//!    binary 127, a version that differs is read from stdout.
//! 2. **Start**, in a second session, a small `sh` wrapper that runs the
//!    worker in the background, prints its pid and host name, and sends it
//!    SIGTERM as soon as its stdin reaches end of file. sshd closes that
//!    stdin when the session ends for whatever reason (this launcher closes
//!    it to stop, or dies, or the network drops), so a worker never
//!    outlives its launcher, and stops the graceful way (its running tasks
//!    are killed, it unregisters). No pseudo-terminal is needed, so the
//!    worker's output is not mangled and a stray byte on stdin is harmless.
//! 3. **Wait** until the hub lists an engine with that host name and pid
//!    (through the hub client API's `status`, as any client would), and
//!    report it started with its engine id.
//! 4. **Watch** the session: exit status 0 is a worker told to stop by the
//!    hub (`zcluster kill`): it stays stopped. [`RESTART_EXIT_CODE`] starts
//!    it again at once; anything else is a crash, started again after a
//!    backoff that doubles up to [`MAX_BACKOFF`].
//!
//! With `--detach`, step 2 runs the worker under `nohup` (and `setsid`
//! where there is one) with its output to a log file, and the launcher
//! leaves after step 3: the workers then live under the hub's care.
//!
//! ssh runs with `BatchMode=yes`, so nothing ever waits for a password,
//! and a connect timeout, so a host that drops packets fails in seconds.
//! Everything else (keys, agent, `~/.ssh/config`, jump hosts) is the
//! user's ssh as they know it; `--ssh` replaces the command line.

use std::collections::VecDeque;
use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::hosts::{Host, Target};
use crate::hub::client::HubClient;
use crate::hub::connection::ConnectionInfo;
use crate::worker::RESTART_EXIT_CODE;

// Each host's thread (`ssh/supervisor.rs`).
mod supervisor;

use supervisor::Supervisor;

/// The version every remote `zcluster` must report: a worker of another
/// version may not speak this hub's protocol.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How long ssh may take to connect before the host counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Bound on the preparing session (copy and version check) as a whole.
pub const PREPARE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a started worker has to register with the hub before the
/// launcher says it has not (it keeps waiting and running it).
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);

/// First wait before a crashed worker is started again.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// Longest wait before a crashed worker is started again.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A worker that ran this long before crashing starts again after
/// [`FIRST_BACKOFF`]: it was not crashing in a loop.
pub const STABLE_RUN: Duration = Duration::from_secs(60);

/// How long a stopping worker has to leave once its session's stdin is
/// closed (it kills its running tasks and unregisters) before its ssh is
/// killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// How often the threads look at their child processes and the stop flag.
const POLL_PERIOD: Duration = Duration::from_millis(50);

/// How often the hub is asked whether a started worker registered.
const REGISTER_POLL_PERIOD: Duration = Duration::from_millis(200);

/// Bound on one status call while waiting for a registration: a busy or
/// absent hub must not stretch [`REGISTER_TIMEOUT`].
const REGISTER_CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// The line the remote wrapper prints once the worker runs.
const STARTED_MARKER: &str = "zcluster-launch: started";

/// The line the preparing session prints once the connection file is in
/// place.
const COPIED_MARKER: &str = "zcluster-launch: copied";

/// Lines of a session's stderr kept to say why it failed.
const STDERR_LINES_KEPT: usize = 20;

/// How to reach the hosts and what to run there; plain data (the CLI fills
/// it from flags).
#[derive(Debug, Clone)]
pub struct SshOptions {
    /// The ssh command line, split into words (`["ssh", "-F", "lab.conf"]`);
    /// the launcher appends its own options, the destination and the
    /// remote command.
    pub ssh: Vec<String>,
    /// The `zcluster` to run on remote hosts, as a shell command prefix
    /// (a path, or `env VAR=x zcluster`).
    pub remote_command: String,
    /// The `zcluster` to run for `:` (this machine): normally this binary.
    pub local_command: PathBuf,
    /// The remote directory for the copied connection file and detached
    /// workers' logs; relative paths are under the remote home.
    pub remote_dir: String,
    /// The connection file's path is the same on every host (a shared
    /// file system): nothing is copied.
    pub shared_fs: bool,
    /// Leave the workers running (under `nohup`) instead of supervising.
    pub detach: bool,
    /// How long a started worker has to register before it is reported.
    pub register_timeout: Duration,
    /// The label each worker registers with (`ssh:HOSTFILE`), so
    /// `zcluster status` shows which host file an engine came from.
    pub origin: Option<String>,
}

impl Default for SshOptions {
    fn default() -> Self {
        SshOptions {
            ssh: vec!["ssh".into()],
            remote_command: "zcluster".into(),
            local_command: PathBuf::from("zcluster"),
            remote_dir: ".zcluster/launched".into(),
            shared_fs: false,
            detach: false,
            register_timeout: REGISTER_TIMEOUT,
            origin: None,
        }
    }
}

/// Errors that stop a launch before any host is tried.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The connection file could not be read.
    #[error(transparent)]
    Connection(#[from] crate::hub::connection::ConnectionError),
    /// The connection file's path cannot be made absolute.
    #[error("cannot resolve the connection file path {path}: {source}")]
    Path {
        /// The connection file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `--ssh` was empty.
    #[error("the ssh command is empty")]
    NoSsh,
    /// A thread could not be started.
    #[error("cannot start a launcher thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Why a host has no worker, in the one line the launcher reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostFailure {
    /// ssh could not connect (refused, timed out, no route, unknown name).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The host refused every key (with `BatchMode`, no password is tried).
    #[error("auth refused: {0}")]
    AuthRefused(String),
    /// The host's key is unknown or changed and ssh refuses it.
    #[error("host key not trusted: {0}")]
    HostKey(String),
    /// Another ssh failure (exit status 255).
    #[error("ssh failed: {0}")]
    Ssh(String),
    /// The remote `zcluster` is not there or not executable.
    #[error("binary missing: {0}")]
    BinaryMissing(String),
    /// The remote `zcluster` is another version.
    #[error("version differs: {remote} there, zcluster {local} here")]
    VersionDiffers {
        /// What the remote `zcluster --version` printed.
        remote: String,
        /// This launcher's version.
        local: String,
    },
    /// The connection file could not be written there.
    #[error("cannot copy the connection file: {0}")]
    Copy(String),
    /// ssh (or `sh` for `:`) could not be run here.
    #[error("cannot run {program}: {reason}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        reason: String,
    },
    /// A session took longer than its bound and was killed.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The wrapper ended before the worker started.
    #[error("worker did not start: {0}")]
    NotStarted(String),
}

impl HostFailure {
    /// Whether trying again later may work (a host rebooting), as opposed
    /// to a failure that needs the user (a key, a binary, a version).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            HostFailure::Unreachable(_)
                | HostFailure::Ssh(_)
                | HostFailure::Timeout(_)
                | HostFailure::NotStarted(_)
        )
    }
}

/// What happened on a host: each is one line of the launcher's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEvent {
    /// A worker registered with the hub.
    Started {
        /// Its engine id.
        engine: u64,
        /// Its pid on the host.
        pid: u32,
        /// Whether it replaced an earlier worker.
        again: bool,
    },
    /// A worker was started but the hub has not seen it yet.
    NotRegistered {
        /// Its pid on the host.
        pid: u32,
        /// How long the launcher has waited.
        waited: Duration,
    },
    /// No worker: why not.
    Failed(HostFailure),
    /// A worker ended and is started again after `delay`.
    Restarting {
        /// How it ended.
        how: String,
        /// The wait before it starts again.
        delay: Duration,
    },
    /// A worker ended with status 0, as the hub's kill asks: not restarted.
    Exited,
    /// The launcher stopped the worker.
    Stopped,
}

/// One line of the launcher's report: a host (as the host file names it)
/// and what happened there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The host as written in the host file.
    pub host: String,
    /// What happened.
    pub event: HostEvent,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.host)?;
        match &self.event {
            HostEvent::Started { engine, pid, again } => {
                let verb = if *again { "restarted" } else { "started" };
                write!(f, "{verb} (engine {engine}, pid {pid})")
            }
            HostEvent::NotRegistered { pid, waited } => write!(
                f,
                "worker running (pid {pid}) but not registered with the hub after {}s: \
                 can the host reach the hub's address?",
                waited.as_secs()
            ),
            HostEvent::Failed(failure) => write!(f, "{failure}"),
            HostEvent::Restarting { how, delay } if delay.is_zero() => {
                write!(f, "worker {how}; starting it again")
            }
            HostEvent::Restarting { how, delay } => write!(
                f,
                "worker {how}; starting it again in {}",
                humantime::format_duration(*delay)
            ),
            HostEvent::Exited => f.write_str("worker exited (status 0: stopped by the hub)"),
            HostEvent::Stopped => f.write_str("stopped"),
        }
    }
}

/// Where launcher reports go (the CLI prints them; a map prints them to
/// stderr, its stdout being results).
pub type ReportSink = Box<dyn FnMut(&Report) + Send>;

/// Counts of the first outcome on each host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StartSummary {
    /// Hosts whose worker registered (or, detached, was left running).
    pub started: usize,
    /// Hosts with no worker.
    pub failed: usize,
    /// Hosts whose worker runs but has not registered yet.
    pub unregistered: usize,
}

/// The first outcome of one host, for [`Launcher::wait_started`].
#[derive(Debug, Clone, Copy)]
enum FirstOutcome {
    Started,
    Failed,
    Unregistered,
}

/// Workers on a set of hosts, each kept by a thread of its own; see the
/// module docs. Dropping it stops them all.
pub struct Launcher {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    first: crossbeam_channel::Receiver<FirstOutcome>,
    hosts: usize,
}

impl Launcher {
    /// Starts a worker on every host for the hub of `connection_file`;
    /// setting `stop` (a signal handler's flag, say) stops them all.
    pub fn start(
        hosts: &[Host],
        connection_file: &Path,
        options: SshOptions,
        stop: Arc<AtomicBool>,
        report: ReportSink,
    ) -> Result<Self, LaunchError> {
        if options.ssh.is_empty() {
            return Err(LaunchError::NoSsh);
        }
        let connection = ConnectionInfo::read(connection_file)?;
        let local_file =
            std::path::absolute(connection_file).map_err(|source| LaunchError::Path {
                path: connection_file.to_path_buf(),
                source,
            })?;
        let remote_file = if options.shared_fs {
            local_file.display().to_string()
        } else {
            format!(
                "{}/hub-{}.json",
                options.remote_dir.trim_end_matches('/'),
                hub_tag(&connection)
            )
        };
        // Serialised from what was read (and checked), not the raw bytes.
        let json = serde_json::to_vec_pretty(&connection).map_err(|e| {
            crate::hub::connection::ConnectionError::Malformed {
                path: connection_file.to_path_buf(),
                reason: e.to_string(),
            }
        })?;
        let shared = Arc::new(Shared {
            options,
            connection,
            json,
            local_file,
            remote_file,
            stop: stop.clone(),
            report: Mutex::new(report),
        });
        let (first_tx, first) = crossbeam_channel::unbounded();
        let mut threads = Vec::with_capacity(hosts.len());
        for host in hosts {
            let supervisor = Supervisor {
                shared: shared.clone(),
                host: host.clone(),
                name: host.to_string(),
                first: Some(first_tx.clone()),
            };
            let thread = thread::Builder::new()
                .name(format!("zcluster-launch-{}", host.line))
                .spawn(move || supervisor.run());
            match thread {
                Ok(thread) => threads.push(thread),
                Err(e) => {
                    stop.store(true, Ordering::SeqCst);
                    for thread in threads {
                        let _ = thread.join();
                    }
                    return Err(LaunchError::Thread(e));
                }
            }
        }
        Ok(Launcher {
            stop,
            threads,
            first,
            hosts: hosts.len(),
        })
    }

    /// Waits until every host has its first outcome: registered, failed,
    /// or still unregistered after the register timeout.
    pub fn wait_started(&self) -> StartSummary {
        let mut summary = StartSummary::default();
        for _ in 0..self.hosts {
            // Every thread sends exactly one first outcome before it ends,
            // and each waits for at most its bounded steps.
            match self.first.recv() {
                Ok(FirstOutcome::Started) => summary.started += 1,
                Ok(FirstOutcome::Failed) => summary.failed += 1,
                Ok(FirstOutcome::Unregistered) => summary.unregistered += 1,
                Err(_) => break,
            }
        }
        summary
    }

    /// Waits until every worker has ended for good (failed, stopped by the
    /// hub, or by the stop flag) and the threads are done.
    pub fn wait(&mut self) {
        while !self.threads.iter().all(JoinHandle::is_finished) {
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            thread::sleep(POLL_PERIOD);
        }
        self.join();
    }

    /// Stops every worker (closing its session: it leaves gracefully) and
    /// waits for the threads.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.join();
    }

    fn join(&mut self) {
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.join();
    }
}

/// A short tag naming the hub, so connection files of several hubs can
/// sit side by side on a host (it does not reveal the key).
fn hub_tag(connection: &ConnectionInfo) -> String {
    let digest = Sha256::digest(connection.key.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// What every host's thread shares.
struct Shared {
    options: SshOptions,
    connection: ConnectionInfo,
    json: Vec<u8>,
    local_file: PathBuf,
    remote_file: String,
    stop: Arc<AtomicBool>,
    report: Mutex<ReportSink>,
}

/// Runs `command` with `input` on its stdin, killing it after `timeout`.
fn run_bounded(
    mut command: Command,
    input: &[u8],
    timeout: Duration,
) -> Result<std::process::Output, HostFailure> {
    let program = command.get_program().to_string_lossy().into_owned();
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| HostFailure::Spawn {
            program,
            reason: e.to_string(),
        })?;
    let writer = child.stdin.take().map(|mut stdin| {
        let input = input.to_vec();
        // A session that fails before reading its input closes the pipe:
        // the write error is the session's failure, reported from its
        // status and stderr.
        thread::spawn(move || {
            let _ = stdin.write_all(&input);
        })
    });
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = read(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = read(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(POLL_PERIOD),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HostFailure::Timeout(timeout));
            }
        }
    };
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    Ok(std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Copies a session's output lines to our stderr, prefixed with the host,
/// keeping the last ones for a failure message.
fn forward_lines(
    pipe: impl Read + Send + 'static,
    name: String,
    keep: Option<Arc<Mutex<VecDeque<String>>>>,
) {
    let _ = thread::Builder::new()
        .name("zcluster-launch-err".into())
        .spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if is_noise(&line) {
                    continue;
                }
                eprintln!("[{name}] {line}");
                if let Some(keep) = &keep {
                    if let Ok(mut kept) = keep.lock() {
                        if kept.len() == STDERR_LINES_KEPT {
                            kept.pop_front();
                        }
                        kept.push_back(line);
                    }
                }
            }
        });
}

fn kept(lines: &Mutex<VecDeque<String>>) -> String {
    lines
        .lock()
        .map(|l| l.iter().cloned().collect::<Vec<_>>().join("\n"))
        .unwrap_or_default()
}

/// ssh's notices that are not errors.
fn is_noise(line: &str) -> bool {
    line.starts_with("Warning: Permanently added") || line.trim().is_empty()
}

/// Why ssh exited 255, from what it printed.
pub fn classify_ssh(stderr: &str) -> HostFailure {
    const AUTH: &[&str] = &[
        "Permission denied",
        "Too many authentication failures",
        "No more authentication methods",
    ];
    const HOST_KEY: &[&str] = &[
        "Host key verification failed",
        "REMOTE HOST IDENTIFICATION HAS CHANGED",
    ];
    const UNREACHABLE: &[&str] = &[
        "Connection refused",
        "Connection timed out",
        "timed out",
        "No route to host",
        "Network is unreachable",
        "Could not resolve hostname",
        "Name or service not known",
        "Temporary failure in name resolution",
        "Connection closed by",
        "Connection reset",
        "kex_exchange_identification",
    ];
    let find = |needles: &[&str]| {
        stderr
            .lines()
            .find(|l| needles.iter().any(|n| l.contains(n)))
            .map(|l| l.trim().to_string())
    };
    if let Some(line) = find(HOST_KEY) {
        HostFailure::HostKey(line)
    } else if let Some(line) = find(AUTH) {
        HostFailure::AuthRefused(line)
    } else if let Some(line) = find(UNREACHABLE) {
        HostFailure::Unreachable(line)
    } else {
        HostFailure::Ssh(one_line(stderr))
    }
}

/// The last meaningful line of a program's stderr.
fn one_line(stderr: &str) -> String {
    stderr
        .lines()
        .rfind(|l| !is_noise(l))
        .map_or_else(|| "(no message)".to_string(), |l| l.trim().to_string())
}

fn describe_status(status: ExitStatus, stderr: &str) -> String {
    let how = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => "ended".to_string(),
    };
    format!("{how}: {}", one_line(stderr))
}

/// How a worker session ended, for a restart report.
fn describe_exit(status: ExitStatus, stderr: &Mutex<VecDeque<String>>) -> String {
    match status.code() {
        Some(255) => format!("lost its ssh session ({})", one_line(&kept(stderr))),
        // The wrapper reports a worker killed by a signal as 128 + signal.
        Some(code) if code > 128 => format!("was killed by signal {}", code - 128),
        Some(code) => format!("exited with status {code}"),
        None => match status.signal() {
            Some(signal) => format!("session killed by signal {signal}"),
            None => "ended".to_string(),
        },
    }
}

/// The directory part of a remote path (`.` for a bare name).
fn remote_dir_of(path: &str) -> String {
    match path.rsplit_once('/') {
        Some(("", _)) => "/".into(),
        Some((dir, _)) => dir.into(),
        None => ".".into(),
    }
}

/// A word quoted for `sh` (always quoted: simpler to read in a trace); the
/// Slurm job script's words too.
pub(super) fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_failures_are_told_apart_by_what_ssh_says() {
        let cases = [
            (
                "ssh: connect to host 127.0.0.4 port 22: Connection refused\n",
                "unreachable: ssh: connect to host 127.0.0.4 port 22: Connection refused",
            ),
            (
                "Warning: Permanently added '127.0.0.2' (ED25519) to the list of known hosts.\n\
                 root@127.0.0.2: Permission denied (publickey).\n",
                "auth refused: root@127.0.0.2: Permission denied (publickey).",
            ),
            (
                "ssh: Could not resolve hostname nowhere: Name or service not known\n",
                "unreachable: ssh: Could not resolve hostname nowhere: Name or service not known",
            ),
            (
                "Host key verification failed.\n",
                "host key not trusted: Host key verification failed.",
            ),
            ("something else\n", "ssh failed: something else"),
        ];
        for (stderr, line) in cases {
            assert_eq!(classify_ssh(stderr).to_string(), line);
        }
    }

    #[test]
    fn quoting_survives_quotes_and_spaces() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", quote("it's $HOME `x` \"y\"")))
            .output()
            .expect("sh runs");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "it's $HOME `x` \"y\"");
    }

    #[test]
    fn remote_dirs_of_paths() {
        assert_eq!(
            remote_dir_of(".zcluster/launched/hub-1.json"),
            ".zcluster/launched"
        );
        assert_eq!(remote_dir_of("/hub.json"), "/");
        assert_eq!(remote_dir_of("hub.json"), ".");
    }

    #[test]
    fn reports_read_as_one_line_each() {
        let report = |event| {
            Report {
                host: "alice@node2:2222".into(),
                event,
            }
            .to_string()
        };
        assert_eq!(
            report(HostEvent::Started {
                engine: 3,
                pid: 42,
                again: false
            }),
            "alice@node2:2222: started (engine 3, pid 42)"
        );
        assert_eq!(
            report(HostEvent::Failed(HostFailure::VersionDiffers {
                remote: "zcluster 0.0.9".into(),
                local: "0.1.0".into()
            })),
            "alice@node2:2222: version differs: zcluster 0.0.9 there, zcluster 0.1.0 here"
        );
        assert_eq!(
            report(HostEvent::Restarting {
                how: "exited with status 1".into(),
                delay: Duration::from_secs(2)
            }),
            "alice@node2:2222: worker exited with status 1; starting it again in 2s"
        );
        for event in [
            HostEvent::Exited,
            HostEvent::Stopped,
            HostEvent::NotRegistered {
                pid: 1,
                waited: REGISTER_TIMEOUT,
            },
        ] {
            assert!(!report(event).contains('\n'));
        }
    }
}
