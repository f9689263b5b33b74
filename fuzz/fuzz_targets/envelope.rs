//! Any multipart message: split into frames by a length prefix byte, then
//! checked and every body accessor tried. Must never panic or abort. An
//! odd first byte puts this version's name in front of the first frame,
//! so the prefix's own checks (signature length, header) see the rest.
#![no_main]
use libfuzzer_sys::fuzz_target;
use zcluster::message::{Envelope, PROTOCOL};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let mut frames: Vec<Vec<u8>> = Vec::new();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        frames.push(tail[..len].to_vec());
        rest = &tail[len..];
    }
    if mode % 2 == 1 {
        match frames.first_mut() {
            Some(first) => first.splice(0..0, PROTOCOL.iter().copied()).for_each(drop),
            None => frames.push(PROTOCOL.to_vec()),
        }
    }
    if let Ok(envelope) = Envelope::from_frames(&frames) {
        let _ = envelope.request();
        let _ = envelope.result();
        let _ = envelope.command();
        let _ = envelope.reply();
    }
});
