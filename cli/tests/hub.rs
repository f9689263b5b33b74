//! `zcluster hub` end to end: a real hub process, real worker processes,
//! clients as separate processes, signals and the SQLite store on disk.
//!
//! Every test has its own temp dir, connection file and store, lets the hub
//! pick free ports, and bounds every wait. Hub and worker logs go to files in
//! the temp dir and are shown when an assertion about them fails.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use predicates::prelude::*;
use serde_json::Value;
use tempfile::TempDir;
use zcluster::auth::{Channel, Key, Signer, Verifier};
use zcluster::exec::{ExecOutcome, ExitKind};
use zcluster::hub::connection::ConnectionInfo;
use zcluster::hub::curve::{self, CurveKeys};
use zcluster::hub::protocol::{ClientCall, EngineMessage, Notification, ResultItem};
use zcluster::message::{
    decode_value, encode_value, ClusterResult, Header, MessageKind, Parts, ResultMetadata,
    ResultStatus, PROTOCOL,
};

use crate::common::*;

/// Counts rows of every table of a SQLite file with the `sqlite3` CLI,
/// read-only; `None` when `sqlite3` is not installed.
fn sqlite_row_counts(path: &Path) -> Option<Vec<(String, u64)>> {
    let query = |sql: &str| -> Option<String> {
        let output = Command::new("sqlite3")
            .arg("-readonly")
            .arg(path)
            .arg(sql)
            .output()
            .ok()?;
        assert!(
            output.status.success(),
            "sqlite3 `{sql}` failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Some(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    let tables = query("SELECT name FROM sqlite_master WHERE type = 'table'")?;
    let counts = tables
        .lines()
        .map(|table| {
            let n = query(&format!("SELECT count(*) FROM \"{table}\""))
                .unwrap_or_default()
                .trim()
                .parse()
                .unwrap_or(0);
            (table.to_string(), n)
        })
        .collect();
    Some(counts)
}

#[test]
fn thousand_inputs_on_three_workers_in_order_and_stored() {
    let hub = Hub::start();
    let mode = fs::metadata(&hub.file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the connection file holds the key");
    let _workers = hub.workers(3, 2);

    let (file, inputs) = numbered_inputs(hub.dir(), "in.txt", "", 1000);
    let map_results = hub.dir().join("map.jsonl");
    let output = hub
        .cmd("map")
        .arg("--results")
        .arg(&map_results)
        .arg(&file)
        .args(["--", "echo"])
        .timeout(FAIL_AFTER)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "map failed: {stderr}\nhub log:\n{}",
        hub.proc.log()
    );
    assert_eq!(
        String::from_utf8(output.stdout.clone()).unwrap(),
        lines_text(&inputs)
    );
    assert!(stderr.contains("1000 tasks: 1000 ok"), "{stderr}");
    assert!(
        stderr.contains(&format!("on {}", hub.file.display())),
        "the job line names the hub: {stderr}"
    );
    let job = job_of(&output);

    // The store's records match what the map wrote, input by input.
    let (code, records) = hub.results(job);
    assert_eq!(code, Some(0));
    let written = json_lines(&map_results);
    assert_eq!(records.len(), 1000);
    assert_eq!(written.len(), 1000);
    for (i, (stored, seen)) in records.iter().zip(&written).enumerate() {
        assert_eq!(stored["seq"], i as u64 + 1, "{stored}");
        assert_eq!(stored["input"], inputs[i], "{stored}");
        assert_eq!(stored["stdout"], format!("{}\n", inputs[i]), "{stored}");
        assert_eq!(stored["status"], "ok", "{stored}");
        for key in [
            "seq",
            "input",
            "command",
            "status",
            "exit_code",
            "stdout",
            "host",
            "pid",
            "worker",
        ] {
            assert_eq!(stored[key], seen[key], "{key} differs for input {}", i + 1);
        }
    }
    // Plain `results` prints the stdout blocks in input order.
    hub.cmd("results")
        .arg(job.to_string())
        .assert()
        .success()
        .stdout(lines_text(&inputs));

    // One task per input (chunk size 1): the job is done with 1000.
    let status = hub.job(job).expect("the job is in status");
    assert_eq!(field_u64(&status, "done"), 1000, "{status}");
    assert_eq!(field_u64(&status, "failed"), 0, "{status}");
    assert_eq!(field_u64(&status, "pending"), 0, "{status}");
    assert_eq!(field_u64(&status, "running"), 0, "{status}");
    assert_eq!(status["total"], 1000, "{status}");
    // Every engine took part and the engines' counts add up.
    let engines = hub.engines();
    let completed: Vec<u64> = engines.iter().map(|e| field_u64(e, "completed")).collect();
    assert_eq!(completed.iter().sum::<u64>(), 1000, "{engines:?}");
    assert!(
        completed.iter().all(|&c| c > 0),
        "an engine got no work: {engines:?}"
    );
    assert!(
        hub.status()["store"]
            .as_str()
            .unwrap()
            .contains("tasks.sqlite"),
        "status names the store"
    );

    // status --json has every documented field.
    let status = hub.status();
    for key in [
        "id",
        "host",
        "pid",
        "slots",
        "running",
        "completed",
        "last_heartbeat",
        "handlers",
    ] {
        assert!(
            status["engines"][0].get(key).is_some(),
            "no engine {key}: {status}"
        );
    }
    for key in [
        "id",
        "submitted",
        "description",
        "total",
        "pending",
        "running",
        "done",
        "failed",
    ] {
        assert!(
            status["jobs"][0].get(key).is_some(),
            "no job {key}: {status}"
        );
    }
    // The hub says how to start workers, and a clean run warns of nothing.
    let log = hub.proc.log();
    assert!(
        log.contains(&format!(
            "start workers with: zcluster worker --hub {}",
            hub.file.display()
        )),
        "{log}"
    );
    assert!(!log.contains("WARN") && !log.contains("ERROR"), "{log}");

    // The pairs are in the SQLite file: a new hub on the same store (new
    // ports and key) still has them.
    hub.cmd("shutdown").arg("--workers").assert().success();
    let mut hub = hub;
    assert!(hub.proc.wait().success(), "hub log:\n{}", hub.proc.log());
    assert!(hub.store.exists(), "no store at {}", hub.store.display());
    if let Some(counts) = sqlite_row_counts(&hub.store) {
        assert!(
            counts.iter().any(|(_, n)| *n >= 1000),
            "no table with the 1000 tasks in the store: {counts:?}"
        );
    }
    // The old file names the dead hub's ports: remove it, so readiness
    // means the new hub wrote its own.
    fs::remove_file(&hub.file).unwrap();
    hub.proc = Hub::spawn_hub(hub.dir(), &hub.file, &hub.store, &["--fresh"]);
    hub.wait_ready();
    let (code, again) = hub.results(job);
    assert_eq!(code, Some(0));
    assert_eq!(again.len(), 1000);
    for (stored, before) in again.iter().zip(&records) {
        for key in ["seq", "input", "stdout", "status", "pid"] {
            assert_eq!(stored[key], before[key]);
        }
    }
}

#[test]
fn concurrent_maps_each_get_their_own_results() {
    let hub = Hub::start();
    let _workers = hub.workers(2, 2);
    let (file_a, inputs_a) = numbered_inputs(hub.dir(), "a.txt", "a", 300);
    let (file_b, inputs_b) = numbered_inputs(hub.dir(), "b.txt", "b", 300);
    let a_path = file_a.display().to_string();
    let b_path = file_b.display().to_string();
    let mut a = hub.spawn_map("a", &[&a_path, "--", "echo"]);
    let mut b = hub.spawn_map("b", &[&b_path, "--", "echo"]);
    let (status_a, status_b) = (a.wait(), b.wait());
    assert!(status_a.success(), "{}", a.stderr());
    assert!(status_b.success(), "{}", b.stderr());
    assert_eq!(a.stdout(), lines_text(&inputs_a));
    assert_eq!(b.stdout(), lines_text(&inputs_b));
    let (job_a, job_b) = (a.job().unwrap(), b.job().unwrap());
    assert_ne!(job_a, job_b);
    for (job, inputs) in [(job_a, &inputs_a), (job_b, &inputs_b)] {
        let (code, records) = hub.results(job);
        assert_eq!(code, Some(0));
        let stdout: Vec<&str> = records
            .iter()
            .map(|r| r["stdout"].as_str().unwrap())
            .collect();
        let want: Vec<String> = inputs.iter().map(|i| format!("{i}\n")).collect();
        assert_eq!(stdout, want, "job {job} has another job's results");
        let job_status = hub.job(job).unwrap();
        assert_eq!(field_u64(&job_status, "done"), 300, "{job_status}");
    }
}

#[test]
fn kill_ends_workers_one_or_all_and_restart_exits_75() {
    let hub = Hub::start();
    let mut workers = hub.workers(4, 1);
    let pids: Vec<i32> = workers.iter().map(Proc::pid).collect();
    let ids: Vec<u64> = pids.iter().map(|&pid| hub.engine_of(pid)).collect();

    // ping: a header and one line per engine, each naming its pid.
    let output = hub.cmd("ping").output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let table = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 5, "{table}");
    assert!(lines[0].starts_with("HOST "), "{table}");
    for pid in &pids {
        assert!(
            lines[1..]
                .iter()
                .any(|l| l.split_whitespace().nth(1) == Some(&pid.to_string())),
            "pid {pid} missing from ping:\n{table}"
        );
    }

    // An unknown engine is an error, and nobody is killed.
    hub.cmd("kill")
        .args(["--engine", "999999"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("999999"));

    // One engine: only it exits, cleanly.
    hub.cmd("kill")
        .args(["--engine", &ids[0].to_string()])
        .assert()
        .success()
        .stdout(format!("{}\n", ids[0]));
    let status = workers[0].wait();
    assert_eq!(status.code(), Some(0), "{}", workers[0].log());
    assert!(!alive(pids[0]));
    wait_until("the killed engine to leave status", || {
        hub.engines().len() == 3
    });
    for worker in &mut workers[1..] {
        assert!(worker.running(), "another worker exited: {}", worker.log());
    }

    // The others still serve a map.
    let results = hub.dir().join("r.jsonl");
    let (file, inputs) = numbered_inputs(hub.dir(), "in.txt", "x", 30);
    hub.cmd("map")
        .arg("--results")
        .arg(&results)
        .arg(&file)
        .args(["--", "echo"])
        .timeout(FAIL_AFTER)
        .assert()
        .success()
        .stdout(lines_text(&inputs));
    for record in json_lines(&results) {
        let pid = record["pid"].as_i64().unwrap() as i32;
        assert!(
            pids[1..].contains(&pid),
            "task ran on pid {pid}, not a live worker: {record}"
        );
    }

    // Restart: exit status 75 for a supervisor.
    hub.cmd("kill")
        .args(["--restart", "--engine", &ids[1].to_string()])
        .assert()
        .success()
        .stdout(format!("{}\n", ids[1]));
    assert_eq!(workers[1].wait().code(), Some(75), "{}", workers[1].log());

    // Everyone else: every remaining worker exits 0 and is reaped.
    let output = hub.cmd("kill").output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut acked: Vec<u64> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    acked.sort_unstable();
    let mut want = ids[2..].to_vec();
    want.sort_unstable();
    assert_eq!(acked, want);
    for (worker, pid) in workers[2..].iter_mut().zip(&pids[2..]) {
        assert_eq!(worker.wait().code(), Some(0), "{}", worker.log());
        assert!(!alive(*pid));
    }
    wait_until("status to show no engines", || hub.engines().is_empty());
    assert!(
        hub.proc.guard.0.is_some() && alive(hub.proc.pid()),
        "the hub must outlive its workers"
    );
}

#[test]
fn a_worker_killed_mid_map_is_declared_dead_and_its_tasks_rerun() {
    let hub = Hub::start();
    let mut workers = hub.workers(2, 2);
    let victim_pid = workers[0].pid();
    let victim = hub.engine_of(victim_pid);
    let survivor = hub.engine_of(workers[1].pid());
    let (file, inputs) = numbered_inputs(hub.dir(), "in.txt", "", 40);
    let path = file.display().to_string();
    let mut map = hub.spawn_map("map", &[&path, "--", "sh", "-c", "sleep 0.2; echo $0"]);

    wait_until("a few results", || map.stdout().lines().count() >= 4);
    workers[0].guard.0.as_mut().unwrap().kill().unwrap();
    let killed = Instant::now();
    workers[0].wait();

    // Gone from status within the heartbeat bound (plus a margin for a
    // loaded machine and the status process itself).
    let bound =
        Duration::from_millis(HEARTBEAT_MS * u64::from(HEARTBEAT_MISSES)) + Duration::from_secs(2);
    wait_until("the dead engine to leave status", || {
        !hub.engines()
            .iter()
            .any(|e| e["id"].as_u64() == Some(victim))
    });
    let noticed = killed.elapsed();
    eprintln!("dead engine left status {noticed:?} after SIGKILL");
    assert!(
        noticed < bound,
        "dead engine noticed after {noticed:?} (bound {bound:?})"
    );

    let status = map.wait();
    assert!(
        status.success(),
        "map failed: {}\nhub log:\n{}",
        map.stderr(),
        hub.proc.log()
    );
    // Every result exactly once, in order.
    assert_eq!(map.stdout(), lines_text(&inputs));
    let job = map.job().unwrap();
    let (code, records) = hub.results(job);
    assert_eq!(code, Some(0));
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=40).collect::<Vec<u64>>());
    let job_status = hub.job(job).unwrap();
    assert_eq!(field_u64(&job_status, "done"), 40, "{job_status}");
    // Tasks finished after the kill ran on the survivor.
    let engines = hub.engines();
    assert_eq!(engines.len(), 1, "{engines:?}");
    assert_eq!(engines[0]["id"].as_u64(), Some(survivor));
}

#[test]
fn status_matches_results_and_purge_removes_finished_jobs_only() {
    let hub = Hub::start();
    let workers = hub.workers(2, 1);
    let (file, inputs) = numbered_inputs(hub.dir(), "in.txt", "", 25);
    let run_map = || {
        let output = hub.map_ok(&file, &["--", "echo"]);
        assert_eq!(String::from_utf8_lossy(&output.stdout), lines_text(&inputs));
        job_of(&output)
    };
    let (first, second, third) = (run_map(), run_map(), run_map());

    for job in [first, second, third] {
        let (code, records) = hub.results(job);
        assert_eq!(code, Some(0));
        assert_eq!(records.len(), 25);
        let status = hub.job(job).unwrap();
        let ok = records.iter().filter(|r| r["status"] == "ok").count() as u64;
        assert_eq!(field_u64(&status, "done"), ok, "{status}");
        assert_eq!(
            field_u64(&status, "failed"),
            records.len() as u64 - ok,
            "{status}"
        );
        assert_eq!(field_u64(&status, "pending"), 0, "{status}");
        assert_eq!(field_u64(&status, "running"), 0, "{status}");
        assert_eq!(
            status["total"].as_u64(),
            Some(records.len() as u64),
            "{status}"
        );
    }
    // The engines' completed counts add up to the tasks they ran.
    let completed: u64 = hub
        .engines()
        .iter()
        .map(|e| field_u64(e, "completed"))
        .sum();
    assert_eq!(completed, 75);

    // A finished job can be purged: its results are gone (unknown job).
    hub.cmd("purge")
        .args(["--job", &first.to_string()])
        .assert()
        .success()
        .stderr(predicate::str::contains("purged 25 task(s)"));
    hub.cmd("results")
        .arg(first.to_string())
        .assert()
        .code(2)
        .stderr(predicate::str::contains(first.to_string()));
    assert!(hub.job(first).is_none(), "a purged job stays in status");

    // A running job: status shows where its tasks are, results says they
    // are unfinished, and purge is refused with the reason.
    let (file, _) = numbered_inputs(hub.dir(), "slow.txt", "", 4);
    let path = file.display().to_string();
    let mut slow = hub.spawn_map("slow", &[&path, "--", "sh", "-c", "sleep 5"]);
    wait_until("two slow tasks to run and two to wait", || {
        slow.job()
            .and_then(|job| hub.job(job))
            .is_some_and(|j| field_u64(&j, "running") == 2 && field_u64(&j, "pending") == 2)
    });
    let running = slow.job().unwrap();
    hub.cmd("results")
        .arg(running.to_string())
        .assert()
        .code(1)
        .stderr(predicate::str::contains("4 unfinished"));
    hub.cmd("purge")
        .args(["--job", &running.to_string()])
        .assert()
        .failure()
        .stderr(
            predicate::str::contains("cannot be purged").or(predicate::str::contains("unfinished")),
        )
        .stderr(predicate::str::contains(running.to_string()));
    assert!(hub.job(running).is_some());
    // Ctrl-C the map: the hub cancels the job, which can then be purged.
    kill(Pid::from_raw(slow.guard.pid()), Signal::SIGINT).unwrap();
    assert_eq!(slow.wait().code(), Some(130), "{}", slow.stderr());
    wait_until("the cancelled job to finish", || {
        hub.job(running)
            .is_some_and(|j| field_u64(&j, "failed") == 4)
    });
    hub.cmd("purge")
        .args(["--job", &running.to_string()])
        .assert()
        .success()
        .stderr(predicate::str::contains("purged 4 task(s)"));
    assert!(hub.job(running).is_none());

    // --engine forgets what one engine ran, and only that.
    let pid = workers[0].pid();
    let engine = hub.engine_of(pid);
    let ran_on = |records: &[Value], pid: i32| {
        records
            .iter()
            .filter(|r| r["pid"].as_i64() == Some(i64::from(pid)))
            .count()
    };
    let (_, second_records) = hub.results(second);
    let (_, third_records) = hub.results(third);
    let by_engine = ran_on(&second_records, pid) + ran_on(&third_records, pid);
    hub.cmd("purge")
        .args(["--engine", &engine.to_string()])
        .assert()
        .success()
        .stderr(predicate::str::contains(format!(
            "purged {by_engine} task(s)"
        )));
    let (_, left_second) = hub.results(second);
    let (_, left_third) = hub.results(third);
    assert_eq!(ran_on(&left_second, pid) + ran_on(&left_third, pid), 0);
    assert_eq!(left_second.len() + left_third.len(), 50 - by_engine);

    // --all forgets every completed task: nothing left to show.
    hub.cmd("purge")
        .arg("--all")
        .assert()
        .success()
        .stderr(predicate::str::contains(format!(
            "purged {} task(s)",
            50 - by_engine
        )));
    for job in [second, third] {
        let (_, records) = hub.results(job);
        assert!(records.is_empty(), "purge --all left records: {records:?}");
        if let Some(status) = hub.job(job) {
            assert_eq!(
                field_u64(&status, "done") + field_u64(&status, "failed"),
                0,
                "{status}"
            );
        }
    }
}

#[test]
fn resubmit_reruns_failed_tasks() {
    let hub = Hub::start();
    let _workers = hub.workers(1, 2);
    let paths: Vec<PathBuf> = (0..6).map(|i| hub.dir().join(format!("f{i}"))).collect();
    // Even ones exist, odd ones do not (yet).
    for path in paths.iter().step_by(2) {
        fs::write(path, "").unwrap();
    }
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let file = input_file(hub.dir(), "in.txt", &refs);
    let output = hub
        .cmd("map")
        .arg(&file)
        .args(["--", "sh", "-c", "test -e \"$0\" && echo found $0"])
        .timeout(FAIL_AFTER)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let job = job_of(&output);

    let (code, records) = hub.results(job);
    assert_eq!(code, Some(1), "results of a job with failures exits 1");
    let statuses: Vec<&str> = records
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["ok", "failed", "ok", "failed", "ok", "failed"]);
    hub.cmd("results")
        .arg(job.to_string())
        .args(["--json", "--failed"])
        .assert()
        .code(1)
        .stdout(predicate::function(|out: &str| out.lines().count() == 3));
    let status = hub.job(job).unwrap();
    assert_eq!(
        field_u64(&status, "failed"),
        3,
        "failed commands count as failed tasks: {status}"
    );
    assert_eq!(field_u64(&status, "done"), 3, "{status}");

    for path in paths.iter().skip(1).step_by(2) {
        fs::write(path, "").unwrap();
    }
    hub.cmd("resubmit")
        .arg(job.to_string())
        .assert()
        .success()
        .stderr(predicate::str::contains("resubmitted 3 task(s)"));
    wait_until("the resubmitted tasks to succeed", || {
        hub.cmd("results").arg(job.to_string()).ok().is_ok()
    });
    let (code, records) = hub.results(job);
    assert_eq!(code, Some(0));
    assert_eq!(records.len(), 6);
    for (record, name) in records.iter().zip(&names) {
        assert_eq!(record["status"], "ok", "{record}");
        assert_eq!(record["stdout"], format!("found {name}\n"), "{record}");
    }
    let status = hub.job(job).unwrap();
    assert_eq!(field_u64(&status, "done"), 6, "{status}");
    assert_eq!(field_u64(&status, "failed"), 0, "{status}");
}

/// A finished all-ok job of three `found PATH` inputs; the paths exist.
fn found_job(hub: &Hub) -> (u64, Vec<PathBuf>) {
    let paths: Vec<PathBuf> = (1..=3).map(|i| hub.dir().join(format!("g{i}"))).collect();
    for path in &paths {
        fs::write(path, "").unwrap();
    }
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let file = input_file(hub.dir(), "found.txt", &refs);
    let output = hub.map_ok(
        &file,
        &["--", "sh", "-c", "test -e \"$0\" && echo found $0"],
    );
    (job_of(&output), paths)
}

#[test]
fn resubmit_task_ids_are_the_ones_results_shows() {
    let hub = Hub::start();
    let _workers = hub.workers(1, 2);
    let (job, paths) = found_job(&hub);
    // Input 2's file goes away: rerunning input 2 (and only it) now fails.
    fs::remove_file(&paths[1]).unwrap();
    let (_, records) = hub.results(job);
    let seq = records[1]["seq"].as_u64().unwrap();
    assert_eq!(records[1]["input"], paths[1].display().to_string());
    hub.cmd("resubmit")
        .arg(job.to_string())
        .args(["--task", &seq.to_string()])
        .assert()
        .success()
        .stderr(predicate::str::contains("resubmitted 1 task(s)"));
    wait_until("the resubmitted task to finish", || {
        hub.job(job).is_some_and(|j| {
            field_u64(&j, "pending") + field_u64(&j, "running") == 0
                && field_u64(&j, "done") + field_u64(&j, "failed") == 3
        })
    });
    let (code, records) = hub.results(job);
    let statuses: Vec<&str> = records
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["ok", "failed", "ok"],
        "`resubmit --task {seq}` did not rerun input {seq} (the `seq` results --json shows)"
    );
    assert_eq!(code, Some(1));
    // The last input's seq is a task of the job too.
    let last = records[2]["seq"].as_u64().unwrap();
    hub.cmd("resubmit")
        .arg(job.to_string())
        .args(["--task", &last.to_string()])
        .assert()
        .success();
}

#[test]
fn resubmit_with_nothing_failed_leaves_the_job_purgeable() {
    let hub = Hub::start();
    let _workers = hub.workers(1, 2);
    let (job, _) = found_job(&hub);
    hub.cmd("resubmit")
        .arg(job.to_string())
        .assert()
        .success()
        .stderr(predicate::str::contains("resubmitted 0 task(s)"));
    // Nothing runs, so the job is still finished and can be purged.
    hub.cmd("purge")
        .args(["--job", &job.to_string()])
        .assert()
        .success()
        .stderr(predicate::str::contains("purged 3 task(s)"));
}

#[test]
fn resubmit_while_the_map_still_reads_inputs_loses_none() {
    let hub = Hub::start();
    let _workers = hub.workers(1, 2);
    let flag = hub.dir().join("fixed");
    let stdout = hub.dir().join("live.out");
    let stderr = hub.dir().join("live.err");
    // The map reads its inputs from a pipe that stays open.
    let mut map = ChildGuard::spawn(
        Command::new(zcluster_path())
            .arg("map")
            .arg("--hub")
            .arg(&hub.file)
            .arg("--no-progress")
            .args([
                "--",
                "sh",
                "-c",
                "[ $0 != bad ] || [ -e \"$1\" ] && echo $0",
                "{}",
            ])
            .arg(&flag)
            .stdin(Stdio::piped())
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap()),
    );
    let mut stdin = map.0.as_mut().unwrap().stdin.take().unwrap();
    writeln!(stdin, "bad").unwrap();
    stdin.flush().unwrap();
    let job = {
        let mut job = None;
        wait_until("the first input to fail", || {
            job = job_in(&fs::read_to_string(&stderr).unwrap_or_default());
            job.and_then(|j| hub.job(j))
                .is_some_and(|j| field_u64(&j, "failed") == 1)
        });
        job.unwrap()
    };
    fs::write(&flag, "").unwrap();
    hub.cmd("resubmit")
        .arg(job.to_string())
        .assert()
        .success()
        .stderr(predicate::str::contains("resubmitted 1 task(s)"));
    wait_until("the resubmitted input to succeed", || {
        hub.job(job).is_some_and(|j| field_u64(&j, "done") == 1)
    });
    // The map goes on reading: its next input must still run.
    writeln!(stdin, "good").unwrap();
    drop(stdin);
    let status = exit_within(&mut map, Duration::from_secs(10)).unwrap_or_else(|| {
        panic!(
            "the map hangs after its job was resubmitted: its later input was dropped\n\
             map stderr:\n{}\nhub log:\n{}",
            fs::read_to_string(&stderr).unwrap_or_default(),
            hub.proc.log()
        )
    });
    // The map saw `bad` fail (its own run), then `good`.
    assert_eq!(status.code(), Some(1));
    assert_eq!(fs::read_to_string(&stdout).unwrap(), "good\n");
    let (code, records) = hub.results(job);
    assert_eq!(code, Some(0), "{records:?}");
    assert_eq!(records.len(), 2);
    let status = hub.job(job).unwrap();
    assert_eq!(status["total"], 2, "{status}");
    assert_eq!(field_u64(&status, "done"), 2, "{status}");
}

#[test]
fn an_input_retried_to_success_is_not_a_failed_task() {
    let hub = Hub::start();
    let _workers = hub.workers(1, 2);
    let marks: Vec<String> = (0..3)
        .map(|i| hub.dir().join(format!("m{i}")).display().to_string())
        .collect();
    let refs: Vec<&str> = marks.iter().map(String::as_str).collect();
    let file = input_file(hub.dir(), "marks.txt", &refs);
    let output = hub.map_ok(
        &file,
        &[
            "--retries",
            "1",
            "--",
            "sh",
            "-c",
            "if [ -e \"$0\" ]; then echo second; else touch \"$0\"; exit 3; fi",
        ],
    );
    let job = job_of(&output);
    let (code, records) = hub.results(job);
    assert_eq!(code, Some(0));
    assert_eq!(records.len(), 3);
    // Every input succeeded (on its second attempt): status agrees with
    // results, and there is nothing to resubmit.
    let status = hub.job(job).unwrap();
    assert_eq!(
        field_u64(&status, "failed"),
        0,
        "status counts failed first attempts of inputs that succeeded: {status}"
    );
    assert_eq!(field_u64(&status, "done"), 3, "{status}");
    hub.cmd("resubmit")
        .arg(job.to_string())
        .assert()
        .success()
        .stderr(predicate::str::contains("resubmitted 0 task(s)"));
}

#[test]
fn map_options_work_through_the_hub() {
    let hub = Hub::start();
    let _workers = hub.workers(1, 2);
    let dir = hub.dir();

    // --retries: a task that fails once is run again.
    let results = dir.join("retries.jsonl");
    let marks: Vec<String> = (0..3)
        .map(|i| dir.join(format!("m{i}")).display().to_string())
        .collect();
    let refs: Vec<&str> = marks.iter().map(String::as_str).collect();
    let file = input_file(dir, "marks.txt", &refs);
    hub.cmd("map")
        .args(["--retries", "1", "--results"])
        .arg(&results)
        .arg(&file)
        .args([
            "--",
            "sh",
            "-c",
            "if [ -e \"$0\" ]; then echo second; else touch \"$0\"; exit 3; fi",
        ])
        .timeout(FAIL_AFTER)
        .assert()
        .success()
        .stdout("second\nsecond\nsecond\n");
    for record in json_lines(&results) {
        assert_eq!(record["attempts"], 2, "{record}");
        assert_eq!(record["status"], "ok", "{record}");
    }

    // --timeout kills the task, and the map says so.
    let started = Instant::now();
    hub.cmd("map")
        .args(["--timeout", "300ms", "--", "sh", "-c", "sleep 30"])
        .write_stdin("x\n")
        .timeout(FAIL_AFTER)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("1 timed out"));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the 30 s sleep was waited for"
    );

    // --unordered prints as tasks finish.
    hub.cmd("map")
        .args(["--unordered", "--", "sh", "-c", "sleep $0; echo $0"])
        .write_stdin("0.6\n0\n")
        .timeout(FAIL_AFTER)
        .assert()
        .success()
        .stdout("0\n0.6\n");
}

#[test]
fn a_worker_kills_the_daemons_its_tasks_leave() {
    let hub = Hub::start();
    let _workers = hub.workers(1, 3);
    let (script, inputs, daemons) = crate::map::Daemons::inputs(
        hub.dir(),
        &["setsid.pid", "double-ends.pid", "both-ends.pid"],
    );
    hub.cmd("map")
        .args(["--timeout", "1s"])
        .arg(&inputs)
        .arg("--")
        .arg("sh")
        .arg(&script)
        .timeout(FAIL_AFTER)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("1 timed out"));
    daemons.assert_all_gone("through a hub worker");
}

#[test]
fn usage_errors_name_the_file_the_job_or_the_hub() {
    let dir = TempDir::new().unwrap();
    zcluster()
        .args(["status", "--hub", "/nonexistent.json"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("/nonexistent.json"));

    // A connection file others can read: refused, with the fix.
    let write_file = |name: &str, clients: &str, mode: u32| {
        let path = dir.path().join(name);
        let info = serde_json::json!({
            "engines": "tcp://127.0.0.1:9",
            "clients": clients,
            "notifications": "tcp://127.0.0.1:9",
            "key": "00".repeat(32),
            "store": ":memory:",
            "curve": CurveKeys::derive(&"00".repeat(32)).unwrap(),
        });
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .unwrap();
        writeln!(file, "{info}").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    };
    let open = write_file("open.json", "tcp://127.0.0.1:9", 0o644);
    zcluster()
        .arg("status")
        .arg("--hub")
        .arg(&open)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("chmod 600"));

    // Nobody listens: the client gives up in bounded time and says where
    // it looked.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("tcp://127.0.0.1:{port}");
    let silent = write_file("silent.json", &url, 0o600);
    let started = Instant::now();
    zcluster()
        .arg("status")
        .arg("--hub")
        .arg(&silent)
        .timeout(Duration::from_secs(30))
        .assert()
        .failure()
        .stderr(predicate::str::contains("did not answer"))
        .stderr(predicate::str::contains(&url));
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(10), "gave up after {waited:?}");

    // A live hub: an unknown job is a usage error naming the job.
    let hub = Hub::start();
    hub.cmd("results")
        .arg("999999")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("999999"));
    hub.cmd("resubmit")
        .arg("999999")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("999999"));
    // So is an engine it never had.
    hub.cmd("purge")
        .args(["--engine", "999999"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no engine 999999"));
    // map to a missing connection file: a usage error before any work.
    zcluster()
        .args(["map", "--hub"])
        .arg(dir.path().join("missing.json"))
        .args(["--", "echo"])
        .write_stdin("x\n")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("missing.json"));
}

#[test]
fn shutdown_with_workers_stops_everything() {
    let mut hub = Hub::start();
    let mut workers = hub.workers(2, 1);
    // ZCLUSTER_HUB stands in for --hub.
    let output = zcluster()
        .args(["status", "--json"])
        .env("ZCLUSTER_HUB", &hub.file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let status: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["engines"].as_array().unwrap().len(), 2);

    zcluster()
        .args(["shutdown", "--workers"])
        .env("ZCLUSTER_HUB", &hub.file)
        .timeout(FAIL_AFTER)
        .assert()
        .success();
    let status = hub.proc.wait();
    assert_eq!(status.code(), Some(0), "hub log:\n{}", hub.proc.log());
    for worker in &mut workers {
        let pid = worker.pid();
        assert_eq!(worker.wait().code(), Some(0), "{}", worker.log());
        assert!(!alive(pid));
    }
    assert!(!alive(hub.proc.pid()));
}

/// A hub killed with SIGKILL and started again on the same connection file
/// binds the same ports with the same key; its workers, which kept
/// reconnecting, register again by themselves and serve the next map.
#[test]
fn workers_register_again_with_a_restarted_hub() {
    let mut hub = Hub::start();
    let _workers = hub.workers(2, 1);
    let before = fs::read_to_string(&hub.file).unwrap();
    kill(Pid::from_raw(hub.proc.pid()), Signal::SIGKILL).unwrap();
    hub.proc.wait();
    hub.proc = Hub::spawn_hub(hub.dir.path(), &hub.file, &hub.store, &[]);
    hub.wait_ready();
    assert_eq!(
        fs::read_to_string(&hub.file).unwrap(),
        before,
        "the restarted hub keeps its ports and key"
    );
    wait_until("both workers to register again", || {
        hub.engines().len() == 2
    });
    let verbose = hub.cmd("status").arg("--verbose").output().unwrap();
    assert!(verbose.status.success());
    let (inputs, lines) = numbered_inputs(hub.dir(), "again", "x", 20);
    let mut map = hub.spawn_map("again", &[inputs.to_str().unwrap(), "--", "echo"]);
    assert!(map.wait().success(), "{}", map.stderr());
    assert_eq!(map.stdout(), lines_text(&lines));
}

/// Lines of the hub's `log` warning that it dropped a bad message from
/// `peer` (warned once per peer, then logged at debug level).
fn warnings(log: &str, peer: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("WARN") && l.contains(peer) && l.contains("bad message"))
        .count()
}

/// Only key holders get in: unsigned and forged kills and shutdowns are
/// dropped (and logged once per peer), a signed call is answered once and
/// its replay is not; the hub and its worker carry on.
#[test]
fn unsigned_forged_and_replayed_calls_are_dropped() {
    let hub = Hub::start();
    let mut workers = hub.workers(1, 1);
    let info: ConnectionInfo =
        serde_json::from_str(&fs::read_to_string(&hub.file).unwrap()).unwrap();
    let ctx = zmq::Context::new();
    let intruder = raw_dealer(&ctx, &info.clients, &info.curve, b"intruder");
    let forger = raw_dealer(&ctx, &info.clients, &info.curve, b"forger");
    let other_key = Signer::new(
        Key::from_bytes(b"a key of some other cluster"),
        Channel::ClientToHub,
    );
    let kill = ClientCall::Kill {
        engines: None,
        restart: false,
    };
    let shutdown = ClientCall::Shutdown { workers: true };
    for request in 1..=50 {
        intruder
            .send_multipart(call_frames(None, request, &kill), 0)
            .unwrap();
        forger
            .send_multipart(call_frames(Some(&other_key), request, &shutdown), 0)
            .unwrap();
    }
    assert!(!answered(&intruder, 50), "an unsigned call got an answer");
    assert!(!answered(&forger, 50), "a forged call got an answer");

    let member = raw_dealer(&ctx, &info.clients, &info.curve, b"member");
    let mut signer = Signer::new(info.signing_key().unwrap(), Channel::ClientToHub);
    learn_epoch(&member, &mut signer);
    let ping = call_frames(Some(&signer), 1, &ClientCall::Ping);
    member.send_multipart(&ping, 0).unwrap();
    assert!(answered(&member, 1), "a signed ping is answered");
    member.send_multipart(&ping, 0).unwrap();
    assert!(!answered(&member, 1), "a replayed ping is dropped");
    member
        .send_multipart(call_frames(Some(&signer), 2, &ClientCall::Ping), 0)
        .unwrap();
    assert!(answered(&member, 2), "the next signed call is answered");

    assert!(workers[0].running(), "no refused kill reached the worker");
    assert_eq!(hub.engines().len(), 1);
    let log = hub.proc.log();
    assert_eq!(
        warnings(&log, "intruder"),
        1,
        "logged once per peer:\n{log}"
    );
    assert_eq!(warnings(&log, "forger"), 1, "logged once per peer:\n{log}");
    assert_eq!(warnings(&log, "member"), 1, "the replay is logged:\n{log}");
    assert!(log.contains("unsigned message"), "{log}");
    assert!(log.contains("bad signature"), "{log}");
    assert!(log.contains("replayed message"), "{log}");
}

/// The ids of `job`'s tasks running on an engine or queued, in a
/// `status --json --verbose`.
fn unfinished_tasks(status: &Value, job: u64) -> BTreeSet<u64> {
    let running = status["engines"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| e["running_tasks"].as_array().cloned().unwrap_or_default())
        .filter(|task| task[0] == job)
        .map(|task| task[1].as_u64().expect("a task id"));
    let queued = status["jobs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|j| j["id"] == job)
        .flat_map(|j| j["queued_tasks"].as_array().cloned().unwrap_or_default())
        .map(|id| id.as_u64().expect("a task id"));
    running.chain(queued).collect()
}

/// A successful result of task `id` (input `id + 1`: one input per task)
/// whose command "printed" `FORGED\n`, as a fake engine would claim it.
fn forged_result(id: u64) -> ClusterResult {
    let outcome = ExecOutcome {
        exit: ExitKind::Exited(0),
        stdout: b"FORGED\n".to_vec(),
        stderr: Vec::new(),
        started: SystemTime::now(),
        elapsed: Duration::from_millis(1),
    };
    ClusterResult {
        id,
        status: ResultStatus::Ok,
        payload: encode_value(&vec![(id + 1, outcome)], "outcomes").unwrap(),
        request_metadata: Default::default(),
        metadata: ResultMetadata {
            host: "fake-host".into(),
            pid: 4242,
            worker: "engine-fake".into(),
            started: SystemTime::now(),
            elapsed: Duration::from_millis(1),
        },
        exception: None,
    }
}

/// Only key holders can act as engines. Two fake engines, one unsigned and
/// one signing with another cluster's key, each register (64 slots,
/// claiming to hold every task of a running map) and then finish each of
/// those tasks with forged output, as single results and as a batch; and a
/// genuine registration, correctly signed, is played again from another
/// peer after its engine left. Any of these accepted would let a stranger
/// take tasks it never runs (a phantom engine in `status`, tasks run twice)
/// or put its own output in the job's results. So the hub must answer none
/// of them, list only the real worker and warn once per peer, and the map
/// must get each input's genuine output once, every task run once by the
/// real worker.
#[test]
fn fake_engines_can_neither_register_nor_finish_tasks() {
    const TASKS: usize = 4;
    let hub = Hub::start();
    let info = ConnectionInfo::read(&hub.file).unwrap();
    let ctx = zmq::Context::new();
    let register = |name: &str, running: Vec<(u64, u64)>| EngineMessage::Register {
        identity: name.into(),
        host: "fake-host".into(),
        pid: 4242,
        slots: 64,
        handlers: Vec::new(),
        running,
        origin: None,
        resources: None,
    };

    // A key holder registers and leaves; its registration, captured and
    // played again from elsewhere, must not bring it back.
    let genuine = raw_dealer(&ctx, &info.engines, &info.curve, b"genuine");
    let mut signer = Signer::new(info.signing_key().unwrap(), Channel::EngineToHub);
    learn_epoch(&genuine, &mut signer);
    let captured = signed_frames(Some(&signer), &control(0), &register("genuine", vec![]));
    genuine.send_multipart(&captured, 0).unwrap();
    assert!(answered(&genuine, 0), "a signed registration is answered");
    let leave = signed_frames(Some(&signer), &control(0), &EngineMessage::Unregister);
    genuine.send_multipart(&leave, 0).unwrap();
    wait_until("the genuine engine to leave", || hub.engines().is_empty());
    drop(genuine);
    let replayer = raw_dealer(&ctx, &info.engines, &info.curve, b"replayer");
    replayer.send_multipart(&captured, 0).unwrap();
    assert!(
        !answered(&replayer, 0),
        "a replayed registration is answered"
    );

    let workers = hub.workers(1, 2);
    let (inputs, lines) = numbered_inputs(hub.dir(), "in.txt", "e", TASKS);
    let mut map = hub.spawn_slow_map("map", &inputs, "1");
    // Every task sent, none finished: the fakes claim them all.
    let mut ids = BTreeSet::new();
    wait_until("every task running or queued", || {
        if let Some(job) = map.job() {
            ids = unfinished_tasks(&hub.status_with(&["--verbose"]), job);
        }
        ids.len() == TASKS
    });
    let job = map.job().unwrap();
    let other_key = Signer::new(
        Key::from_bytes(b"a key of some other cluster"),
        Channel::EngineToHub,
    );
    let fakes = [
        ("fake-unsigned", None),
        ("fake-other-key", Some(&other_key)),
    ];
    for (name, signer) in fakes {
        let fake = raw_dealer(&ctx, &info.engines, &info.curve, name.as_bytes());
        let claims = ids.iter().map(|&id| (job, id)).collect();
        let mut messages = vec![signed_frames(signer, &control(0), &register(name, claims))];
        for &id in &ids {
            let result = forged_result(id);
            messages.push(signed_frames(
                signer,
                &Header::result(job, &result),
                &result,
            ));
        }
        let batch: Vec<ResultItem> = ids
            .iter()
            .map(|&id| {
                let body = encode_value(&forged_result(id), "result").unwrap();
                ResultItem {
                    job,
                    id,
                    status: ResultStatus::Ok,
                    error: None,
                    body: body.into(),
                }
            })
            .collect();
        let header = Header {
            kind: MessageKind::TaskResults,
            job: 0,
            id: *ids.first().unwrap(),
        };
        messages.push(signed_frames(signer, &header, &batch));
        for frames in &messages {
            fake.send_multipart(frames, 0).unwrap();
        }
        assert!(!answered(&fake, 0), "{name} was answered");
        let engines = hub.engines();
        assert_eq!(engines.len(), 1, "{name} is listed: {engines:?}");
    }

    assert!(map.wait().success(), "{}", map.stderr());
    assert_eq!(map.stdout(), lines_text(&lines), "the genuine output, once");
    let pid = workers[0].pid();
    let records = assert_each_task_once(&hub, job, TASKS);
    for (record, line) in records.iter().zip(&lines) {
        assert_eq!(record["stdout"], format!("{line}\n"), "{record}");
        assert_eq!(record["pid"], pid, "run by the real worker: {record}");
        assert_eq!(record["attempts"], 1, "run once: {record}");
    }
    let engines = hub.engines();
    assert_eq!(engines.len(), 1, "{engines:?}");
    assert_eq!(engines[0]["pid"], pid, "{engines:?}");
    assert_eq!(field_u64(&engines[0], "completed"), TASKS as u64);
    let log = hub.proc.log();
    assert!(!log.contains("declared dead"), "{log}");
    assert_eq!(warnings(&log, "fake-unsigned"), 1, "once per peer:\n{log}");
    assert_eq!(warnings(&log, "fake-other-key"), 1, "once per peer:\n{log}");
    assert_eq!(
        warnings(&log, "replayer"),
        1,
        "the replay is logged:\n{log}"
    );
    assert_eq!(warnings(&log, "genuine"), 0, "{log}");
    assert!(log.contains("unsigned message"), "{log}");
    assert!(log.contains("bad signature"), "{log}");
    assert!(log.contains("replayed message"), "{log}");
}

/// The job's records in the store, after checking it holds each of its
/// `count` tasks exactly once.
fn assert_each_task_once(hub: &Hub, job: u64, count: usize) -> Vec<Value> {
    let (_, records) = hub.results(job);
    let mut seqs: Vec<u64> = records.iter().map(|r| field_u64(r, "seq")).collect();
    assert_eq!(seqs.len(), count, "one record per input: {records:?}");
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), count, "each input recorded once: {records:?}");
    records
}

/// The hub killed with SIGKILL mid-job and started again: the job carries on
/// from the store, the waiting map reattaches by itself (sending again what
/// the hub never recorded, fetching what finished meanwhile), and it gets
/// every result exactly once, in order.
#[test]
fn a_waiting_map_carries_on_across_a_hub_restart() {
    let mut hub = Hub::start();
    let _workers = hub.workers(2, 2);
    let (inputs, lines) = numbered_inputs(hub.dir(), "survive", "s", 80);
    let mut args = vec![inputs.to_str().unwrap().to_string()];
    args.extend(slow_echo("0.05"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut map = hub.spawn_map("survive", &args);
    wait_until("a quarter of the results", || {
        map.stdout().lines().count() >= 20
    });
    let job = map.job().expect("the map printed its job");
    kill(Pid::from_raw(hub.proc.pid()), Signal::SIGKILL).unwrap();
    hub.proc.wait();
    hub.proc = Hub::spawn_hub(hub.dir.path(), &hub.file, &hub.store, &[]);
    hub.wait_ready();
    assert!(
        map.wait().success(),
        "{}\nhub:\n{}",
        map.stderr(),
        hub.proc.log()
    );
    assert_eq!(
        map.stdout(),
        lines_text(&lines),
        "every result once, in order"
    );
    let log = hub.proc.log();
    assert!(log.contains("carried on 1 unfinished job"), "{log}");
    let records = assert_each_task_once(&hub, job, 80);
    assert!(records.iter().all(|r| r["status"] == "ok"), "{records:?}");
}

/// A map killed mid-job leaves its job running; `map --attach JOB` with the
/// same inputs and command prints every result once, in order, from the
/// store and from the tasks still to run, and sends nothing twice.
#[test]
fn map_attach_carries_on_a_job_whose_client_died() {
    let hub = Hub::start();
    let _workers = hub.workers(2, 2);
    let (inputs, lines) = numbered_inputs(hub.dir(), "orphan", "o", 60);
    let mut args = vec![inputs.to_str().unwrap().to_string()];
    args.extend(slow_echo("0.05"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut first = hub.spawn_map("orphan", &args);
    wait_until("some results", || first.stdout().lines().count() >= 10);
    let job = first.job().expect("the map printed its job");
    kill(Pid::from_raw(first.guard.pid()), Signal::SIGKILL).unwrap();
    first.wait();

    // Another command is refused, not mixed into the job.
    let mut wrong = vec!["--attach".to_string(), job.to_string()];
    wrong.push(inputs.to_str().unwrap().to_string());
    wrong.extend(slow_echo("0.01"));
    let wrong: Vec<&str> = wrong.iter().map(String::as_str).collect();
    let mut refused = hub.spawn_map("wrong", &wrong);
    assert!(!refused.wait().success());
    assert!(refused.stderr().contains("differs"), "{}", refused.stderr());

    let mut attach = vec!["--attach".to_string(), job.to_string()];
    attach.extend(args.iter().map(|a| a.to_string()));
    let attach: Vec<&str> = attach.iter().map(String::as_str).collect();
    let mut second = hub.spawn_map("attached", &attach);
    assert!(second.wait().success(), "{}", second.stderr());
    assert!(
        second.stderr().contains(&format!("attached to job {job}")),
        "{}",
        second.stderr()
    );
    assert_eq!(second.stdout(), lines_text(&lines));
    let records = assert_each_task_once(&hub, job, 60);
    assert!(records.iter().all(|r| r["status"] == "ok"), "{records:?}");
    assert_eq!(
        field_u64(&hub.job(job).expect("job in status"), "total"),
        60,
        "the attached map closed the job"
    );
}

/// The same refusal while the inputs trickle in (a FIFO written a line
/// every 100 ms): the job's recorded results are ready long before the
/// inputs end, and still none is printed before the map knows the inputs
/// are too short.
#[test]
fn a_refused_attach_prints_nothing_while_its_inputs_trickle_in() {
    let hub = Hub::start();
    let _workers = hub.workers(1, 2);
    let (inputs, _) = numbered_inputs(hub.dir(), "all", "a", 10);
    let mut args = vec![inputs.to_str().unwrap().to_string()];
    args.extend(slow_echo("0.01"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = hub
        .cmd("map")
        .args(&args)
        .timeout(FAIL_AFTER)
        .output()
        .unwrap();
    assert!(output.status.success());
    let job = job_of(&output);

    let fifo = hub.dir().join("slow-inputs");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut file = OpenOptions::new().write(true).open(&fifo).unwrap();
            for n in 1..=4 {
                writeln!(file, "a{n}").unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let mut short = vec![fifo.to_str().unwrap().to_string()];
    short.extend(slow_echo("0.01"));
    let short: Vec<&str> = short.iter().map(String::as_str).collect();
    let (status, refused) = attach_map(&hub, "trickle", job, &short);
    writer.join().unwrap();
    let said = refused.stderr();
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(
        said.contains("the inputs end after 4 tasks, but job") && said.contains("has 10 recorded"),
        "{said}"
    );
    assert_eq!(refused.stdout(), "", "a refused attach printed results");
}

/// `zcluster map --hub H --attach JOB ARGS`, run to the end.
fn attach_map(hub: &Hub, name: &str, job: u64, args: &[&str]) -> (ExitStatus, MapRun) {
    let mut attach = vec!["--attach".to_string(), job.to_string()];
    attach.extend(args.iter().map(|a| a.to_string()));
    let attach: Vec<&str> = attach.iter().map(String::as_str).collect();
    let mut map = hub.spawn_map(name, &attach);
    (map.wait(), map)
}

/// `--attach` with fewer inputs than the job recorded is an error naming
/// both counts, before it prints anything: printing a third of the job
/// and exiting 0 passed for the whole while the rest ran on for nobody.
/// With `--attach-any-length` it prints what its inputs give; and the job,
/// not closed by the refused attach, is carried on whole afterwards.
#[test]
fn map_attach_with_fewer_inputs_is_an_error_naming_the_counts() {
    let hub = Hub::start();
    let _workers = hub.workers(2, 2);
    let (inputs, lines) = numbered_inputs(hub.dir(), "all", "a", 60);
    let (prefix, first_lines) = numbered_inputs(hub.dir(), "prefix", "a", 20);
    let mut first = vec![inputs.to_str().unwrap().to_string()];
    first.extend(slow_echo("0.05"));
    let first: Vec<&str> = first.iter().map(String::as_str).collect();
    let mut map = hub.spawn_map("first", &first);
    wait_until("some results", || map.stdout().lines().count() >= 5);
    let job = map.job().expect("the map printed its job");
    kill(Pid::from_raw(map.guard.pid()), Signal::SIGKILL).unwrap();
    map.wait();

    let mut short = vec![prefix.to_str().unwrap().to_string()];
    short.extend(slow_echo("0.05"));
    let short: Vec<&str> = short.iter().map(String::as_str).collect();
    let (status, refused) = attach_map(&hub, "short", job, &short);
    let said = refused.stderr();
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(
        said.contains("the inputs end after 20 tasks, but job")
            && said.contains("has 60 recorded")
            && said.contains("--attach-any-length"),
        "{said}"
    );
    assert_eq!(refused.stdout(), "", "a refused attach printed results");

    let mut short_any = vec!["--attach-any-length".to_string()];
    short_any.extend(short.iter().map(|a| a.to_string()));
    let short_any: Vec<&str> = short_any.iter().map(String::as_str).collect();
    let (status, partial) = attach_map(&hub, "short-any", job, &short_any);
    assert!(status.success(), "{}", partial.stderr());
    assert_eq!(partial.stdout(), lines_text(&first_lines));

    let (status, whole) = attach_map(&hub, "whole", job, &first);
    assert!(status.success(), "{}", whole.stderr());
    assert_eq!(whole.stdout(), lines_text(&lines));
    assert_each_task_once(&hub, job, 60);
}

fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// `--attach` with more inputs than the job of a map that had read all of
/// its own (and died) is an error naming the count, and adds nothing to
/// the job; with `--attach-any-length` the rest become new tasks of the
/// job. A job whose map died while still reading its inputs takes the rest
/// without a flag: that is carrying it on. A finished job takes no more.
#[test]
fn map_attach_with_more_inputs_than_the_job_is_an_error() {
    let hub = Hub::start();
    let _workers = hub.workers(1, 2);
    let (inputs, lines) = numbered_inputs(hub.dir(), "all", "m", 50);
    let (prefix, _) = numbered_inputs(hub.dir(), "prefix", "m", 30);
    let with_inputs = |inputs: &Path, extra: &[&str], seconds: &str| -> Vec<String> {
        let mut args = vec![inputs.to_str().unwrap().to_string()];
        args.extend(extra.iter().map(|a| a.to_string()));
        args.extend(slow_echo(seconds));
        args
    };

    // 30 tasks of 0.3 s on 2 slots: the job runs on for seconds after its
    // map, which had read all 30 inputs, is killed.
    let first = with_inputs(&prefix, &[], "0.2");
    let mut map = hub.spawn_map("first", &refs(&first));
    wait_until("some results", || map.stdout().lines().count() >= 2);
    let job = map.job().expect("the map printed its job");
    kill(Pid::from_raw(map.guard.pid()), Signal::SIGKILL).unwrap();
    map.wait();
    let longer = with_inputs(&inputs, &[], "0.2");
    let (status, refused) = attach_map(&hub, "longer", job, &refs(&longer));
    let said = refused.stderr();
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!("the inputs go on past the 30 tasks of job {job}"))
            && said.contains("--attach-any-length"),
        "{said}"
    );
    assert_eq!(refused.stdout(), "", "a refused attach printed results");
    let longer_any = with_inputs(&inputs, &["--attach-any-length"], "0.2");
    let (status, extended) = attach_map(&hub, "longer-any", job, &refs(&longer_any));
    assert!(status.success(), "{}", extended.stderr());
    assert_eq!(extended.stdout(), lines_text(&lines));
    assert_each_task_once(&hub, job, 50);

    // Finished: no new tasks, flag or not.
    let (status, finished) = attach_map(&hub, "finished", job, &refs(&longer_any));
    let said = finished.stderr();
    assert!(status.success(), "the same 50 inputs: {said}");
    let (more, _) = numbered_inputs(hub.dir(), "more", "m", 60);
    let more = with_inputs(&more, &["--attach-any-length"], "0.2");
    let (status, refused) = attach_map(&hub, "more", job, &refs(&more));
    let said = refused.stderr();
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(
        said.contains("has finished and takes no new tasks"),
        "{said}"
    );
    assert_each_task_once(&hub, job, 50);

    // A map killed while it still had inputs to read (a window of 4 keeps
    // it from reading ahead): attaching with all of them carries it on.
    let slow = with_inputs(&inputs, &["--window=4"], "0.05");
    let mut map = hub.spawn_map("unfinished", &refs(&slow));
    wait_until("some results", || map.stdout().lines().count() >= 3);
    let job = map.job().expect("the map printed its job");
    kill(Pid::from_raw(map.guard.pid()), Signal::SIGKILL).unwrap();
    map.wait();
    let (status, carried) = attach_map(&hub, "carried", job, &refs(&slow));
    assert!(status.success(), "{}", carried.stderr());
    assert_eq!(carried.stdout(), lines_text(&lines));
    assert_each_task_once(&hub, job, 50);
}

/// Maps `sh -c script` over `inputs`, one of them `poison`: the map exits
/// 1 having printed the other inputs in order, each task ran once, and the
/// poison task failed after `deaths` engines died.
fn poison_map(hub: &Hub, inputs: &[&str], script: &str, deaths: u32) {
    let file = input_file(hub.dir(), "poison", inputs);
    let mut map = hub.spawn_map(
        "poison",
        &[file.to_str().unwrap(), "--", "sh", "-c", script, "{}"],
    );
    let status = map.wait();
    assert_eq!(status.code(), Some(1), "{}", map.stderr());
    let others: String = inputs
        .iter()
        .filter(|i| **i != "poison")
        .map(|i| format!("{i}\n"))
        .collect();
    assert_eq!(map.stdout(), others);
    let job = map.job().expect("job id");
    let records = assert_each_task_once(hub, job, inputs.len());
    let poison = records
        .iter()
        .find(|r| r["input"] == "poison")
        .expect("the poison task");
    assert_eq!(poison["status"], "failed", "{poison}");
    assert!(
        poison["error"]
            .as_str()
            .is_some_and(|e| e.contains(&format!("{deaths} engines died"))),
        "{poison}"
    );
}

/// An input whose task kills the worker running it is failed, with that
/// reason, after it has taken down `--poison-limit` workers; the rest of the
/// job completes on the workers left.
#[test]
fn a_poison_task_is_failed_after_killing_the_limit_of_workers() {
    let hub = Hub::start_with(&["--poison-limit=2"]);
    let _workers = hub.workers(3, 1);
    // The shell's parent is the worker process.
    let script = "if [ \"$0\" = poison ]; then kill -9 $PPID; sleep 5; fi; echo \"$0\"";
    poison_map(&hub, &["a", "b", "poison", "c", "d"], script, 2);
    wait_until("the survivor alone registered", || hub.engines().len() == 1);
}

/// Processes whose command line contains `needle`.
fn processes_with(needle: &str) -> usize {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| fs::read(entry.ok()?.path().join("cmdline")).ok())
        .filter(|cmdline| {
            String::from_utf8_lossy(cmdline)
                .replace('\0', " ")
                .contains(needle)
        })
        .count()
}

/// A task that hangs on one worker (alive, heartbeating) does not hold the
/// job: once nothing is queued and it has run past the straggler rule, a
/// second copy runs on an idle worker, its result wins, and the hanging
/// copy is killed.
#[test]
fn a_straggler_is_run_again_elsewhere_and_the_loser_is_killed() {
    let hub = Hub::start();
    let _workers = hub.workers(2, 1);
    let (inputs, lines) = numbered_inputs(hub.dir(), "straggle", "t", 12);
    let lock = hub.dir().join("first-copy-of-t6");
    // The first copy of t6 hangs; any later copy finds the lock and is quick.
    let script = format!(
        "if [ \"$0\" = t6 ] && mkdir {} 2>/dev/null; then sleep 600.25; fi; sleep 0.05; echo \"$0\"",
        lock.display()
    );
    let mut map = hub.spawn_map(
        "straggle",
        &[inputs.to_str().unwrap(), "--", "sh", "-c", &script, "{}"],
    );
    assert!(map.wait().success(), "{}", map.stderr());
    assert_eq!(map.stdout(), lines_text(&lines));
    assert!(lock.exists(), "the first copy did hang");
    wait_until("the hanging copy to be killed", || {
        processes_with("sleep 600.25") == 0
    });
    wait_until("both slots free again", || {
        hub.engines().iter().all(|e| e["running"] == 0)
    });
}

/// A straggler's second copy lost with its worker is replaced: the task is
/// copied again onto another idle worker, rather than left to the copy
/// that hangs for ever. (Once copied, a task used to be marked so for
/// good, lost copy or not.)
#[test]
fn a_straggler_copy_lost_with_its_worker_is_copied_again() {
    let hub = Hub::start();
    let _workers = hub.workers(3, 1);
    let (inputs, lines) = numbered_inputs(hub.dir(), "recopy", "t", 12);
    let hang = hub.dir().join("first-copy-of-t6");
    let die = hub.dir().join("second-copy-of-t6");
    // The first copy of t6 hangs, the second kills its worker, a third is
    // quick.
    let script = format!(
        "if [ \"$0\" = t6 ]; then \
           if mkdir {hang} 2>/dev/null; then sleep 600.5; \
           elif mkdir {die} 2>/dev/null; then kill -9 $PPID; sleep 5; fi; \
         fi; sleep 0.05; echo \"$0\"",
        hang = hang.display(),
        die = die.display()
    );
    let mut map = hub.spawn_map(
        "recopy",
        &[inputs.to_str().unwrap(), "--", "sh", "-c", &script, "{}"],
    );
    assert!(map.wait().success(), "{}", map.stderr());
    assert_eq!(map.stdout(), lines_text(&lines));
    assert!(hang.exists() && die.exists(), "both earlier copies ran");
    assert_eq!(hub.engines().len(), 2, "the second copy's worker died");
    wait_until("the hanging copy to be killed", || {
        processes_with("sleep 600.5") == 0
    });
}

/// A poison input that takes its time to kill straggles, so it is copied;
/// each engine it kills still counts, copy standing or not, and once it
/// has taken down `--poison-limit` engines it is failed and its last copy
/// cancelled. (Deaths with a copy standing used to count for nothing, and
/// it went on from engine to engine.)
#[test]
fn a_slow_poison_input_is_failed_even_while_copies_of_it_run() {
    let hub = Hub::start_with(&["--poison-limit=2"]);
    let mut workers = hub.workers(4, 1);
    let script =
        "if [ \"$0\" = poison ]; then sleep 3; kill -9 $PPID; sleep 5; fi; sleep 0.05; echo \"$0\"";
    poison_map(&hub, &["a", "b", "c", "d", "e", "f", "poison"], script, 2);
    let alive = workers
        .iter_mut()
        .map(|w| w.running())
        .filter(|&up| up)
        .count();
    assert_eq!(alive, 2, "exactly the limit of workers died");
}

/// A worker that loses the hub for a while (here the hub is stopped)
/// reconnects under a new identity and registers again, naming the task it
/// is running: its old record is retired without a death, the task is left
/// to it, and it runs once. (The old record used to be declared dead later,
/// counting a death against the task and running it again.)
#[test]
fn a_worker_that_reconnects_keeps_its_task_and_nothing_runs_twice() {
    let hub = Hub::start();
    let worker = hub.workers(1, 1);
    let inputs = input_file(hub.dir(), "long", &["2.5"]);
    let mut map = hub.spawn_map("long", &[inputs.to_str().unwrap(), "--", "sleep"]);
    wait_until("the task to start", || {
        hub.engines().iter().any(|e| e["running"] == 1)
    });
    let pid = Pid::from_raw(hub.proc.pid());
    kill(pid, Signal::SIGSTOP).unwrap();
    std::thread::sleep(Duration::from_millis(8 * HEARTBEAT_MS));
    kill(pid, Signal::SIGCONT).unwrap();
    assert!(map.wait().success(), "{}", map.stderr());
    let job = map.job().expect("job id");
    let records = assert_each_task_once(&hub, job, 1);
    assert_eq!(field_u64(&records[0], "attempts"), 1, "{}", records[0]);
    let log = worker[0].log();
    assert!(
        log.contains("the hub stopped answering; reconnecting"),
        "the worker did reconnect: {}",
        tail(&log, 30)
    );
    let log = hub.proc.log();
    assert!(!log.contains("declared dead"), "{}", tail(&log, 30));
    assert_eq!(hub.engines().len(), 1, "the old record is gone");
}

/// A worker that stops answering without closing its connection (SIGSTOP:
/// no FIN, as when its machine vanishes) is declared dead after its missed
/// heartbeats; its tasks run elsewhere and every input yields one result.
/// When it wakes up it registers again and gets work.
#[test]
fn a_frozen_worker_is_declared_dead_and_comes_back() {
    let hub = Hub::start();
    let mut workers = hub.workers(2, 1);
    let (inputs, lines) = numbered_inputs(hub.dir(), "frozen", "f", 40);
    let mut args = vec![inputs.to_str().unwrap().to_string()];
    args.extend(slow_echo("0.05"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut map = hub.spawn_map("frozen", &args);
    wait_until("some results", || map.stdout().lines().count() >= 5);
    let frozen = Pid::from_raw(workers[0].pid());
    kill(frozen, Signal::SIGSTOP).unwrap();
    assert!(map.wait().success(), "{}", map.stderr());
    assert_eq!(map.stdout(), lines_text(&lines));
    let job = map.job().expect("job id");
    assert_each_task_once(&hub, job, 40);
    assert_eq!(
        hub.engines().len(),
        1,
        "the frozen worker was declared dead"
    );
    kill(frozen, Signal::SIGCONT).unwrap();
    wait_until("the woken worker to register again", || {
        hub.engines().len() == 2
    });
    assert!(workers[0].running());
    let (inputs, lines) = numbered_inputs(hub.dir(), "after", "a", 10);
    let mut map = hub.spawn_map("after", &[inputs.to_str().unwrap(), "--", "echo"]);
    assert!(map.wait().success(), "{}", map.stderr());
    assert_eq!(map.stdout(), lines_text(&lines));
}

/// `ping` and `kill` through the hub say which engines never answered and
/// exit 1 for them, instead of counting only those that did: a frozen
/// worker (SIGSTOP, still registered) leaves them short of an answer.
#[test]
fn ping_and_kill_through_the_hub_fail_naming_an_engine_that_never_answers() {
    let hub = Hub::start();
    let mut workers = hub.workers(2, 1);
    let frozen_pid = workers[0].pid();
    let frozen = hub.engine_of(frozen_pid);
    let awake = hub.engine_of(workers[1].pid());
    kill(Pid::from_raw(frozen_pid), Signal::SIGSTOP).unwrap();
    let ping = hub.cmd("ping").timeout(FAIL_AFTER).output().unwrap();
    let stderr = String::from_utf8_lossy(&ping.stderr);
    assert_eq!(ping.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("engine(s) {frozen} did not answer")),
        "{stderr}"
    );
    let table = String::from_utf8_lossy(&ping.stdout);
    assert_eq!(
        table.lines().count(),
        2,
        "a header and the awake one: {table}"
    );

    // Meanwhile it was declared dead. Awake, it registers again; frozen
    // again, it never acknowledges a kill.
    kill(Pid::from_raw(frozen_pid), Signal::SIGCONT).unwrap();
    wait_until("the woken worker to register again", || {
        hub.engines().len() == 2
    });
    let frozen = hub.engine_of(frozen_pid);
    kill(Pid::from_raw(frozen_pid), Signal::SIGSTOP).unwrap();
    let kill_all = hub.cmd("kill").timeout(FAIL_AFTER).output().unwrap();
    let stderr = String::from_utf8_lossy(&kill_all.stderr);
    assert_eq!(kill_all.status.code(), Some(1), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&kill_all.stdout),
        format!("{awake}\n")
    );
    assert!(
        stderr.contains(&format!("engine(s) {frozen} did not acknowledge it")),
        "{stderr}"
    );
    assert_eq!(workers[1].wait().code(), Some(0), "{}", workers[1].log());
    kill(Pid::from_raw(frozen_pid), Signal::SIGCONT).unwrap();
}

/// Nothing done is redone across a hub restart: the worker keeps the tasks
/// it was running (it says so when it registers again) and sends again the
/// results the dead hub never recorded, so every task ran exactly once.
#[test]
fn a_hub_restart_reruns_nothing_a_worker_finished_or_holds() {
    let mut hub = Hub::start();
    let _workers = hub.workers(1, 2);
    let (inputs, lines) = numbered_inputs(hub.dir(), "once", "n", 24);
    let mut args = vec![inputs.to_str().unwrap().to_string()];
    args.extend(slow_echo("0.1"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut map = hub.spawn_map("once", &args);
    wait_until("two results", || map.stdout().lines().count() >= 2);
    let job = map.job().expect("job id");
    kill(Pid::from_raw(hub.proc.pid()), Signal::SIGKILL).unwrap();
    hub.proc.wait();
    hub.proc = Hub::spawn_hub(hub.dir.path(), &hub.file, &hub.store, &[]);
    hub.wait_ready();
    assert!(map.wait().success(), "{}", map.stderr());
    assert_eq!(map.stdout(), lines_text(&lines));
    let records = assert_each_task_once(&hub, job, 24);
    let rerun: Vec<&Value> = records.iter().filter(|r| r["attempts"] != 1).collect();
    assert!(rerun.is_empty(), "tasks run twice: {rerun:?}");
}

/// The notification socket publishes engine (un)registrations, signed like
/// every hub message, to subscribers of everything.
#[test]
fn registrations_are_published_signed() {
    let hub = Hub::start();
    let info: ConnectionInfo =
        serde_json::from_str(&fs::read_to_string(&hub.file).unwrap()).unwrap();
    let ctx = zmq::Context::new();
    let sub = ctx.socket(zmq::SUB).unwrap();
    sub.set_linger(0).unwrap();
    sub.set_rcvtimeo(5_000).unwrap();
    sub.set_subscribe(b"").unwrap();
    curve::client(&sub, &info.curve).unwrap();
    sub.connect(&info.notifications).unwrap();
    let mut verifier = Verifier::new(info.signing_key().unwrap(), Channel::Notifications);
    // Each notification, checked against the cluster's key first.
    let mut next = |what: &str| -> Notification {
        let frames = sub.recv_multipart(0).expect(what);
        let [frame] = &frames[..] else {
            panic!("one frame, got {}", frames.len());
        };
        let parts = Parts::of(frame).expect("a zcluster message");
        verifier
            .verify(parts.signature, PROTOCOL, parts.header, parts.body)
            .expect("signed with the cluster's key");
        decode_value(parts.body, "notification").unwrap()
    };
    // The hub says when it has taken the subscription in (at its next
    // heartbeat): from then on nothing is missed.
    let subscribed = next("the subscription's welcome");
    assert!(
        matches!(subscribed, Notification::Subscribed { .. }),
        "{subscribed:?}"
    );
    let mut workers = hub.workers(1, 1);
    let notification = next("a notification");
    let pid = workers[0].pid();
    assert!(
        matches!(notification, Notification::Registered { pid: p, .. } if p as i32 == pid),
        "{notification:?}"
    );
    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    workers[0].wait();
    // Leaving cleanly is a retirement (a death is `EngineDead`).
    let notification = next("a second notification");
    assert!(
        matches!(&notification, Notification::EngineRetired { reason, .. } if reason == "left"),
        "{notification:?}"
    );
}

/// Resubmitting failed tasks into a job that is still running does not use
/// up its client's credit: the map goes on sending, and no task of it is
/// refused.
#[test]
fn resubmit_into_a_running_job_leaves_the_client_its_credit() {
    let hub = Hub::start_with(&["--credit=4"]);
    let _workers = hub.workers(1, 2);
    let mut inputs = vec!["f1".to_string(), "f2".into(), "f3".into()];
    inputs.extend((4..=16).map(|i| format!("s{i}")));
    let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let file = input_file(hub.dir(), "credit.txt", &refs);
    let results = hub.dir().join("credit.jsonl");
    let script = "case $0 in f*) exit 1;; esac; sleep 0.2; echo \"$0\"";
    let mut map = hub.spawn_map(
        "credit",
        &[
            file.to_str().unwrap(),
            "--results",
            results.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            script,
            "{}",
        ],
    );
    wait_until("the map's job", || map.job().is_some());
    let job = map.job().unwrap();
    wait_until("the three failures", || {
        hub.job(job).is_some_and(|j| field_u64(&j, "failed") >= 3)
    });
    hub.cmd("resubmit").arg(job.to_string()).assert().success();
    assert_eq!(map.wait().code(), Some(1), "{}", map.stderr());
    let expected: String = (4..=16).map(|i| format!("s{i}\n")).collect();
    assert_eq!(map.stdout(), expected);
    let records = fs::read_to_string(&results).unwrap();
    assert!(!records.contains("credit"), "a task was refused: {records}");
}

/// `--retries` runs a failed task again on another engine when there is
/// one: each input fails on the first worker that runs it and succeeds only
/// on a different one.
#[test]
fn a_retry_goes_to_another_engine() {
    let hub = Hub::start();
    let _workers = hub.workers(2, 1);
    let marks: Vec<String> = (0..6)
        .map(|i| hub.dir().join(format!("first-{i}")).display().to_string())
        .collect();
    let refs: Vec<&str> = marks.iter().map(String::as_str).collect();
    let file = input_file(hub.dir(), "retry.txt", &refs);
    // The shell's parent is the worker process running it.
    let script = "if [ ! -e \"$0\" ]; then echo $PPID > \"$0\"; exit 3; fi; \
                  if [ \"$(cat \"$0\")\" = \"$PPID\" ]; then exit 4; fi; echo elsewhere";
    let output = hub.map_ok(&file, &["--retries", "1", "--", "sh", "-c", script]);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "elsewhere\n".repeat(6)
    );
    let (_, records) = hub.results(job_of(&output));
    assert!(records.iter().all(|r| r["attempts"] == 2), "{records:?}");
}

/// A client that disappears leaves its job running: it finishes, and its
/// results stay in the store until purged.
#[test]
fn a_job_whose_client_died_finishes_and_keeps_its_results() {
    let hub = Hub::start();
    let _workers = hub.workers(2, 2);
    let (inputs, lines) = numbered_inputs(hub.dir(), "orphaned", "d", 30);
    let mut args = vec![inputs.to_str().unwrap().to_string()];
    args.extend(slow_echo("0.05"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut map = hub.spawn_map("orphaned", &args);
    wait_until("some results", || map.stdout().lines().count() >= 3);
    let job = map.job().expect("job id");
    kill(Pid::from_raw(map.guard.pid()), Signal::SIGKILL).unwrap();
    map.wait();
    // Everything it had sent runs to the end.
    wait_until("the job's tasks to finish", || {
        hub.job(job)
            .is_some_and(|j| field_u64(&j, "pending") + field_u64(&j, "running") == 0)
    });
    let records = hub.results(job).1;
    assert!(!records.is_empty());
    assert!(records.iter().all(|r| r["status"] == "ok"), "{records:?}");
    let printed: Vec<&str> = records
        .iter()
        .map(|r| r["input"].as_str().unwrap())
        .collect();
    assert!(printed.iter().all(|p| lines.iter().any(|l| l == p)));
    hub.cmd("purge")
        .args(["--job", &job.to_string()])
        .assert()
        .success();
    assert!(hub.job(job).is_none(), "purged");
}

/// A worker that joins while a job runs gets its tasks at once.
#[test]
fn a_worker_joining_mid_job_gets_work() {
    let hub = Hub::start();
    let _first = hub.workers(1, 1);
    let (inputs, lines) = numbered_inputs(hub.dir(), "late", "l", 30);
    let results = hub.dir().join("late.jsonl");
    let mut args = vec![
        inputs.to_str().unwrap().to_string(),
        "--results".to_string(),
        results.display().to_string(),
    ];
    args.extend(slow_echo("0.1"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut map = hub.spawn_map("late", &args);
    wait_until("two results", || map.stdout().lines().count() >= 2);
    let _late = hub.workers(1, 1);
    assert!(map.wait().success(), "{}", map.stderr());
    assert_eq!(map.stdout(), lines_text(&lines));
    let pids: BTreeSet<u64> = fs::read_to_string(&results)
        .unwrap()
        .lines()
        .map(|l| field_u64(&serde_json::from_str(l).unwrap(), "pid"))
        .collect();
    assert_eq!(pids.len(), 2, "both workers ran tasks: {pids:?}");
}

/// `zcluster results` reads a job in pages of bounded size (16 MiB of
/// payload each, where one reply of a large job used to pass the 64 MiB
/// message limit): a job of 24 tasks of about 1 MB of output each comes
/// back whole, in order, across pages.
#[test]
fn results_come_back_whole_across_pages() {
    const TASKS: usize = 24;
    const LINES: &str = "150000";
    let hub = Hub::start();
    let _workers = hub.workers(1, 2);
    let (file, _) = numbered_inputs(hub.dir(), "in.txt", "", TASKS);
    let output = hub.map_ok(&file, &["--shell", "--", "seq", "{}", LINES]);
    let job = job_of(&output);
    let mapped = output.stdout;
    assert!(
        mapped.len() > 16 << 20,
        "only {} bytes of output",
        mapped.len()
    );
    let results = hub
        .cmd("results")
        .arg(job.to_string())
        .timeout(FAIL_AFTER)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&results.stderr);
    assert!(results.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("{TASKS} results, 0 failed, 0 unfinished")),
        "{stderr}"
    );
    assert!(
        results.stdout == mapped,
        "results differ from what the map printed"
    );
    let status = hub
        .cmd("results")
        .arg(job.to_string())
        .arg("--status-only")
        .output()
        .unwrap();
    assert!(status.status.success());
    assert_eq!(
        String::from_utf8_lossy(&status.stdout).lines().count(),
        TASKS + 1
    );
}

/// A hub started on a connection file it cannot use (here one others may
/// read) refuses to start and says how to fix it, instead of replacing it
/// with new ports and a new key that would cut off every worker.
#[test]
fn a_hub_refuses_to_replace_a_connection_file_it_cannot_use() {
    use std::os::unix::fs::PermissionsExt;
    let mut hub = Hub::start();
    hub.cmd("shutdown").assert().success();
    hub.proc.wait();
    let before = std::fs::read(&hub.file).unwrap();
    std::fs::set_permissions(&hub.file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = zcluster()
        .arg("hub")
        .arg("--connection-file")
        .arg(&hub.file)
        .arg("--store")
        .arg(&hub.store)
        .args(["--ip", "127.0.0.1"])
        .timeout(FAIL_AFTER)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("chmod 600") && stderr.contains("--fresh"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&hub.file).unwrap(),
        before,
        "the file was rewritten"
    );
}

/// Most of `spans` (start, end) running at any one time.
fn most_at_once(spans: &[(f64, f64)]) -> usize {
    spans
        .iter()
        .map(|&(at, _)| spans.iter().filter(|&&(s, e)| s <= at && at < e).count())
        .max()
        .unwrap_or(0)
}

/// `map -j 1` over a hub runs one task of the job at a time across the
/// cluster, on a worker with two free slots (the hub's scheduler holds the
/// job to its cap); without `-j` the job takes both slots.
#[test]
fn map_jobs_over_a_hub_caps_the_tasks_running_at_once() {
    let hub = Hub::start();
    let _workers = hub.workers(1, 2);
    let inputs = input_file(hub.dir(), "four.txt", &["1", "2", "3", "4"]);
    let spans = |name: &str, jobs: &[&str]| -> Vec<(f64, f64)> {
        let results = hub.dir().join(format!("{name}.jsonl"));
        let results = results.display().to_string();
        let mut args = jobs.to_vec();
        args.extend(["--results", &results, "--", "sh", "-c", "sleep 0.5"]);
        hub.map_ok(&inputs, &args);
        json_lines(Path::new(&results))
            .iter()
            .map(|record| {
                let started = record["started_unix_s"].as_f64().unwrap();
                (started, started + record["elapsed_s"].as_f64().unwrap())
            })
            .collect()
    };
    let capped = spans("capped", &["-j", "1"]);
    assert_eq!(capped.len(), 4);
    assert_eq!(
        most_at_once(&capped),
        1,
        "-j 1 ran tasks together: {capped:?}"
    );
    let free = spans("free", &[]);
    assert_eq!(free.len(), 4);
    assert_eq!(most_at_once(&free), 2, "without -j, both slots: {free:?}");
}
