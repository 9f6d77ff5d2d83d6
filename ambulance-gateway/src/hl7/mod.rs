//! HL7 v2 in: what an MLLP listener for monitors needs, sans-IO except [`listener`].
//!
//! - [`mllp`]: the framing (`0x0B` message `0x1C 0x0D`), [`mllp::MllpDecoder`] and
//!   [`mllp::encode`];
//! - [`message`]: the HL7 v2 parser (encoding characters, escapes, located errors);
//! - [`pcd01`]: IHE PCD-01 `ORU^R01` (and `ORU^W01`-style waveforms) with MDC codes to
//!   [`pcd01::Observations`];
//! - [`ack`]: the `ACK` (`MSA|AA`, or `AE`/`AR` with an `ERR` segment) answering each message.
//!
//! - [`frames`]: accepted observations as frames of the telemetry wire format.
//!
//! [`handle`] ties them together for one framed message, [`reject_frame`] answers a framing
//! error. [`listener`] is the thin async shell around them (TCP or TLS connections, one ACK
//! per message, the connection kept open) that the gateway and the agent share.

pub mod ack;
pub(crate) mod dtm;
pub mod frames;
pub mod listener;
pub mod message;
pub mod mllp;
pub mod pcd01;

use ack::{Acknowledgment, Problem};
use message::Message;
use mllp::MllpError;
use pcd01::Observations;

/// The outcome of one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Handled {
    /// The ACK to send back: segments ended by `\r`, to be framed with [`mllp::encode`].
    pub ack: Vec<u8>,
    /// What the ACK says: `AA`, or `AE`/`AR` with the problem.
    pub acknowledgment: Acknowledgment,
    /// What the message reported, when accepted (`AA`).
    pub observations: Option<Observations>,
}

/// Handles one message (the bytes of an MLLP frame) received at `now_us` (µs since the Unix
/// epoch): parses it, maps it as PCD-01 and builds its ACK. Never fails: anything wrong is in
/// the ACK (`AR` for a message that is not HL7 or whose `MSH` is wrong or unsupported, `AE`
/// for wrong content).
pub fn handle(message_bytes: &[u8], now_us: i64) -> Handled {
    let header = match Message::parse_header(message_bytes) {
        Ok(header) => header,
        Err(e) => return refuse(None, e.problem(), now_us),
    };
    let result = pcd01::check_header(&header)
        .map_err(|e| e.problem())
        .and_then(|()| Message::parse(message_bytes).map_err(|e| e.problem()))
        .and_then(|message| pcd01::map(&message, now_us).map_err(|e| e.problem()));
    match result {
        Ok(observations) => Handled {
            ack: ack::build(Some(&header), &Acknowledgment::Accept, now_us),
            acknowledgment: Acknowledgment::Accept,
            observations: Some(observations),
        },
        Err(problem) => refuse(Some(&header), problem, now_us),
    }
}

/// The `AR` answering a framing error (bytes that are not MLLP-framed HL7, a frame too large
/// or cut off), naming the dropped message's control id when its `MSH` could be read.
pub fn reject_frame(error: &MllpError, now_us: i64) -> Vec<u8> {
    let header = error
        .head()
        .and_then(|head| Message::parse_header(head).ok());
    ack::build(
        header.as_ref(),
        &Acknowledgment::refusal(error.problem()),
        now_us,
    )
}

/// The `AE` (207, application internal error) for an accepted message that could not be
/// stored; `why` is told to the sender in `ERR-8`.
pub fn not_stored(message_bytes: &[u8], why: String, now_us: i64) -> Vec<u8> {
    let problem = Problem {
        code: ack::ErrorCode::ApplicationInternalError,
        location: None,
        message: why,
    };
    let header = Message::parse_header(message_bytes).ok();
    ack::build(header.as_ref(), &Acknowledgment::Error(problem), now_us)
}

fn refuse(header: Option<&Message>, problem: Problem, now_us: i64) -> Handled {
    let acknowledgment = Acknowledgment::refusal(problem);
    Handled {
        ack: ack::build(header, &acknowledgment, now_us),
        acknowledgment,
        observations: None,
    }
}

/// FNV-1a, 32 bits: a small stable hash for ids.
fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::mllp::{MllpDecoder, encode};
    use super::pcd01::tests::MONITOR;
    use super::*;
    use crate::wire::Vital;

    const NOW: i64 = 1_749_713_600_000_000;

    /// MSA-1, MSA-2 and, when present, ERR-2 and ERR-3.1 of an ACK, which must parse.
    fn summary(ack: &[u8]) -> (String, String, Option<(String, String)>) {
        let m = Message::parse(ack).expect("the ACK parses with our own parser");
        assert_eq!(m.message_type().code, "ACK");
        let msa = |c| m.component("MSA", c, 1).unwrap_or_default().into_owned();
        let err = m.segment("ERR").map(|e| {
            let erl = e
                .field(2)
                .map(|f| f.encode(m.delimiters()))
                .unwrap_or_default();
            (erl, e.component(3, 1).unwrap_or_default().into_owned())
        });
        (msa(1), msa(2), err)
    }

    fn expect(ack: &[u8], code: &str, control_id: &str, err: Option<(&str, &str)>) {
        let (msa1, msa2, found) = summary(ack);
        assert_eq!(
            (msa1.as_str(), msa2.as_str()),
            (code, control_id),
            "{}",
            String::from_utf8_lossy(ack)
        );
        let found = found.as_ref().map(|(l, c)| (l.as_str(), c.as_str()));
        assert_eq!(found, err, "{}", String::from_utf8_lossy(ack));
    }

    /// `MONITOR` with OBX number `n` (1-based) replaced by `obx`.
    fn monitor_with(n: usize, obx: &str) -> String {
        MONITOR
            .split('\r')
            .filter(|s| !s.is_empty())
            .map(|s| {
                if s.starts_with(&format!("OBX|{n}|")) {
                    obx
                } else {
                    s
                }
            })
            .collect::<Vec<_>>()
            .join("\r")
    }

    /// One of the issue's bad inputs and the ACK it must get.
    struct BadInput {
        name: &'static str,
        bytes: Vec<u8>,
        /// MSA-1.
        code: &'static str,
        /// MSA-2.
        control_id: &'static str,
        /// ERR-2.
        erl: &'static str,
        /// ERR-3.1.
        err3: &'static str,
    }

    fn bad(
        name: &'static str,
        bytes: impl Into<Vec<u8>>,
        code: &'static str,
        control_id: &'static str,
        erl: &'static str,
        err3: &'static str,
    ) -> BadInput {
        BadInput {
            name,
            bytes: bytes.into(),
            code,
            control_id,
            erl,
            err3,
        }
    }

    fn bad_inputs() -> Vec<BadInput> {
        let long = format!(
            "OBX|16|NM|1^X^MDC|1.9.9.9|{}",
            "1".repeat(message::MAX_SEGMENT_BYTES)
        );
        vec![
            bad("no_msh", b"PID|||123\rOBX|1|NM|147842^HR^MDC|1|72".to_vec(), "AR", "", "", "100"),
            bad("not_hl7", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), "AR", "", "", "100"),
            bad(
                "bad_encoding_characters",
                MONITOR.replacen("MSH|^~\\&|", "MSH|^~^&|", 1).into_bytes(),
                "AR",
                "",
                "MSH^1^2",
                "102",
            ),
            bad(
                "bad_escape",
                monitor_with(3, "OBX|3|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.2.1.1|97|262688^MDC_DIM_\\Q\\PERCENT^MDC").into_bytes(),
                "AE",
                "MSG00042",
                "OBX^3^6^1^2^1",
                "102",
            ),
            bad(
                "non_numeric_nm",
                monitor_with(2, "OBX|2|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1|seventy|264864^MDC_DIM_BEAT_PER_MIN^MDC").into_bytes(),
                "AE",
                "MSG00042",
                "OBX^2^5",
                "102",
            ),
            bad("segment_too_long", monitor_with(16, &long).into_bytes(), "AE", "MSG00042", "OBX^16", "102"),
            bad(
                "unsupported_type",
                MONITOR.replacen("ORU^R01^ORU_R01", "ADT^A01^ADT_A01", 1).into_bytes(),
                "AR",
                "MSG00042",
                "MSH^1^9",
                "200",
            ),
            bad(
                "unsupported_version",
                MONITOR.replacen("|P|2.6|", "|P|3.1|", 1).into_bytes(),
                "AR",
                "MSG00042",
                "MSH^1^12",
                "203",
            ),
            bad(
                "unknown_unit",
                monitor_with(9, "OBX|9|NM|150364^MDC_TEMP_BODY^MDC|1.5.1.1|98.6|266561^MDC_DIM_X^MDC").into_bytes(),
                "AE",
                "MSG00042",
                "OBX^9^6",
                "103",
            ),
            bad(
                "waveform_without_rate",
                monitor_with(13, "OBX|13|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.2.1.9|97|262688^^MDC").into_bytes(),
                "AE",
                "MSG00042",
                "OBX^12^4",
                "101",
            ),
        ]
    }

    #[test]
    fn hl7_handle_accepts_a_pcd01_report() {
        let handled = handle(MONITOR.as_bytes(), NOW);
        assert_eq!(handled.acknowledgment, Acknowledgment::Accept);
        expect(&handled.ack, "AA", "MSG00042", None);
        let obs = handled.observations.expect("observations");
        let vitals: Vec<_> = obs.numerics.iter().filter_map(|n| n.vital).collect();
        assert_eq!(
            vitals,
            [
                Vital::Hr,
                Vital::Spo2,
                Vital::NibpSys,
                Vital::NibpDia,
                Vital::NibpMean,
                Vital::Rr,
                Vital::Temp,
                Vital::Etco2
            ]
        );
        assert_eq!(obs.waveforms.len(), 1);
        let ack = Message::parse(&handled.ack).expect("parses");
        assert_eq!(ack.component("MSH", 3, 1).as_deref(), Some("MEDRELAY"));
        assert_eq!(
            ack.component("MSH", 5, 2).as_deref(),
            Some("0123456789ABCDEF")
        );
        assert_eq!(ack.version().as_deref(), Some("2.6"));
        assert_eq!(ack.message_type().trigger, "R01");
    }

    #[test]
    fn hl7_handle_answers_each_bad_input() {
        // For cross-checking with other parsers: MEDRELAY_HL7_ACK_DUMP=dir writes every ACK.
        let dump = std::env::var_os("MEDRELAY_HL7_ACK_DUMP").map(std::path::PathBuf::from);
        if let Some(dir) = &dump {
            std::fs::create_dir_all(dir).expect("dump dir");
            let old = MONITOR
                .replacen("|P|2.6|", "|P|2.3.1|", 1)
                .replacen("|72|", "|x|", 1);
            let escaped = MONITOR.replacen("|72|", "|7\\F\\2\\S\\x\\X0D\\|", 1);
            let too_large = MllpError::FrameTooLarge {
                limit: 10,
                head: MONITOR.as_bytes()[..200].to_vec(),
            };
            let acks = [
                ("good", handle(MONITOR.as_bytes(), NOW).ack),
                ("old_version_error", handle(old.as_bytes(), NOW).ack),
                ("escaped_text", handle(escaped.as_bytes(), NOW).ack),
                (
                    "mllp_garbage",
                    reject_frame(&MllpError::Garbage { bytes: 3 }, NOW),
                ),
                ("mllp_frame_too_large", reject_frame(&too_large, NOW)),
            ];
            for (name, ack) in acks {
                std::fs::write(dir.join(format!("{name}.ack")), ack).expect("dump");
            }
        }
        for BadInput {
            name,
            bytes,
            code,
            control_id,
            erl,
            err3,
        } in bad_inputs()
        {
            let handled = handle(&bytes, NOW);
            assert!(handled.observations.is_none(), "{name}");
            assert_eq!(handled.acknowledgment.code(), code, "{name}");
            expect(&handled.ack, code, control_id, Some((erl, err3)));
            if let Some(dir) = &dump {
                std::fs::write(dir.join(format!("{name}.ack")), &handled.ack).expect("dump");
            }
        }
    }

    #[test]
    fn hl7_handle_old_version_error_uses_err1() {
        let text = monitor_with(
            2,
            "OBX|2|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1|x|264864^^MDC",
        )
        .replacen("|P|2.6|", "|P|2.3.1|", 1);
        let handled = handle(text.as_bytes(), NOW);
        let ack = Message::parse(&handled.ack).expect("parses");
        assert_eq!(ack.component("MSA", 1, 1).as_deref(), Some("AE"));
        assert!(
            ack.component("MSA", 3, 1)
                .is_some_and(|t| t.contains("not a number"))
        );
        let err1 = ack.field("ERR", 1).expect("ERR-1").encode(ack.delimiters());
        assert_eq!(err1, "OBX^2^5^102&Data type error&HL70357");
    }

    #[test]
    fn hl7_mllp_stream_keeps_working_after_bad_input() {
        let mut decoder = MllpDecoder::new(16 * 1024);
        let mut stream = b"\x00\x01binary junk".to_vec();
        for input in bad_inputs() {
            stream.extend(encode(&input.bytes));
            stream.extend(encode(MONITOR.as_bytes()));
        }
        // A frame that never ends: the decoder drops it at its limit and reports it; the
        // next frame (after a start block) still works.
        stream.push(mllp::START_BLOCK);
        stream.extend(MONITOR.replacen("MSG00042", "BIG-1", 1).as_bytes());
        stream.extend(std::iter::repeat_n(b'7', 40_000));
        stream.extend(encode(MONITOR.as_bytes()));
        let mut acks = Vec::new();
        for chunk in stream.chunks(1000) {
            decoder.push(chunk);
            while let Some(item) = decoder.poll() {
                acks.push(match item {
                    Ok(frame) => handle(&frame, NOW).ack,
                    Err(error) => reject_frame(&error, NOW),
                });
            }
        }
        let codes: Vec<_> = acks
            .iter()
            .map(|a| summary(a))
            .map(|(c, id, err)| (c, id, err.map(|e| e.1)))
            .collect();
        let mut expected = vec![("AR".to_owned(), String::new(), Some("100".to_owned()))];
        for BadInput {
            name,
            code,
            control_id,
            err3,
            ..
        } in bad_inputs()
        {
            if name == "segment_too_long" {
                // Longer than the decoder's limit: dropped by the framing, not the parser.
                expected.push(("AR".into(), control_id.into(), Some("102".into())));
            } else {
                expected.push((code.into(), control_id.into(), Some(err3.into())));
            }
            expected.push(("AA".into(), "MSG00042".into(), None));
        }
        expected.push(("AR".into(), "BIG-1".into(), Some("102".into())));
        expected.push(("AA".into(), "MSG00042".into(), None));
        assert_eq!(codes, expected);
    }

    #[test]
    fn hl7_reject_frame_answers_framing_errors() {
        let garbage = reject_frame(&MllpError::Garbage { bytes: 12 }, NOW);
        expect(&garbage, "AR", "", Some(("", "100")));
        let interrupted = MllpError::Interrupted {
            bytes: 30,
            head: b"MSH|^~\\&|A|B|||x||ORU^R01|CUT-1|P|2.5".to_vec(),
        };
        let ack = reject_frame(&interrupted, NOW);
        expect(&ack, "AR", "CUT-1", Some(("", "100")));
        let ack = Message::parse(&ack).expect("parses");
        assert_eq!(ack.version().as_deref(), Some("2.5"));
        let unreadable = MllpError::FrameTooLarge {
            limit: 10,
            head: b"\xff\xfe".to_vec(),
        };
        expect(&reject_frame(&unreadable, NOW), "AR", "", Some(("", "102")));
    }

    #[test]
    fn hl7_fnv1a32_known_values() {
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
    }
}
