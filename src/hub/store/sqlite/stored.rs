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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};

use crate::message::{decode_value, encode_value, ClusterResult, Metadata, ResultStatus};

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
    /// Encoding the restored result failed.
    #[error("encoding a stored result again failed: {0}")]
    Encode(String),
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

/// What a result shares with others from the same worker slot of the same
/// job: encoded as the fields lie in a [`ClusterResult`], so one table row
/// holds it once.
type Origin = (Metadata, String, u32, String);

/// Nanoseconds from 1970 to `time` (serde encodes no earlier time).
fn nanos_of(time: SystemTime) -> Option<i128> {
    time.duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i128::try_from(d.as_nanos()).ok())
}

/// A result in the [`RESULT_COMPACT`] form, and its encoded origin; `None`
/// when it cannot be stored so (it does not decode as a [`ClusterResult`],
/// does not encode back to the same bytes, or a time does not fit), and
/// then the caller stores it [`raw`].
pub(super) fn compact_result(result: &[u8], completed: i64) -> Option<(Vec<u8>, Vec<u8>)> {
    let decoded: ClusterResult = decode_value(result, "result").ok()?;
    if encode_value(&decoded, "result").ok()? != result {
        return None;
    }
    let ClusterResult {
        id,
        status,
        payload,
        request_metadata,
        metadata,
        exception,
    } = decoded;
    let started = i64::try_from(nanos_of(metadata.started)? - i128::from(completed)).ok()?;
    let elapsed = u64::try_from(metadata.elapsed.as_nanos()).ok()?;
    let origin = encode_value(
        &(
            request_metadata,
            metadata.host,
            metadata.pid,
            metadata.worker,
        ),
        "result origin",
    )
    .ok()?;
    let mut out = Vec::with_capacity(payload.len() + 24);
    out.push(RESULT_COMPACT);
    let mut flags = 0;
    if status == ResultStatus::Fail {
        flags |= FLAG_FAILED;
    }
    if exception.is_some() {
        flags |= FLAG_EXCEPTION;
    }
    out.push(flags);
    put_varint(&mut out, id);
    put_varint(&mut out, payload.len() as u64);
    out.extend_from_slice(&payload);
    put_signed(&mut out, started);
    put_varint(&mut out, elapsed);
    if let Some(exception) = exception {
        put_varint(&mut out, exception.len() as u64);
        out.extend_from_slice(exception.as_bytes());
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
            let (request_metadata, host, pid, worker): Origin =
                decode_value(origin, "result origin").map_err(|_| StoredFormError::BadOrigin)?;
            let completed = completed.ok_or(StoredFormError::BadTime)?;
            let mut reader = Reader { bytes: rest };
            let flags = reader.take(1)?[0];
            let id = reader.varint()?;
            let payload_len = reader.length()?;
            let payload = reader.take(payload_len)?.to_vec();
            let started = i128::from(reader.signed()?) + i128::from(completed);
            let started = u128::try_from(started).map_err(|_| StoredFormError::BadTime)?;
            let secs =
                u64::try_from(started / 1_000_000_000).map_err(|_| StoredFormError::BadTime)?;
            let started = UNIX_EPOCH
                .checked_add(Duration::new(secs, (started % 1_000_000_000) as u32))
                .ok_or(StoredFormError::BadTime)?;
            let elapsed = Duration::from_nanos(reader.varint()?);
            let exception = if flags & FLAG_EXCEPTION != 0 {
                let len = reader.length()?;
                let text = reader.take(len)?;
                Some(String::from_utf8(text.to_vec()).map_err(|_| StoredFormError::Truncated)?)
            } else {
                None
            };
            if !reader.bytes.is_empty() || flags & !(FLAG_FAILED | FLAG_EXCEPTION) != 0 {
                return Err(StoredFormError::Truncated);
            }
            let result = ClusterResult {
                id,
                status: if flags & FLAG_FAILED != 0 {
                    ResultStatus::Fail
                } else {
                    ResultStatus::Ok
                },
                payload,
                request_metadata,
                metadata: crate::message::ResultMetadata {
                    host,
                    pid,
                    worker,
                    started,
                    elapsed,
                },
                exception,
            };
            encode_value(&result, "result").map_err(|e| StoredFormError::Encode(e.to_string()))
        }
        other => Err(StoredFormError::UnknownForm(other)),
    }
}

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
    references: HashMap<i64, Arc<[u8]>>,
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
        if let Some(reference) = self.references.get(&job) {
            return Ok(store_request(request, reference));
        }
        let found: Option<Option<Vec<u8>>> = conn
            .prepare_cached("SELECT request_ref FROM jobs WHERE id = ?1")?
            .query_row([job], |r| r.get(0))
            .optional()?;
        let reference: Arc<[u8]> = match found {
            Some(Some(reference)) => reference.into(),
            Some(None) => {
                conn.prepare_cached("UPDATE jobs SET request_ref = ?2 WHERE id = ?1")?
                    .execute(params![job, request])?;
                request.into()
            }
            // An unknown job: its insert fails on the job's foreign key.
            None => return Ok(raw(request)),
        };
        let stored = store_request(request, &reference);
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
        if let Some(&id) = self.origins.get(&origin) {
            return Ok((stored, Some(id)));
        }
        let found = conn
            .prepare_cached("SELECT id FROM origins WHERE origin = ?1")?
            .query_row([&origin], |r| r.get(0))
            .optional()?;
        let id = match found {
            Some(id) => id,
            None => {
                conn.prepare_cached("INSERT INTO origins (origin) VALUES (?1)")?
                    .execute([&origin])?;
                conn.last_insert_rowid()
            }
        };
        if self.origins.len() >= ORIGINS_KEPT {
            self.origins.clear();
        }
        self.origins.insert(origin, id);
        Ok((stored, Some(id)))
    }
}

#[cfg(test)]
#[path = "stored_tests.rs"]
mod tests;
