//! `zcluster map` end to end: the real binary, real commands, real signals.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use predicates::prelude::*;
use tempfile::TempDir;

use crate::common::*;

#[test]
fn keeps_input_order_with_uneven_task_times() {
    let dir = TempDir::new().unwrap();
    // Early inputs sleep longest, so they finish last.
    let inputs: Vec<String> = (1..=8).map(|i| format!("0.{}", 9 - i)).collect();
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let file = input_file(dir.path(), "in.txt", &inputs);
    let out = zcluster()
        .args(["map", "-j", "4"])
        .arg(&file)
        .args(["--", "sh", "-c", "sleep $0; echo $0"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let want: String = inputs.iter().map(|i| format!("{i}\n")).collect();
    assert_eq!(String::from_utf8(out).unwrap(), want);
}

#[test]
fn unordered_prints_as_tasks_finish() {
    let dir = TempDir::new().unwrap();
    let file = input_file(dir.path(), "in.txt", &["0.6", "0"]);
    zcluster()
        .args(["map", "-j", "2", "--unordered"])
        .arg(&file)
        .args(["--", "sh", "-c", "sleep $0; echo $0"])
        .assert()
        .success()
        .stdout("0\n0.6\n");
}

#[test]
fn every_replacement_string() {
    zcluster()
        .args([
            "map",
            "--",
            "echo",
            "{}",
            "{.}",
            "{/}",
            "{//}",
            "{/.}",
            "{#}",
            "x{/.}.npy",
        ])
        .write_stdin("dir.d/sub/a b.tar.gz\nplain\n")
        .assert()
        .success()
        .stdout(
            "dir.d/sub/a b.tar.gz dir.d/sub/a b.tar a b.tar.gz dir.d/sub a b.tar 1 xa b.tar.npy\n\
             plain plain plain . plain 2 xplain.npy\n",
        );
}

#[test]
fn input_is_appended_and_stays_one_argument() {
    zcluster()
        .args(["map", "--", "printf", "[%s]\\n"])
        .write_stdin("it's \"quoted\" and  spaced\n$HOME `x`\n")
        .assert()
        .success()
        .stdout("[it's \"quoted\" and  spaced]\n[$HOME `x`]\n");
}

#[test]
fn shell_mode_quotes_inputs() {
    zcluster()
        .args([
            "map", "--shell", "--", "printf", "'%s\\n'", "{}", "|", "tr", "a-z", "A-Z",
        ])
        .write_stdin("a'b c; echo injected\n")
        .assert()
        .success()
        .stdout("A'B C; ECHO INJECTED\n");
}

#[test]
fn failures_set_exit_status_and_are_named() {
    zcluster()
        .args([
            "map",
            "-j",
            "2",
            "--",
            "sh",
            "-c",
            "echo out $0; echo err $0 >&2; [ $0 != bad ]",
        ])
        .write_stdin("good\nbad\ngood2\n")
        .assert()
        .code(1)
        .stdout("out good\nout bad\nout good2\n")
        .stderr(predicate::str::contains("err bad"))
        .stderr(predicate::str::contains("3 tasks: 2 ok, 1 failed"))
        .stderr(predicate::str::contains("failed: #2 \"bad\""));
}

#[test]
fn retries_rerun_a_task_that_fails_once() {
    let dir = TempDir::new().unwrap();
    let results = dir.path().join("r.jsonl");
    let marks: Vec<String> = (0..3)
        .map(|i| dir.path().join(format!("m{i}")).display().to_string())
        .collect();
    let file = input_file(
        dir.path(),
        "in.txt",
        &marks.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    zcluster()
        .args(["map", "--retries", "1", "--results"])
        .arg(&results)
        .arg(&file)
        .args([
            "--",
            "sh",
            "-c",
            "if [ -e \"$0\" ]; then echo second; else touch \"$0\"; exit 3; fi",
        ])
        .assert()
        .success()
        .stdout("second\nsecond\nsecond\n");
    let records = json_lines(&results);
    assert_eq!(records.len(), 3);
    for r in &records {
        assert_eq!(r["attempts"], 2);
        assert_eq!(r["status"], "ok");
    }
    // Without retries the same first failure is final.
    let file = input_file(
        dir.path(),
        "fresh.txt",
        &[&dir.path().join("fresh").display().to_string()],
    );
    zcluster()
        .args(["map", "--results"])
        .arg(&results)
        .arg(&file)
        .args([
            "--",
            "sh",
            "-c",
            "if [ -e \"$0\" ]; then echo second; else touch \"$0\"; exit 3; fi",
        ])
        .assert()
        .code(1);
    let records = json_lines(&results);
    assert_eq!(records[0]["attempts"], 1);
    assert_eq!(records[0]["exit_code"], 3);
}

#[test]
fn timeout_kills_the_whole_process_group() {
    let dir = TempDir::new().unwrap();
    let results = dir.path().join("r.jsonl");
    let pidfile = dir.path().join("bg.pid");
    let started = Instant::now();
    zcluster()
        .args(["map", "--timeout", "300ms", "--results"])
        .arg(&results)
        .args(["--", "sh", "-c", "sleep 30 & echo $! > \"$0\"; wait"])
        .write_stdin(format!("{}\n", pidfile.display()))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("1 timed out"));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the 30 s sleep was waited for"
    );
    let records = json_lines(&results);
    assert_eq!(records[0]["status"], "timeout");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_until("the background sleep to die", || !alive(pid));
}

/// A task script that leaves a daemon writing its own pid to the file named
/// by its one argument: `setsid*.pid` leaves the session and process group,
/// `double*.pid` double-forks, `both*.pid` does both. A `*-ends.pid` task
/// then exits 0 (the daemon's output detached, so only the daemon is left);
/// any other sleeps 30 s, for `--timeout` to kill.
pub const DAEMON_TASK: &str = r#"
case $1 in *-ends.pid) exec >/dev/null 2>&1 ;; esac
daemon='echo $$ > "$0"; exec sleep 300'
case $(basename "$1") in
  setsid*) setsid sh -c "$daemon" "$1" & ;;
  double*) ( sh -c "$daemon" "$1" & ) & ;;
  both*) ( setsid sh -c "$daemon" "$1" & ) & ;;
esac
while [ ! -s "$1" ]; do sleep 0.01; done
case $1 in *-ends.pid) exit 0 ;; esac
sleep 30
"#;

/// Daemons a test started; killed (with their groups) if the test fails
/// before they are checked to be gone, so no 300 s sleep outlives it.
pub struct Daemons(pub Vec<std::path::PathBuf>);

impl Daemons {
    /// Writes the task script and one pid file path per name into `dir`;
    /// the script's path and the inputs file.
    pub fn inputs(
        dir: &std::path::Path,
        names: &[&str],
    ) -> (std::path::PathBuf, std::path::PathBuf, Self) {
        let script = dir.join("daemon.sh");
        std::fs::write(&script, DAEMON_TASK).unwrap();
        let pid_files: Vec<_> = names.iter().map(|name| dir.join(name)).collect();
        let lines: Vec<String> = pid_files.iter().map(|p| p.display().to_string()).collect();
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let inputs = input_file(dir, "daemons.txt", &lines);
        (script, inputs, Daemons(pid_files))
    }

    /// Waits (bounded) until every daemon is dead, naming any that is not.
    pub fn assert_all_gone(&self, context: &str) {
        for path in &self.0 {
            let pid = read_pid(path);
            wait_until(
                &format!("{context}: daemon {pid} of {} to die", path.display()),
                || !alive(pid),
            );
        }
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for path in &self.0 {
            if let Some(pid) = std::fs::read_to_string(path)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                if alive(pid) {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }
}

fn read_pid(path: &std::path::Path) -> i32 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap()
}

/// Both ways a worker keeps hold of a task's processes: its own choice (a
/// cgroup per task where the machine allows) and the fallback.
const CONTAINMENTS: [Option<&str>; 2] = [None, Some("off")];

fn with_containment(command: &mut assert_cmd::Command, cgroups: Option<&str>) {
    match cgroups {
        Some(value) => command.env("ZCLUSTER_TASK_CGROUPS", value),
        None => command.env_remove("ZCLUSTER_TASK_CGROUPS"),
    };
}

#[test]
fn timeout_kills_daemons_that_left_the_process_group() {
    for cgroups in CONTAINMENTS {
        let dir = TempDir::new().unwrap();
        let (script, inputs, daemons) =
            Daemons::inputs(dir.path(), &["setsid.pid", "double.pid", "both.pid"]);
        let mut map = zcluster();
        with_containment(&mut map, cgroups);
        map.args(["map", "-j3", "--timeout", "1s"])
            .arg(&inputs)
            .arg("--")
            .arg("sh")
            .arg(&script)
            .timeout(FAIL_AFTER)
            .assert()
            .code(1)
            .stderr(predicate::str::contains("3 timed out"));
        daemons.assert_all_gone(&format!("cgroups {cgroups:?}"));
    }
}

#[test]
fn a_daemon_left_by_a_task_that_ended_is_killed() {
    for cgroups in CONTAINMENTS {
        let dir = TempDir::new().unwrap();
        let (script, inputs, daemons) = Daemons::inputs(
            dir.path(),
            &["setsid-ends.pid", "double-ends.pid", "both-ends.pid"],
        );
        let mut map = zcluster();
        with_containment(&mut map, cgroups);
        map.args(["map", "-j3"])
            .arg(&inputs)
            .arg("--")
            .arg("sh")
            .arg(&script)
            .timeout(FAIL_AFTER)
            .assert()
            .success();
        daemons.assert_all_gone(&format!("cgroups {cgroups:?}"));
    }
}

#[test]
fn halt_soon_stops_starting_tasks() {
    let out = zcluster()
        .args([
            "map",
            "-j",
            "1",
            "--halt",
            "soon",
            "--",
            "sh",
            "-c",
            "echo $0; [ $0 != 3 ]",
        ])
        .write_stdin((1..=20).map(|i| format!("{i}\n")).collect::<String>())
        .assert()
        .code(1)
        .stderr(predicate::str::contains("not run"))
        .get_output()
        .stdout
        .clone();
    let printed = String::from_utf8(out).unwrap();
    assert!(printed.starts_with("1\n2\n3\n"), "{printed}");
    assert!(printed.lines().count() < 20, "{printed}");
}

#[test]
fn halt_now_kills_running_tasks() {
    let dir = TempDir::new().unwrap();
    let results = dir.path().join("r.jsonl");
    let started = Instant::now();
    zcluster()
        .args(["map", "-j", "2", "--halt", "now", "--results"])
        .arg(&results)
        .args([
            "--",
            "sh",
            "-c",
            "if [ $0 = fail ]; then sleep 0.3; exit 1; else sleep 30; fi",
        ])
        .write_stdin("sleep\nfail\nsleep\n")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("1 cancelled"));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the running sleep was not killed"
    );
    let statuses: Vec<String> = json_lines(&results)
        .iter()
        .map(|r| r["status"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(statuses, ["cancelled", "failed"]);
}

#[test]
fn reads_standard_input_and_dash() {
    for args in [vec!["map"], vec!["map", "-"]] {
        zcluster()
            .args(&args)
            .args(["--", "echo"])
            .write_stdin("a\nb\r\nc")
            .assert()
            .success()
            .stdout("a\nb\nc\n");
    }
}

#[test]
fn results_file_has_every_field_and_keeps_bytes() {
    let dir = TempDir::new().unwrap();
    let results = dir.path().join("r.jsonl");
    zcluster()
        .args(["map", "--results"])
        .arg(&results)
        .args(["--", "sh", "-c", "printf \"$0\"; printf 'e\\n' >&2"])
        .write_stdin("ok\\n\n\\377\\376\n")
        .assert()
        .success();
    let records = json_lines(&results);
    assert_eq!(records.len(), 2);
    let first = &records[0];
    for key in [
        "seq",
        "input",
        "command",
        "status",
        "exit_code",
        "signal",
        "stdout",
        "stderr",
        "host",
        "pid",
        "worker",
        "started",
        "elapsed_s",
        "attempts",
    ] {
        assert!(first.get(key).is_some(), "missing {key} in {first}");
    }
    assert_eq!(first["seq"], 1);
    assert_eq!(first["input"], "ok\\n");
    assert_eq!(first["stdout"], "ok\n");
    assert_eq!(first["stderr"], "e\n");
    assert_eq!(first["exit_code"], 0);
    assert_eq!(first["command"][0], "sh");
    assert!(first["pid"].as_u64().unwrap() > 0);
    assert!(first["worker"].as_str().unwrap().starts_with("slot-"));
    let second = &records[1];
    assert!(second["stdout"].is_null());
    assert_eq!(second["stdout_base64"], "//4=");
}

#[test]
fn ctrl_c_kills_children_writes_what_finished_and_exits_130() {
    let dir = TempDir::new().unwrap();
    let results = dir.path().join("r.jsonl");
    let mut lines = vec!["done".to_string()];
    lines.extend((0..2).map(|i| dir.path().join(format!("p{i}")).display().to_string()));
    let file = input_file(
        dir.path(),
        "in.txt",
        &lines.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let mut child = ChildGuard::spawn(
        Command::new(zcluster_path())
            .args(["map", "-j", "3", "--unordered", "--results"])
            .arg(&results)
            .arg(&file)
            .args(["--", "sh", "-c", "[ $0 = done ] && exit 0; echo $$ > \"$0.tmp\"; mv \"$0.tmp\" \"$0\"; exec sleep 30"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let pid_paths: Vec<_> = lines[1..].iter().map(std::path::PathBuf::from).collect();
    wait_until("both sleeps to start", || {
        pid_paths.iter().all(|p| p.exists())
    });
    let pids: Vec<i32> = pid_paths
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap().trim().parse().unwrap())
        .collect();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.pid()),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let output = child.wait_output();
    assert_eq!(
        output.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for pid in pids {
        wait_until("a task to die after Ctrl-C", || !alive(pid));
    }
    let records = json_lines(&results);
    assert_eq!(
        records.len(),
        3,
        "finished and killed tasks are all written"
    );
    assert!(records
        .iter()
        .any(|r| r["input"] == "done" && r["status"] == "ok"));
    assert!(String::from_utf8_lossy(&output.stderr).contains("interrupted"));
}

#[test]
fn empty_input_is_zero_tasks() {
    zcluster()
        .args(["map", "--", "true"])
        .write_stdin("")
        .assert()
        .success()
        .stderr(predicate::str::contains("0 tasks"));
}

#[test]
fn usage_errors_exit_2_and_say_what() {
    zcluster()
        .args(["map", "/nonexistent/inputs.txt", "--", "true"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("/nonexistent/inputs.txt"));
    zcluster()
        .args(["map", "--", ""])
        .write_stdin("x\n")
        .assert()
        .code(2);
    zcluster().args(["map"]).write_stdin("x\n").assert().code(2);
    zcluster()
        .args(["map", "--", "echo", "a{x}b"])
        .write_stdin("x\n")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("{x}"));
    // awk's braces are not replacement strings.
    zcluster()
        .args(["map", "--", "awk", "BEGIN {print \"ok\"}"])
        .write_stdin("x\n")
        .assert()
        .success()
        .stdout("ok\n");
}

#[test]
fn a_missing_program_is_a_failed_task_not_a_crash() {
    zcluster()
        .args(["map", "--", "/nonexistent/program"])
        .write_stdin("a\n")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("1 failed"));
}
