//! `zcluster resubmit JOB`: run a job's failed tasks (or given ones) again.

use std::process::ExitCode;

use clap::Args;
use zcluster::hub::protocol::{ClientCall, Reply};

use super::HubArg;

#[derive(Args)]
pub struct ResubmitArgs {
    /// The job.
    job: u64,
    #[command(flatten)]
    hub: HubArg,
    /// Every failed task (the default).
    #[arg(long, conflicts_with = "task")]
    failed: bool,
    /// Only these tasks (ids as `zcluster results --json` shows them).
    #[arg(long, value_name = "ID")]
    task: Vec<u64>,
}

pub fn run(args: ResubmitArgs) -> anyhow::Result<ExitCode> {
    let ids = (!args.task.is_empty()).then(|| args.task.clone());
    let ctx = zmq::Context::new();
    let call = ClientCall::Resubmit { job: args.job, ids };
    let Reply::Resubmitted(n) = args.hub.client(&ctx)?.call(&call)? else {
        anyhow::bail!("unexpected answer to a resubmit call");
    };
    eprintln!(
        "zcluster: resubmitted {n} task(s) of job {}; `zcluster results {}` shows them when done",
        args.job, args.job
    );
    Ok(ExitCode::SUCCESS)
}
