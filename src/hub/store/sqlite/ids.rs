//! Ids handed out by the SQLite store: from blocks reserved (and committed)
//! in the `counters` table before any id of the block is used, so no id is
//! reused after a crash.

use std::ops::Range;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use rusqlite::{params, Connection, OptionalExtension};

use super::sql::{column_u64, sql_int, sqlite_error};
use super::writer::{await_reply, call_async, Op};
use crate::hub::commit::CommitLog;
use crate::hub::store::types::FIRST_ID;
use crate::hub::store::StoreError;

/// Ids reserved per trip to the database (the next block is asked for when
/// half of one is used). Unused ones are skipped on reopen.
pub(super) const ENGINE_BLOCK: u64 = 16;
pub(super) const JOB_BLOCK: u64 = 64;
pub(super) const TASK_BLOCK: u64 = 1 << 16;
/// Largest value an SQLite INTEGER holds.
pub(super) const MAX_SQL_INT: u64 = i64::MAX as u64;

/// Hands out ids from blocks reserved (committed) in the `counters` table,
/// asking for the next block when half of the current one is used, so the
/// hot path rarely waits for the writer.
pub(super) struct Counter {
    name: &'static str,
    block: u64,
    next: u64,
    end: u64,
    ahead: Option<Receiver<Result<Range<u64>, StoreError>>>,
}

impl Counter {
    pub(super) fn new(name: &'static str, block: u64, floor: u64) -> Self {
        Counter {
            name,
            block,
            next: floor,
            end: floor,
            ahead: None,
        }
    }

    pub(super) fn take(
        &mut self,
        n: u64,
        ops: &Sender<Op>,
        log: &Arc<CommitLog>,
    ) -> Result<Range<u64>, StoreError> {
        if self.end - self.next < n {
            let ahead = match self.ahead.take() {
                Some(reply) => Some(await_reply(&reply)?),
                None => None,
            };
            let block = match ahead {
                Some(block) if block.end - block.start >= n => block,
                other => {
                    let floor = other.map_or(self.end, |b| b.end.max(self.end));
                    await_reply(&self.request(ops, log, floor, n.max(self.block))?)?
                }
            };
            self.next = block.start;
            self.end = block.end;
        }
        let start = self.next;
        self.next += n;
        if self.ahead.is_none() && self.end - self.next < self.block / 2 {
            self.ahead = Some(self.request(ops, log, self.end, self.block)?);
        }
        Ok(start..self.next)
    }

    /// Asks the writer for a block; one it cannot commit stops the store
    /// (a full disk shows here first when only ids are asked for).
    fn request(
        &self,
        ops: &Sender<Op>,
        log: &Arc<CommitLog>,
        floor: u64,
        n: u64,
    ) -> Result<Receiver<Result<Range<u64>, StoreError>>, StoreError> {
        let name = self.name;
        let stop = Arc::clone(log);
        call_async(ops, log, move |conn| {
            reserve_ids(conn, name, floor, n).map_err(|error| match error {
                StoreError::Sqlite { .. } => StoreError::CannotWrite(stop.fail(error)),
                other => other,
            })
        })
    }
}

/// The first id a counter may hand out: its stored value, and (for jobs and
/// tasks) past the largest id in the table, should the counter ever lag.
pub(super) fn counter_floor(
    conn: &Connection,
    name: &str,
    table: Option<&str>,
) -> Result<u64, StoreError> {
    let operation = || format!("reading the {name} id counter");
    let stored: Option<i64> = conn
        .query_row("SELECT value FROM counters WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()
        .map_err(sqlite_error(operation()))?;
    let mut floor = stored.map_or(FIRST_ID, |v| u64::try_from(v).unwrap_or(FIRST_ID));
    if let Some(table) = table {
        let max: Option<i64> = conn
            .query_row(&format!("SELECT MAX(id) FROM {table}"), [], |r| r.get(0))
            .map_err(sqlite_error(operation()))?;
        if let Some(max) = max.and_then(|m| u64::try_from(m).ok()) {
            floor = floor.max(max.saturating_add(1));
        }
    }
    Ok(floor.max(FIRST_ID))
}

/// Reserves `n` ids of counter `name` at or above `floor` and commits the
/// reservation before returning them, so they are never handed out again.
pub(super) fn reserve_ids(
    conn: &mut Connection,
    name: &'static str,
    floor: u64,
    n: u64,
) -> Result<Range<u64>, StoreError> {
    let operation = || format!("reserving {n} {name} ids");
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(sqlite_error(operation()))?;
    let stored: Option<u64> = tx
        .prepare_cached("SELECT value FROM counters WHERE name = ?1")
        .and_then(|mut s| s.query_row([name], |r| column_u64(r, 0)).optional())
        .map_err(sqlite_error(operation()))?;
    let start = stored.unwrap_or(FIRST_ID).max(floor);
    let end = start
        .checked_add(n)
        .filter(|end| *end <= MAX_SQL_INT)
        .ok_or(StoreError::IdsExhausted { counter: name })?;
    let end_sql = sql_int("id counter", end)?;
    tx.prepare_cached(
        "INSERT INTO counters (name, value) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    )
    .and_then(|mut s| s.execute(params![name, end_sql]))
    .map_err(sqlite_error(operation()))?;
    tx.commit().map_err(sqlite_error(operation()))?;
    Ok(start..end)
}

/// A map keyed by ids the store handed out (tasks, jobs), hashed by one
/// multiplication instead of SipHash: the writer looks a task up several
/// times per task (its fold), and SipHash was about 4% of its
/// instructions. The keys are the store's own, never a peer's choice, so
/// nobody can pick keys that collide.
pub(super) type IdMap<V> = std::collections::HashMap<i64, V, IdHash>;

/// A set of ids the store handed out (see [`IdMap`]).
pub(super) type IdSet = std::collections::HashSet<i64, IdHash>;

/// Builds [`IdHasher`]s.
pub(super) type IdHash = std::hash::BuildHasherDefault<IdHasher>;

/// Hashes an id by a multiplication (rustc's Fx hash): consecutive ids
/// spread over the table's buckets, and the top bits the table also uses
/// are mixed by the rotation.
#[derive(Default, Clone, Copy)]
pub(super) struct IdHasher(u64);

/// An odd constant with well-mixed bits (the golden ratio's, as Fx uses).
const ID_HASH_FACTOR: u64 = 0x9e37_79b9_7f4a_7c15;

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(ID_HASH_FACTOR);
    }

    fn write_i64(&mut self, n: i64) {
        self.write_u64(n as u64);
    }
}
