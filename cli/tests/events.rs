//! `zcluster events`: every kind of event, from a real hub, real workers
//! and real maps, read as a script reads it (JSON Lines on stdout).

use std::fs::{self, File};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::common::*;

/// A running `zcluster events`, its stdout and stderr in files.
struct Events {
    guard: ChildGuard,
    out: PathBuf,
    err: PathBuf,
}

impl Events {
    /// Starts `zcluster events --hub FILE ARGS` and waits until it says it
    /// is listening (its subscription applied: nothing is missed after).
    fn start(hub: &Hub, name: &str, args: &[&str]) -> Self {
        let out = hub.dir().join(format!("{name}.jsonl"));
        let err = hub.dir().join(format!("{name}.err"));
        let guard = ChildGuard::spawn(
            Command::new(zcluster_path())
                .arg("events")
                .arg("--hub")
                .arg(&hub.file)
                .args(args)
                .stdin(Stdio::null())
                .stdout(File::create(&out).unwrap())
                .stderr(File::create(&err).unwrap()),
        );
        let events = Events { guard, out, err };
        wait_until("zcluster events to listen", || {
            fs::read_to_string(&events.err)
                .unwrap_or_default()
                .contains("listening to the hub")
        });
        events
    }

    fn lines(&self) -> Vec<Value> {
        fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
            .collect()
    }

    /// Waits for an event of kind `kind` that `matches`, and returns it.
    fn wait_for(&self, kind: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let mut found = None;
        wait_until(&format!("a {kind} event"), || {
            found = self
                .lines()
                .into_iter()
                .find(|e| e["event"] == kind && matches(e));
            found.is_some()
        });
        found.unwrap()
    }

    fn kinds(&self) -> Vec<String> {
        self.lines()
            .iter()
            .map(|e| e["event"].as_str().unwrap_or("?").to_string())
            .collect()
    }
}

/// Every event has a kind and a time the hub stamped (RFC 3339).
fn assert_well_formed(event: &Value) {
    let at = event["at"].as_str().expect("an `at` string");
    assert!(
        humantime::parse_rfc3339(at).is_ok(),
        "bad time {at:?} in {event}"
    );
}

#[test]
fn events_tell_every_engine_job_and_task_event_as_json_lines() {
    let hub = Hub::start();
    let events = Events::start(&hub, "all", &[]);

    // Two engines join.
    let mut workers = hub.workers(2, 2);
    let (a, b) = (
        hub.engine_of(workers[0].pid()),
        hub.engine_of(workers[1].pid()),
    );
    for engine in [a, b] {
        events.wait_for("engine_registered", |e| e["engine"] == engine);
    }

    // A job whose one bad input fails, is retried once, and fails for good.
    let inputs = input_file(hub.dir(), "mixed.txt", &["ok1", "bad", "ok2"]);
    let output = hub
        .cmd("map")
        .arg(&inputs)
        .args(["--retries", "1", "--no-progress", "--"])
        .args([
            "sh",
            "-c",
            "case $0 in bad) echo broken input >&2; exit 3;; esac",
            "{}",
        ])
        .timeout(FAIL_AFTER)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let job = job_of(&output);
    let opened = events.wait_for("job_opened", |e| e["job"] == job);
    assert!(opened["description"].as_str().is_some());
    let retried = events.wait_for("task_retried", |e| e["job"] == job);
    assert_eq!(retried["attempt"], 2);
    assert!(retried["engine"].as_u64().is_some());
    let failed = events.wait_for("task_failed", |e| e["job"] == job);
    assert_eq!(failed["attempts"], 2);
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(reason.contains('3'), "reason {reason:?}");
    let finished = events.wait_for("job_finished", |e| e["job"] == job);
    assert_eq!(
        (finished["succeeded"].as_u64(), finished["failed"].as_u64()),
        (Some(2), Some(1))
    );

    // A straggler: five quick tasks, then one that runs well past four
    // times their median (and the two-second floor) gets a second copy on
    // the other engine, which has free slots.
    let inputs = input_file(hub.dir(), "slow.txt", &["0", "0", "0", "0", "0", "3"]);
    let output = hub
        .cmd("map")
        .arg(&inputs)
        .args(["--no-progress", "--", "sleep", "{}"])
        .timeout(FAIL_AFTER)
        .output()
        .unwrap();
    assert!(output.status.success());
    let job = job_of(&output);
    let copied = events.wait_for("task_copied", |e| e["job"] == job);
    assert!(
        copied["running_for_s"].as_f64().unwrap_or(0.0) >= 2.0,
        "{copied}"
    );

    // A job cancelled by Ctrl-C at its client.
    let inputs = input_file(hub.dir(), "long.txt", &["30", "30", "30", "30", "30", "30"]);
    let mut map = hub.spawn_map("long", &[inputs.to_str().unwrap(), "--", "sleep", "{}"]);
    wait_until("the long job to start", || map.job().is_some());
    let job = map.job().unwrap();
    events.wait_for("job_opened", |e| e["job"] == job);
    wait_until("its tasks to run", || {
        hub.job(job)
            .is_some_and(|j| j["running"].as_u64() > Some(0))
    });
    kill(Pid::from_raw(map.guard.pid()), Signal::SIGINT).unwrap();
    map.wait();
    let cancelled = events.wait_for("job_cancelled", |e| e["job"] == job);
    assert!(cancelled["dropped"].as_u64().is_some());

    // An engine killed outright is declared dead once its heartbeats stop;
    // one told to stop leaves cleanly.
    kill(Pid::from_raw(workers[0].pid()), Signal::SIGKILL).unwrap();
    let dead = events.wait_for("engine_dead", |e| e["engine"] == a);
    assert!(dead["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("heartbeat"));
    workers[0].wait();
    kill(Pid::from_raw(workers[1].pid()), Signal::SIGTERM).unwrap();
    workers[1].wait();
    events.wait_for("engine_retired", |e| e["engine"] == b);

    let all = events.lines();
    for event in &all {
        assert_well_formed(event);
    }
    for kind in [
        "engine_registered",
        "engine_dead",
        "engine_retired",
        "job_opened",
        "job_finished",
        "job_cancelled",
        "task_failed",
        "task_retried",
        "task_copied",
    ] {
        assert!(
            all.iter().any(|e| e["event"] == kind),
            "no {kind} in {:?}",
            events.kinds()
        );
    }
    // A task that succeeds says nothing: the 2 + 5 + quick successes above
    // published no event of their own.
    assert!(!events
        .kinds()
        .iter()
        .any(|k| k.contains("succeeded") || k == "task_done"));
    drop(events.guard);
    let _ = events.err;
}

#[test]
fn events_of_one_job_leave_the_others_out() {
    let hub = Hub::start();
    let events = Events::start(&hub, "one", &["--job", "2"]);
    let _workers = hub.workers(1, 2);
    let inputs = input_file(hub.dir(), "in.txt", &["a", "b"]);
    for _ in 0..2 {
        hub.map_ok(&inputs, &["--no-progress", "--", "true", "{}"]);
    }
    events.wait_for("job_finished", |e| e["job"] == 2);
    let jobs: Vec<u64> = events
        .lines()
        .iter()
        .map(|e| e["job"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(jobs, vec![2, 2], "{:?}", events.kinds());
    // Stops on SIGTERM with status 0.
    let mut guard = events.guard;
    kill(Pid::from_raw(guard.pid()), Signal::SIGTERM).unwrap();
    let status = exit_within(&mut guard, Duration::from_secs(5)).expect("events stops");
    assert!(status.success());
}
