//! Slurm behind [`BatchSystem`]: `sbatch` a script whose one `srun` step
//! runs a `zcluster worker` on every node with the whole node (`--whole`:
//! all the CPUs Slurm gave the job there are the worker's slots), `squeue`
//! for states and reasons, `scancel`, and `squeue -o %L` for the time a
//! running allocation has left.
//!
//! Every command is Slurm's own, run as the user types it, so `SLURM_CONF`,
//! the user's defaults and credentials apply.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use super::batch::{AllocationRequest, AllocationState, BatchError, BatchSystem};
use super::ssh::quote;
use crate::worker::RESTART_EXIT_CODE;

/// Slurm, through `sbatch`, `squeue` and `scancel` on the PATH.
#[derive(Debug, Clone, Default)]
pub struct Slurm;

/// Slurm's `--time` form of a walltime: `D-HH:MM:SS`, at least a minute.
pub fn slurm_time(time: Duration) -> String {
    let secs = time.as_secs().max(60);
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rest / 3600, rest % 3600 / 60, rest % 60);
    format!("{days}-{h:02}:{m:02}:{s:02}")
}

/// Reads Slurm's time-left column (`%L`): `[D-][HH:]MM:SS`; `None` for
/// `UNLIMITED`, `NOT_SET` and what does not parse.
pub fn parse_time_left(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (days, clock) = match text.split_once('-') {
        Some((d, c)) => (d.parse::<u64>().ok()?, c),
        None => (0, text),
    };
    let mut parts = clock
        .split(':')
        .map(|p| p.parse::<u64>().ok())
        .collect::<Option<Vec<u64>>>()?;
    while parts.len() < 3 {
        parts.insert(0, 0);
    }
    let [h, m, s] = parts[..] else { return None };
    Some(Duration::from_secs(days * 86_400 + h * 3600 + m * 60 + s))
}

/// Runs a Slurm command; its stdout, or its refusal with its stderr.
fn run(program: &str, args: &[String], stdin: Option<&str>) -> Result<String, BatchError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| BatchError::Spawn {
            program: program.into(),
            source,
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A refusal before reading the script shows in its exit status.
        let _ = pipe.write_all(text.as_bytes());
    }
    let output = child
        .wait_with_output()
        .map_err(|source| BatchError::Spawn {
            program: program.into(),
            source,
        })?;
    if !output.status.success() {
        return Err(BatchError::Refused {
            program: program.into(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

impl Slurm {
    /// The time left of a running job, by `squeue -o %L`.
    pub fn time_left(&self, job: &str) -> Result<Option<Duration>, BatchError> {
        let out = run(
            "squeue",
            &[
                "-h".into(),
                "-j".into(),
                job.into(),
                "-o".into(),
                "%L".into(),
            ],
            None,
        )?;
        Ok(parse_time_left(&out))
    }
}

impl BatchSystem for Slurm {
    fn name(&self) -> &'static str {
        "slurm"
    }

    fn script(&self, request: &AllocationRequest) -> String {
        let mut script = String::from("#!/bin/sh\n");
        let mut option = |line: String| {
            script.push_str("#SBATCH ");
            script.push_str(&line);
            script.push('\n');
        };
        option(format!("--job-name={}", request.name));
        option(format!("--nodes={}", request.nodes));
        option("--ntasks-per-node=1".into());
        option(format!("--time={}", slurm_time(request.time)));
        match request.cpus_per_node {
            Some(cpus) => option(format!("--cpus-per-task={cpus}")),
            None => option("--exclusive".into()),
        }
        if let Some(partition) = &request.partition {
            option(format!("--partition={partition}"));
        }
        if let Some(account) = &request.account {
            option(format!("--account={account}"));
        }
        // One worker per node with all the node gave the job; a worker
        // that asks to be restarted (exit 75) is started again in place, and
        // one worker ending never kills the others.
        script.push_str(&format!(
            "exec srun --whole --ntasks-per-node=1 --kill-on-bad-exit=0 \\\n  \
             sh -c 'while :; do \"$0\" worker --hub \"$1\"; s=$?; [ \"$s\" -eq {RESTART_EXIT_CODE} ] || exit \"$s\"; done' \\\n  \
             {} {}\n",
            quote(&request.worker.program.display().to_string()),
            quote(&request.worker.connection.display().to_string()),
        ));
        script
    }

    fn submit(&self, request: &AllocationRequest) -> Result<String, BatchError> {
        let mut args = vec!["--parsable".to_string()];
        args.extend(request.extra.iter().cloned());
        let out = run("sbatch", &args, Some(&self.script(request)))?;
        // `--parsable` prints `JOB` or `JOB;CLUSTER`.
        let job = out.trim().split(';').next().unwrap_or("").to_string();
        if job.is_empty() || !job.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BatchError::BadOutput {
                program: "sbatch".into(),
                output: out,
                expected: "a job id",
            });
        }
        Ok(job)
    }

    fn state(&self, job: &str) -> Result<AllocationState, BatchError> {
        let args: Vec<String> = ["-h", "-t", "all", "-j", job, "-o", "%T|%r"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let out = match run("squeue", &args, None) {
            Ok(out) => out,
            // Slurm forgets finished jobs after MinJobAge.
            Err(BatchError::Refused { stderr, .. }) if stderr.contains("Invalid job id") => {
                String::new()
            }
            Err(e) => return Err(e),
        };
        let Some(line) = out.lines().find(|l| !l.trim().is_empty()) else {
            return Ok(AllocationState::Finished {
                state: "GONE".into(),
                reason: "Slurm no longer lists it".into(),
            });
        };
        let (state, reason) = line.trim().split_once('|').unwrap_or((line.trim(), ""));
        let reason = if reason == "None" { "" } else { reason }.to_string();
        Ok(match state {
            "PENDING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED" | "SUSPENDED" => {
                AllocationState::Pending { reason }
            }
            "RUNNING" | "CONFIGURING" | "COMPLETING" | "RESIZING" | "SIGNALING" | "STAGE_OUT" => {
                AllocationState::Running
            }
            other => AllocationState::Finished {
                state: other.to_string(),
                reason,
            },
        })
    }

    fn cancel(&self, job: &str) -> Result<(), BatchError> {
        run("scancel", &[job.to_string()], None).map(|_| ())
    }

    fn end_time(&self) -> Result<Option<SystemTime>, BatchError> {
        let Ok(job) = std::env::var("SLURM_JOB_ID") else {
            return Ok(None);
        };
        // The time left, not the end time (`%e`): `%e` is local time with
        // no zone, `%L` is a duration whatever the clocks' zones.
        let asked = SystemTime::now();
        Ok(self.time_left(&job)?.map(|left| asked + left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::batch::WorkerCommand;

    #[test]
    fn walltimes_are_written_as_slurm_reads_them() {
        assert_eq!(slurm_time(Duration::from_secs(2 * 3600)), "0-02:00:00");
        assert_eq!(slurm_time(Duration::from_secs(90_061)), "1-01:01:01");
        assert_eq!(slurm_time(Duration::from_secs(5)), "0-00:01:00");
    }

    #[test]
    fn time_left_reads_every_form_squeue_prints() {
        assert_eq!(parse_time_left("59"), Some(Duration::from_secs(59)));
        assert_eq!(parse_time_left("1:05"), Some(Duration::from_secs(65)));
        assert_eq!(
            parse_time_left("2:00:01\n"),
            Some(Duration::from_secs(7201))
        );
        assert_eq!(
            parse_time_left("1-00:00:10"),
            Some(Duration::from_secs(86_410))
        );
        assert_eq!(parse_time_left("UNLIMITED"), None);
        assert_eq!(parse_time_left("NOT_SET"), None);
        assert_eq!(parse_time_left(""), None);
    }

    #[test]
    fn the_script_asks_what_the_request_says_and_quotes_paths() {
        let request = AllocationRequest {
            nodes: 3,
            time: Duration::from_secs(7200),
            partition: Some("gpu".into()),
            account: None,
            cpus_per_node: Some(8),
            name: "zcluster".into(),
            extra: Vec::new(),
            worker: WorkerCommand {
                program: "/opt/z cluster/zcluster".into(),
                connection: "/home/a/it's/hub.json".into(),
            },
        };
        let script = Slurm.script(&request);
        for line in [
            "#SBATCH --nodes=3",
            "#SBATCH --ntasks-per-node=1",
            "#SBATCH --time=0-02:00:00",
            "#SBATCH --cpus-per-task=8",
            "#SBATCH --partition=gpu",
        ] {
            assert!(script.lines().any(|l| l == line), "{line} in {script}");
        }
        assert!(!script.contains("--account"), "{script}");
        assert!(!script.contains("--exclusive"), "{script}");
        assert!(script.contains("'/opt/z cluster/zcluster'"), "{script}");
        assert!(script.contains(r"'/home/a/it'\''s/hub.json'"), "{script}");
    }
}
