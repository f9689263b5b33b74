//! The sink of the divide-and-conquer trio: collect COUNT squares and print
//! their sum (the sum of k² for k = 1..=COUNT, so the answer is checkable).
//! See `examples/worker.rs` for how to run the trio.

use std::time::{Duration, Instant};

use clap::Parser;
use zcluster::sink::Sink;
use zcluster::socket::{FutureSocket, SocketKind};

#[derive(Parser)]
struct Args {
    /// Where results arrive (PULL).
    #[arg(long, default_value = "bind:tcp://*:5558")]
    results: String,
    /// How many results to wait for.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Give up when nothing arrives for this long.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ctx = zmq::Context::new();
    let mut sink = Sink::new(&ctx, FutureSocket::parse(&args.results, SocketKind::Pull)?)?;
    let mut sum: u128 = 0;
    let mut first = None;
    for result in sink.receive_typed::<u64>(Some(args.count), Some(args.timeout)) {
        let (_, square) = result?;
        first.get_or_insert_with(Instant::now);
        sum += u128::from(square);
    }
    let secs = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    println!("{sum}");
    eprintln!("sink: {} results in {secs:.3}s", args.count);
    Ok(())
}
