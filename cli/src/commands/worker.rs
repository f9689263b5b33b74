//! `zcluster worker --hub FILE [-j N]`: an engine serving a hub.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use std::time::SystemTime;

use zcluster::hub::engine::{run_engine, EngineError, EngineOptions, DEFAULT_MISSES};
use zcluster::launch::batch::BatchSystem;
use zcluster::launch::slurm::Slurm;

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
    /// When this worker's allocation ends, as a time from now (`20m`,
    /// `2h`) or an RFC 3339 time (`2026-12-07T18:00:00Z`): before then it
    /// drains (takes no task that would not finish in time, finishes what
    /// it runs, leaves cleanly, exits 0). Inside a Slurm job the default
    /// is the job's end (`squeue -o %L`).
    #[arg(long, value_name = "TIME", value_parser = parse_end_at)]
    end_at: Option<SystemTime>,
}

/// `--end-at`: a duration from now, or an RFC 3339 time.
fn parse_end_at(text: &str) -> Result<SystemTime, String> {
    if let Ok(after) = humantime::parse_duration(text) {
        return Ok(SystemTime::now() + after);
    }
    humantime::parse_rfc3339_weak(text).map_err(|_| {
        format!(
            "{text:?} is neither a duration (20m, 2h) nor an RFC 3339 time (2026-12-07T18:00:00Z)"
        )
    })
}

/// The end of the Slurm job this worker runs in, if it runs in one with a
/// time limit; a Slurm that does not answer is said, and the worker runs
/// without an end.
fn slurm_end() -> Option<SystemTime> {
    std::env::var_os("SLURM_JOB_ID")?;
    match Slurm.end_time() {
        Ok(end) => end,
        Err(e) => {
            eprintln!("zcluster: warning: cannot learn when this Slurm job ends ({e}); no drain before it");
            None
        }
    }
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
        end_at: args.end_at.or_else(slurm_end),
    };
    if let Some(end) = options.end_at {
        eprintln!(
            "zcluster: this worker drains before {}",
            humantime::format_rfc3339_seconds(end)
        );
    }
    match run_engine(&ctx, &options, &stop) {
        Ok(exit) => Ok(ExitCode::from(u8::try_from(exit.exit_code()).unwrap_or(1))),
        Err(EngineError::Stopped) => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e.into()),
    }
}
