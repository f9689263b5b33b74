//! `zcluster job progress JOB`: one job's progress bar, to its end, for a
//! job started elsewhere (HyperQueue's `hq job progress`); the exit status
//! is the job's: 0 when every task succeeded, 1 when one failed or the job
//! was cancelled, 2 for a job the hub does not know.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use zcluster::hub::client::HubClient;
use zcluster::hub::protocol::{JobId, JobStatus};

use super::{HubArg, UsageError};

#[derive(Subcommand)]
pub enum JobCommand {
    /// Follow one job's progress to its end; exit as the job did.
    Progress(ProgressArgs),
}

#[derive(Args)]
pub struct ProgressArgs {
    /// The job (its id, as `zcluster status` lists it).
    job: JobId,
    #[command(flatten)]
    hub: HubArg,
    /// How often to ask the hub.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration, value_name = "TIME")]
    interval: Duration,
}

pub fn run(command: JobCommand) -> anyhow::Result<ExitCode> {
    match command {
        JobCommand::Progress(args) => progress(args),
    }
}

/// Where a job stands, from one look at the hub.
enum Look {
    /// Still running (or waiting for its client to close it).
    Running(JobStatus),
    /// Over: no longer running on the hub.
    Over(JobStatus),
}

/// One look: whether the job still runs (`CheckJob`), then its counts
/// from `status`. In that order: a job seen over has its final counts (the
/// other way round, one finishing between the two calls was reported with
/// the counts from before, as cancelled). An unknown job is a usage error.
fn look(client: &mut HubClient, job: JobId) -> anyhow::Result<Look> {
    let live = client.job_live(job)?;
    let status = client.status(false)?;
    let Some(counts) = status.jobs.into_iter().find(|j| j.id == job) else {
        return Err(UsageError(format!("no job {job} on this hub")).into());
    };
    Ok(if live {
        Look::Running(counts)
    } else {
        Look::Over(counts)
    })
}

fn bar_style(known_total: bool) -> ProgressStyle {
    let template = if known_total {
        "{spinner} job {prefix} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} ETA {eta} {msg}"
    } else {
        "{spinner} job {prefix} [{elapsed_precise}] {human_pos} finished {msg}"
    };
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

fn progress(args: ProgressArgs) -> anyhow::Result<ExitCode> {
    let ctx = zmq::Context::new();
    let mut client = args.hub.client(&ctx)?;
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(bar_style(false));
    bar.set_prefix(args.job.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut waiting_since: Option<std::time::Instant> = None;
    let over = loop {
        let looked = match look(&mut client, args.job) {
            Ok(looked) => looked,
            Err(e) if e.downcast_ref::<UsageError>().is_some() => {
                bar.finish_and_clear();
                return Err(e);
            }
            // A hub restarting or gone: say so and keep asking.
            Err(e) => {
                let since = *waiting_since.get_or_insert_with(std::time::Instant::now);
                bar.set_message(format!(
                    "(no answer from the hub for {}: {e})",
                    super::short_duration(since.elapsed())
                ));
                std::thread::sleep(args.interval);
                continue;
            }
        };
        waiting_since = None;
        let (counts, over) = match looked {
            Look::Running(counts) => (counts, false),
            Look::Over(counts) => (counts, true),
        };
        if let Some(total) = counts.total {
            if bar.length() != Some(total) {
                bar.set_length(total);
                bar.set_style(bar_style(true));
            }
        }
        bar.set_position(counts.done + counts.failed);
        bar.set_message(format!(
            "{} running, {} waiting, {} failed",
            counts.running, counts.pending, counts.failed
        ));
        if over {
            break counts;
        }
        std::thread::sleep(args.interval);
    };
    bar.finish_and_clear();
    let finished = over.done + over.failed;
    let complete = over.total.is_some_and(|t| finished >= t);
    let how = if !complete {
        "cancelled"
    } else if over.failed > 0 {
        "finished with failures"
    } else {
        "finished"
    };
    eprintln!(
        "zcluster: job {} {how}: {} ok, {} failed, of {}",
        over.id,
        over.done,
        over.failed,
        over.total.map_or_else(|| "?".into(), |t| t.to_string())
    );
    Ok(if complete && over.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
