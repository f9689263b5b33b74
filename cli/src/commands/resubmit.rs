//! `zcluster resubmit JOB`: run a job's failed tasks (or given ones) again.

use std::process::ExitCode;

use clap::Args;

use std::collections::HashMap;

use zcluster::hub::client::HubClient;

use super::{chunk_of, job_reports, HubArg, UsageError};

/// The hub's task ids of the inputs numbered `seqs` (the `seq` of
/// `zcluster results --json`): each input's last task.
fn task_ids(client: &mut HubClient, job: u64, seqs: &[u64]) -> anyhow::Result<Vec<u64>> {
    let reports = job_reports(client, job, false)?;
    let mut task_of_seq: HashMap<u64, u64> = HashMap::new();
    for report in &reports {
        let Some(chunk) = chunk_of(report) else {
            continue;
        };
        for task in chunk.tasks {
            // Reports come in task order: a later task for the same input
            // (a retry) wins.
            task_of_seq.insert(task.seq, report.id);
        }
    }
    let mut ids: Vec<u64> = Vec::new();
    for seq in seqs {
        let id = task_of_seq
            .get(seq)
            .ok_or_else(|| UsageError(format!("job {job} has no input {seq}")))?;
        if !ids.contains(id) {
            ids.push(*id);
        }
    }
    Ok(ids)
}

/// An input's number as a person gives it: 1 for the first, never 0.
fn parse_input_number(text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(0) => Err(
            "inputs are numbered from 1 (as {#} and the `seq` of `zcluster results --json`)".into(),
        ),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{text:?}: {e}")),
    }
}

#[derive(Args)]
pub struct ResubmitArgs {
    /// The job.
    job: u64,
    #[command(flatten)]
    hub: HubArg,
    /// Every failed task (the default).
    #[arg(long, conflicts_with = "task")]
    failed: bool,
    /// Only these inputs, by number: 1 for the first, as `{#}`, the `seq`
    /// of `zcluster results --json` and the INPUT of `--status-only` have
    /// it. Repeat it for several.
    #[arg(long, value_name = "N", value_parser = parse_input_number)]
    task: Vec<u64>,
}

pub fn run(args: ResubmitArgs) -> anyhow::Result<ExitCode> {
    let ctx = zmq::Context::new();
    let mut client = args.hub.client(&ctx)?;
    let ids = if args.task.is_empty() {
        None
    } else {
        Some(task_ids(&mut client, args.job, &args.task)?)
    };
    let n = client.resubmit(args.job, ids)?;
    eprintln!(
        "zcluster: resubmitted {n} task(s) of job {}; `zcluster results {}` shows them when done",
        args.job, args.job
    );
    Ok(ExitCode::SUCCESS)
}
