//! Chaos in the small (`scripts/chaos.sh` is the big one): a real hub, three
//! real workers and a `zcluster map` of 2,000 inputs, while workers are
//! SIGKILLed and replaced and, in the second test, the hub itself is
//! SIGKILLed and started again on the same connection file and store. Every
//! input must come back exactly once, in order, on the map's stdout, in its
//! results file and in the hub's store.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::common::*;

const TASKS: usize = 2000;
const WORKERS: usize = 3;
/// Bound on the whole map, kills and restarts included (it takes a few
/// seconds undisturbed).
const MAP_LIMIT: Duration = Duration::from_secs(60);

/// Sends SIGKILL to a process and reaps it.
fn sigkill(proc: &mut Proc) {
    kill(Pid::from_raw(proc.pid()), Signal::SIGKILL).expect("SIGKILL");
    proc.wait();
}

/// Waits (bounded) until the map has printed `lines` results.
fn wait_for_output(map: &MapRun, lines: usize) {
    wait_until(&format!("{lines} results from the map"), || {
        map.stdout().lines().count() >= lines
    });
}

/// What happened, with times since the map started.
struct Log {
    started: Instant,
    events: Vec<String>,
}

impl Log {
    fn note(&mut self, map: &MapRun, what: &str) {
        let event = format!(
            "{:>6.2} s  {what} ({} results printed)",
            self.started.elapsed().as_secs_f64(),
            map.stdout().lines().count()
        );
        eprintln!("{event}");
        self.events.push(event);
    }
}

/// Runs the map under chaos: one worker SIGKILLed and replaced at a fifth of
/// the output, then at half either the hub SIGKILLed and restarted
/// (`kill_hub`) or a second worker SIGKILLed and replaced. Checks every
/// result came back exactly once, in order.
fn map_under_chaos(kill_hub: bool) {
    let mut hub = Hub::start();
    let mut workers = hub.workers(WORKERS, 1);
    let (file, inputs) = numbered_inputs(hub.dir(), "in.txt", "", TASKS);
    let results = hub.dir().join("results.jsonl");
    let mut map = hub.spawn_map(
        "chaos",
        &[
            path_str(&file),
            "--results",
            path_str(&results),
            "--",
            "echo",
        ],
    );
    let mut log = Log {
        started: Instant::now(),
        events: Vec::new(),
    };

    wait_for_output(&map, TASKS / 5);
    sigkill(&mut workers[0]);
    workers[0] = hub.worker(1);
    log.note(&map, "worker SIGKILLed, a fresh one started");

    wait_for_output(&map, TASKS / 2);
    if kill_hub {
        sigkill(&mut hub.proc);
        log.note(&map, "hub SIGKILLed");
        hub.proc = Hub::spawn_hub(hub.dir.path(), &hub.file, &hub.store, &[]);
        hub.wait_ready();
        log.note(&map, "hub restarted on the same connection file and store");
    } else {
        sigkill(&mut workers[1]);
        workers[1] = hub.worker(1);
        log.note(&map, "worker SIGKILLed, a fresh one started");
    }

    let status = exit_within(&mut map.guard, MAP_LIMIT).unwrap_or_else(|| {
        panic!(
            "the map did not finish within {MAP_LIMIT:?} ({} of {TASKS} results printed)\n\
             events:\n{}\nmap stderr:\n{}\nhub status:\n{}",
            map.stdout().lines().count(),
            log.events.join("\n"),
            map.stderr(),
            hub.status()
        )
    });
    log.note(&map, "map finished");
    assert!(
        status.success(),
        "map failed ({status}): {}\nevents:\n{}",
        map.stderr(),
        log.events.join("\n")
    );

    // Exactly once, in input order: stdout, results file, store.
    assert_eq!(map.stdout(), lines_text(&inputs));
    let records = json_lines(&results);
    let seqs: Vec<u64> = records.iter().map(|r| field_u64(r, "seq")).collect();
    let want: Vec<u64> = (1..=TASKS as u64).collect();
    assert_eq!(seqs, want, "results file");
    for (record, input) in records.iter().zip(&inputs) {
        assert_eq!(record["status"], "ok", "{record}");
        assert_eq!(record["stdout"], format!("{input}\n"), "{record}");
    }
    let job = map.job().expect("the map names its job");
    let (code, stored) = hub.results(job);
    assert_eq!(code, Some(0), "results of job {job}");
    let stored: Vec<u64> = stored.iter().map(|r| field_u64(r, "seq")).collect();
    assert_eq!(stored, want, "the hub's store");
    assert!(hub.proc.running(), "the hub died: {}", hub.proc.log());
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temp path")
}

#[test]
fn workers_sigkilled_mid_map_lose_and_repeat_nothing() {
    map_under_chaos(false);
}

/// The contract's "nothing lost on a crash": a restarted hub carries on its
/// unfinished jobs and the waiting map gets all of its results.
#[test]
fn hub_sigkilled_and_restarted_mid_map_loses_and_repeats_nothing() {
    map_under_chaos(true);
}
