//! Does watching a hub slow it? No-op tasks through an embedded hub over
//! TCP (as `examples/hub_throughput.rs --tcp`), in rounds that alternate,
//! in the same run, between nobody watching and three watchers attached
//! (each pair of rounds in turn the other way round):
//! `zcluster dashboard` with a page's live stream read, `zcluster status
//! --watch` drawing on a terminal (a tmux pane of 160×50), and `zcluster
//! events`. Each watcher asks the hub every second, as by default.
//!
//! Prints `watched ROUND OBSERVED COUNT TASKS_PER_SECOND` per round, then
//! `pair-ratio-median` (the median over pairs of rounds of each pair's
//! watched rate over its unwatched one), then
//! `watched-ratio MEDIAN_WITH/MEDIAN_WITHOUT`, then `status-call-ms`: what
//! one status call (each watcher makes one a second) takes after the rounds.
//!
//! Each round's job is purged once its results are in, so that every round
//! runs against a store of the same size: a store that grows from round to
//! round makes some rounds slower than others (its maps grow by doubling),
//! whichever kind they are, and with 200,000 tasks a round that spread was
//! larger than the 5% the ratio is read against.
//!
//! Every round, watched or not, starts after the same two-second pause
//! (the watchers' time to connect and draw once): a round that starts
//! after a pause and one that starts right after a busy round do not start
//! alike. With `--control`, the "watched" rounds attach nobody: the ratio
//! then says how far this machine's noise alone moves it.
//!
//! On a machine with few cores the watchers' own CPU competes with the
//! hub's, so each round also prints `cpu ROUND OBSERVED` lines: this
//! process's CPU microseconds per task (hub, engine and client threads),
//! and each watcher's CPU milliseconds per second of the round (the tmux
//! server that draws the terminal counted apart), the hub thread's own CPU
//! per task, and how often it was preempted (switched out while it could
//! have run on) per thousand tasks. Then `cpu-per-task-ratio` and
//! `hub-thread-cpu-per-task-ratio` say whether watching makes the hub work
//! more per task, apart from the CPU the watchers take, and
//! `hub-slept-per-1k-tasks WATCHED UNWATCHED` whether it makes the hub
//! wake more often (each wake takes fewer messages at once) and
//! `hub-preempted-per-1k-tasks WATCHED UNWATCHED` whether it makes it wait
//! for a core more often.
//!
//! ```text
//! cargo build --release -p zcluster-cli
//! cargo run --release --example hub_watched -- --zcluster target/release/zcluster
//! ```

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use zcluster::hub::client::HubClient;
use zcluster::hub::embedded::EmbeddedCluster;
use zcluster::hub::engine::{HandlerFn, HANDLER_KEY};
use zcluster::hub::protocol::{ClientCall, JobKind, PurgeTarget, Reply};
use zcluster::hub::server::{Endpoints, HubOptions};
use zcluster::message::ClusterRequest;

#[derive(Parser)]
struct Args {
    /// Tasks per round.
    #[arg(long, default_value_t = 50_000)]
    count: u64,
    /// Rounds of each kind (they alternate: without, with, without, ...).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Engine slots.
    #[arg(long, default_value_t = 2)]
    slots: usize,
    /// The `zcluster` binary whose watchers attach.
    #[arg(long)]
    zcluster: PathBuf,
    /// Attach nobody in the "watched" rounds either: what the ratio reads
    /// when nothing differs between the two kinds of round, to know how
    /// far this machine's noise alone moves it.
    #[arg(long)]
    control: bool,
}

/// The pause before every round, watched or not: time for the watchers to
/// connect and draw once.
const SETTLE: Duration = Duration::from_secs(2);

/// One job of `count` no-op tasks; tasks per second.
fn round(client: &mut HubClient, count: u64) -> anyhow::Result<f64> {
    let opened = client.call(&ClientCall::OpenJob {
        kind: JobKind::Handler("noop".into()),
        description: "hub watched".into(),
        retries: 0,
        halt: None,
        cap: None,
        request: None,
    })?;
    let Reply::JobOpened { job, credit, .. } = opened else {
        anyhow::bail!("unexpected answer: {opened:?}");
    };
    let credit = u64::from(credit);
    let start = Instant::now();
    let (mut sent, mut received) = (0u64, 0u64);
    while received < count {
        while sent < count && sent - received < credit {
            let request = ClusterRequest::encode(sent, &sent)?.with_metadata(HANDLER_KEY, "noop");
            client.send_task(job, &request)?;
            sent += 1;
        }
        match client.next_result(Duration::from_secs(30))? {
            Some(_) => received += 1,
            None => anyhow::bail!("no result for 30 s after {received} of {count}"),
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    client.call(&ClientCall::CloseJob { job, total: count })?;
    match client.call(&ClientCall::Purge(PurgeTarget::Job(job)))? {
        Reply::Purged(_) => {}
        other => anyhow::bail!("purging job {job}: unexpected answer {other:?}"),
    }
    Ok(count as f64 / seconds)
}

/// The three watchers, stopped on drop.
struct Watchers {
    children: Vec<Child>,
    tmux_session: String,
    stop: Arc<AtomicBool>,
}

impl Watchers {
    fn attach(zcluster: &Path, file: &Path) -> anyhow::Result<Self> {
        let mut children = Vec::new();
        let mut dashboard = Command::new(zcluster)
            .args(["dashboard", "--listen", "127.0.0.1:0", "--hub"])
            .arg(file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(dashboard.stderr.take().context("stderr")?).read_line(&mut line)?;
        children.push(dashboard);
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .context("the dashboard's address")?
            .to_string();
        // A page's live stream, read as a browser would.
        let stop = Arc::new(AtomicBool::new(false));
        let reading = stop.clone();
        let mut stream = TcpStream::connect(&addr)?;
        stream.write_all(b"GET /api/stream HTTP/1.1\r\nHost: x\r\n\r\n")?;
        stream.set_read_timeout(Some(Duration::from_millis(200)))?;
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while !reading.load(Ordering::Relaxed) {
                if let Ok(0) = stream.read(&mut buf) {
                    return;
                }
            }
        });
        children.push(
            Command::new(zcluster)
                .args(["events", "--hub"])
                .arg(file)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        let tmux_session = format!("zcluster-bench-{}", std::process::id());
        let watch = format!(
            "{} status --watch --hub {}",
            zcluster.display(),
            file.display()
        );
        let started = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                &tmux_session,
                "-x",
                "160",
                "-y",
                "50",
            ])
            .arg(watch)
            .status()?;
        anyhow::ensure!(started.success(), "tmux did not start the watch");
        Ok(Watchers {
            children,
            tmux_session,
            stop,
        })
    }
}

impl Drop for Watchers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.tmux_session])
            .status();
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// CPU seconds (user and system) a process has used, from `/proc`.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; fields count from after it.
    let rest = stat.rsplit_once(')').context("a /proc stat line")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // SAFETY: sysconf reads a constant of the system and has no other effect.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / per_second)
}

/// The hub thread's CPU nanoseconds, the times it went to sleep (waiting
/// for messages) and the times it was switched out while it could have
/// run on (preempted), from `/proc`: whether watching makes the hub itself
/// work more per task, wake more often, or only wait for a core.
fn hub_thread() -> anyhow::Result<(f64, u64, u64)> {
    for task in std::fs::read_dir("/proc/self/task")? {
        let dir = task?.path();
        if std::fs::read_to_string(dir.join("comm"))?.trim() != "zcluster-hub" {
            continue;
        }
        let schedstat = std::fs::read_to_string(dir.join("schedstat"))?;
        let on_cpu: f64 = schedstat
            .split_whitespace()
            .next()
            .context("a schedstat line")?
            .parse()?;
        let status = std::fs::read_to_string(dir.join("status"))?;
        let switches = |prefix: &str| -> anyhow::Result<u64> {
            Ok(status
                .lines()
                .find_map(|l| l.strip_prefix(prefix))
                .context("a status line of switches")?
                .trim()
                .parse()?)
        };
        return Ok((
            on_cpu,
            switches("voluntary_ctxt_switches:")?,
            switches("nonvoluntary_ctxt_switches:")?,
        ));
    }
    anyhow::bail!("no thread named zcluster-hub")
}

/// The processes whose CPU a round accounts for, by name.
fn watcher_pids(watchers: &Watchers) -> anyhow::Result<Vec<(&'static str, u32)>> {
    let pane = Command::new("tmux")
        .args(["display-message", "-p", "-t", &watchers.tmux_session])
        .arg("#{pane_pid}")
        .output()?;
    let server = Command::new("tmux")
        .args(["display-message", "-p", "-t", &watchers.tmux_session])
        .arg("#{pid}")
        .output()?;
    let pid = |out: &std::process::Output| -> anyhow::Result<u32> {
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    Ok(vec![
        ("dashboard", watchers.children[0].id()),
        ("events", watchers.children[1].id()),
        ("status-watch", pid(&pane)?),
        ("tmux-server", pid(&server)?),
    ])
}

/// A round and the CPU it cost.
struct Measured {
    /// Tasks per second.
    rate: f64,
    /// This process's CPU microseconds per task.
    own: f64,
    /// The hub thread's CPU microseconds per task.
    hub: f64,
    /// The times the hub thread slept, per thousand tasks.
    slept: f64,
    /// The times the hub thread was preempted, per thousand tasks.
    preempted: f64,
    /// Each watched process's CPU milliseconds per second of the round.
    theirs: Vec<(&'static str, f64)>,
}

/// Runs a round of `count` tasks, measuring the CPU of this process and of
/// `others`.
fn measured_round(
    client: &mut HubClient,
    count: u64,
    others: &[(&'static str, u32)],
) -> anyhow::Result<Measured> {
    let me = std::process::id();
    let own_before = cpu_seconds(me)?;
    let hub_before = hub_thread()?;
    let before: Vec<f64> = others
        .iter()
        .map(|(_, pid)| cpu_seconds(*pid))
        .collect::<anyhow::Result<_>>()?;
    let start = Instant::now();
    let rate = round(client, count)?;
    let seconds = start.elapsed().as_secs_f64();
    let own = (cpu_seconds(me)? - own_before) * 1e6 / count as f64;
    let hub_after = hub_thread()?;
    let hub = (hub_after.0 - hub_before.0) / 1e3 / count as f64;
    let slept = (hub_after.1 - hub_before.1) as f64 * 1e3 / count as f64;
    let preempted = (hub_after.2 - hub_before.2) as f64 * 1e3 / count as f64;
    let mut theirs = Vec::new();
    for ((name, pid), before) in others.iter().zip(before) {
        theirs.push((*name, (cpu_seconds(*pid)? - before) * 1e3 / seconds));
    }
    Ok(Measured {
        rate,
        own,
        hub,
        slept,
        preempted,
        theirs,
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let noop: HandlerFn = Arc::new(|request: &ClusterRequest| Ok(request.payload.clone()));
    let handlers = BTreeMap::from([("noop".to_string(), noop)]);
    let options = HubOptions {
        endpoints: Endpoints::Tcp {
            ip: "127.0.0.1".into(),
            port_base: None,
        },
        store: ":memory:".into(),
        ..HubOptions::default()
    };
    let cluster = EmbeddedCluster::with_options(options, args.slots, handlers)?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("hub.json");
    cluster.connection().write(&file)?;
    let mut client = cluster.client()?;
    // A first round warms everything up; not counted.
    round(&mut client, args.count / 10)?;
    let (mut without, mut with): (Vec<Measured>, Vec<Measured>) = (Vec::new(), Vec::new());
    // Each pair of rounds in turn the other way round (without then with,
    // with then without, ...), so that nothing that drifts over the run is
    // charged to one side.
    for n in 0..args.rounds {
        for watched in if n % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        } {
            let watchers = if watched && !args.control {
                Some(Watchers::attach(&args.zcluster, &file)?)
            } else {
                None
            };
            // Time for the watchers to connect and draw once; the same
            // pause before a round nobody watches: a round that follows an
            // idle pause and one that follows a busy round do not start
            // alike (caches, the CPU's clock).
            std::thread::sleep(SETTLE);
            let others = match &watchers {
                Some(watchers) => watcher_pids(watchers)?,
                None => Vec::new(),
            };
            let measured = measured_round(&mut client, args.count, &others)?;
            let kind = if watched { "yes" } else { "no" };
            println!("watched {n} {kind} {} {:.0}", args.count, measured.rate);
            let theirs: Vec<String> = measured
                .theirs
                .iter()
                .map(|(name, ms)| format!(" {name}-ms-per-s {ms:.1}"))
                .collect();
            println!(
                "cpu {n} {kind} own-us-per-task {:.2} hub-thread-us-per-task {:.2} \
                 hub-slept-per-1k-tasks {:.1} hub-preempted-per-1k-tasks {:.1}{}",
                measured.own,
                measured.hub,
                measured.slept,
                measured.preempted,
                theirs.concat()
            );
            drop(watchers);
            if watched {
                with.push(measured);
            } else {
                without.push(measured);
            }
        }
    }
    // Each pair's own ratio too: the two rounds of a pair run next to each
    // other, so a machine that slows down for a while (another process, a
    // neighbour on the host) slows both, where the medians over the whole
    // run can each catch it on one side.
    let pairs: Vec<f64> = with
        .iter()
        .zip(&without)
        .map(|(w, n)| w.rate / n.rate)
        .collect();
    println!("pair-ratio-median {:.3}", median(pairs));
    let of = |rounds: &[Measured], field: fn(&Measured) -> f64| {
        median(rounds.iter().map(field).collect())
    };
    println!(
        "watched-ratio {:.3}",
        of(&with, |m| m.rate) / of(&without, |m| m.rate)
    );
    println!(
        "cpu-per-task-ratio {:.3}",
        of(&with, |m| m.own) / of(&without, |m| m.own)
    );
    println!(
        "hub-thread-cpu-per-task-ratio {:.3}",
        of(&with, |m| m.hub) / of(&without, |m| m.hub)
    );
    println!(
        "hub-slept-per-1k-tasks {:.1} {:.1}",
        of(&with, |m| m.slept),
        of(&without, |m| m.slept)
    );
    println!(
        "hub-preempted-per-1k-tasks {:.1} {:.1}",
        of(&with, |m| m.preempted),
        of(&without, |m| m.preempted)
    );
    // What one watcher's look costs the hub now: the status call, median
    // of 10.
    let mut looks = Vec::new();
    for _ in 0..10 {
        let start = Instant::now();
        client.status(false)?;
        looks.push(start.elapsed().as_secs_f64() * 1e3);
    }
    println!("status-call-ms {:.2}", median(looks));
    Ok(())
}
