//! The SQLite task store's files on disk: made private, recognised before
//! use, and checked for a rollback.
//!
//! - **Private.** The store keeps every request and result and the routing
//!   identity of every client, so it is nobody else's to read: a new store
//!   file is created 0600 (whatever the umask) before SQLite opens it, in
//!   directories created 0700, and an existing store's files are narrowed
//!   to 0600. SQLite gives its `-wal` and `-shm` files the mode of the
//!   database file, so they are 0600 too.
//! - **Recognised.** A store path that exists must hold a zcluster store.
//!   SQLite takes an empty file as an empty database, so without this a
//!   truncated store would silently become a new one with every job gone;
//!   and another application's database would get zcluster's tables added.
//!   Anything else is refused, naming the file and what was found.
//! - **Not rolled back.** In WAL mode, what was committed since the last
//!   checkpoint lives only in the `-wal` file: delete it while the hub is
//!   down (or put back an older copy of the store) and finished results
//!   silently become pending again, to be run a second time. The store
//!   counts its commits in its `meta` table, and the writer saves the same
//!   count in a small side file, `STORE-commits`, after each commit and
//!   before the hub lets out anything that commit covers. A store that
//!   holds fewer commits than its side file says is refused at start
//!   ([`StoreError::RolledBack`]) unless the rollback is accepted.
//!
//! The side file is one line of fixed length overwritten in place by one
//! `pwrite`, which a crash of the hub cannot tear (the kernel completes a
//! write call or does not start it).

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension};

use crate::hub::store::StoreError;

/// What SQLite writes at the start of every database file.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// `PRAGMA application_id` of a zcluster store ("zclu"): set on every store
/// since schema version 2; a database with another one is not a store.
pub(crate) const APPLICATION_ID: i64 = 0x7a63_6c75;

/// Mode of the store's files: its owner's only.
const FILE_MODE: u32 = 0o600;

/// Mode of the directories made for the store.
const DIR_MODE: u32 = 0o700;

/// The side file's name: the store's path with this appended (beside
/// SQLite's own `-wal` and `-shm`).
const RECORD_SUFFIX: &str = "-commits";

/// What the side file says, in a fixed-length line: the store's id and its
/// commit count.
fn record_line(store: u64, commits: u64) -> String {
    format!("zcluster task store {store:016x} {commits:020}\n")
}

/// The length of every [`record_line`].
const RECORD_BYTES: usize = 58;

/// A path with `suffix` appended to its file name (`hub.sqlite-wal`).
pub(crate) fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// The side file of the store at `path`.
pub(crate) fn record_path(path: &Path) -> PathBuf {
    beside(path, RECORD_SUFFIX)
}

/// What [`prepare`] found at the store's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    /// Nothing: an empty file was created for a new store, 0600.
    New,
    /// A SQLite database file, not yet known to be a zcluster store.
    Existing,
}

fn io_error(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::File {
        operation,
        path,
        source,
    }
}

fn not_a_store(path: &Path, found: impl Into<String>) -> StoreError {
    StoreError::NotAStore {
        path: path.to_path_buf(),
        found: found.into(),
    }
}

/// Gets the store's path ready for SQLite: creates missing directories
/// 0700 and a missing store file 0600; refuses what is not a SQLite file
/// (empty, a directory, other bytes); narrows an existing store's files to
/// 0600.
pub(crate) fn prepare(path: &Path) -> Result<Found, StoreError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        make_dirs(parent)?;
    }
    match fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path).map(|()| Found::New),
        Err(e) => Err(io_error("inspect", path)(e)),
        Ok(meta) if meta.is_dir() => Err(not_a_store(path, "a directory")),
        Ok(meta) if !meta.is_file() => Err(not_a_store(path, "not a regular file")),
        Ok(meta) if meta.len() == 0 => Err(not_a_store(
            path,
            "an empty file (0 bytes), which SQLite would take as a new, empty store",
        )),
        Ok(meta) => {
            let mut head = Vec::with_capacity(SQLITE_MAGIC.len());
            File::open(path)
                .and_then(|f| f.take(SQLITE_MAGIC.len() as u64).read_to_end(&mut head))
                .map_err(io_error("read", path))?;
            if head != SQLITE_MAGIC {
                let shown: String = String::from_utf8_lossy(&head).escape_debug().collect();
                return Err(not_a_store(
                    path,
                    format!(
                        "{} bytes that are not a SQLite database (they start with \"{shown}\")",
                        meta.len()
                    ),
                ));
            }
            for file in [
                path.to_path_buf(),
                beside(path, "-wal"),
                beside(path, "-shm"),
            ] {
                make_private(&file);
            }
            Ok(Found::Existing)
        }
    }
}

/// Creates `dir` and its missing parents, each 0700 whatever the umask.
/// Directories that exist are left as they are (the store may live in a
/// directory shared on purpose; its files are private anyway).
fn make_dirs(dir: &Path) -> Result<(), StoreError> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let failed = |source| StoreError::CreateDir {
        path: dir.to_path_buf(),
        source,
    };
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(failed)?;
    for made in missing {
        fs::set_permissions(made, fs::Permissions::from_mode(DIR_MODE)).map_err(failed)?;
    }
    Ok(())
}

/// Creates an empty store file 0600, refusing to follow a link planted
/// at its path.
fn create(path: &Path) -> Result<(), StoreError> {
    let wal = beside(path, "-wal");
    if wal.exists() {
        // SQLite would try to replay it into the new file.
        return Err(not_a_store(
            path,
            format!(
                "missing, while {} is there (move it away to start a new store)",
                wal.display()
            ),
        ));
    }
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(io_error("create", path))?;
    file.set_permissions(fs::Permissions::from_mode(FILE_MODE))
        .map_err(io_error("set the mode of", path))
}

/// Narrows an existing file of the store to 0600 (a store made by an older
/// zcluster was 0644). A file this user cannot change is left, with a
/// warning.
fn make_private(path: &Path) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    if !meta.is_file() || mode & 0o077 == 0 {
        return;
    }
    match fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o700)) {
        Ok(()) => {
            tracing::info!(path = %path.display(), from = format!("{mode:o}"), "task store: file made private (0600)")
        }
        Err(error) => {
            tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), %error, "task store: others can read this file, and it cannot be made private")
        }
    }
}

/// What an existing SQLite file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Contents {
    /// zcluster's tables.
    Store,
    /// No table at all: a database never written, or a store rolled back to
    /// before its schema (its `-wal` deleted before any checkpoint).
    Blank,
}

/// Tells a zcluster store from any other SQLite database.
pub(crate) fn recognise(conn: &Connection, path: &Path) -> Result<Contents, StoreError> {
    let read = |what: &'static str| {
        let path = path.to_path_buf();
        move |source: rusqlite::Error| match source.sqlite_error_code() {
            Some(rusqlite::ErrorCode::NotADatabase) => StoreError::NotAStore {
                path,
                found: format!("a file SQLite cannot read as a database ({source})"),
            },
            _ => StoreError::Sqlite {
                operation: format!("reading the {what} of {}", path.display()),
                source,
            },
        }
    };
    let application: i64 = conn
        .pragma_query_value(None, "application_id", |row| row.get(0))
        .map_err(read("application id"))?;
    if application != 0 && application != APPLICATION_ID {
        return Err(not_a_store(
            path,
            format!("a SQLite database of another application (application id {application:#x})"),
        ));
    }
    let tables: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'
             ORDER BY name",
        )
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(read("tables"))?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(read("schema version"))?;
    let ours = ["counters", "jobs", "tasks"]
        .iter()
        .all(|t| tables.iter().any(|have| have == t));
    if tables.is_empty() && version == 0 {
        Ok(Contents::Blank)
    } else if ours && version >= 1 {
        Ok(Contents::Store)
    } else {
        Err(not_a_store(
            path,
            format!(
                "a SQLite database without zcluster's tables (it has: {})",
                if tables.is_empty() {
                    "no tables".to_string()
                } else {
                    tables.join(", ")
                }
            ),
        ))
    }
}

/// The store's own count of its commits and its id, from its `meta` table.
pub(crate) fn stored_position(conn: &Connection, path: &Path) -> Result<(u64, u64), StoreError> {
    let value = |name: &str| -> Result<u64, StoreError> {
        conn.query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
            r.get::<_, i64>(0)
        })
        .optional()
        .map_err(|source| StoreError::Sqlite {
            operation: format!("reading the {name} of {}", path.display()),
            source,
        })
        .map(|v| v.map_or(0, i64::unsigned_abs))
    };
    Ok((value("store")?, value("commits")?))
}

/// What the side file said when the store was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recorded {
    /// The id of the store it was written for.
    pub store: u64,
    /// Its commit count then.
    pub commits: u64,
}

/// Reads the side file of the store at `path`: `None` if there is none.
pub(crate) fn read_record(path: &Path) -> Result<Option<Recorded>, StoreError> {
    let record = record_path(path);
    let text = match fs::read(&record) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("read", &record)(e)),
        Ok(bytes) => bytes,
    };
    let bad = || StoreError::BadRecord {
        path: record.clone(),
        found: String::from_utf8_lossy(&text[..text.len().min(80)])
            .escape_debug()
            .collect(),
    };
    let line = std::str::from_utf8(&text).map_err(|_| bad())?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    match fields.as_slice() {
        ["zcluster", "task", "store", store, commits] => Ok(Some(Recorded {
            store: u64::from_str_radix(store, 16).map_err(|_| bad())?,
            commits: commits.parse().map_err(|_| bad())?,
        })),
        _ => Err(bad()),
    }
}

/// The side file, held open by the store's writer, which saves the commit
/// count in it after each commit.
#[derive(Debug)]
pub(crate) struct CommitRecord {
    file: File,
    path: PathBuf,
    /// The line as saved last: a save rewrites only its count's digits
    /// (formatting the whole line was 5% of the writer's instructions per
    /// commit at an idle hub).
    line: [u8; RECORD_BYTES],
    commits: u64,
}

/// Where the count's digits start in a [`record_line`]: its last 20
/// characters before the newline.
const COUNT_AT: usize = RECORD_BYTES - 21;

/// Writes `commits` as the 20 zero-padded decimal digits of a record
/// line, as [`record_line`] formats them.
fn put_count(line: &mut [u8; RECORD_BYTES], mut commits: u64) {
    for digit in line[COUNT_AT..RECORD_BYTES - 1].iter_mut().rev() {
        *digit = b'0' + (commits % 10) as u8;
        commits /= 10;
    }
}

impl CommitRecord {
    /// Creates or takes over the side file of the store at `path` and
    /// saves `commits` in it.
    pub(crate) fn open(path: &Path, store: u64, commits: u64) -> Result<Self, StoreError> {
        let record = record_path(path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&record)
            .map_err(io_error("open", &record))?;
        file.set_permissions(fs::Permissions::from_mode(FILE_MODE))
            .map_err(io_error("set the mode of", &record))?;
        file.set_len(RECORD_BYTES as u64)
            .map_err(io_error("write", &record))?;
        let mut line = [0u8; RECORD_BYTES];
        line.copy_from_slice(record_line(store, commits).as_bytes());
        let mut record = CommitRecord {
            file,
            path: record,
            line,
            commits,
        };
        record.save(commits)?;
        Ok(record)
    }

    /// The count the next commit brings the store to.
    pub(crate) fn next(&self) -> u64 {
        self.commits + 1
    }

    /// Saves `commits`, the store's count after a commit.
    pub(crate) fn save(&mut self, commits: u64) -> Result<(), StoreError> {
        put_count(&mut self.line, commits);
        self.file
            .write_all_at(&self.line, 0)
            .map_err(io_error("write", &self.path))?;
        self.commits = commits;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_line_has_one_length_and_reads_back() {
        assert_eq!(record_line(0, 0).len(), RECORD_BYTES);
        assert_eq!(record_line(u64::MAX, u64::MAX).len(), RECORD_BYTES);
        let mut line = [0u8; RECORD_BYTES];
        line.copy_from_slice(record_line(0xfeed, 7).as_bytes());
        for commits in [0, 1, 42, 10_000_000_000_000_000_000, u64::MAX] {
            put_count(&mut line, commits);
            assert_eq!(&line[..], record_line(0xfeed, commits).as_bytes());
        }
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("s.sqlite");
        let mut record = CommitRecord::open(&store, 0xabc, 41).unwrap();
        record.save(record.next()).unwrap();
        assert_eq!(
            read_record(&store).unwrap(),
            Some(Recorded {
                store: 0xabc,
                commits: 42
            })
        );
        let mode = fs::metadata(beside(&store, RECORD_SUFFIX))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, FILE_MODE);
        fs::write(beside(&store, RECORD_SUFFIX), "nonsense").unwrap();
        assert!(matches!(
            read_record(&store),
            Err(StoreError::BadRecord { .. })
        ));
    }
}
