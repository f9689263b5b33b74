//! The worker of the divide-and-conquer trio: pull numbers, push squares.
//!
//! Run the trio as three processes (any order; the ventilator waits a second
//! for workers to connect):
//!
//! ```text
//! cargo run --example sink -- --count 1000
//! cargo run --example worker            # as many as you like
//! cargo run --example ventilator -- --count 1000
//! ```
//!
//! A worker exits 0 on a kill command and 75 on a restart command
//! (`zcluster kill --command bind:tcp://*:5559 [--restart]`).

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use zcluster::socket::{FutureSocket, SocketKind};
use zcluster::worker::{typed, Worker};

#[derive(Parser)]
struct Args {
    /// Where requests come from (PULL).
    #[arg(long, default_value = "tcp://127.0.0.1:5557")]
    requests: String,
    /// Where results go (PUSH).
    #[arg(long, default_value = "tcp://127.0.0.1:5558")]
    results: String,
    /// Where commands come from (SUB), or `none`.
    #[arg(long, default_value = "tcp://127.0.0.1:5559")]
    commands: String,
    /// Where command replies go (PUSH), or `none`.
    #[arg(long, default_value = "tcp://127.0.0.1:5560")]
    responses: String,
    /// The worker's name in results and replies.
    #[arg(long)]
    name: Option<String>,
    /// Exit with an error when nothing arrives for this long (e.g. `30s`).
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
}

/// The work: square a number, failing (not panicking) on overflow.
fn square(n: u64) -> Result<u64, String> {
    n.checked_mul(n)
        .ok_or_else(|| format!("overflow squaring {n}"))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("worker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<u8> {
    let ctx = zmq::Context::new();
    let mut builder = Worker::builder(
        FutureSocket::parse(&args.requests, SocketKind::Pull)?,
        FutureSocket::parse(&args.results, SocketKind::Push)?,
    );
    if args.commands != "none" {
        builder = builder.commands(FutureSocket::parse(&args.commands, SocketKind::Sub)?);
    }
    if args.responses != "none" {
        builder = builder.responses(FutureSocket::parse(&args.responses, SocketKind::Push)?);
    }
    if let Some(name) = args.name {
        builder = builder.name(name);
    }
    if let Some(timeout) = args.timeout {
        builder = builder.receive_timeout(timeout);
    }
    let mut worker = builder.build(&ctx, typed(square))?;
    let exit = worker.run()?;
    Ok(u8::try_from(exit.exit_code()).unwrap_or(1))
}
