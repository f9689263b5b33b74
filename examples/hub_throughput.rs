//! No-op tasks through a hub: a client, an embedded hub recording every
//! request/result pair in its task store, and one engine whose slots run a
//! no-op handler. `scripts/bench-hub.sh` compares it with the toolkit alone
//! (`examples/throughput.rs --mode toolkit`).
//!
//! Prints `hub-STORE COUNT SLOTS SECONDS TASKS_PER_SECOND`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use zcluster::hub::embedded::EmbeddedCluster;
use zcluster::hub::engine::{HandlerFn, HANDLER_KEY};
use zcluster::hub::protocol::{ClientCall, JobKind, Reply};
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
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let noop: HandlerFn = Arc::new(|request: &ClusterRequest| Ok(request.payload.clone()));
    let handlers = BTreeMap::from([("noop".to_string(), noop)]);
    let cluster = EmbeddedCluster::with(args.slots, &args.store, handlers)?;
    let mut client = cluster.client()?;
    let opened = client.call(&ClientCall::OpenJob {
        kind: JobKind::Handler("noop".into()),
        description: "hub throughput".into(),
        retries: 0,
        halt_on_failure: false,
    })?;
    let Reply::JobOpened { job, credit } = opened else {
        anyhow::bail!("unexpected answer: {opened:?}");
    };
    let credit = u64::from(credit);
    let start = Instant::now();
    let (mut sent, mut received) = (0u64, 0u64);
    while received < args.count {
        while sent < args.count && sent - received < credit {
            let request = ClusterRequest::encode(sent, &sent)?.with_metadata(HANDLER_KEY, "noop");
            client.send_task(job, &request)?;
            sent += 1;
        }
        match client.next_result(Duration::from_secs(30))? {
            Some(_) => received += 1,
            None => anyhow::bail!("no result for 30 s after {received} of {}", args.count),
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    client.call(&ClientCall::CloseJob {
        job,
        total: args.count,
    })?;
    let store = if args.store == ":memory:" {
        "memory"
    } else {
        "sqlite"
    };
    println!(
        "hub-{store} {} {} {seconds:.4} {:.0}",
        args.count,
        args.slots,
        args.count as f64 / seconds
    );
    Ok(())
}
