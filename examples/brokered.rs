//! The brokered topology in one process: devices in the middle, so clients
//! and workers only need to know the broker's addresses.
//!
//! ```text
//! ventilator ─▶ [streamer] ─▶ workers ─▶ [streamer] ─▶ sink
//! commands   ─▶ [forwarder] ─▶ workers ─▶ replies
//! ```
//!
//! It pings through the forwarder until every worker answers (the readiness
//! signal, instead of a sleep), sends COUNT numbers, sums their squares at the
//! sink, then kills the workers through the forwarder and stops the devices.
//!
//! `cargo run --release --example brokered -- --workers 4 --count 100000`

use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use zcluster::commands::{CommandSender, Delivery};
use zcluster::devices::{forwarder, streamer};
use zcluster::message::ClusterRequest;
use zcluster::sink::Sink;
use zcluster::socket::{FutureSocket, SocketKind};
use zcluster::ventilator::Ventilator;
use zcluster::worker::{typed, Worker};

#[derive(Parser)]
struct Args {
    /// Worker threads.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Numbers to square.
    #[arg(long, default_value_t = 10_000)]
    count: u64,
}

/// Every address of the broker: one per device side, plus command replies.
const REQUESTS_IN: &str = "inproc://requests-in";
const REQUESTS_OUT: &str = "inproc://requests-out";
const RESULTS_IN: &str = "inproc://results-in";
const RESULTS_OUT: &str = "inproc://results-out";
const COMMANDS_IN: &str = "inproc://commands-in";
const COMMANDS_OUT: &str = "inproc://commands-out";
const REPLIES: &str = "inproc://replies";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ctx = zmq::Context::new();
    let bind = FutureSocket::bind;
    let connect = FutureSocket::connect;

    // The broker: three devices, each binding both of its sides.
    let devices = [
        streamer(
            bind(REQUESTS_IN, SocketKind::Pull),
            bind(REQUESTS_OUT, SocketKind::Push),
        ),
        streamer(
            bind(RESULTS_IN, SocketKind::Pull),
            bind(RESULTS_OUT, SocketKind::Push),
        ),
        forwarder(
            bind(COMMANDS_IN, SocketKind::Sub),
            bind(COMMANDS_OUT, SocketKind::Pub),
        ),
    ];
    let devices = devices
        .into_iter()
        .map(|d| d.spawn(&ctx))
        .collect::<Result<Vec<_>, _>>()?;

    // The client side: commands (with replies), sink and ventilator.
    let commands = CommandSender::new(
        &ctx,
        connect(COMMANDS_IN, SocketKind::Pub),
        Some(bind(REPLIES, SocketKind::Pull).into()),
    )?;
    let mut sink = Sink::new(&ctx, connect(RESULTS_OUT, SocketKind::Pull))?;

    // The workers: each a thread with its own sockets.
    let workers = (0..args.workers)
        .map(|i| {
            let mut worker = Worker::builder(
                connect(REQUESTS_OUT, SocketKind::Pull).with_hwm(10),
                connect(RESULTS_IN, SocketKind::Push),
            )
            .commands(connect(COMMANDS_OUT, SocketKind::Sub))
            .responses(connect(REPLIES, SocketKind::Push))
            .name(format!("worker-{i}"))
            .build(&ctx, typed(|n: u64| Ok::<_, String>(n * n)))?;
            Ok(thread::spawn(move || worker.run()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    // Readiness: every worker answered a ping through the forwarder.
    let ready = commands.ping(Delivery::expecting(args.workers, Duration::from_secs(10)))?;
    anyhow::ensure!(
        ready.len() == args.workers,
        "only {} workers answered",
        ready.len()
    );

    let start = Instant::now();
    let sender = {
        let ctx = ctx.clone();
        let count = args.count;
        thread::spawn(move || -> anyhow::Result<usize> {
            let mut ventilator =
                Ventilator::new(&ctx, FutureSocket::connect(REQUESTS_IN, SocketKind::Push))?
                    .worker_connect_delay(Duration::ZERO);
            let requests = (1..=count).map(|n| ClusterRequest::encode(n, &n));
            Ok(ventilator.send(requests.collect::<Result<Vec<_>, _>>()?)?)
        })
    };
    let mut sum: u128 = 0;
    let expected = usize::try_from(args.count)?;
    for result in sink.receive_typed::<u64>(Some(expected), Some(Duration::from_secs(30))) {
        sum += u128::from(result?.1);
    }
    let elapsed = start.elapsed();
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("ventilator panicked"))??;
    let want: u128 = (1..=u128::from(args.count)).map(|k| k * k).sum();
    anyhow::ensure!(sum == want, "sum of squares {sum} != {want}");
    println!("{sum}");
    eprintln!(
        "brokered: {} requests through {} workers in {:.3}s ({:.0} requests/s)",
        args.count,
        args.workers,
        elapsed.as_secs_f64(),
        args.count as f64 / elapsed.as_secs_f64()
    );

    let acks = commands.send_kill(Delivery::expecting(args.workers, Duration::from_secs(10)))?;
    anyhow::ensure!(
        acks.len() == args.workers,
        "only {} workers acknowledged the kill",
        acks.len()
    );
    for worker in workers {
        worker
            .join()
            .map_err(|_| anyhow::anyhow!("worker panicked"))?
            .context("worker")?;
    }
    for device in devices {
        device.stop()?;
    }
    Ok(())
}
