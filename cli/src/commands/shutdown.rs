//! `zcluster shutdown`: stop the hub, and its workers when asked.

use std::process::ExitCode;

use clap::Args;

use super::HubArg;

#[derive(Args)]
pub struct ShutdownArgs {
    #[command(flatten)]
    hub: HubArg,
    /// Kill the workers first.
    #[arg(long)]
    workers: bool,
}

pub fn run(args: ShutdownArgs) -> anyhow::Result<ExitCode> {
    let ctx = zmq::Context::new();
    let mut client = args.hub.client(&ctx)?;
    client.shutdown(args.workers)?;
    eprintln!("zcluster: hub shut down");
    Ok(ExitCode::SUCCESS)
}
