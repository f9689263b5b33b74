//! `zcluster purge`: forget recorded tasks.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use zcluster::hub::protocol::PurgeTarget;

use super::HubArg;

#[derive(Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["job", "engine", "all"])))]
pub struct PurgeArgs {
    #[command(flatten)]
    hub: HubArg,
    /// Purge one job (refused while it has unfinished tasks).
    #[arg(long)]
    job: Option<u64>,
    /// Purge the completed tasks one engine ran.
    #[arg(long)]
    engine: Option<u64>,
    /// Purge every completed task.
    #[arg(long)]
    all: bool,
    /// Print JSON on stdout: `{"purged": N}`.
    #[arg(long)]
    json: bool,
}

pub fn run(args: PurgeArgs) -> anyhow::Result<ExitCode> {
    let target = match (args.job, args.engine) {
        (Some(job), _) => PurgeTarget::Job(job),
        (None, Some(engine)) => PurgeTarget::Engine(engine),
        (None, None) => PurgeTarget::AllCompleted,
    };
    let ctx = zmq::Context::new();
    let n = args.hub.client(&ctx)?.purge(target)?;
    if args.json {
        let mut out = super::stdout();
        writeln!(out, "{}", serde_json::json!({ "purged": n }))?;
        out.flush()?;
    }
    eprintln!("zcluster: purged {n} task(s)");
    Ok(ExitCode::SUCCESS)
}
