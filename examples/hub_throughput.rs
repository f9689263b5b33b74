//! No-op tasks through a hub: a client, an embedded hub recording every
//! request/result pair in its task store, and one engine whose slots run a
//! no-op handler. `scripts/bench-hub.sh` compares it with the toolkit alone
//! (`examples/throughput.rs --mode toolkit`).
//!
//! Prints `hub-STORE COUNT SLOTS SECONDS TASKS_PER_SECOND` (`hub-STORE-tcp`
//! with `--tcp`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use zcluster::hub::embedded::EmbeddedCluster;
use zcluster::hub::engine::{HandlerFn, HANDLER_KEY};
use zcluster::hub::protocol::{ClientCall, JobKind, Reply};
use zcluster::hub::server::{Endpoints, HubOptions};
use zcluster::message::ClusterRequest;

#[derive(Parser)]
struct Args {
    /// Tasks to run.
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Engine slots.
    #[arg(long, default_value_t = 2)]
    slots: usize,
    /// Task store: a SQLite path, or `:memory:`.
    #[arg(long, default_value = ":memory:")]
    store: String,
    /// Measure round trips instead: one task at a time through an idle hub,
    /// printing `latency COUNT MEDIAN_US P99_US`.
    #[arg(long)]
    latency: bool,
    /// Connect over TCP on 127.0.0.1 instead of inproc, as to a
    /// `zcluster hub` on the network.
    #[arg(long)]
    tcp: bool,
    /// Tasks the client may have outstanding (the hub's credit per job);
    /// the hub's default when not given.
    #[arg(long)]
    credit: Option<u32>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let noop: HandlerFn = Arc::new(|request: &ClusterRequest| Ok(request.payload.clone()));
    let handlers = BTreeMap::from([("noop".to_string(), noop)]);
    let cluster = if args.tcp || args.credit.is_some() {
        let endpoints = if args.tcp {
            Endpoints::Tcp {
                ip: "127.0.0.1".into(),
                port_base: None,
            }
        } else {
            Endpoints::Inproc(format!("hub-throughput-{}", std::process::id()))
        };
        let defaults = HubOptions::default();
        let options = HubOptions {
            endpoints,
            store: args.store.clone(),
            credit: args.credit.unwrap_or(defaults.credit),
            ..defaults
        };
        EmbeddedCluster::with_options(options, args.slots, handlers)?
    } else {
        EmbeddedCluster::with(args.slots, &args.store, handlers)?
    };
    let mut client = cluster.client()?;
    let opened = client.call(&ClientCall::OpenJob {
        kind: JobKind::Handler("noop".into()),
        description: "hub throughput".into(),
        retries: 0,
        halt: None,
        cap: None,
        request: None,
    })?;
    let Reply::JobOpened { job, credit, .. } = opened else {
        anyhow::bail!("unexpected answer: {opened:?}");
    };
    let credit = if args.latency { 1 } else { u64::from(credit) };
    let mut round_trips = Vec::with_capacity(if args.latency { args.count as usize } else { 0 });
    let start = Instant::now();
    let (mut sent, mut received) = (0u64, 0u64);
    while received < args.count {
        while sent < args.count && sent - received < credit {
            let request = ClusterRequest::encode(sent, &sent)?.with_metadata(HANDLER_KEY, "noop");
            client.send_task(job, &request)?;
            sent += 1;
        }
        let sent_at = Instant::now();
        match client.next_result(Duration::from_secs(30))? {
            Some(_) => {
                received += 1;
                if args.latency {
                    round_trips.push(sent_at.elapsed());
                }
            }
            None => anyhow::bail!("no result for 30 s after {received} of {}", args.count),
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    client.call(&ClientCall::CloseJob {
        job,
        total: args.count,
    })?;
    if args.latency {
        round_trips.sort_unstable();
        let at = |q: f64| round_trips[((round_trips.len() - 1) as f64 * q) as usize].as_micros();
        println!("latency {} {} {}", round_trips.len(), at(0.5), at(0.99));
        return Ok(());
    }
    let store = if args.store == ":memory:" {
        "memory"
    } else {
        "sqlite"
    };
    let over = if args.tcp { "-tcp" } else { "" };
    println!(
        "hub-{store}{over} {} {} {seconds:.4} {:.0}",
        args.count,
        args.slots,
        args.count as f64 / seconds
    );
    Ok(())
}
