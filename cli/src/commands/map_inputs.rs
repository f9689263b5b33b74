//! `zcluster map`'s input sources as GNU parallel writes them, after the
//! command: `-- echo {1} {2} ::: a b :::: file.txt`. clap hands over every
//! word after `--` as the command (it cannot know where a command ends);
//! here the words are split at the first `:::` or `::::` into the command
//! and its sources.

use std::path::PathBuf;

use zcluster::map::joblog::{self, Joblog, Resume, JOBLOG_HEADER, LOCAL_HOST};
use zcluster::map::{Source, SourceSpec, Split};

use super::UsageError;

/// The marker of a source of values.
const ARGS_MARKER: &str = ":::";

/// The marker of sources that are files (`-` for standard input).
const FILES_MARKER: &str = "::::";

/// `zcluster map`'s options that GNU parallel users reach for.
#[derive(clap::Args, Debug)]
pub struct HabitArgs {
    /// Pair the input sources value by value instead of combining them
    /// (a shorter source starts again from its first value).
    #[arg(long)]
    pub link: bool,
    /// Split each input into columns {1} {2} ... where REGEX matches.
    #[arg(long, value_name = "REGEX")]
    pub colsep: Option<String>,
    /// Read each input as CSV: columns {1} {2} ..., quotes understood.
    #[arg(long)]
    pub csv: bool,
    /// `:`: the first line of each source names its columns, used as {name}.
    #[arg(long, value_name = ":")]
    pub header: Option<String>,
    /// Print each command as it would run, quoted for a shell, one per
    /// line, and run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Write GNU parallel's joblog to FILE: a line per finished task (Seq,
    /// Host, Starttime, JobRuntime, Send, Receive, Exitval, Signal, Command).
    #[arg(long, value_name = "FILE")]
    pub joblog: Option<PathBuf>,
    /// Skip the inputs the --joblog already has (carry on a killed map),
    /// and add to it.
    #[arg(long)]
    pub resume: bool,
    /// Like --resume, but run again the inputs that failed.
    #[arg(long)]
    pub resume_failed: bool,
    /// Resume from a joblog whose commands another command made.
    #[arg(long)]
    pub resume_any_command: bool,
    /// Carry variable NAME (its value here) or NAME=VALUE to every task,
    /// over a hub too (nothing else of this environment goes to a remote
    /// worker). Repeatable.
    #[arg(long = "env", value_name = "NAME[=VALUE]")]
    pub env: Vec<String>,
    /// Run every task in DIR (over a hub, the default is this directory:
    /// a lab's machines share their file systems). A DIR a worker does not
    /// have fails that task.
    #[arg(long, value_name = "DIR")]
    pub wd: Option<PathBuf>,
}

/// `--env`: the variables to carry, each `NAME=VALUE` or `NAME` (its value
/// here; one not set is a usage error rather than an empty value).
pub fn task_env(
    args: &HabitArgs,
) -> Result<Vec<(serde_bytes::ByteBuf, serde_bytes::ByteBuf)>, UsageError> {
    use std::os::unix::ffi::OsStrExt as _;
    args.env
        .iter()
        .map(|spec| {
            let (name, value) = match spec.split_once('=') {
                Some((name, value)) => (name, value.as_bytes().to_vec()),
                None => {
                    let value = std::env::var_os(spec).ok_or_else(|| {
                        UsageError(format!(
                            "--env {spec}: {spec} is not set here (give --env {spec}=VALUE)"
                        ))
                    })?;
                    (spec.as_str(), value.as_bytes().to_vec())
                }
            };
            if name.is_empty() || name.contains('\0') {
                return Err(UsageError(format!("--env {spec:?}: no variable name")));
            }
            Ok((
                serde_bytes::ByteBuf::from(name.as_bytes().to_vec()),
                serde_bytes::ByteBuf::from(value),
            ))
        })
        .collect()
}

/// `--wd`, made absolute against this directory; over a hub without it,
/// this directory; locally without it, none (the tasks run here anyway).
pub fn task_wd(args: &HabitArgs, remote: bool) -> Result<Option<serde_bytes::ByteBuf>, UsageError> {
    use std::os::unix::ffi::OsStrExt as _;
    if args.wd.is_none() && !remote {
        return Ok(None);
    }
    let here = std::env::current_dir()
        .map_err(|e| UsageError(format!("cannot tell the current directory: {e}")))?;
    let dir = match &args.wd {
        Some(dir) => here.join(dir),
        None => here,
    };
    Ok(Some(serde_bytes::ByteBuf::from(
        dir.as_os_str().as_bytes().to_vec(),
    )))
}

/// Opens `--joblog` (to add to it with `--resume`, else anew with its
/// header line) and reads it back for `--resume`.
pub fn open_joblog(
    args: &HabitArgs,
) -> Result<(Option<std::fs::File>, Option<std::sync::Arc<Resume>>), UsageError> {
    let resuming = args.resume || args.resume_failed;
    let Some(path) = &args.joblog else {
        if resuming {
            return Err(UsageError(
                "--resume and --resume-failed need --joblog FILE: the record of what already ran"
                    .into(),
            ));
        }
        return Ok((None, None));
    };
    let cannot =
        |e: std::io::Error| UsageError(format!("cannot write joblog {}: {e}", path.display()));
    let resume = if resuming {
        let joblog = Joblog::read(path).map_err(|e| UsageError(e.to_string()))?;
        Some(std::sync::Arc::new(Resume {
            joblog,
            path: path.clone(),
            failed_again: args.resume_failed,
            any_command: args.resume_any_command,
        }))
    } else {
        None
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(resuming)
        .write(true)
        .truncate(!resuming)
        .open(path)
        .map_err(cannot)?;
    let empty = file.metadata().map_err(cannot)?.len() == 0;
    if empty {
        use std::io::Write as _;
        file.write_all(format!("{JOBLOG_HEADER}\n").as_bytes())
            .map_err(cannot)?;
    }
    Ok((Some(file), resume))
}

/// Writes one finished task's joblog line, in one `write` (no buffer), so a
/// map killed at any moment leaves whole lines of every task it logged.
/// Inputs that never became a command (and so never ran) are not logged.
pub fn log_job(
    file: &mut std::fs::File,
    template: &zcluster::template::CommandTemplate,
    record: &zcluster::map::TaskRecord,
    local: bool,
) -> std::io::Result<()> {
    use std::io::Write as _;
    if record.command.is_empty() {
        return Ok(());
    }
    let host = if local {
        LOCAL_HOST
    } else {
        record.host.as_str()
    };
    match joblog::line(
        record.seq,
        host,
        &record.outcome,
        &template.shell_line(&record.command),
    ) {
        Some(line) => file.write_all(line.as_bytes()),
        None => Ok(()),
    }
}

/// `--dry-run`: each input's command as a shell would run it, on standard
/// output; an input that cannot become a command is said on stderr as the
/// failure it would be (exit 1), the others printed. Nothing starts: no
/// hub, no engine.
pub fn dry_run(
    inputs: zcluster::map::Sources,
    template: &zcluster::template::CommandTemplate,
) -> anyhow::Result<std::process::ExitCode> {
    use std::io::Write as _;
    let mut stdout = super::stdout();
    let mut failed = 0u64;
    for (input, seq) in inputs.zip(1u64..) {
        let input = input.map_err(|e| anyhow::anyhow!("cannot read inputs: {e}"))?;
        let rendered = match &input.columns {
            Ok(columns) => template
                .render_columns(columns, seq)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match rendered {
            Ok(argv) => {
                let written = writeln!(stdout, "{}", template.shell_line(&argv));
                match written {
                    Ok(()) => {}
                    Err(e) if super::is_stdout_closed(&e) => break,
                    Err(e) => return Err(e.into()),
                }
            }
            Err(reason) => {
                failed += 1;
                eprintln!(
                    "zcluster: task #{seq} {:?} failed: {reason}",
                    String::from_utf8_lossy(&input.text)
                );
            }
        }
    }
    match stdout.flush() {
        Err(e) if !super::is_stdout_closed(&e) => return Err(e.into()),
        _ => {}
    }
    Ok(if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

/// The words after `--`, split into the command and its sources.
#[derive(Debug)]
pub struct Trailing {
    /// The command template.
    pub command: Vec<String>,
    /// The sources written after it, in order.
    pub sources: Vec<Source>,
}

/// Splits the words after `--` at the first `:::` or `::::`.
pub fn split_trailing(words: &[String]) -> Result<Trailing, UsageError> {
    let start = words
        .iter()
        .position(|w| w == ARGS_MARKER || w == FILES_MARKER)
        .unwrap_or(words.len());
    let command = words[..start].to_vec();
    let mut sources = Vec::new();
    let mut rest = words[start..].iter().peekable();
    while let Some(marker) = rest.next() {
        let mut values = Vec::new();
        while let Some(word) = rest.next_if(|w| *w != ARGS_MARKER && *w != FILES_MARKER) {
            values.push(word.clone());
        }
        if marker == ARGS_MARKER {
            // An empty `:::` is refused when the sources open, by position.
            sources.push(Source::Args(
                values.into_iter().map(String::into_bytes).collect(),
            ));
        } else if values.is_empty() {
            return Err(UsageError(
                "`::::` needs at least one file after it (`-` for standard input)".into(),
            ));
        } else {
            sources.extend(values.into_iter().map(|file| {
                if file == "-" {
                    Source::Stdin
                } else {
                    Source::File(PathBuf::from(file))
                }
            }));
        }
    }
    Ok(Trailing { command, sources })
}

/// The flags that say how to read the sources.
pub struct SourceFlags<'a> {
    /// The file argument before `--`, if any (`-`: standard input).
    pub file: Option<&'a PathBuf>,
    /// The sources after the command.
    pub sources: Vec<Source>,
    /// `--link`.
    pub link: bool,
    /// `--colsep REGEX`.
    pub colsep: Option<&'a str>,
    /// `--csv`.
    pub csv: bool,
    /// `--header :`.
    pub header: Option<&'a str>,
    /// `-0`.
    pub null: bool,
}

/// Builds the [`SourceSpec`]: the file argument first (as GNU parallel's
/// `-a`), then the sources after the command; standard input when none.
pub fn spec(flags: SourceFlags<'_>) -> Result<SourceSpec, UsageError> {
    let mut sources = Vec::new();
    if let Some(file) = flags.file {
        sources.push(if file.as_os_str() == "-" {
            Source::Stdin
        } else {
            Source::File(file.clone())
        });
    }
    sources.extend(flags.sources);
    if sources.is_empty() {
        sources.push(Source::Stdin);
    }
    let split = match (flags.colsep, flags.csv) {
        (Some(_), true) => {
            return Err(UsageError(
                "--colsep and --csv: choose one (--csv splits at commas, quotes understood)".into(),
            ))
        }
        (Some(colsep), false) => Split::Regex(
            regex::bytes::Regex::new(colsep)
                .map_err(|e| UsageError(format!("--colsep {colsep:?}: {e}")))?,
        ),
        (None, true) => Split::Csv,
        (None, false) => Split::None,
    };
    if flags.csv && flags.null {
        return Err(UsageError(
            "--csv and -0 cannot go together: a CSV record ends at a newline".into(),
        ));
    }
    let header = match flags.header {
        None => false,
        Some(":") => true,
        Some(other) => {
            return Err(UsageError(format!(
                "--header {other:?}: only `--header :` (the first line of each source names its columns) is supported"
            )))
        }
    };
    Ok(SourceSpec {
        sources,
        link: flags.link,
        terminator: if flags.null { b'\0' } else { b'\n' },
        split,
        header,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        text.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn sources_follow_the_command() {
        let trailing = split_trailing(&words("echo {1} ::: a b :::: f - ::: c")).unwrap();
        assert_eq!(trailing.command, words("echo {1}"));
        let shown: Vec<String> = trailing.sources.iter().map(|s| format!("{s:?}")).collect();
        assert_eq!(shown.len(), 4, "{shown:?}");
        assert!(matches!(&trailing.sources[0], Source::Args(v) if v.len() == 2));
        assert!(matches!(&trailing.sources[1], Source::File(p) if p == &PathBuf::from("f")));
        assert!(matches!(trailing.sources[2], Source::Stdin));
        assert!(matches!(&trailing.sources[3], Source::Args(v) if v == &[b"c".to_vec()]));
        let plain = split_trailing(&words("echo {}")).unwrap();
        assert!(plain.sources.is_empty());
        assert!(
            matches!(&split_trailing(&words("echo :::")).unwrap().sources[0], Source::Args(v) if v.is_empty())
        );
        assert!(split_trailing(&words("echo ::::")).is_err());
    }
}
