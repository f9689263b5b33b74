//! Shared set-up: the binary under test, a temp dir, a child guard that
//! kills and reaps on drop, and (in `cluster`) a real hub with workers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

mod cluster;
mod raw;
mod slurm;
pub use cluster::*;
pub use raw::*;
pub use slurm::*;

/// A bound on waits that a passing test never comes near.
pub const FAIL_AFTER: Duration = Duration::from_secs(20);

/// The `zcluster` binary built for this test run.
pub fn zcluster_path() -> PathBuf {
    assert_cmd::cargo::cargo_bin!("zcluster").to_path_buf()
}

/// `zcluster ARGS` ready to run.
pub fn zcluster() -> assert_cmd::Command {
    assert_cmd::Command::new(zcluster_path())
}

/// Writes `lines` (each followed by `\n`) to `dir/name` and returns the path.
pub fn input_file(dir: &Path, name: &str, lines: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let mut text = String::new();
    for line in lines {
        text.push_str(line);
        text.push('\n');
    }
    std::fs::write(&path, text).expect("write input file");
    path
}

/// Parses a JSON Lines file.
pub fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .expect("read results file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("valid JSON line"))
        .collect()
}

/// A child process that is killed and reaped when the guard drops.
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    pub fn spawn(command: &mut Command) -> Self {
        ChildGuard(Some(command.spawn().expect("spawn child")))
    }

    pub fn pid(&self) -> i32 {
        self.0.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Waits for exit, failing the test after [`FAIL_AFTER`].
    pub fn wait(&mut self) -> ExitStatus {
        let child = self.0.as_mut().expect("child not yet reaped");
        let deadline = Instant::now() + FAIL_AFTER;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.0 = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "child did not exit within {FAIL_AFTER:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for exit and returns the captured output (spawned with pipes).
    pub fn wait_output(&mut self) -> std::process::Output {
        let child = self.0.take().expect("child not yet reaped");
        child.wait_with_output().expect("wait for output")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `condition` every 20 ms until it holds, failing after
/// [`FAIL_AFTER`] with `what`.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + FAIL_AFTER;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a process with this pid is running. A zombie (dead, waiting for
/// a parent that may never reap it in a container) counts as dead.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
