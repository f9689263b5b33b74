//! Bodies behind a valid header of every kind, and the header decoder alone.
#![no_main]
use libfuzzer_sys::fuzz_target;
use zcluster::message::{encode_frame, Envelope, Header, MessageKind, ResultStatus};

fuzz_target!(|data: &[u8]| {
    let _ = Header::from_bytes(data);
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let kind = match kind % 9 {
        0 => MessageKind::Request,
        1 => MessageKind::Result(ResultStatus::Ok),
        2 => MessageKind::Result(ResultStatus::Fail),
        3 => MessageKind::Command,
        4 => MessageKind::Requests,
        5 => MessageKind::Results,
        6 => MessageKind::Tasks,
        7 => MessageKind::TaskResults,
        _ => MessageKind::Reply,
    };
    let header = Header {
        kind,
        job: 0,
        id: 0,
    };
    let Ok(frame) = encode_frame(&header, &[], body) else {
        return;
    };
    let frames = [frame];
    if let Ok(envelope) = Envelope::from_frames(&frames) {
        let _ = envelope.request();
        let _ = envelope.result();
        let _ = envelope.command();
        let _ = envelope.reply();
        let _ = envelope.requests();
        let _ = envelope.results();
    }
});
