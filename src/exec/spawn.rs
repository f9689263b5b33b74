//! Starting a task's first process the way `posix_spawn` does, with one
//! more step before `exec`: entering the task's cgroup.
//!
//! Why not `std::process::Command`: with a `pre_exec` hook (the only way to
//! run code in the child before `exec`), std falls back from `posix_spawn`
//! to `fork`, which copies the page tables of the whole worker. Measured on
//! `zcluster map -j4 -- true`, that alone cut throughput from about 1,400
//! to about 450 tasks/s on the 2-core project machine, while the cgroup's
//! own cost (mkdir, the move, rmdir) was lost in the noise. So this module
//! does what glibc's `posix_spawn` does: `clone(CLONE_VM | CLONE_VFORK)` on a
//! small stack of its own, the parent thread waiting until the child has
//! called `execve` (or failed), and in the child only async-signal-safe
//! system calls on data prepared by the parent. Where it can (Linux 5.7+ on
//! x86-64), the clone is `clone3` with `CLONE_INTO_CGROUP`: the child is
//! born in the task's cgroup and step 1 is skipped (see
//! [`clone_into_cgroup`] for why, and for a kernel bug it avoids).
//!
//! 1. write `0` to the task cgroup's `cgroup.procs` (moves the child itself);
//! 2. `setpgid(0, 0)`: a process group of its own;
//! 3. `/dev/null` as stdin, the output pipes as stdout and stderr;
//! 4. every signal with a handler back to its default action (the handlers
//!    are the parent's, and the memory is shared until `execve`), SIGPIPE to
//!    default (Rust ignores it), an empty signal mask, as std does;
//! 5. `execve` of each candidate path in turn, like `execvp`.
//!
//! A failure is reported through memory shared with the parent (the step
//! and errno), so the parent can tell "could not enter the cgroup" from
//! "no such program". All signals are blocked in the parent thread from
//! before the clone until it returns, so no handler runs in the child while
//! it shares the parent's memory.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::ptr;
use std::rc::Rc;
use std::sync::atomic::{AtomicI32, Ordering};

use nix::unistd::Pid;

/// Stack of the child between `clone` and `execve`: it only makes system
/// calls through libc, which needs far less.
const CHILD_STACK_BYTES: usize = 64 * 1024;

/// `PATH` when the environment has none (glibc's `_CS_PATH`).
const DEFAULT_PATH: &str = "/bin:/usr/bin";

/// Why a task's process could not be started.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SpawnError {
    /// The child could not move into the task's cgroup: the command may
    /// well run without it.
    #[error("cannot enter the task's cgroup: {0}")]
    Cgroup(io::Error),
    /// The command cannot run (no such program, permission denied, an
    /// argument with a NUL byte, no pipes left, ...).
    #[error("{0}")]
    Command(io::Error),
}

impl From<SpawnError> for io::Error {
    fn from(error: SpawnError) -> io::Error {
        match error {
            SpawnError::Cgroup(error) | SpawnError::Command(error) => error,
        }
    }
}

/// A started task process: its pid (also its process group id) and the
/// read ends of its output pipes. It must be reaped with `waitpid`.
#[derive(Debug)]
pub(crate) struct Process {
    /// The pid, which is also the process group id.
    pub(crate) pid: Pid,
    /// What the command writes to stdout.
    pub(crate) stdout: File,
    /// What the command writes to stderr.
    pub(crate) stderr: File,
}

/// What the child needs, prepared by the parent; the child only reads it,
/// except for the failure report.
struct ChildPlan {
    candidates: Vec<*const libc::c_char>,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    /// The task cgroup's `cgroup.procs`, or -1.
    cgroup_procs: RawFd,
    /// The directory to start in, or null.
    cwd: *const libc::c_char,
    /// Signals 1 to this one (SIGRTMAX) are reset if they have a handler.
    max_signal: libc::c_int,
    /// Which step failed (0: none), and its errno.
    failed_step: AtomicI32,
    failed_errno: AtomicI32,
}

const STEP_CGROUP: i32 = 1;
const STEP_SETUP: i32 = 2;
const STEP_EXEC: i32 = 3;

/// What a task asks of its process besides its command: variables set in
/// its environment and the directory it starts in (a map's `--env`,
/// `--wd` and the `ZCLUSTER_*` variables).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Setup<'a> {
    /// Set in the task's environment, replacing any value it had.
    pub(crate) env: &'a [(std::ffi::OsString, std::ffi::OsString)],
    /// The working directory; `None`: this process's.
    pub(crate) cwd: Option<&'a std::path::Path>,
}

/// Starts `program` with `args` (in the environment of this process, plus
/// `extra_env` if given and `setup`'s variables), in its own process
/// group, in `setup`'s directory if given, stdin from `/dev/null`, stdout
/// and stderr to new pipes, and in `cgroup` if given (born in it, or
/// moved in first thing; see [`CgroupEntry`]).
pub(crate) fn spawn(
    program: &OsStr,
    args: &[&OsStr],
    cgroup: Option<CgroupEntry>,
    extra_env: Option<(&str, &str)>,
    setup: Setup<'_>,
) -> Result<Process, SpawnError> {
    let command = SpawnError::Command;
    let candidates = candidates(program).map_err(command)?;
    let cwd = setup
        .cwd
        .map(|dir| c_string(dir.as_os_str().as_bytes()))
        .transpose()
        .map_err(command)?;
    let argv = std::iter::once(program)
        .chain(args.iter().copied())
        .map(|arg| c_string(arg.as_bytes()))
        .collect::<io::Result<Vec<_>>>()
        .map_err(command)?;
    let envp = environment(extra_env, setup.env).map_err(command)?;
    let stdin = dev_null().map_err(command)?;
    let (out_read, out_write) = pipe().map_err(command)?;
    let (err_read, err_write) = pipe().map_err(command)?;

    let argv_ptrs = null_terminated(&argv);
    let plan = ChildPlan {
        candidates: candidates.iter().map(|c| c.as_ptr()).collect(),
        argv: argv_ptrs.as_ptr(),
        envp: envp.envp(),
        stdin,
        stdout: out_write.as_raw_fd(),
        stderr: err_write.as_raw_fd(),
        cgroup_procs: -1,
        cwd: cwd.as_ref().map_or(ptr::null(), |dir| dir.as_ptr()),
        max_signal: libc::SIGRTMAX(),
        failed_step: AtomicI32::new(0),
        failed_errno: AtomicI32::new(0),
    };
    let mut stack: Vec<MaybeUninit<u128>> =
        Vec::with_capacity(CHILD_STACK_BYTES / size_of::<u128>());
    // SAFETY: the pointer one past the end of the allocation is the top
    // of the (downward-growing) stack; u128 keeps it 16-byte aligned.
    let stack_top = unsafe { stack.as_mut_ptr().add(stack.capacity()) };

    let mut plan = plan;
    let pid = {
        let _blocked = BlockedSignals::new();
        let born_in = cgroup.and_then(|entry| entry.dir).and_then(|dir| {
            // SAFETY: as for the clone below; this one also puts the child
            // in the cgroup open as `dir`.
            unsafe {
                clone_into_cgroup(
                    dir,
                    child_main,
                    ptr::from_ref(&plan).cast_mut().cast(),
                    stack_top,
                    CHILD_STACK_BYTES,
                )
            }
        });
        if let Some(pid) = born_in {
            pid
        } else {
            // Not born in it (no directory open, or an older kernel): it moves
            // itself in first thing.
            plan.cgroup_procs = cgroup.map_or(-1, |entry| entry.procs);
            // SAFETY: CLONE_VM | CLONE_VFORK is posix_spawn's clone: the child
            // runs `child_main` on its own stack in our memory, and this thread
            // is suspended until the child calls execve or exits, so `plan`,
            // `argv`, `envp` and `stack` outlive its use of them. All signals are
            // blocked meanwhile (see BlockedSignals), so none of our handlers
            // runs in the child.
            unsafe {
                libc::clone(
                    child_main,
                    stack_top.cast(),
                    libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                    ptr::from_ref(&plan).cast_mut().cast(),
                )
            }
        }
    };
    if pid == -1 {
        return Err(command(io::Error::last_os_error()));
    }
    let pid = Pid::from_raw(pid);
    let step = plan.failed_step.load(Ordering::Acquire);
    if step != 0 {
        // The child has exited (with status 127); reap it.
        while nix::sys::wait::waitpid(pid, None) == Err(nix::errno::Errno::EINTR) {}
        let error = io::Error::from_raw_os_error(plan.failed_errno.load(Ordering::Acquire));
        return Err(if step == STEP_CGROUP {
            SpawnError::Cgroup(error)
        } else {
            command(error)
        });
    }
    Ok(Process {
        pid,
        stdout: File::from(out_read),
        stderr: File::from(err_read),
    })
}

/// How a task's first process gets into its cgroup: started right in it
/// through the cgroup's directory (`CLONE_INTO_CGROUP`, Linux 5.7+), or,
/// where that is not open or cannot be done, by writing `0` to its
/// `cgroup.procs` before anything else.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CgroupEntry {
    /// The cgroup's directory, open.
    pub(crate) dir: Option<RawFd>,
    /// Its `cgroup.procs`, open for writing.
    pub(crate) procs: RawFd,
}

/// Set once `clone3` with `CLONE_INTO_CGROUP` turned out not to exist here
/// (an older kernel, or a seccomp filter that refuses `clone3`).
static NO_CLONE_INTO_CGROUP: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Whether tasks are started right inside their cgroup (so far).
#[cfg(test)]
pub(crate) fn births_in_cgroups() -> bool {
    cfg!(all(target_os = "linux", target_arch = "x86_64"))
        && !NO_CLONE_INTO_CGROUP.load(Ordering::Relaxed)
}

/// `struct clone_args` of `clone3(2)`, up to `cgroup` (its second version).
#[repr(C)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Checks, once per process, that a child born in a cgroup (see
/// [`clone_into_cgroup`]) lives, with a child that only exits, started
/// in the never-killed cgroup open as `dir`. Linux 6.14 to 6.18 at least
/// compare the new cgroup's count of `cgroup.kill`s with the parent's own
/// cgroup's, and kill the child at birth when they differ; where even a
/// fresh cgroup does that (this process's own cgroup was killed once),
/// tasks move in instead. (A task cgroup that was killed is never used
/// for a birth again: see `cgroup::TaskCgroup::entry`.)
pub(crate) fn check_clone_into_cgroup(dir: RawFd) {
    static CHECKED: std::sync::Once = std::sync::Once::new();
    CHECKED.call_once(|| {
        extern "C" fn exit_at_once(_: *mut libc::c_void) -> libc::c_int {
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(0) }
        }
        const BYTES: usize = 4096;
        let mut stack: Vec<MaybeUninit<u128>> = Vec::with_capacity(BYTES / size_of::<u128>());
        // SAFETY: one past the end of the allocation, as in `spawn`.
        let stack_top = unsafe { stack.as_mut_ptr().add(stack.capacity()) };
        let pid = {
            let _blocked = BlockedSignals::new();
            // SAFETY: the child only calls `_exit` on its own stack.
            unsafe { clone_into_cgroup(dir, exit_at_once, ptr::null_mut(), stack_top, BYTES) }
        };
        let Some(pid) = pid else {
            return;
        };
        let status = loop {
            match nix::sys::wait::waitpid(Pid::from_raw(pid), None) {
                Err(nix::errno::Errno::EINTR) => {}
                other => break other,
            }
        };
        if !matches!(status, Ok(nix::sys::wait::WaitStatus::Exited(_, 0))) {
            NO_CLONE_INTO_CGROUP.store(true, Ordering::Relaxed);
            tracing::debug!(
                ?status,
                "a child born in a fresh cgroup did not live; tasks move into theirs instead"
            );
        }
    });
}

/// The clone of [`spawn`] with the child born in the cgroup open as `dir`:
/// no move into it afterwards (a move takes the kernel's cgroup-wide lock
/// for writing, which every fork and exit on the machine waits on, and
/// costs the child a write). The child runs `entry(arg)`, which must
/// execute a program or `_exit`. Its pid, or `None` when it could not be
/// made so (the caller then clones as before).
///
/// # Safety
///
/// As for `clone(CLONE_VM | CLONE_VFORK)`: what `arg` points to and the
/// stack below `stack_top` (`stack_bytes` of it, 16-byte aligned) must
/// stay alive and untouched until this returns, with all signals blocked.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
unsafe fn clone_into_cgroup(
    dir: RawFd,
    entry: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    arg: *mut libc::c_void,
    stack_top: *mut MaybeUninit<u128>,
    stack_bytes: usize,
) -> Option<libc::pid_t> {
    if NO_CLONE_INTO_CGROUP.load(Ordering::Relaxed) {
        return None;
    }
    let args = CloneArgs {
        flags: (libc::CLONE_VM | libc::CLONE_VFORK) as u64 | CLONE_INTO_CGROUP,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack_top as u64 - stack_bytes as u64,
        stack_size: stack_bytes as u64,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: dir as u64,
    };
    let ret: i64;
    // SAFETY: `clone3` returns twice. In this thread (the parent) it
    // returns the child's pid or -errno, and only rcx and r11 are
    // clobbered (by `syscall`). The child starts on the top of the stack
    // given (the kernel sets its stack pointer), where it calls
    // `entry(arg)`, which executes the command or `_exit`s, and
    // never comes back into Rust code: it exits should it return. This is
    // what glibc's own clone does in assembly, for the same reason.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "mov edi, eax",
            "mov eax, 60", // SYS_exit
            "syscall",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => ret,
            inout("rdi") ptr::from_ref(&args) => _,
            in("rsi") size_of::<CloneArgs>(),
            in("r12") arg,
            in("r13") entry,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    if ret >= 0 {
        return libc::pid_t::try_from(ret).ok();
    }
    let errno = i32::try_from(-ret).unwrap_or(libc::EINVAL);
    // No clone3, no CLONE_INTO_CGROUP, or clone3 filtered out: never again.
    // Anything else (the cgroup gone, say): the fallback says what it is.
    if matches!(
        errno,
        libc::ENOSYS | libc::E2BIG | libc::EINVAL | libc::EPERM
    ) {
        NO_CLONE_INTO_CGROUP.store(true, Ordering::Relaxed);
        tracing::debug!(
            error = %io::Error::from_raw_os_error(errno),
            "tasks cannot start inside their cgroup; they move in instead"
        );
    }
    None
}

/// Elsewhere a task's first process moves into its cgroup itself.
#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
unsafe fn clone_into_cgroup(
    _dir: RawFd,
    _entry: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    _arg: *mut libc::c_void,
    _stack_top: *mut MaybeUninit<u128>,
    _stack_bytes: usize,
) -> Option<libc::pid_t> {
    None
}

/// The child, between clone and execve. Only async-signal-safe libc calls
/// on memory prepared by the parent; no allocation, no locks, no unwinding.
extern "C" fn child_main(plan: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `plan` is the parent's ChildPlan, alive until we exec or exit.
    let plan = unsafe { &*plan.cast::<ChildPlan>() };
    let fail = |step: i32| -> libc::c_int {
        // SAFETY: errno is readable in any thread (here: the parent's TLS,
        // whose thread is suspended).
        let errno = unsafe { *libc::__errno_location() };
        plan.failed_errno.store(errno, Ordering::Release);
        plan.failed_step.store(step, Ordering::Release);
        // SAFETY: _exit ends the child without running anything of ours.
        unsafe { libc::_exit(127) }
    };
    // SAFETY (for the block): plain system calls on fds and buffers the
    // parent prepared; see the module doc for why each is here.
    unsafe {
        if plan.cgroup_procs >= 0 && libc::write(plan.cgroup_procs, b"0".as_ptr().cast(), 1) != 1 {
            return fail(STEP_CGROUP);
        }
        if libc::setpgid(0, 0) != 0 {
            return fail(STEP_SETUP);
        }
        if !plan.cwd.is_null() && libc::chdir(plan.cwd) != 0 {
            return fail(STEP_SETUP);
        }
        for (from, to) in [(plan.stdin, 0), (plan.stdout, 1), (plan.stderr, 2)] {
            if libc::dup2(from, to) == -1 {
                return fail(STEP_SETUP);
            }
        }
        let mut action: libc::sigaction = std::mem::zeroed();
        for signal in 1..=plan.max_signal {
            if signal == libc::SIGKILL || signal == libc::SIGSTOP {
                continue;
            }
            if libc::sigaction(signal, ptr::null(), &mut action) == 0
                && (signal == libc::SIGPIPE
                    || (action.sa_sigaction != libc::SIG_DFL
                        && action.sa_sigaction != libc::SIG_IGN))
            {
                libc::signal(signal, libc::SIG_DFL);
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        if libc::pthread_sigmask(libc::SIG_SETMASK, &empty, ptr::null_mut()) != 0 {
            return fail(STEP_SETUP);
        }
        // As execvp: the first candidate that runs; EACCES if one exists
        // but may not be run and none runs; else the first other error.
        let mut saw_eacces = false;
        for &candidate in &plan.candidates {
            libc::execve(candidate, plan.argv, plan.envp);
            match *libc::__errno_location() {
                libc::EACCES => saw_eacces = true,
                libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
                _ => return fail(STEP_EXEC),
            }
        }
        *libc::__errno_location() = if saw_eacces {
            libc::EACCES
        } else {
            libc::ENOENT
        };
        fail(STEP_EXEC)
    }
}

/// Blocks every signal in this thread until dropped, restoring the mask
/// it found.
struct BlockedSignals(libc::sigset_t);

impl BlockedSignals {
    fn new() -> Self {
        // SAFETY: sigset_t is plain data; the calls only fill and read it.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
            BlockedSignals(old)
        }
    }
}

impl Drop for BlockedSignals {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved by `new`.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, ptr::null_mut());
        }
    }
}

/// The paths to try, as `execvp` would: the program itself if it has a
/// slash, else it in each directory of `PATH` (an empty entry is the
/// current directory).
fn candidates(program: &OsStr) -> io::Result<Vec<CString>> {
    let program = program.as_bytes();
    if program.is_empty() {
        return Err(io::Error::from_raw_os_error(libc::ENOENT));
    }
    if program.contains(&b'/') {
        return Ok(vec![c_string(program)?]);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from(DEFAULT_PATH));
    path.as_bytes()
        .split(|&b| b == b':')
        .map(|dir| {
            let mut full = Vec::with_capacity(dir.len() + 1 + program.len());
            if !dir.is_empty() {
                full.extend_from_slice(dir);
                full.push(b'/');
            }
            full.extend_from_slice(program);
            c_string(&full)
        })
        .collect()
}

std::thread_local! {
    /// Variables every task this thread starts gets besides the process's
    /// own (what the task was given: `CUDA_VISIBLE_DEVICES`, ...); set by
    /// [`with_task_environment`].
    static TASK_ENV: std::cell::RefCell<Vec<(String, String)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with `vars` added to the environment of every task this
/// thread starts in it (replacing what the process has under those names).
pub(crate) fn with_task_environment<R>(vars: Vec<(String, String)>, f: impl FnOnce() -> R) -> R {
    let before = TASK_ENV.with(|env| env.replace(vars));
    let result = f();
    TASK_ENV.with(|env| env.replace(before));
    result
}

/// This process's own environment as `KEY=VALUE` strings, read once per
/// thread and read again only when it changed: building it for every task
/// (`vars_os`, a string and an allocation per variable) was about a quarter
/// of a slot's own instructions per `true`.
struct BaseEnvironment {
    /// The entries of `environ` when it was read. glibc's `setenv`,
    /// `putenv` and `unsetenv` (and so `std::env::set_var`) all put a new
    /// string in the array or move its entries, so the same pointers mean
    /// the same environment.
    seen: Vec<usize>,
    /// Each variable as `KEY=VALUE`, with the length of its key.
    vars: Vec<(usize, CString)>,
}

extern "C" {
    /// The C library's environment (see `environ(7)`).
    static environ: *const *const libc::c_char;
}

/// The entries of `environ`, in order, as addresses.
fn environ_entries() -> impl Iterator<Item = usize> {
    // SAFETY: `environ` is null or a null-terminated array of pointers;
    // only its entries are read (never what they point to), as `getenv`
    // reads them. std's `set_var` is the only writer and nothing here calls
    // it; one that did would at worst make this see a changed environment.
    let mut at = unsafe { environ };
    std::iter::from_fn(move || {
        if at.is_null() {
            return None;
        }
        // SAFETY: as above; `at` stays within the array until its null.
        let entry = unsafe { *at };
        if entry.is_null() {
            at = ptr::null();
            return None;
        }
        // SAFETY: the entry was not the terminating null.
        at = unsafe { at.add(1) };
        Some(entry as usize)
    })
}

impl BaseEnvironment {
    fn read() -> io::Result<BaseEnvironment> {
        // Seen before it is read: a change in between is seen next time.
        let seen = environ_entries().collect();
        let vars = std::env::vars_os()
            .map(|(key, value)| {
                let mut pair = Vec::with_capacity(key.len() + 1 + value.len());
                pair.extend_from_slice(key.as_bytes());
                pair.push(b'=');
                pair.extend_from_slice(value.as_bytes());
                Ok((key.len(), c_string(&pair)?))
            })
            .collect::<io::Result<_>>()?;
        Ok(BaseEnvironment { seen, vars })
    }

    fn current(&self) -> bool {
        environ_entries().eq(self.seen.iter().copied())
    }

    /// This thread's copy, read again if the environment changed.
    fn get() -> io::Result<Rc<BaseEnvironment>> {
        BASE_ENV.with(|base| {
            let mut base = base.borrow_mut();
            match base.as_ref() {
                Some(known) if known.current() => Ok(known.clone()),
                _ => {
                    let fresh = Rc::new(BaseEnvironment::read()?);
                    *base = Some(fresh.clone());
                    Ok(fresh)
                }
            }
        })
    }
}

std::thread_local! {
    static BASE_ENV: std::cell::RefCell<Option<Rc<BaseEnvironment>>> =
        const { std::cell::RefCell::new(None) };
}

/// A task's environment, ready for `execve`: the null-terminated `envp`
/// and the strings it points into.
struct TaskEnvironment {
    _base: Rc<BaseEnvironment>,
    _added: Vec<CString>,
    pointers: Vec<*const libc::c_char>,
}

impl TaskEnvironment {
    /// `envp` for `execve`.
    fn envp(&self) -> *const *const libc::c_char {
        self.pointers.as_ptr()
    }

    /// The variables, as `KEY=VALUE`.
    #[cfg(test)]
    fn strings(&self) -> Vec<&std::ffi::CStr> {
        self.pointers
            .iter()
            .take_while(|p| !p.is_null())
            // SAFETY: each pointer is into a CString `self` owns.
            .map(|&p| unsafe { std::ffi::CStr::from_ptr(p) })
            .collect()
    }
}

/// This process's environment with `extra`, then the task's own `more`
/// (its place, `--env`), then what the task was given (the thread's
/// [`with_task_environment`] variables, which win: a task sees the GPUs it
/// got whatever the client's environment said) set, each replacing any
/// earlier value, as `KEY=VALUE` strings.
fn environment(
    extra: Option<(&str, &str)>,
    more: &[(std::ffi::OsString, std::ffi::OsString)],
) -> io::Result<TaskEnvironment> {
    let base = BaseEnvironment::get()?;
    TASK_ENV.with(|given| {
        let given = given.borrow();
        let is_given = |key: &[u8]| given.iter().any(|(n, _)| key == n.as_bytes());
        let mut added = Vec::new();
        let mut push = |key: &[u8], value: &[u8]| -> io::Result<()> {
            let mut pair = Vec::with_capacity(key.len() + 1 + value.len());
            pair.extend_from_slice(key);
            pair.push(b'=');
            pair.extend_from_slice(value);
            added.push(c_string(&pair)?);
            Ok(())
        };
        let mut pointers = Vec::with_capacity(base.vars.len() + more.len() + given.len() + 2);
        for (key_len, pair) in &base.vars {
            let key = &pair.as_bytes()[..*key_len];
            let replaced = extra.is_some_and(|(name, _)| key == name.as_bytes())
                || more.iter().any(|(name, _)| key == name.as_bytes())
                || is_given(key);
            if !replaced {
                pointers.push(pair.as_ptr());
            }
        }
        if let Some((name, value)) = extra.filter(|(name, _)| !is_given(name.as_bytes())) {
            push(name.as_bytes(), value.as_bytes())?;
        }
        // Within `more` too the last value of a name wins (a task's own
        // `--env ZCLUSTER_SLOT=...` after its place's): one entry each.
        let last =
            |at: usize, name: &std::ffi::OsString| !more[at + 1..].iter().any(|(n, _)| n == name);
        let kept = more
            .iter()
            .enumerate()
            .filter(|(at, (name, _))| last(*at, name) && !is_given(name.as_bytes()))
            .map(|(_, pair)| pair);
        for (name, value) in kept {
            push(name.as_bytes(), value.as_bytes())?;
        }
        for (name, value) in given.iter() {
            push(name.as_bytes(), value.as_bytes())?;
        }
        // The added strings' bytes stay where they are when `added` moves.
        pointers.extend(added.iter().map(|pair| pair.as_ptr()));
        pointers.push(ptr::null());
        Ok(TaskEnvironment {
            _base: base.clone(),
            _added: added,
            pointers,
        })
    })
}

fn c_string(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "an argument or variable contains a NUL byte",
        )
    })
}

fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(ptr::null()))
        .collect()
}

/// `/dev/null`, opened once (close-on-exec, above the standard
/// descriptors) for every task's stdin: the child only `dup2`s it.
fn dev_null() -> io::Result<RawFd> {
    static DEV_NULL: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();
    if let Some(fd) = DEV_NULL.get() {
        return Ok(fd.as_raw_fd());
    }
    let fd = high_fd(File::open("/dev/null").map(OwnedFd::from)?)?;
    Ok(DEV_NULL.get_or_init(|| fd).as_raw_fd())
}

/// A close-on-exec pipe whose ends are above the standard descriptors.
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    Ok((high_fd(read)?, high_fd(write)?))
}

/// `fd`, or a close-on-exec duplicate of it numbered 3 or more when it is
/// 0, 1 or 2 (when this process runs with a standard descriptor closed), so
/// that the child's dup2 onto 0, 1 and 2 cannot overwrite one it still needs.
fn high_fd(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor or -1.
    let raw = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if raw == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// [`super::spawn`] with text arguments, as these tests write them.
    fn spawn(
        program: &str,
        args: &[String],
        cgroup_procs: Option<RawFd>,
        extra_env: Option<(&str, &str)>,
    ) -> Result<Process, SpawnError> {
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        super::spawn(
            OsStr::new(program),
            &args,
            cgroup_procs.map(|procs| CgroupEntry { dir: None, procs }),
            extra_env,
            Setup::default(),
        )
    }

    fn output(process: Process) -> (String, i32) {
        let Process {
            pid, mut stdout, ..
        } = process;
        let mut text = String::new();
        stdout.read_to_string(&mut text).unwrap();
        let status = nix::sys::wait::waitpid(pid, None).unwrap();
        let code = match status {
            nix::sys::wait::WaitStatus::Exited(_, code) => code,
            other => panic!("{other:?}"),
        };
        (text, code)
    }

    /// A name given twice among a task's own variables appears once, with
    /// its last value.
    #[test]
    fn a_tasks_variable_given_twice_is_set_once_to_its_last_value() {
        let more = [
            (OsString::from("ZCLUSTER_TEST_TWICE"), OsString::from("1")),
            (OsString::from("ZCLUSTER_TEST_TWICE"), OsString::from("2")),
        ];
        let vars = environment(None, &more).expect("environment");
        let set: Vec<&std::ffi::CStr> = vars
            .strings()
            .into_iter()
            .filter(|v| v.to_bytes().starts_with(b"ZCLUSTER_TEST_TWICE="))
            .collect();
        assert_eq!(set, [c"ZCLUSTER_TEST_TWICE=2"]);
    }

    /// A task gets every variable of this process (but those it replaces),
    /// from a copy read once while the environment stays as it is.
    #[test]
    fn the_process_environment_is_read_once_and_passed_whole() {
        let more = [(OsString::from("PATH"), OsString::from("/nowhere"))];
        let first = environment(None, &more).expect("environment");
        let second = environment(None, &[]).expect("environment");
        assert!(Rc::ptr_eq(&first._base, &second._base), "read again");
        let strings: Vec<Vec<u8>> = first
            .strings()
            .iter()
            .map(|s| s.to_bytes().to_vec())
            .collect();
        for (key, value) in std::env::vars_os() {
            let mut pair = key.as_bytes().to_vec();
            pair.push(b'=');
            pair.extend_from_slice(value.as_bytes());
            let expected = usize::from(key != "PATH");
            let found = strings.iter().filter(|s| **s == pair).count();
            assert_eq!(found, expected, "{key:?}");
        }
        assert!(strings.contains(&b"PATH=/nowhere".to_vec()));
        assert_eq!(second.strings().len(), std::env::vars_os().count());
    }

    #[test]
    fn runs_with_args_env_and_its_own_group() {
        let args = [
            "-c".to_owned(),
            r#"echo "$0|$1|$ZC_SPAWN_TEST|$(ps -o pgid= -p $$ | tr -d ' ')|$$""#.to_owned(),
            "zero".to_owned(),
            "x y".to_owned(),
        ];
        let process = spawn("sh", &args, None, Some(("ZC_SPAWN_TEST", "marked"))).unwrap();
        let pid = process.pid;
        let (text, code) = output(process);
        assert_eq!(code, 0);
        assert_eq!(text, format!("zero|x y|marked|{pid}|{pid}\n"));
    }

    #[test]
    fn errors_say_why() {
        let error = spawn("zcluster-no-such-program", &[], None, None).unwrap_err();
        assert!(
            matches!(&error, SpawnError::Command(e) if e.raw_os_error() == Some(libc::ENOENT)),
            "{error:?}"
        );
        let error = spawn("/etc/passwd", &[], None, None).unwrap_err();
        assert!(
            matches!(&error, SpawnError::Command(e) if e.raw_os_error() == Some(libc::EACCES)),
            "{error:?}"
        );
        let error = spawn("sh", &["a\0b".to_owned()], None, None).unwrap_err();
        assert!(
            matches!(&error, SpawnError::Command(e) if e.kind() == io::ErrorKind::InvalidInput),
            "{error:?}"
        );
        // A descriptor that is not a cgroup.procs: the cgroup step fails.
        let not_procs = File::open("/dev/null").unwrap();
        let error = spawn("true", &[], Some(not_procs.as_raw_fd()), None).unwrap_err();
        assert!(matches!(error, SpawnError::Cgroup(_)), "{error:?}");
    }

    #[test]
    fn sigpipe_is_back_to_its_default() {
        // Rust ignores SIGPIPE; the task must not inherit that.
        let args = ["-c".to_owned(), "grep SigIgn /proc/self/status".to_owned()];
        let (text, _) = output(spawn("sh", &args, None, None).unwrap());
        let mask = u64::from_str_radix(text.split_whitespace().nth(1).unwrap(), 16).unwrap();
        assert_eq!(mask & (1 << (libc::SIGPIPE - 1)), 0, "{text}");
    }
}
