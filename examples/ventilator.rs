//! The ventilator of the divide-and-conquer trio: push the numbers 1..=COUNT
//! to whatever workers are connected. See `examples/worker.rs` for how to run
//! the trio.

use clap::Parser;
use zcluster::message::ClusterRequest;
use zcluster::socket::{FutureSocket, SocketKind};
use zcluster::ventilator::Ventilator;

#[derive(Parser)]
struct Args {
    /// Where to send requests (PUSH).
    #[arg(long, default_value = "bind:tcp://*:5557")]
    requests: String,
    /// How many requests.
    #[arg(long, default_value_t = 1000)]
    count: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ctx = zmq::Context::new();
    let mut ventilator =
        Ventilator::new(&ctx, FutureSocket::parse(&args.requests, SocketKind::Push)?)?;
    let requests = (1..=args.count).map(|n| ClusterRequest::encode(n, &n));
    let requests: Vec<ClusterRequest> = requests.collect::<Result<_, _>>()?;
    let sent = ventilator.send(requests)?;
    eprintln!("ventilator: sent {sent} requests");
    Ok(())
}
