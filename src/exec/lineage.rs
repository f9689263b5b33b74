//! Finding a task's processes without cgroups: the fallback where the
//! worker may not create cgroups (cgroup v1 only, or a v2 tree it may not
//! write to).
//!
//! Two things make a task's descendants findable after they leave its
//! process group (`setsid`, `setpgid`) and its tree (a double fork):
//!
//! * The worker process becomes a *child subreaper*
//!   (`prctl(PR_SET_CHILD_SUBREAPER)`): a process whose parent dies is
//!   re-parented to the worker instead of to PID 1, so it stays within
//!   reach of `/proc/<worker>/task/*/children`.
//! * Every task gets [`TASK_MARK_ENV`] in its environment, with a value
//!   unique to the task, and its descendants inherit it: a re-parented
//!   orphan is attributed to the task whose mark is in its
//!   `/proc/<pid>/environ` (the environment it was started with).
//!
//! A task's processes are then: its first process and everything below it,
//! and every child of the worker that carries the task's mark and
//! everything below those. Walks are bounded by [`MAX_TRACKED_PROCESSES`].
//! What escapes: a descendant that clears its environment *and* outlives the
//! process it was started from before the worker looks.
//!
//! Being a subreaper also means reaping: orphans that die become zombies of
//! the worker. They are reaped here, except what may be a child someone
//! else in this process is waiting for (see `Spawner`).

use std::collections::HashSet;
use std::fs;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::{getpgrp, getsid, Pid};

/// The environment variable that marks a task's processes in the fallback.
pub(crate) const TASK_MARK_ENV: &str = "ZCLUSTER_TASK_MARK";

/// Upper bound on the processes one walk looks at, so that a fork bomb
/// cannot make the worker walk forever.
pub(crate) const MAX_TRACKED_PROCESSES: usize = 4096;

/// Pause between rounds of "find and SIGKILL"; each round also finds what
/// forked during the last.
const KILL_RECHECK_INTERVAL: Duration = Duration::from_millis(1);

/// How many more times `/proc/<pid>/environ` is read while it is not
/// settled (see [`carries`]), the first pause this long, each next twice
/// the last: an `execve` leaves it empty or cut for tens of microseconds
/// (up to 0.3 ms seen here, longer on a loaded machine); a process that
/// cleared its environment costs a look of about 6 ms.
const ENVIRON_REREADS: u32 = 6;
const ENVIRON_REREAD_AFTER: Duration = Duration::from_micros(100);

/// How long to wait for SIGKILLed processes to die before giving up.
const DEATH_WAIT_AFTER_KILL: Duration = Duration::from_secs(2);

/// Becomes a child subreaper once per process; whether that worked.
pub(crate) fn become_subreaper() -> bool {
    static SUBREAPER: OnceLock<bool> = OnceLock::new();
    *SUBREAPER.get_or_init(|| {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let result = nix::sys::prctl::set_child_subreaper(true);
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let result: nix::Result<()> = Err(nix::errno::Errno::ENOSYS);
        match result {
            Ok(()) => true,
            Err(error) => {
                tracing::debug!(%error, "cannot become a child subreaper; orphans of tasks go to PID 1");
                false
            }
        }
    })
}

/// One task's processes, found through `/proc`.
#[derive(Debug)]
pub(crate) struct Lineage {
    /// `KEY=VALUE` as it appears in `/proc/<pid>/environ`.
    mark: Vec<u8>,
    /// The value of [`TASK_MARK_ENV`] for this task.
    value: String,
    /// The task's first process, once spawned.
    root: Option<Pid>,
    /// Every pid ever found to be the task's, so they can be reaped once
    /// they are the worker's zombies (a zombie's environment is empty).
    seen: HashSet<Pid>,
}

impl Lineage {
    /// A new, unique mark for one task.
    pub(crate) fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let value = format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Lineage {
            mark: format!("{TASK_MARK_ENV}={value}").into_bytes(),
            value,
            root: None,
            seen: HashSet::new(),
        }
    }

    /// The value to put in the task's environment under [`TASK_MARK_ENV`].
    pub(crate) fn mark_value(&self) -> &str {
        &self.value
    }

    /// Records the task's first process.
    pub(crate) fn set_root(&mut self, root: Pid) {
        self.root = Some(root);
    }

    /// The task's live processes (not zombies) now, its first one included:
    /// one look through `/proc`, which also reaps the zombies re-parented
    /// to us that are the task's (seen alive in its lineage) or nobody
    /// else's to wait for (see [`Spawner`]).
    pub(crate) fn members(&mut self) -> Vec<Pid> {
        let mut queue: Vec<Pid> = self.root.into_iter().collect();
        let spawner = Spawner::this();
        for pid in orphans() {
            if Some(pid) == self.root {
                continue;
            }
            let Some(stat) = Stat::read(pid) else {
                continue;
            };
            if !stat.zombie {
                if self.carries_mark(pid) {
                    queue.push(pid);
                }
            } else if self.seen.contains(&pid)
                || spawner
                    .as_ref()
                    .is_some_and(|s| !s.may_wait_for(pid, &stat))
            {
                let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
                self.seen.remove(&pid);
            }
        }
        let mut found = Vec::new();
        let mut visited = HashSet::new();
        while let Some(pid) = queue.pop() {
            if visited.len() >= MAX_TRACKED_PROCESSES || !visited.insert(pid) {
                continue;
            }
            if is_alive(pid) {
                found.push(pid);
            }
            queue.extend(children_of(pid));
        }
        self.seen.extend(found.iter().copied());
        found
    }

    fn carries_mark(&self, pid: Pid) -> bool {
        carries(pid, &self.mark)
    }

    /// Sends `signal` to every process of the task; whether there were any.
    pub(crate) fn signal(&mut self, signal: Signal) -> bool {
        let members = self.members();
        for &pid in &members {
            let _ = kill(pid, signal);
        }
        !members.is_empty()
    }

    /// SIGKILLs every process of the task, again while more appear, until
    /// none is alive or [`DEATH_WAIT_AFTER_KILL`] has passed, reaping those
    /// that were re-parented to us.
    pub(crate) fn kill(&mut self) {
        let until = Instant::now() + DEATH_WAIT_AFTER_KILL;
        while self.signal(Signal::SIGKILL) {
            if Instant::now() >= until {
                tracing::warn!(
                    mark = %self.value,
                    "task processes still alive {DEATH_WAIT_AFTER_KILL:?} after SIGKILL"
                );
                return;
            }
            std::thread::sleep(KILL_RECHECK_INTERVAL);
        }
    }

    /// Waits (bounded) until no process of the task is alive; whether none
    /// is. Re-parented processes become our zombies, and are reaped as they
    /// die.
    pub(crate) fn wait_gone(&mut self, within: Duration) -> bool {
        let until = Instant::now().checked_add(within);
        let mut pause = KILL_RECHECK_INTERVAL;
        loop {
            if self.members().is_empty() {
                return true;
            }
            if until.is_some_and(|until| Instant::now() >= until) {
                return false;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
}

/// Whether process `pid` was started with `mark` (`KEY=VALUE`) in its
/// environment. A process in the middle of `execve` (as a daemon is when
/// it `exec`s right after announcing itself) shows no environment, or a
/// cut one, for a moment: its new memory is still being filled. So a read
/// without the mark counts only once it is whole (it ends a variable) and
/// the next read gives the same bytes; otherwise it is read again, up to
/// [`ENVIRON_REREADS`] times, further and further apart. A process that is
/// gone is given up on at once.
fn carries(pid: Pid, mark: &[u8]) -> bool {
    let mut pause = ENVIRON_REREAD_AFTER;
    let mut last: Option<Vec<u8>> = None;
    for _ in 0..=ENVIRON_REREADS {
        match fs::read(format!("/proc/{pid}/environ")) {
            Ok(environ) => {
                if environ.split(|&b| b == 0).any(|var| var == mark) {
                    return true;
                }
                let whole = environ.last() == Some(&0);
                if whole && last.as_ref() == Some(&environ) {
                    return false;
                }
                if whole && last.is_none() {
                    // Read again at once: a settled environment reads the
                    // same, and costs no pause.
                    last = Some(environ);
                    continue;
                }
                last = Some(environ);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return false,
            Err(_) => {}
        }
        if !is_alive(pid) {
            return false;
        }
        std::thread::sleep(pause);
        pause *= 2;
    }
    false
}

/// This process's session and process group, which tell a child someone
/// here may be waiting for from an orphan re-parented to us.
struct Spawner {
    session: Pid,
    group: Pid,
}

impl Spawner {
    fn this() -> Option<Spawner> {
        Some(Spawner {
            session: getsid(None).ok()?,
            group: getpgrp(),
        })
    }

    /// Whether `pid` may be a child some code in this process waits for:
    /// a process group leader in our session (what [`super::super::run`]
    /// spawns; another slot waits for it) or a member of our own group
    /// (what other code here spawns by default). Such zombies are left to
    /// their waiter.
    fn may_wait_for(&self, pid: Pid, stat: &Stat) -> bool {
        (stat.pgid == pid && stat.session == self.session) || stat.pgid == self.group
    }
}

/// This process's children that are not any thread's own: the kernel
/// re-parents an orphan to the first live thread of its subreaper, the
/// main thread, whose children are thus orphans (and whatever the main
/// thread itself spawned), while tasks are children of the slot threads
/// that started them.
fn orphans() -> Vec<Pid> {
    let this = Pid::this();
    fs::read_to_string(format!("/proc/{this}/task/{this}/children"))
        .map(|text| {
            text.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .map(Pid::from_raw)
                .collect()
        })
        .unwrap_or_default()
}

/// The children of every thread of `pid` (`/proc/<pid>/task/*/children`,
/// Linux 4.2+ with CONFIG_PROC_CHILDREN).
fn children_of(pid: Pid) -> Vec<Pid> {
    let Ok(threads) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut children = Vec::new();
    for thread in threads.flatten() {
        if let Ok(text) = fs::read_to_string(thread.path().join("children")) {
            children.extend(
                text.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .map(Pid::from_raw),
            );
        }
    }
    children
}

fn is_alive(pid: Pid) -> bool {
    Stat::read(pid).is_some_and(|stat| !stat.zombie)
}

/// The fields of `/proc/<pid>/stat` used here.
struct Stat {
    zombie: bool,
    pgid: Pid,
    session: Pid,
}

impl Stat {
    fn read(pid: Pid) -> Option<Stat> {
        let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name is in parentheses and may contain anything.
        let (_, rest) = text.rsplit_once(") ")?;
        let mut fields = rest.split_whitespace();
        let state = fields.next()?;
        let _ppid = fields.next()?;
        let pgid = fields.next()?.parse().ok()?;
        let session = fields.next()?.parse().ok()?;
        Some(Stat {
            zombie: state == "Z" || state == "X",
            pgid: Pid::from_raw(pgid),
            session: Pid::from_raw(session),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};

    use super::*;

    /// A process that `exec`s over and over (as a daemon does right after
    /// writing its pid file) is always found to carry its mark, though its
    /// environment reads empty for a moment in each `execve`.
    #[test]
    fn a_process_is_found_by_its_mark_while_it_execs() {
        const MARK: &str = "ZCLUSTER_TEST_MARK=execs";
        let script = r#"n=$1; [ "$n" -gt 0 ] && exec sh -c "$0" "$0" $((n - 1)); exec sleep 5"#;
        let mut child = Command::new("sh")
            .args(["-c", script, script, "3000"])
            .env("ZCLUSTER_TEST_MARK", "execs")
            .stdout(Stdio::null())
            .spawn()
            .expect("sh starts");
        let pid = Pid::from_raw(child.id() as i32);
        // Until its first exec the child shows this process's environment.
        wait_for_mark(pid, MARK);
        let started = Instant::now();
        let mut reads = 0u32;
        let mut missed = 0u32;
        while started.elapsed() < Duration::from_secs(2) {
            reads += 1;
            if !carries(pid, MARK.as_bytes()) {
                missed += 1;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(reads > 100, "only {reads} reads");
        assert!(
            !carries(Pid::this(), MARK.as_bytes()),
            "this process has no mark"
        );
        assert_eq!(missed, 0, "{missed} of {reads} reads missed the mark");
    }

    fn wait_for_mark(pid: Pid, mark: &str) {
        let started = Instant::now();
        while !fs::read(format!("/proc/{pid}/environ"))
            .is_ok_and(|environ| environ.split(|&b| b == 0).any(|var| var == mark.as_bytes()))
        {
            assert!(started.elapsed() < Duration::from_secs(5), "no mark");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
