//! Keeping hold of everything a task starts, so that a timeout, a
//! cancellation or the task's end kills all of it, including what left the
//! task's process group (`setsid`, a double fork).
//!
//! Chosen once per process, at the first task, and logged at debug level:
//!
//! * **cgroup**: each task runs in a cgroup v2 of its own, under the
//!   worker's own cgroup (see [`super::cgroup`]); nothing a task starts can
//!   leave it. Used wherever the worker may create cgroups there (root, or a
//!   delegated subtree) unless [`TASK_CGROUPS_ENV`] says `off`.
//! * **lineage**: otherwise, the worker becomes a child subreaper and marks
//!   each task's environment, and finds the task's processes through `/proc`
//!   (see [`super::lineage`]).
//!
//! Neither ever fails a task: if a task cgroup cannot be made or entered,
//! that task (and, if entering failed, every later one) runs with the
//! lineage instead.

use std::ffi::OsStr;
use std::io;
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::{getpgid, Pid};

use super::spawn::{self, Process, Setup, SpawnError};
use super::{cgroup, lineage};

/// Set to `off` (or `0`, `no`, `false`) to run tasks without cgroups of
/// their own even where they could be made, e.g. where another tool owns the
/// cgroup tree; the worker then tracks each task's descendants instead.
pub const TASK_CGROUPS_ENV: &str = "ZCLUSTER_TASK_CGROUPS";

/// How this process keeps hold of its tasks' processes.
#[derive(Debug)]
pub(crate) enum Containment {
    /// A cgroup v2 of its own per task.
    Cgroups(cgroup::TaskCgroups),
    /// Subreaper plus a mark in the environment, read back from `/proc`.
    Lineage,
}

static CHOICE: OnceLock<Containment> = OnceLock::new();

/// At the end of the process (`exit`, or `main` returning), removes the
/// task cgroups kept for later tasks, and the worker's directory.
extern "C" fn remove_task_cgroups_at_exit() {
    if let Some(Containment::Cgroups(cgroups)) = CHOICE.get() {
        cgroups.remove_idle();
    }
}

impl Containment {
    /// The process-wide choice, made at the first call.
    pub(crate) fn get() -> &'static Containment {
        CHOICE.get_or_init(|| {
            let choice = Containment::choose();
            if let Containment::Cgroups(_) = choice {
                // SAFETY: registers a plain function to run at exit.
                unsafe { libc::atexit(remove_task_cgroups_at_exit) };
            }
            choice
        })
    }

    fn choose() -> Containment {
        let off = std::env::var(TASK_CGROUPS_ENV).is_ok_and(|value| {
            matches!(
                value.trim().to_ascii_lowercase().as_str(),
                "off" | "0" | "no" | "false"
            )
        });
        if off {
            tracing::debug!("task containment: process lineage ({TASK_CGROUPS_ENV} is off)");
            return Containment::Lineage;
        }
        match cgroup::TaskCgroups::create() {
            Ok(cgroups) => {
                tracing::debug!(
                    dir = %cgroups.base().display(),
                    "task containment: a cgroup v2 per task"
                );
                Containment::Cgroups(cgroups)
            }
            Err(error) => {
                tracing::debug!(
                    %error,
                    "task containment: process lineage (subreaper and /proc); no task cgroups"
                );
                Containment::Lineage
            }
        }
    }
}

/// Where one task's processes are kept hold of.
#[derive(Debug)]
pub(crate) enum Enclosure {
    /// The task's own cgroup; removed when this is dropped.
    Cgroup(cgroup::TaskCgroup),
    /// The task's mark and first process.
    Lineage(lineage::Lineage),
}

/// Starts the command in a new enclosure of the kind `containment` asks
/// for; falls back to the lineage when a cgroup cannot be made or entered.
pub(crate) fn spawn(
    containment: &Containment,
    program: &OsStr,
    args: &[&OsStr],
    setup: Setup<'_>,
) -> io::Result<(Process, Enclosure)> {
    if let Containment::Cgroups(cgroups) = containment {
        if cgroups.usable() {
            match cgroups.task() {
                Ok(task_cgroup) => {
                    return spawn_in_cgroup(cgroups, task_cgroup, program, args, setup)
                }
                Err(error) => {
                    tracing::debug!(%error, "no cgroup for this task; tracking its lineage");
                }
            }
        }
    }
    spawn_with_lineage(program, args, setup)
}

fn spawn_in_cgroup(
    cgroups: &cgroup::TaskCgroups,
    task_cgroup: cgroup::TaskCgroup,
    program: &OsStr,
    args: &[&OsStr],
    setup: Setup<'_>,
) -> io::Result<(Process, Enclosure)> {
    match spawn::spawn(program, args, Some(task_cgroup.entry()), None, setup) {
        Ok(process) => Ok((process, Enclosure::Cgroup(task_cgroup))),
        Err(SpawnError::Cgroup(error)) => {
            drop(task_cgroup);
            if cgroups.give_up() {
                tracing::warn!(
                    %error,
                    "tasks cannot enter their cgroups; tracking their lineage instead"
                );
            }
            spawn_with_lineage(program, args, setup)
        }
        Err(error) => Err(error.into()),
    }
}

fn spawn_with_lineage(
    program: &OsStr,
    args: &[&OsStr],
    setup: Setup<'_>,
) -> io::Result<(Process, Enclosure)> {
    lineage::become_subreaper();
    let mut lineage = lineage::Lineage::new();
    let mark = (lineage::TASK_MARK_ENV, lineage.mark_value());
    let process = spawn::spawn(program, args, None, Some(mark), setup)?;
    lineage.set_root(process.pid);
    Ok((process, Enclosure::Lineage(lineage)))
}

impl Enclosure {
    /// Sends `signal` to every process of the task outside process group
    /// `group`, which the caller signals itself with `killpg` (a shell that
    /// traps SIGTERM should run its trap once). SIGKILL to a cgroup is
    /// `cgroup.kill`, for all of it: that also catches what forks meanwhile.
    pub(crate) fn signal_outside(&mut self, group: Pid, signal: Signal) {
        let members = match self {
            Enclosure::Cgroup(task_cgroup) if signal == Signal::SIGKILL => {
                task_cgroup.kill();
                return;
            }
            Enclosure::Cgroup(task_cgroup) => task_cgroup.members(),
            Enclosure::Lineage(lineage) => lineage.members(),
        };
        for pid in members {
            if getpgid(Some(pid)) != Ok(group) {
                let _ = kill(pid, signal);
            }
        }
    }

    /// Ends whatever the task left running once its first process is gone
    /// and its output closed: SIGKILL at once when the task was `killed`
    /// (timeout, cancel), else SIGTERM, up to `grace` to exit, then SIGKILL.
    /// Returns when all of it is gone (bounded) and the cgroup is removed.
    pub(crate) fn end(self, killed: bool, grace: Duration) {
        match self {
            Enclosure::Cgroup(mut task_cgroup) => {
                if !killed && task_cgroup.populated() {
                    tracing::debug!(
                        processes = task_cgroup.members().len(),
                        "task left processes running; stopping them"
                    );
                    task_cgroup.signal(Signal::SIGTERM);
                    task_cgroup.wait_empty(grace);
                }
                // Dropping kills the rest and removes the cgroup.
                drop(task_cgroup);
            }
            Enclosure::Lineage(mut lineage) => {
                if !killed {
                    if !lineage.signal(Signal::SIGTERM) {
                        return;
                    }
                    tracing::debug!("task left processes running; stopping them");
                    if lineage.wait_gone(grace) {
                        return;
                    }
                }
                lineage.kill();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_that_cannot_enter_its_cgroup_runs_anyway() {
        let Some(cgroups) = cgroup::tests::task_cgroups_or_skip() else {
            return;
        };
        let task_cgroup = cgroups.task().unwrap();
        // Gone before the task can enter it.
        std::fs::remove_dir(task_cgroup.dir()).unwrap();
        let args = [OsStr::new("-c"), OsStr::new("exit 7")];
        let (child, enclosure) = spawn_in_cgroup(
            &cgroups,
            task_cgroup,
            OsStr::new("sh"),
            &args,
            Setup::default(),
        )
        .unwrap();
        assert!(matches!(enclosure, Enclosure::Lineage(_)), "{enclosure:?}");
        assert!(!cgroups.usable(), "cgroups are still tried");
        assert!(matches!(
            nix::sys::wait::waitpid(child.pid, None),
            Ok(nix::sys::wait::WaitStatus::Exited(_, 7))
        ));
        enclosure.end(false, Duration::from_millis(100));
        // A command that cannot run at all is an error, and not a reason
        // to give up on cgroups.
        let cgroups = Containment::Cgroups(cgroup::TaskCgroups::create().unwrap());
        assert!(spawn(
            &cgroups,
            OsStr::new("/nonexistent/zcluster-x"),
            &[],
            Setup::default()
        )
        .is_err());
        assert!(matches!(&cgroups, Containment::Cgroups(c) if c.usable()));
    }
}
