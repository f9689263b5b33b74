//! `zcluster map` as a person meets it (issue 15): output that streams while
//! the input blocks, signals that work whatever the input does, a results
//! file that survives a SIGKILL, and failures that say why. Real processes,
//! real pipes, real signals.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::common::*;

/// A map whose stdin the test writes to (and keeps open), whose stdout
/// lines arrive on a channel as they are printed, and whose stderr is kept.
struct LiveMap {
    child: ChildGuard,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl LiveMap {
    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(zcluster_path());
        command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = ChildGuard::spawn(&mut command);
        let process = child.0.as_mut().expect("spawned");
        let stdin = process.stdin.take();
        let stdout = process.stdout.take().expect("piped stdout");
        let mut stderr_pipe = process.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let kept = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr_pipe.read(&mut buf) {
                if n == 0 {
                    return;
                }
                kept.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        LiveMap {
            child,
            stdin,
            lines,
            stderr,
        }
    }

    fn write(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// The next line on stdout, failing after `limit`.
    fn line_within(&self, limit: Duration) -> String {
        self.lines.recv_timeout(limit).unwrap_or_else(|_| {
            panic!("no output line within {limit:?}; stderr: {}", self.stderr())
        })
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.pid()), signal).unwrap();
    }

    /// Waits for the stderr text to contain `what` (bounded).
    fn wait_stderr(&self, what: &str) {
        wait_until(what, || self.stderr().contains(what));
    }
}

/// Waits for `path` to hold at least `count` complete lines (bounded).
fn wait_lines(path: &Path, count: usize) {
    wait_until(&format!("{count} lines in {}", path.display()), || {
        std::fs::read_to_string(path).is_ok_and(|text| text.matches('\n').count() >= count)
    });
}

/// Item 1: a finished task is printed at once though the input blocks, and
/// the first SIGINT stops the map within a bound whatever the input does.
#[test]
fn output_streams_and_ctrl_c_works_while_the_input_blocks() {
    let dir = TempDir::new().unwrap();
    let results = dir.path().join("r.jsonl");
    let results_arg = results.display().to_string();
    let mut map = LiveMap::spawn(&["map", "--results", &results_arg, "--", "echo", "{}"], &[]);
    map.write("a\n");
    // stdin stays open: the input blocks from here on.
    assert_eq!(map.line_within(Duration::from_secs(5)), "a");
    let signalled = Instant::now();
    map.signal(Signal::SIGINT);
    let status = map.child.wait();
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(130), "{}", map.stderr());
    assert!(
        took < Duration::from_secs(2),
        "SIGINT took {took:?} to stop a map blocked on its input"
    );
    let records = json_lines(&results);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["input"], "a");
    map.wait_stderr("interrupted");
}

/// Item 1: a second signal exits at once (while the first one's stop
/// waits on a task that ignores SIGTERM for its grace period), and still
/// leaves every finished task in the results file, even those waiting for
/// their turn behind the running task.
#[test]
fn a_second_signal_exits_at_once_with_finished_work_recorded() {
    let dir = TempDir::new().unwrap();
    let results = dir.path().join("r.jsonl");
    let results_arg = results.display().to_string();
    let pid_file = dir.path().join("slow.pid");
    let script = format!(
        "if [ $0 = slow ]; then trap '' TERM; echo $$ > {0}.tmp; mv {0}.tmp {0}; exec sleep 30; fi; echo $0",
        pid_file.display()
    );
    let mut map = LiveMap::spawn(
        &[
            "map",
            "-j",
            "3",
            "--results",
            &results_arg,
            "--",
            "sh",
            "-c",
            &script,
        ],
        &[("RUST_LOG", "zcluster::map=debug")],
    );
    // Input order: the slow task holds the two quick ones back.
    map.write("slow\nquick1\nquick2\n");
    wait_until("the slow task to start", || pid_file.exists());
    // The client logs each task it receives: both quick ones are in.
    wait_until("both quick tasks to reach the client", || {
        map.stderr().matches("task finished").count() >= 2
    });
    let slow: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    map.signal(Signal::SIGINT);
    // The slow task ignores SIGTERM: the stop waits out its grace period.
    map.wait_stderr("stop requested");
    map.signal(Signal::SIGINT);
    let status = map.child.wait();
    let _ = kill(Pid::from_raw(-slow), Signal::SIGKILL);
    let _ = kill(Pid::from_raw(slow), Signal::SIGKILL);
    assert_eq!(status.code(), Some(130), "{}", map.stderr());
    let records = json_lines(&results);
    let inputs: Vec<&str> = records
        .iter()
        .map(|r| r["input"].as_str().unwrap())
        .collect();
    assert_eq!(
        inputs,
        ["quick1", "quick2"],
        "finished tasks missing from the results file"
    );
}

/// Item 2: each result is in the file, flushed, as soon as it is handed
/// out; a SIGKILL of the client leaves valid JSON Lines of what was.
#[test]
fn results_file_survives_a_sigkill() {
    let dir = TempDir::new().unwrap();
    let results = dir.path().join("r.jsonl");
    let pid_file = dir.path().join("slow.pid");
    let script = format!(
        "if [ $0 = slow ]; then echo $$ > {0}.tmp; mv {0}.tmp {0}; exec sleep 30; fi; echo $0",
        pid_file.display()
    );
    let inputs = input_file(dir.path(), "in.txt", &["a", "b", "slow"]);
    let mut child = ChildGuard::spawn(
        Command::new(zcluster_path())
            .args(["map", "-j", "3", "--results"])
            .arg(&results)
            .arg(&inputs)
            .args(["--", "sh", "-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_lines(&results, 2);
    wait_until("the slow task to start", || pid_file.exists());
    kill(Pid::from_raw(child.pid()), Signal::SIGKILL).unwrap();
    child.wait();
    let slow: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _ = kill(Pid::from_raw(-slow), Signal::SIGKILL);
    let _ = kill(Pid::from_raw(slow), Signal::SIGKILL);
    let text = std::fs::read_to_string(&results).unwrap();
    assert!(text.ends_with('\n'), "a partial line: {text:?}");
    let records = json_lines(&results);
    let seqs: Vec<u64> = records.iter().map(|r| field_u64(r, "seq")).collect();
    assert_eq!(seqs, [1, 2]);
}

/// Item 5: why each task failed is on stderr, one line per task, after the
/// task's own stderr block, with a hint when a command line was taken for
/// a program name.
#[test]
fn failure_reasons_reach_the_terminal() {
    let output = zcluster()
        .args(["map", "--", "nosuchcmd-zc", "{}"])
        .write_stdin("x\ny\n")
        .assert()
        .code(1)
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&output.stderr);
    for (seq, input) in [(1, "x"), (2, "y")] {
        let line = stderr
            .lines()
            .find(|l| l.contains(&format!("task #{seq} \"{input}\" failed")))
            .unwrap_or_else(|| panic!("no failure line for #{seq}: {stderr}"));
        assert!(
            line.contains("nosuchcmd-zc") && line.contains("No such file"),
            "{line}"
        );
    }

    let output = zcluster()
        .args(["map", "--", "sh", "-c", "echo oops-$0 >&2; exit 3"])
        .write_stdin("a\n")
        .assert()
        .code(1)
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("oops-a\nzcluster: task #1 \"a\" failed: exited with status 3\n"),
        "{stderr}"
    );

    let output = zcluster()
        .args(["map", "--", "echo-zc {}"])
        .write_stdin("a\n")
        .assert()
        .code(1)
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--shell"), "{stderr}");

    let output = zcluster()
        .args(["map", "--timeout", "200ms", "--", "sleep"])
        .write_stdin("5\n")
        .assert()
        .code(1)
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("task #1 \"5\" failed: timed out after 200ms"),
        "{stderr}"
    );
}

/// Item 7: tasks a Ctrl-C (or a halt) killed are counted and listed apart
/// from failures, in input order.
#[test]
fn cancelled_tasks_are_listed_apart_in_input_order() {
    let dir = TempDir::new().unwrap();
    let script = format!(
        "[ $0 = fail ] && exit 1; [ $0 = done ] && echo done-ran && exit 0; touch {}/$0; exec sleep 30",
        dir.path().display()
    );
    let mut map = LiveMap::spawn(
        &["map", "-j", "5", "--unordered", "--", "sh", "-c", &script],
        &[],
    );
    map.write("s1\nfail\ns2\ndone\ns3\n");
    drop(map.stdin.take());
    wait_until("the three sleeps to start", || {
        ["s1", "s2", "s3"]
            .iter()
            .all(|name| dir.path().join(name).exists())
    });
    map.wait_stderr("task #2");
    // The one that succeeds has been handed back (printed, unordered)
    // before the signal, or it would be cancelled too under load.
    assert_eq!(map.line_within(FAIL_AFTER), "done-ran");
    map.signal(Signal::SIGINT);
    let status = map.child.wait();
    assert_eq!(status.code(), Some(130));
    map.wait_stderr("interrupted");
    wait_until("the summary's lists", || {
        map.stderr().contains("cancelled: ")
    });
    let stderr = map.stderr();
    assert!(
        stderr.contains("1 failed") && stderr.contains("3 cancelled"),
        "{stderr}"
    );
    let failed = stderr
        .lines()
        .find(|l| l.starts_with("zcluster: failed: "))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert_eq!(failed, "zcluster: failed: #2 \"fail\"");
    let cancelled = stderr
        .lines()
        .find(|l| l.starts_with("zcluster: cancelled: "))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert_eq!(
        cancelled,
        "zcluster: cancelled: #1 \"s1\", #3 \"s2\", #5 \"s3\""
    );
}

/// Item 9: a directory given as the input file is a usage error said once;
/// a job or engine the hub does not know is exit 2 with one line, whatever
/// the command; a ping that no engine answers is not a success.
#[test]
fn exit_codes_and_messages_say_what_was_wrong_once() {
    let dir = TempDir::new().unwrap();
    let output = zcluster()
        .arg("map")
        .arg(dir.path())
        .args(["--", "echo"])
        .assert()
        .code(2)
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("is a directory"), "{stderr}");

    let hub = Hub::start();
    for args in [vec!["99"], vec!["99", "--task", "1"]] {
        let output = hub
            .cmd("resubmit")
            .args(&args)
            .assert()
            .code(2)
            .get_output()
            .clone();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("99"), "{stderr}");
    }
    for (command, args) in [("results", vec!["99"]), ("kill", vec!["--engine", "99"])] {
        let output = hub
            .cmd(command)
            .args(&args)
            .assert()
            .code(2)
            .get_output()
            .clone();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{command}: {stderr}");
    }
    let output = hub.cmd("ping").assert().code(1).get_output().clone();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no engine"), "{stderr}");
}

/// What a person would see on a terminal after `raw` was written to it: a
/// small emulator of the few controls a progress bar uses (carriage
/// return, erase in line, cursor up and down), each line as text.
fn screen(raw: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(raw);
    let mut rows: Vec<Vec<char>> = vec![Vec::new()];
    let (mut row, mut col) = (0usize, 0usize);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' => {
                row += 1;
                col = 0;
            }
            '\r' => col = 0,
            '\x08' => col = col.saturating_sub(1),
            '\x1b' => {
                if chars.peek() != Some(&'[') {
                    continue;
                }
                chars.next();
                let mut params = String::new();
                let mut last = ' ';
                for p in chars.by_ref() {
                    if p.is_ascii_alphabetic() || p == '~' {
                        last = p;
                        break;
                    }
                    params.push(p);
                }
                let n: usize = params.trim_start_matches('?').parse().unwrap_or(1);
                while rows.len() <= row {
                    rows.push(Vec::new());
                }
                match last {
                    'A' => row = row.saturating_sub(n.max(1)),
                    'B' => row += n.max(1),
                    'G' => col = n.saturating_sub(1),
                    'K' => {
                        let line = &mut rows[row];
                        match params.as_str() {
                            "2" => line.clear(),
                            "1" => line.iter_mut().take(col + 1).for_each(|c| *c = ' '),
                            _ => line.truncate(col),
                        }
                    }
                    'J' => rows.truncate(row + 1),
                    _ => {}
                }
            }
            c if c.is_control() => {}
            c => {
                while rows.len() <= row {
                    rows.push(Vec::new());
                }
                let line = &mut rows[row];
                while line.len() < col {
                    line.push(' ');
                }
                if col < line.len() {
                    line[col] = c;
                } else {
                    line.push(c);
                }
                col += 1;
            }
        }
    }
    rows.into_iter()
        .map(|r| r.into_iter().collect::<String>().trim_end().to_string())
        .collect()
}

/// `zcluster ARGS` on a real pseudo-terminal (util-linux `script`), its
/// standard input from `stdin`; returns everything the terminal got.
fn on_a_terminal(args: &str, stdin: &[u8]) -> (Option<i32>, Vec<u8>) {
    let command = format!("{} {args}", zcluster_path().display());
    let mut child = ChildGuard::spawn(
        Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .env("TERM", "xterm")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let process = child.0.as_mut().expect("spawned");
    let mut input = process.stdin.take().expect("piped stdin");
    input.write_all(stdin).unwrap();
    let mut stdout = process.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut raw = Vec::new();
        let _ = stdout.read_to_end(&mut raw);
        raw
    });
    let status = child.wait();
    drop(input);
    (status.code(), reader.join().unwrap())
}

/// Item 3: on a terminal, task output goes through the bar: no stale bar
/// line stays between two lines of output.
#[test]
fn progress_bar_leaves_no_stale_lines_between_outputs() {
    let dir = TempDir::new().unwrap();
    let inputs = input_file(dir.path(), "in.txt", &["1", "2", "3", "4"]);
    let (code, raw) = on_a_terminal(
        &format!(
            "map -j1 {} -- sh -c 'echo line-$0; sleep 0.3'",
            inputs.display()
        ),
        b"",
    );
    let rows = screen(&raw);
    assert_eq!(code, Some(0), "{rows:#?}");
    let shown: Vec<&String> = rows.iter().filter(|r| !r.is_empty()).collect();
    let at = shown
        .iter()
        .position(|r| r.contains("line-1"))
        .unwrap_or_else(|| panic!("{rows:#?}"));
    let want = ["line-1", "line-2", "line-3", "line-4"];
    let got: Vec<&str> = shown[at..at + 4].iter().map(|r| r.as_str()).collect();
    assert_eq!(got, want, "what the terminal shows:\n{}", rows.join("\n"));
    assert!(
        shown[at + 4].starts_with("zcluster: 4 tasks"),
        "{}",
        rows.join("\n")
    );
}

/// Item 3: inputs typed at the terminal: the map says once that it reads
/// them until Ctrl-D, and the bar shows what it knows (tasks done, rate,
/// time) rather than `0/0 ETA 0s`.
#[test]
fn inputs_from_the_terminal_are_announced_and_counted() {
    let (code, raw) = on_a_terminal("map -j1 -- sh -c 'sleep 0.5; echo got-$0'", b"a\nb\n\x04");
    let rows = screen(&raw);
    let all = rows.join("\n");
    assert_eq!(code, Some(0), "{all}");
    assert_eq!(all.matches("until Ctrl-D").count(), 1, "{all}");
    let text = String::from_utf8_lossy(&raw);
    assert!(!text.contains("0/0"), "a bar with no total: {text:?}");
    assert!(text.contains(" done "), "no count in the bar: {text:?}");
    assert!(all.contains("got-a") && all.contains("got-b"), "{all}");
}

/// Item 3: a map on a hub with no engine says so within 2 s, and again
/// when one registers.
#[test]
fn a_hub_with_no_engine_is_said_to_be_waited_for() {
    let hub = Hub::start();
    let hub_file = hub.file.display().to_string();
    let mut map = LiveMap::spawn(&["map", "--hub", &hub_file, "--", "echo"], &[]);
    map.write("x\n");
    drop(map.stdin.take());
    let started = Instant::now();
    map.wait_stderr("waiting for an engine: none registered with");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "said after {:?}",
        started.elapsed()
    );
    let _worker = hub.worker(2);
    map.wait_stderr("registered");
    assert_eq!(map.line_within(FAIL_AFTER), "x");
    assert_eq!(map.child.wait().code(), Some(0), "{}", map.stderr());
}

/// Item 10: a bare number is seconds, zero or less is a usage error, and
/// `N%` limits a task to N% of the median time of those that succeeded.
#[test]
fn timeouts_take_seconds_and_percentages_and_refuse_zero() {
    let dir = TempDir::new().unwrap();
    let results = dir.path().join("r.jsonl");
    let started = Instant::now();
    zcluster()
        .args(["map", "--timeout", "1", "--results"])
        .arg(&results)
        .args(["--", "sleep"])
        .write_stdin("0\n30\n")
        .assert()
        .code(1);
    assert!(started.elapsed() < Duration::from_secs(15));
    let statuses: Vec<String> = json_lines(&results)
        .iter()
        .map(|r| r["status"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(statuses, ["ok", "timeout"]);

    for zero in ["0", "0s", "-1"] {
        zcluster()
            .args(["map", &format!("--timeout={zero}"), "--", "true"])
            .write_stdin("a\n")
            .assert()
            .code(2);
    }

    // Five tasks of 0.1 s, then one of 30 s: killed at 200% of 0.1 s.
    let started = Instant::now();
    zcluster()
        .args(["map", "-j1", "--timeout", "200%", "--results"])
        .arg(&results)
        .args(["--", "sleep"])
        .write_stdin("0.1\n0.1\n0.1\n0.1\n30\n")
        .assert()
        .code(1)
        .stderr(predicates::str::contains("median task time"));
    assert!(started.elapsed() < Duration::from_secs(15));
    let statuses: Vec<String> = json_lines(&results)
        .iter()
        .map(|r| r["status"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(statuses, ["ok", "ok", "ok", "ok", "timeout"]);
}

/// The first column of each row of a table (its header left out).
fn first_column(table: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(table)
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Item 8: one numbering everywhere: an input's number is 1 for the first,
/// as `{#}`, the `seq` of the results, the rows of `results --status-only`
/// (which also prints the times its help promises) and `resubmit --task`.
#[test]
fn inputs_are_numbered_from_one_everywhere() {
    let hub = Hub::start();
    let _workers = hub.workers(1, 2);
    let inputs = input_file(hub.dir(), "codes", &["0", "3", "0"]);
    let output = hub
        .cmd("map")
        .arg(&inputs)
        .args(["--no-progress", "--", "sh", "-c", "echo {#}; exit {}"])
        .timeout(FAIL_AFTER)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "1\n2\n3\n");
    let job = job_of(&output).to_string();
    let (_, records) = hub.results(job.parse().unwrap());
    let seqs: Vec<u64> = records.iter().map(|r| field_u64(r, "seq")).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(records[1]["status"], "failed");

    let table = hub
        .cmd("results")
        .args([&job, "--status-only"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert_eq!(first_column(&table.stdout), ["1", "2", "3"], "{text}");
    let header = text.lines().next().unwrap_or_default();
    assert!(
        header.contains("STARTED") && header.contains("TIME"),
        "{text}"
    );
    let failed: Vec<&str> = text.lines().filter(|l| l.contains("failed")).collect();
    assert_eq!(failed.len(), 1, "{text}");
    assert!(failed[0].starts_with('2'), "{text}");

    // The number shown is the one resubmit takes; 0 is nobody's.
    hub.cmd("resubmit")
        .args([&job, "--task", "2"])
        .assert()
        .success()
        .stderr(predicates::str::contains("resubmitted 1 task"));
    let refused = hub
        .cmd("resubmit")
        .args([&job, "--task", "0"])
        .assert()
        .code(2)
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("numbered from 1"), "{stderr}");

    // Chunks of several inputs show the inputs they hold.
    let chunked = job_of(&hub.map_ok(
        &inputs,
        &["--no-progress", "--chunksize", "2", "--", "true"],
    ));
    let table = hub
        .cmd("results")
        .args([&chunked.to_string(), "--status-only"])
        .output()
        .unwrap();
    assert_eq!(first_column(&table.stdout), ["1-2", "3"]);

    // `status --verbose` names running and queued tasks the same way.
    let sleeps = input_file(hub.dir(), "sleeps", &["30", "30", "30", "30"]);
    let map = hub.spawn_map("sleeps", &[sleeps.to_str().unwrap(), "--", "sleep"]);
    wait_until("two tasks running", || {
        let text = hub.cmd("status").arg("--verbose").output().unwrap().stdout;
        String::from_utf8_lossy(&text).contains("running: ")
            && map.job().is_some_and(|job| {
                let text = String::from_utf8_lossy(&text).into_owned();
                text.contains(&format!("job {job} queued: 3 4"))
                    && text.contains(&format!("{job}/1"))
                    && text.contains(&format!("{job}/2"))
            })
    });
}

/// Item 11: an input line is bytes on Unix: a Latin-1 file name reaches
/// the command exactly (directly, through `{/.}`, and through `--shell`),
/// the results file keeps it exact in `input_base64`, and `-0` reads
/// NUL-terminated inputs (`find -print0`), newlines and all.
#[test]
fn inputs_that_are_not_utf8_are_passed_as_bytes() {
    use std::os::unix::ffi::OsStrExt;
    let dir = TempDir::new().unwrap();
    let name: &[u8] = b"caf\xe9.txt";
    let path = dir.path().join(std::ffi::OsStr::from_bytes(name));
    std::fs::write(&path, "contents of the Latin-1 file\n").unwrap();
    let mut line = path.as_os_str().as_bytes().to_vec();
    line.push(b'\n');
    let results = dir.path().join("r.jsonl");
    for shell in [false, true] {
        let mut command = zcluster();
        command.args(["map", "--results"]).arg(&results);
        if shell {
            command.arg("--shell");
        }
        command
            .args(["--", "cat", "{}"])
            .write_stdin(line.clone())
            .timeout(FAIL_AFTER)
            .assert()
            .code(0)
            .stdout("contents of the Latin-1 file\n");
        let records = json_lines(&results);
        assert_eq!(records.len(), 1);
        assert_eq!(records[0]["status"], "ok", "{}", records[0]);
        assert!(records[0]["input"].is_null(), "{}", records[0]);
        let exact = base64_decode(records[0]["input_base64"].as_str().unwrap());
        assert_eq!(exact, path.as_os_str().as_bytes());
    }
    let output = zcluster()
        .args(["map", "--", "printf", "%s\\n", "{/.}"])
        .write_stdin(line.clone())
        .timeout(FAIL_AFTER)
        .output()
        .unwrap();
    assert_eq!(output.stdout, b"caf\xe9\n");

    // -0: records end with NUL, and a newline is part of one.
    zcluster()
        .args(["map", "-0", "--", "printf", "[%s]"])
        .write_stdin(&b"x y\nz\0w\0"[..])
        .timeout(FAIL_AFTER)
        .assert()
        .code(0)
        .stdout("[x y\nz][w]");
}

/// Standard base64, for the test's own check of `input_base64`.
fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for byte in text.bytes().filter(|&b| b != b'=') {
        let value = ALPHABET.iter().position(|&a| a == byte).expect("base64") as u32;
        bits = (bits << 6) | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    out
}

/// Item 13: the small things: counts in good English, `--results -` on
/// stdout (task output then on stderr, no file named `-`), a job's
/// description quoted as it was typed, tables whose columns line up, a
/// ping's mean in one unit, and JSON from every command that prints a
/// table or a list.
#[test]
fn small_things_a_person_notices() {
    let dir = TempDir::new().unwrap();
    let output = zcluster()
        .current_dir(dir.path())
        .args(["map", "--results", "-", "--", "echo"])
        .write_stdin("only\n")
        .timeout(FAIL_AFTER)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("zcluster: 1 task: 1 ok"), "{stderr}");
    assert!(
        stderr.contains("only\n"),
        "task output not on stderr: {stderr}"
    );
    let record: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("stdout is the JSON record");
    assert_eq!(record["stdout"], "only\n");
    assert!(!dir.path().join("-").exists(), "a file named - was created");

    let hub = Hub::start();
    let _workers = hub.workers(1, 2);
    let inputs = input_file(hub.dir(), "one", &["x"]);
    let job = job_of(&hub.map_ok(&inputs, &["--", "sh", "-c", "echo \"a b\""]));
    assert_eq!(
        hub.job(job).unwrap()["description"],
        "sh -c 'echo \"a b\"'",
        "the command's quoting was lost"
    );

    // Columns line up: each header's word starts where its cells start.
    let status = hub.cmd("status").output().unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let header = lines.iter().position(|l| l.starts_with("JOB")).unwrap();
    let column = lines[header].find("DESCRIPTION").unwrap();
    assert_eq!(
        lines[header + 1].find("sh -c"),
        Some(column),
        "columns do not line up:\n{text}"
    );
    assert!(!text.contains('\t'), "{text}");

    let ping = hub.cmd("ping").output().unwrap();
    let text = String::from_utf8_lossy(&ping.stdout);
    let mean = text
        .lines()
        .nth(1)
        .unwrap()
        .split("  ")
        .filter(|c| !c.is_empty())
        .last()
        .unwrap();
    let (value, unit) = mean
        .trim()
        .split_once(' ')
        .unwrap_or_else(|| panic!("{text}"));
    assert!(value.parse::<f64>().is_ok(), "mean {mean:?} in {text}");
    assert!(
        ["ns", "µs", "ms", "s"].contains(&unit),
        "mean {mean:?} in {text}"
    );

    let ping: serde_json::Value =
        serde_json::from_slice(&hub.cmd("ping").arg("--json").output().unwrap().stdout)
            .expect("ping --json");
    assert_eq!(ping["answered"].as_array().map(Vec::len), Some(1), "{ping}");
    let purged = hub
        .cmd("purge")
        .args(["--job", &job.to_string(), "--json"])
        .output()
        .unwrap();
    let purged: serde_json::Value = serde_json::from_slice(&purged.stdout).expect("purge --json");
    assert_eq!(purged["purged"], 1);
    let killed = hub.cmd("kill").arg("--json").output().unwrap();
    let killed: serde_json::Value = serde_json::from_slice(&killed.stdout).expect("kill --json");
    assert_eq!(
        killed["acknowledged"].as_array().map(Vec::len),
        Some(1),
        "{killed}"
    );
}

/// Item 12: help in a user's words: the top line says what zcluster is
/// for, the commands come in the order a person uses them, and every
/// command's help ends with examples that are zcluster command lines.
#[test]
fn help_is_written_for_the_person_running_it() {
    let output = zcluster().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    let first = help.lines().next().unwrap_or_default();
    assert!(
        !first.contains("clap") && !first.contains("library"),
        "{first}"
    );
    let order = [
        "map",
        "hub",
        "worker",
        "launch",
        "status",
        "events",
        "job",
        "dashboard",
        "results",
        "resubmit",
        "ping",
        "kill",
        "drain",
        "alloc",
        "purge",
        "shutdown",
        "device",
        "completions",
        "man",
    ];
    let listed: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert_eq!(listed, order, "{help}");
    // Each command's summary is one line where clap wraps help (100
    // columns when it cannot tell the terminal's width).
    let summaries = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "));
    for line in summaries {
        assert!(line.len() <= 100, "a summary over 100 columns: {line}");
    }
    let commands = order
        .iter()
        .map(|c| match *c {
            "launch" => vec![*c, "ssh"],
            "alloc" => vec![*c, "add", "slurm"],
            _ => vec![*c],
        })
        .chain([vec!["launch", "slurm"], vec!["alloc"]]);
    for command in commands {
        let output = zcluster().args(&command).arg("--help").output().unwrap();
        let help = String::from_utf8_lossy(&output.stdout);
        let examples: Vec<&str> = help
            .lines()
            .skip_while(|l| *l != "Examples:")
            .skip(1)
            .filter(|l| l.contains("zcluster "))
            .collect();
        let command = command.join(" ");
        assert!(examples.len() >= 2, "`zcluster {command} --help`:\n{help}");
    }
}

/// Runs `zcluster map ARGS --shell -- SCRIPT` over `inputs` (one per line),
/// where each task first appends its `{#}` to a log; the map's exit code,
/// its stderr, and the tasks that started, in the order they did.
fn halting_map(args: &[&str], inputs: &str, script: &str) -> (Option<i32>, String, Vec<u64>) {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("started");
    let file = dir.path().join("inputs");
    std::fs::write(&file, inputs).unwrap();
    let output = zcluster()
        .arg("map")
        .args(args)
        .arg(&file)
        .args(["--shell", "--"])
        .arg(format!("echo {{#}} >> {}; {script}", log.display()))
        .timeout(FAIL_AFTER)
        .output()
        .unwrap();
    let started = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        started,
    )
}

/// Item 4: once a failure is known to the hub, no task of the job starts
/// (nothing of it waits prefetched at an engine), and GNU parallel's
/// `--halt` forms are understood.
#[test]
fn halt_soon_starts_nothing_after_the_failure_and_takes_gnu_parallels_forms() {
    // -j1: task 2 fails; task 3 must never start.
    let (code, stderr, started) =
        halting_map(&["-j1", "--halt", "soon"], "0\n1\n0\n0\n0\n0\n", "exit {}");
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(started, [1, 2], "{stderr}");
    assert!(stderr.contains("4 not run"), "{stderr}");
    // soon,fail=3 with -j1: the third failure ends it, not the first.
    let (code, stderr, started) = halting_map(
        &["-j1", "--halt", "soon,fail=3"],
        "1\n0\n1\n0\n1\n0\n1\n0\n",
        "exit {}",
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(started, [1, 2, 3, 4, 5], "{stderr}");
    assert!(stderr.contains("3 failed"), "{stderr}");
    // now,success=1: the first success ends the map with status 0, the
    // other running task killed.
    let (code, stderr, started) = halting_map(
        &["-j2", "--halt", "now,success=1"],
        "1\n0\n1\n1\n1\n1\n1\n1\n",
        "if [ {} = 0 ]; then sleep 0.2; exit 0; else sleep 30; fi",
    );
    assert_eq!(code, Some(0), "{stderr}");
    let mut started = started;
    started.sort_unstable();
    assert_eq!(started, [1, 2], "{stderr}");
    assert!(
        stderr.contains("1 cancelled") && stderr.contains("halted"),
        "{stderr}"
    );
    // now,fail=50%: judged against all 4 inputs, so the second failure.
    let (code, stderr, _) = halting_map(
        &["-j1", "--halt", "now,fail=50%"],
        "1\n0\n1\n0\n",
        "exit {}",
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("2 failed"), "{stderr}");
    // A form it does not know is a usage error naming what it expected.
    zcluster()
        .args(["map", "--halt", "soon,fial=3", "--", "true"])
        .timeout(FAIL_AFTER)
        .assert()
        .code(2)
        .stderr(predicates::str::contains("expected fail=N"));
}
