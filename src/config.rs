//! A cluster's sockets in one TOML file, like glimpse's INI configuration.
//!
//! Three sections: `[writer]`, the client's side (ventilator, sink, command
//! publisher, reply collector); `[reader]`, each worker's side; and an
//! optional `[broker]` with the two sides of each device. Every value is a
//! [`FutureSocket`] short form; the socket kind follows from the key.
//!
//! ```toml
//! [writer]
//! requests = "bind:tcp://*:5557"   # ventilator PUSH
//! results = "bind:tcp://*:5558"    # sink PULL
//! commands = "bind:tcp://*:5559"   # command PUB
//! responses = "bind:tcp://*:5560"  # command replies PULL
//!
//! [reader]
//! requests = "tcp://head:5557"     # worker PULL
//! results = "tcp://head:5558"      # worker PUSH
//! commands = "tcp://head:5559"     # worker SUB
//! responses = "tcp://head:5560"    # worker replies PUSH
//! ```
//!
//! `[broker]` keys: `requests_frontend`, `requests_backend` (a streamer),
//! `results_frontend`, `results_backend` (a streamer), `commands_frontend`,
//! `commands_backend` (a forwarder); each pair is all or nothing.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::devices::{self, Device};
use crate::socket::{FutureSocket, SocketError, SocketKind};

/// What can be wrong with a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read cluster configuration {path}: {source}")]
    Read {
        /// The file concerned.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown sections or keys.
    #[error("bad cluster configuration: {0}")]
    Syntax(String),
    /// A required key is absent.
    #[error("cluster configuration is missing `{key}` in section [{section}]")]
    Missing {
        /// The section concerned.
        section: &'static str,
        /// The key concerned.
        key: &'static str,
    },
    /// A key's value is not a usable socket.
    #[error("cluster configuration [{section}] {key}: {source}")]
    Socket {
        /// The section concerned.
        section: &'static str,
        /// The key concerned.
        key: &'static str,
        /// The underlying error.
        #[source]
        source: SocketError,
    },
}

/// The file as written: every value a short-form string.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    writer: Option<RawSide>,
    reader: Option<RawSide>,
    broker: Option<RawBroker>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSide {
    requests: Option<String>,
    results: Option<String>,
    commands: Option<String>,
    responses: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBroker {
    requests_frontend: Option<String>,
    requests_backend: Option<String>,
    results_frontend: Option<String>,
    results_backend: Option<String>,
    commands_frontend: Option<String>,
    commands_backend: Option<String>,
}

/// One side of the cluster: requests and results are required, commands and
/// their replies optional.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Side {
    /// Ventilator PUSH (writer) or worker PULL (reader).
    pub requests: FutureSocket,
    /// Sink PULL (writer) or worker PUSH (reader).
    pub results: FutureSocket,
    /// Command PUB (writer) or SUB (reader).
    pub commands: Option<FutureSocket>,
    /// Reply PULL (writer) or PUSH (reader).
    pub responses: Option<FutureSocket>,
}

/// The devices between writer and reader, when the cluster is brokered.
#[derive(Debug, Clone, Default)]
pub struct Broker {
    /// Streamer from writer requests to reader requests.
    pub requests: Option<Device>,
    /// Streamer from reader results to the writer's sink.
    pub results: Option<Device>,
    /// Forwarder from the writer's commands to the readers.
    pub commands: Option<Device>,
}

/// A validated cluster configuration.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The client's sockets.
    pub writer: Side,
    /// Each worker's sockets.
    pub reader: Side,
    /// Devices in between, if any.
    pub broker: Broker,
}

impl ClusterConfig {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        let missing = |section| ConfigError::Missing {
            section,
            key: "requests",
        };
        let writer = side(
            "writer",
            raw.writer.as_ref().ok_or(missing("writer"))?,
            [
                SocketKind::Push,
                SocketKind::Pull,
                SocketKind::Pub,
                SocketKind::Pull,
            ],
        )?;
        let reader = side(
            "reader",
            raw.reader.as_ref().ok_or(missing("reader"))?,
            [
                SocketKind::Pull,
                SocketKind::Push,
                SocketKind::Sub,
                SocketKind::Push,
            ],
        )?;
        let broker = raw.broker.unwrap_or_default();
        Ok(ClusterConfig {
            writer,
            reader,
            broker: Broker {
                requests: device(
                    ("requests_frontend", &broker.requests_frontend),
                    ("requests_backend", &broker.requests_backend),
                    devices::streamer,
                    (SocketKind::Pull, SocketKind::Push),
                )?,
                results: device(
                    ("results_frontend", &broker.results_frontend),
                    ("results_backend", &broker.results_backend),
                    devices::streamer,
                    (SocketKind::Pull, SocketKind::Push),
                )?,
                commands: device(
                    ("commands_frontend", &broker.commands_frontend),
                    ("commands_backend", &broker.commands_backend),
                    devices::forwarder,
                    (SocketKind::Sub, SocketKind::Pub),
                )?,
            },
        })
    }

    /// Writes the configuration back as TOML (readable by [`parse`](Self::parse)).
    pub fn to_toml(&self) -> String {
        let raw_side = |s: &Side| RawSide {
            requests: Some(s.requests.to_string()),
            results: Some(s.results.to_string()),
            commands: s.commands.as_ref().map(ToString::to_string),
            responses: s.responses.as_ref().map(ToString::to_string),
        };
        let ends = |d: &Option<Device>| match d {
            Some(d) => {
                let (front, back) = d.sockets();
                (Some(front.to_string()), Some(back.to_string()))
            }
            None => (None, None),
        };
        let (requests_frontend, requests_backend) = ends(&self.broker.requests);
        let (results_frontend, results_backend) = ends(&self.broker.results);
        let (commands_frontend, commands_backend) = ends(&self.broker.commands);
        let broker = RawBroker {
            requests_frontend,
            requests_backend,
            results_frontend,
            results_backend,
            commands_frontend,
            commands_backend,
        };
        let raw = RawConfig {
            writer: Some(raw_side(&self.writer)),
            reader: Some(raw_side(&self.reader)),
            broker: (broker != RawBroker::default()).then_some(broker),
        };
        // Plain strings and tables only: serialisation cannot fail.
        toml::to_string(&raw).unwrap_or_default()
    }
}

fn socket(
    section: &'static str,
    key: &'static str,
    value: &Option<String>,
    kind: SocketKind,
) -> Result<Option<FutureSocket>, ConfigError> {
    value
        .as_deref()
        .map(|v| {
            FutureSocket::parse(v, kind).map_err(|source| ConfigError::Socket {
                section,
                key,
                source,
            })
        })
        .transpose()
}

fn required(
    section: &'static str,
    key: &'static str,
    value: Option<FutureSocket>,
) -> Result<FutureSocket, ConfigError> {
    value.ok_or(ConfigError::Missing { section, key })
}

fn side(section: &'static str, raw: &RawSide, kinds: [SocketKind; 4]) -> Result<Side, ConfigError> {
    Ok(Side {
        requests: required(
            section,
            "requests",
            socket(section, "requests", &raw.requests, kinds[0])?,
        )?,
        results: required(
            section,
            "results",
            socket(section, "results", &raw.results, kinds[1])?,
        )?,
        commands: socket(section, "commands", &raw.commands, kinds[2])?,
        responses: socket(section, "responses", &raw.responses, kinds[3])?,
    })
}

fn device(
    (front_key, front): (&'static str, &Option<String>),
    (back_key, back): (&'static str, &Option<String>),
    make: fn(FutureSocket, FutureSocket) -> Device,
    (front_kind, back_kind): (SocketKind, SocketKind),
) -> Result<Option<Device>, ConfigError> {
    let front = socket("broker", front_key, front, front_kind)?;
    let back = socket("broker", back_key, back, back_kind)?;
    match (front, back) {
        (Some(front), Some(back)) => Ok(Some(make(front, back))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(ConfigError::Missing {
            section: "broker",
            key: back_key,
        }),
        (None, Some(_)) => Err(ConfigError::Missing {
            section: "broker",
            key: front_key,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
[writer]
requests = "bind:tcp://*:5557"
results = "bind:tcp://*:5558"
commands = "bind:tcp://*:5559"
responses = "bind:tcp://*:5560"

[reader]
requests = "tcp://head:5557?hwm=10"
results = "tcp://head:5558"
commands = "tcp://head:5559"

[broker]
requests_frontend = "bind:tcp://*:6000"
requests_backend = "bind:tcp://*:6001"
"#;

    #[test]
    fn parses_kinds_from_keys_and_writes_back() {
        let config = ClusterConfig::parse(FULL).unwrap();
        assert_eq!(config.writer.requests.kind, SocketKind::Push);
        assert!(config.writer.requests.bind);
        assert_eq!(config.reader.requests.kind, SocketKind::Pull);
        assert_eq!(config.reader.requests.options.receive_hwm, Some(10));
        assert_eq!(
            config.reader.commands.as_ref().unwrap().kind,
            SocketKind::Sub
        );
        assert!(config.reader.responses.is_none());
        assert!(config.broker.requests.is_some());
        assert!(config.broker.commands.is_none());
        let again = ClusterConfig::parse(&config.to_toml()).unwrap();
        assert_eq!(again.writer, config.writer);
        assert_eq!(again.reader, config.reader);
        assert!(again.broker.requests.is_some());
    }

    #[test]
    fn errors_name_what_is_missing_or_wrong() {
        let err = ClusterConfig::parse("[writer]\nrequests = \"bind:tcp://*:1\"\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "cluster configuration is missing `results` in section [writer]"
        );
        let err = ClusterConfig::parse(&FULL.replace("requests_backend", "# ")).unwrap_err();
        assert!(
            err.to_string()
                .contains("`requests_backend` in section [broker]"),
            "{err}"
        );
        let err = ClusterConfig::parse(&FULL.replace("tcp://head:5558", "tcp://head")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cluster configuration [reader] results: bad socket URL"),
            "{err}"
        );
        let err = ClusterConfig::parse(&FULL.replace("[broker]", "[brokers]")).unwrap_err();
        assert!(matches!(err, ConfigError::Syntax(_)), "{err}");
        let err = ClusterConfig::parse("[reader]\nrequests=\"tcp://h:1\"\nresults=\"tcp://h:2\"")
            .unwrap_err();
        assert!(err.to_string().contains("[writer]"), "{err}");
        let err = ClusterConfig::load(Path::new("/nonexistent/cluster.toml")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/cluster.toml"),
            "{err}"
        );
    }
}
