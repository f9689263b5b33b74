//! Socket short forms: whatever parses prints back to the same descriptor.
#![no_main]
use libfuzzer_sys::fuzz_target;
use zcluster::socket::{FutureSocket, SocketKind};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(socket) = FutureSocket::parse(text, SocketKind::Sub) {
            let again = FutureSocket::parse(&socket.to_string(), SocketKind::Sub);
            assert_eq!(again.ok(), Some(socket));
        }
    }
});
