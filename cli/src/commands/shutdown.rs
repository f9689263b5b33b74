//! `zcluster shutdown`: stop the hub, and its workers when asked.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use zcluster::hub::protocol::ClientCall;

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
    client.call_waiting(
        &ClientCall::Shutdown {
            workers: args.workers,
        },
        Duration::from_secs(15),
    )?;
    eprintln!("zcluster: hub shut down");
    Ok(ExitCode::SUCCESS)
}
