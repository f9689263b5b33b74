//! `zcluster map`: run a command once per input line, on every core, with
//! results in input order. The engine is `zcluster::map`; this file only turns
//! flags into `MapOptions`, reads the inputs, and writes what comes back.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use zcluster::hub::client::{AttachLength, HubBackend};
use zcluster::hub::embedded::EmbeddedCluster;
use zcluster::map::{run_map, Halt, InputLine, MapOptions, MapSummary, TaskStatus, DEFAULT_WINDOW};
use zcluster::template::CommandTemplate;

use super::{HubArg, UsageError};

/// Exit status after Ctrl-C or SIGTERM, as shells report SIGINT.
const INTERRUPTED_EXIT: u8 = 130;

/// Exit status when standard output was closed mid-map (`zcluster map …
/// | head -3`), as shells report a process a closed pipe killed (128 +
/// SIGPIPE). Not 0: inputs were left unrun.
const STDOUT_CLOSED_EXIT: u8 = 141;

#[derive(Args)]
#[command(
    after_help = "Replacement strings: {} input, {.} without extension, {/} basename, \
                  {//} dirname, {/.} basename without extension, {#} sequence number. \
                  With none, the input is appended as the last argument."
)]
pub struct MapArgs {
    /// File with one input per line; `-` or absent reads standard input.
    inputs: Option<PathBuf>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
    /// Tasks running at once (default: number of cores; with --hub, every
    /// free slot of the cluster, and with -j at most that many across it).
    #[arg(short, long)]
    jobs: Option<usize>,
    /// Print results in input order (the default).
    #[arg(long, overrides_with = "unordered")]
    keep_order: bool,
    /// Print results as they finish.
    #[arg(long)]
    unordered: bool,
    /// Also write one JSON object per input to FILE (JSON Lines).
    #[arg(long, value_name = "FILE")]
    results: Option<PathBuf>,
    /// Kill a task (its whole process group) after this long, e.g. `30s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Run a failed or timed-out task up to N more times.
    #[arg(long, default_value_t = 0, value_name = "N")]
    retries: u32,
    /// After the first failure: keep going, stop starting tasks, or kill all.
    #[arg(long, value_enum, default_value_t = HaltArg::Never)]
    halt: HaltArg,
    /// Inputs per request to a worker (1 suits commands; see README).
    #[arg(long, default_value_t = 1, value_name = "N")]
    chunksize: usize,
    /// Run the command with `sh -c`, inputs quoted.
    #[arg(long)]
    shell: bool,
    /// Never show a progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Run on the hub of this connection file instead of in this process
    /// (`-` for ~/.zcluster/hub.json; or set ZCLUSTER_HUB).
    #[arg(long, value_name = "FILE", env = "ZCLUSTER_HUB")]
    hub: Option<std::path::PathBuf>,
    /// Carry on job JOB of the hub, whose map was killed: give the same
    /// inputs, command and --chunksize. What the hub has is not sent again,
    /// finished results come from its store, the rest run now.
    #[arg(long, value_name = "JOB", requires = "hub")]
    attach: Option<u64>,
    /// With --attach: accept inputs that end before the job's recorded
    /// tasks (only their results are printed; the job's other tasks run
    /// on) or go on past those of a job whose map had sent them all (the
    /// rest become new tasks of the job). Without it, either is an error.
    #[arg(long, requires = "attach")]
    attach_any_length: bool,
    /// Most tasks held in memory at once (bounds memory on huge inputs).
    #[arg(long, default_value_t = DEFAULT_WINDOW, value_name = "TASKS", hide = true)]
    window: usize,
}

#[derive(Clone, Copy, ValueEnum)]
enum HaltArg {
    Never,
    Soon,
    Now,
}

pub fn run(args: MapArgs) -> anyhow::Result<ExitCode> {
    let template =
        CommandTemplate::parse(&args.command, args.shell).map_err(|e| UsageError(e.to_string()))?;
    let input_path = args.inputs.clone().filter(|p| p.as_os_str() != "-");
    let reader: Box<dyn BufRead> = match &input_path {
        Some(path) => Box::new(BufReader::new(File::open(path).map_err(|e| {
            UsageError(format!("cannot open input file {}: {e}", path.display()))
        })?)),
        None => Box::new(io::stdin().lock()),
    };
    if args.jobs == Some(0) || args.chunksize == 0 {
        return Err(UsageError("--jobs and --chunksize must be at least 1".into()).into());
    }
    let mut results = match &args.results {
        Some(path) => Some(BufWriter::new(File::create(path).map_err(|e| {
            UsageError(format!("cannot create {}: {e}", path.display()))
        })?)),
        None => None,
    };

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal while stopping exits at once.
        signal_hook::flag::register_conditional_shutdown(
            signal,
            i32::from(INTERRUPTED_EXIT),
            stop.clone(),
        )
        .context("cannot install signal handlers")?;
        signal_hook::flag::register(signal, stop.clone())
            .context("cannot install signal handlers")?;
    }
    let defaults = MapOptions::default();
    let options = MapOptions {
        jobs: args.jobs.unwrap_or(defaults.jobs),
        keep_order: !args.unordered,
        timeout: args.timeout,
        retries: args.retries,
        halt: match args.halt {
            HaltArg::Never => Halt::Never,
            HaltArg::Soon => Halt::Soon,
            HaltArg::Now => Halt::Now,
        },
        chunksize: args.chunksize,
        window: args.window,
        stop,
    };

    let progress = progress_bar(
        !args.no_progress && io::stderr().is_terminal(),
        input_path.clone(),
    );
    // With no hub, a hub and an engine start inside this process: the same
    // code path as a lab's cluster.
    let description = args.command.join(" ");
    // The hub itself retries, and stops dispatching at the first final
    // failure, so a halt never races a task that starts meanwhile.
    let halt_on_failure = options.halt != Halt::Never;
    let (cluster, mut backend) = match &args.hub {
        None => {
            let cluster = EmbeddedCluster::start(options.jobs)?;
            // The embedded cluster has `jobs` slots: no cap beyond them.
            let backend = HubBackend::open(
                cluster.client()?,
                description,
                options.retries,
                halt_on_failure,
                None,
            )?;
            (Some(cluster), backend)
        }
        Some(path) => {
            let hub = HubArg {
                hub: Some(path.clone()).filter(|p| p.as_os_str() != "-"),
            };
            let ctx = zmq::Context::new();
            let backend = match args.attach {
                Some(job) => {
                    let length = if args.attach_any_length {
                        AttachLength::Any
                    } else {
                        AttachLength::Same
                    };
                    let (backend, info) = HubBackend::attach(hub.client(&ctx)?, job, length)?;
                    let state = if info.live { "running" } else { "finished" };
                    eprintln!(
                        "zcluster: attached to job {job} on {} ({state}; {} tasks recorded)",
                        hub.path().display(),
                        info.known
                    );
                    backend
                }
                None => {
                    // `-j N` over a hub: at most N tasks of this job run at
                    // once across the cluster; without it, every free slot.
                    let cap = args.jobs.map(|j| u32::try_from(j).unwrap_or(u32::MAX));
                    let backend = HubBackend::open(
                        hub.client(&ctx)?,
                        description,
                        options.retries,
                        halt_on_failure,
                        cap,
                    )?;
                    eprintln!(
                        "zcluster: job {} on {}",
                        backend.job(),
                        hub.path().display()
                    );
                    backend
                }
            };
            (None, backend)
        }
    };
    let mut stdout = super::stdout();
    let mut stdout_closed = false;
    let stop = options.stop.clone();
    let mut failed = 0u64;
    let summary = run_map(lines(reader), &template, &options, &mut backend, |record| {
        if !record.outcome.stdout.is_empty() && !stdout_closed {
            match stdout
                .write_all(&record.outcome.stdout)
                .and_then(|()| stdout.flush())
            {
                Ok(()) => {}
                // Nobody reads the output any more: stop as after Ctrl-C
                // (nothing new starts, running tasks are killed), still
                // writing the results file, and exit quietly.
                Err(e) if super::is_stdout_closed(&e) => {
                    stdout_closed = true;
                    stop.store(true, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        if !record.outcome.stderr.is_empty() {
            progress.suspend(|| io::stderr().write_all(&record.outcome.stderr))?;
        }
        if let Some(out) = &mut results {
            record.write_json_line(out)?;
        }
        if record.status() != TaskStatus::Ok {
            failed += 1;
            progress.set_message(failed.to_string());
        }
        progress.inc(1);
        Ok(())
    })?;
    // Everything printed came from the store; a job the hub cannot close
    // is not finished there, and the map says so.
    backend.finish()?;
    drop(backend);
    drop(cluster);
    progress.finish_and_clear();
    if let Some(out) = &mut results {
        out.flush().context("cannot write the results file")?;
    }
    eprintln!("{}", summary_line(&summary, stdout_closed));
    Ok(if stdout_closed {
        ExitCode::from(STDOUT_CLOSED_EXIT)
    } else if summary.interrupted {
        ExitCode::from(INTERRUPTED_EXIT)
    } else if summary.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Input lines without their `\n` (or `\r\n`), read lazily; a line that is
/// not UTF-8 is passed on as bytes and becomes a failed task.
fn lines(mut reader: Box<dyn BufRead>) -> impl Iterator<Item = io::Result<InputLine>> {
    let mut buf = Vec::new();
    std::iter::from_fn(move || {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => None,
            Ok(_) => {
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                    if buf.last() == Some(&b'\r') {
                        buf.pop();
                    }
                }
                Some(Ok(
                    String::from_utf8(buf.clone()).map_err(|e| e.into_bytes())
                ))
            }
            Err(e) => Some(Err(e)),
        }
    })
}

/// A bar on stderr when it is a terminal, hidden otherwise. The total is
/// counted on a background thread for a file (standard input has none).
fn progress_bar(visible: bool, input: Option<PathBuf>) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} {rate} ETA {eta} failed: {msg}",
    )
    .map(|style| {
        // Whole tasks per second: indicatif's {per_sec} prints four decimals.
        style.with_key("rate", |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.0}/s", state.per_sec());
        })
    })
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message("0");
    bar.enable_steady_tick(Duration::from_millis(200));
    if let Some(path) = input {
        let bar = bar.clone();
        std::thread::spawn(move || {
            if let Ok(file) = File::open(path) {
                let total = BufReader::new(file).split(b'\n').count();
                bar.set_length(total as u64);
            }
        });
    }
    bar
}

fn summary_line(s: &MapSummary, stdout_closed: bool) -> String {
    let mut line = format!(
        "zcluster: {} tasks: {} ok, {} failed, {} timed out",
        s.total, s.ok, s.failed, s.timed_out
    );
    if s.cancelled > 0 {
        line += &format!(", {} cancelled", s.cancelled);
    }
    if s.not_run > 0 {
        line += &format!(", {} not run", s.not_run);
    }
    if s.unread {
        line += ", rest of the input not read";
    }
    line += &format!(" in {:.2}s ({:.0} tasks/s)", s.wall.as_secs_f64(), s.rate());
    if stdout_closed {
        line += "; stopped: standard output closed";
    } else if s.interrupted {
        line += "; interrupted";
    }
    if !s.failures.is_empty() {
        let listed: Vec<String> = s
            .failures
            .iter()
            .map(|(seq, input)| format!("#{seq} {input:?}"))
            .collect();
        let more = (s.total - s.ok).saturating_sub(s.failures.len() as u64);
        line += &format!("\nzcluster: failed: {}", listed.join(", "));
        if more > 0 {
            line += &format!(" and {more} more");
        }
    }
    line
}
