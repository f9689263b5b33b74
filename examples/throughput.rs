//! Throughput of the toolkit against raw libzmq in the same topology:
//! a ventilator thread PUSHes N messages over tcp loopback to W worker
//! threads, which PULL each one and PUSH it on to a sink that PULLs them.
//!
//! * `--mode raw`: bare 64-byte single-frame messages, workers copy them
//!   through: the transport ceiling.
//! * `--mode toolkit`: `Ventilator` → `Worker` with a typed no-op handler →
//!   `Sink`, i.e. one-frame zcluster messages with bincode bodies, result
//!   metadata, and every check the real path makes; `--batch N` sends N
//!   requests per message (and gets N results per message back).
//!
//! Prints one line: `MODE N WORKERS SECONDS MESSAGES_PER_SECOND`. Timing runs
//! from the first send to the last receive, after the workers connected.
//! `scripts/bench-toolkit.sh` runs both and prints the ratio.

use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use zcluster::message::ClusterRequest;
use zcluster::sink::Sink;
use zcluster::socket::{last_endpoint, FutureSocket, SocketKind};
use zcluster::ventilator::Ventilator;
use zcluster::worker::{typed, Worker};

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Raw,
    Toolkit,
}

#[derive(Parser)]
struct Args {
    #[arg(long, value_enum)]
    mode: Mode,
    /// Messages to send.
    #[arg(long, default_value_t = 200_000)]
    count: u64,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Toolkit requests per message (`Ventilator::batch`).
    #[arg(long, default_value_t = 1)]
    batch: usize,
}

/// Time for workers to connect before the clock starts (not measured).
const CONNECT: Duration = Duration::from_millis(300);

/// The payload size of the raw messages; the toolkit's no-op request is of
/// the same order (one frame of about 40 bytes).
const RAW_BYTES: usize = 64;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ctx = zmq::Context::new();
    let (seconds, received) = match args.mode {
        Mode::Raw => raw(&ctx, &args)?,
        Mode::Toolkit => toolkit(&ctx, &args)?,
    };
    anyhow::ensure!(
        received == args.count,
        "received {received} of {}",
        args.count
    );
    let mode = match args.mode {
        Mode::Raw => "raw",
        Mode::Toolkit => "toolkit",
    };
    println!(
        "{mode} {} {} {seconds:.4} {:.0}",
        args.count,
        args.workers,
        args.count as f64 / seconds
    );
    Ok(())
}

fn raw(ctx: &zmq::Context, args: &Args) -> anyhow::Result<(f64, u64)> {
    let push = ctx.socket(zmq::PUSH)?;
    push.bind("tcp://127.0.0.1:*")?;
    let requests = last_endpoint(&push)?;
    let pull = ctx.socket(zmq::PULL)?;
    pull.bind("tcp://127.0.0.1:*")?;
    let results = last_endpoint(&pull)?;
    for _ in 0..args.workers {
        let (ctx, requests, results) = (ctx.clone(), requests.clone(), results.clone());
        thread::spawn(move || -> zmq::Result<()> {
            let input = ctx.socket(zmq::PULL)?;
            input.connect(&requests)?;
            let output = ctx.socket(zmq::PUSH)?;
            output.connect(&results)?;
            let mut msg = zmq::Message::new();
            loop {
                input.recv(&mut msg, 0)?;
                output.send(&msg[..], 0)?;
            }
        });
    }
    thread::sleep(CONNECT);
    let count = args.count;
    let start = Instant::now();
    let sender = thread::spawn(move || -> zmq::Result<()> {
        let payload = [7u8; RAW_BYTES];
        for _ in 0..count {
            push.send(&payload[..], 0)?;
        }
        Ok(())
    });
    let mut msg = zmq::Message::new();
    for _ in 0..count {
        pull.recv(&mut msg, 0)?;
    }
    let seconds = start.elapsed().as_secs_f64();
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    Ok((seconds, count))
}

fn toolkit(ctx: &zmq::Context, args: &Args) -> anyhow::Result<(f64, u64)> {
    let mut ventilator = Ventilator::new(
        ctx,
        FutureSocket::bind("tcp://127.0.0.1:*", SocketKind::Push),
    )?
    .worker_connect_delay(CONNECT)
    .batch(args.batch);
    let requests = last_endpoint(ventilator.socket())?;
    let mut sink = Sink::new(
        ctx,
        FutureSocket::bind("tcp://127.0.0.1:*", SocketKind::Pull),
    )?;
    let results = last_endpoint(sink.socket())?;
    for i in 0..args.workers {
        let mut worker = Worker::builder(
            FutureSocket::connect(&requests, SocketKind::Pull),
            FutureSocket::connect(&results, SocketKind::Push),
        )
        .name(format!("w{i}"))
        .build(ctx, typed(|n: u64| Ok::<_, String>(n)))?;
        thread::spawn(move || worker.run());
    }
    let count = args.count;
    // The ventilator waits CONNECT before its first send; the clock starts
    // at that first send.
    let sender = thread::spawn(move || -> anyhow::Result<Instant> {
        let mut start = None;
        let requests = (0..count).map(|n| {
            start.get_or_insert_with(Instant::now);
            ClusterRequest::encode(n, &n).expect("a u64 always encodes")
        });
        ventilator.send(requests)?;
        start.ok_or_else(|| anyhow::anyhow!("nothing sent"))
    });
    let mut received = 0;
    for result in sink.receive(Some(count as usize), Some(Duration::from_secs(60))) {
        result?;
        received += 1;
    }
    let end = Instant::now();
    let start = sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    Ok((end.duration_since(start).as_secs_f64(), received))
}
