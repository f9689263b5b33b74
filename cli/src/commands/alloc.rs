//! `zcluster alloc add slurm ...`: allocations on demand for a running hub
//! (submitted while its jobs have queued tasks, released when idle);
//! `alloc list` and `alloc events` show what it did and why. The work is
//! `zcluster::launch::alloc`.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use zcluster::launch::alloc::{state_path, AllocPolicy, AllocState, Allocator};
use zcluster::launch::slurm::Slurm;

use super::launch::AllocationArgs;
use super::HubArg;

#[derive(Subcommand)]
pub enum AllocCommand {
    /// Keep a policy: submit allocations while the hub's jobs have queued
    /// tasks, release them when idle. Runs until Ctrl-C (allocations are
    /// left as they are); started again, it carries on the allocations it
    /// had and submits nothing twice.
    #[command(subcommand)]
    Add(AddCommand),
    /// Every allocation submitted: its job id, state and Slurm's reason.
    List(ShowArgs),
    /// What the allocator did and why, oldest first.
    Events(ShowArgs),
}

#[derive(Subcommand)]
pub enum AddCommand {
    /// Allocations through Slurm (sbatch).
    #[command(after_help = "Examples:\n  \
                  zcluster alloc add slurm --hub hub.json --nodes 1 --time 2h --max-nodes 8 --idle-timeout 5m\n  \
                  zcluster alloc add slurm --hub hub.json --nodes 2 --time 1h --partition short -- --qos=debug")]
    Slurm(SlurmPolicyArgs),
}

#[derive(Args)]
pub struct SlurmPolicyArgs {
    #[command(flatten)]
    hub: HubArg,
    #[command(flatten)]
    allocation: AllocationArgs,
    /// Nodes allocated or pending at most.
    #[arg(long, value_name = "N", default_value_t = 1)]
    max_nodes: u32,
    /// Allocations pending at once at most.
    #[arg(long, value_name = "N", default_value_t = 1)]
    backlog: u32,
    /// Release an allocation whose workers ran nothing for this long.
    #[arg(long, value_name = "TIME", default_value = "5m", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// How often to look at the hub and Slurm.
    #[arg(long, value_name = "TIME", default_value = "5s", value_parser = humantime::parse_duration)]
    poll: Duration,
    /// More sbatch arguments, after `--`.
    #[arg(last = true, value_name = "SBATCH ARGS")]
    extra: Vec<String>,
}

#[derive(Args)]
pub struct ShowArgs {
    #[command(flatten)]
    hub: HubArg,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(command: AllocCommand) -> anyhow::Result<ExitCode> {
    match command {
        AllocCommand::Add(AddCommand::Slurm(args)) => add_slurm(args),
        AllocCommand::List(args) => list(args),
        AllocCommand::Events(args) => events(args),
    }
}

fn add_slurm(args: SlurmPolicyArgs) -> anyhow::Result<ExitCode> {
    args.hub.connection()?;
    let request = args.allocation.request(&args.hub, args.extra)?;
    if request.nodes > args.max_nodes {
        return Err(super::UsageError(format!(
            "--nodes {} is more than --max-nodes {}: nothing could ever be submitted",
            request.nodes, args.max_nodes
        ))
        .into());
    }
    let policy = AllocPolicy {
        nodes: request.nodes,
        max_nodes: args.max_nodes,
        backlog: args.backlog,
        idle_timeout: args.idle_timeout,
    };
    let connection = std::path::absolute(args.hub.path()).context("the connection file's path")?;
    let allocator = Allocator {
        batch: Box::new(Slurm),
        request,
        state_path: state_path(&connection),
        connection,
        poll: args.poll,
    };
    let stop = super::stop_on_signals()?;
    eprintln!(
        "zcluster: allocating through Slurm on demand (state in {}); Ctrl-C stops",
        allocator.state_path.display()
    );
    allocator.run(policy, &stop)?;
    Ok(ExitCode::SUCCESS)
}

fn read_state(hub: &HubArg) -> anyhow::Result<Option<AllocState>> {
    let path = state_path(&std::path::absolute(hub.path()).context("the connection file's path")?);
    Ok(AllocState::read(&path)?)
}

fn list(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let state = read_state(&args.hub)?;
    let mut out = super::stdout();
    if args.json {
        let allocations = state.map(|s| s.allocations).unwrap_or_default();
        writeln!(out, "{}", serde_json::to_string_pretty(&allocations)?)?;
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    let Some(state) = state else {
        eprintln!("zcluster: no allocator has run for this hub (zcluster alloc add slurm ...)");
        return Ok(ExitCode::SUCCESS);
    };
    let mut out = super::table(out);
    writeln!(out, "JOB\tNODES\tSUBMITTED\tSTATE\tREASON")?;
    for a in &state.allocations {
        let released = if a.released { " (released)" } else { "" };
        writeln!(
            out,
            "{}\t{}\t{}\t{}{released}\t{}",
            a.job,
            a.nodes,
            humantime::format_rfc3339_seconds(a.submitted),
            a.state,
            if a.reason.is_empty() { "-" } else { &a.reason }
        )?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn events(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let events = read_state(&args.hub)?.map(|s| s.events).unwrap_or_default();
    let mut out = super::stdout();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&events)?)?;
    } else {
        for e in &events {
            writeln!(
                out,
                "{} {}{}",
                humantime::format_rfc3339_seconds(e.at),
                e.job
                    .as_deref()
                    .map_or_else(String::new, |j| format!("job {j}: ")),
                e.what
            )?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
