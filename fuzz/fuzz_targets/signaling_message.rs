//! Any text on the signaling WebSocket parses to a message or a typed error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = signaling::protocol::parse_client_message(text);
    }
});
