//! `zcluster worker --hub FILE [-j N | --cpus N] [--gpus auto|none|LIST]
//! [--mem SIZE] [--resource NAME=LIST|NAME=AMOUNT]`: an engine serving a
//! hub, offering its resources to the hub's scheduler.

use std::process::ExitCode;

use clap::Args;
use std::time::SystemTime;

use zcluster::hub::engine::{run_engine, EngineError, EngineOptions, EngineStop, DEFAULT_MISSES};
use zcluster::launch::batch::BatchSystem;
use zcluster::launch::slurm::Slurm;
use zcluster::resources::{detect_gpus, machine_cpus, machine_memory_bytes, ResourceOffer};

use super::{HubArg, UsageError};

#[derive(Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    hub: HubArg,
    /// Tasks at once, one core each; the same as --cpus N (default: the
    /// CPUs Slurm gave this node inside a Slurm job, else the number of
    /// cores).
    #[arg(short, long, env = "ZCLUSTER_JOBS", conflicts_with = "cpus")]
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
    /// Cores offered (default: this machine's).
    #[arg(long)]
    cpus: Option<u32>,
    /// GPUs offered: `auto` (the devices the driver shows, within
    /// CUDA_VISIBLE_DEVICES), `none`, or ids such as `0,1,3`.
    #[arg(long, default_value = "auto")]
    gpus: String,
    /// Memory offered, e.g. `64G` (default: this machine's).
    #[arg(long)]
    mem: Option<String>,
    /// Another resource: `NAME=LIST` (indexed, `licences=a,b`; one numeric
    /// id is `NAME=3,`) or `NAME=AMOUNT` (summed, `scratch=100`).
    /// Repeatable.
    #[arg(long = "resource", value_name = "NAME=LIST|NAME=AMOUNT")]
    resources: Vec<String>,
    /// Bind each task that asked for resources to the cores it was given.
    #[arg(long)]
    pin: bool,
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

/// What this worker offers, from its flags and the machine.
fn offer(args: &WorkerArgs) -> anyhow::Result<ResourceOffer> {
    let cpus = match (args.cpus, args.jobs) {
        (Some(cpus), _) => cpus,
        (None, Some(jobs)) => u32::try_from(jobs).unwrap_or(u32::MAX),
        (None, None) => slurm_cpus()
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or_else(machine_cpus),
    };
    if cpus == 0 {
        return Err(UsageError("--cpus 0: a worker offers one core at least".into()).into());
    }
    let detected = detect_gpus();
    let usage = |e: zcluster::resources::ResourceError| UsageError(e.to_string());
    let gpus = detected.resolve(&args.gpus).map_err(usage)?;
    if detected.driver.is_none() && !matches!(args.gpus.as_str(), "auto" | "none") {
        eprintln!(
            "zcluster: no GPU driver seen here; offering --gpus {} as given",
            args.gpus
        );
    }
    let gpus = (!gpus.is_empty()).then(|| gpus.join(","));
    let mem = args
        .mem
        .clone()
        .or_else(|| machine_memory_bytes().map(|b| b.to_string()));
    Ok(
        ResourceOffer::parse(cpus, gpus.as_deref(), mem.as_deref(), &args.resources)
            .map_err(usage)?,
    )
}

/// The engine's stop, given by the first SIGINT or SIGTERM (Ctrl-C,
/// `kill`, `systemctl stop`, `scancel`): the flag, then a byte that wakes
/// the engine at once from its sleep between heartbeats.
fn stop_on_signals() -> anyhow::Result<EngineStop> {
    use anyhow::Context as _;
    let stop = EngineStop::new();
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.flag().clone())
            .context("cannot install signal handlers")?;
        if let Some(pipe) = stop.wake_pipe().context("cannot make the stop's wake-up")? {
            signal_hook::low_level::pipe::register(signal, pipe)
                .context("cannot install signal handlers")?;
        }
    }
    Ok(stop)
}

pub fn run(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let offer = offer(&args)?;
    let connection = args.hub.connection()?;
    let slots = offer.cpus.max(1) as usize;
    let stop = stop_on_signals()?;
    eprintln!(
        "zcluster: worker with {} ({}) serving {}",
        super::plural(slots as u64, "slot"),
        offer.describe(),
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
        resources: Some(offer),
        pin: args.pin,
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
