//! The hub's control bodies: what engines and clients send it, and what it
//! answers, and the task and result batches between hub and engines,
//! decoded from arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use zcluster::hub::protocol::{
    ClientCall, EngineMessage, HubToEngine, Notification, Reply, ResultItem, TaskItem,
};
use zcluster::map::ExecChunk;
use zcluster::message::decode_value;

fuzz_target!(|data: &[u8]| {
    let _ = decode_value::<EngineMessage>(data, "engine message");
    let _ = decode_value::<ClientCall>(data, "client call");
    let _ = decode_value::<HubToEngine>(data, "hub message");
    let _ = decode_value::<Reply>(data, "reply");
    let _ = decode_value::<Notification>(data, "notification");
    let _ = ExecChunk::from_request_body(data);
    let _ = decode_value::<Vec<TaskItem>>(data, "tasks");
    let _ = decode_value::<Vec<ResultItem>>(data, "task results");
});
