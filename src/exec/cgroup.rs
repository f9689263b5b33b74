//! A cgroup (v2) of its own for every task, so that everything a task
//! starts, whatever session or process group it moves to, can be found and
//! killed.
//!
//! The worker creates `zcluster-<pid>/` inside its own cgroup once, and
//! `task-<n>/` cgroups inside that: one per running task, each kept once
//! its task has ended and it is empty, for a later task (so, in effect, one
//! per slot: that saves a mkdir, an rmdir and two opens per task, about
//! 10% of `zcluster map -j4 -- true` here), and all removed when the
//! process exits. The task's first process is born in its cgroup
//! (`clone3` with `CLONE_INTO_CGROUP`, through the directory opened by the
//! parent), or, where that cannot be done, moves itself in before it
//! executes the command (a write of `0` to the task cgroup's
//! `cgroup.procs`), so there is no moment at which the task runs, or forks,
//! outside it. A cgroup that was killed takes no birth again: Linux kills
//! a child born in it (see `spawn::check_clone_into_cgroup`). Killing the task
//! is one write of `1` to `cgroup.kill` (Linux 5.14+), or, on older kernels,
//! freezing the cgroup and SIGKILLing every pid in `cgroup.procs`. An empty
//! cgroup is removed with `rmdir`; zombies do not count, so that works
//! before the worker reaps the task's first process.
//!
//! No controller is enabled anywhere: only the core files are used, so the
//! kernel's "no processes in inner cgroups" rule never applies, and
//! creating a child of the worker's own cgroup is allowed wherever the worker
//! may write to it (as root, or in a subtree delegated to the user).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::spawn;

/// Why task cgroups cannot be used here; the worker then falls back to
/// tracking each task's descendants (see `lineage`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum CgroupError {
    /// No cgroup2 file system is mounted (a cgroup v1 only machine).
    #[error("no cgroup2 file system is mounted")]
    NotMounted,
    /// `/proc/self/cgroup` has no v2 entry (`0::/path`) inside a mount we see.
    #[error("this process's cgroup v2 path is unknown or outside the mount")]
    NoOwnCgroup,
    /// A cgroup file or directory could not be read, written or created.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the kernel said.
        source: io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// How long to wait for a killed cgroup to empty before giving up on
/// removing it (processes stuck in uninterruptible sleep, say).
const EMPTY_WAIT_AFTER_KILL: Duration = Duration::from_secs(2);

/// Rounds of "SIGKILL every pid listed" when there is no `cgroup.kill` and
/// no freezer; each round also catches what forked during the last.
const KILL_ROUNDS_WITHOUT_KILL_FILE: usize = 100;

/// Most empty task cgroups kept for later tasks; more than tasks ever ran
/// at once on one worker.
const MAX_IDLE_CGROUPS: usize = 256;

/// Nesting depth below a task cgroup that is cleaned up (a task that runs
/// zcluster itself leaves its own `zcluster-<pid>` there).
const MAX_REMOVE_DEPTH: usize = 8;

/// The worker's own directory of task cgroups, found and created once.
#[derive(Debug)]
pub(crate) struct TaskCgroups {
    /// `<own cgroup>/zcluster-<pid>`.
    base: PathBuf,
    /// Whether the kernel has `cgroup.kill` (5.14+).
    kill_file: bool,
    /// Whether the kernel has `cgroup.freeze` (5.2+).
    freeze_file: bool,
    /// Set when a task could not enter its cgroup although it could run
    /// without: not tried again.
    broken: AtomicBool,
    /// Task cgroups that ended empty, kept for the next tasks: a cgroup per
    /// slot rather than per task saves a mkdir and an rmdir (and the opens)
    /// per task.
    idle: Arc<Mutex<Vec<TaskCgroup>>>,
}

impl TaskCgroups {
    /// Finds this process's cgroup v2 directory and creates the worker's
    /// directory of task cgroups in it, proving that it may. Removes empty
    /// directories left by workers that died (their pid is gone).
    pub(crate) fn create() -> Result<TaskCgroups, CgroupError> {
        let mountinfo = read_to_string(Path::new("/proc/self/mountinfo"))?;
        let own = read_to_string(Path::new("/proc/self/cgroup"))?;
        let own_dir = own_cgroup_dir(&mountinfo, &own)?;
        remove_stale(&own_dir);
        let base = own_dir.join(format!("zcluster-{}", std::process::id()));
        match fs::create_dir(&base) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(io_error(&base)(error)),
        }
        let cgroups = TaskCgroups {
            kill_file: base.join("cgroup.kill").exists(),
            freeze_file: base.join("cgroup.freeze").exists(),
            base,
            broken: AtomicBool::new(false),
            idle: Arc::new(Mutex::new(Vec::new())),
        };
        // One real task cgroup, made and removed, so that a tree where
        // mkdir works but cgroup.procs does not is found now; and whether
        // tasks can be born in theirs.
        let first = cgroups.task()?;
        if let Some(dir) = first.entry().dir {
            spawn::check_clone_into_cgroup(dir);
        }
        drop(first);
        Ok(cgroups)
    }

    /// Where the task cgroups are, for the log.
    pub(crate) fn base(&self) -> &Path {
        &self.base
    }

    /// Whether tasks still go into cgroups (see [`TaskCgroups::give_up`]).
    pub(crate) fn usable(&self) -> bool {
        !self.broken.load(Ordering::Relaxed)
    }

    /// Stops using cgroups, because a task could not enter one; whether
    /// this call was the first to say so (to log it once).
    pub(crate) fn give_up(&self) -> bool {
        !self.broken.swap(true, Ordering::Relaxed)
    }

    /// Removes the idle task cgroups and, if no task is running, the
    /// worker's directory: for the end of the process, so it leaves nothing
    /// behind (a worker that is killed leaves its directory to the next
    /// one's clean-up of dead workers' directories).
    pub(crate) fn remove_idle(&self) {
        let idle = match self.idle.lock() {
            Ok(mut idle) => std::mem::take(&mut *idle),
            Err(_) => return,
        };
        for mut task_cgroup in idle {
            // Not back to the idle list: removed on drop.
            task_cgroup.idle = Weak::new();
            drop(task_cgroup);
        }
        let _ = fs::remove_dir(&self.base);
    }

    /// An empty cgroup for one task: one that an earlier task left empty,
    /// or a new one.
    pub(crate) fn task(&self) -> Result<TaskCgroup, CgroupError> {
        if let Some(idle) = self.idle.lock().ok().and_then(|mut idle| idle.pop()) {
            return Ok(idle);
        }
        // Process-wide, so that two sets of task cgroups (tests make their
        // own) never pick the same name.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = self.base.join(format!("task-{n}"));
        if let Err(error) = fs::create_dir(&dir) {
            if error.kind() != io::ErrorKind::NotFound {
                return Err(io_error(&dir)(error));
            }
            // Someone removed the worker's directory: make it again.
            fs::create_dir_all(&self.base).map_err(io_error(&self.base))?;
            fs::create_dir(&dir).map_err(io_error(&dir))?;
        }
        let procs_path = dir.join("cgroup.procs");
        let procs = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&procs_path);
        let procs = match procs {
            Ok(file) => file,
            Err(error) => {
                let _ = fs::remove_dir(&dir);
                return Err(io_error(&procs_path)(error));
            }
        };
        // Without it a task still enters by writing to `cgroup.procs`.
        let handle = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(&dir)
            .ok();
        Ok(TaskCgroup {
            dir,
            handle,
            killed: std::cell::Cell::new(false),
            procs: Some(procs),
            events: None,
            kill_file: self.kill_file,
            freeze_file: self.freeze_file,
            idle: Arc::downgrade(&self.idle),
        })
    }
}

/// One task's cgroup: everything the task starts is in it until it is
/// killed; then it is kept for another task, or removed.
#[derive(Debug)]
pub(crate) struct TaskCgroup {
    dir: PathBuf,
    /// The directory itself, open: a task's first process can be started
    /// right inside the cgroup (`CLONE_INTO_CGROUP`), with no move.
    handle: Option<File>,
    /// Set once `cgroup.kill` was written: no process is born in it again
    /// (see `spawn::check_clone_into_cgroup`), and it is removed when its
    /// task ends rather than kept.
    killed: std::cell::Cell<bool>,
    /// Its `cgroup.procs`, open for writing; the task's first process writes
    /// `0` to it (itself) before executing the command. `None` once moved
    /// to the idle list.
    procs: Option<File>,
    /// Its `cgroup.events`, opened when an emptying must be waited for.
    events: Option<File>,
    kill_file: bool,
    freeze_file: bool,
    /// Where it goes when it ends empty.
    idle: Weak<Mutex<Vec<TaskCgroup>>>,
}

impl TaskCgroup {
    /// Its `cgroup.procs`, open for writing (close-on-exec): the task's
    /// first process writes `0` to it, moving itself in, before it runs
    /// the command (see `spawn`).
    pub(crate) fn procs_fd(&self) -> RawFd {
        self.procs.as_ref().map_or(-1, AsRawFd::as_raw_fd)
    }

    /// Where the task's first process starts: the cgroup's directory, to be
    /// born in, and its `cgroup.procs`, to move into where that cannot be
    /// done (see `spawn`).
    pub(crate) fn entry(&self) -> spawn::CgroupEntry {
        spawn::CgroupEntry {
            dir: self
                .handle
                .as_ref()
                .filter(|_| !self.killed.get())
                .map(AsRawFd::as_raw_fd),
            procs: self.procs_fd(),
        }
    }

    /// The cgroup's directory.
    #[cfg(test)]
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pids now in the cgroup (not zombies).
    pub(crate) fn members(&self) -> Vec<Pid> {
        let path = self.dir.join("cgroup.procs");
        fs::read_to_string(&path)
            .map(|text| {
                text.lines()
                    .filter_map(|line| line.trim().parse().ok())
                    .map(Pid::from_raw)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether any process (not counting zombies) is still in the cgroup.
    pub(crate) fn populated(&mut self) -> bool {
        match self.read_populated() {
            Ok(populated) => populated,
            // Unknown: assume so, so the caller kills and waits, unless the
            // cgroup itself is gone.
            Err(_) => self.dir.exists(),
        }
    }

    fn read_populated(&mut self) -> Result<bool, CgroupError> {
        let path = self.dir.join("cgroup.events");
        if self.events.is_none() {
            self.events = Some(File::open(&path).map_err(io_error(&path))?);
        }
        let Some(events) = self.events.as_mut() else {
            return Ok(true);
        };
        let mut text = String::with_capacity(64);
        events
            .seek(SeekFrom::Start(0))
            .and_then(|_| events.read_to_string(&mut text))
            .map_err(io_error(&path))?;
        Ok(text
            .lines()
            .any(|line| line.split_whitespace().eq(["populated", "1"])))
    }

    /// Sends `signal` to every process in the cgroup (a SIGTERM before the
    /// kill, so daemons may clean up).
    pub(crate) fn signal(&self, signal: Signal) {
        for pid in self.members() {
            let _ = kill(pid, signal);
        }
    }

    /// SIGKILLs everything in the cgroup, including what forks meanwhile.
    pub(crate) fn kill(&self) {
        self.killed.set(true);
        if self.kill_file && self.write_file("cgroup.kill", b"1").is_ok() {
            return;
        }
        let frozen = self.freeze_file && self.write_file("cgroup.freeze", b"1").is_ok();
        // Frozen processes cannot fork, and still die of SIGKILL.
        for _ in 0..KILL_ROUNDS_WITHOUT_KILL_FILE {
            let members = self.members();
            if members.is_empty() {
                break;
            }
            for pid in members {
                let _ = kill(pid, Signal::SIGKILL);
            }
        }
        if frozen {
            let _ = self.write_file("cgroup.freeze", b"0");
        }
    }

    fn write_file(&self, name: &str, value: &[u8]) -> Result<(), CgroupError> {
        let path = self.dir.join(name);
        OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut file| file.write_all(value))
            .map_err(io_error(&path))
    }

    /// Waits until the cgroup is empty or `within` has passed; whether it is
    /// empty. The kernel signals a change of `cgroup.events` to `poll` as
    /// POLLPRI, so this sleeps only until something happens.
    pub(crate) fn wait_empty(&mut self, within: Duration) -> bool {
        let until = Instant::now().checked_add(within);
        loop {
            if !self.populated() {
                return true;
            }
            let left = match until {
                Some(until) => until.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(1),
            };
            if left.is_zero() {
                return false;
            }
            let Some(events) = self.events.as_ref() else {
                return false;
            };
            // At most 100 ms at a time, in case a notification is missed.
            let wait = left.min(Duration::from_millis(100));
            let millis = u16::try_from(wait.as_millis().max(1)).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(events.as_fd(), PollFlags::POLLPRI)];
            match nix::poll::poll(&mut fds, PollTimeout::from(millis)) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(_) => std::thread::sleep(wait),
            }
        }
    }
}

impl Drop for TaskCgroup {
    /// Kills whatever is left, waits (bounded) for it to die, and keeps the
    /// empty cgroup for another task or removes it. Logged, never fatal: a
    /// cgroup that cannot be emptied or removed stays in the worker's
    /// directory.
    fn drop(&mut self) {
        if self.procs.is_none() {
            // Moved to the idle list.
            return;
        }
        if self.populated() {
            self.kill();
            if !self.wait_empty(EMPTY_WAIT_AFTER_KILL) {
                tracing::warn!(
                    cgroup = %self.dir.display(),
                    "task processes did not die within {EMPTY_WAIT_AFTER_KILL:?} of SIGKILL; \
                     leaving their cgroup"
                );
                return;
            }
        }
        if let Some(idle) = self.idle.upgrade().filter(|_| !self.killed.get()) {
            if let Ok(mut idle) = idle.lock() {
                if idle.len() < MAX_IDLE_CGROUPS {
                    idle.push(TaskCgroup {
                        dir: std::mem::take(&mut self.dir),
                        handle: self.handle.take(),
                        killed: std::cell::Cell::new(false),
                        procs: self.procs.take(),
                        events: self.events.take(),
                        kill_file: self.kill_file,
                        freeze_file: self.freeze_file,
                        idle: self.idle.clone(),
                    });
                    return;
                }
            }
        }
        self.events = None;
        self.handle = None;
        if let Err(error) = remove_tree(&self.dir, MAX_REMOVE_DEPTH) {
            tracing::warn!(cgroup = %self.dir.display(), %error, "cannot remove task cgroup");
        }
    }
}

/// Removes an empty cgroup and any empty cgroups below it.
fn remove_tree(dir: &Path, depth: usize) -> io::Result<()> {
    match fs::remove_dir(dir) {
        Ok(()) => return Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) if depth == 0 || error.raw_os_error() != Some(libc::EBUSY) => return Err(error),
        Err(_) => {}
    }
    // Busy: a child cgroup (a nested zcluster's) is in the way.
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path(), depth - 1)?;
        }
    }
    fs::remove_dir(dir)
}

/// Removes the task cgroup directories of workers that are gone, where
/// they are empty. Cgroups with processes in them are left alone: their
/// owner may live in another pid namespace.
fn remove_stale(own_dir: &Path) {
    let Ok(entries) = fs::read_dir(own_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix("zcluster-"))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        match remove_tree(&entry.path(), MAX_REMOVE_DEPTH) {
            Ok(()) => {
                tracing::debug!(dir = %entry.path().display(), "removed a dead worker's task cgroups")
            }
            Err(error) => tracing::debug!(
                dir = %entry.path().display(),
                %error,
                "a dead worker's task cgroups are not empty; leaving them"
            ),
        }
    }
}

fn read_to_string(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(io_error(path))
}

/// This process's cgroup v2 directory, from `/proc/self/mountinfo` and
/// `/proc/self/cgroup`. The v2 hierarchy may be mounted at `/sys/fs/cgroup`
/// or, on hybrid machines, at `/sys/fs/cgroup/unified`; the mount's root
/// (field 4) is removed from the cgroup path, for mounts of a subtree.
fn own_cgroup_dir(mountinfo: &str, own: &str) -> Result<PathBuf, CgroupError> {
    let path = own
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .ok_or(CgroupError::NoOwnCgroup)?;
    let mut mounted = false;
    for line in mountinfo.lines() {
        let Some((fields, fs_fields)) = line.split_once(" - ") else {
            continue;
        };
        if fs_fields.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        mounted = true;
        let mut fields = fields.split_whitespace();
        let (Some(root), Some(mount_point)) = (fields.nth(3), fields.next()) else {
            continue;
        };
        let root = unescape_mount_field(root);
        let relative = if root == "/" {
            Some(path)
        } else {
            path.strip_prefix(root.as_str())
                .filter(|rest| rest.is_empty() || rest.starts_with('/'))
        };
        if let Some(relative) = relative {
            let dir = Path::new(&unescape_mount_field(mount_point))
                .join(relative.trim_start_matches('/'));
            return Ok(dir);
        }
    }
    Err(if mounted {
        CgroupError::NoOwnCgroup
    } else {
        CgroupError::NotMounted
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes.get(i + 1..i + 4).and_then(|digits| {
            let text = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[i], escaped) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The worker's task cgroups, or `None` (and a SKIP line) where this
    /// machine does not allow them.
    pub(crate) fn task_cgroups_or_skip() -> Option<TaskCgroups> {
        match TaskCgroups::create() {
            Ok(cgroups) => Some(cgroups),
            Err(error) => {
                eprintln!("SKIP: no task cgroups on this machine: {error}");
                None
            }
        }
    }

    /// Dead, or a zombie nobody reaped yet.
    fn gone(pid: Pid) -> bool {
        fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X'))
        })
    }

    #[test]
    fn without_cgroup_kill_everything_is_frozen_and_killed() {
        let Some(cgroups) = task_cgroups_or_skip() else {
            return;
        };
        let mut task = cgroups.task().unwrap();
        // As on a kernel before 5.14.
        task.kill_file = false;
        let script = "exec >/dev/null 2>&1; setsid sleep 300 & setsid sleep 300 & (sleep 300 &); exec sleep 300";
        use std::ffi::OsStr;
        let args = [OsStr::new("-c"), OsStr::new(script)];
        let process = super::super::spawn::spawn(
            OsStr::new("sh"),
            &args,
            Some(task.entry()),
            None,
            super::super::spawn::Setup::default(),
        )
        .unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        while task.members().len() < 4 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        let members = task.members();
        assert_eq!(members.len(), 4, "{members:?}");
        let dir = task.dir.clone();
        drop(task);
        let left: Vec<_> = fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        assert!(left.is_empty(), "{left:?} are still in it");
        // Kept empty for the next task; removed with the set.
        drop(cgroups);
        assert!(matches!(
            nix::sys::wait::waitpid(process.pid, None),
            Ok(nix::sys::wait::WaitStatus::Signaled(_, Signal::SIGKILL, _))
        ));
        for pid in members {
            assert!(gone(pid), "{pid} survived");
        }
        assert!(!dir.exists(), "{} was left behind", dir.display());
    }

    const HYBRID: &str = "\
25 30 0:22 / /sys rw,nosuid - sysfs sysfs rw
33 25 0:28 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
41 33 0:36 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
42 33 0:37 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";

    /// Runs `sh -c script` as a task in `task`, and its stdout and exit.
    fn run_in(entry: spawn::CgroupEntry, script: &str) -> (String, WaitStatus) {
        use std::ffi::OsStr;
        let args = [OsStr::new("-c"), OsStr::new(script)];
        let process = spawn::spawn(
            OsStr::new("sh"),
            &args,
            Some(entry),
            None,
            spawn::Setup::default(),
        )
        .expect("spawn");
        let mut out = String::new();
        let mut stdout = process.stdout;
        stdout.read_to_string(&mut out).unwrap();
        (out, nix::sys::wait::waitpid(process.pid, None).unwrap())
    }

    use nix::sys::wait::WaitStatus;

    /// A task whose cgroup's directory is open starts inside it: it never
    /// writes to `cgroup.procs` (here a descriptor that refuses writes,
    /// which a move would have failed on), yet runs in its cgroup.
    #[test]
    fn a_task_is_born_in_its_cgroup() {
        let Some(cgroups) = task_cgroups_or_skip() else {
            return;
        };
        if !spawn::births_in_cgroups() {
            eprintln!("SKIP: tasks cannot be born in their cgroup here");
            return;
        }
        let task = cgroups.task().unwrap();
        let read_only = File::open("/dev/null").unwrap();
        let entry = spawn::CgroupEntry {
            dir: task.entry().dir,
            procs: read_only.as_raw_fd(),
        };
        assert!(entry.dir.is_some());
        let (out, status) = run_in(entry, "cat /proc/self/cgroup");
        assert!(matches!(status, WaitStatus::Exited(_, 0)), "{status:?}");
        let name = task.dir().file_name().unwrap().to_str().unwrap();
        assert!(
            out.lines()
                .any(|line| line.starts_with("0::") && line.ends_with(&format!("/{name}"))),
            "{out}"
        );
    }

    /// Linux (6.14 to 6.18 at least) kills a child born in a cgroup that
    /// was once killed: such a cgroup takes its next task by a move, and is
    /// removed rather than kept when its task ends.
    #[test]
    fn a_killed_cgroup_takes_no_birth_and_is_not_kept() {
        let Some(cgroups) = task_cgroups_or_skip() else {
            return;
        };
        let task = cgroups.task().unwrap();
        task.kill();
        assert_eq!(task.entry().dir, None, "no birth in a killed cgroup");
        let (_, status) = run_in(task.entry(), "exit 3");
        assert!(matches!(status, WaitStatus::Exited(_, 3)), "{status:?}");
        let dir = task.dir().to_owned();
        drop(task);
        assert!(!dir.exists(), "a killed cgroup is removed, not kept");
    }

    #[test]
    fn finds_the_v2_directory_on_a_hybrid_machine() {
        let own = "4:memory:/x\n0::/work/slot\n";
        assert_eq!(
            own_cgroup_dir(HYBRID, own).unwrap(),
            Path::new("/sys/fs/cgroup/unified/work/slot")
        );
        assert_eq!(
            own_cgroup_dir(HYBRID, "0::/\n").unwrap(),
            Path::new("/sys/fs/cgroup/unified")
        );
    }

    #[test]
    fn strips_the_root_of_a_subtree_mount() {
        let info = "50 1 0:40 /user.slice/u /mnt/my\\040cg rw - cgroup2 none rw\n";
        assert_eq!(
            own_cgroup_dir(info, "0::/user.slice/u/job\n").unwrap(),
            Path::new("/mnt/my cg/job")
        );
        assert!(matches!(
            own_cgroup_dir(info, "0::/user.slice/other\n"),
            Err(CgroupError::NoOwnCgroup)
        ));
    }

    #[test]
    fn v1_only_is_not_mounted() {
        let info = "42 33 0:37 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert!(matches!(
            own_cgroup_dir(info, "0::/\n"),
            Err(CgroupError::NotMounted)
        ));
        assert!(matches!(
            own_cgroup_dir(HYBRID, "4:memory:/\n"),
            Err(CgroupError::NoOwnCgroup)
        ));
    }

    #[test]
    fn unescapes_mount_fields() {
        assert_eq!(unescape_mount_field(r"a\040b\134c"), r"a b\c");
        assert_eq!(unescape_mount_field(r"trailing\04"), r"trailing\04");
    }
}
