//! A real hub process and real workers for end-to-end tests: each hub gets
//! its own temp dir, connection file and SQLite store, lets the hub pick free
//! ports, and bounds every wait. Hub and worker logs go to files in the temp
//! dir, to be shown when an assertion about them fails.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tempfile::TempDir;

use super::*;

/// Short heartbeats, so a dead worker is noticed in well under a second.
pub const HEARTBEAT_MS: u64 = 200;
pub const HEARTBEAT_MISSES: u32 = 3;

/// A running process that gets SIGTERM first (so a worker kills its tasks
/// and leaves cleanly), and SIGKILL only if that is not enough.
pub struct Proc {
    pub guard: ChildGuard,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(command: &mut Command, log: PathBuf) -> Self {
        let err = File::create(&log).expect("create log file");
        let guard = ChildGuard::spawn(
            command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(err),
        );
        Proc { guard, log }
    }

    pub fn pid(&self) -> i32 {
        self.guard.pid()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) for the process to exit and reaps it.
    pub fn wait(&mut self) -> ExitStatus {
        self.guard.wait()
    }

    pub fn running(&mut self) -> bool {
        match self.guard.0.as_mut() {
            Some(child) => child.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let Some(child) = self.guard.0.as_mut() else {
            return;
        };
        if matches!(child.try_wait(), Ok(None)) {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(3);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // ChildGuard's drop SIGKILLs and reaps whatever is left.
    }
}

/// A hub process with its own temp dir, connection file and SQLite store.
pub struct Hub {
    pub proc: Proc,
    pub file: PathBuf,
    pub store: PathBuf,
    /// Dropped last: the processes above still use it.
    pub dir: TempDir,
}

impl Hub {
    /// Starts a hub (with short heartbeats) and waits until it answers.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Like [`start`](Self::start), with more `zcluster hub` arguments.
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = TempDir::new().unwrap();
        let store = dir.path().join("tasks.sqlite");
        Self::start_on(dir, store, extra)
    }

    /// A hub on `store` (any path), its connection file and logs in `dir`.
    pub fn start_on(dir: TempDir, store: PathBuf, extra: &[&str]) -> Self {
        let file = dir.path().join("hub.json");
        let proc = Self::spawn_hub(dir.path(), &file, &store, extra);
        let hub = Hub {
            proc,
            file,
            store,
            dir,
        };
        hub.wait_ready();
        hub
    }

    pub fn spawn_hub(dir: &Path, file: &Path, store: &Path, extra: &[&str]) -> Proc {
        let n = fs::read_dir(dir).map_or(0, |d| d.count());
        Proc::spawn(
            Command::new(zcluster_path())
                .arg("hub")
                .arg("--connection-file")
                .arg(file)
                .arg("--store")
                .arg(store)
                .args(["--ip", "127.0.0.1"])
                .arg(format!("--heartbeat-ms={HEARTBEAT_MS}"))
                .arg(format!("--heartbeat-misses={HEARTBEAT_MISSES}"))
                .args(extra),
            dir.join(format!("hub-{n}.log")),
        )
    }

    /// Waits until the connection file exists and `status` succeeds.
    pub fn wait_ready(&self) {
        wait_until("the hub to answer", || {
            self.file.exists() && self.cmd("status").ok().is_ok()
        });
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `zcluster SUBCOMMAND --hub FILE`, ready for more arguments.
    pub fn cmd(&self, subcommand: &str) -> assert_cmd::Command {
        let mut command = zcluster();
        command.arg(subcommand).arg("--hub").arg(&self.file);
        command
    }

    /// Starts `zcluster worker --hub FILE -j SLOTS` (not waiting for it).
    pub fn worker(&self, slots: usize) -> Proc {
        let n = fs::read_dir(self.dir()).map_or(0, |d| d.count());
        Proc::spawn(
            Command::new(zcluster_path())
                .arg("worker")
                .arg("--hub")
                .arg(&self.file)
                .arg(format!("-j{slots}")),
            self.dir().join(format!("worker-{n}.log")),
        )
    }

    /// Starts `count` workers and waits until all have registered.
    pub fn workers(&self, count: usize, slots: usize) -> Vec<Proc> {
        let before = self.engines().len();
        let workers: Vec<Proc> = (0..count).map(|_| self.worker(slots)).collect();
        wait_until("the workers to register", || {
            self.engines().len() == before + count
        });
        workers
    }

    /// `zcluster status --json`.
    pub fn status(&self) -> Value {
        self.status_with(&[])
    }

    /// `zcluster status --json ARGS` (say `--verbose`).
    pub fn status_with(&self, args: &[&str]) -> Value {
        let output = self
            .cmd("status")
            .arg("--json")
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "status failed: {}\nhub log:\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.proc.log()
        );
        serde_json::from_slice(&output.stdout).expect("status --json is JSON")
    }

    pub fn engines(&self) -> Vec<Value> {
        self.status()["engines"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The engine id of the worker process `pid`.
    pub fn engine_of(&self, pid: i32) -> u64 {
        self.engines()
            .iter()
            .find(|e| e["pid"].as_i64() == Some(i64::from(pid)))
            .and_then(|e| e["id"].as_u64())
            .unwrap_or_else(|| panic!("no engine with pid {pid} in status"))
    }

    /// The job `id` as `status --json` shows it, if it is there.
    pub fn job(&self, id: u64) -> Option<Value> {
        self.status()["jobs"]
            .as_array()
            .and_then(|jobs| jobs.iter().find(|j| j["id"].as_u64() == Some(id)).cloned())
    }

    /// `zcluster results JOB --json`: exit code and records.
    pub fn results(&self, job: u64) -> (Option<i32>, Vec<Value>) {
        let output = self
            .cmd("results")
            .arg(job.to_string())
            .arg("--json")
            .output()
            .unwrap();
        let records = String::from_utf8(output.stdout)
            .expect("results are UTF-8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        (output.status.code(), records)
    }

    /// Runs `zcluster map --hub FILE INPUTS ARGS` to the end and checks that
    /// it succeeded (its stderr in the failure message); its output.
    pub fn map_ok(&self, inputs: &Path, args: &[&str]) -> std::process::Output {
        let output = self
            .cmd("map")
            .arg(inputs)
            .args(args)
            .timeout(FAIL_AFTER)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "map failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// Runs `zcluster map --hub FILE ARGS` in the background, stdout and
    /// stderr to files.
    /// A map named `name` over the file `inputs` whose every task sleeps
    /// `seconds`, then echoes its input (see [`slow_echo`]).
    pub fn spawn_slow_map(&self, name: &str, inputs: &Path, seconds: &str) -> MapRun {
        let mut args = vec![inputs.to_str().expect("a UTF-8 path").to_string()];
        args.extend(slow_echo(seconds));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.spawn_map(name, &args)
    }

    pub fn spawn_map(&self, name: &str, args: &[&str]) -> MapRun {
        let stdout = self.dir().join(format!("{name}.out"));
        let stderr = self.dir().join(format!("{name}.err"));
        let guard = ChildGuard::spawn(
            Command::new(zcluster_path())
                .arg("map")
                .arg("--hub")
                .arg(&self.file)
                .arg("--no-progress")
                .args(args)
                .stdin(Stdio::null())
                .stdout(File::create(&stdout).unwrap())
                .stderr(File::create(&stderr).unwrap()),
        );
        MapRun {
            guard,
            stdout,
            stderr,
        }
    }
}

/// A `zcluster map --hub` running in the background.
pub struct MapRun {
    pub guard: ChildGuard,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl MapRun {
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits (bounded) for the map to exit.
    pub fn wait(&mut self) -> ExitStatus {
        self.guard.wait()
    }

    /// The job id it printed, once it has.
    pub fn job(&self) -> Option<u64> {
        job_in(&self.stderr())
    }
}

/// The id in `zcluster: job ID on FILE`.
pub fn job_in(stderr: &str) -> Option<u64> {
    stderr.lines().find_map(|line| {
        let rest = line.strip_prefix("zcluster: job ")?;
        let (id, rest) = rest.split_once(' ')?;
        rest.starts_with("on ").then(|| id.parse().ok()).flatten()
    })
}

pub fn job_of(output: &std::process::Output) -> u64 {
    let stderr = String::from_utf8_lossy(&output.stderr);
    job_in(&stderr).unwrap_or_else(|| panic!("no `zcluster: job ID on FILE` line in:\n{stderr}"))
}

pub fn lines_text<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    items.into_iter().map(|i| format!("{i}\n")).collect()
}

/// `-- sh -c 'sleep S; echo INPUT'`: a task slow enough to be caught
/// running.
pub fn slow_echo(seconds: &str) -> Vec<String> {
    [
        "--",
        "sh",
        "-c",
        &format!("sleep {seconds}; echo \"$0\""),
        "{}",
    ]
    .map(String::from)
    .to_vec()
}

pub fn numbered_inputs(
    dir: &Path,
    name: &str,
    prefix: &str,
    count: usize,
) -> (PathBuf, Vec<String>) {
    let inputs: Vec<String> = (1..=count).map(|i| format!("{prefix}{i}")).collect();
    let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    (input_file(dir, name, &refs), inputs)
}

pub fn field_u64(value: &Value, key: &str) -> u64 {
    value[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no number `{key}` in {value}"))
}

/// Waits up to `limit` for a child to exit; `None` if it is still running.
pub fn exit_within(guard: &mut ChildGuard, limit: Duration) -> Option<ExitStatus> {
    let child = guard.0.as_mut().expect("child not yet reaped");
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("try_wait") {
            guard.0 = None;
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}
