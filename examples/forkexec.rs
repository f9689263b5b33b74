//! The ceiling for command jobs: THREADS threads each running `true N` (or
//! another program) spawned the way zcluster must spawn a task (a process
//! group of its own, stdout and stderr captured) and waited for, until COUNT
//! runs in all. With `process_group` and no `pre_exec` hook the standard
//! library spawns with `posix_spawn` (a vfork-like clone), as zcluster's own
//! spawn does (src/exec/spawn.rs). Like `zcluster map -- true` and
//! `parallel true`, each run gets its input as an argument (which matters:
//! coreutils' `true` with an argument loads the locale to look for
//! `--help`). `scripts/bench-map.sh` compares `zcluster map` against it.
//!
//! Prints `forkexec COUNT THREADS SECONDS RUNS_PER_SECOND`.

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use clap::Parser;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 2000)]
    count: u64,
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// The command to run.
    #[arg(default_value = "true")]
    program: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..args.threads)
        .map(|_| {
            let (next, program, count) = (next.clone(), args.program.clone(), args.count);
            thread::spawn(move || -> std::io::Result<()> {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= count {
                        return Ok(());
                    }
                    Command::new(&program)
                        .arg((n + 1).to_string())
                        .process_group(0)
                        .output()?;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("thread panicked"))??;
    }
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "forkexec {} {} {seconds:.4} {:.0}",
        args.count,
        args.threads,
        args.count as f64 / seconds
    );
    Ok(())
}
