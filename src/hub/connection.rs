//! The connection file: every URL engines and clients need, and the keys.
//!
//! `zcluster hub` writes it (mode 0600, since it holds the signing key and
//! the CURVE keys, see [`super::curve`]) and
//! everyone else reads it, so a lab shares one small file instead of a list
//! of ports. A restarted hub reads its old file back and binds the same
//! ports with the same key, so nobody needs to be told anything.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::curve::{self, CurveError, CurveKeys};
use crate::auth::Key;

/// The largest connection file read: a real one is well under 1 KiB, so
/// anything bigger is not one, and reading it whole would let a planted
/// file of any size fill the reader's memory.
pub const MAX_CONNECTION_FILE_BYTES: u64 = 64 * 1024;

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
    /// The path is a symbolic link. A link could point a hub's write at
    /// any file it may write (a root-only one, for a hub run as root), or a
    /// reader at a file someone else controls, so neither follows one.
    #[error("connection file {path} is a symbolic link (to {target}); zcluster does not follow links for the file that holds the key: name the file it points to instead")]
    Symlink {
        /// The link.
        path: PathBuf,
        /// Where it points, as written in the link.
        target: PathBuf,
    },
    /// The path is a FIFO, a device, a directory or a socket: reading a
    /// FIFO would wait forever, and none of them is a connection file.
    #[error("connection file {path} is a {kind}, not a regular file")]
    NotRegular {
        /// The path concerned.
        path: PathBuf,
        /// What it is, in words ("FIFO", "directory", ...).
        kind: &'static str,
    },
    /// Another user owns the file: whoever owns it chose the key and the
    /// URLs, and can read or change them at will.
    #[error("connection file {path} is owned by {owner} (uid {uid}), not by this user (uid {me}); it holds the cluster's key: use a copy of your own (cp it and chmod 600)")]
    OtherOwner {
        /// The file concerned.
        path: PathBuf,
        /// The owner's name, or its uid when it has none.
        owner: String,
        /// The owner's uid.
        uid: u32,
        /// This process's effective uid.
        me: u32,
    },
    /// The file is larger than any connection file.
    #[error(
        "connection file {path} is larger than {limit} bytes; it is not a zcluster connection file"
    )]
    TooLarge {
        /// The file concerned.
        path: PathBuf,
        /// [`MAX_CONNECTION_FILE_BYTES`].
        limit: u64,
    },
    /// The key is not a usable hex key.
    #[error("the key in the connection file is unusable: {0}")]
    BadKey(String),
    /// No randomness for a key.
    #[error("cannot generate a key: {0}")]
    Random(String),
    /// The file has no CURVE keys: a hub from before CURVE wrote it, and
    /// nothing without them gets through a hub's sockets now.
    #[error("connection file {path} has no CURVE keys: a zcluster hub older than this one wrote it. Restart the hub with this zcluster (`zcluster hub --fresh` writes a new file: new ports and keys) and give engines and clients the file it writes")]
    NoCurveKeys {
        /// The file concerned.
        path: PathBuf,
    },
    /// The CURVE keys are unusable, or not the ones of the file's key.
    #[error("connection file {path}: {source}")]
    BadCurveKeys {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with them.
        #[source]
        source: CurveError,
    },
    /// CURVE could not be set up.
    #[error(transparent)]
    Curve(#[from] CurveError),
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
    /// The CURVE keys of every hub socket (derived from `key`, see
    /// [`super::curve`]), for engines, clients and other tools.
    pub curve: CurveKeys,
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

    /// Writes the file with mode 0600, replacing any old one atomically;
    /// a missing directory is created 0700.
    ///
    /// The file may sit in a directory others can write (a lab's shared
    /// directory), so: the bytes go to a temp file that is created
    /// exclusively (`O_CREAT|O_EXCL`, which also refuses a link), under a
    /// random name, with mode 0600 from its creation, in the target's
    /// directory, and is then renamed over the target (a rename replaces
    /// a link rather than writing through it). A target that is a link, not
    /// a regular file, or owned by another user is refused, never replaced.
    pub fn write(&self, path: &Path) -> Result<(), ConnectionError> {
        let io = |operation, source| ConnectionError::Io {
            operation,
            path: path.to_path_buf(),
            source,
        };
        let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(dir) => dir,
            None => Path::new("."),
        };
        create_private_dir(dir).map_err(|e| io("create the directory of", e))?;
        match fs::symlink_metadata(path) {
            Ok(meta) => check_file(path, &meta, false)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("inspect", e)),
        }
        let json = serde_json::to_string_pretty(self).map_err(|e| ConnectionError::Malformed {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        replace_private(path, json.as_bytes(), ".zcluster-connection-")
            .map_err(|(operation, e)| io(operation, e))
    }

    /// Reads the file, refusing one that others can read, that another
    /// user owns, that is a link, or that is not a regular file.
    ///
    /// The checks are made on the opened file (`fstat` of its descriptor),
    /// not on the path beforehand, so the file cannot be swapped between
    /// check and read; it is opened with `O_NOFOLLOW` (no link is
    /// followed) and `O_NONBLOCK` (opening a FIFO returns at once instead
    /// of waiting for a writer, and is then refused).
    pub fn read(path: &Path) -> Result<Self, ConnectionError> {
        let io = |operation, source| ConnectionError::Io {
            operation,
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ELOOP) {
                    if let Ok(target) = fs::read_link(path) {
                        return ConnectionError::Symlink {
                            path: path.to_path_buf(),
                            target,
                        };
                    }
                }
                io("read", e)
            })?;
        let meta = file.metadata().map_err(|e| io("inspect", e))?;
        check_file(path, &meta, true)?;
        let mut text = String::new();
        file.take(MAX_CONNECTION_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| io("read", e))?;
        if text.len() as u64 > MAX_CONNECTION_FILE_BYTES {
            return Err(ConnectionError::TooLarge {
                path: path.to_path_buf(),
                limit: MAX_CONNECTION_FILE_BYTES,
            });
        }
        let info: Self = serde_json::from_str(&text).map_err(|e| {
            let without_curve = serde_json::from_str::<serde_json::Value>(&text)
                .is_ok_and(|v| v.get("key").is_some() && v.get("curve").is_none());
            if without_curve {
                ConnectionError::NoCurveKeys {
                    path: path.to_path_buf(),
                }
            } else {
                ConnectionError::Malformed {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                }
            }
        })?;
        curve::check(&info.curve, &info.key).map_err(|source| ConnectionError::BadCurveKeys {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(info)
    }
}

/// Refuses a link, a file that is not regular, one another user owns and,
/// when `reading`, one others may read (a file about to be replaced may
/// be too open: its replacement is not).
fn check_file(path: &Path, meta: &fs::Metadata, reading: bool) -> Result<(), ConnectionError> {
    let kind = meta.file_type();
    if kind.is_symlink() {
        return Err(ConnectionError::Symlink {
            path: path.to_path_buf(),
            target: fs::read_link(path).unwrap_or_default(),
        });
    }
    if !kind.is_file() {
        let kind = if kind.is_dir() {
            "directory"
        } else if kind.is_fifo() {
            "FIFO"
        } else if kind.is_socket() {
            "socket"
        } else if kind.is_char_device() {
            "character device"
        } else if kind.is_block_device() {
            "block device"
        } else {
            "special file"
        };
        return Err(ConnectionError::NotRegular {
            path: path.to_path_buf(),
            kind,
        });
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        let uid = meta.uid();
        let owner = nix::unistd::User::from_uid(uid.into())
            .ok()
            .flatten()
            .map_or_else(|| format!("uid {uid}"), |user| user.name);
        return Err(ConnectionError::OtherOwner {
            path: path.to_path_buf(),
            owner,
            uid,
            me,
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if reading && mode & 0o077 != 0 {
        return Err(ConnectionError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Replaces the file `path` with `contents` and a newline, atomically and
/// durably, readable by its owner only: a temp file named `prefix`+random
/// is created exclusively (`O_CREAT|O_EXCL`, which also refuses a link),
/// mode 0600 from its creation, beside the target, synced, and renamed over
/// it (a rename replaces a link rather than writing through it), then the
/// directory is synced. On failure, what was being done and why.
pub(crate) fn replace_private(
    path: &Path,
    contents: &[u8],
    prefix: &str,
) -> Result<(), (&'static str, std::io::Error)> {
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => dir,
        None => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(prefix)
        .suffix(".tmp")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(|e| ("create a temp file for", e))?;
    tmp.write_all(contents)
        .and_then(|()| tmp.write_all(b"\n"))
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| ("write", e))?;
    tmp.persist(path).map_err(|e| ("replace", e.error))?;
    // The rename is durable once the directory is.
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Creates `dir` and any missing parents with mode 0700, since the
/// directory the hub makes holds its key and its store. A directory that
/// exists is left as it is: it may be a shared one on purpose.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
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
        let key = ConnectionInfo::new_key().unwrap();
        ConnectionInfo {
            engines: "tcp://127.0.0.1:5001".into(),
            clients: "tcp://127.0.0.1:5002".into(),
            notifications: "tcp://127.0.0.1:5003".into(),
            key: key.clone(),
            store: ":memory:".into(),
            curve: CurveKeys::derive(&key).unwrap(),
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

    /// Names a writer might use for its temp file: today's
    /// `hub.tmp-<pid>` and the usual suspects.
    fn likely_temp_names(dir: &Path) -> Vec<PathBuf> {
        [
            format!("hub.tmp-{}", std::process::id()),
            "hub.json.tmp".into(),
            ".hub.json.tmp".into(),
            "hub.json~".into(),
            "hub.tmp".into(),
        ]
        .into_iter()
        .map(|name| dir.join(name))
        .collect()
    }

    #[test]
    fn a_temp_name_another_user_created_never_sees_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.json");
        // The attacker creates each name world-writable and keeps it open.
        let mut planted = Vec::new();
        for name in likely_temp_names(dir.path()) {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&name)
                .unwrap();
            fs::set_permissions(&name, fs::Permissions::from_mode(0o666)).unwrap();
            planted.push((name, file));
        }
        let info = info();
        info.write(&path).unwrap();
        for (name, mut file) in planted {
            let mut seen = String::new();
            file.read_to_string(&mut seen).unwrap();
            assert!(
                !seen.contains(&info.key),
                "the key went into {}, which another user holds open",
                name.display()
            );
        }
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(ConnectionInfo::read(&path).unwrap(), info);
    }

    #[test]
    fn a_link_at_a_temp_name_is_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("root-only");
        fs::write(&victim, "secret\n").unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
        for name in likely_temp_names(dir.path()) {
            std::os::unix::fs::symlink(&victim, name).unwrap();
        }
        let path = dir.path().join("hub.json");
        let info = info();
        info.write(&path).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "secret\n");
        assert_eq!(ConnectionInfo::read(&path).unwrap(), info);
    }

    #[test]
    fn a_link_at_the_target_is_refused_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere.json");
        let theirs = info();
        theirs.write(&elsewhere).unwrap();
        let path = dir.path().join("hub.json");
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();

        let err = info().write(&path).unwrap_err();
        assert!(matches!(err, ConnectionError::Symlink { .. }), "{err}");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(ConnectionInfo::read(&elsewhere).unwrap(), theirs);

        let err = ConnectionInfo::read(&path).unwrap_err();
        assert!(matches!(err, ConnectionError::Symlink { .. }), "{err}");
        assert!(err.to_string().contains("elsewhere.json"), "{err}");
    }

    #[test]
    fn a_fifo_is_refused_at_once_instead_of_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.json");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reading = path.clone();
        std::thread::spawn(move || {
            let _ = tx.send(ConnectionInfo::read(&reading));
        });
        let bound = std::time::Duration::from_secs(5);
        let Ok(read) = rx.recv_timeout(bound) else {
            // Release the reader stuck in open(2) before failing.
            let _ = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&path);
            panic!("reading a FIFO as the connection file did not return within {bound:?}");
        };
        let err = read.unwrap_err();
        assert!(
            matches!(err, ConnectionError::NotRegular { kind: "FIFO", .. }),
            "{err}"
        );
        assert!(err.to_string().contains("hub.json"), "{err}");

        let err = info().write(&path).unwrap_err();
        assert!(matches!(err, ConnectionError::NotRegular { .. }), "{err}");
        assert!(fs::symlink_metadata(&path).unwrap().file_type().is_fifo());
    }

    #[test]
    fn a_file_another_user_owns_is_refused_naming_the_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.json");
        info().write(&path).unwrap();
        const NOBODY_UID: u32 = 65534;
        if let Err(e) = std::os::unix::fs::chown(&path, Some(NOBODY_UID), Some(NOBODY_UID)) {
            println!("SKIP: cannot give a file to uid {NOBODY_UID} (not root?): {e}");
            return;
        }
        let err = ConnectionInfo::read(&path).unwrap_err();
        assert!(
            matches!(
                err,
                ConnectionError::OtherOwner {
                    uid: NOBODY_UID,
                    ..
                }
            ),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("hub.json") && text.contains("65534"),
            "{text}"
        );
        if let Ok(Some(user)) = nix::unistd::User::from_uid(NOBODY_UID.into()) {
            assert!(text.contains(&user.name), "{text}");
        }
        let err = info().write(&path).unwrap_err();
        assert!(matches!(err, ConnectionError::OtherOwner { .. }), "{err}");
        assert_eq!(fs::metadata(&path).unwrap().uid(), NOBODY_UID);
    }

    #[test]
    fn creates_missing_directories_0700() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/hub.json");
        info().write(&path).unwrap();
        for sub in ["a", "a/b"] {
            let mode = fs::metadata(dir.path().join(sub))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o700, "{sub}");
        }
    }

    #[test]
    fn refuses_a_file_larger_than_any_connection_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.json");
        fs::write(&path, vec![b' '; 2 * MAX_CONNECTION_FILE_BYTES as usize]).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = ConnectionInfo::read(&path).unwrap_err();
        assert!(matches!(err, ConnectionError::TooLarge { .. }), "{err}");
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

    /// A file a hub from before CURVE wrote: an error that says what to
    /// do, not a panic and not a hub that never answers.
    #[test]
    fn a_file_without_curve_keys_says_to_restart_the_hub() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.json");
        let mut old = serde_json::to_value(info()).unwrap();
        old.as_object_mut().unwrap().remove("curve");
        fs::write(&path, old.to_string()).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = ConnectionInfo::read(&path).unwrap_err();
        assert!(matches!(err, ConnectionError::NoCurveKeys { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("hub.json") && text.contains("--fresh"),
            "{text}"
        );
    }

    #[test]
    fn curve_keys_of_another_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.json");
        let mut mixed = info();
        mixed.curve = info().curve;
        mixed.write(&path).unwrap();
        let err = ConnectionInfo::read(&path).unwrap_err();
        assert!(matches!(err, ConnectionError::BadCurveKeys { .. }), "{err}");
    }
}
