//! `zcluster results JOB`: a job's recorded results, at any later time.

use std::io::Write;
use std::process::ExitCode;
use std::time::SystemTime;

use clap::Args;
use zcluster::exec::ExecOutcome;
use zcluster::hub::store::TaskState;
use zcluster::map::ChunkDone;
use zcluster::map::TaskRecord;

use super::{chunk_of, job_reports, HubArg, InputNumbers};

#[derive(Args)]
pub struct ResultsArgs {
    /// The job's id (`zcluster map --hub` prints it).
    job: u64,
    #[command(flatten)]
    hub: HubArg,
    /// Print one JSON object per input (as `zcluster map --results`).
    #[arg(long)]
    json: bool,
    /// Only failed inputs.
    #[arg(long)]
    failed: bool,
    /// Only each task's state, without outputs: its inputs' numbers (1
    /// for the first, as `{#}` and `resubmit --task`), state, engine,
    /// attempts, when it started, how long it ran, and its error.
    #[arg(long, conflicts_with_all = ["json", "failed"])]
    status_only: bool,
}

pub fn run(args: ResultsArgs) -> anyhow::Result<ExitCode> {
    let ctx = zmq::Context::new();
    let mut client = args.hub.client(&ctx)?;
    let reports = job_reports(&mut client, args.job, args.status_only)?;
    // Every write returns its error (no println!), so a closed stdout ends
    // the command quietly (see `Stdout`) instead of panicking.
    let mut out = super::stdout();
    if args.status_only {
        let ids: Vec<u64> = reports.iter().map(|r| r.id).collect();
        let numbers = InputNumbers::of(&mut client, args.job, &ids, true)?;
        let mut out = super::table(&mut out);
        writeln!(out, "INPUT\tSTATE\tENGINE\tATTEMPTS\tSTARTED\tTIME\tERROR")?;
        for r in &reports {
            let engine = r.engine.map_or_else(|| "-".to_string(), |e| e.to_string());
            let started = r.started.map_or_else(
                || "-".to_string(),
                |t| humantime::format_rfc3339_seconds(t).to_string(),
            );
            // How long it ran (or has been running) since it last started.
            let time = r
                .started
                .and_then(|s| {
                    r.completed
                        .unwrap_or_else(SystemTime::now)
                        .duration_since(s)
                        .ok()
                })
                .map_or_else(|| "-".to_string(), super::short_duration);
            writeln!(
                out,
                "{}\t{}\t{engine}\t{}\t{started}\t{time}\t{}",
                numbers.label(r.id),
                r.state,
                r.attempts,
                r.error.as_deref().unwrap_or("")
            )?;
        }
        out.flush()?;
        let done = reports.iter().all(|r| r.state == TaskState::Ok);
        return Ok(if done {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let mut records = Vec::new();
    let mut unfinished = 0;
    for report in reports {
        let Some(chunk) = chunk_of(&report) else {
            continue;
        };
        if !report.finished() {
            unfinished += chunk.tasks.len();
            continue;
        }
        let attempts = report.attempts;
        let done = ChunkDone::from_result(report.into_result());
        let seqs: Vec<u64> = chunk.tasks.iter().map(|t| t.seq).collect();
        let mut outcomes: std::collections::HashMap<u64, ExecOutcome> =
            done.outcomes_for(&seqs).into_iter().collect();
        for task in chunk.tasks {
            let Some(outcome) = outcomes.remove(&task.seq) else {
                unfinished += 1;
                continue;
            };
            let (input, raw_input) = task.shown_input();
            records.push(TaskRecord {
                seq: task.seq,
                input,
                raw_input,
                command: task.shown_command(),
                outcome,
                attempts,
                host: done.host.clone(),
                pid: done.pid,
                worker: done.worker.clone(),
            });
        }
    }
    // A retried input appears once per attempt (each a task of its own):
    // the last attempt is its result.
    let records: Vec<TaskRecord> = records
        .into_iter()
        .map(|r| (r.seq, r))
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_values()
        .collect();
    let mut failed = 0;
    for record in &records {
        let ok = record.status() == zcluster::map::TaskStatus::Ok;
        failed += u64::from(!ok);
        if args.failed && ok {
            continue;
        }
        if args.json {
            record.write_json_line(&mut out)?;
        } else {
            out.write_all(&record.outcome.stdout)?;
        }
    }
    out.flush()?;
    eprintln!(
        "zcluster: job {}: {} results, {failed} failed, {unfinished} unfinished",
        args.job,
        records.len()
    );
    Ok(if failed == 0 && unfinished == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
