//! Micro benchmarks of the wire format (`zcluster::message`): what every
//! message costs to encode and decode before any socket is involved.
//!
//! Sizes are payload bytes: 8 is a no-op task's `u64`, 256 a typical
//! parameter set or path, 4 KiB and 64 KiB larger records. The end-to-end
//! figures in `scripts/bench.sh` say how much of a task's cost this is.
//!
//! ```sh
//! cargo bench --bench codec                                   # full run
//! cargo bench --bench codec -- --sample-count 20 --max-time 0.5   # a quick look
//! cargo bench --bench codec -- decode                         # only names matching `decode`
//! ```

use std::time::{Duration, SystemTime};

use divan::counter::BytesCount;
use divan::{black_box, Bencher};
use zcluster::auth::{Channel, Key, Signer, Verifier};
use zcluster::message::{
    decode_value, encode_frame, encode_value, frames, ClusterRequest, ClusterResult, Envelope,
    Header, MessageKind, Parts, ResultMetadata, ResultStatus, PROTOCOL,
};

fn main() {
    divan::main();
}

/// Payload sizes in bytes.
const SIZES: [usize; 4] = [8, 256, 4096, 65536];

/// A request as a hub client sends it: a payload and the handler's name.
fn request(size: usize) -> ClusterRequest {
    ClusterRequest::new(17, vec![7; size]).with_metadata("zcluster.handler", "noop")
}

/// The result a worker sends back for [`request`], with its full metadata.
fn result(size: usize) -> ClusterResult {
    let request = request(size);
    ClusterResult {
        id: request.id,
        status: ResultStatus::Ok,
        payload: vec![9; size],
        request_metadata: request.metadata,
        metadata: ResultMetadata {
            host: "node-07.lab".into(),
            pid: 41_234,
            worker: "engine-3/slot-1".into(),
            started: SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000),
            elapsed: Duration::from_micros(1_250),
        },
        exception: None,
    }
}

fn header_of_request(request: &ClusterRequest) -> Header {
    Header {
        kind: MessageKind::Request,
        job: 3,
        id: request.id,
    }
}

fn header_of_result(result: &ClusterResult) -> Header {
    Header {
        kind: MessageKind::Result(result.status),
        job: 3,
        id: result.id,
    }
}

/// The one frame of a request (prefix and bincode body), as
/// `message::frames` builds it.
#[divan::bench(args = SIZES)]
fn encode_request(bencher: Bencher, size: usize) {
    let request = request(size);
    let header = header_of_request(&request);
    bencher
        .counter(BytesCount::new(size))
        .bench_local(|| frames(black_box(&header), black_box(&request)));
}

/// The one frame of a result.
#[divan::bench(args = SIZES)]
fn encode_result(bencher: Bencher, size: usize) {
    let result = result(size);
    let header = header_of_result(&result);
    bencher
        .counter(BytesCount::new(size))
        .bench_local(|| frames(black_box(&header), black_box(&result)));
}

/// Checking a received frame: size, protocol, signature length, header
/// (and, from frames rather than a socket, a copy of the body).
#[divan::bench(args = SIZES)]
fn envelope_from_frames(bencher: Bencher, size: usize) {
    let request = request(size);
    let frames = frames(&header_of_request(&request), &request).expect("a request encodes");
    bencher
        .counter(BytesCount::new(size))
        .bench_local(|| Envelope::from_frames(black_box(&frames)));
}

/// Decoding a request's body from a checked envelope.
#[divan::bench(args = SIZES)]
fn decode_request(bencher: Bencher, size: usize) {
    let request = request(size);
    let frames = frames(&header_of_request(&request), &request).expect("a request encodes");
    let envelope = Envelope::from_frames(&frames).expect("valid frames");
    bencher
        .counter(BytesCount::new(size))
        .bench_local(|| black_box(&envelope).request());
}

/// Decoding a result's body from a checked envelope.
#[divan::bench(args = SIZES)]
fn decode_result(bencher: Bencher, size: usize) {
    let result = result(size);
    let frames = frames(&header_of_result(&result), &result).expect("a result encodes");
    let envelope = Envelope::from_frames(&frames).expect("valid frames");
    bencher
        .counter(BytesCount::new(size))
        .bench_local(|| black_box(&envelope).result());
}

/// A result's body written by hand (`ClusterResult::to_body`, what the
/// toolkit's worker sends) ...
#[divan::bench(args = SIZES)]
fn result_body_by_hand(bencher: Bencher, size: usize) {
    let result = result(size);
    bencher
        .counter(BytesCount::new(size))
        .bench_local(|| black_box(&result).to_body());
}

/// ... and the same bytes through serde, as every other record is encoded.
#[divan::bench(args = SIZES)]
fn result_body_by_serde(bencher: Bencher, size: usize) {
    let result = result(size);
    bencher
        .counter(BytesCount::new(size))
        .bench_local(|| encode_value(black_box(&result), "result"));
}

/// A result's body read by hand (`ClusterResult::from_body`, what the
/// toolkit's sink does) ...
#[divan::bench(args = SIZES)]
fn result_from_body_by_hand(bencher: Bencher, size: usize) {
    let body = encode_value(&result(size), "result").expect("a result encodes");
    bencher
        .counter(BytesCount::new(size))
        .bench_local(|| ClusterResult::from_body(black_box(&body)));
}

/// ... and through serde (`decode_value`), as the hub still reads them.
#[divan::bench(args = SIZES)]
fn result_from_body_by_serde(bencher: Bencher, size: usize) {
    let body = encode_value(&result(size), "result").expect("a result encodes");
    bencher
        .counter(BytesCount::new(size))
        .bench_local(|| decode_value::<ClusterResult>(black_box(&body), "result"));
}

/// The header alone: what a device or the hub decodes to route and record
/// a message without touching its body.
#[divan::bench]
fn decode_header(bencher: Bencher) {
    let header = Header {
        kind: MessageKind::Result(ResultStatus::Ok),
        job: 1_234,
        id: 9_876_543,
    };
    let bytes = header.to_bytes();
    bencher.bench_local(|| Header::from_bytes(black_box(&bytes)));
}

fn key() -> Key {
    Key::from_bytes(&[0x5a; 32])
}

/// A hub message's way out: its body signed (HMAC-SHA256 over the prefix
/// and the body) and laid out in its frame.
#[divan::bench(args = SIZES)]
fn sign_frame(bencher: Bencher, size: usize) {
    let request = request(size);
    let header = header_of_request(&request);
    let body = encode_value(&request, "body").expect("a request encodes");
    let signer = Signer::new(key(), Channel::HubToEngine);
    bencher.counter(BytesCount::new(size)).bench_local(|| {
        let header_bytes = header.to_bytes();
        let signature = signer.sign(PROTOCOL, &header_bytes, black_box(&body));
        encode_frame(&header, &signature, &body)
    });
}

/// A hub message's way in: its frame cut at its prefix and its signature
/// checked (a fresh verifier each time, so no message is a replay).
#[divan::bench(args = SIZES)]
fn verify_frame(bencher: Bencher, size: usize) {
    let request = request(size);
    let header = header_of_request(&request);
    let body = encode_value(&request, "body").expect("a request encodes");
    let signer = Signer::new(key(), Channel::HubToEngine);
    let signature = signer.sign(PROTOCOL, &header.to_bytes(), &body);
    let frame = encode_frame(&header, &signature, &body).expect("a frame");
    bencher
        .counter(BytesCount::new(size))
        .with_inputs(|| Verifier::new(key(), Channel::HubToEngine))
        .bench_local_refs(|verifier| {
            let parts = Parts::of(black_box(&frame)).expect("a frame");
            verifier
                .verify(parts.signature, PROTOCOL, parts.header, parts.body)
                .expect("genuine")
        });
}
