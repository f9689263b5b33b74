//! `zcluster`: the command line. Thin by design: each subcommand parses its
//! flags into the library's plain option types and calls the library (see
//! `commands/`); nothing here knows ZeroMQ beyond descriptors.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;

/// Run a command once per input, on every core here or on a lab's
/// machines, with results in input order and a record of every task.
#[derive(Parser)]
#[command(
    name = "zcluster",
    version,
    about,
    long_about = None,
    after_help = "Start with `zcluster map`: it needs no set-up. For a cluster, run \
                  `zcluster hub` once, `zcluster worker` on each machine, then \
                  `zcluster map --hub`.\n\n\
                  Examples:\n  \
                  ls *.png | zcluster map -- convert {} {.}.jpg\n  \
                  zcluster hub --ip 0.0.0.0                          # on the head machine\n  \
                  zcluster worker --hub ~/.zcluster/hub.json -j 8    # on each other one\n  \
                  zcluster map --hub ~/.zcluster/hub.json inputs.txt -- ./extract {} -o out/{/.}.npy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// In the order a person meets them: map; then a cluster's hub and
/// workers; then looking at, rerunning and cleaning up jobs; then the
/// hub-less toolkit's devices.
#[derive(Subcommand)]
enum Command {
    /// Run a command once per input line, on every core, results in order.
    Map(commands::map::MapArgs),
    /// Start a hub: the machine that hands out tasks and records results.
    #[command(after_help = "Examples:\n  \
                  zcluster hub                        # this machine only, ~/.zcluster/hub.json\n  \
                  zcluster hub --ip 0.0.0.0           # for workers on other machines\n  \
                  zcluster hub --store /data/tasks.sqlite --connection-file lab.json")]
    Hub(commands::hub::HubArgs),
    /// Lend this machine's cores to a hub, until killed or told to stop.
    #[command(after_help = "Examples:\n  \
                  zcluster worker --hub hub.json          # one slot per core\n  \
                  zcluster worker --hub hub.json -j 4     # four tasks at once")]
    Worker(commands::worker::WorkerArgs),
    /// Start workers on other machines: over ssh (kept alive), or through Slurm.
    #[command(
        subcommand,
        after_help = "Examples:\n  \
                  zcluster launch ssh hosts.txt --hub hub.json             # foreground: Ctrl-C stops them\n  \
                  zcluster launch ssh hosts.txt --hub hub.json --detach    # until zcluster kill\n  \
                  zcluster launch slurm --hub hub.json --nodes 4 --time 2h # one sbatch, a worker per node"
    )]
    Launch(commands::launch::LaunchCommand),
    /// Show a hub's workers (engines) and jobs: what runs, what waits.
    #[command(after_help = "Examples:\n  \
                  zcluster status --hub hub.json\n  \
                  zcluster status --hub hub.json --verbose    # which inputs run where\n  \
                  zcluster status --hub hub.json --json")]
    Status(commands::status::StatusArgs),
    /// Follow what happens on a hub, one JSON line per event.
    ///
    /// Engines joining and dying, jobs opening and ending, tasks failing,
    /// retried, copied.
    #[command(after_help = "Examples:\n  \
                  zcluster events --hub hub.json\n  \
                  zcluster events --hub hub.json --job 4 | jq -r 'select(.event == \"task_failed\") | .reason'")]
    Events(commands::events::EventsArgs),
    /// Follow one job started elsewhere (its progress bar) to its end.
    #[command(
        subcommand,
        after_help = "Examples:\n  \
                  zcluster job progress 4 --hub hub.json && echo all done\n  \
                  zcluster job progress 4 --hub hub.json --interval 2s   # ask the hub less often"
    )]
    Job(commands::job::JobCommand),
    /// Serve a live web page of the cluster, and its JSON API.
    #[command(after_help = "Examples:\n  \
                  zcluster dashboard --hub hub.json                  # http://127.0.0.1:8787/\n  \
                  zcluster dashboard --hub hub.json --listen 0.0.0.0:8787 --allow-control")]
    Dashboard(commands::dashboard::DashboardArgs),
    /// Print a job's results again, later, from the hub's record.
    #[command(after_help = "Examples:\n  \
                  zcluster results 4 --hub hub.json > out.txt     # the job's output, in order\n  \
                  zcluster results 4 --hub hub.json --failed --json\n  \
                  zcluster results 4 --hub hub.json --status-only # each input's state and times")]
    Results(commands::results::ResultsArgs),
    /// Run a job's failed inputs again (or the ones named).
    #[command(after_help = "Examples:\n  \
                  zcluster resubmit 4 --hub hub.json              # every failed input\n  \
                  zcluster resubmit 4 --hub hub.json --task 3 --task 7")]
    Resubmit(commands::resubmit::ResubmitArgs),
    /// Check which workers are there and answering, and how busy they were.
    #[command(after_help = "Examples:\n  \
                  zcluster ping --hub hub.json\n  \
                  zcluster ping --hub hub.json --json")]
    Ping(commands::ping::PingArgs),
    /// Stop workers (or restart them) once their current task is done.
    #[command(after_help = "Examples:\n  \
                  zcluster kill --hub hub.json                # every worker\n  \
                  zcluster kill --hub hub.json --engine 3     # one of them\n  \
                  zcluster kill --hub hub.json --restart      # exit 75, for a supervisor")]
    Kill(commands::kill::KillArgs),
    /// Drain engines: no new tasks, finish the running ones, leave cleanly.
    #[command(after_help = "Examples:\n  \
                  zcluster drain --hub hub.json --engine 3\n  \
                  zcluster drain --hub hub.json --engine 3 --engine 4   # several")]
    Drain(commands::drain::DrainArgs),
    /// Allocations on demand: batch jobs submitted while work waits.
    ///
    /// Submits allocations while work waits, releases idle ones; lists them
    /// and what happened to each.
    #[command(
        subcommand,
        after_help = "Examples:\n  \
                  zcluster alloc add slurm --hub hub.json --nodes 1 --time 2h --max-nodes 8 --idle-timeout 5m\n  \
                  zcluster alloc list --hub hub.json\n  \
                  zcluster alloc events --hub hub.json"
    )]
    Alloc(commands::alloc::AllocCommand),
    /// Forget finished jobs and tasks the hub recorded, to free its store.
    #[command(after_help = "Examples:\n  \
                  zcluster purge --hub hub.json --job 4\n  \
                  zcluster purge --hub hub.json --all         # every finished task")]
    Purge(commands::purge::PurgeArgs),
    /// Stop a hub (and its workers with --workers).
    #[command(after_help = "Examples:\n  \
                  zcluster shutdown --hub hub.json\n  \
                  zcluster shutdown --hub hub.json --workers")]
    Shutdown(commands::shutdown::ShutdownArgs),
    /// Relay tasks or commands between machines without a hub (toolkit).
    #[command(
        subcommand,
        after_help = "Examples:\n  \
                  zcluster device streamer --frontend bind:tcp://*:5557 --backend bind:tcp://*:5558\n  \
                  zcluster device forwarder --frontend bind:tcp://*:5559 --backend bind:tcp://*:5560"
    )]
    Device(commands::device::DeviceCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(commands::completions::CompletionsArgs),
    /// Print a manual page as roff (`zcluster man map | man -l -`).
    Man(commands::man::ManArgs),
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
        Command::Drain(args) => commands::drain::run(args),
        Command::Alloc(command) => commands::alloc::run(command),
        Command::Ping(args) => commands::ping::run(args),
        Command::Hub(args) => commands::hub::run(args),
        Command::Worker(args) => commands::worker::run(args),
        Command::Launch(command) => commands::launch::run(command),
        Command::Status(args) => commands::status::run(args),
        Command::Events(args) => commands::events::run(args),
        Command::Job(command) => commands::job::run(command),
        Command::Dashboard(args) => commands::dashboard::run(args),
        Command::Results(args) => commands::results::run(args),
        Command::Purge(args) => commands::purge::run(args),
        Command::Resubmit(args) => commands::resubmit::run(args),
        Command::Shutdown(args) => commands::shutdown::run(args),
        Command::Completions(args) => {
            commands::completions::run(args, <Cli as clap::CommandFactory>::command())
        }
        Command::Man(args) => commands::man::run(args, <Cli as clap::CommandFactory>::command()),
    };
    match outcome {
        Ok(code) => code,
        // Whoever read our output has all they wanted.
        Err(e) if commands::stopped_by_closed_stdout(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zcluster: {e:#}");
            if e.downcast_ref::<commands::UsageError>().is_some() || commands::asked_for_unknown(&e)
            {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
