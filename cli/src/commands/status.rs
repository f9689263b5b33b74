//! `zcluster status`: the hub's engines and jobs.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use zcluster::hub::protocol::{ClientCall, Reply};

use super::HubArg;

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    hub: HubArg,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Also list the tasks each engine runs and each job has queued.
    #[arg(short, long)]
    verbose: bool,
}

pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let ctx = zmq::Context::new();
    let mut client = args.hub.client(&ctx)?;
    let Reply::Status(status) = client.call(&ClientCall::Status {
        verbose: args.verbose,
    })?
    else {
        anyhow::bail!("unexpected answer to a status call");
    };
    // Written through one lock with errors returned, not println!: a
    // closed stdout (`zcluster status | head -1`) ends the command quietly
    // (see `Stdout`) instead of panicking.
    let mut out = super::stdout();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&status)?)?;
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "ENGINE\tHOST\tPID\tSLOTS\tRUNNING\tCOMPLETED\tLAST HEARTBEAT"
    )?;
    for e in &status.engines {
        writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{} ago",
            e.id,
            e.host,
            e.pid,
            e.slots,
            e.running,
            e.completed,
            humantime::format_duration(Duration::from_millis(e.last_heartbeat.as_millis() as u64))
        )?;
    }
    if args.verbose {
        for e in &status.engines {
            let tasks: Vec<String> = e
                .running_tasks
                .iter()
                .map(|(job, id)| format!("{job}/{id}"))
                .collect();
            writeln!(out, "engine {} running: {}", e.id, tasks.join(" "))?;
        }
    }
    writeln!(out)?;
    writeln!(
        out,
        "JOB\tSUBMITTED\tDONE\tFAILED\tPENDING\tRUNNING\tTOTAL\tDESCRIPTION"
    )?;
    for j in &status.jobs {
        writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            j.id,
            humantime::format_rfc3339_seconds(j.submitted),
            j.done,
            j.failed,
            j.pending,
            j.running,
            j.total.map_or_else(|| "?".to_string(), |t| t.to_string()),
            j.description
        )?;
    }
    if args.verbose {
        for j in status.jobs.iter().filter(|j| !j.queued_tasks.is_empty()) {
            let tasks: Vec<String> = j.queued_tasks.iter().map(ToString::to_string).collect();
            writeln!(out, "job {} queued: {}", j.id, tasks.join(" "))?;
        }
    }
    writeln!(out)?;
    writeln!(out, "store: {}", status.store)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
