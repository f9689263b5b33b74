//! `zcluster drain --engine ID`: an engine takes no new tasks, finishes
//! what it runs, gives back what it had not started and leaves cleanly
//! (exit 0): what a worker does by itself before its allocation ends.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use zcluster::hub::client::Killed;

use super::HubArg;

#[derive(Args)]
pub struct DrainArgs {
    #[command(flatten)]
    hub: HubArg,
    /// The engine to drain (repeat for more; ids as `zcluster status`
    /// lists them).
    #[arg(long, value_name = "ID", required = true)]
    engine: Vec<u64>,
}

pub fn run(args: DrainArgs) -> anyhow::Result<ExitCode> {
    let ctx = zmq::Context::new();
    let mut client = args.hub.client(&ctx)?;
    let Killed {
        acknowledged,
        silent,
    } = client
        .drain(args.engine.clone())
        .map_err(super::refusal_is_usage)?;
    let mut out = super::stdout();
    for engine in &acknowledged {
        writeln!(out, "{engine}")?;
    }
    out.flush()?;
    eprintln!(
        "zcluster: {} engine(s) draining; each leaves once its running tasks are done",
        acknowledged.len()
    );
    if !silent.is_empty() {
        eprintln!(
            "zcluster: engine(s) {} did not acknowledge the drain",
            super::id_list(&silent)
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
