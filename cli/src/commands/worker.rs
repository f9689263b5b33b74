//! `zcluster worker --hub FILE [-j N]`: an engine serving a hub.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use zcluster::hub::engine::{run_engine, EngineError, EngineOptions, DEFAULT_MISSES};

use super::HubArg;

#[derive(Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    hub: HubArg,
    /// Tasks at once (default: the CPUs Slurm gave this node inside a
    /// Slurm job, else the number of cores).
    #[arg(short, long, env = "ZCLUSTER_JOBS")]
    jobs: Option<usize>,
    /// What started this worker, shown by `zcluster status` (default:
    /// `slurm:JOB/NODE` inside a Slurm job).
    #[arg(long, value_name = "LABEL", env = "ZCLUSTER_ORIGIN")]
    origin: Option<String>,
}

/// Inside a Slurm job step: `slurm:JOB/NODE`.
fn slurm_origin() -> Option<String> {
    let job = std::env::var("SLURM_JOB_ID").ok()?;
    let node = std::env::var("SLURMD_NODENAME").unwrap_or_default();
    Some(format!("slurm:{job}/{node}"))
}

/// Inside a Slurm job step: the CPUs Slurm gave this node.
fn slurm_cpus() -> Option<usize> {
    std::env::var("SLURM_CPUS_ON_NODE").ok()?.parse().ok()
}

pub fn run(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let connection = args.hub.connection()?;
    let slots = args
        .jobs
        .or_else(slurm_cpus)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .context("cannot install signal handlers")?;
    }
    eprintln!(
        "zcluster: worker with {} serving {}",
        super::plural(slots as u64, "slot"),
        connection.engines
    );
    let ctx = zmq::Context::new();
    let options = EngineOptions {
        connection,
        slots,
        misses: DEFAULT_MISSES,
        handlers: Default::default(),
        origin: args.origin.or_else(slurm_origin),
    };
    match run_engine(&ctx, &options, &stop) {
        Ok(exit) => Ok(ExitCode::from(u8::try_from(exit.exit_code()).unwrap_or(1))),
        Err(EngineError::Stopped) => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e.into()),
    }
}
