//! Any bytes as an EDF/EDF+ file: the header parser and the data record readers return a
//! value or a typed error, never a panic; a parsed header's record length and sample counts
//! agree with what the record reader returns.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recorder::edf_read::{Header, header_len};

fuzz_target!(|data: &[u8]| {
    let Ok(len) = header_len(data) else {
        return;
    };
    let Some(head) = data.get(..len) else {
        let _ = Header::parse(data);
        return;
    };
    let Ok(header) = Header::parse(head) else {
        return;
    };
    let record_len = header.record_len();
    if record_len == 0 {
        return;
    }
    for record in data[len..].chunks_exact(record_len).take(4) {
        if let Ok(samples) = header.samples(record) {
            assert_eq!(samples.len(), header.signals.len());
            for (s, signal) in samples.iter().zip(&header.signals) {
                assert_eq!(s.len(), signal.samples_per_record);
            }
        }
        let _ = header.onset_us(record);
    }
});
