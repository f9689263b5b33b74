//! `zcluster status`: the hub's engines and jobs.

use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use zcluster::hub::client::HubClient;
use zcluster::hub::protocol::HubStatus;

use super::{HubArg, InputNumbers};

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
    /// A full-screen view that redraws in place (q or Ctrl-C leaves it).
    #[arg(long, conflicts_with_all = ["json", "verbose"])]
    watch: bool,
    /// How often --watch asks the hub.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration, value_name = "TIME", requires = "watch")]
    interval: Duration,
}

/// How to number the running and queued tasks of each job `status` lists
/// (a job that went meanwhile keeps the hub's ids: a status is a glance).
fn input_numbers(client: &mut HubClient, status: &HubStatus) -> HashMap<u64, InputNumbers> {
    let mut ids: HashMap<u64, Vec<u64>> = HashMap::new();
    for e in &status.engines {
        for &(job, id) in &e.running_tasks {
            ids.entry(job).or_default().push(id);
        }
    }
    for j in &status.jobs {
        ids.entry(j.id).or_default().extend(&j.queued_tasks);
    }
    ids.into_iter()
        .filter(|(_, ids)| !ids.is_empty())
        .filter_map(|(job, ids)| Some((job, InputNumbers::of(client, job, &ids, false).ok()?)))
        .collect()
}

pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    if args.watch {
        super::watch::run(args.hub.connection()?, args.hub.path(), args.interval)?;
        return Ok(ExitCode::SUCCESS);
    }
    let ctx = zmq::Context::new();
    let mut client = args.hub.client(&ctx)?;
    let status = client.status(args.verbose)?;
    // Written through one lock with errors returned, not println!: a
    // closed stdout (`zcluster status | head -1`) ends the command quietly
    // (see `Stdout`) instead of panicking.
    let mut out = super::stdout();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&status)?)?;
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = super::table(out);
    writeln!(
        out,
        "ENGINE\tHOST\tPID\tSLOTS\tRUNNING\tCOMPLETED\tLAST HEARTBEAT\tORIGIN\tSTATE"
    )?;
    for e in &status.engines {
        writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{} ago\t{}\t{}",
            e.id,
            e.host,
            e.pid,
            e.slots,
            e.running,
            e.completed,
            super::short_duration(Duration::from_millis(e.last_heartbeat.as_millis() as u64)),
            e.origin.as_deref().unwrap_or("-"),
            if e.draining { "draining" } else { "up" }
        )?;
    }
    for e in status.engines.iter().filter(|e| e.offer.is_some()) {
        let offer = e.offer.as_deref().unwrap_or_default();
        writeln!(out, "engine {} offers: {offer}; in use: {}", e.id, e.in_use)?;
    }
    // Tasks by their inputs' numbers (1 for the first), as everywhere else.
    let numbers = if args.verbose {
        input_numbers(&mut client, &status)
    } else {
        HashMap::new()
    };
    let label = |job: u64, id: u64| {
        numbers
            .get(&job)
            .map_or_else(|| id.to_string(), |n| n.label(id))
    };
    if args.verbose {
        for e in &status.engines {
            let tasks: Vec<String> = e
                .running_tasks
                .iter()
                .map(|&(job, id)| format!("{job}/{}", label(job, id)))
                .collect();
            writeln!(out, "engine {} running: {}", e.id, tasks.join(" "))?;
        }
    }
    writeln!(out)?;
    writeln!(
        out,
        "JOB\tSUBMITTED\tDONE\tFAILED\tPENDING\tRUNNING\tTOTAL\tCLIENT\tDESCRIPTION"
    )?;
    for j in &status.jobs {
        writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            j.id,
            humantime::format_rfc3339_seconds(j.submitted),
            j.done,
            j.failed,
            j.pending,
            j.running,
            j.total.map_or_else(|| "?".to_string(), |t| t.to_string()),
            super::client_mark(j.client_attached),
            j.description
        )?;
    }
    for j in &status.jobs {
        if let Some(request) = &j.request {
            writeln!(out, "job {} asks per task: {request}", j.id)?;
        }
        if let Some(why) = &j.waiting_for {
            writeln!(out, "job {} waits for {why}", j.id)?;
        }
    }
    if args.verbose {
        for j in status.jobs.iter().filter(|j| !j.queued_tasks.is_empty()) {
            let tasks: Vec<String> = j.queued_tasks.iter().map(|&id| label(j.id, id)).collect();
            writeln!(out, "job {} queued: {}", j.id, tasks.join(" "))?;
        }
    }
    writeln!(out)?;
    writeln!(out, "store: {}", status.store)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
