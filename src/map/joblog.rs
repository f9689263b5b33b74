//! GNU parallel's joblog, written and read back: `--joblog FILE`,
//! `--resume`, `--resume-failed`.
//!
//! The format is GNU parallel's exactly, so the tools that read its
//! joblogs read ours: a header line, then one tab-separated line per
//! finished task, written as it finishes:
//!
//! ```text
//! Seq<TAB>Host<TAB>Starttime<TAB>JobRuntime<TAB>Send<TAB>Receive<TAB>Exitval<TAB>Signal<TAB>Command
//! 1<TAB>:<TAB>1796651196.443<TAB>     0.006<TAB>0<TAB>2<TAB>0<TAB>0<TAB>echo a
//! ```
//!
//! `Host` is `:` for this machine (a map without a hub), else the host the
//! task ran on; `Starttime` is seconds since the epoch with 3 decimals;
//! `JobRuntime` seconds, `%10.3f`; `Send` the bytes sent to the task's
//! standard input (always 0: tasks read `/dev/null`); `Receive` the bytes
//! of its standard output; `Exitval` and `Signal` as GNU parallel gives
//! them (a timed-out task is `-1` and `15`; one that could not start is
//! `127`, what a shell says for it); `Command` the command as a shell runs
//! it. A task a halt or a Ctrl-C killed is not written: it did not finish,
//! and a resumed map runs it again.
//!
//! Reading one back gives, per sequence number, whether the task succeeded
//! and its command: `--resume` skips every input the joblog has,
//! `--resume-failed` only those that succeeded, and either refuses to go
//! on when the logged command of an input is not what the current
//! template makes of it (another template's joblog would skip the wrong
//! work), unless told to accept it.

use std::collections::HashMap;
use std::io::{self, BufRead};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use crate::exec::{ExecOutcome, ExitKind};

/// The first line of a joblog, as GNU parallel writes it.
pub const JOBLOG_HEADER: &str =
    "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand";

/// Host of a task that ran on this machine, as GNU parallel writes it.
pub const LOCAL_HOST: &str = ":";

/// `Exitval` of a task that could not start: what a shell reports.
const NOT_STARTED_EXIT: i32 = 127;

/// Why a joblog cannot be read, or does not fit the map.
#[derive(Debug, thiserror::Error)]
pub enum JoblogError {
    /// The file cannot be read.
    #[error("cannot read joblog {}: {source}", path.display())]
    Read {
        /// The joblog.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A line is not a joblog line.
    #[error("joblog {} line {line} is not a joblog line (Seq, Host, Starttime, JobRuntime, Send, Receive, Exitval, Signal, Command separated by tabs)", path.display())]
    BadLine {
        /// The joblog.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
}

/// The line of one finished task, or `None` for one that did not finish
/// (a halt or a Ctrl-C killed it): GNU parallel's format, with its newline.
pub fn line(seq: u64, host: &str, outcome: &ExecOutcome, command: &str) -> Option<String> {
    let (exitval, signal) = match &outcome.exit {
        ExitKind::Exited(code) => (*code, 0),
        ExitKind::Signaled(signal) => (0, *signal),
        ExitKind::TimedOut => (-1, libc::SIGTERM),
        ExitKind::SpawnFailed(_) => (NOT_STARTED_EXIT, 0),
        ExitKind::Cancelled => return None,
    };
    let start = outcome
        .started
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64();
    // A newline in a command would end the line early: shown escaped.
    let command = command.replace('\n', "\\n");
    Some(format!(
        "{seq}\t{host}\t{start:.3}\t{runtime:10.3}\t0\t{receive}\t{exitval}\t{signal}\t{command}\n",
        runtime = outcome.elapsed.as_secs_f64(),
        receive = outcome.stdout.len(),
    ))
}

/// What a joblog says of one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// Some line of it says it succeeded (exit 0, no signal).
    pub succeeded: bool,
    /// The command of its last line.
    pub command: String,
    /// 1-based line number of its last line, for messages.
    pub line: usize,
}

/// A joblog read back, for `--resume`.
#[derive(Debug, Clone, Default)]
pub struct Joblog {
    /// Per sequence number.
    pub tasks: HashMap<u64, Logged>,
}

impl Joblog {
    /// Reads the joblog at `path`; a file that does not exist is an empty
    /// joblog (nothing ran yet), as with GNU parallel.
    ///
    /// # Errors
    ///
    /// [`JoblogError`] when it cannot be read or a line is not a joblog line.
    pub fn read(path: &Path) -> Result<Joblog, JoblogError> {
        let read_error = |source| JoblogError::Read {
            path: path.to_owned(),
            source,
        };
        let file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Joblog::default()),
            Err(e) => return Err(read_error(e)),
        };
        let mut joblog = Joblog::default();
        for (index, text) in io::BufReader::new(file).split(b'\n').enumerate() {
            let text = text.map_err(read_error)?;
            let number = index + 1;
            let text = String::from_utf8_lossy(&text);
            if (number == 1 && text.starts_with("Seq\t")) || text.is_empty() {
                continue;
            }
            let bad = || JoblogError::BadLine {
                path: path.to_owned(),
                line: number,
            };
            let fields: Vec<&str> = text.splitn(9, '\t').collect();
            let [seq, _host, _start, _runtime, _send, _receive, exitval, signal, command] =
                fields[..]
            else {
                return Err(bad());
            };
            let seq: u64 = seq.trim().parse().map_err(|_| bad())?;
            let exitval: i32 = exitval.trim().parse().map_err(|_| bad())?;
            let signal: i32 = signal.trim().parse().map_err(|_| bad())?;
            let succeeded = exitval == 0 && signal == 0;
            let entry = joblog.tasks.entry(seq).or_insert(Logged {
                succeeded: false,
                command: String::new(),
                line: number,
            });
            entry.succeeded |= succeeded;
            entry.command = command.to_owned();
            entry.line = number;
        }
        Ok(joblog)
    }
}

/// How a map resumes from a joblog: plain data in
/// [`MapOptions::resume`](super::MapOptions::resume).
#[derive(Debug, Clone)]
pub struct Resume {
    /// The joblog read back.
    pub joblog: Joblog,
    /// Where it was read from, for messages.
    pub path: PathBuf,
    /// `--resume-failed`: run again the inputs that failed.
    pub failed_again: bool,
    /// Accept a joblog whose commands another template made.
    pub any_command: bool,
}

/// A joblog made by another command template: going on would skip inputs
/// by the record of different work.
#[derive(Debug, thiserror::Error)]
#[error("joblog {} line {line} has input {seq} run as `{logged}`, but this command makes `{now}` of it: the joblog is of another command (give the same command and inputs, another --joblog, or --resume-any-command to resume from it anyway)", path.display())]
pub struct CommandMismatch {
    /// The joblog.
    pub path: PathBuf,
    /// Its line.
    pub line: usize,
    /// The input's sequence number.
    pub seq: u64,
    /// The logged command.
    pub logged: String,
    /// What the template makes of the input now.
    pub now: String,
}

impl Resume {
    /// Whether input `seq`, whose command would be `command` (as a shell
    /// runs it), is skipped.
    ///
    /// # Errors
    ///
    /// [`CommandMismatch`] when the joblog has the input with another
    /// command (and `any_command` is off).
    pub fn skips(&self, seq: u64, command: &str) -> Result<bool, Box<CommandMismatch>> {
        let Some(logged) = self.joblog.tasks.get(&seq) else {
            return Ok(false);
        };
        let command = command.replace('\n', "\\n");
        if !self.any_command && logged.command != command {
            return Err(Box::new(CommandMismatch {
                path: self.path.clone(),
                line: logged.line,
                seq,
                logged: logged.command.clone(),
                now: command,
            }));
        }
        Ok(logged.succeeded || !self.failed_again)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::SystemTime;

    fn outcome(exit: ExitKind, stdout: &[u8]) -> ExecOutcome {
        ExecOutcome {
            exit,
            stdout: stdout.to_vec(),
            stderr: b"ignored".to_vec(),
            started: SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_651_196_443),
            elapsed: Duration::from_micros(6_400),
        }
    }

    #[test]
    fn lines_are_gnu_parallels() {
        assert_eq!(
            line(1, ":", &outcome(ExitKind::Exited(0), b"a\n"), "echo a").unwrap(),
            "1\t:\t1796651196.443\t     0.006\t0\t2\t0\t0\techo a\n"
        );
        let timed_out = line(2, "h", &outcome(ExitKind::TimedOut, b""), "sleep 9").unwrap();
        assert!(
            timed_out.ends_with("\t0\t0\t-1\t15\tsleep 9\n"),
            "{timed_out}"
        );
        let killed = line(3, "h", &outcome(ExitKind::Signaled(9), b""), "x").unwrap();
        assert!(killed.ends_with("\t0\t9\tx\n"), "{killed}");
        let missing = line(
            4,
            "h",
            &outcome(ExitKind::SpawnFailed("no".into()), b""),
            "x",
        );
        assert!(missing.unwrap().ends_with("\t127\t0\tx\n"));
        assert_eq!(line(5, "h", &outcome(ExitKind::Cancelled, b""), "x"), None);
    }

    #[test]
    fn read_back_for_resume() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("log");
        let mut text = String::from(JOBLOG_HEADER);
        text.push('\n');
        for (seq, exit, command) in [(1, 0, "echo a"), (2, 1, "echo b"), (3, 1, "echo c")] {
            text += &line(seq, ":", &outcome(ExitKind::Exited(exit), b""), command).unwrap();
        }
        // Input 3 failed, then succeeded when run again.
        text += &line(3, ":", &outcome(ExitKind::Exited(0), b""), "echo c").unwrap();
        std::fs::write(&path, text).unwrap();
        let joblog = Joblog::read(&path).unwrap();
        let resume = |failed_again| Resume {
            joblog: joblog.clone(),
            path: path.clone(),
            failed_again,
            any_command: false,
        };
        let all = resume(false);
        assert!(all.skips(1, "echo a").unwrap());
        assert!(all.skips(2, "echo b").unwrap());
        assert!(!all.skips(4, "echo d").unwrap());
        let failed = resume(true);
        assert!(failed.skips(1, "echo a").unwrap());
        assert!(!failed.skips(2, "echo b").unwrap());
        assert!(failed.skips(3, "echo c").unwrap());
        let mismatch = all.skips(1, "printf a").unwrap_err().to_string();
        assert!(
            mismatch.contains("`echo a`") && mismatch.contains("`printf a`"),
            "{mismatch}"
        );
        let any = Resume {
            any_command: true,
            ..resume(false)
        };
        assert!(any.skips(1, "printf a").unwrap());
        // A missing joblog is an empty one; a bad line is an error.
        assert!(Joblog::read(&dir.path().join("none"))
            .unwrap()
            .tasks
            .is_empty());
        std::fs::write(&path, "Seq\tHost\n1\tx\n").unwrap();
        assert!(Joblog::read(&path)
            .unwrap_err()
            .to_string()
            .contains("line 2"));
    }
}
