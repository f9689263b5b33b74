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
use zcluster::launch::cluster::SshCluster;
use zcluster::launch::hosts::{self, Host};
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
    }
}

fn read_hosts(path: &std::path::Path) -> anyhow::Result<Vec<Host>> {
    hosts::read(path).map_err(|e| UsageError(e.to_string()).into())
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
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .context("cannot install signal handlers")?;
    }
    let options = SshOptions {
        shared_fs: args.shared_fs,
        detach: args.detach,
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
    let report: ReportSink = Box::new(|report: &Report| {
        if !matches!(report.event, HostEvent::Stopped | HostEvent::Exited) {
            eprintln!("zcluster: {report}");
        }
    });
    Ok(Some(SshCluster::start(
        &hosts,
        args.remote.options()?,
        stop,
        report,
    )?))
}
