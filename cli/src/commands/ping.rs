//! `zcluster ping`: ask workers who they are, through a hub (the default)
//! or on a hub-less cluster's command socket.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use zcluster::commands::{CommandSender, Delivery};
use zcluster::hub::client::Pong;
use zcluster::socket::SocketKind;

use super::{socket_arg, HubArg};

#[derive(Args)]
pub struct PingArgs {
    #[command(flatten)]
    hub: HubArg,
    /// Hub-less: command socket to publish on (see `zcluster kill --help`).
    #[arg(long, requires = "responses")]
    command: Option<String>,
    /// Hub-less: where replies arrive, e.g. `bind:tcp://*:5560`.
    #[arg(long, requires = "command")]
    responses: Option<String>,
    /// Collect replies for this long.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    wait: Duration,
    /// Stop as soon as this many workers answered.
    #[arg(long)]
    expect: Option<usize>,
    /// Print JSON instead of a table: `{"answered": [...], "silent": [...]}`.
    #[arg(long)]
    json: bool,
}

pub fn run(args: PingArgs) -> anyhow::Result<ExitCode> {
    let ctx = zmq::Context::new();
    let (replies, silent) = match (&args.command, &args.responses) {
        (Some(command), Some(responses)) => {
            let sender = CommandSender::new(
                &ctx,
                socket_arg("--command", command, SocketKind::Pub)?,
                Some(socket_arg("--responses", responses, SocketKind::Pull)?.into()),
            )?;
            let replies = sender.ping(Delivery {
                wait: args.wait,
                expect: args.expect,
                ..Delivery::default()
            })?;
            // Hub-less, nobody knows who should have answered.
            (replies, Vec::new())
        }
        _ => {
            let Pong { replies, silent } = args.hub.client(&ctx)?.ping()?;
            (replies, silent)
        }
    };
    // Errors returned, not println!'s panic: see `Stdout`.
    let mut out = super::stdout();
    if args.json {
        let answered: Vec<serde_json::Value> = replies
            .iter()
            .map(|r| {
                serde_json::json!({
                    "host": r.worker.host,
                    "pid": r.worker.pid,
                    "worker": r.worker.worker,
                    "up_s": r.worker.started.elapsed().unwrap_or_default().as_secs_f64(),
                    "requests": r.requests_handled,
                    "mean_s": r.mean_time.as_secs_f64(),
                })
            })
            .collect();
        let value = serde_json::json!({ "answered": answered, "silent": silent });
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
        out.flush()?;
    } else {
        let mut out = super::table(&mut out);
        writeln!(out, "HOST\tPID\tWORKER\tUP\tREQUESTS\tMEAN")?;
        for r in &replies {
            let up = r.worker.started.elapsed().unwrap_or_default();
            writeln!(
                out,
                "{}\t{}\t{}\t{}\t{}\t{}",
                r.worker.host,
                r.worker.pid,
                r.worker.worker,
                humantime::format_duration(Duration::from_secs(up.as_secs())),
                r.requests_handled,
                super::short_duration(r.mean_time),
            )?;
        }
        out.flush()?;
    }
    eprintln!("zcluster: {} worker(s) answered", replies.len());
    if !silent.is_empty() {
        eprintln!(
            "zcluster: engine(s) {} did not answer",
            super::id_list(&silent)
        );
    }
    if replies.is_empty() && silent.is_empty() && args.command.is_none() {
        eprintln!(
            "zcluster: no engine is registered with {}",
            args.hub.path().display()
        );
    }
    // Nobody answered: nothing is there to run work, which a script that
    // pings before it maps must be able to tell.
    Ok(
        if replies.is_empty()
            || !silent.is_empty()
            || args.expect.is_some_and(|n| replies.len() < n)
        {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        },
    )
}
