//! A real two-node Slurm cluster for one test (`../shared/LAB-TESTBED.md`):
//! a private munged (its own key and socket), a slurmctld and two slurmd
//! (nodes `n1` and `n2`, two CPUs each) on loopback, all configured through
//! a private `SLURM_CONF` in a temp dir, on ports drawn free for this test so
//! tests running at once do not meet. Dropping the lab cancels its jobs and
//! stops every daemon by its pid file (and any process left holding the
//! lab's config, each by its pid). Without root or without Slurm installed,
//! [`SlurmLab::start`] prints `SKIP:` and returns `None`; `.ci/run` installs
//! Slurm and munge.

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use super::{alive, tail, FAIL_AFTER};

const MUNGED: &str = "/usr/sbin/munged";
const SLURMCTLD: &str = "/usr/sbin/slurmctld";
const SLURMD: &str = "/usr/sbin/slurmd";

/// The nodes every lab has, two CPUs each.
pub const SLURM_NODES: [&str; 2] = ["n1", "n2"];

/// CPUs each node declares.
pub const SLURM_CPUS_PER_NODE: u32 = 2;

/// How long a daemon gets to leave after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// A running two-node Slurm cluster, stopped on drop.
pub struct SlurmLab {
    dir: TempDir,
    conf: PathBuf,
    /// How long it took from the first daemon started to both nodes idle.
    pub came_up_in: Duration,
}

fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn short_host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_else(|_| "localhost".into())
        .trim()
        .split('.')
        .next()
        .unwrap_or("localhost")
        .to_string()
}

impl SlurmLab {
    /// Starts munged, slurmctld and two slurmd, and waits until both nodes
    /// are idle; or prints `SKIP: why` and returns `None` where this
    /// machine cannot (not root, Slurm not installed).
    pub fn start() -> Option<SlurmLab> {
        for daemon in [MUNGED, SLURMCTLD, SLURMD] {
            if !Path::new(daemon).exists() {
                println!("SKIP: {daemon} is not installed (apt-get install slurmd slurmctld slurm-client munge)");
                return None;
            }
        }
        if !nix::unistd::geteuid().is_root() {
            println!("SKIP: a Slurm test cluster needs root (slurmd runs jobs as their user)");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("zcluster-slurm-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path().to_path_buf();
        // slurmstepd and munge clients reach the socket through the dir.
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).expect("chmod lab dir");
        for sub in ["munge", "ctld", "log", "d-n1", "d-n2"] {
            fs::create_dir_all(d.join(sub)).expect("lab dirs");
        }
        let key = d.join("munge/munge.key");
        let mut bytes = vec![0u8; 1024];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .expect("random munge key");
        fs::write(&key, &bytes).expect("write munge key");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o400)).expect("chmod munge key");
        let socket = d.join("munge/socket");
        let host = short_host_name();
        let (ctld_port, n1_port, n2_port) = (free_port(), free_port(), free_port());
        let conf = d.join("slurm.conf");
        let s = d.display();
        fs::write(
            &conf,
            format!(
                "ClusterName=zclustertest\n\
                 SlurmctldHost={host}\n\
                 SlurmctldPort={ctld_port}\n\
                 SlurmdPort={n1_port}\n\
                 SlurmUser=root\n\
                 AuthType=auth/munge\n\
                 AuthInfo=socket={socket}\n\
                 CredType=cred/munge\n\
                 MailProg=/bin/true\n\
                 MpiDefault=none\n\
                 SwitchType=switch/none\n\
                 ProctrackType=proctrack/linuxproc\n\
                 TaskPlugin=task/none\n\
                 JobAcctGatherType=jobacct_gather/none\n\
                 AccountingStorageType=accounting_storage/none\n\
                 SelectType=select/cons_tres\n\
                 SelectTypeParameters=CR_Core\n\
                 SlurmdParameters=config_overrides\n\
                 ReturnToService=2\n\
                 SchedulerParameters=sched_interval=1\n\
                 KillWait=5\n\
                 StateSaveLocation={s}/ctld\n\
                 SlurmdSpoolDir={s}/d-%n\n\
                 SlurmctldPidFile={s}/slurmctld.pid\n\
                 SlurmdPidFile={s}/slurmd-%n.pid\n\
                 SlurmctldLogFile={s}/log/slurmctld.log\n\
                 SlurmdLogFile={s}/log/slurmd-%n.log\n\
                 NodeName=n1 NodeHostname={host} NodeAddr=127.0.0.1 Port={n1_port} CPUs={cpus} RealMemory=1000 State=UNKNOWN\n\
                 NodeName=n2 NodeHostname={host} NodeAddr=127.0.0.1 Port={n2_port} CPUs={cpus} RealMemory=1000 State=UNKNOWN\n\
                 PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES\n",
                socket = socket.display(),
                cpus = SLURM_CPUS_PER_NODE,
            ),
        )
        .expect("write slurm.conf");
        let mut lab = SlurmLab {
            dir,
            conf,
            came_up_in: Duration::ZERO,
        };
        lab.daemon(
            Command::new(MUNGED)
                .arg(format!("--socket={}", socket.display()))
                .arg(format!("--key-file={}", key.display()))
                .arg(format!("--pid-file={s}/munge/munged.pid"))
                .arg(format!("--seed-file={s}/munge/seed"))
                .arg(format!("--log-file={s}/log/munged.log"))
                // munged will not otherwise run as root.
                .arg("--force"),
            "munged",
        )?;
        let started = Instant::now();
        lab.daemon(&mut lab.command(SLURMCTLD), "slurmctld")?;
        for node in SLURM_NODES {
            lab.daemon(lab.command(SLURMD).args(["-N", node]), "slurmd")?;
        }
        let deadline = Instant::now() + FAIL_AFTER;
        loop {
            let sinfo = lab.output(&["sinfo", "-h", "-o", "%T %D"]);
            if sinfo.lines().any(|l| l.trim() == "idle 2") {
                break;
            }
            if Instant::now() > deadline {
                panic!(
                    "the Slurm lab did not come up within {FAIL_AFTER:?} (sinfo: {sinfo:?}); slurmctld log:\n{}",
                    tail(&lab.log("slurmctld"), 10)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        lab.came_up_in = started.elapsed();
        Some(lab)
    }

    /// Starts a daemon that forks itself away, checking that it did.
    fn daemon(&self, command: &mut Command, name: &str) -> Option<()> {
        let status = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        match status {
            Ok(s) if s.success() => Some(()),
            other => {
                println!(
                    "SKIP: {name} did not start ({other:?}): {}",
                    tail(&self.log(name), 5)
                );
                None
            }
        }
    }

    /// The lab's directory (scratch space for tests too).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The private `slurm.conf`; every Slurm command a test runs, and
    /// every zcluster command that calls Slurm, gets it as `SLURM_CONF`.
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// `program` with this lab's `SLURM_CONF`, run in the lab's
    /// directory (where Slurm writes the jobs' `slurm-JOB.out`).
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command
            .env("SLURM_CONF", &self.conf)
            .current_dir(self.path());
        command
    }

    /// Runs a Slurm command (`args[0]`) and returns its stdout, whatever
    /// its exit status.
    pub fn output(&self, args: &[&str]) -> String {
        self.command(args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// A Slurm job's state (`RUNNING`, `PENDING`, `CANCELLED`...), or an
    /// empty string once Slurm forgot it.
    pub fn job_state(&self, job: &str) -> String {
        self.output(&["squeue", "-h", "-t", "all", "-j", job, "-o", "%T"])
            .trim()
            .to_string()
    }

    /// Jobs Slurm still has queued or running.
    pub fn active_jobs(&self) -> Vec<String> {
        self.output(&["squeue", "-h", "-o", "%i"])
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// A daemon's log (`slurmctld`, `slurmd-n1`, `munged`).
    pub fn log(&self, name: &str) -> String {
        fs::read_to_string(self.path().join("log").join(format!("{name}.log"))).unwrap_or_default()
    }

    fn pid_files(&self) -> Vec<PathBuf> {
        let d = self.path();
        vec![
            d.join("slurmctld.pid"),
            d.join("slurmd-n1.pid"),
            d.join("slurmd-n2.pid"),
            d.join("munge/munged.pid"),
        ]
    }

    /// Processes other than the daemons that carry this lab's config in
    /// their environment: job steps and the workers they ran, all started
    /// by this test.
    fn leftovers(&self) -> Vec<i32> {
        let needle = format!("SLURM_CONF={}", self.conf.display());
        let me = std::process::id() as i32;
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| *pid != me && alive(*pid))
            .filter(|pid| {
                fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == needle.as_bytes()))
            })
            .collect()
    }
}

/// Sends `signal` to each pid, then waits (bounded) for all to go.
fn stop_all(pids: &[i32], signal: Signal, grace: Duration) -> bool {
    for pid in pids {
        let _ = kill(Pid::from_raw(*pid), signal);
    }
    let deadline = Instant::now() + grace;
    while pids.iter().any(|p| alive(*p)) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

impl Drop for SlurmLab {
    fn drop(&mut self) {
        // Cancel the jobs, then stop whatever still runs of them (steps
        // and the processes they started) before their daemons.
        let _ = self
            .command("scancel")
            .args(["-u", "root"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let daemons: Vec<i32> = self
            .pid_files()
            .iter()
            .filter_map(|f| fs::read_to_string(f).ok()?.trim().parse().ok())
            .collect();
        let mut rest: Vec<i32> = self.leftovers();
        rest.retain(|p| !daemons.contains(p));
        stop_all(&rest, Signal::SIGKILL, STOP_GRACE);
        // slurmctld started from a test often ignores SIGTERM; what it
        // would save is this lab's scratch, so SIGKILL after a short grace.
        if !stop_all(&daemons, Signal::SIGTERM, STOP_GRACE) {
            stop_all(&daemons, Signal::SIGKILL, STOP_GRACE);
        }
    }
}
