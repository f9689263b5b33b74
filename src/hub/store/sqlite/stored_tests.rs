//! The stored forms give back exactly the bytes stored.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;

use super::*;
use crate::message::{
    decode_value, encode_value, ClusterResult, Metadata, ResultMetadata, ResultStatus,
};

fn nanos_of(time: SystemTime) -> Option<i128> {
    i128::try_from(time.duration_since(UNIX_EPOCH).ok()?.as_nanos()).ok()
}

fn result_strategy() -> impl Strategy<Value = ClusterResult> {
    (
        any::<u64>(),
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..64),
        proptest::collection::btree_map(".{0,12}", ".{0,12}", 0..3),
        ".{0,16}",
        any::<u32>(),
        ".{0,12}",
        (0..u64::MAX / 2_000_000_000, 0..1_000_000_000u32),
        (any::<u64>(), 0..1_000_000_000u32),
        proptest::option::of(".{0,40}"),
    )
        .prop_map(
            |(
                id,
                ok,
                payload,
                request_metadata,
                host,
                pid,
                worker,
                started,
                elapsed,
                exception,
            )| {
                ClusterResult {
                    id,
                    status: if ok {
                        ResultStatus::Ok
                    } else {
                        ResultStatus::Fail
                    },
                    payload,
                    request_metadata: request_metadata.into_iter().collect::<Metadata>(),
                    metadata: ResultMetadata {
                        host,
                        pid,
                        worker,
                        started: UNIX_EPOCH + Duration::new(started.0, started.1),
                        elapsed: Duration::new(elapsed.0, elapsed.1),
                    },
                    exception,
                }
            },
        )
}

/// The nanoseconds since 1970 of a result's start, near which its
/// completion usually lies.
fn started_nanos(result: &ClusterResult) -> i128 {
    nanos_of(result.metadata.started).unwrap()
}

proptest! {
    /// Any request stored against any reference reads back as it was,
    /// and never costs more than a byte over its wire form.
    #[test]
    fn a_request_reads_back_as_stored(
        request in proptest::collection::vec(any::<u8>(), 0..80),
        reference in proptest::collection::vec(any::<u8>(), 0..80),
    ) {
        let stored = store_request(&request, &reference);
        prop_assert!(stored.len() <= request.len() + 1);
        prop_assert_eq!(load_request(&stored, Some(&reference)).unwrap(), request);
    }

    /// A request that shares its start and end with its reference stores
    /// only what lies between (and the two lengths).
    #[test]
    fn a_request_like_its_reference_stores_its_middle(
        prefix in proptest::collection::vec(any::<u8>(), 0..40),
        middle in proptest::collection::vec(any::<u8>(), 1..8),
        suffix in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let request = [&prefix[..], &middle[..], &suffix[..]].concat();
        let mut other = middle.clone();
        other[0] = other[0].wrapping_add(1);
        let reference = [&prefix[..], &other[..], &suffix[..]].concat();
        let stored = store_request(&request, &reference);
        prop_assert!(stored.len() <= 1 + 2 + 2 + middle.len(), "{} bytes", stored.len());
        prop_assert_eq!(load_request(&stored, Some(&reference)).unwrap(), request);
    }

    /// Any encoded result, completed at any time near or far from its
    /// start, is stored compact and reads back byte for byte.
    #[test]
    fn a_result_reads_back_as_stored(
        result in result_strategy(),
        offset in prop_oneof![-10_000_000_000i64..10_000_000_000, any::<i64>()],
    ) {
        let bytes = encode_value(&result, "result").unwrap();
        let completed = i64::try_from(started_nanos(&result) + i128::from(offset / 2))
            .unwrap_or(offset);
        match compact_result(&bytes, completed) {
            Some((stored, origin)) => {
                prop_assert_eq!(stored[0], RESULT_COMPACT);
                prop_assert_eq!(
                    load_result(&stored, Some(completed), Some(origin)).unwrap(),
                    bytes
                );
            }
            // Only a start too far from the completion to be an offset,
            // or an elapsed time past 2^64 ns (584 years).
            None => prop_assert!(
                i64::try_from(started_nanos(&result) - i128::from(completed)).is_err()
                    || u64::try_from(result.metadata.elapsed.as_nanos()).is_err()
            ),
        }
    }

    /// Bytes that are no result are stored raw; stored forms that are
    /// damaged are an error, never a panic.
    #[test]
    fn anything_else_is_raw_and_damage_is_an_error(
        bytes in proptest::collection::vec(any::<u8>(), 0..64),
        completed in any::<i64>(),
    ) {
        if let Some((stored, origin)) = compact_result(&bytes, completed) {
            prop_assert_eq!(load_result(&stored, Some(completed), Some(origin)).unwrap(), bytes.clone());
        }
        prop_assert_eq!(load_result(&raw(&bytes), None, None).unwrap(), bytes.clone());
        prop_assert_eq!(load_request(&raw(&bytes), None).unwrap(), bytes.clone());
        let _ = load_request(&bytes, Some(&bytes));
        let _ = load_result(&bytes, Some(completed), Some(&bytes));
    }
}

/// A no-op command's result (empty output, its job in the request's
/// metadata, a host, pid and slot) stores in a few bytes beside its
/// origin, which its slot's other results share.
#[test]
fn a_no_op_result_stores_in_a_few_bytes() {
    let started = SystemTime::now();
    let result = ClusterResult {
        id: 12_345,
        status: ResultStatus::Ok,
        payload: Vec::new(),
        request_metadata: [("zcluster.job".to_string(), "42".to_string())].into(),
        metadata: ResultMetadata {
            host: "node-17.cluster".into(),
            pid: 41_234,
            worker: "slot-2".into(),
            started,
            elapsed: Duration::from_micros(950),
        },
        exception: None,
    };
    let bytes = encode_value(&result, "result").unwrap();
    let completed = i64::try_from(nanos_of(started + Duration::from_millis(2)).unwrap()).unwrap();
    let (stored, origin) = compact_result(&bytes, completed).unwrap();
    assert!(
        stored.len() <= 12,
        "{} bytes for {}",
        stored.len(),
        bytes.len()
    );
    assert_eq!(
        load_result(&stored, Some(completed), Some(origin)).unwrap(),
        bytes
    );
}

/// A result whose encoding is not the one encoding it again gives (a
/// varint written longer than it needs) is kept raw, so it too reads back
/// byte for byte.
#[test]
fn a_result_not_in_its_canonical_encoding_is_kept_raw() {
    let result = ClusterResult::failed_here(7, "slot-1".into(), "no");
    let bytes = encode_value(&result, "result").unwrap();
    assert_eq!(bytes[0], 7);
    // The id 7 as a three-byte varint (251 then a little-endian u16).
    let long = [&[251, 7, 0][..], &bytes[1..]].concat();
    assert_eq!(
        decode_value::<ClusterResult>(&long, "result").ok(),
        Some(result),
        "bincode reads the longer form"
    );
    assert!(compact_result(&long, 0).is_none());
}
