//! The hub's control bodies: what engines and clients send it, and what it
//! answers, decoded from arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use zcluster::hub::protocol::{ClientCall, EngineMessage, HubToEngine, Notification, Reply};
use zcluster::map::ExecChunk;
use zcluster::message::decode_value;

fuzz_target!(|data: &[u8]| {
    let _ = decode_value::<EngineMessage>(data, "engine message");
    let _ = decode_value::<ClientCall>(data, "client call");
    let _ = decode_value::<HubToEngine>(data, "hub message");
    let _ = decode_value::<Reply>(data, "reply");
    let _ = decode_value::<Notification>(data, "notification");
    let _ = ExecChunk::from_request_body(data);
});
