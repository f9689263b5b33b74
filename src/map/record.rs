//! What `zcluster map` reports per input, and its JSON Lines form.
//!
//! `--results FILE` writes one JSON object per input. Output that is valid
//! UTF-8 is a JSON string; output that is not is kept losslessly: the field
//! (`stdout`, `stderr` or `input`) is `null` and a sibling field with the
//! suffix `_base64` holds the exact bytes in standard base64.

use std::io::Write;
use std::time::UNIX_EPOCH;

use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::exec::{ExecOutcome, ExitKind};

/// How a task ended, as the summary and the JSON records name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    /// Exited 0.
    Ok,
    /// Non-zero exit, killed by a signal, or could not start.
    Failed,
    /// Killed by `--timeout`.
    Timeout,
    /// Killed by a halt or Ctrl-C before it finished.
    Cancelled,
}

impl TaskStatus {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Ok => "ok",
            TaskStatus::Failed => "failed",
            TaskStatus::Timeout => "timeout",
            TaskStatus::Cancelled => "cancelled",
        }
    }
}

/// One finished input.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    /// 1-based position in the input.
    pub seq: u64,
    /// The input line (lossy when it was not UTF-8).
    pub input: String,
    /// The exact bytes of an input line that was not UTF-8.
    pub raw_input: Option<Vec<u8>>,
    /// The command as run (empty when it could not be made).
    pub command: Vec<String>,
    /// How it ended and what it printed.
    pub outcome: ExecOutcome,
    /// Times it was run (0 when it could not be made).
    pub attempts: u32,
    /// Host that ran the last attempt.
    pub host: String,
    /// Worker process id.
    pub pid: u32,
    /// Worker name.
    pub worker: String,
}

impl TaskRecord {
    /// How the task ended.
    pub fn status(&self) -> TaskStatus {
        match self.outcome.exit {
            ExitKind::Exited(0) => TaskStatus::Ok,
            ExitKind::TimedOut => TaskStatus::Timeout,
            ExitKind::Cancelled => TaskStatus::Cancelled,
            _ => TaskStatus::Failed,
        }
    }

    /// Why it failed, in words (`None` when it succeeded).
    pub fn reason(&self) -> Option<String> {
        match &self.outcome.exit {
            ExitKind::Exited(0) => None,
            other => Some(other.to_string()),
        }
    }

    /// The JSON Lines object (see the module docs for non-UTF-8 fields).
    pub fn to_json(&self) -> Value {
        let ExecOutcome {
            stdout,
            stderr,
            started,
            elapsed,
            ..
        } = &self.outcome;
        let mut object = Map::new();
        object.insert("seq".into(), json!(self.seq));
        match &self.raw_input {
            Some(raw) => bytes_field(&mut object, "input", raw),
            None => {
                object.insert("input".into(), json!(self.input));
            }
        }
        object.insert("command".into(), json!(self.command));
        object.insert("status".into(), json!(self.status().as_str()));
        object.insert("exit_code".into(), json!(self.outcome.exit_code()));
        object.insert("signal".into(), json!(self.outcome.signal()));
        object.insert("error".into(), json!(self.reason()));
        bytes_field(&mut object, "stdout", stdout);
        bytes_field(&mut object, "stderr", stderr);
        object.insert("host".into(), json!(self.host));
        object.insert("pid".into(), json!(self.pid));
        object.insert("worker".into(), json!(self.worker));
        let started_s = started
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        object.insert(
            "started".into(),
            json!(humantime::format_rfc3339_micros(*started).to_string()),
        );
        object.insert("started_unix_s".into(), json!(started_s));
        object.insert("elapsed_s".into(), json!(elapsed.as_secs_f64()));
        object.insert("attempts".into(), json!(self.attempts));
        Value::Object(object)
    }

    /// Writes the record as one JSON line.
    pub fn write_json_line(&self, out: &mut impl Write) -> std::io::Result<()> {
        serde_json::to_writer(&mut *out, &self.to_json())?;
        out.write_all(b"\n")
    }
}

fn bytes_field(object: &mut Map<String, Value>, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            object.insert(name.into(), json!(text));
        }
        Err(_) => {
            object.insert(name.into(), Value::Null);
            let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
            object.insert(format!("{name}_base64"), json!(encoded));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn record(exit: ExitKind, stdout: &[u8]) -> TaskRecord {
        TaskRecord {
            seq: 3,
            input: "a b.png".into(),
            raw_input: None,
            command: vec!["echo".into(), "a b.png".into()],
            outcome: ExecOutcome {
                exit,
                stdout: stdout.to_vec(),
                stderr: b"warn\n".to_vec(),
                started: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
                elapsed: Duration::from_millis(1500),
            },
            attempts: 2,
            host: "h".into(),
            pid: 7,
            worker: "slot-1".into(),
        }
    }

    #[test]
    fn json_has_every_field() {
        let value = record(ExitKind::Exited(0), b"out\n").to_json();
        for key in [
            "seq",
            "input",
            "command",
            "status",
            "exit_code",
            "signal",
            "stdout",
            "stderr",
            "host",
            "pid",
            "worker",
            "started",
            "elapsed_s",
            "attempts",
        ] {
            assert!(value.get(key).is_some(), "missing {key}");
        }
        assert_eq!(value["status"], "ok");
        assert_eq!(value["exit_code"], 0);
        assert_eq!(value["stdout"], "out\n");
        assert_eq!(value["started"], "2023-11-14T22:13:20.000000Z");
        assert_eq!(value["elapsed_s"], 1.5);
        assert!(value["error"].is_null());
    }

    #[test]
    fn non_utf8_output_is_kept_as_base64() {
        let value = record(ExitKind::Signaled(9), b"\xff\xfe").to_json();
        assert!(value["stdout"].is_null());
        assert_eq!(value["stdout_base64"], "//4=");
        assert_eq!(value["status"], "failed");
        assert_eq!(value["signal"], 9);
        assert!(value["exit_code"].is_null());
        assert_eq!(
            record(ExitKind::TimedOut, b"").to_json()["status"],
            "timeout"
        );
    }
}
