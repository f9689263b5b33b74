//! `zcluster hub`: run a hub in the foreground until Ctrl-C, SIGTERM or
//! `zcluster shutdown`.

use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use zcluster::hub::connection::{self, ConnectionInfo};
use zcluster::hub::server::{
    Endpoints, Hub, HubOptions, DEFAULT_CREDIT, DEFAULT_CREDIT_PER_SLOT, DEFAULT_POISON_LIMIT,
};
use zcluster::message::MAX_MESSAGE_BYTES;

use super::UsageError;

#[derive(Args)]
pub struct HubArgs {
    /// Interface to listen on (a lab sets 0.0.0.0 or an interface address).
    #[arg(long, default_value = "127.0.0.1")]
    ip: String,
    /// Use ports N, N+1, N+2 (default: free ports, written to the connection file).
    #[arg(long, value_name = "N")]
    port_base: Option<u16>,
    /// Where to write the connection file.
    #[arg(long, value_name = "FILE")]
    connection_file: Option<PathBuf>,
    /// Task store: a SQLite file (default: hub.sqlite beside the connection
    /// file) or `:memory:`.
    #[arg(long, value_name = "PATH")]
    store: Option<String>,
    /// Heartbeat period in milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    heartbeat_ms: u64,
    /// Missed heartbeats before an engine is declared dead.
    #[arg(long, default_value_t = 3, value_name = "N")]
    heartbeat_misses: u32,
    /// Tasks a client may have outstanding per job.
    /// Tasks a client may have outstanding per job (given, whatever the
    /// slots: no credit per slot).
    #[arg(long, hide = true)]
    credit: Option<u32>,
    /// Engines that may die while running one task before that task is
    /// failed as a poison input instead of tried on another.
    #[arg(long, default_value_t = DEFAULT_POISON_LIMIT, value_name = "N")]
    poison_limit: u32,
    /// Largest message frame accepted from engines and clients (1 KiB to
    /// 64 MiB). Engines and clients learn it: a larger task is refused at
    /// the client, a larger result comes back as a failure saying so. It
    /// also bounds what one peer can make the hub buffer (see README).
    #[arg(long, default_value_t = MAX_MESSAGE_BYTES, value_name = "BYTES")]
    max_message: usize,
    /// Never run a second copy of a straggling task (see README: stragglers).
    #[arg(long)]
    no_speculation: bool,
    /// Start afresh: a new key and new ports even if the connection file exists.
    #[arg(long)]
    fresh: bool,
    /// Open a task store that holds fewer commits than its side file
    /// (STORE-commits) records, carrying on from what it holds. Without
    /// it such a store is refused: its -wal file was lost or an older copy
    /// put back, and tasks whose results were delivered would run again.
    #[arg(long)]
    accept_rollback: bool,
}

pub fn run(args: HubArgs) -> anyhow::Result<ExitCode> {
    let path = args
        .connection_file
        .clone()
        .unwrap_or_else(connection::default_path);
    let store = args.store.clone().unwrap_or_else(|| {
        path.parent()
            .map_or_else(|| PathBuf::from("hub.sqlite"), |d| d.join("hub.sqlite"))
            .display()
            .to_string()
    });
    // A restarted hub binds the ports and keeps the key of its old file, so
    // engines and clients reconnect without being told anything.
    // One that exists but cannot be used (others may read it, it is
    // damaged) is an error, never silently replaced: a new key and new ports
    // would cut off every worker of the cluster.
    let previous = if args.fresh || fs::symlink_metadata(&path).is_err() {
        None
    } else {
        Some(ConnectionInfo::read(&path).map_err(|e| {
            UsageError(format!(
                "{e}\n(fix it, or start the hub with --fresh for new ports and a new key, \
                 which every worker and client must then be given)"
            ))
        })?)
    };
    let rebind = |url: &str| {
        url.rsplit_once(':')
            .map(|(_, port)| format!("tcp://{}:{port}", args.ip))
    };
    let reuse = previous
        .filter(|_| args.port_base.is_none())
        .and_then(|old| {
            let urls = Endpoints::Urls {
                engines: rebind(&old.engines)?,
                clients: rebind(&old.clients)?,
                notifications: rebind(&old.notifications)?,
            };
            Some((urls, Some(old.key)))
        });
    let (endpoints, key) = reuse.unwrap_or_else(|| {
        let fresh = Endpoints::Tcp {
            ip: args.ip.clone(),
            port_base: args.port_base,
        };
        (fresh, None)
    });
    let options = HubOptions {
        endpoints,
        connection_file: Some(path.clone()),
        store,
        heartbeat: Duration::from_millis(args.heartbeat_ms.max(1)),
        heartbeat_misses: args.heartbeat_misses.max(1),
        credit: args.credit.unwrap_or(DEFAULT_CREDIT).max(1),
        credit_per_slot: if args.credit.is_some() {
            0
        } else {
            DEFAULT_CREDIT_PER_SLOT
        },
        key,
        poison_limit: args.poison_limit.max(1),
        max_message: args.max_message,
        speculate: !args.no_speculation,
        accept_rollback: args.accept_rollback,
    };
    let stop = super::stop_on_signals()?;
    // The hub's directory (~/.zcluster by default) holds the key and the
    // store: made 0700 before anything (the store included) creates it.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        connection::create_private_dir(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let ctx = zmq::Context::new();
    let hub = Hub::bind(&ctx, options)?;
    let info = hub.connection();
    eprintln!(
        "zcluster: hub listening; engines {} clients {}",
        info.engines, info.clients
    );
    eprintln!("zcluster: task store {}", info.store);
    let carried = hub.carried_on();
    match carried.len() {
        0 => {}
        1 => eprintln!("zcluster: carried on 1 unfinished job from the store"),
        n => eprintln!("zcluster: carried on {n} unfinished jobs from the store"),
    }
    for job in &carried {
        let total = job.total.map_or_else(
            || "inputs still to come".to_string(),
            |t| format!("{t} inputs"),
        );
        eprintln!(
            "zcluster:   job {}: {} tasks to run, {} finished ({total})",
            job.job, job.to_run, job.finished
        );
    }
    eprintln!(
        "zcluster: start workers with: zcluster worker --hub {}",
        path.display()
    );
    hub.run(&stop)?;
    Ok(ExitCode::SUCCESS)
}
