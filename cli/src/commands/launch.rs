//! `zcluster launch ssh HOSTFILE`: a worker on every host of a host file,
//! kept alive until Ctrl-C (or left running with `--detach`); and the
//! `--hosts` flags `zcluster map` shares. The work is `zcluster::launch`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use zcluster::hub::connection::ConnectionInfo;
use zcluster::launch::batch::{AllocationRequest, BatchSystem, WorkerCommand};
use zcluster::launch::cluster::SshCluster;
use zcluster::launch::hosts::{self, Host};
use zcluster::launch::slurm::Slurm;
use zcluster::launch::ssh::{HostEvent, Launcher, Report, ReportSink, SshOptions};

use super::{HubArg, UsageError};

#[derive(Subcommand)]
pub enum LaunchCommand {
    /// Start a worker on every host of HOSTFILE over ssh and keep them
    /// alive until Ctrl-C (GNU parallel's --sshloginfile format:
    /// `[N/][user@]host[:port]` per line, `:` for this machine).
    #[command(after_help = "Examples:\n  \
                  zcluster launch ssh hosts.txt --hub hub.json\n  \
                  zcluster launch ssh hosts.txt --hub hub.json --detach\n  \
                  zcluster launch ssh hosts.txt --hub hub.json --ssh \"ssh -F lab.conf\" --remote-command /opt/bin/zcluster")]
    Ssh(SshArgs),
    /// Submit one Slurm allocation (sbatch) whose script runs a worker on
    /// each node with srun, the node's CPUs as its slots; prints the Slurm
    /// job id. The connection file and the zcluster binary must be at the
    /// same paths on the nodes (a shared file system).
    #[command(after_help = "Examples:\n  \
                  zcluster launch slurm --hub hub.json --nodes 4 --time 2h\n  \
                  zcluster launch slurm --hub hub.json --nodes 2 --time 30m --partition short --dry-run\n  \
                  zcluster launch slurm --hub hub.json --nodes 1 --time 1h -- --qos=debug --mem=8G")]
    Slurm(SlurmArgs),
}

/// `zcluster launch slurm`.
#[derive(Args)]
pub struct SlurmArgs {
    #[command(flatten)]
    hub: HubArg,
    #[command(flatten)]
    allocation: AllocationArgs,
    /// Print the script instead of submitting it.
    #[arg(long)]
    dry_run: bool,
    /// More sbatch arguments, after `--`.
    #[arg(last = true, value_name = "SBATCH ARGS")]
    extra: Vec<String>,
}

/// What one allocation asks for: flags `launch slurm` and `alloc add`
/// share.
#[derive(Args, Clone, Debug)]
pub struct AllocationArgs {
    /// Nodes to allocate, one worker on each.
    #[arg(long, short = 'N', value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    nodes: u32,
    /// Walltime (e.g. 30m, 2h, 1day); the workers drain before it ends.
    #[arg(long, short = 't', value_name = "TIME", value_parser = humantime::parse_duration)]
    time: std::time::Duration,
    /// Slurm partition.
    #[arg(long, short = 'p')]
    partition: Option<String>,
    /// Slurm account to charge.
    #[arg(long, short = 'A')]
    account: Option<String>,
    /// CPUs to ask on each node (the worker's slots); default whole nodes.
    #[arg(long, value_name = "C", value_parser = clap::value_parser!(u32).range(1..))]
    cpus_per_node: Option<u32>,
    /// The zcluster binary on the nodes (default: this one's path).
    #[arg(long, value_name = "PATH")]
    remote_command: Option<PathBuf>,
}

impl AllocationArgs {
    /// The allocation to submit for the hub `hub`, with more sbatch
    /// arguments `extra`.
    pub fn request(&self, hub: &HubArg, extra: Vec<String>) -> anyhow::Result<AllocationRequest> {
        // Absolute: the job starts in whatever directory Slurm chooses.
        let connection = std::path::absolute(hub.path()).context("the connection file's path")?;
        let program = match &self.remote_command {
            Some(path) => path.clone(),
            None => std::env::current_exe().context("cannot find this zcluster binary")?,
        };
        Ok(AllocationRequest {
            nodes: self.nodes,
            time: self.time,
            partition: self.partition.clone(),
            account: self.account.clone(),
            cpus_per_node: self.cpus_per_node,
            name: "zcluster".into(),
            extra,
            worker: WorkerCommand {
                program,
                connection,
            },
        })
    }
}

/// How to reach the hosts: flags shared by `launch ssh` and `map --hosts`.
#[derive(Args, Clone, Debug)]
pub struct RemoteArgs {
    /// The ssh command line, as GNU parallel's --ssh, e.g.
    /// "ssh -F lab.conf" (BatchMode=yes is added: nothing asks a password).
    #[arg(long, value_name = "COMMAND", default_value = "ssh")]
    ssh: String,
    /// The zcluster to run on the hosts (must be this version).
    #[arg(long, value_name = "CMD", default_value = "zcluster")]
    remote_command: String,
    /// Where the connection file is copied on the hosts (mode 0600;
    /// relative to the remote home).
    #[arg(long, value_name = "DIR", default_value = ".zcluster/launched")]
    remote_dir: String,
}

impl RemoteArgs {
    fn options(&self) -> anyhow::Result<SshOptions> {
        let ssh = shlex::split(&self.ssh)
            .filter(|words| !words.is_empty())
            .ok_or_else(|| UsageError(format!("--ssh {:?}: not a command line", self.ssh)))?;
        Ok(SshOptions {
            ssh,
            remote_command: self.remote_command.clone(),
            local_command: std::env::current_exe()
                .context("cannot find this zcluster binary for `:` hosts")?,
            remote_dir: self.remote_dir.clone(),
            ..SshOptions::default()
        })
    }
}

#[derive(Args)]
pub struct SshArgs {
    /// The host file.
    hostfile: PathBuf,
    #[command(flatten)]
    hub: HubArg,
    #[command(flatten)]
    remote: RemoteArgs,
    /// The connection file's path is the same on every host (a shared
    /// file system): do not copy it.
    #[arg(long)]
    shared_fs: bool,
    /// Leave the workers running (nohup) and exit once they registered;
    /// `zcluster kill` stops them.
    #[arg(long)]
    detach: bool,
}

pub fn run(command: LaunchCommand) -> anyhow::Result<ExitCode> {
    match command {
        LaunchCommand::Ssh(args) => ssh(args),
        LaunchCommand::Slurm(args) => slurm(args),
    }
}

fn read_hosts(path: &std::path::Path) -> anyhow::Result<Vec<Host>> {
    hosts::read(path).map_err(|e| UsageError(e.to_string()).into())
}

fn slurm(args: SlurmArgs) -> anyhow::Result<ExitCode> {
    let request = args.allocation.request(&args.hub, args.extra)?;
    let slurm = Slurm;
    let mut out = super::stdout();
    if args.dry_run {
        write!(out, "{}", slurm.script(&request))?;
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    // The workers need the file: say so now rather than after the queue.
    args.hub.connection()?;
    match slurm.submit(&request) {
        Ok(job) => {
            writeln!(out, "{job}")?;
            out.flush()?;
            eprintln!(
                "zcluster: Slurm job {job} submitted ({} node(s)); its engines show in `zcluster status` as slurm:{job}/NODE",
                request.nodes
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("zcluster: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `ssh:NAME`, the label the workers of host file `path` register with.
fn origin_of_host_file(path: &std::path::Path) -> String {
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    format!("ssh:{name}")
}

/// Says so when remote hosts are given a hub that listens on loopback.
fn warn_unreachable(connection: &ConnectionInfo, hosts: &[Host]) {
    let loopback_hub = ["tcp://127.", "tcp://localhost:", "tcp://[::1]:", "ipc://"]
        .iter()
        .any(|prefix| connection.engines.starts_with(prefix));
    if loopback_hub {
        for host in hosts.iter().filter(|h| !h.is_loopback()) {
            eprintln!(
                "zcluster: warning: the hub listens on {}, which {host} cannot reach \
                 (start the hub with --ip 0.0.0.0 or an address of this machine)",
                connection.engines
            );
        }
    }
}

fn ssh(args: SshArgs) -> anyhow::Result<ExitCode> {
    let hosts = read_hosts(&args.hostfile)?;
    let connection = args.hub.connection()?;
    warn_unreachable(&connection, &hosts);
    let stop = super::stop_on_signals()?;
    let options = SshOptions {
        shared_fs: args.shared_fs,
        detach: args.detach,
        origin: Some(origin_of_host_file(&args.hostfile)),
        ..args.remote.options()?
    };
    // One line per event on stdout, flushed at once: a script (or a test)
    // reads them as they come.
    let report: ReportSink = Box::new(|report: &Report| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{report}");
        let _ = out.flush();
    });
    let mut launcher = Launcher::start(&hosts, &args.hub.path(), options, stop, report)?;
    let summary = launcher.wait_started();
    let running = summary.started + summary.unregistered;
    if running == 0 {
        launcher.stop();
        anyhow::bail!("no worker started on any of the {} host(s)", hosts.len());
    }
    if args.detach {
        eprintln!(
            "zcluster: {running} worker(s) left running; `zcluster kill --hub {}` stops them",
            args.hub.path().display()
        );
        drop(launcher);
        return Ok(if summary.failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    eprintln!("zcluster: keeping {running} worker(s) alive; Ctrl-C stops them");
    launcher.wait();
    launcher.stop();
    Ok(ExitCode::SUCCESS)
}

/// `zcluster map --hosts HOSTFILE`: the flags of a map's workers over ssh.
#[derive(Args, Clone, Debug)]
pub struct MapHostsArgs {
    /// Run the map on a worker per host of HOSTFILE, started over ssh for
    /// the length of the map (GNU parallel's -S / --sshloginfile).
    #[arg(long, value_name = "HOSTFILE", conflicts_with = "hub")]
    hosts: Option<PathBuf>,
    #[command(flatten)]
    remote: RemoteArgs,
}

/// For `map --hosts`: a hub the hosts reach and a worker on each, stopped
/// when dropped; `None` without `--hosts`. Reports go to stderr (stdout
/// carries results); only starts and failures are shown.
pub fn cluster_for_map(
    args: &MapHostsArgs,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Option<SshCluster>> {
    let Some(path) = &args.hosts else {
        return Ok(None);
    };
    let hosts = read_hosts(path)?;
    let options = SshOptions {
        origin: Some(origin_of_host_file(path)),
        ..args.remote.options()?
    };
    let report: ReportSink = Box::new(|report: &Report| {
        if !matches!(report.event, HostEvent::Stopped | HostEvent::Exited) {
            eprintln!("zcluster: {report}");
        }
    });
    Ok(Some(SshCluster::start(&hosts, options, stop, report)?))
}
