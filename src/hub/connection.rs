//! The connection file: every URL engines and clients need, and the key.
//!
//! `zcluster hub` writes it (mode 0600, since it holds the signing key) and
//! everyone else reads it, so a lab shares one small file instead of a list
//! of ports. A restarted hub reads its old file back and binds the same
//! ports with the same key, so nobody needs to be told anything.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::auth::Key;

/// Errors reading or writing a connection file.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The file could not be read or written.
    #[error("cannot {operation} connection file {path}: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a connection file.
    #[error("{path} is not a zcluster connection file: {reason}")]
    Malformed {
        /// The file concerned.
        path: PathBuf,
        /// Why, in words.
        reason: String,
    },
    /// Others can read the key.
    #[error("connection file {path} is readable by others (mode {mode:o}); it holds the cluster's key: run `chmod 600 {path}`")]
    TooOpen {
        /// The file concerned.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key is not a usable hex key.
    #[error("the key in the connection file is unusable: {0}")]
    BadKey(String),
    /// No randomness for a key.
    #[error("cannot generate a key: {0}")]
    Random(String),
}

/// What engines and clients need to reach a hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    /// Where engines register, heartbeat and get tasks (hub ROUTER).
    pub engines: String,
    /// Where clients submit jobs and query (hub ROUTER).
    pub clients: String,
    /// Where (un)registrations are published (hub PUB).
    pub notifications: String,
    /// Shared secret for message signing, hex.
    pub key: String,
    /// The hub's task store (path or `:memory:`).
    pub store: String,
}

impl ConnectionInfo {
    /// A fresh random key, hex encoded (32 bytes from the OS).
    pub fn new_key() -> Result<String, ConnectionError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| ConnectionError::Random(e.to_string()))?;
        Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The signing key.
    pub fn signing_key(&self) -> Result<Key, ConnectionError> {
        Key::from_hex(&self.key).map_err(ConnectionError::BadKey)
    }

    /// Writes the file with mode 0600 (creating its directory), replacing
    /// any old one atomically.
    pub fn write(&self, path: &Path) -> Result<(), ConnectionError> {
        let io = |operation, source| ConnectionError::Io {
            operation,
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| io("create the directory of", e))?;
        }
        let json = serde_json::to_string_pretty(self).map_err(|e| ConnectionError::Malformed {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io("create", e))?;
        file.write_all(json.as_bytes())
            .map_err(|e| io("write", e))?;
        file.write_all(b"\n").map_err(|e| io("write", e))?;
        file.sync_all().map_err(|e| io("write", e))?;
        fs::rename(&tmp, path).map_err(|e| io("replace", e))
    }

    /// Reads the file, refusing one that others can read.
    pub fn read(path: &Path) -> Result<Self, ConnectionError> {
        let io = |operation, source| ConnectionError::Io {
            operation,
            path: path.to_path_buf(),
            source,
        };
        let meta = fs::metadata(path).map_err(|e| io("read", e))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(ConnectionError::TooOpen {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = fs::read_to_string(path).map_err(|e| io("read", e))?;
        serde_json::from_str(&text).map_err(|e| ConnectionError::Malformed {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }
}

/// `~/.zcluster/hub.json`, the default connection file.
pub fn default_path() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".zcluster").join("hub.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ConnectionInfo {
        ConnectionInfo {
            engines: "tcp://127.0.0.1:5001".into(),
            clients: "tcp://127.0.0.1:5002".into(),
            notifications: "tcp://127.0.0.1:5003".into(),
            key: ConnectionInfo::new_key().unwrap(),
            store: ":memory:".into(),
        }
    }

    #[test]
    fn writes_0600_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/hub.json");
        let info = info();
        assert_eq!(info.key.len(), 64);
        info.write(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(ConnectionInfo::read(&path).unwrap(), info);
    }

    #[test]
    fn refuses_a_file_others_can_read_and_says_how_to_fix_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.json");
        info().write(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = ConnectionInfo::read(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        let err = ConnectionInfo::read(&dir.path().join("missing.json")).unwrap_err();
        assert!(err.to_string().contains("missing.json"), "{err}");
        fs::write(&path, "{}").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            ConnectionInfo::read(&path),
            Err(ConnectionError::Malformed { .. })
        ));
    }
}
