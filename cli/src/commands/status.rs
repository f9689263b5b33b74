//! `zcluster status`: the hub's engines and jobs.

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
}

pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let ctx = zmq::Context::new();
    let mut client = args.hub.client(&ctx)?;
    let Reply::Status(status) = client.call(&ClientCall::Status)? else {
        anyhow::bail!("unexpected answer to a status call");
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("ENGINE\tHOST\tPID\tSLOTS\tRUNNING\tCOMPLETED\tLAST HEARTBEAT");
    for e in &status.engines {
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{} ago",
            e.id,
            e.host,
            e.pid,
            e.slots,
            e.running,
            e.completed,
            humantime::format_duration(Duration::from_millis(e.last_heartbeat.as_millis() as u64))
        );
    }
    println!();
    println!("JOB\tSUBMITTED\tDONE\tFAILED\tPENDING\tRUNNING\tTOTAL\tDESCRIPTION");
    for j in &status.jobs {
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            j.id,
            humantime::format_rfc3339_seconds(j.submitted),
            j.done,
            j.failed,
            j.pending,
            j.running,
            j.total.map_or_else(|| "?".to_string(), |t| t.to_string()),
            j.description
        );
    }
    println!();
    println!("store: {}", status.store);
    Ok(ExitCode::SUCCESS)
}
