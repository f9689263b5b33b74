//! `zcluster map --hosts HOSTFILE`: a hub inside this process that the
//! hosts can reach, and one worker per host over ssh, for the length of a
//! map (GNU parallel's `-S`/`--sshloginfile` habit: nothing to set up
//! beforehand, nothing left running after).

use std::net::{IpAddr, ToSocketAddrs, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use tracing::warn;

use super::hosts::{Host, Target};
use super::ssh::{LaunchError, Launcher, ReportSink, SshOptions, StartSummary};
use crate::hub::client::{ClientError, HubClient};
use crate::hub::connection::{ConnectionError, ConnectionInfo};
use crate::hub::server::{Endpoints, Hub, HubError, HubOptions};

/// The ssh port, only to ask the kernel which local address routes to a
/// host (nothing is sent).
const SSH_PORT: u16 = 22;

/// Errors starting a map's hub and workers.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The hub could not start.
    #[error(transparent)]
    Hub(#[from] HubError),
    /// Its connection file could not be written.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// The launcher could not start.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// A private temp directory or a thread could not be made.
    #[error("cannot {what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// No host has a worker: the map would wait forever.
    #[error("no worker started on any of the {0} host(s) (see the lines above)")]
    NoWorkers(usize),
}

/// A hub on a thread of this process and a worker on every host; dropping
/// it stops the workers and then the hub.
pub struct SshCluster {
    ctx: zmq::Context,
    connection: ConnectionInfo,
    hub_stop: Arc<AtomicBool>,
    hub: Option<JoinHandle<Result<(), HubError>>>,
    launcher: Option<Launcher>,
    /// Holds the connection file the local (`:`) workers read; removed
    /// last.
    _dir: tempfile::TempDir,
}

impl SshCluster {
    /// Starts a hub on an address the hosts can reach and a worker on each
    /// host, and waits until each has registered or failed (as reported
    /// through `report`). At least one worker must start.
    pub fn start(
        hosts: &[Host],
        options: SshOptions,
        stop: Arc<AtomicBool>,
        report: ReportSink,
    ) -> Result<Self, ClusterError> {
        let ctx = zmq::Context::new();
        let hub = Hub::bind(
            &ctx,
            HubOptions {
                endpoints: Endpoints::Tcp {
                    ip: listen_ip(hosts),
                    port_base: None,
                },
                ..HubOptions::default()
            },
        )?;
        let connection = hub.connection().clone();
        let dir = tempfile::Builder::new()
            .prefix("zcluster-map-")
            .tempdir()
            .map_err(|source| ClusterError::Io {
                what: "create a temp directory",
                source,
            })?;
        let file = dir.path().join("hub.json");
        connection.write(&file)?;
        let hub_stop = Arc::new(AtomicBool::new(false));
        let hub = {
            let hub_stop = hub_stop.clone();
            thread::Builder::new()
                .name("zcluster-hub".into())
                .spawn(move || hub.run(&hub_stop))
                .map_err(|source| ClusterError::Io {
                    what: "start the hub thread",
                    source,
                })?
        };
        let mut cluster = SshCluster {
            ctx,
            connection,
            hub_stop,
            hub: Some(hub),
            launcher: None,
            _dir: dir,
        };
        let launcher = Launcher::start(hosts, &file, options, stop, report)?;
        let summary: StartSummary = launcher.wait_started();
        cluster.launcher = Some(launcher);
        if summary.started == 0 {
            return Err(ClusterError::NoWorkers(hosts.len()));
        }
        Ok(cluster)
    }

    /// A new client of the hub.
    pub fn client(&self) -> Result<HubClient, ClientError> {
        HubClient::connect(&self.ctx, &self.connection)
    }
}

impl Drop for SshCluster {
    /// Stops the workers (each leaves gracefully when its session closes),
    /// then the hub.
    fn drop(&mut self) {
        if let Some(launcher) = self.launcher.take() {
            launcher.stop();
        }
        let shutdown = self.client().and_then(|mut c| c.shutdown(true));
        if let Err(e) = shutdown {
            warn!(error = %e, "the map's hub did not shut down cleanly");
        }
        self.hub_stop.store(true, Ordering::SeqCst);
        if let Some(hub) = self.hub.take() {
            let _ = hub.join();
        }
    }
}

/// The address to listen on: loopback when every host is this machine or
/// a loopback address; else the local address that routes to the hosts,
/// if it is one and the same for all; else every interface.
fn listen_ip(hosts: &[Host]) -> String {
    if hosts.iter().all(Host::is_loopback) {
        return "127.0.0.1".into();
    }
    let mut chosen: Option<IpAddr> = None;
    for host in hosts.iter().filter(|h| !h.is_loopback()) {
        let Target::Remote { host, .. } = &host.target else {
            continue;
        };
        match local_address_towards(host) {
            Some(ip) if chosen.is_none_or(|c| c == ip) => chosen = Some(ip),
            _ => return "0.0.0.0".into(),
        }
    }
    chosen.map_or_else(|| "0.0.0.0".into(), |ip| ip.to_string())
}

/// The local address the kernel would use to reach `host` (a UDP
/// `connect` sends nothing); `None` when the name does not resolve here
/// (an alias of the user's ssh config, say).
fn local_address_towards(host: &str) -> Option<IpAddr> {
    let target = (host, SSH_PORT).to_socket_addrs().ok()?.next()?;
    let bind = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = UdpSocket::bind(bind).ok()?;
    socket.connect(target).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::hosts::parse;
    use std::path::Path;

    #[test]
    fn loopback_hosts_get_a_loopback_hub() {
        let hosts = parse(":\n127.0.0.2\n4/127.0.0.3\n", Path::new("h")).expect("parses");
        assert_eq!(listen_ip(&hosts), "127.0.0.1");
    }
}
