//! Run one command, capture its output, with a timeout and cancellation.
//!
//! [`run`] is the single place where a task's process is started and
//! supervised. [`chunk`] runs a chunk of command tasks through it (an
//! engine's slots do) and holds the chunk the client front end builds. It never panics and never returns an error: everything that can
//! happen to a task, including failing to start it, is an [`ExitKind`] inside
//! an [`ExecOutcome`], which travels back over the wire as the task's result.
//!
//! # How a command is run
//!
//! * The program is executed directly (no shell; shell mode is the template's
//!   `["sh", "-c", line]`), with stdin from `/dev/null` and stdout and stderr
//!   captured through pipes, byte for byte (output need not be UTF-8).
//! * It is put in a **new process group** whose id is its pid, so a timeout or
//!   cancellation can signal the command *and everything it started*. (It
//!   also means a terminal's Ctrl-C does not reach tasks directly: the
//!   caller's SIGINT handler should set the cancel flag, see below.)
//! * It is also put in an **enclosure** that nothing it starts can leave,
//!   not even by `setsid` or a double fork: a cgroup v2 of its own where the
//!   machine allows, else its lineage traced through `/proc` with the worker
//!   as child subreaper (chosen once per process, logged at debug level; see
//!   [`TASK_CGROUPS_ENV`] to turn cgroups off). Every signal below goes to
//!   the process group *and* to whatever of the task left it.
//! * Both pipes are read in the calling thread with `poll(2)`: no thread,
//!   sleep or busy loop per task. Without a timeout or cancel flag, the
//!   thread just blocks in `poll`.
//! * After the command exits, its pipes are still read until end-of-file, so
//!   output of background processes that inherited them is captured; the
//!   timeout still applies while waiting for them.
//! * The child is always reaped before [`run`] returns, and the process group
//!   is only ever signalled before that, while the group id cannot have been
//!   reused by an unrelated process.
//! * **Nothing outlives the task.** Once the command has exited and its
//!   output is closed, whatever it left running (a daemon, a background job
//!   that does not hold its output) gets SIGTERM, up to
//!   [`ExecOptions::kill_grace`] to exit, then SIGKILL; [`run`] returns when
//!   it is gone. (A background process that keeps the output open is part
//!   of the task: it is read until it closes it, within the timeout.)
//!
//! # Timeout, cancellation and the kill sequence
//!
//! When [`ExecOptions::timeout`] expires, or the shared cancel flag is set:
//!
//! 1. SIGTERM is sent to the whole process group and everything of the task
//!    outside it;
//! 2. the pipes keep being drained for up to [`ExecOptions::kill_grace`]
//!    (default 1 s), so output written while shutting down is kept;
//! 3. when the command has exited and its pipes are closed, or when the grace
//!    runs out, SIGKILL is sent to the group and the enclosure (this also
//!    kills processes that ignored SIGTERM or outlived the command);
//! 4. the child is reaped, and the outcome is [`ExitKind::TimedOut`] or
//!    [`ExitKind::Cancelled`] with whatever output was captured.
//!
//! A process that escaped even the enclosure (only possible in the fallback,
//! see `lineage`) and keeps the pipes open is not waited for longer than
//! another `kill_grace` after SIGKILL.
//!
//! # Stopping everything at once
//!
//! There is one mechanism for "stop all running tasks" (Ctrl-C, `--halt
//! now`): give every [`run`] the same [`ExecOptions::cancel`] flag
//! (`Arc<AtomicBool>`) and store `true` in it. Storing into an atomic is
//! async-signal-safe, so a signal handler may do it. Every running task
//! notices within [`CANCEL_CHECK_INTERVAL`] (100 ms) and kills its group as
//! described above, and a [`run`] that starts after the flag is set returns
//! [`ExitKind::Cancelled`] without spawning anything. No global registry of
//! processes is needed.

use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

pub mod affinity;
mod cgroup;
pub mod chunk;
mod containment;
mod lineage;
mod spawn;

pub use containment::TASK_CGROUPS_ENV;

/// Runs `f` with `vars` added to the environment of every command [`run`]
/// starts on this thread meanwhile: how an engine tells a task what it was
/// given (`CUDA_VISIBLE_DEVICES`, `ZCLUSTER_CPUS`, ...).
pub fn with_task_environment<R>(vars: Vec<(String, String)>, f: impl FnOnce() -> R) -> R {
    spawn::with_task_environment(vars, f)
}
use containment::{Containment, Enclosure};

/// Default time between SIGTERM and SIGKILL: long enough for a well-behaved
/// program to clean up, short enough that a halt feels prompt.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(1);

/// How often a running task checks the cancel flag (only when one is given),
/// which bounds how long a cancellation takes to start killing.
pub const CANCEL_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Largest read from a pipe; the default pipe buffer is 64 KiB, so one read
/// can empty it.
const READ_CHUNK: usize = 64 * 1024;

std::thread_local! {
    /// Each thread's buffer for reading task output, kept from one task to
    /// the next: a new zeroed one per task cost 64 KiB of `memset`, about a
    /// third of a slot's own instructions per `true`.
    static READ_BUFFER: std::cell::Cell<Option<Box<[u8]>>> = const { std::cell::Cell::new(None) };
}

/// Upper bound of the sleep between exit checks when the kernel offers no
/// pidfd (only used after the command closed its pipes but is still running
/// and a timeout or cancel flag must be watched).
const MAX_EXIT_CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// How a task's command ended. Part of the task result sent back to the
/// ventilator, so it is plain data that serialises.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitKind {
    /// The command exited by itself with this status code.
    Exited(i32),
    /// The command was killed by this signal, not by us.
    Signaled(i32),
    /// The task's timeout expired and its process group was killed.
    TimedOut,
    /// The cancel flag was set (halt, Ctrl-C) and the process group was killed,
    /// or the task was cancelled before it started.
    Cancelled,
    /// The command could not be run (no such program, permission denied, ...)
    /// or, practically never, could not be waited for; the message names the
    /// program and the reason.
    SpawnFailed(String),
}

impl fmt::Display for ExitKind {
    /// Human wording for logs and summaries ("exited with status 1").
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitKind::Exited(code) => write!(f, "exited with status {code}"),
            ExitKind::Signaled(signal) => match Signal::try_from(*signal) {
                Ok(name) => write!(f, "killed by signal {signal} ({name})"),
                Err(_) => write!(f, "killed by signal {signal}"),
            },
            ExitKind::TimedOut => f.write_str("timed out"),
            ExitKind::Cancelled => f.write_str("cancelled"),
            ExitKind::SpawnFailed(message) => write!(f, "failed to start: {message}"),
        }
    }
}

/// Everything known about one run of a command: how it ended, its exact
/// output, and when and how long it ran. Sent over the wire as a task result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecOutcome {
    /// How the command ended.
    pub exit: ExitKind,
    /// Everything the command (and its children) wrote to stdout.
    #[serde(with = "serde_bytes")]
    pub stdout: Vec<u8>,
    /// Everything the command (and its children) wrote to stderr.
    #[serde(with = "serde_bytes")]
    pub stderr: Vec<u8>,
    /// Wall-clock time just before the command was started, for job logs.
    pub started: SystemTime,
    /// How long the run took, measured with a monotonic clock.
    pub elapsed: Duration,
}

impl ExecOutcome {
    /// Whether the task succeeded, i.e. exited by itself with status 0; this
    /// is what decides retries and the final exit status.
    pub fn success(&self) -> bool {
        self.exit == ExitKind::Exited(0)
    }

    /// The exit status if the command exited by itself, for job logs and
    /// for propagating a status.
    pub fn exit_code(&self) -> Option<i32> {
        match self.exit {
            ExitKind::Exited(code) => Some(code),
            _ => None,
        }
    }

    /// The signal that killed the command, if one did and it was not our
    /// own timeout or cancellation kill.
    pub fn signal(&self) -> Option<i32> {
        match self.exit {
            ExitKind::Signaled(signal) => Some(signal),
            _ => None,
        }
    }
}

/// Limits for one [`run`]. Cheap to clone; share one cancel flag among all
/// runs to be able to stop them all at once.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// Kill the task, everything it started included, once it has run this
    /// long (`None`: no limit).
    pub timeout: Option<Duration>,
    /// Time between SIGTERM and SIGKILL when killing a task.
    pub kill_grace: Duration,
    /// When this becomes `true`, the task is killed as on a timeout and ends
    /// as [`ExitKind::Cancelled`]; checked every [`CANCEL_CHECK_INTERVAL`].
    pub cancel: Option<Arc<AtomicBool>>,
    /// Variables set in the task's environment on top of this process's
    /// (a map's `--env` and `ZCLUSTER_*`), replacing any value they had.
    pub env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    /// The directory the task starts in (`None`: this process's); one
    /// that does not exist fails the task with that reason.
    pub cwd: Option<std::path::PathBuf>,
}

impl Default for ExecOptions {
    /// No timeout, no cancel flag, [`DEFAULT_KILL_GRACE`].
    fn default() -> Self {
        ExecOptions {
            timeout: None,
            kill_grace: DEFAULT_KILL_GRACE,
            cancel: None,
            env: Vec::new(),
            cwd: None,
        }
    }
}

/// Why we are killing a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    TimedOut,
    Cancelled,
}

/// Where a run is in the kill sequence. `None` instants mean "never"
/// (a deadline too far away to represent).
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Running normally.
    Running,
    /// SIGTERM sent; SIGKILL at `kill_at`.
    Terminating { kill_at: Option<Instant> },
    /// SIGKILL sent; stop reading pipes at `abandon_at`.
    Killed { abandon_at: Option<Instant> },
}

/// The outcome of a task that was never started, for `reason`.
pub(crate) fn not_started(reason: &str) -> ExecOutcome {
    ExecOutcome {
        exit: ExitKind::SpawnFailed(reason.to_owned()),
        stdout: Vec::new(),
        stderr: Vec::new(),
        started: SystemTime::now(),
        elapsed: Duration::ZERO,
    }
}

/// Runs `argv` (program and arguments) to completion under `options` and
/// reports how it ended and what it wrote. Never panics and never fails: a
/// command that cannot be started is [`ExitKind::SpawnFailed`]. Arguments
/// are `OsStr`s: on Unix any bytes but NUL, so a file name that is not
/// UTF-8 reaches the command exactly.
#[must_use = "the outcome is the task's result"]
pub fn run<A: AsRef<OsStr>>(argv: &[A], options: &ExecOptions) -> ExecOutcome {
    run_in(Containment::get(), argv, options)
}

/// [`run`] with the way of containing the task given (tests use both).
fn run_in<A: AsRef<OsStr>>(
    containment: &Containment,
    argv: &[A],
    options: &ExecOptions,
) -> ExecOutcome {
    let argv: Vec<&OsStr> = argv.iter().map(AsRef::as_ref).collect();
    let started = SystemTime::now();
    let clock = Instant::now();
    let finish = |exit, stdout, stderr| ExecOutcome {
        exit,
        stdout,
        stderr,
        started,
        elapsed: clock.elapsed(),
    };
    let Some((program, args)) = argv.split_first() else {
        return finish(
            ExitKind::SpawnFailed("empty command: no program to run".to_owned()),
            Vec::new(),
            Vec::new(),
        );
    };
    if is_set(options.cancel.as_deref()) {
        return finish(ExitKind::Cancelled, Vec::new(), Vec::new());
    }
    if let Some(dir) = options.cwd.as_deref().filter(|dir| !dir.is_dir()) {
        return finish(
            ExitKind::SpawnFailed(format!(
                "working directory {} does not exist on {}",
                dir.display(),
                crate::host_name()
            )),
            Vec::new(),
            Vec::new(),
        );
    }
    let setup = spawn::Setup {
        env: &options.env,
        cwd: options.cwd.as_deref(),
    };
    let (process, enclosure) = match containment::spawn(containment, program, args, setup) {
        Ok(spawned) => spawned,
        Err(error) => {
            return finish(
                ExitKind::SpawnFailed(format!("cannot run {program:?}: {error}")),
                Vec::new(),
                Vec::new(),
            )
        }
    };
    let mut supervisor = Supervisor::new(process, enclosure, clock, options);
    supervisor.supervise();
    let exit = supervisor.reap(program);
    finish(exit, supervisor.stdout, supervisor.stderr)
}

/// The state of one running command while [`run`] watches it.
struct Supervisor<'a> {
    /// The child's pid, which is also its process group id.
    pgid: Pid,
    /// Everything the task started, wherever it went: its cgroup, or its
    /// traced lineage. Taken when the task ends.
    enclosure: Option<Enclosure>,
    out_pipe: Option<File>,
    err_pipe: Option<File>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    deadline: Option<Instant>,
    options: &'a ExecOptions,
    stop: Option<StopReason>,
    phase: Phase,
    /// Set when supervision itself failed; the group is then killed.
    internal_error: bool,
    /// Readable when the child has exited; opened only when needed.
    pidfd: Option<OwnedFd>,
    pidfd_unavailable: bool,
    exit_check_interval: Duration,
}

impl<'a> Supervisor<'a> {
    fn new(
        process: spawn::Process,
        enclosure: Enclosure,
        clock: Instant,
        options: &'a ExecOptions,
    ) -> Self {
        Supervisor {
            pgid: process.pid,
            enclosure: Some(enclosure),
            out_pipe: Some(process.stdout),
            err_pipe: Some(process.stderr),
            stdout: Vec::new(),
            stderr: Vec::new(),
            deadline: options.timeout.and_then(|t| clock.checked_add(t)),
            options,
            stop: None,
            phase: Phase::Running,
            internal_error: false,
            pidfd: None,
            pidfd_unavailable: false,
            exit_check_interval: Duration::from_millis(1),
        }
    }

    /// Reads output and drives the kill sequence until the pipes are closed
    /// and the child has exited (or has been killed and is about to).
    fn supervise(&mut self) {
        // Taken for the task and put back after (a task run from inside
        // another's supervision, should that ever be, makes its own).
        let mut buf = READ_BUFFER
            .take()
            .unwrap_or_else(|| vec![0u8; READ_CHUNK].into_boxed_slice());
        self.supervise_with(&mut buf);
        READ_BUFFER.set(Some(buf));
    }

    fn supervise_with(&mut self, buf: &mut [u8]) {
        loop {
            let now = Instant::now();
            self.advance_kill_sequence(now);
            if let Phase::Killed { abandon_at } = self.phase {
                if reached(abandon_at, now) {
                    self.drain_ready(buf);
                    if self.pipes_open() {
                        tracing::warn!(
                            pgid = self.pgid.as_raw(),
                            "task output still open after SIGKILL; a process left its group; \
                             no longer reading it"
                        );
                    }
                    self.out_pipe = None;
                    self.err_pipe = None;
                    return;
                }
            }
            let pipes_open = self.pipes_open();
            if !pipes_open {
                if self.may_block_in_wait() || self.child_exited() {
                    return;
                }
                self.open_pidfd();
            }
            let timeout = self.poll_timeout(now, pipes_open);
            if self.poll_and_read(timeout, buf).is_none() {
                return;
            }
        }
    }

    /// Reads whatever output is already buffered in the pipes, without
    /// waiting, before they are abandoned. Bounded, in case an escaped
    /// process keeps writing.
    fn drain_ready(&mut self, buf: &mut [u8]) {
        for _ in 0..64 {
            if !self.pipes_open() || self.poll_and_read(Some(Duration::ZERO), buf) != Some(true) {
                return;
            }
        }
    }

    /// Starts or advances the kill sequence according to the cancel flag,
    /// the deadline and the grace period.
    fn advance_kill_sequence(&mut self, now: Instant) {
        if self.stop.is_none() {
            if is_set(self.options.cancel.as_deref()) {
                self.begin_stop(StopReason::Cancelled, now);
            } else if self.deadline.is_some_and(|deadline| now >= deadline) {
                self.begin_stop(StopReason::TimedOut, now);
            }
        }
        if let Phase::Terminating { kill_at } = self.phase {
            if reached(kill_at, now) {
                self.signal_task(Signal::SIGKILL);
                self.phase = Phase::Killed {
                    abandon_at: now.checked_add(self.options.kill_grace),
                };
            }
        }
    }

    fn begin_stop(&mut self, reason: StopReason, now: Instant) {
        tracing::debug!(pgid = self.pgid.as_raw(), ?reason, "stopping task");
        self.stop = Some(reason);
        self.signal_task(Signal::SIGTERM);
        self.phase = Phase::Terminating {
            kill_at: now.checked_add(self.options.kill_grace),
        };
    }

    /// Sends `signal` to every process of the task: its process group and
    /// whatever left it (see [`Enclosure`]).
    fn signal_task(&mut self, signal: Signal) {
        self.signal_group(signal);
        if let Some(enclosure) = self.enclosure.as_mut() {
            enclosure.signal_outside(self.pgid, signal);
        }
    }

    /// Sends `signal` to the task's process group. Only called before the
    /// child is reaped, so the group id still belongs to this task.
    fn signal_group(&self, signal: Signal) {
        match killpg(self.pgid, signal) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(error) => tracing::warn!(
                pgid = self.pgid.as_raw(),
                %signal,
                %error,
                "could not signal task process group"
            ),
        }
    }

    fn pipes_open(&self) -> bool {
        self.out_pipe.is_some() || self.err_pipe.is_some()
    }

    /// With no deadline and no cancel flag there is nothing to watch for, so
    /// a blocking wait is right. After SIGKILL the wait is short.
    fn may_block_in_wait(&self) -> bool {
        match self.phase {
            Phase::Killed { .. } => true,
            Phase::Terminating { .. } => false,
            Phase::Running => self.deadline.is_none() && self.options.cancel.is_none(),
        }
    }

    /// Whether the child has exited, without reaping it (so its pid, and thus
    /// the group id, stays reserved until [`Supervisor::reap`]).
    fn child_exited(&self) -> bool {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        loop {
            match waitid(Id::Pid(self.pgid), flags) {
                Ok(WaitStatus::StillAlive) => return false,
                Err(Errno::EINTR) => {}
                // Exited, or cannot be waited for (reap() reports that).
                _ => return true,
            }
        }
    }

    /// Blocks until the child has exited, without reaping it. Errors are
    /// left for [`Supervisor::reap`]'s wait to report.
    fn wait_exited(&self) {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT;
        while waitid(Id::Pid(self.pgid), flags) == Err(Errno::EINTR) {}
    }

    /// Opens a pidfd for the child so its exit can be polled for together
    /// with the deadline; falls back to periodic checks if unsupported.
    fn open_pidfd(&mut self) {
        if self.pidfd.is_none() && !self.pidfd_unavailable {
            match pidfd_open(self.pgid) {
                Ok(fd) => self.pidfd = Some(fd),
                Err(error) => {
                    tracing::debug!(%error, "pidfd_open unavailable; checking exit periodically");
                    self.pidfd_unavailable = true;
                }
            }
        }
    }

    /// How long the next poll may block: until the next step of the kill
    /// sequence, at most [`CANCEL_CHECK_INTERVAL`] when a cancel flag must be
    /// watched, and briefly when exit must be checked without a pidfd.
    fn poll_timeout(&mut self, now: Instant, pipes_open: bool) -> Option<Duration> {
        let wake = match self.phase {
            Phase::Running => self.deadline,
            Phase::Terminating { kill_at } => kill_at,
            Phase::Killed { abandon_at } => abandon_at,
        };
        let mut timeout = wake.map(|at| at.saturating_duration_since(now));
        if self.stop.is_none() && self.options.cancel.is_some() {
            timeout = Some(timeout.map_or(CANCEL_CHECK_INTERVAL, |t| t.min(CANCEL_CHECK_INTERVAL)));
        }
        if !pipes_open && self.pidfd.is_none() {
            let interval = self.exit_check_interval;
            self.exit_check_interval = (interval * 2).min(MAX_EXIT_CHECK_INTERVAL);
            timeout = Some(timeout.map_or(interval, |t| t.min(interval)));
        }
        timeout
    }

    /// Polls the open pipes (and the pidfd once the pipes are closed) and
    /// reads whatever is ready. Returns whether a pipe was ready, or `None`
    /// if supervision must stop because polling itself failed.
    fn poll_and_read(&mut self, timeout: Option<Duration>, buf: &mut [u8]) -> Option<bool> {
        let polled = {
            let mut fds = Vec::with_capacity(3);
            let events = PollFlags::POLLIN;
            let out_index = self.out_pipe.as_ref().map(|pipe| {
                fds.push(PollFd::new(pipe.as_fd(), events));
                fds.len() - 1
            });
            let err_index = self.err_pipe.as_ref().map(|pipe| {
                fds.push(PollFd::new(pipe.as_fd(), events));
                fds.len() - 1
            });
            if out_index.is_none() && err_index.is_none() {
                if let Some(pidfd) = &self.pidfd {
                    fds.push(PollFd::new(pidfd.as_fd(), events));
                }
            }
            let ready = |fds: &[PollFd<'_>], index: Option<usize>| {
                index
                    .and_then(|i| fds[i].revents())
                    .is_some_and(|revents| !revents.is_empty())
            };
            nix::poll::poll(&mut fds, to_poll_timeout(timeout))
                .map(|_| (ready(&fds, out_index), ready(&fds, err_index)))
        };
        let (out_ready, err_ready) = match polled {
            Ok(ready) => ready,
            Err(Errno::EINTR) => return Some(false),
            Err(error) => {
                self.fail(&format!("polling the command's output failed: {error}"));
                return None;
            }
        };
        if out_ready {
            read_some(&mut self.out_pipe, &mut self.stdout, buf);
        }
        if err_ready {
            read_some(&mut self.err_pipe, &mut self.stderr, buf);
        }
        Some(out_ready || err_ready)
    }

    /// Gives up supervising after an unexpected system error: notes it in the
    /// captured stderr and kills the group so nothing is left running.
    fn fail(&mut self, message: &str) {
        tracing::error!(pgid = self.pgid.as_raw(), "{message}");
        self.stderr
            .extend_from_slice(format!("\nzcluster: {message}; killed the task\n").as_bytes());
        self.internal_error = true;
        self.out_pipe = None;
        self.err_pipe = None;
    }

    /// Finishes the kill sequence if one was started, reaps the child and
    /// says how the task ended.
    fn reap(&mut self, program: &OsStr) -> ExitKind {
        let killed = self.stop.is_some() || self.internal_error;
        if killed {
            // Kill stragglers (e.g. ones that ignored SIGTERM) while the
            // unreaped child still reserves the group id.
            self.signal_group(Signal::SIGKILL);
        }
        self.out_pipe = None;
        self.err_pipe = None;
        // Whatever the task left running dies with it: at once after a
        // timeout or cancellation, after SIGTERM and the grace otherwise.
        // The task has ended once its first process has exited (its output
        // may close a moment before): wait for that, without reaping it, so
        // its pid cannot be reused meanwhile.
        if let Some(enclosure) = self.enclosure.take() {
            self.wait_exited();
            enclosure.end(killed, self.options.kill_grace);
        }
        let status = loop {
            match waitpid(self.pgid, None) {
                Err(Errno::EINTR) => {}
                Ok(status) => break status,
                Err(error) => {
                    tracing::error!(pgid = self.pgid.as_raw(), %error, "cannot wait for task");
                    return ExitKind::SpawnFailed(format!(
                        "lost track of {program:?}: waiting for it failed: {error}"
                    ));
                }
            }
        };
        match (self.stop, status) {
            (Some(StopReason::TimedOut), _) => ExitKind::TimedOut,
            (Some(StopReason::Cancelled), _) => ExitKind::Cancelled,
            (None, WaitStatus::Exited(_, code)) => ExitKind::Exited(code),
            (None, WaitStatus::Signaled(_, signal, _)) => ExitKind::Signaled(signal as i32),
            // Nothing else is reported without WUNTRACED or WCONTINUED.
            (None, _) => ExitKind::Exited(-1),
        }
    }
}

/// Reads once from a ready pipe into `sink`; closes the pipe at end-of-file
/// or on a read error (logged), so it is not polled again.
fn read_some<P: Read>(pipe: &mut Option<P>, sink: &mut Vec<u8>, buf: &mut [u8]) {
    let Some(reader) = pipe.as_mut() else {
        return;
    };
    match reader.read(buf) {
        Ok(0) => *pipe = None,
        Ok(n) => sink.extend_from_slice(&buf[..n]),
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
            ) => {}
        Err(error) => {
            tracing::warn!(%error, "reading task output failed; ignoring the rest");
            *pipe = None;
        }
    }
}

fn is_set(flag: Option<&AtomicBool>) -> bool {
    flag.is_some_and(|flag| flag.load(Ordering::Relaxed))
}

/// Whether an optional instant has passed (`None` never does).
fn reached(at: Option<Instant>, now: Instant) -> bool {
    at.is_some_and(|at| now >= at)
}

/// Converts a wait to poll's millisecond timeout, rounding up so a wait of
/// less than a millisecond does not spin, and `None` to "block".
fn to_poll_timeout(timeout: Option<Duration>) -> PollTimeout {
    match timeout {
        None => PollTimeout::NONE,
        Some(wait) => {
            PollTimeout::try_from(wait.as_nanos().div_ceil(1_000_000)).unwrap_or(PollTimeout::MAX)
        }
    }
}

/// Opens a pidfd (Linux 5.3+), a file descriptor that becomes readable when
/// the process exits, so its exit can be waited for with `poll`.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn pidfd_open(pid: Pid) -> Result<OwnedFd, Errno> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1;
    // it touches no memory of ours.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    let raw = Errno::result(raw)?;
    let raw = i32::try_from(raw).map_err(|_| Errno::EBADF)?;
    // SAFETY: the syscall succeeded, so `raw` is a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Without pidfds, exit is checked periodically (see [`Supervisor::poll_timeout`]).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn pidfd_open(_pid: Pid) -> Result<OwnedFd, Errno> {
    Err(Errno::ENOSYS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    fn sh(script: &str) -> Vec<String> {
        argv(&["sh", "-c", script])
    }

    fn run_default(args: &[String]) -> ExecOutcome {
        run(args, &ExecOptions::default())
    }

    fn with_timeout(timeout: Duration, grace: Duration) -> ExecOptions {
        ExecOptions {
            timeout: Some(timeout),
            kill_grace: grace,
            cancel: None,
            ..ExecOptions::default()
        }
    }

    /// Whether a process is gone: no such pid, or only a zombie waiting to be
    /// reaped by whoever inherited it (PID 1 in a container may be slow).
    fn process_gone(pid: i32) -> bool {
        match nix::sys::signal::kill(Pid::from_raw(pid), None) {
            Err(Errno::ESRCH) => true,
            _ => std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|stat| {
                    stat.rsplit_once(") ")
                        .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X'))
                })
                .unwrap_or(true),
        }
    }

    fn wait_gone(pid: i32) -> bool {
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            if process_gone(pid) {
                return true;
            }
            thread::sleep(Duration::from_millis(10));
        }
        false
    }

    fn first_line_pid(output: &[u8]) -> i32 {
        String::from_utf8_lossy(output)
            .lines()
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[test]
    fn true_and_false() {
        let outcome = run_default(&argv(&["true"]));
        assert_eq!(outcome.exit, ExitKind::Exited(0));
        assert!(outcome.success());
        assert_eq!(outcome.exit_code(), Some(0));
        assert_eq!(outcome.signal(), None);
        assert!(outcome.stdout.is_empty() && outcome.stderr.is_empty());

        let outcome = run_default(&argv(&["false"]));
        assert_eq!(outcome.exit, ExitKind::Exited(1));
        assert!(!outcome.success());
        assert_eq!(outcome.exit_code(), Some(1));
        assert_eq!(run_default(&sh("exit 42")).exit, ExitKind::Exited(42));
    }

    #[test]
    fn killed_by_signal() {
        let outcome = run_default(&sh("kill -9 $$"));
        assert_eq!(outcome.exit, ExitKind::Signaled(9));
        assert_eq!(outcome.signal(), Some(9));
        assert_eq!(outcome.exit_code(), None);
        assert!(!outcome.success());
        assert_eq!(outcome.exit.to_string(), "killed by signal 9 (SIGKILL)");
    }

    #[test]
    fn stdout_and_stderr_are_separate_and_exact() {
        let outcome = run_default(&sh(r"printf 'out\377\000x'; printf 'err\n\376' >&2"));
        assert_eq!(outcome.exit, ExitKind::Exited(0));
        assert_eq!(outcome.stdout, b"out\xff\x00x");
        assert_eq!(outcome.stderr, b"err\n\xfe");
    }

    #[test]
    fn stdin_is_empty() {
        let outcome = run_default(&argv(&["cat"]));
        assert_eq!(outcome.exit, ExitKind::Exited(0));
        assert!(outcome.stdout.is_empty());
    }

    #[test]
    fn large_output_on_both_pipes_does_not_deadlock() {
        let outcome = run_default(&sh(
            "head -c 5000000 /dev/zero; head -c 3000000 /dev/zero >&2; head -c 1000 /dev/zero",
        ));
        assert_eq!(outcome.exit, ExitKind::Exited(0));
        assert_eq!(outcome.stdout.len(), 5_001_000);
        assert_eq!(outcome.stderr.len(), 3_000_000);
    }

    #[test]
    fn spawn_failures_are_outcomes() {
        let outcome = run_default(&argv(&["/nonexistent/zcluster-no-such-program", "x"]));
        match &outcome.exit {
            ExitKind::SpawnFailed(message) => {
                assert!(message.contains("zcluster-no-such-program"), "{message}");
                assert!(message.contains("No such file"), "{message}");
            }
            other => panic!("expected SpawnFailed, got {other:?}"),
        }
        assert!(!outcome.success());

        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("not-executable");
        std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
        let outcome = run_default(&[script.display().to_string()]);
        match &outcome.exit {
            ExitKind::SpawnFailed(message) => {
                assert!(message.contains("not-executable"), "{message}");
                assert!(message.contains("ermission denied"), "{message}");
            }
            other => panic!("expected SpawnFailed, got {other:?}"),
        }

        assert!(matches!(run_default(&[]).exit, ExitKind::SpawnFailed(_)));
    }

    #[test]
    fn timeout_kills_the_whole_group() {
        let start = Instant::now();
        let outcome = run(
            &sh("sleep 30 & echo $!; sleep 30"),
            &with_timeout(Duration::from_millis(200), Duration::from_secs(1)),
        );
        let took = start.elapsed();
        assert_eq!(outcome.exit, ExitKind::TimedOut);
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        let grandchild = first_line_pid(&outcome.stdout);
        assert!(
            wait_gone(grandchild),
            "background sleep {grandchild} survived"
        );
    }

    #[test]
    fn sigterm_ignoring_process_is_killed_after_grace() {
        let start = Instant::now();
        let outcome = run(
            &sh("trap '' TERM; echo ready; sleep 30; echo not reached"),
            &with_timeout(Duration::from_millis(100), Duration::from_millis(300)),
        );
        let took = start.elapsed();
        assert_eq!(outcome.exit, ExitKind::TimedOut);
        assert_eq!(outcome.stdout, b"ready\n");
        assert!(took >= Duration::from_millis(400), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
    }

    #[test]
    fn zero_grace_kills_at_once_and_keeps_output() {
        let start = Instant::now();
        let outcome = run(
            &sh("trap '' TERM; head -c 100000 /dev/zero; sleep 30"),
            &with_timeout(Duration::from_millis(100), Duration::ZERO),
        );
        assert_eq!(outcome.exit, ExitKind::TimedOut);
        assert_eq!(outcome.stdout.len(), 100_000);
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn output_written_on_sigterm_is_kept() {
        let outcome = run(
            &sh("trap 'echo bye; exit 3' TERM; echo hi; sleep 30 & wait"),
            &with_timeout(Duration::from_millis(200), Duration::from_secs(2)),
        );
        assert_eq!(outcome.exit, ExitKind::TimedOut);
        assert_eq!(outcome.stdout, b"hi\nbye\n");
    }

    #[test]
    fn timeout_applies_after_pipes_close() {
        let start = Instant::now();
        let outcome = run(
            &sh("exec >/dev/null 2>&1; sleep 30"),
            &with_timeout(Duration::from_millis(200), Duration::from_secs(1)),
        );
        assert_eq!(outcome.exit, ExitKind::TimedOut);
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn a_timeout_that_is_not_reached_changes_nothing() {
        let outcome = run(
            &sh("echo fast"),
            &with_timeout(Duration::from_secs(10), Duration::from_secs(1)),
        );
        assert_eq!(outcome.exit, ExitKind::Exited(0));
        assert_eq!(outcome.stdout, b"fast\n");
        assert!(outcome.elapsed < Duration::from_secs(5));
        let huge = with_timeout(Duration::MAX, Duration::MAX);
        assert_eq!(run(&argv(&["true"]), &huge).exit, ExitKind::Exited(0));
    }

    #[test]
    fn background_output_after_exit_is_collected() {
        let start = Instant::now();
        let outcome = run_default(&sh("(sleep 0.3; echo late) & echo early"));
        assert_eq!(outcome.exit, ExitKind::Exited(0));
        assert_eq!(outcome.stdout, b"early\nlate\n");
        assert!(start.elapsed() >= Duration::from_millis(300));
    }

    #[test]
    fn timeout_covers_background_processes_holding_the_pipes() {
        let outcome = run(
            &sh("sleep 30 & echo $!; exit 0"),
            &with_timeout(Duration::from_millis(200), Duration::from_secs(1)),
        );
        assert_eq!(outcome.exit, ExitKind::TimedOut);
        let grandchild = first_line_pid(&outcome.stdout);
        assert!(
            wait_gone(grandchild),
            "background sleep {grandchild} survived"
        );
    }

    #[test]
    fn cancel_flag_stops_a_running_task() {
        let cancel = Arc::new(AtomicBool::new(false));
        let options = ExecOptions {
            cancel: Some(Arc::clone(&cancel)),
            ..ExecOptions::default()
        };
        let setter = {
            let cancel = Arc::clone(&cancel);
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(150));
                cancel.store(true, Ordering::Relaxed);
            })
        };
        let start = Instant::now();
        let outcome = run(&argv(&["sleep", "30"]), &options);
        setter.join().unwrap();
        assert_eq!(outcome.exit, ExitKind::Cancelled);
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        // Once set, nothing new is started.
        let outcome = run(&argv(&["true"]), &options);
        assert_eq!(outcome.exit, ExitKind::Cancelled);
    }

    #[test]
    fn one_shared_flag_stops_every_running_task() {
        let cancel = Arc::new(AtomicBool::new(false));
        let options = ExecOptions {
            cancel: Some(Arc::clone(&cancel)),
            ..ExecOptions::default()
        };
        let runners: Vec<_> = (0..3)
            .map(|_| {
                let options = options.clone();
                thread::spawn(move || {
                    let start = Instant::now();
                    let outcome = run(&sh("sleep 30 & echo $!; sleep 30"), &options);
                    (outcome, start.elapsed())
                })
            })
            .collect();
        thread::sleep(Duration::from_millis(200));
        cancel.store(true, Ordering::Relaxed);
        for runner in runners {
            let (outcome, took) = runner.join().unwrap();
            assert_eq!(outcome.exit, ExitKind::Cancelled);
            assert!(took < Duration::from_secs(2), "{took:?}");
            let grandchild = first_line_pid(&outcome.stdout);
            assert!(
                wait_gone(grandchild),
                "background sleep {grandchild} survived"
            );
        }
    }

    /// Whether `pid` is still a (possibly zombie) child of this process.
    fn is_our_child(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                let (_, rest) = stat.rsplit_once(") ")?;
                rest.split_whitespace().nth(1)?.parse::<u32>().ok()
            })
            .is_some_and(|ppid| ppid == std::process::id())
    }

    #[test]
    fn the_child_is_always_reaped() {
        let quick = with_timeout(Duration::from_millis(50), Duration::from_millis(50));
        for (script, options) in [
            ("echo $$", ExecOptions::default()),
            ("echo $$; exit 3", ExecOptions::default()),
            ("echo $$; kill -9 $$", ExecOptions::default()),
            ("echo $$; exec >&-; sleep 5", quick.clone()),
            ("echo $$; sleep 5", quick),
        ] {
            let outcome = run(&sh(script), &options);
            let pid = first_line_pid(&outcome.stdout);
            assert!(!is_our_child(pid), "{script:?} left {pid} unreaped");
        }
    }

    /// Both ways of keeping hold of a task: this machine's choice (a cgroup
    /// per task where it allows) and the fallback, forced.
    fn containments() -> [(&'static str, &'static Containment); 2] {
        static LINEAGE: Containment = Containment::Lineage;
        [("default", Containment::get()), ("lineage", &LINEAGE)]
    }

    /// Daemons a task may leave: each writes its own pid to the file named
    /// by the task's `$0` and sleeps, outside the task's process group
    /// (`setsid`) or tree (a double fork), or both.
    const DAEMONS: [(&str, &str); 3] = [
        (
            "setsid",
            r#"setsid sh -c 'echo $$ > "$0"; exec sleep 300' "$0" &"#,
        ),
        (
            "double fork",
            r#"( sh -c 'echo $$ > "$0"; exec sleep 300' "$0" & ) &"#,
        ),
        (
            "double fork and setsid",
            r#"( setsid sh -c 'echo $$ > "$0"; exec sleep 300' "$0" & ) &"#,
        ),
    ];

    /// Waits, inside the task, until the daemon has written its pid.
    const AWAIT_PID_FILE: &str = r#"while [ ! -s "$0" ]; do sleep 0.01; done"#;

    /// Kills what a failing test leaves behind (each pid and its process
    /// group), so a 300 s sleep does not outlive it.
    struct KillOnDrop(Vec<i32>);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            for &pid in &self.0 {
                if !process_gone(pid) {
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
    }

    /// Creates a file when dropped: tells a task waiting for it to end,
    /// also when the test fails first.
    struct TouchOnDrop(std::path::PathBuf);

    impl Drop for TouchOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::write(&self.0, "");
        }
    }

    fn read_pid(path: &std::path::Path) -> i32 {
        std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .parse()
            .unwrap()
    }

    /// Runs `script` (with the pid file as `$0`) for every containment and
    /// daemon at once; each one's outcome and daemon pid.
    fn run_daemons(
        script: impl Fn(&str) -> String,
        options: &ExecOptions,
    ) -> Vec<(String, ExecOutcome, i32)> {
        let dir = tempfile::tempdir().unwrap();
        let runs: Vec<_> = containments()
            .into_iter()
            .flat_map(|containment| DAEMONS.map(|daemon| (containment, daemon)))
            .enumerate()
            .map(|(n, ((how, containment), (daemon, start)))| {
                let pid_file = dir.path().join(format!("{n}.pid"));
                let mut args = sh(&script(start));
                args.push(pid_file.display().to_string());
                let options = options.clone();
                let label = format!("{daemon}, {how}");
                thread::spawn(move || {
                    let outcome = run_in(containment, &args, &options);
                    (label, outcome, read_pid(&pid_file))
                })
            })
            .collect();
        runs.into_iter().map(|run| run.join().unwrap()).collect()
    }

    #[test]
    fn a_timeout_kills_daemons_that_left_the_group() {
        let options = with_timeout(Duration::from_secs(1), Duration::from_millis(200));
        let runs = run_daemons(
            |start| format!("{start} {AWAIT_PID_FILE}; sleep 30"),
            &options,
        );
        let _cleanup = KillOnDrop(runs.iter().map(|run| run.2).collect());
        for (label, outcome, daemon) in &runs {
            assert_eq!(outcome.exit, ExitKind::TimedOut, "{label}");
            assert!(wait_gone(*daemon), "{label}: daemon {daemon} survived");
        }
    }

    #[test]
    fn a_daemon_left_behind_is_killed_when_the_task_ends() {
        let runs = run_daemons(
            |start| format!("exec >/dev/null 2>&1; {start} {AWAIT_PID_FILE}; exit 0"),
            &ExecOptions::default(),
        );
        let _cleanup = KillOnDrop(runs.iter().map(|run| run.2).collect());
        for (label, outcome, daemon) in &runs {
            assert_eq!(outcome.exit, ExitKind::Exited(0), "{label}");
            assert!(wait_gone(*daemon), "{label}: daemon {daemon} survived");
        }
    }

    #[test]
    fn a_daemon_left_behind_gets_sigterm_first() {
        let dir = tempfile::tempdir().unwrap();
        for (how, containment) in containments() {
            let said = dir.path().join(format!("{how}.term"));
            let pid_file = dir.path().join(format!("{how}.pid"));
            let script = format!(
                r#"exec >/dev/null 2>&1
                setsid sh -c 'trap "echo bye > $1; exit 0" TERM; echo $$ > "$0"; sleep 300 & wait' "$0" "$1" &
                {AWAIT_PID_FILE}"#
            );
            let mut args = sh(&script);
            args.extend([pid_file.display().to_string(), said.display().to_string()]);
            let outcome = run_in(containment, &args, &ExecOptions::default());
            let daemon = read_pid(&pid_file);
            let _cleanup = KillOnDrop(vec![daemon]);
            assert_eq!(outcome.exit, ExitKind::Exited(0), "{how}");
            assert!(wait_gone(daemon), "{how}: daemon {daemon} survived");
            assert_eq!(
                std::fs::read_to_string(&said).unwrap_or_default(),
                "bye\n",
                "{how}"
            );
        }
    }

    #[test]
    fn ending_one_task_leaves_another_tasks_processes_alone() {
        let dir = tempfile::tempdir().unwrap();
        for (how, containment) in containments() {
            let other_pid = dir.path().join(format!("{how}-other.pid"));
            let go = dir.path().join(format!("{how}.go"));
            // The other task keeps a background sleep of its own (same
            // group) until told to end.
            let mut other = sh(r#"exec >/dev/null 2>&1; sleep 300 & echo $! > "$0"
                i=0; while [ ! -e "$1" ] && [ $i -lt 2000 ]; do sleep 0.01; i=$((i+1)); done"#);
            other.extend([other_pid.display().to_string(), go.display().to_string()]);
            let go_on_drop = TouchOnDrop(go.clone());
            let runner = thread::spawn(move || {
                run_in(
                    containment,
                    &other,
                    &with_timeout(Duration::from_secs(20), Duration::from_millis(200)),
                )
            });
            let until = Instant::now() + Duration::from_secs(10);
            while std::fs::read_to_string(&other_pid).map_or(true, |pid| !pid.ends_with('\n'))
                && Instant::now() < until
            {
                thread::sleep(Duration::from_millis(10));
            }
            let sleeper = read_pid(&other_pid);
            let _cleanup = KillOnDrop(vec![sleeper]);
            // This task leaves a daemon and ends: only its daemon dies.
            let pid_file = dir.path().join(format!("{how}.pid"));
            let mut leaves = sh(&format!(
                "exec >/dev/null 2>&1; {} {AWAIT_PID_FILE}",
                DAEMONS[2].1
            ));
            leaves.push(pid_file.display().to_string());
            assert_eq!(
                run_in(containment, &leaves, &ExecOptions::default()).exit,
                ExitKind::Exited(0)
            );
            let daemon = read_pid(&pid_file);
            let _cleanup_daemon = KillOnDrop(vec![daemon]);
            assert!(wait_gone(daemon), "{how}: daemon {daemon} survived");
            assert!(
                !process_gone(sleeper),
                "{how}: the other task's sleep {sleeper} was killed"
            );
            drop(go_on_drop);
            assert_eq!(runner.join().unwrap().exit, ExitKind::Exited(0), "{how}");
            assert!(
                wait_gone(sleeper),
                "{how}: the other task's sleep survived its end"
            );
        }
    }

    #[test]
    fn each_task_has_a_cgroup_of_its_own_left_empty_at_its_end() {
        let Containment::Cgroups(cgroups) = Containment::get() else {
            eprintln!("SKIP: no task cgroups on this machine");
            return;
        };
        let script = "cat /proc/self/cgroup; exec >/dev/null 2>&1; sleep 300 & setsid sleep 300 &";
        let outcome = run_default(&sh(script));
        assert_eq!(outcome.exit, ExitKind::Exited(0));
        let text = String::from_utf8(outcome.stdout).unwrap();
        let path = text
            .lines()
            .find_map(|line| line.strip_prefix("0::"))
            .unwrap_or_else(|| panic!("no cgroup v2 line in {text:?}"));
        let (parent, name) = path.rsplit_once('/').unwrap();
        assert!(name.starts_with("task-"), "{path}");
        assert!(
            parent.ends_with(&format!("/zcluster-{}", std::process::id())),
            "{path}"
        );
        // Removed, or kept empty for a later task.
        let procs = cgroups.base().join(name).join("cgroup.procs");
        let left = std::fs::read_to_string(&procs).unwrap_or_default();
        assert!(left.is_empty(), "{path} still holds {left:?}");
    }

    #[test]
    fn outcome_serialises() {
        let outcome = run_default(&sh(r"printf 'a\377'; exit 2"));
        let config = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(&outcome, config).unwrap();
        let (back, _): (ExecOutcome, usize) =
            bincode::serde::decode_from_slice(&bytes, config).unwrap();
        assert_eq!(back, outcome);
        for exit in [
            ExitKind::Signaled(15),
            ExitKind::TimedOut,
            ExitKind::Cancelled,
            ExitKind::SpawnFailed("x".into()),
        ] {
            let bytes = bincode::serde::encode_to_vec(&exit, config).unwrap();
            let (back, _): (ExitKind, usize) =
                bincode::serde::decode_from_slice(&bytes, config).unwrap();
            assert_eq!(back, exit);
        }
    }

    #[test]
    fn exit_kind_wording() {
        assert_eq!(ExitKind::Exited(1).to_string(), "exited with status 1");
        assert_eq!(ExitKind::TimedOut.to_string(), "timed out");
        assert_eq!(ExitKind::Signaled(200).to_string(), "killed by signal 200");
    }

    #[test]
    fn poll_timeout_rounds_up() {
        assert_eq!(to_poll_timeout(None), PollTimeout::NONE);
        assert_eq!(
            i32::from(to_poll_timeout(Some(Duration::from_micros(1)))),
            1
        );
        assert_eq!(i32::from(to_poll_timeout(Some(Duration::ZERO))), 0);
        assert_eq!(to_poll_timeout(Some(Duration::MAX)), PollTimeout::MAX);
    }

    /// Throughput check, not an assertion: `cargo test --release -- --ignored
    /// --nocapture throughput`.
    #[test]
    #[ignore = "prints a throughput figure; run with --release --ignored --nocapture"]
    fn throughput_of_true() {
        let args = argv(&["true"]);
        let options = ExecOptions::default();
        for (label, threads) in [("1 thread", 1), ("2 threads", 2), ("4 threads", 4)] {
            let start = Instant::now();
            let per_thread = 2000;
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    let args = args.clone();
                    let options = options.clone();
                    thread::spawn(move || {
                        for _ in 0..per_thread {
                            assert!(run(&args, &options).success());
                        }
                    })
                })
                .collect();
            for handle in handles {
                handle.join().unwrap();
            }
            let rate = f64::from(per_thread * threads) / start.elapsed().as_secs_f64();
            println!("{label}: {rate:.0} runs of `true` per second");
        }
    }
}
