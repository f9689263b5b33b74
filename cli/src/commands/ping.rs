//! `zcluster ping`: ask workers who they are, for clusters without a hub.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use zcluster::commands::{CommandSender, Delivery};
use zcluster::socket::SocketKind;

use super::socket_arg;

#[derive(Args)]
pub struct PingArgs {
    /// Command socket to publish on (see `zcluster kill --help`).
    #[arg(long)]
    command: String,
    /// Where replies arrive, e.g. `bind:tcp://*:5560`.
    #[arg(long)]
    responses: String,
    /// Collect replies for this long.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    wait: Duration,
    /// Stop as soon as this many workers answered.
    #[arg(long)]
    expect: Option<usize>,
}

pub fn run(args: PingArgs) -> anyhow::Result<ExitCode> {
    let ctx = zmq::Context::new();
    let sender = CommandSender::new(
        &ctx,
        socket_arg("--command", &args.command, SocketKind::Pub)?,
        Some(socket_arg("--responses", &args.responses, SocketKind::Pull)?.into()),
    )?;
    let replies = sender.ping(Delivery {
        wait: args.wait,
        expect: args.expect,
        ..Delivery::default()
    })?;
    println!("HOST\tPID\tWORKER\tUP\tREQUESTS\tMEAN");
    for r in &replies {
        let up = r.worker.started.elapsed().unwrap_or_default();
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}",
            r.worker.host,
            r.worker.pid,
            r.worker.worker,
            humantime::format_duration(Duration::from_secs(up.as_secs())),
            r.requests_handled,
            humantime::format_duration(r.mean_time),
        );
    }
    eprintln!("zcluster: {} worker(s) answered", replies.len());
    Ok(if args.expect.is_some_and(|n| replies.len() < n) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
