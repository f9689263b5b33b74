//! zcluster on a real two-node Slurm cluster that each test starts itself
//! (`common::SlurmLab`): `launch slurm`, drains before the walltime and
//! allocations on demand. Without root or Slurm a test prints `SKIP:`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

/// A bound for waits on Slurm (scheduling passes, steps starting) that a
/// passing test stays well under.
const SLURM_WAIT: Duration = Duration::from_secs(60);

/// Polls `condition` every 100 ms until it holds, failing after
/// [`SLURM_WAIT`] with `what`.
fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + SLURM_WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `zcluster launch slurm --hub HUB ARGS` with the lab's Slurm; its job id.
fn launch_slurm(lab: &SlurmLab, hub: &Hub, args: &[&str]) -> String {
    let output = zcluster()
        .args(["launch", "slurm", "--hub"])
        .arg(&hub.file)
        .args(args)
        .env("SLURM_CONF", lab.conf())
        .current_dir(lab.path())
        .timeout(SLURM_WAIT)
        .output()
        .expect("run launch slurm");
    assert!(
        output.status.success(),
        "launch slurm failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let job = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert!(
        !job.is_empty() && job.bytes().all(|b| b.is_ascii_digit()),
        "launch slurm printed {job:?}, not a job id"
    );
    job
}

/// The engines whose origin is Slurm job `job`, by node name.
fn slurm_engines(hub: &Hub, job: &str) -> Vec<(String, Value)> {
    let prefix = format!("slurm:{job}/");
    let mut engines: Vec<(String, Value)> = hub
        .engines()
        .into_iter()
        .filter_map(|e| {
            let node = e["origin"].as_str()?.strip_prefix(&prefix)?.to_string();
            Some((node, e))
        })
        .collect();
    engines.sort_by(|a, b| a.0.cmp(&b.0));
    engines
}

/// `launch slurm --nodes 2`: a worker on each node, labelled with the job
/// and node in `status`, with the node's CPUs as slots; a map of 500
/// inputs runs on both and comes back whole and in order.
#[test]
fn launch_slurm_runs_a_map_of_500_inputs_on_both_nodes() {
    let Some(lab) = SlurmLab::start() else { return };
    let started = Instant::now();
    let hub = Hub::start();
    let job = launch_slurm(&lab, &hub, &["--nodes", "2", "--time", "10m"]);
    wait_for("a worker on each node to register", || {
        slurm_engines(&hub, &job).len() == 2
    });
    let engines = slurm_engines(&hub, &job);
    let nodes: Vec<&str> = engines.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(nodes, SLURM_NODES);
    for (node, engine) in &engines {
        assert_eq!(
            field_u64(engine, "slots"),
            u64::from(SLURM_CPUS_PER_NODE),
            "the worker on {node} has the node's CPUs as slots"
        );
    }
    let table = hub.cmd("status").output().expect("status");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains(&format!("slurm:{job}/n1")) && table.contains(&format!("slurm:{job}/n2")),
        "status shows where each engine came from:\n{table}"
    );
    println!(
        "lab up in {:?}; workers registered after {:?}",
        lab.came_up_in,
        started.elapsed()
    );

    let (inputs, expected) = numbered_inputs(hub.dir(), "inputs", "in", 500);
    let mapped = Instant::now();
    let output = hub
        .cmd("map")
        .arg(&inputs)
        .args([
            "--no-progress",
            "--",
            "sh",
            "-c",
            "sleep 0.01; echo $1",
            "_",
            "{}",
        ])
        .timeout(SLURM_WAIT)
        .output()
        .expect("run map");
    assert!(
        output.status.success(),
        "map failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!("500 inputs mapped in {:?}", mapped.elapsed());
    let lines: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines, expected, "every result once, in order");
    for (node, engine) in slurm_engines(&hub, &job) {
        assert!(
            field_u64(&engine, "completed") > 0,
            "the worker on {node} ran tasks: {engine}"
        );
    }
}

/// `scancel` of the allocation while a map runs on it: its workers stop,
/// their tasks run elsewhere, and every result still comes back once, in
/// order.
#[test]
fn scancel_of_the_allocation_mid_map_loses_nothing() {
    let Some(lab) = SlurmLab::start() else { return };
    let hub = Hub::start();
    let job = launch_slurm(&lab, &hub, &["--nodes", "2", "--time", "10m"]);
    wait_for("a worker on each node to register", || {
        slurm_engines(&hub, &job).len() == 2
    });
    let (inputs, expected) = numbered_inputs(hub.dir(), "inputs", "in", 200);
    let mut map = hub.spawn_slow_map("map", &inputs, "0.1");
    wait_for("the map to get going on the allocation", || {
        map.job()
            .and_then(|j| hub.job(j))
            .is_some_and(|j| field_u64(&j, "done") >= 20)
    });
    let cancelled = lab
        .command("scancel")
        .arg(&job)
        .stdin(Stdio::null())
        .status()
        .expect("run scancel");
    assert!(cancelled.success(), "scancel {job}");
    wait_for("the allocation's engines to leave", || {
        slurm_engines(&hub, &job).is_empty()
    });
    let left = map
        .job()
        .and_then(|j| hub.job(j))
        .map_or(0, |j| field_u64(&j, "done"));
    assert!(
        left < 200,
        "the map was still running when the allocation went"
    );
    let _rescue = hub.workers(1, 4);
    assert!(map.wait().success(), "the map failed: {}", map.stderr());
    let lines: Vec<String> = map.stdout().lines().map(str::to_string).collect();
    assert_eq!(
        lines,
        expected,
        "every result once, in order: {}",
        map.stderr()
    );
}

/// The lab itself: both nodes run a step, and dropping the lab leaves no
/// daemon or job process behind.
#[test]
fn slurm_lab_runs_a_step_on_both_nodes_and_leaves_nothing() {
    let Some(lab) = SlurmLab::start() else { return };
    println!("the Slurm lab came up in {:?}", lab.came_up_in);
    let out = lab.output(&[
        "srun",
        "-N2",
        "--ntasks-per-node=1",
        "sh",
        "-c",
        "echo $SLURMD_NODENAME",
    ]);
    let mut nodes: Vec<&str> = out.lines().collect();
    nodes.sort_unstable();
    assert_eq!(nodes, SLURM_NODES, "srun output: {out:?}");
    // A job still running when the lab drops is cancelled with it.
    let job = lab.output(&["sbatch", "--parsable", "-N1", "--wrap", "sleep 300"]);
    let job = job.trim().to_string();
    wait_until("the sleeping job to run", || {
        lab.job_state(&job) == "RUNNING"
    });
    let pids: Vec<i32> = [
        "slurmctld.pid",
        "slurmd-n1.pid",
        "slurmd-n2.pid",
        "munge/munged.pid",
    ]
    .iter()
    .map(|f| {
        std::fs::read_to_string(lab.path().join(f))
            .expect("pid file")
            .trim()
            .parse()
            .expect("a pid")
    })
    .collect();
    let sleepers = sleeping_jobs(lab.conf());
    assert!(!sleepers.is_empty(), "the job's sleep runs");
    let dropped = Instant::now();
    drop(lab);
    println!("the Slurm lab stopped in {:?}", dropped.elapsed());
    for pid in pids.iter().chain(&sleepers) {
        assert!(!alive(*pid), "process {pid} outlived the lab");
    }
}

/// Processes named `sleep` that carry this lab's config.
fn sleeping_jobs(conf: &std::path::Path) -> Vec<i32> {
    let needle = format!("SLURM_CONF={}", conf.display());
    let deadline = Instant::now() + FAIL_AFTER;
    loop {
        let found: Vec<i32> = std::fs::read_dir("/proc")
            .expect("/proc")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "sleep")
                    && std::fs::read(format!("/proc/{pid}/environ"))
                        .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == needle.as_bytes()))
            })
            .collect();
        if !found.is_empty() || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An allocation Slurm refuses is reported with Slurm's own reason, and
/// `--dry-run` prints the script without submitting anything.
#[test]
fn a_refused_sbatch_is_reported_with_its_reason() {
    let Some(lab) = SlurmLab::start() else { return };
    let hub = Hub::start();
    let output = zcluster()
        .args(["launch", "slurm", "--hub"])
        .arg(&hub.file)
        .args(["--nodes", "1", "--time", "5m", "--partition", "nosuch"])
        .env("SLURM_CONF", lab.conf())
        .current_dir(lab.path())
        .timeout(SLURM_WAIT)
        .output()
        .expect("run launch slurm");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("sbatch refused") && stderr.contains("invalid partition specified: nosuch"),
        "{stderr}"
    );
    let dry = zcluster()
        .args(["launch", "slurm", "--hub"])
        .arg(&hub.file)
        .args(["--nodes", "2", "--time", "2h", "--dry-run"])
        .env("SLURM_CONF", lab.conf())
        .timeout(SLURM_WAIT)
        .output()
        .expect("run launch slurm --dry-run");
    let script = String::from_utf8_lossy(&dry.stdout);
    assert!(dry.status.success());
    assert!(
        script.starts_with("#!/bin/sh\n") && script.contains("#SBATCH --nodes=2"),
        "{script}"
    );
    assert!(lab.active_jobs().is_empty(), "a dry run submits nothing");
}

/// `zcluster alloc list --json` for the hub.
fn alloc_list(hub: &Hub) -> Vec<Value> {
    let out = zcluster()
        .args(["alloc", "list", "--json", "--hub"])
        .arg(&hub.file)
        .output()
        .expect("run alloc list");
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap_or_default()
}

/// `zcluster alloc events` for the hub, as text.
fn alloc_events(hub: &Hub) -> String {
    let out = zcluster()
        .args(["alloc", "events", "--hub"])
        .arg(&hub.file)
        .output()
        .expect("run alloc events");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The on-demand policy: nothing is submitted while no task waits; a job
/// arriving makes it submit one allocation, whose worker runs the job;
/// once idle for the timeout the allocation is released (its worker
/// drained, the Slurm job over). An allocator started again carries on
/// its allocations instead of submitting again.
#[test]
fn the_policy_submits_when_a_job_arrives_and_releases_when_idle() {
    let Some(lab) = SlurmLab::start() else { return };
    let hub = Hub::start();
    let allocator = |name: &str| {
        Proc::spawn(
            lab.command(zcluster_path().to_str().expect("utf-8 path"))
                .current_dir(lab.path())
                .env("RUST_LOG", "info")
                .args(["alloc", "add", "slurm", "--hub"])
                .arg(&hub.file)
                .args(["--nodes", "1", "--time", "10m", "--max-nodes", "1"])
                .args(["--backlog", "1", "--idle-timeout", "3s", "--poll", "300ms"]),
            hub.dir().join(format!("{name}.log")),
        )
    };
    let mut first = allocator("alloc-1");
    wait_for("the allocator to start", || {
        alloc_events(&hub).contains("allocator started")
    });
    assert!(alloc_list(&hub).is_empty(), "no work, no allocation");

    let (inputs, expected) = numbered_inputs(hub.dir(), "inputs", "in", 20);
    let mut map = hub.spawn_slow_map("map", &inputs, "0.2");
    wait_for("an allocation to be submitted", || {
        !alloc_list(&hub).is_empty()
    });
    let list = alloc_list(&hub);
    let job = list[0]["job"].as_str().expect("a job id").to_string();
    // The allocator restarted while its allocation runs carries it on.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.pid()),
        nix::sys::signal::Signal::SIGTERM,
    );
    assert!(first.wait().success(), "{}", first.log());
    let _second = allocator("alloc-2");
    wait_for("the map to finish on the allocation", || {
        map.guard
            .0
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
    });
    assert!(map.wait().success(), "{}", map.stderr());
    let lines: Vec<String> = map.stdout().lines().map(str::to_string).collect();
    assert_eq!(lines, expected);
    // No other worker exists: the allocation's ran the map.
    wait_for("the idle allocation to be released and end", || {
        let list = alloc_list(&hub);
        list.len() == 1 && list[0]["released"] == true && list[0]["state"] != "running"
    });
    assert!(slurm_engines(&hub, &job).is_empty(), "its worker left");
    let events = alloc_events(&hub);
    assert!(
        events.contains(&format!("job {job}: submitted")),
        "{events}"
    );
    assert!(
        events.contains("carrying on 1 active allocation"),
        "{events}"
    );
    assert!(
        events.contains(&format!("job {job}: released (idle for 3s)")),
        "{events}"
    );
    assert_eq!(alloc_list(&hub).len(), 1, "submitted once: {events}");
    println!("{events}");
}

/// Why an allocation does not come is shown: one Slurm holds stays
/// pending with Slurm's reason (and the backlog of 1 keeps it the only
/// one), and one sbatch refuses is an event with sbatch's words.
#[test]
fn alloc_shows_why_an_allocation_is_pending_or_refused() {
    let Some(lab) = SlurmLab::start() else { return };
    let held = Hub::start();
    let refused = Hub::start();
    let allocator = |hub: &Hub, extra: &[&str]| {
        Proc::spawn(
            lab.command(zcluster_path().to_str().expect("utf-8 path"))
                .current_dir(lab.path())
                .args(["alloc", "add", "slurm", "--hub"])
                .arg(&hub.file)
                .args(["--nodes", "1", "--time", "10m", "--max-nodes", "2"])
                .args(["--backlog", "1", "--poll", "300ms"])
                .args(extra),
            hub.dir().join("alloc.log"),
        )
    };
    let _held_alloc = allocator(&held, &["--", "--hold"]);
    let _refused_alloc = allocator(&refused, &["--partition", "nosuch"]);
    let mut maps = Vec::new();
    for hub in [&held, &refused] {
        let (inputs, _) = numbered_inputs(hub.dir(), "inputs", "in", 3);
        maps.push(hub.spawn_map("map", &[inputs.to_str().expect("utf-8"), "--", "true"]));
    }
    wait_for("the held allocation's reason", || {
        alloc_list(&held)
            .first()
            .is_some_and(|a| a["state"] == "pending" && a["reason"] == "JobHeldUser")
    });
    wait_for("the refusal to be recorded", || {
        alloc_events(&refused).contains("invalid partition specified: nosuch")
    });
    let table = zcluster()
        .args(["alloc", "list", "--hub"])
        .arg(&held.file)
        .output()
        .expect("alloc list");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("pending") && table.contains("JobHeldUser"),
        "{table}"
    );
    assert_eq!(alloc_list(&held).len(), 1, "the backlog allows one pending");
    assert!(alloc_list(&refused).is_empty(), "nothing was submitted");
    let events = alloc_events(&refused);
    assert!(
        events.contains("submission failed (attempt 1): sbatch refused"),
        "{events}"
    );
}

/// Faults under the policy: the hub restarts while an allocation is
/// pending (the allocator carries the allocation on and submits nothing
/// twice), and the allocation is cancelled in the middle of a map
/// (its tasks wait, the policy submits a replacement, the map completes
/// with every result once, in order).
#[test]
fn the_policy_rides_out_a_hub_restart_and_replaces_a_cancelled_allocation() {
    let Some(lab) = SlurmLab::start() else { return };
    let mut hub = Hub::start();
    let _allocator = Proc::spawn(
        lab.command(zcluster_path().to_str().expect("utf-8 path"))
            .current_dir(lab.path())
            .args(["alloc", "add", "slurm", "--hub"])
            .arg(&hub.file)
            .args(["--nodes", "1", "--time", "10m", "--max-nodes", "1"])
            .args(["--backlog", "1", "--idle-timeout", "1m", "--poll", "300ms"])
            // Held: pending until released below.
            .args(["--", "--hold"]),
        hub.dir().join("alloc.log"),
    );
    let (inputs, expected) = numbered_inputs(hub.dir(), "inputs", "in", 40);
    let mut map = hub.spawn_slow_map("map", &inputs, "0.3");
    wait_for("an allocation to be pending", || {
        alloc_list(&hub)
            .first()
            .is_some_and(|a| a["state"] == "pending")
    });
    let first = alloc_list(&hub)[0]["job"]
        .as_str()
        .expect("job id")
        .to_string();

    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(hub.proc.pid()),
        nix::sys::signal::Signal::SIGKILL,
    );
    hub.proc.wait();
    // Back at once: the map's client waits only so long for its hub.
    hub.proc = Hub::spawn_hub(hub.dir.path(), &hub.file, &hub.store, &[]);
    hub.wait_ready();
    assert_eq!(alloc_list(&hub).len(), 1, "nothing submitted twice");

    // Released, it runs the map (which carried on across the restart).
    assert!(lab
        .command("scontrol")
        .args(["release", &first])
        .status()
        .expect("scontrol release")
        .success());
    wait_for("the map to get going on it", || {
        map.job()
            .and_then(|j| hub.job(j))
            .is_some_and(|j| field_u64(&j, "done") >= 5)
    });
    assert!(lab
        .command("scancel")
        .arg(&first)
        .status()
        .expect("scancel")
        .success());
    wait_for("a replacement allocation", || alloc_list(&hub).len() == 2);
    let second = alloc_list(&hub)[1]["job"]
        .as_str()
        .expect("job id")
        .to_string();
    assert!(lab
        .command("scontrol")
        .args(["release", &second])
        .status()
        .expect("scontrol release")
        .success());
    let deadline = Instant::now() + SLURM_WAIT;
    while map
        .guard
        .0
        .as_mut()
        .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    {
        assert!(
            Instant::now() < deadline,
            "the map did not finish: {}",
            alloc_events(&hub)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(map.wait().success(), "{}", map.stderr());
    let lines: Vec<String> = map.stdout().lines().map(str::to_string).collect();
    assert_eq!(lines, expected, "every result once, in order");
    let events = alloc_events(&hub);
    assert!(
        events.contains(&format!("job {first}: CANCELLED")),
        "{events}"
    );
    println!("{events}");
}
