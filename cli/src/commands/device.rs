//! `zcluster device streamer|forwarder`: run a device until Ctrl-C or SIGTERM.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use zcluster::devices::{self, Device};
use zcluster::socket::SocketKind;

use super::socket_arg;

#[derive(Subcommand)]
pub enum DeviceCommand {
    /// PULL from the frontend, PUSH to the backend (requests or results).
    Streamer(DeviceArgs),
    /// SUB (everything) from the frontend, PUB to the backend (commands).
    Forwarder(DeviceArgs),
}

#[derive(Args)]
pub struct DeviceArgs {
    /// Frontend socket, e.g. `bind:tcp://*:5557`.
    #[arg(long)]
    frontend: String,
    /// Backend socket, e.g. `bind:tcp://*:5558`.
    #[arg(long)]
    backend: String,
    /// A PUB socket that gets a copy of every message, e.g. `bind:tcp://*:5599`.
    #[arg(long)]
    capture: Option<String>,
}

pub fn run(command: DeviceCommand) -> anyhow::Result<ExitCode> {
    let (args, device, (front, back)) = match command {
        DeviceCommand::Streamer(args) => (
            args,
            devices::streamer as fn(_, _) -> Device,
            (SocketKind::Pull, SocketKind::Push),
        ),
        DeviceCommand::Forwarder(args) => (
            args,
            devices::forwarder as fn(_, _) -> Device,
            (SocketKind::Sub, SocketKind::Pub),
        ),
    };
    let mut device = device(
        socket_arg("--frontend", &args.frontend, front)?,
        socket_arg("--backend", &args.backend, back)?,
    );
    if let Some(capture) = &args.capture {
        device = device.capture(socket_arg("--capture", capture, SocketKind::Pub)?);
    }
    // Register the signals before the device starts, so none is missed.
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("cannot install signal handlers")?;
    let ctx = zmq::Context::new();
    let handle = device.spawn(&ctx)?;
    eprintln!(
        "zcluster: device running: {} -> {}; Ctrl-C to stop",
        args.frontend, args.backend
    );
    let signal = signals.forever().next();
    tracing::info!(?signal, "stopping device");
    handle.stop()?;
    Ok(ExitCode::SUCCESS)
}
