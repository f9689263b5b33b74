//! Drains: a worker whose allocation ends soon (`--end-at`) stops taking
//! tasks that would not finish in time, finishes what it runs, leaves
//! cleanly and exits 0; `zcluster drain --engine ID` does the same on
//! demand. No task is cut off, none fails, none counts as a death.

use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::common::*;

/// A bound for a test whose worker lives about 20 s.
const DRAIN_WAIT: Duration = Duration::from_secs(60);

/// Starts `zcluster worker --hub FILE ARGS`, its stderr to a log.
fn worker_with(hub: &Hub, name: &str, args: &[&str]) -> Proc {
    Proc::spawn(
        Command::new(zcluster_path())
            // Its drain is logged at info level.
            .env("RUST_LOG", "info")
            .arg("worker")
            .arg("--hub")
            .arg(&hub.file)
            .args(args),
        hub.dir().join(format!("{name}.log")),
    )
}

/// Waits (bounded by [`DRAIN_WAIT`]) for `proc` to exit, calling `each`
/// on every poll; its exit code.
fn wait_exit(proc: &mut Proc, mut each: impl FnMut()) -> Option<i32> {
    let deadline = Instant::now() + DRAIN_WAIT;
    while proc.running() {
        assert!(
            Instant::now() < deadline,
            "the worker did not leave: {}",
            proc.log()
        );
        each();
        std::thread::sleep(Duration::from_millis(100));
    }
    proc.wait().code()
}

/// The status record of engine `id`, while it is registered.
fn engine(hub: &Hub, id: u64) -> Option<Value> {
    hub.engines()
        .into_iter()
        .find(|e| e["id"].as_u64() == Some(id))
}

/// A worker whose allocation ends 20 s from now, on a job of 2 s tasks:
/// it drains before the end, exits 0 before it, every
/// task it ran finished, and a worker started afterwards finishes the map
/// with every result once, in order, nothing failed.
#[test]
fn a_worker_with_an_end_time_20s_away_drains_and_no_task_is_cut() {
    let hub = Hub::start();
    let end = SystemTime::now() + Duration::from_secs(20);
    let end_text = humantime::format_rfc3339_seconds(end).to_string();
    let mut draining = worker_with(&hub, "draining", &["-j2", "--end-at", &end_text]);
    wait_until("the worker to register", || hub.engines().len() == 1);
    let (inputs, expected) = numbered_inputs(hub.dir(), "inputs", "in", 50);
    let mut map = hub.spawn_slow_map("map", &inputs, "1");
    // Whether `status` catches it draining depends on the poll landing in
    // a window of about a task's length (a second, less under load): the
    // on-demand drain test checks status; this one checks what the worker
    // did and said.
    let code = wait_exit(&mut draining, || {});
    let left = SystemTime::now();
    assert_eq!(
        code,
        Some(0),
        "a drained worker exits 0: {}",
        draining.log()
    );
    assert!(
        draining.log().contains("draining"),
        "it drained by itself: {}",
        draining.log()
    );
    assert!(left < end, "it left before its allocation ended");
    assert!(
        !draining.log().contains("did not finish in time"),
        "no task was stopped at the end: {}",
        draining.log()
    );
    let job = map.job().expect("the map's job id");
    let done_by_it = hub.job(job).map_or(0, |j| field_u64(&j, "done"));
    assert!(
        done_by_it >= 20,
        "it worked until close to its end ({done_by_it} tasks)"
    );
    assert!(done_by_it < 50, "the map outlasts it");

    let _rest = hub.workers(1, 8);
    assert!(map.wait().success(), "the map failed: {}", map.stderr());
    let lines: Vec<String> = map.stdout().lines().map(str::to_string).collect();
    assert_eq!(lines, expected, "every result once, in order");
    let (code, records) = hub.results(job);
    assert_eq!(code, Some(0));
    for record in &records {
        // A task it had been sent but not started may have gone back
        // (attempt 2); none ran twice for having been cut.
        assert!(
            record["attempts"].as_u64().is_some_and(|a| a <= 2),
            "{record}"
        );
    }
    // It holds at most its slots times the hub's prefetch depth (2 for
    // tasks of a second): 4 tasks. Near its end it starts none that would
    // not finish in time, and the hub keeps its queue full until it says
    // it drains, so up to all 4 may go back unstarted.
    let rerun = records.iter().filter(|r| r["attempts"] != 1).count();
    assert!(
        rerun <= 4,
        "at most the tasks it could hold unstarted ran again: {records:?}"
    );
}

/// `zcluster drain --engine ID` while its tasks run: status shows it
/// draining, it gets no new task, finishes the running ones, exits 0, and
/// the other worker finishes the map; nothing fails.
#[test]
fn drain_on_demand_finishes_running_tasks_then_leaves() {
    let hub = Hub::start();
    let mut drained = worker_with(&hub, "drained", &["-j2"]);
    wait_until("the worker to register", || hub.engines().len() == 1);
    let id = hub.engine_of(drained.pid());
    let (inputs, expected) = numbered_inputs(hub.dir(), "inputs", "in", 20);
    let mut map = hub.spawn_slow_map("map", &inputs, "0.5");
    wait_until("tasks to run on it", || {
        engine(&hub, id).is_some_and(|e| field_u64(&e, "running") > 0)
    });
    let out = hub
        .cmd("drain")
        .args(["--engine", &id.to_string()])
        .timeout(FAIL_AFTER)
        .output()
        .expect("run drain");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), id.to_string());
    let table = hub.cmd("status").output().expect("status");
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    // Its tasks take 2 s: it is still there, draining.
    let shown = engine(&hub, id).expect("still registered");
    assert_eq!(
        shown["draining"], true,
        "status --json says draining: {shown}"
    );
    assert!(table.contains("draining"), "{table}");
    let code = wait_exit(&mut drained, || {});
    assert_eq!(code, Some(0), "{}", drained.log());
    let job = map.job().expect("the map's job id");
    // Two slots busy with 2 s tasks when told: it finishes those two and
    // starts none of those queued on it (they go back to the hub).
    assert_eq!(
        hub.job(job).map(|j| field_u64(&j, "done")),
        Some(2),
        "it finished the tasks it ran and started no other"
    );
    let _rest = hub.workers(1, 4);
    assert!(map.wait().success(), "the map failed: {}", map.stderr());
    let lines: Vec<String> = map.stdout().lines().map(str::to_string).collect();
    assert_eq!(lines, expected);
    // An engine the hub never had is a usage error.
    hub.cmd("drain").args(["--engine", "999"]).assert().code(2);
}
