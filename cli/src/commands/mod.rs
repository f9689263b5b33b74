//! One module per subcommand.

pub mod device;
pub mod kill;
pub mod map;
pub mod ping;

use std::fmt;

use zcluster::socket::{FutureSocket, SocketKind};

/// An error in what the user asked for (exit status 2), as opposed to a
/// failure while doing it (exit status 1).
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Parses a socket short form given on the command line as a usage error
/// naming the flag.
pub fn socket_arg(flag: &str, spec: &str, kind: SocketKind) -> anyhow::Result<FutureSocket> {
    FutureSocket::parse(spec, kind).map_err(|e| UsageError(format!("{flag}: {e}")).into())
}
