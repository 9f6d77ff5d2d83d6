//! Any bytes, as one message or as an MLLP stream, get an ACK that our own parser reads back,
//! with an MSA saying AA, AE or AR, and never a panic; an accepted message yields a valid
//! stream key and frames that decode back; an MLLP frame round-trips through the decoder.
#![no_main]

use ambulance_gateway::hl7::frames::frames_for;
use ambulance_gateway::hl7::message::Message;
use ambulance_gateway::hl7::mllp::{END_BLOCK, MllpDecoder, START_BLOCK, encode};
use ambulance_gateway::hl7::{handle, reject_frame};
use ambulance_gateway::wire;
use libfuzzer_sys::fuzz_target;

const NOW_US: i64 = 1_750_000_000_000_000;

fn check_ack(ack: &[u8]) {
    assert!(
        !ack.contains(&START_BLOCK) && !ack.contains(&END_BLOCK),
        "the ACK would break MLLP framing"
    );
    let parsed = Message::parse(ack).expect("our ACK parses with our parser");
    let msa = parsed.segment("MSA").expect("the ACK has an MSA");
    let code = msa.component(1, 1);
    assert!(
        matches!(code.as_deref(), Some("AA" | "AE" | "AR")),
        "MSA-1 is {code:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    // The bytes as one message.
    let handled = handle(data, NOW_US);
    check_ack(&handled.ack);
    assert_eq!(
        handled.observations.is_some(),
        handled.acknowledgment.code() == "AA",
        "observations exactly when accepted"
    );
    if let Some(observations) = &handled.observations {
        let stream = observations.source.stream_key();
        // Its frames (when representable) decode back to what was encoded.
        if let Ok(frames) = frames_for(observations, &stream, 1, None) {
            for (frame, bytes) in frames {
                assert_eq!(wire::decode(&bytes).expect("our frame decodes"), frame);
            }
        }
    }

    // The bytes as a stream, in two pushes, with a small frame limit.
    let mut decoder = MllpDecoder::new(4096);
    let cut = data
        .first()
        .map_or(0, |&b| usize::from(b) % (data.len() + 1));
    for part in [&data[..cut], &data[cut..]] {
        decoder.push(part);
        while let Some(item) = decoder.poll() {
            let ack = match item {
                Ok(frame) => handle(&frame, NOW_US).ack,
                Err(error) => reject_frame(&error, NOW_US),
            };
            check_ack(&ack);
        }
    }

    // Bytes without framing bytes, framed, come back whole.
    if !data.contains(&START_BLOCK) && !data.contains(&END_BLOCK) {
        let mut decoder = MllpDecoder::new(usize::MAX);
        decoder.push(&encode(data));
        assert_eq!(decoder.poll(), Some(Ok(data.to_vec())));
        assert_eq!(decoder.poll(), None);
    }
});
