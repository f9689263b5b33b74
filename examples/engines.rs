//! Many engines in one process, for `scripts/bench-scale.sh`: ENGINES real
//! engines ([`run_engine`], what `zcluster worker` runs), each on a thread
//! of its own with its own slots, its own DEALER and its own TCP connection
//! to the hub, registering, heartbeating and running tasks through the real
//! protocol. A thousand `zcluster worker` processes would measure the same
//! hub, but cost a thousand process images (a worker is ~10 MiB resident)
//! and a thousand spawns; threads keep the engines' side cheap, so what the
//! script reads is the hub's cost.
//!
//! ```sh
//! engines HUB_FILE --engines 100 --slots 1
//! ```
//!
//! Offers the `noop` handler `examples/pool_client.rs map` asks for. Runs
//! until the hub kills its engines (`zcluster shutdown --workers`), or a
//! signal ends the process. The engines' DEALERs share one ZeroMQ context,
//! which holds at most 1,023 sockets (libzmq's default): run at most a few
//! hundred engines per process (the script runs 250).

use std::path::PathBuf;
use std::thread;

use anyhow::Context as _;
use clap::Parser;
use zcluster::hub::connection::ConnectionInfo;
use zcluster::hub::engine::{run_engine, EngineError, EngineOptions, EngineStop, DEFAULT_MISSES};
use zcluster::pool::Registry;
use zcluster::resources::ResourceOffer;

#[derive(Parser)]
struct Args {
    /// The hub's connection file.
    hub: PathBuf,
    /// Engines to run.
    #[arg(long, default_value_t = 10)]
    engines: usize,
    /// Slots of each engine.
    #[arg(long, default_value_t = 1)]
    slots: u32,
    /// ZeroMQ I/O threads for the engines' connections.
    #[arg(long, default_value_t = 1)]
    io_threads: i32,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let connection = ConnectionInfo::read(&args.hub).context("reading the connection file")?;
    // Never set: the engines run until the hub kills them.
    let stop = EngineStop::new();
    let ctx = zmq::Context::new();
    ctx.set_io_threads(args.io_threads)?;
    let options = EngineOptions {
        connection,
        slots: args.slots as usize,
        misses: DEFAULT_MISSES,
        handlers: Registry::new()
            .handler("noop", |n: u64| Ok::<_, String>(n))
            .engine_handlers(),
        origin: Some(format!("bench-scale:{}", std::process::id())),
        end_at: None,
        resources: Some(ResourceOffer::cpus_only(args.slots)),
        pin: false,
    };
    let engines: Vec<_> = (0..args.engines)
        .map(|n| {
            let (ctx, options, stop) = (ctx.clone(), options.clone(), stop.clone());
            thread::Builder::new()
                .name(format!("engine-{n}"))
                .spawn(move || run_engine(&ctx, &options, &stop))
        })
        .collect::<Result<_, _>>()?;
    let mut failed = 0;
    for engine in engines {
        match engine.join() {
            Ok(Ok(_)) | Ok(Err(EngineError::Stopped)) => {}
            Ok(Err(e)) => {
                eprintln!("engines: an engine stopped: {e}");
                failed += 1;
            }
            Err(_) => {
                eprintln!("engines: an engine panicked");
                failed += 1;
            }
        }
    }
    anyhow::ensure!(failed == 0, "{failed} of {} engines failed", args.engines);
    Ok(())
}
