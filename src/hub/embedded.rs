//! A whole cluster inside this process: a hub and one engine on threads,
//! over inproc. It is what `zcluster map` runs on when no hub is given, so
//! the default a new user meets takes the same code path as a lab's
//! cluster: client → hub → engine → worker slots and back.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tracing::warn;

use super::client::{ClientError, HubClient};
use super::connection::ConnectionInfo;
use super::engine::{
    run_engine, EngineError, EngineOptions, EngineStop, HandlerFn, DEFAULT_MISSES,
};
use super::server::{Endpoints, Hub, HubError, HubOptions};
use crate::worker::WorkerExit;

/// Errors starting an embedded cluster.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// The hub could not start.
    #[error(transparent)]
    Hub(#[from] HubError),
    /// A thread could not start.
    #[error("cannot start the embedded {what} thread: {source}")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The hub could not be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The engine did not register in time.
    #[error("the embedded engine did not register within {0:?}")]
    NoEngine(Duration),
}

/// How long starting waits for the engine to register.
const REGISTER_WAIT: Duration = Duration::from_secs(10);

/// A hub and an engine on threads of this process; see the module docs.
pub struct EmbeddedCluster {
    ctx: zmq::Context,
    connection: ConnectionInfo,
    stop: EngineStop,
    hub: Option<JoinHandle<Result<(), HubError>>>,
    engine: Option<JoinHandle<Result<WorkerExit, EngineError>>>,
}

impl EmbeddedCluster {
    /// Starts a hub with an in-memory store and an engine with `slots`
    /// slots running command jobs, and waits until the engine has
    /// registered.
    pub fn start(slots: usize) -> Result<Self, EmbeddedError> {
        Self::with(slots, ":memory:", BTreeMap::new())
    }

    /// Like [`start`](Self::start) with a given task store (a SQLite path or
    /// `:memory:`) and named handlers for the engine.
    pub fn with(
        slots: usize,
        store: &str,
        handlers: BTreeMap<String, HandlerFn>,
    ) -> Result<Self, EmbeddedError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "zcluster-embedded-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let options = HubOptions {
            endpoints: Endpoints::Inproc(name),
            store: store.to_string(),
            ..HubOptions::default()
        };
        Self::with_options(options, slots, handlers)
    }

    /// Like [`with`](Self::with) with a hub of these options: over TCP on
    /// loopback, say, to measure what a network hub's sockets cost, or with
    /// a smaller `max_message`.
    pub fn with_options(
        options: HubOptions,
        slots: usize,
        handlers: BTreeMap<String, HandlerFn>,
    ) -> Result<Self, EmbeddedError> {
        let ctx = zmq::Context::new();
        let hub = Hub::bind(&ctx, options)?;
        Self::around(&ctx, hub, slots, handlers)
    }

    /// Runs `hub`, bound on `ctx` but not yet running, with an engine of
    /// `slots` slots and `handlers`, and waits until the engine has
    /// registered (a test can do things to a bound hub before it runs).
    pub fn around(
        ctx: &zmq::Context,
        hub: Hub,
        slots: usize,
        handlers: BTreeMap<String, HandlerFn>,
    ) -> Result<Self, EmbeddedError> {
        let ctx = ctx.clone();
        let connection = hub.connection().clone();
        let stop = EngineStop::new();
        let hub = {
            let stop = stop.flag().clone();
            thread::Builder::new()
                .name("zcluster-hub".into())
                .spawn(move || hub.run(&stop))
                .map_err(|source| EmbeddedError::Thread {
                    what: "hub",
                    source,
                })?
        };
        let engine = {
            let (ctx, stop) = (ctx.clone(), stop.clone());
            let options = EngineOptions {
                connection: connection.clone(),
                slots,
                misses: DEFAULT_MISSES,
                handlers,
                origin: None,
                end_at: None,
                resources: None,
                pin: false,
            };
            thread::Builder::new()
                .name("zcluster-engine".into())
                .spawn(move || run_engine(&ctx, &options, &stop))
                .map_err(|source| EmbeddedError::Thread {
                    what: "engine",
                    source,
                })?
        };
        let cluster = EmbeddedCluster {
            ctx,
            connection,
            stop,
            hub: Some(hub),
            engine: Some(engine),
        };
        cluster.wait_for_engine(slots)?;
        Ok(cluster)
    }

    /// Polls the hub until the engine's slots are registered.
    fn wait_for_engine(&self, slots: usize) -> Result<(), EmbeddedError> {
        let mut client = self.client()?;
        let deadline = std::time::Instant::now() + REGISTER_WAIT;
        while std::time::Instant::now() < deadline {
            if client.hello()?.slots as usize >= slots.max(1) {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(1));
        }
        Err(EmbeddedError::NoEngine(REGISTER_WAIT))
    }

    /// A new client of the embedded hub.
    pub fn client(&self) -> Result<HubClient, ClientError> {
        HubClient::connect(&self.ctx, &self.connection)
    }

    /// The embedded hub's connection information.
    pub fn connection(&self) -> &ConnectionInfo {
        &self.connection
    }
}

impl Drop for EmbeddedCluster {
    /// Kills the engine (its running tasks were cancelled by their job, or
    /// finish first) and stops the hub.
    fn drop(&mut self) {
        let shutdown = self.client().and_then(|mut c| c.shutdown(true));
        if let Err(e) = shutdown {
            warn!(error = %e, "embedded hub did not shut down cleanly");
            self.stop.stop();
        }
        if let Some(engine) = self.engine.take() {
            // The engine leaves after the kill; the stop flag covers a hub
            // that never relayed it.
            self.stop.stop();
            let _ = engine.join();
        }
        if let Some(hub) = self.hub.take() {
            let _ = hub.join();
        }
    }
}
