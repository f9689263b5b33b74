//! Resources end to end: workers declaring cores, GPUs by index, memory
//! and named resources (no GPU is needed: the bookkeeping is what is
//! tested), the hub's status showing them.

use std::process::Command;

use crate::common::*;

/// Starts `zcluster worker --hub FILE ARGS` (not waiting for it).
fn worker(hub: &Hub, name: &str, args: &[&str]) -> Proc {
    Proc::spawn(
        Command::new(zcluster_path())
            .arg("worker")
            .arg("--hub")
            .arg(&hub.file)
            .args(args),
        hub.dir().join(format!("worker-{name}.log")),
    )
}

#[test]
fn a_worker_refuses_a_malformed_offer_naming_the_word() {
    for (args, named) in [
        (&["--gpus", "x"][..], "--gpus \"x\""),
        (&["--mem", "4Q"][..], "--mem \"4Q\""),
        (&["--resource", "licences"][..], "--resource \"licences\""),
        (&["--cpus", "0"][..], "--cpus 0"),
    ] {
        let output = zcluster()
            .args(["worker", "--hub", "/nonexistent/hub.json"])
            .args(args)
            .output()
            .expect("ran");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(named), "{args:?}: {stderr}");
    }
}

#[test]
fn workers_offer_what_they_declare_and_status_shows_it() {
    let hub = Hub::start();
    let _w = worker(
        &hub,
        "a",
        &[
            "--cpus",
            "8",
            "--gpus",
            "0,1,2,3",
            "--mem",
            "16G",
            "--resource",
            "licences=a,b",
        ],
    );
    let _j = worker(&hub, "b", &["-j", "3", "--gpus", "none", "--mem", "1G"]);
    wait_until("both workers to register", || hub.engines().len() == 2);
    let mut offers: Vec<(u64, String, String)> = hub
        .engines()
        .iter()
        .map(|e| {
            (
                e["slots"].as_u64().unwrap_or_default(),
                e["offer"].as_str().unwrap_or_default().to_string(),
                e["in_use"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    offers.sort();
    assert_eq!(
        offers,
        [
            (3, "3 cpus, mem 1G".to_string(), "0/3 cpus".to_string()),
            (
                8,
                "8 cpus, gpus 0,1,2,3, mem 16G, licences a,b".to_string(),
                "0/8 cpus, 0/4 gpus".to_string()
            ),
        ]
    );
    let text = hub.cmd("status").output().expect("status");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(
            "offers: 8 cpus, gpus 0,1,2,3, mem 16G, licences a,b; in use: 0/8 cpus, 0/4 gpus"
        ),
        "{text}"
    );
}

/// Starts a worker per `args` and waits until `count` engines are
/// registered in all.
fn workers(hub: &Hub, args: &[&[&str]]) -> Vec<Proc> {
    let workers: Vec<Proc> = args
        .iter()
        .enumerate()
        .map(|(i, a)| worker(hub, &i.to_string(), a))
        .collect();
    wait_until("the workers to register", || {
        hub.engines().len() == args.len()
    });
    workers
}

/// A task script: it holds a lock named by its worker (its parent) and its
/// devices while it runs, records a clash if another running task of the
/// same worker holds the same devices, and records how many tasks hold
/// locks at once (over `most`: an over-commit).
fn gpu_task_script(dir: &std::path::Path, most: usize) -> String {
    let d = dir.display();
    format!(
        r#"lock="{d}/lock-$PPID-$CUDA_VISIBLE_DEVICES"
[ -n "$CUDA_VISIBLE_DEVICES" ] || echo "no CUDA_VISIBLE_DEVICES" >> "{d}/violations"
mkdir "$lock" 2>/dev/null || echo "clash $lock" >> "{d}/violations"
n=$(ls "{d}" | grep -c '^lock-')
[ "$n" -le {most} ] || echo "over: $n" >> "{d}/violations"
echo "$PPID $CUDA_VISIBLE_DEVICES $ZCLUSTER_GPUS" >> "{d}/seen"
sleep 0.3
rmdir "$lock""#
    )
}

#[test]
fn gpu_tasks_on_two_workers_never_exceed_their_gpus_and_see_distinct_devices() {
    let hub = Hub::start();
    let gpus = ["--cpus", "8", "--gpus", "0,1,2,3"];
    let _workers = workers(&hub, &[&gpus, &gpus]);
    let locks = tempfile::tempdir().expect("dir");
    let script = gpu_task_script(locks.path(), 8);
    let (inputs, _) = numbered_inputs(hub.dir(), "inputs", "", 32);
    let inputs_arg = inputs.to_string_lossy().to_string();
    hub.map_ok(
        &inputs,
        &["--no-progress", "--gpus", "1", "--", "sh", "-c", &script],
    );
    let violations = std::fs::read_to_string(locks.path().join("violations")).unwrap_or_default();
    assert!(violations.is_empty(), "{violations}");
    let seen = std::fs::read_to_string(locks.path().join("seen")).expect("seen");
    assert_eq!(seen.lines().count(), 32, "{inputs_arg}: {seen}");
    let mut pairs: Vec<(&str, &str)> = seen
        .lines()
        .filter_map(|l| {
            let mut words = l.split(' ');
            let (pid, cuda, ours) = (words.next()?, words.next()?, words.next()?);
            assert_eq!(cuda, ours, "ZCLUSTER_GPUS says the same");
            Some((pid, cuda))
        })
        .collect();
    pairs.sort_unstable();
    pairs.dedup();
    // Each worker's four devices, each one given alone.
    assert_eq!(pairs.len(), 8, "{pairs:?}");
    assert!(pairs
        .iter()
        .all(|(_, gpu)| ["0", "1", "2", "3"].contains(gpu)));
}

#[test]
fn half_gpus_put_two_tasks_on_each_device() {
    let hub = Hub::start();
    let _workers = workers(&hub, &[&["--cpus", "8", "--gpus", "0,1"]]);
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path().display();
    // Two locks per device: a third task on a device is a clash; both
    // held at once is what fractions are for.
    let script = format!(
        r#"g="{d}/gpu$CUDA_VISIBLE_DEVICES"
if mkdir "$g-a" 2>/dev/null; then mine="$g-a"; elif mkdir "$g-b" 2>/dev/null; then mine="$g-b"; else echo "third on $g" >> "{d}/violations"; fi
[ -d "$g-a" ] && [ -d "$g-b" ] && echo "$CUDA_VISIBLE_DEVICES" >> "{d}/shared"
sleep 0.4
rmdir "$mine""#
    );
    let (inputs, _) = numbered_inputs(hub.dir(), "inputs", "", 12);
    hub.map_ok(
        &inputs,
        &["--no-progress", "--gpus", "0.5", "--", "sh", "-c", &script],
    );
    let violations = std::fs::read_to_string(dir.path().join("violations")).unwrap_or_default();
    assert!(violations.is_empty(), "{violations}");
    let shared = std::fs::read_to_string(dir.path().join("shared")).unwrap_or_default();
    let mut devices: Vec<&str> = shared.lines().collect();
    devices.sort_unstable();
    devices.dedup();
    assert_eq!(devices, ["0", "1"], "two tasks ran at once on each device");
}

#[test]
fn a_cpu_job_and_a_gpu_job_run_side_by_side_on_the_same_workers() {
    let hub = Hub::start();
    let _workers = workers(&hub, &[&["--cpus", "4", "--gpus", "0,1"]]);
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path().display();
    // Each task marks itself running; each notes whether a task of the
    // other job was running beside it.
    let task = |mine: &str, other: &str| {
        format!(
            r#"touch "{d}/{mine}-$$"; sleep 0.5
ls "{d}" | grep -q '^{other}-' && echo "$$" >> "{d}/{mine}-saw-{other}"
rm "{d}/{mine}-$$""#
        )
    };
    let (gpu_inputs, _) = numbered_inputs(hub.dir(), "gpu-inputs", "", 6);
    let (cpu_inputs, _) = numbered_inputs(hub.dir(), "cpu-inputs", "", 6);
    let gpu_script = task("gpu", "cpu");
    let cpu_script = task("cpu", "gpu");
    let mut gpu = hub.spawn_map(
        "gpu",
        &[
            gpu_inputs.to_str().expect("path"),
            "--gpus",
            "1",
            "--",
            "sh",
            "-c",
            &gpu_script,
        ],
    );
    let mut cpu = hub.spawn_map(
        "cpu",
        &[
            cpu_inputs.to_str().expect("path"),
            "--",
            "sh",
            "-c",
            &cpu_script,
        ],
    );
    assert!(gpu.wait().success(), "{}", gpu.stderr());
    assert!(cpu.wait().success(), "{}", cpu.stderr());
    for saw in ["gpu-saw-cpu", "cpu-saw-gpu"] {
        let lines = std::fs::read_to_string(dir.path().join(saw)).unwrap_or_default();
        assert!(!lines.is_empty(), "{saw}: the jobs never ran side by side");
    }
}

#[test]
fn a_request_no_worker_can_ever_meet_is_refused_naming_the_largest_offer() {
    let hub = Hub::start();
    let _workers = workers(
        &hub,
        &[
            &["--cpus", "4", "--gpus", "0,1"],
            &["-j", "2", "--gpus", "none"],
        ],
    );
    let (inputs, _) = numbered_inputs(hub.dir(), "inputs", "", 2);
    let output = hub
        .cmd("map")
        .arg(&inputs)
        .args(["--no-progress", "--gpus", "3", "--", "true"])
        .timeout(FAIL_AFTER)
        .output()
        .expect("ran");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(
            "no engine can ever run a task asking for 1 cpus, 3 gpus: the largest offer is engine"
        ) && stderr.contains("4 cpus, gpus 0,1"),
        "{stderr}"
    );
    let bad = hub
        .cmd("map")
        .arg(&inputs)
        .args(["--gpus", "x", "--", "true"])
        .output()
        .expect("ran");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--gpus \"x\""));
}

#[test]
fn a_pinned_worker_binds_each_task_to_the_cores_it_got() {
    let hub = Hub::start();
    let _workers = workers(&hub, &[&["--cpus", "2", "--gpus", "none", "--pin"]]);
    let (inputs, _) = numbered_inputs(hub.dir(), "inputs", "", 4);
    let output = hub.map_ok(
        &inputs,
        &[
            "--no-progress",
            "--cpus",
            "1",
            "--",
            "sh",
            "-c",
            r#"echo "$ZCLUSTER_CPUS $(grep Cpus_allowed_list /proc/self/status | cut -f2)""#,
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout.lines().count(), 4, "{stdout}");
    for line in stdout.lines() {
        let (given, allowed) = line.split_once(' ').expect("two words");
        assert!(!given.is_empty() && !given.contains(','), "{line}");
        assert_eq!(given, allowed, "the task runs on the core it got");
    }
}
