//! zcluster on a real two-node Slurm cluster that each test starts itself
//! (`common::SlurmLab`): `launch slurm`, drains before the walltime and
//! allocations on demand. Without root or Slurm a test prints `SKIP:`.

use std::time::{Duration, Instant};

use crate::common::*;

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
