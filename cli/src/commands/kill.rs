//! `zcluster kill`: tell workers to exit (or restart) after their current
//! request: through a hub (`--hub`, the default), or on a hub-less
//! cluster's command socket (`--command`).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use zcluster::commands::{CommandSender, Delivery};
use zcluster::hub::client::Killed;
use zcluster::socket::SocketKind;

use super::{socket_arg, HubArg};

fn through_hub(ctx: &zmq::Context, args: &KillArgs) -> anyhow::Result<ExitCode> {
    let mut client = args.hub.client(ctx)?;
    let engines = (!args.engine.is_empty()).then(|| args.engine.clone());
    let Killed {
        acknowledged,
        silent,
    } = client.kill(engines, args.restart)?;
    // Errors returned, not println!'s panic: see `Stdout`.
    let mut out = super::stdout();
    if args.json {
        let value = serde_json::json!({ "acknowledged": acknowledged, "silent": silent });
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
    } else {
        for engine in &acknowledged {
            writeln!(out, "{engine}")?;
        }
    }
    out.flush()?;
    let verb = if args.restart { "restart" } else { "kill" };
    eprintln!(
        "zcluster: {} engine(s) acknowledged the {verb}",
        acknowledged.len()
    );
    if !silent.is_empty() {
        eprintln!(
            "zcluster: engine(s) {} did not acknowledge it",
            super::id_list(&silent)
        );
    }
    // The hub refuses a kill naming an engine it does not know, so every
    // engine asked is either acknowledged or silent.
    Ok(if silent.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[derive(Args)]
pub struct KillArgs {
    #[command(flatten)]
    hub: HubArg,
    /// Only these engines (hub; default: all).
    #[arg(long, value_name = "ID")]
    engine: Vec<u64>,
    /// Hub-less: command socket to publish on, `tcp://broker:5559` (a
    /// forwarder's frontend) or `bind:tcp://*:5559` (workers connect to it).
    #[arg(long)]
    command: Option<String>,
    /// Collect acknowledgements here (e.g. `bind:tcp://*:5560`), so the
    /// command stops repeating once `--expect` workers answered.
    #[arg(long)]
    responses: Option<String>,
    /// Restart instead: workers exit with status 75 for a supervisor.
    #[arg(long)]
    restart: bool,
    /// Stop as soon as this many workers acknowledged.
    #[arg(long)]
    expect: Option<usize>,
    /// Print JSON: `{"acknowledged": [ids], "silent": [ids]}` (hub-less
    /// with --responses: one object per worker that acknowledged).
    #[arg(long)]
    json: bool,
    /// Keep repeating the command for this long (late subscribers get it too).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    wait: Duration,
}

pub fn run(args: KillArgs) -> anyhow::Result<ExitCode> {
    let ctx = zmq::Context::new();
    let Some(command) = &args.command else {
        return through_hub(&ctx, &args);
    };
    let publisher = socket_arg("--command", command, SocketKind::Pub)?;
    let responses = args
        .responses
        .as_deref()
        .map(|r| socket_arg("--responses", r, SocketKind::Pull))
        .transpose()?;
    let sender = CommandSender::new(&ctx, publisher, responses.map(Into::into))?;
    let delivery = Delivery {
        wait: args.wait,
        expect: args.expect,
        ..Delivery::default()
    };
    let (verb, acks) = if args.restart {
        ("restart", sender.send_restart(delivery)?)
    } else {
        ("kill", sender.send_kill(delivery)?)
    };
    if args.responses.is_some() {
        let mut out = super::stdout();
        if args.json {
            let acknowledged: Vec<serde_json::Value> = acks
                .iter()
                .map(|ack| {
                    serde_json::json!({
                        "host": ack.worker.host,
                        "pid": ack.worker.pid,
                        "worker": ack.worker.worker,
                    })
                })
                .collect();
            let value = serde_json::json!({ "acknowledged": acknowledged });
            writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
            out.flush()?;
        } else {
            let mut out = super::table(&mut out);
            for ack in &acks {
                writeln!(
                    out,
                    "{}\t{}\t{}",
                    ack.worker.host, ack.worker.pid, ack.worker.worker
                )?;
            }
            out.flush()?;
        }
        eprintln!("zcluster: {} worker(s) acknowledged the {verb}", acks.len());
        if args.expect.is_some_and(|n| acks.len() < n) {
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}
