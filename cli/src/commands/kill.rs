//! `zcluster kill`: tell workers to exit (or restart) after their current
//! request, for clusters without a hub.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use zcluster::commands::{CommandSender, Delivery};
use zcluster::socket::SocketKind;

use super::socket_arg;

#[derive(Args)]
pub struct KillArgs {
    /// Command socket to publish on: `tcp://broker:5559` (a forwarder's
    /// frontend) or `bind:tcp://*:5559` (workers connect to it).
    #[arg(long)]
    command: String,
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
    /// Keep repeating the command for this long (late subscribers get it too).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    wait: Duration,
}

pub fn run(args: KillArgs) -> anyhow::Result<ExitCode> {
    let ctx = zmq::Context::new();
    let publisher = socket_arg("--command", &args.command, SocketKind::Pub)?;
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
        for ack in &acks {
            println!(
                "{}\t{}\t{}",
                ack.worker.host, ack.worker.pid, ack.worker.worker
            );
        }
        eprintln!("zcluster: {} worker(s) acknowledged the {verb}", acks.len());
        if args.expect.is_some_and(|n| acks.len() < n) {
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}
