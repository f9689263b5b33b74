//! The stored forms of a task's request and result (schema version 3): the
//! wire bytes without what the store holds elsewhere, given back byte for
//! byte on every read.
//!
//! Why: a command task's request repeats its job's command and directory,
//! and its result repeats the request's metadata, the worker's host, pid
//! and slot and two times: of the ~200 bytes a no-op task cost the file,
//! most were these repeats. Each stored blob starts with a form byte:
//!
//! - [`RAW`]: the wire bytes follow as they are (anything the other forms
//!   do not fit, and every blob of a file migrated from version 2).
//! - [`REQUEST_DIFF`]: the request as its job's reference request (the
//!   job's first, kept once in `jobs.request_ref`) with a middle replaced:
//!   the lengths of the common prefix and suffix (LEB128), then the bytes
//!   between them.
//! - [`RESULT_COMPACT`]: a [`ClusterResult`] without its origin (request
//!   metadata, host, pid, worker: kept once in the `origins` table, named
//!   by the row's `origin` column), with its worker's start time as an
//!   offset from the row's `completed` time and its elapsed time in
//!   nanoseconds, each a variable-length integer. A result is stored so
//!   only when encoding it again gives its exact bytes (checked as it is
//!   written), so a read gives back exactly what the engine sent.

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension};

use super::ids::IdMap;

#[cfg(doc)]
use crate::message::ClusterResult;

/// Form byte: the wire bytes follow unchanged.
pub(super) const RAW: u8 = 0;
/// Form byte: a request as a difference from its job's reference request.
pub(super) const REQUEST_DIFF: u8 = 1;
/// Form byte: a result without its origin and with its times as offsets.
pub(super) const RESULT_COMPACT: u8 = 2;

/// Bit of a compact result's flags: the status is a failure.
const FLAG_FAILED: u8 = 1;
/// Bit of a compact result's flags: an exception follows the elapsed time.
const FLAG_EXCEPTION: u8 = 2;

/// A stored blob that cannot be read back: a damaged file, or one written
/// by something other than this store.
#[derive(Debug, thiserror::Error)]
pub enum StoredFormError {
    /// The blob is empty (every stored form has a form byte).
    #[error("an empty stored blob")]
    Empty,
    /// The form byte is none this store writes.
    #[error("unknown stored form {0}")]
    UnknownForm(u8),
    /// The blob ends (or a length points) before its last field.
    #[error("a stored blob ends too soon")]
    Truncated,
    /// A stored request names its job's reference, which is missing, or
    /// lengths that do not fit inside it.
    #[error("a stored request does not fit its job's reference request")]
    BadReference,
    /// A stored result names an origin that is missing or does not decode.
    #[error("a stored result's origin is missing or damaged")]
    BadOrigin,
    /// A compact result's times or row do not make a result.
    #[error("a stored result's times are out of range")]
    BadTime,
}

/// `bytes` stored in the [`RAW`] form.
pub(super) fn raw(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 1);
    out.push(RAW);
    out.extend_from_slice(bytes);
    out
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_signed(out: &mut Vec<u8>, value: i64) {
    put_varint(out, ((value << 1) ^ (value >> 63)) as u64);
}

/// Reads what [`put_varint`] and [`put_signed`] wrote.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, StoredFormError> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.bytes.split_first().ok_or(StoredFormError::Truncated)?;
            self.bytes = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(StoredFormError::Truncated)
    }

    fn signed(&mut self) -> Result<i64, StoredFormError> {
        let zigzag = self.varint()?;
        Ok((zigzag >> 1) as i64 ^ -((zigzag & 1) as i64))
    }

    fn length(&mut self) -> Result<usize, StoredFormError> {
        usize::try_from(self.varint()?).map_err(|_| StoredFormError::Truncated)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], StoredFormError> {
        if n > self.bytes.len() {
            return Err(StoredFormError::Truncated);
        }
        let (taken, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(taken)
    }
}

/// `request` stored against its job's `reference`: the [`REQUEST_DIFF`]
/// form, or [`RAW`] when that would not be shorter.
pub(super) fn store_request(request: &[u8], reference: &[u8]) -> Vec<u8> {
    let prefix = request
        .iter()
        .zip(reference)
        .take_while(|(a, b)| a == b)
        .count();
    let suffix = request[prefix..]
        .iter()
        .rev()
        .zip(reference[prefix..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let middle = &request[prefix..request.len() - suffix];
    let mut out = Vec::with_capacity(middle.len() + 8);
    out.push(REQUEST_DIFF);
    put_varint(&mut out, prefix as u64);
    put_varint(&mut out, suffix as u64);
    out.extend_from_slice(middle);
    if out.len() > request.len() {
        return raw(request);
    }
    out
}

/// The request stored as `stored`, with its job's reference request.
pub(super) fn load_request(
    stored: &[u8],
    reference: Option<&[u8]>,
) -> Result<Vec<u8>, StoredFormError> {
    let (&form, rest) = stored.split_first().ok_or(StoredFormError::Empty)?;
    match form {
        RAW => Ok(rest.to_vec()),
        REQUEST_DIFF => {
            let reference = reference.ok_or(StoredFormError::BadReference)?;
            let mut reader = Reader { bytes: rest };
            let prefix = reader.length()?;
            let suffix = reader.length()?;
            let middle = reader.bytes;
            if prefix
                .checked_add(suffix)
                .is_none_or(|n| n > reference.len())
            {
                return Err(StoredFormError::BadReference);
            }
            let mut out = Vec::with_capacity(prefix + middle.len() + suffix);
            out.extend_from_slice(&reference[..prefix]);
            out.extend_from_slice(middle);
            out.extend_from_slice(&reference[reference.len() - suffix..]);
            Ok(out)
        }
        other => Err(StoredFormError::UnknownForm(other)),
    }
}

/// Nanoseconds in a second: how serde splits a time into its fields.
const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Reads one of bincode's variable-length integers (the wire's standard
/// configuration: below 251 one byte; else a marker and 2, 4 or 8 bytes,
/// little-endian); `None` unless written in the fewest bytes, which is how
/// bincode writes it, so writing it again gives the same bytes.
fn wire_varint(bytes: &mut &[u8]) -> Option<u64> {
    let (&first, rest) = bytes.split_first()?;
    let (value, width, least) = match first {
        0..=250 => (u64::from(first), 0, 0),
        251 => (
            u64::from(u16::from_le_bytes(rest.get(..2)?.try_into().ok()?)),
            2,
            251,
        ),
        252 => (
            u64::from(u32::from_le_bytes(rest.get(..4)?.try_into().ok()?)),
            4,
            1 << 16,
        ),
        253 => (
            u64::from_le_bytes(rest.get(..8)?.try_into().ok()?),
            8,
            1 << 32,
        ),
        _ => return None,
    };
    if value < least {
        return None;
    }
    *bytes = &rest[width..];
    Some(value)
}

/// Writes `value` as bincode's standard configuration does.
fn put_wire_varint(out: &mut Vec<u8>, value: u64) {
    if value < 251 {
        out.push(value as u8);
    } else if let Ok(value) = u16::try_from(value) {
        out.push(251);
        out.extend_from_slice(&value.to_le_bytes());
    } else if let Ok(value) = u32::try_from(value) {
        out.push(252);
        out.extend_from_slice(&value.to_le_bytes());
    } else {
        out.push(253);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

/// Takes a length-prefixed string or byte string off the wire bytes.
fn wire_bytes<'a>(bytes: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(wire_varint(bytes)?).ok()?;
    let taken = bytes.get(..len)?;
    *bytes = &bytes[len..];
    Some(taken)
}

/// A time or duration as serde writes it (seconds, then nanoseconds below
/// a second), as nanoseconds.
fn wire_nanos(bytes: &mut &[u8]) -> Option<u128> {
    let secs = wire_varint(bytes)?;
    let nanos = wire_varint(bytes)?;
    (nanos < NANOS_PER_SEC)
        .then(|| u128::from(secs) * u128::from(NANOS_PER_SEC) + u128::from(nanos))
}

/// Writes nanoseconds as [`wire_nanos`] reads them.
fn put_wire_nanos(out: &mut Vec<u8>, nanos: u128) -> Result<(), StoredFormError> {
    let secs =
        u64::try_from(nanos / u128::from(NANOS_PER_SEC)).map_err(|_| StoredFormError::BadTime)?;
    put_wire_varint(out, secs);
    put_wire_varint(out, (nanos % u128::from(NANOS_PER_SEC)) as u64);
    Ok(())
}

/// A result in the [`RESULT_COMPACT`] form, and its origin (the wire bytes
/// of its request metadata, host, pid and worker, as they lie in it);
/// `None` when it cannot be stored so, and then the caller stores it
/// [`raw`].
///
/// It reads the [`ClusterResult`] fields off the wire bytes as bincode's
/// standard configuration lays them out (id, status, payload, request
/// metadata, host, pid, worker, started, elapsed, exception), without
/// decoding what it keeps as bytes: the origin and the payload are kept
/// as they are, and every number it re-encodes must have been written in
/// bincode's own (shortest) form, so [`load_result`] gives back exactly
/// these bytes, whatever they are. (Decoding the result and encoding it
/// again to check cost the writer several times as much.)
pub(super) fn compact_result(result: &[u8], completed: i64) -> Option<(Vec<u8>, &[u8])> {
    let mut rest = result;
    let id = wire_varint(&mut rest)?;
    let status = wire_varint(&mut rest)?;
    if status > 1 {
        return None;
    }
    let payload = wire_bytes(&mut rest)?;
    let origin_at = rest;
    let entries = wire_varint(&mut rest)?;
    for _ in 0..entries {
        wire_bytes(&mut rest)?;
        wire_bytes(&mut rest)?;
    }
    wire_bytes(&mut rest)?;
    u32::try_from(wire_varint(&mut rest)?).ok()?;
    wire_bytes(&mut rest)?;
    let origin = &origin_at[..origin_at.len() - rest.len()];
    let started =
        i64::try_from(i128::try_from(wire_nanos(&mut rest)?).ok()? - i128::from(completed)).ok()?;
    let elapsed = u64::try_from(wire_nanos(&mut rest)?).ok()?;
    let (&has_exception, mut rest) = rest.split_first()?;
    let exception = match has_exception {
        0 => None,
        1 => Some(wire_bytes(&mut rest)?),
        _ => return None,
    };
    if !rest.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(payload.len() + exception.map_or(0, <[u8]>::len) + 24);
    out.push(RESULT_COMPACT);
    let mut flags = 0;
    if status == 1 {
        flags |= FLAG_FAILED;
    }
    if exception.is_some() {
        flags |= FLAG_EXCEPTION;
    }
    out.push(flags);
    put_varint(&mut out, id);
    put_varint(&mut out, payload.len() as u64);
    out.extend_from_slice(payload);
    put_signed(&mut out, started);
    put_varint(&mut out, elapsed);
    if let Some(exception) = exception {
        put_varint(&mut out, exception.len() as u64);
        out.extend_from_slice(exception);
    }
    Some((out, origin))
}

/// The result stored as `stored`, with the row's `completed` time and its
/// origin (for the [`RESULT_COMPACT`] form).
pub(super) fn load_result(
    stored: &[u8],
    completed: Option<i64>,
    origin: Option<&[u8]>,
) -> Result<Vec<u8>, StoredFormError> {
    let (&form, rest) = stored.split_first().ok_or(StoredFormError::Empty)?;
    match form {
        RAW => Ok(rest.to_vec()),
        RESULT_COMPACT => {
            let origin = origin.ok_or(StoredFormError::BadOrigin)?;
            let completed = completed.ok_or(StoredFormError::BadTime)?;
            let mut reader = Reader { bytes: rest };
            let flags = reader.take(1)?[0];
            if flags & !(FLAG_FAILED | FLAG_EXCEPTION) != 0 {
                return Err(StoredFormError::UnknownForm(flags));
            }
            let id = reader.varint()?;
            let payload_len = reader.length()?;
            let payload = reader.take(payload_len)?;
            let started = u128::try_from(i128::from(reader.signed()?) + i128::from(completed))
                .map_err(|_| StoredFormError::BadTime)?;
            let elapsed = reader.varint()?;
            let exception = if flags & FLAG_EXCEPTION != 0 {
                let len = reader.length()?;
                Some(reader.take(len)?)
            } else {
                None
            };
            if !reader.bytes.is_empty() {
                return Err(StoredFormError::Truncated);
            }
            let mut out = Vec::with_capacity(
                payload.len() + origin.len() + exception.map_or(0, <[u8]>::len) + 48,
            );
            put_wire_varint(&mut out, id);
            put_wire_varint(&mut out, u64::from(flags & FLAG_FAILED));
            put_wire_varint(&mut out, payload.len() as u64);
            out.extend_from_slice(payload);
            out.extend_from_slice(origin);
            put_wire_nanos(&mut out, started)?;
            put_wire_nanos(&mut out, u128::from(elapsed))?;
            match exception {
                None => out.push(0),
                Some(exception) => {
                    out.push(1);
                    put_wire_varint(&mut out, exception.len() as u64);
                    out.extend_from_slice(exception);
                }
            }
            Ok(out)
        }
        other => Err(StoredFormError::UnknownForm(other)),
    }
}

/// Largest request that becomes its job's reference: a job whose first
/// request is larger keeps its requests raw until a smaller one comes
/// (a large request gains little from sharing a command line, and the
/// writer keeps each reference in memory).
const REFERENCE_MAX_BYTES: usize = 4096;

/// Jobs whose reference the writer remembers; past this many it forgets
/// them all and reads each from the `jobs` table again when next needed.
const REFERENCES_KEPT: usize = 1024;

/// Origins the writer remembers; past this many it forgets them all and
/// looks them up in the table again (a hub with many engines over many
/// jobs would otherwise grow this without bound).
const ORIGINS_KEPT: usize = 4096;

/// The writer's side of the stored forms: each job's reference request
/// and the origins already in the table, so that storing a task costs no
/// query once its job and its worker slot were seen.
///
/// What it remembers was written in the writer's open transaction; should
/// that roll back, the store stops for good and writes nothing more, so
/// nothing it remembers is ever used without its row.
#[derive(Default)]
pub(super) struct Codec {
    /// `None`: the job has no reference (its first requests were large).
    references: IdMap<Option<Arc<[u8]>>>,
    origins: HashMap<Vec<u8>, i64>,
}

impl Codec {
    /// `request`, a new task of `job`, in its stored form; the job's first
    /// request becomes its reference.
    pub(super) fn request(
        &mut self,
        conn: &Connection,
        job: i64,
        request: &[u8],
    ) -> rusqlite::Result<Vec<u8>> {
        match self.references.get(&job) {
            Some(Some(reference)) => return Ok(store_request(request, reference)),
            Some(None) => return Ok(raw(request)),
            None => {}
        }
        let found: Option<Option<Vec<u8>>> = conn
            .prepare_cached("SELECT request_ref FROM jobs WHERE id = ?1")?
            .query_row([job], |r| r.get(0))
            .optional()?;
        let reference: Option<Arc<[u8]>> = match found {
            Some(Some(reference)) => Some(reference.into()),
            // Once set, a reference never changes: stored requests need it.
            Some(None) if request.len() <= REFERENCE_MAX_BYTES => {
                conn.prepare_cached("UPDATE jobs SET request_ref = ?2 WHERE id = ?1")?
                    .execute(params![job, request])?;
                Some(request.into())
            }
            // Large: this job's requests stay raw (while remembered).
            Some(None) => None,
            // An unknown job: its insert fails on the job's foreign key.
            None => return Ok(raw(request)),
        };
        let stored = match &reference {
            Some(reference) => store_request(request, reference),
            None => raw(request),
        };
        if self.references.len() >= REFERENCES_KEPT {
            self.references.clear();
        }
        self.references.insert(job, reference);
        Ok(stored)
    }

    /// `result`, received at `completed`, in its stored form, and the id
    /// of its origin in the `origins` table (added if new) when compact.
    pub(super) fn result(
        &mut self,
        conn: &Connection,
        result: &[u8],
        completed: i64,
    ) -> rusqlite::Result<(Vec<u8>, Option<i64>)> {
        let Some((stored, origin)) = compact_result(result, completed) else {
            return Ok((raw(result), None));
        };
        if let Some(&id) = self.origins.get(origin) {
            return Ok((stored, Some(id)));
        }
        let found = conn
            .prepare_cached("SELECT id FROM origins WHERE origin = ?1")?
            .query_row([origin], |r| r.get(0))
            .optional()?;
        let id = match found {
            Some(id) => id,
            None => {
                conn.prepare_cached("INSERT INTO origins (origin) VALUES (?1)")?
                    .execute([origin])?;
                conn.last_insert_rowid()
            }
        };
        if self.origins.len() >= ORIGINS_KEPT {
            self.origins.clear();
        }
        self.origins.insert(origin.to_vec(), id);
        Ok((stored, Some(id)))
    }

    /// Forgets the origins whose rows a purge deleted: remembered, a later
    /// result from the same worker would name a row that is gone (or, its
    /// id reused by SQLite, another origin's).
    pub(super) fn forget_origins(&mut self, deleted: &[i64]) {
        if deleted.is_empty() {
            return;
        }
        let deleted: std::collections::HashSet<i64> = deleted.iter().copied().collect();
        self.origins.retain(|_, id| !deleted.contains(id));
    }

    /// Forgets the reference requests of purged jobs (their rows went with
    /// them; job ids are never reused, so this only gives the memory back).
    pub(super) fn forget_jobs(&mut self, jobs: impl IntoIterator<Item = i64>) {
        for job in jobs {
            self.references.remove(&job);
        }
    }
}

#[cfg(test)]
#[path = "stored_tests.rs"]
mod tests;
