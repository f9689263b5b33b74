//! Any multipart message: split into frames by a length prefix byte, then
//! checked and every body accessor tried. Must never panic or abort.
#![no_main]
use libfuzzer_sys::fuzz_target;
use zcluster::message::Envelope;

fuzz_target!(|data: &[u8]| {
    let mut frames: Vec<&[u8]> = Vec::new();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        frames.push(&tail[..len]);
        rest = &tail[len..];
    }
    if let Ok(envelope) = Envelope::from_frames(&frames) {
        let _ = envelope.request();
        let _ = envelope.result();
        let _ = envelope.command();
        let _ = envelope.reply();
    }
});
