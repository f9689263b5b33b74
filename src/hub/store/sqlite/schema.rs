//! The SQLite store's schema: its tables, its version, and the migration of
//! an older file; and how every connection to the file is opened.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use super::files;
use super::sql::{sql_int, sqlite_error};
use crate::hub::store::StoreError;

/// `PRAGMA user_version` of the schema below; a file with a larger one was
/// written by a newer zcluster and is refused. Version 2 added the `meta`
/// table and the application id; version 3 the stored forms of requests
/// and results ([`V3_SCHEMA`]).
pub(super) const SCHEMA_VERSION: i64 = 3;

/// Times are INTEGER nanoseconds since 1970 (negative before); ids and
/// counts are INTEGER; payloads are BLOBs. `counters.value` is the first id
/// not yet reserved.
///
/// The state's CHECK is a chain of `=`, not `state IN (...)`: SQLite codes
/// an `IN` list of more than two constants as a temporary b-tree built on
/// every statement run, and every INSERT of a task and every UPDATE of its
/// state runs the CHECK: that b-tree was about a quarter of the writer
/// thread's instructions per task. (Files created before keep the `IN`
/// form: the same rule, only slower.)
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
INSERT OR IGNORE INTO counters (name, value) VALUES ('engine', 1), ('job', 1), ('task', 1);
CREATE TABLE IF NOT EXISTS jobs (
    id        INTEGER PRIMARY KEY,
    submitted INTEGER NOT NULL,
    client    TEXT NOT NULL,
    spec      BLOB NOT NULL,
    total     INTEGER
) STRICT;
CREATE TABLE IF NOT EXISTS tasks (
    id        INTEGER PRIMARY KEY,
    job       INTEGER NOT NULL REFERENCES jobs (id),
    seq       INTEGER NOT NULL,
    request   BLOB NOT NULL,
    submitted INTEGER NOT NULL,
    state     TEXT NOT NULL CHECK (state = 'pending' OR state = 'running'
                                   OR state = 'ok' OR state = 'failed'),
    engine    INTEGER,
    started   INTEGER,
    completed INTEGER,
    result    BLOB,
    error     TEXT,
    attempts  INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX IF NOT EXISTS tasks_job_seq ON tasks (job, seq);
CREATE INDEX IF NOT EXISTS tasks_state ON tasks (state);
";

/// Version 2: `meta` holds the store's random id (`store`) and its count of
/// committed batches (`commits`), which its side file repeats, so a store
/// that lost commits is caught (see `hub::store_file`).
pub(super) const META_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
INSERT OR IGNORE INTO meta (name, value) VALUES ('commits', 0);
";

/// Version 3: a task's `started` and `completed` as nanoseconds after its
/// `submitted` (a few bytes each instead of eight; reads add them back);
/// requests and results in their stored forms (see `stored.rs`): each job's reference request in `jobs.request_ref`, each
/// result's origin (request metadata, host, pid, worker) once in `origins`
/// and named by `tasks.origin`; every blob already in the file marked as
/// stored raw (a form byte 0 in front). And the index on the state only
/// over unfinished tasks, keyed as a restarted hub reads them: finished
/// tasks (nearly all of a big store) no longer carry an index entry, and a
/// task inserted already finished (the writer's fold) never touches it.
///
/// The index's condition is the one `unfinished()` and the live counts'
/// recount query with, word for word (`sql::completed_states(false)`):
/// SQLite uses a partial index only for a query whose WHERE holds its
/// condition as a term. (`hex(NULL)` is `''`, hence the CASE.) Two constants in an `IN` are coded as two
/// comparisons, not a temporary b-tree (see [`SCHEMA`]).
pub(super) const V3_SCHEMA: &str = "
ALTER TABLE jobs ADD COLUMN request_ref BLOB;
ALTER TABLE tasks ADD COLUMN origin INTEGER;
CREATE TABLE IF NOT EXISTS origins (
    id     INTEGER PRIMARY KEY,
    origin BLOB NOT NULL UNIQUE
) STRICT;
DROP INDEX IF EXISTS tasks_state;
CREATE INDEX IF NOT EXISTS tasks_unfinished ON tasks (job, seq)
    WHERE state IN ('pending', 'running');
UPDATE tasks SET started = started - submitted, completed = completed - submitted,
                 request = unhex('00' || hex(request)),
                 result = CASE WHEN result IS NULL THEN NULL ELSE unhex('00' || hex(result)) END;
";

/// How long a connection waits for another one's write lock.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Cached prepared statements per connection.
pub(super) const STATEMENT_CACHE: usize = 64;

pub(super) fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let at = || path.display().to_string();
    let conn = Connection::open(path).map_err(sqlite_error(format!("opening {}", at())))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(sqlite_error(format!(
            "setting the busy timeout on {}",
            at()
        )))?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(sqlite_error(format!(
            "setting synchronous=NORMAL on {}",
            at()
        )))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// Refuses a file written by a newer zcluster; returns the file's version.
pub(super) fn check_version(conn: &Connection, path: &Path) -> Result<i64, StoreError> {
    let found: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(sqlite_error(format!(
            "reading the schema version of {}",
            path.display()
        )))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(found)
}

/// Creates the schema in a fresh file, or checks an existing file's version
/// (again, inside the transaction, in case another process just created it).
pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let operation = format!("creating the schema in {}", path.display());
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(sqlite_error(operation.clone()))?;
    let found = check_version(&tx, path)?;
    if found < 1 {
        tx.execute_batch(SCHEMA)
            .map_err(sqlite_error(operation.clone()))?;
    }
    if found < 2 {
        tx.execute_batch(META_SCHEMA)
            .map_err(sqlite_error(operation.clone()))?;
        // Positive and within an SQLite integer.
        let id = (crate::auth::random_u64() >> 1).max(1);
        tx.execute(
            "INSERT OR IGNORE INTO meta (name, value) VALUES ('store', ?1)",
            [sql_int("store id", id)?],
        )
        .map_err(sqlite_error(operation.clone()))?;
        tx.pragma_update(None, "application_id", files::APPLICATION_ID)
            .map_err(sqlite_error(operation.clone()))?;
    }
    if found < 3 {
        tx.execute_batch(V3_SCHEMA)
            .map_err(sqlite_error(operation.clone()))?;
    }
    if found < SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(sqlite_error(operation.clone()))?;
    }
    tx.commit().map_err(sqlite_error(operation))
}

/// A connection given the current schema, as `migrate` leaves a new file,
/// for tests of the SQL alone.
#[cfg(test)]
pub(super) fn create_for_tests(conn: &Connection) {
    for part in [SCHEMA, META_SCHEMA, V3_SCHEMA] {
        conn.execute_batch(part).expect("the schema applies");
    }
}
