//! Does watching a hub slow it? No-op tasks through an embedded hub over
//! TCP (as `examples/hub_throughput.rs --tcp`), in rounds that alternate,
//! in the same run, between nobody watching and three watchers attached:
//! `zcluster dashboard` with a page's live stream read, `zcluster status
//! --watch` drawing on a terminal (a tmux pane of 160×50), and `zcluster
//! events`. Each watcher asks the hub every second, as by default.
//!
//! Prints `watched ROUND OBSERVED COUNT TASKS_PER_SECOND` per round, then
//! `watched-ratio MEDIAN_WITH/MEDIAN_WITHOUT`, then `status-call-ms`: what
//! one status call (each watcher makes one a second) takes with every
//! round's tasks in the store.
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
use zcluster::hub::protocol::{ClientCall, JobKind, Reply};
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
}

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
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for n in 0..args.rounds {
        let rate = round(&mut client, args.count)?;
        println!("watched {n} no {} {:.0}", args.count, rate);
        without.push(rate);
        let watchers = Watchers::attach(&args.zcluster, &file)?;
        // Let them connect and draw once before the round starts.
        std::thread::sleep(Duration::from_secs(2));
        let rate = round(&mut client, args.count)?;
        println!("watched {n} yes {} {:.0}", args.count, rate);
        with.push(rate);
        drop(watchers);
    }
    println!("watched-ratio {:.3}", median(with) / median(without));
    // What one watcher's look costs the hub now, with every round's tasks
    // in its store: the status call, median of 10.
    let mut looks = Vec::new();
    for _ in 0..10 {
        let start = Instant::now();
        client.status(false)?;
        looks.push(start.elapsed().as_secs_f64() * 1e3);
    }
    println!("status-call-ms {:.2}", median(looks));
    Ok(())
}
