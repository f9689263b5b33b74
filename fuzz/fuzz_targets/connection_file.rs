//! Connection files as JSON text.
#![no_main]
use libfuzzer_sys::fuzz_target;
use zcluster::hub::connection::ConnectionInfo;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = serde_json::from_str::<ConnectionInfo>(text);
    }
});
