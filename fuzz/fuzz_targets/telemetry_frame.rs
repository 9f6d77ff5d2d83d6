//! Any binary telemetry message decodes to a frame or a typed error, never a panic, and a
//! decoded frame encodes and decodes back to the same frame.
#![no_main]

use ambulance_gateway::wire::{decode, decode_header, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let header = decode_header(data);
    let Ok(frame) = decode(data) else {
        return;
    };
    assert_eq!(
        header.as_ref(),
        Ok(&frame.header),
        "decode_header disagrees with decode"
    );
    let bytes = encode(&frame).expect("a decoded frame encodes");
    // Encoding may pick a narrower sample format than the input had, never a wider one.
    assert!(bytes.len() <= data.len(), "the encoding grew");
    assert_eq!(bytes[2], data[2], "the flags byte changed");
    let again = decode(&bytes).expect("an encoded frame decodes");
    assert_eq!(again, frame, "the frame changed through encode and decode");
    assert_eq!(
        encode(&again).expect("encodes again"),
        bytes,
        "encoding is not stable"
    );
});
