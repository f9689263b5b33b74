//! Which cores this process may run on, and binding a thread to some of
//! them (`zcluster worker --pin`): a task started from a bound thread
//! inherits its cores, so the spawn path needs no change.

use std::io;
use std::mem;

/// The cores this process may run on now (its affinity mask), in order.
pub fn usable_cores() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the call writes at
    // most its size.
    let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
    let size = mem::size_of::<libc::cpu_set_t>();
    if unsafe { libc::sched_getaffinity(0, size, &mut set) } != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Sets the calling thread's affinity to `cores`.
fn set_thread_cores(cores: &[usize]) -> io::Result<()> {
    // SAFETY: as above; CPU_SET is given indices below CPU_SETSIZE only.
    let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
    for &cpu in cores.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    let size = mem::size_of::<libc::cpu_set_t>();
    // pid 0: the calling thread.
    if unsafe { libc::sched_setaffinity(0, size, &set) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The calling thread bound to some cores until this is dropped, when it
/// gets back the cores it had.
pub struct PinnedThread {
    before: Vec<usize>,
}

impl PinnedThread {
    /// Binds the calling thread (and the tasks it starts) to `cores`.
    pub fn to(cores: &[usize]) -> io::Result<Self> {
        let before = thread_cores();
        set_thread_cores(cores)?;
        Ok(PinnedThread { before })
    }
}

impl Drop for PinnedThread {
    fn drop(&mut self) {
        if !self.before.is_empty() {
            let _ = set_thread_cores(&self.before);
        }
    }
}

/// The calling thread's cores.
fn thread_cores() -> Vec<usize> {
    // For pid 0 sched_getaffinity reads the calling thread's mask.
    usable_cores()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_thread_and_the_commands_it_starts_run_on_its_cores_only() {
        let usable = usable_cores();
        assert!(!usable.is_empty());
        let core = *usable.last().expect("a core");
        std::thread::spawn(move || {
            let pinned = PinnedThread::to(&[core]).expect("pinned");
            assert_eq!(thread_cores(), [core]);
            // A command started here inherits the binding.
            let outcome = crate::exec::run(
                &["sh", "-c", "grep Cpus_allowed_list /proc/self/status"],
                &Default::default(),
            );
            let shown = String::from_utf8_lossy(&outcome.stdout).to_string();
            assert!(shown.trim().ends_with(&format!("\t{core}")), "{shown}");
            drop(pinned);
            assert_eq!(thread_cores(), usable);
        })
        .join()
        .expect("thread");
    }
}
