//! `zcluster map`: run a command once per input line, on every core, with
//! results in input order. The engine is `zcluster::map`; this file only turns
//! flags into `MapOptions`, reads the inputs, and writes what comes back.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use zcluster::exec::ExitKind;
use zcluster::hub::client::{halt_at_hub, AttachLength, HubBackend};
use zcluster::hub::embedded::EmbeddedCluster;
use zcluster::map::{
    run_map_with, Halt, HaltOn, MapError, MapOptions, MapSummary, Sources, TaskRecord, TaskStatus,
    Threshold, DEFAULT_WINDOW,
};
use zcluster::template::CommandTemplate;

use super::{map_inputs, plural, HubArg, UsageError};

/// Exit status after Ctrl-C or SIGTERM, as shells report SIGINT.
const INTERRUPTED_EXIT: u8 = 130;

/// Exit status when standard output was closed mid-map (`zcluster map …
/// | head -3`), as shells report a process a closed pipe killed (128 +
/// SIGPIPE). Not 0: inputs were left unrun.
const STDOUT_CLOSED_EXIT: u8 = 141;

#[derive(Args)]
#[command(
    after_help = "Replacement strings: {} input, {.} without extension, {/} basename, \
                  {//} dirname, {/.} basename without extension, {#} sequence number \
                  (1 for the first input), {%} slot in its engine; {N} {N.} {N/} {N//} {N/.} the same of column N \
                  (input source N, or with --colsep/--csv column N), {name} with --header :. \
                  With none, the input is appended as the last argument.\n\n\
                  Examples:\n  \
                  ls *.png | zcluster map -- convert {} {.}.jpg\n  \
                  zcluster map -- echo {1}-{2} ::: a b c ::: 1 2\n  \
                  find . -name '*.wav' -print0 | zcluster map -0 -j 4 --results r.jsonl -- flac {}\n  \
                  zcluster map --hub hub.json inputs.txt -- ./extract {} -o out/{/.}.npy"
)]
pub struct MapArgs {
    /// File with one input per line; `-` or absent reads standard input.
    inputs: Option<PathBuf>,
    /// The command and its arguments, after `--`; then, as GNU parallel
    /// writes them, input sources: `::: VALUE...` and `:::: FILE...` (`-`
    /// for standard input). Several sources give every combination of
    /// their values (the last varying fastest); see --link.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
    /// GNU parallel's options (boxed: clap's enum of subcommands stays small).
    #[command(flatten)]
    habits: Box<map_inputs::HabitArgs>,
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
    /// Kill a task (its whole process group) after this long: seconds
    /// (`30`, `0.5`), a duration (`30s`, `2m`), or a percentage of the
    /// median time of the tasks that succeeded so far (`200%`).
    #[arg(long, value_parser = parse_timeout, allow_hyphen_values = true, value_name = "TIME")]
    timeout: Option<TimeoutArg>,
    /// Run a failed or timed-out task up to N more times.
    #[arg(long, default_value_t = 0, value_name = "N")]
    retries: u32,
    /// After the first failure: keep going, stop starting tasks, or kill all.
    ///
    /// GNU parallel's forms: `soon,fail=3` (after 3 failures), `now,fail=10%`
    /// (after 10% of the inputs failed), `now,success=1` (once one task
    /// succeeded: exit 0). `soon` and `now` alone halt at the first failure.
    #[arg(long, default_value = "never", value_parser = parse_halt, value_name = "WHEN[,fail=N|N%|,success=N|N%]")]
    halt: (Halt, HaltOn),
    /// Inputs per request to a worker (1 suits commands; see README).
    #[arg(long, default_value_t = 1, value_name = "N")]
    chunksize: usize,
    /// Run the command with `sh -c`, inputs quoted.
    #[arg(long)]
    shell: bool,
    /// Inputs end with a NUL byte, not a newline, as `find -print0` and
    /// `xargs -0` have them: a file name may hold any byte but NUL.
    #[arg(short = '0', long)]
    null: bool,
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
    #[command(flatten)]
    hosts: super::launch::MapHostsArgs,
    #[command(flatten)]
    request: Box<super::request::RequestArgs>,
    /// Most tasks held in memory at once (bounds memory on huge inputs).
    #[arg(long, default_value_t = DEFAULT_WINDOW, value_name = "TASKS", hide = true)]
    window: usize,
}

/// `--timeout`: a fixed limit, or a percentage of the median task time.
#[derive(Clone, Copy, Debug)]
enum TimeoutArg {
    Fixed(Duration),
    OfMedian(u32),
}

/// Parses `--timeout`: a bare number is seconds, as in GNU parallel; zero or
/// less is refused (it would time out every task).
fn parse_timeout(text: &str) -> Result<TimeoutArg, String> {
    let text = text.trim();
    if let Some(percent) = text.strip_suffix('%') {
        return match percent.trim().parse::<u32>() {
            Ok(p) if p > 0 => Ok(TimeoutArg::OfMedian(p)),
            _ => Err(format!(
                "{text:?}: a percentage of the median task time must be a whole number above 0, e.g. 200%"
            )),
        };
    }
    let limit = match text.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds > 0.0 => {
            Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))?
        }
        Ok(_) => return Err(format!("{text:?}: the time limit must be above zero")),
        Err(_) => humantime::parse_duration(text).map_err(|e| {
            format!("{text:?}: {e} (give seconds, a duration such as 30s or 2m, or a percentage such as 200%)")
        })?,
    };
    if limit.is_zero() {
        return Err(format!("{text:?}: the time limit must be above zero"));
    }
    Ok(TimeoutArg::Fixed(limit))
}

/// `--halt`: `never`, `soon` or `now`, with GNU parallel's `,fail=N`,
/// `,fail=N%`, `,success=N` or `,success=N%`.
fn parse_halt(text: &str) -> Result<(Halt, HaltOn), String> {
    let (when, rule) = match text.split_once(',') {
        Some((when, rule)) => (when, Some(rule)),
        None => (text, None),
    };
    let halt = match when {
        "never" => Halt::Never,
        "soon" => Halt::Soon,
        "now" => Halt::Now,
        _ => return Err(format!("{when:?}: expected never, soon or now")),
    };
    let Some(rule) = rule else {
        return Ok((halt, HaltOn::default()));
    };
    if halt == Halt::Never {
        return Err("never takes no condition".into());
    }
    let expected = || format!("{rule:?}: expected fail=N, fail=N%, success=N or success=N%");
    let (what, amount) = rule.split_once('=').ok_or_else(expected)?;
    let threshold = match amount.strip_suffix('%') {
        Some(percent) => match percent.parse::<f64>() {
            Ok(p) if p > 0.0 && p <= 100.0 => Threshold::Percent(p),
            _ => return Err(format!("{amount:?}: a percentage above 0 and at most 100")),
        },
        None => match amount.parse::<u64>() {
            Ok(n) if n > 0 => Threshold::Count(n),
            _ => return Err(format!("{amount:?}: a count of at least 1")),
        },
    };
    let on = match what {
        "fail" => HaltOn::Failures(threshold),
        "success" => HaltOn::Successes(threshold),
        _ => return Err(expected()),
    };
    Ok((halt, on))
}

pub fn run(args: MapArgs) -> anyhow::Result<ExitCode> {
    let trailing = map_inputs::split_trailing(&args.command)?;
    let input_path = args
        .inputs
        .clone()
        .filter(|p| p.as_os_str() != "-" && trailing.sources.is_empty());
    let spec = map_inputs::spec(map_inputs::SourceFlags {
        file: args.inputs.as_ref(),
        sources: trailing.sources,
        link: args.habits.link,
        colsep: args.habits.colsep.as_deref(),
        csv: args.habits.csv,
        header: args.habits.header.as_deref(),
        null: args.null,
    })?;
    let reads_terminal = spec
        .sources
        .iter()
        .any(|s| matches!(s, zcluster::map::Source::Stdin));
    let inputs = Sources::open(spec).map_err(|e| UsageError(e.to_string()))?;
    let template = CommandTemplate::parse_with_names(&trailing.command, args.shell, inputs.names())
        .map_err(|e| UsageError(e.to_string()))?;
    if let (Some(asked), Some(columns)) = (template.max_column(), inputs.fixed_columns()) {
        if asked > columns {
            return Err(UsageError(format!(
                "the command uses {{{asked}}}, but each input has {} (one per input source; split lines with --colsep or --csv)",
                plural(columns as u64, "column")
            ))
            .into());
        }
    }
    if args.habits.dry_run {
        return map_inputs::dry_run(inputs, &template);
    }
    let (mut joblog, resume) = map_inputs::open_joblog(&args.habits)?;
    if args.jobs == Some(0) || args.chunksize == 0 {
        return Err(UsageError("--jobs and --chunksize must be at least 1".into()).into());
    }
    // `--results -`: the records are the output; task output goes to stderr.
    let results_to_stdout = args.results.as_ref().is_some_and(|p| p.as_os_str() == "-");
    let results = match &args.results {
        Some(_) if results_to_stdout => Some(ResultsLog::new(Box::new(super::SharedStdout))),
        Some(path) => Some(ResultsLog::new(Box::new(File::create(path).map_err(
            |e| UsageError(format!("cannot create {}: {e}", path.display())),
        )?))),
        None => None,
    };
    let results = Arc::new(Mutex::new(results));

    let stop = Arc::new(AtomicBool::new(false));
    watch_signals(stop.clone(), results.clone())?;
    let defaults = MapOptions::default();
    let mut options = MapOptions {
        jobs: args.jobs.unwrap_or(defaults.jobs),
        keep_order: !args.unordered,
        timeout: match args.timeout {
            Some(TimeoutArg::Fixed(limit)) => Some(limit),
            _ => None,
        },
        timeout_of_median: match args.timeout {
            Some(TimeoutArg::OfMedian(percent)) => Some(percent),
            _ => None,
        },
        retries: args.retries,
        halt: args.halt.0,
        halt_on: args.halt.1,
        chunksize: args.chunksize,
        window: args.window,
        stop,
        resume,
        task_env: map_inputs::task_env(&args.habits)?,
        // Set once it is known whether the tasks run elsewhere.
        task_wd: None,
    };

    let progress = progress_bar(
        !args.no_progress && io::stderr().is_terminal(),
        input_path.clone(),
        if args.null { b'\0' } else { b'\n' },
    );
    if reads_terminal && io::stdin().is_terminal() {
        progress.suspend(|| {
            eprintln!("zcluster: reading inputs from the terminal, one per line, until Ctrl-D")
        });
    }
    // With no hub, a hub and an engine start inside this process: the same
    // code path as a lab's cluster.
    // As the user would type it again: quoted where needed.
    let description = template.to_string();
    // The hub itself retries, prefetches nothing of a job that may halt,
    // and stops dispatching when a counted halt rule is met, so a halt
    // never races a task that starts meanwhile.
    let halt = halt_at_hub(options.halt, options.halt_on);
    // With --hosts, a hub here and a worker per host over ssh.
    let hosts = super::launch::cluster_for_map(&args.hosts, options.stop.clone())?;
    options.task_wd = map_inputs::task_wd(&args.habits, args.hub.is_some() || hosts.is_some())?;
    // `-j N` over a hub (or the hosts' hub): at most N tasks of this job run
    // at once across the cluster; without it, every free slot. An embedded
    // cluster has `jobs` slots: no cap beyond them.
    let cap = args.jobs.map(|j| u32::try_from(j).unwrap_or(u32::MAX));
    let (cluster, client, cap, hub) = match (&args.hub, &hosts) {
        (None, Some(hosts)) => (None, hosts.client()?, cap, None),
        (None, None) => {
            let cluster = EmbeddedCluster::start(options.jobs)?;
            let client = cluster.client()?;
            (Some(cluster), client, None, None)
        }
        (Some(path), _) => {
            let hub = HubArg {
                hub: Some(path.clone()).filter(|p| p.as_os_str() != "-"),
            };
            let client = hub.client(&zmq::Context::new())?;
            (None, client, cap, Some(hub))
        }
    };
    let mut backend = match (args.attach, &hub) {
        (Some(job), Some(hub)) => {
            let length = if args.attach_any_length {
                AttachLength::Any
            } else {
                AttachLength::Same
            };
            let (backend, info) = HubBackend::attach(client, job, length)?;
            let state = if info.live { "running" } else { "finished" };
            eprintln!(
                "zcluster: attached to job {job} on {} ({state}; {} tasks recorded)",
                hub.path().display(),
                info.known
            );
            backend
        }
        _ => {
            let backend = HubBackend::open_with_request(
                client,
                description,
                options.retries,
                halt,
                cap,
                args.request.request()?,
            )?;
            if let Some(hub) = &hub {
                eprintln!(
                    "zcluster: job {} on {}",
                    backend.job(),
                    hub.path().display()
                );
            }
            backend
        }
    };
    if let Some(hub) = hub {
        watch_for_engines(hub, progress.clone(), options.stop.clone());
    }
    let mut stdout: Box<dyn Write> = if results_to_stdout {
        Box::new(io::stderr())
    } else {
        Box::new(super::stdout())
    };
    let mut stdout_closed = false;
    let stop = options.stop.clone();
    let mut failed = 0u64;
    let timeout = args.timeout;
    let finished_results = results.clone();
    // GNU parallel writes `:` for this machine; over a hub, the worker's host.
    let local = args.hub.is_none() && hosts.is_none();
    let summary = run_map_with(
        inputs,
        &template,
        &options,
        &mut backend,
        |record| {
            if let Some(log) = lock(&finished_results).as_mut() {
                log.finished(record)?;
            }
            if let Some(file) = joblog.as_mut() {
                map_inputs::log_job(file, &template, record, local)?;
            }
            Ok(())
        },
        |record| {
            if !record.outcome.stdout.is_empty() && !stdout_closed {
                let mut write = || {
                    stdout
                        .write_all(&record.outcome.stdout)
                        .and_then(|()| stdout.flush())
                };
                // Through the bar: it is cleared, the output printed, and
                // the bar drawn again below it, so that on a terminal no
                // stale bar line stays between two lines of output.
                let written = if progress.is_hidden() {
                    write()
                } else {
                    progress.suspend(write)
                };
                match written {
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
            let failure = failure_line(&record, timeout);
            if !record.outcome.stderr.is_empty() || failure.is_some() {
                // The task's own stderr as one block, then why it failed.
                progress.suspend(|| {
                    let mut stderr = io::stderr().lock();
                    stderr.write_all(&record.outcome.stderr)?;
                    if let Some(line) = &failure {
                        writeln!(stderr, "{line}")?;
                    }
                    stderr.flush()
                })?;
            }
            if let Some(log) = lock(&results).as_mut() {
                match log.released(&record) {
                    Ok(()) => {}
                    // `--results -` and nobody reads it: as above.
                    Err(e) if super::is_stdout_closed(&e) => {
                        stdout_closed = true;
                        stop.store(true, Ordering::Relaxed);
                    }
                    Err(e) => return Err(e),
                }
            }
            if record.status() != TaskStatus::Ok {
                failed += 1;
                progress.set_message(failed.to_string());
            }
            progress.inc(1);
            Ok(())
        },
    )
    .map_err(|e| match e {
        // Refused before it ran anything in its place: a usage error.
        MapError::JoblogMismatch(mismatch) => UsageError(mismatch.to_string()).into(),
        other => anyhow::Error::from(other),
    })?;
    // Everything printed came from the store; a job the hub cannot close
    // is not finished there, and the map says so.
    backend.finish()?;
    drop(backend);
    drop(cluster);
    drop(hosts);
    progress.finish_and_clear();
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

/// `--results FILE`: one JSON line per task, each written (one `write`,
/// no buffer) the moment the task is handed out, so that a client killed
/// by SIGKILL leaves a valid JSON Lines file of everything handed out but
/// the line being written. A task that finished but waits for its turn
/// (input order) is kept here as its line, so that a second Ctrl-C, which
/// exits at once, still writes it (see [`watch_signals`]).
struct ResultsLog {
    file: Box<dyn Write + Send>,
    held: BTreeMap<u64, Vec<u8>>,
}

impl ResultsLog {
    /// A log writing to `file` (a file, or standard output for `-`).
    fn new(file: Box<dyn Write + Send>) -> Self {
        ResultsLog {
            file,
            held: BTreeMap::new(),
        }
    }

    /// A task finished: its line is ready.
    fn finished(&mut self, record: &TaskRecord) -> io::Result<()> {
        let mut line = Vec::new();
        record.write_json_line(&mut line)?;
        self.held.insert(record.seq, line);
        Ok(())
    }

    /// A task is handed out: its line goes to the file.
    fn released(&mut self, record: &TaskRecord) -> io::Result<()> {
        let line = match self.held.remove(&record.seq) {
            Some(line) => line,
            None => {
                let mut line = Vec::new();
                record.write_json_line(&mut line)?;
                line
            }
        };
        self.file.write_all(&line)
    }

    /// Exiting at once: the finished tasks not handed out yet, in input
    /// order, after the others.
    fn write_held(&mut self) {
        for line in std::mem::take(&mut self.held).into_values() {
            if self.file.write_all(&line).is_err() {
                return;
            }
        }
    }
}

/// The results log, whoever panicked while holding it.
fn lock(results: &Mutex<Option<ResultsLog>>) -> MutexGuard<'_, Option<ResultsLog>> {
    results
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// SIGINT and SIGTERM, on a thread of their own: the first sets `stop` (the
/// map stops starting tasks, kills running ones, writes what finished and
/// exits 130); a second exits at once with 130, after writing to the
/// results file every finished task it did not have yet.
fn watch_signals(
    stop: Arc<AtomicBool>,
    results: Arc<Mutex<Option<ResultsLog>>>,
) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("cannot install signal handlers")?;
    std::thread::Builder::new()
        .name("zcluster-signals".into())
        .spawn(move || {
            let mut seen = 0u32;
            for _ in signals.forever() {
                seen += 1;
                if seen == 1 {
                    stop.store(true, Ordering::SeqCst);
                    continue;
                }
                // Held until the exit: no line is left half written.
                let mut log = lock(&results);
                if let Some(log) = log.as_mut() {
                    log.write_held();
                }
                signal_hook::low_level::exit(i32::from(INTERRUPTED_EXIT));
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

/// The line on stderr that says why a task did not succeed (`None` for one
/// that did, or that a halt or Ctrl-C cancelled: the summary lists those).
fn failure_line(record: &TaskRecord, timeout: Option<TimeoutArg>) -> Option<String> {
    let reason = match &record.outcome.exit {
        ExitKind::Exited(0) | ExitKind::Cancelled => return None,
        ExitKind::TimedOut => match timeout {
            Some(TimeoutArg::Fixed(limit)) => {
                format!("timed out after {}", humantime::format_duration(limit))
            }
            Some(TimeoutArg::OfMedian(percent)) => {
                format!("timed out (over {percent}% of the median task time)")
            }
            None => "timed out".to_string(),
        },
        ExitKind::SpawnFailed(message) => {
            let program = record.command.first().map_or("", String::as_str);
            if program.contains(' ') && message.contains("No such file") {
                format!(
                    "{message} (a program name with a space: to run a command line, pass --shell)"
                )
            } else {
                message.clone()
            }
        }
        other => other.to_string(),
    };
    Some(format!(
        "zcluster: task #{} {:?} failed: {reason}",
        record.seq, record.input
    ))
}

/// How often the map asks a hub with no engine whether one came.
const ENGINE_POLL: Duration = Duration::from_millis(500);

/// Over a hub, says on stderr (at once, so well within 2 s) when no engine
/// is registered to run anything, and again when one arrives: otherwise a
/// map on an empty cluster just sits there. Asks on a connection of its
/// own, on a thread that ends when an engine is there (or the map stops).
fn watch_for_engines(hub: HubArg, progress: ProgressBar, stop: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new()
        .name("zcluster-engines".into())
        .spawn(move || {
            let ctx = zmq::Context::new();
            let Ok(mut client) = hub.client(&ctx) else {
                return;
            };
            let mut waiting = false;
            while !stop.load(Ordering::Relaxed) {
                let Ok(status) = client.status(false) else {
                    return;
                };
                let engines = status.engines;
                if let Some(first) = engines.first() {
                    if waiting {
                        let slots: u32 = engines.iter().map(|e| e.slots).sum();
                        progress.suspend(|| {
                            eprintln!(
                                "zcluster: engine {} registered ({} on {}): tasks are starting",
                                first.id,
                                plural(u64::from(slots), "slot"),
                                first.host
                            )
                        });
                    }
                    return;
                }
                if !waiting {
                    waiting = true;
                    progress.suspend(|| {
                        eprintln!(
                            "zcluster: waiting for an engine: none registered with {} (start one with `zcluster worker --hub {}`)",
                            hub.path().display(),
                            hub.path().display()
                        )
                    });
                }
                std::thread::sleep(ENGINE_POLL);
            }
        });
    if let Err(e) = spawned {
        tracing::debug!(error = %e, "cannot watch for engines");
    }
}

/// A bar on stderr when it is a terminal, hidden otherwise. Until the total
/// is known (a file's lines are counted on a background thread; standard
/// input has none), it shows what is known: tasks done, their rate and the
/// time so far, not `0/0 ETA 0s`.
fn progress_bar(visible: bool, input: Option<PathBuf>, end: u8) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(bar_style(
        "{spinner} [{elapsed_precise}] {human_pos} done {rate} failed: {msg}",
    ));
    bar.set_message("0");
    bar.enable_steady_tick(Duration::from_millis(200));
    if let Some(path) = input {
        let bar = bar.clone();
        std::thread::spawn(move || {
            if let Ok(file) = File::open(path) {
                let total = BufReader::new(file).split(end).count();
                bar.set_length(total as u64);
                bar.set_style(bar_style(
                    "{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} {rate} ETA {eta} failed: {msg}",
                ));
            }
        });
    }
    bar
}

fn bar_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .map(|style| {
            // Whole tasks per second: indicatif's {per_sec} prints four decimals.
            style.with_key(
                "rate",
                |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.0}/s", state.per_sec());
                },
            )
        })
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

fn summary_line(s: &MapSummary, stdout_closed: bool) -> String {
    let mut line = format!(
        "zcluster: {}: {} ok, {} failed, {} timed out",
        plural(s.total, "task"),
        s.ok,
        s.failed,
        s.timed_out
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
    if s.skipped > 0 {
        line += &format!(", {} skipped (in the joblog)", s.skipped);
    }
    line += &format!(" in {:.2}s ({:.0} tasks/s)", s.wall.as_secs_f64(), s.rate());
    if stdout_closed {
        line += "; stopped: standard output closed";
    } else if s.interrupted {
        line += "; interrupted";
    } else if s.halted_on_success {
        line += "; halted: enough tasks succeeded (--halt)";
    }
    for (what, listed, all) in [
        ("failed", &s.failures, s.failed + s.timed_out),
        ("cancelled", &s.cancelled_tasks, s.cancelled),
    ] {
        if listed.is_empty() {
            continue;
        }
        let names: Vec<String> = listed
            .iter()
            .map(|(seq, input)| format!("#{seq} {input:?}"))
            .collect();
        line += &format!("\nzcluster: {what}: {}", names.join(", "));
        let more = all.saturating_sub(listed.len() as u64);
        if more > 0 {
            line += &format!(" and {more} more");
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_as_gnu_parallel_spells_them() {
        assert!(
            matches!(parse_timeout("1"), Ok(TimeoutArg::Fixed(d)) if d == Duration::from_secs(1))
        );
        assert!(
            matches!(parse_timeout("0.5"), Ok(TimeoutArg::Fixed(d)) if d == Duration::from_millis(500))
        );
        assert!(
            matches!(parse_timeout("2m"), Ok(TimeoutArg::Fixed(d)) if d == Duration::from_secs(120))
        );
        assert!(matches!(
            parse_timeout("200%"),
            Ok(TimeoutArg::OfMedian(200))
        ));
        for bad in ["0", "0s", "-1", "-2s", "0%", "x%", "soon", "nan", "inf"] {
            assert!(parse_timeout(bad).is_err(), "{bad} accepted");
        }
    }
}
