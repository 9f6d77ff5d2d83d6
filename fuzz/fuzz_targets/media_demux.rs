//! Any datagram on the shared media port is routed or dropped, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sfu::demux::{Demuxer, PcKind};
use sfu::ParticipantId;

fuzz_target!(|data: &[u8]| {
    let mut demux = Demuxer::default();
    demux.register("fuzzufrag".into(), (ParticipantId(1), PcKind::Subscriber));
    let from = "127.0.0.1:40000".parse().unwrap();
    let _ = demux.route(from, data);
});
