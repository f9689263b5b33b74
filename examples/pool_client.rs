//! Not a micro benchmark: the two sides of a `zcluster::pool` job as
//! separate processes, so `scripts/bench-hub.sh` can measure the peak
//! memory of a client and of a hub (`zcluster hub`) each on its own, for
//! 100,000 vs 1,000,000 no-op inputs. (`examples/hub_throughput.rs` runs
//! client, hub and engine in one process, so its peak RSS is their sum.)
//!
//! ```sh
//! pool_client serve HUB_FILE SLOTS   # an engine whose slots run a no-op handler
//!                                    # (and `poison`, which aborts on input 777)
//! pool_client map HUB_FILE COUNT [CHUNK]  # a client: imap over COUNT inputs, CHUNK per task (1)
//! ```
//!
//! `map` prints `pool COUNT SECONDS INPUTS_PER_SECOND`.

use std::fmt::Display;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use zcluster::hub::client::ClientError;
use zcluster::pool::{Pool, PoolError, Registry};

/// The handler the client names and the engine serves.
const HANDLER: &str = "noop";

/// How long the client retries opening its job while no engine offering
/// the handler has registered yet (the script starts both at once).
const ENGINE_WAIT: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.as_slice() {
        [mode, hub, n] if mode == "serve" => n
            .parse()
            .map_err(|e| format!("bad SLOTS {n:?}: {e}"))
            .and_then(|slots| serve(Path::new(hub), slots)),
        [mode, hub, n, rest @ ..] if mode == "map" && rest.len() <= 1 => {
            let chunk = rest.first().map_or(Ok(1), |c| {
                c.parse::<usize>()
                    .map_err(|e| format!("bad CHUNK {c:?}: {e}"))
            });
            n.parse()
                .map_err(|e| format!("bad COUNT {n:?}: {e}"))
                .and_then(|count| map(Path::new(hub), count, chunk?))
        }
        _ => {
            eprintln!(
                "pool_client: run by scripts/bench-hub.sh \
                 (usage: pool_client serve HUB_FILE SLOTS | pool_client map HUB_FILE COUNT [CHUNK])"
            );
            Ok(())
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("pool_client: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The one input the `poison` handler dies on.
pub const POISON_INPUT: u64 = 777;

fn registry() -> Registry {
    Registry::new()
        .handler(HANDLER, |n: u64| Ok::<_, String>(n))
        // For tests of poison inputs: kills the whole engine on one input.
        .handler("poison", |n: u64| {
            if n == POISON_INPUT {
                std::process::abort();
            }
            Ok::<_, String>(n)
        })
}

fn serve(hub: &Path, slots: usize) -> Result<(), String> {
    registry().serve(hub, slots).map(|_| ()).map_err(text)
}

/// Errors end up as a line on stderr.
fn text(error: impl Display) -> String {
    error.to_string()
}

fn map(hub: &Path, count: u64, chunk: usize) -> Result<(), String> {
    // One input per task by default, so the hub records (and must not
    // hold) one task per input, as with hub_throughput.
    let mut pool = Pool::connect(hub).map_err(text)?.chunksize(chunk.max(1));
    let waited = Instant::now();
    let start = loop {
        // Opening the job is refused until an engine offers the handler.
        match pool.imap::<u64, u64, _>(HANDLER, std::iter::empty()) {
            Ok(outputs) => {
                for output in outputs {
                    output.map_err(text)?.map_err(text)?;
                }
                break Instant::now();
            }
            Err(PoolError::Hub(ClientError::Refused(_))) if waited.elapsed() < ENGINE_WAIT => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(text(e)),
        }
    };
    let mut received = 0u64;
    for output in pool.imap::<u64, u64, _>(HANDLER, 0..count).map_err(text)? {
        output.map_err(text)?.map_err(text)?;
        received += 1;
    }
    let seconds = start.elapsed().as_secs_f64();
    if received != count {
        return Err(format!("received {received} of {count}"));
    }
    println!("pool {count} {seconds:.4} {:.0}", count as f64 / seconds);
    Ok(())
}
