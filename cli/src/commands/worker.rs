//! `zcluster worker --hub FILE [-j N | --cpus N] [--gpus auto|none|LIST]
//! [--mem SIZE] [--resource NAME=LIST|NAME=AMOUNT]`: an engine serving a
//! hub, offering its resources to the hub's scheduler.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use zcluster::hub::engine::{run_engine, EngineError, EngineOptions, DEFAULT_MISSES};
use zcluster::resources::{detect_gpus, machine_cpus, machine_memory_bytes, ResourceOffer};

use super::{HubArg, UsageError};

#[derive(Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    hub: HubArg,
    /// Tasks at once, one core each (default: number of cores); the same
    /// as --cpus N.
    #[arg(short, long, env = "ZCLUSTER_JOBS", conflicts_with = "cpus")]
    jobs: Option<usize>,
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

/// What this worker offers, from its flags and the machine.
fn offer(args: &WorkerArgs) -> anyhow::Result<ResourceOffer> {
    let cpus = match (args.cpus, args.jobs) {
        (Some(cpus), _) => cpus,
        (None, Some(jobs)) => u32::try_from(jobs).unwrap_or(u32::MAX),
        (None, None) => machine_cpus(),
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

pub fn run(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let offer = offer(&args)?;
    let connection = args.hub.connection()?;
    let slots = offer.cpus.max(1) as usize;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .context("cannot install signal handlers")?;
    }
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
        resources: Some(offer),
        pin: args.pin,
    };
    match run_engine(&ctx, &options, &stop) {
        Ok(exit) => Ok(ExitCode::from(u8::try_from(exit.exit_code()).unwrap_or(1))),
        Err(EngineError::Stopped) => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e.into()),
    }
}
