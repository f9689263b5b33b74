//! `zcluster`: the command line. Thin by design: each subcommand parses its
//! flags into the library's plain option types and calls the library (see
//! `commands/`); nothing here knows ZeroMQ beyond descriptors.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;

/// Map work over a cluster of machines with ZeroMQ.
#[derive(Parser)]
#[command(name = "zcluster", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command once per input line, on every core, results in order.
    Map(commands::map::MapArgs),
    /// Run a streamer or forwarder device between clients and workers.
    #[command(subcommand)]
    Device(commands::device::DeviceCommand),
    /// Tell workers to exit (or restart) after their current request.
    Kill(commands::kill::KillArgs),
    /// Ask workers who they are and what they have done.
    Ping(commands::ping::PingArgs),
    /// Run a hub: engines register with it, clients submit jobs to it.
    Hub(commands::hub::HubArgs),
    /// Serve a hub as an engine with N slots.
    Worker(commands::worker::WorkerArgs),
    /// Start workers on other machines (over ssh) and keep them alive.
    #[command(subcommand)]
    Launch(commands::launch::LaunchCommand),
    /// Show a hub's engines and jobs.
    Status(commands::status::StatusArgs),
    /// Fetch a job's recorded results from a hub.
    Results(commands::results::ResultsArgs),
    /// Forget recorded tasks (a job, an engine's, or all completed).
    Purge(commands::purge::PurgeArgs),
    /// Run a job's failed tasks again.
    Resubmit(commands::resubmit::ResubmitArgs),
    /// Stop a hub (and its workers with --workers).
    Shutdown(commands::shutdown::ShutdownArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log file gets plain text, so a raw
        // ESC byte in it can only mean something went wrong.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Map(args) => commands::map::run(args),
        Command::Device(device) => commands::device::run(device),
        Command::Kill(args) => commands::kill::run(args),
        Command::Ping(args) => commands::ping::run(args),
        Command::Hub(args) => commands::hub::run(args),
        Command::Worker(args) => commands::worker::run(args),
        Command::Launch(command) => commands::launch::run(command),
        Command::Status(args) => commands::status::run(args),
        Command::Results(args) => commands::results::run(args),
        Command::Purge(args) => commands::purge::run(args),
        Command::Resubmit(args) => commands::resubmit::run(args),
        Command::Shutdown(args) => commands::shutdown::run(args),
    };
    match outcome {
        Ok(code) => code,
        // Whoever read our output has all they wanted.
        Err(e) if commands::stopped_by_closed_stdout(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zcluster: {e:#}");
            if e.downcast_ref::<commands::UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
