//! The `ACK` answering each HL7 message (original acknowledgment mode, HL7 v2.6 chapter 2):
//!
//! ```text
//! MSH|^~\&|<their MSH-5>|<their MSH-6>|<their MSH-3>|<their MSH-4>|<now UTC>||ACK^<event>^ACK|<new id>|<P|D|T>|<version>|||NE|NE||UNICODE UTF-8
//! MSA|AA|<their MSH-10>
//! ERR||<SEG^seq^field^rep^comp^sub>|<code>^<text>^HL70357|E||||<what was wrong>
//! ```
//!
//! `AA`: accepted. `AE` (application error): the message was HL7 but its content was wrong,
//! e.g. a non-numeric `NM` value. `AR` (application reject): it could not be taken at all: no
//! `MSH`, bad encoding characters, an unsupported message type, event, processing id or
//! version, an error in `MSH`, or bytes that are not HL7. For versions before 2.5 the error
//! is reported the old way instead: `MSA-3` text and `ERR-1` `SEG^seq^field^code&text&HL70357`.
//! All text we write is escaped; the ACK always uses the delimiters `|^~\&`.

use super::dtm;
use super::fnv1a32;
use super::message::{Delimiters, Location, Message, escape};

/// Version written when the original's is unknown or unsupported.
pub const DEFAULT_VERSION: &str = "2.6";

/// Versions whose messages are accepted, and echoed in the ACK.
pub const SUPPORTED_VERSIONS: [&str; 12] = [
    "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.1", "2.8.2", "2.9",
];

/// Sending application written when the original names no receiving application.
const OUR_APPLICATION: &str = "MEDRELAY";

/// HL7 table 0357, message error condition codes (the ones medrelay reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 100: a segment is missing, out of order or malformed (also: not HL7 at all).
    SegmentSequence,
    /// 101: a required field is missing.
    RequiredFieldMissing,
    /// 102: a value does not conform to its data type (or is too long).
    DataType,
    /// 103: a coded value (e.g. a unit) is not one we know.
    TableValueNotFound,
    /// 200: the message type is not supported.
    UnsupportedMessageType,
    /// 201: the trigger event is not supported.
    UnsupportedEventCode,
    /// 202: the processing id is not supported.
    UnsupportedProcessingId,
    /// 203: the version is not supported.
    UnsupportedVersionId,
    /// 207: the receiver failed (e.g. could not store the message in time).
    ApplicationInternalError,
}

impl ErrorCode {
    /// The numeric code.
    pub fn code(self) -> u16 {
        match self {
            ErrorCode::SegmentSequence => 100,
            ErrorCode::RequiredFieldMissing => 101,
            ErrorCode::DataType => 102,
            ErrorCode::TableValueNotFound => 103,
            ErrorCode::UnsupportedMessageType => 200,
            ErrorCode::UnsupportedEventCode => 201,
            ErrorCode::UnsupportedProcessingId => 202,
            ErrorCode::UnsupportedVersionId => 203,
            ErrorCode::ApplicationInternalError => 207,
        }
    }

    /// The table's text for the code.
    pub fn text(self) -> &'static str {
        match self {
            ErrorCode::SegmentSequence => "Segment sequence error",
            ErrorCode::RequiredFieldMissing => "Required field missing",
            ErrorCode::DataType => "Data type error",
            ErrorCode::TableValueNotFound => "Table value not found",
            ErrorCode::UnsupportedMessageType => "Unsupported message type",
            ErrorCode::UnsupportedEventCode => "Unsupported event code",
            ErrorCode::UnsupportedProcessingId => "Unsupported processing id",
            ErrorCode::UnsupportedVersionId => "Unsupported version id",
            ErrorCode::ApplicationInternalError => "Application internal error",
        }
    }
}

/// What was wrong with a message, as the `ERR` segment reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// ERR-3, the table 0357 code.
    pub code: ErrorCode,
    /// ERR-2, where, when known.
    pub location: Option<Location>,
    /// ERR-8, for people.
    pub message: String,
}

/// The answer to a message: MSA-1 and, unless accepted, the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acknowledgment {
    /// `AA`.
    Accept,
    /// `AE`: the content was wrong.
    Error(Problem),
    /// `AR`: the message was rejected.
    Reject(Problem),
}

impl Acknowledgment {
    /// The answer to a problem: `AR` when it is in `MSH`, has no location (not HL7, framing)
    /// or is an unsupported type, event, processing id or version; `AE` otherwise.
    pub fn refusal(problem: Problem) -> Self {
        let header = problem.location.as_ref().is_none_or(|l| l.segment == "MSH");
        if header || (200..=203).contains(&problem.code.code()) {
            Acknowledgment::Reject(problem)
        } else {
            Acknowledgment::Error(problem)
        }
    }

    /// MSA-1: `AA`, `AE` or `AR`.
    pub fn code(&self) -> &'static str {
        match self {
            Acknowledgment::Accept => "AA",
            Acknowledgment::Error(_) => "AE",
            Acknowledgment::Reject(_) => "AR",
        }
    }

    /// The problem, unless accepted.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Acknowledgment::Accept => None,
            Acknowledgment::Error(p) | Acknowledgment::Reject(p) => Some(p),
        }
    }
}

/// Builds the ACK (segments ended by `\r`, not MLLP-framed) for `original` (its `MSH`, when
/// it could be read) at `now_us` (µs since the Unix epoch).
pub fn build(original: Option<&Message>, ack: &Acknowledgment, now_us: i64) -> Vec<u8> {
    let d = Delimiters::default();
    let echo = |field: usize| {
        original
            .and_then(|m| m.field("MSH", field))
            .map(|f| f.encode(&d))
            .unwrap_or_default()
    };
    // Static strings of ours, chosen by what the original says.
    let known = |value: Option<std::borrow::Cow<'_, str>>, list: &[&'static str]| {
        value.and_then(|v| list.iter().copied().find(|k| *k == v))
    };
    let version =
        known(original.and_then(Message::version), &SUPPORTED_VERSIONS).unwrap_or(DEFAULT_VERSION);
    let old_style = matches!(version, "2.3" | "2.3.1" | "2.4");
    let processing =
        known(original.and_then(Message::processing_id), &["P", "D", "T"]).unwrap_or("P");
    let trigger = original.map(|m| m.message_type().trigger).filter(|t| {
        t.len() == 3
            && t.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    });
    let message_type = match trigger {
        Some(t) => format!("ACK^{t}^ACK"),
        None => "ACK".to_owned(),
    };
    let their_id = original.and_then(Message::control_id).unwrap_or_default();
    let mut sender = echo(5);
    if sender.is_empty() {
        sender = OUR_APPLICATION.to_owned();
    }
    let msh = [
        "MSH",
        "^~\\&",
        &sender,
        &echo(6),
        &echo(3),
        &echo(4),
        &dtm::format_utc(now_us),
        "",
        &message_type,
        &control_id(now_us, &their_id),
        processing,
        version,
        "",
        "",
        "NE",
        "NE",
        "",
        "UNICODE UTF-8",
    ];
    let mut msa = vec![
        "MSA".to_owned(),
        ack.code().to_owned(),
        escape(&their_id, &d),
    ];
    let mut err = Vec::new();
    if let Some(problem) = ack.problem() {
        let code = problem.code;
        let text = escape(&shorten(&problem.message), &d);
        err.push("ERR".to_owned());
        if old_style {
            msa.push(text);
            let mut eld = location_components(problem.location.as_ref(), 3, &d);
            eld.resize(3, String::new());
            eld.push(format!("{}&{}&HL70357", code.code(), code.text()));
            err.push(eld.join("^"));
        } else {
            err.push(String::new());
            err.push(location_components(problem.location.as_ref(), 6, &d).join("^"));
            err.push(format!("{}^{}^HL70357", code.code(), code.text()));
            err.push("E".to_owned());
            err.extend([String::new(), String::new(), String::new(), text]);
        }
    }
    let mut segments = vec![msh.join("|"), msa.join("|")];
    if !err.is_empty() {
        segments.push(err.join("|"));
    }
    let mut out = segments.join("\r").into_bytes();
    out.push(b'\r');
    out
}

/// `SEG`, sequence, field, repetition, component, subcomponent as known, at most `max`.
fn location_components(location: Option<&Location>, max: usize, d: &Delimiters) -> Vec<String> {
    let Some(l) = location else {
        return Vec::new();
    };
    let numbers = [
        Some(l.sequence),
        l.field,
        l.repetition,
        l.component,
        l.subcomponent,
    ];
    let mut parts = vec![escape(&l.segment, d)];
    parts.extend(numbers.iter().map_while(|n| n.map(|n| n.to_string())));
    parts.truncate(max);
    parts
}

/// Our MSH-10: the time in hexadecimal and a hash of theirs; 19 characters, within the 20
/// older versions allow.
fn control_id(now_us: i64, their_id: &str) -> String {
    let hash = fnv1a32(their_id.as_bytes());
    format!(
        "{:013X}{:06X}",
        now_us as u64 & 0x000F_FFFF_FFFF_FFFF,
        hash & 0x00FF_FFFF
    )
}

/// Text cut to 200 characters, so that an echoed value cannot make the ACK large.
fn shorten(text: &str) -> String {
    const MAX_CHARS: usize = 200;
    match text.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGINAL: &str = "MSH|^~\\&|MON^0123456789ABCDEF^EUI-64|ICU\\T\\2|RCV|RFAC|20250612093319+0200||ORU^R01^ORU_R01|CTRL-1|P|2.6\r";

    fn original(text: &str) -> Message {
        Message::parse(text.as_bytes()).expect("original parses")
    }

    fn lines(ack: &[u8]) -> Vec<String> {
        let text = std::str::from_utf8(ack).expect("UTF-8");
        assert!(text.ends_with('\r'));
        text.trim_end_matches('\r')
            .split('\r')
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn hl7_ack_accepts_with_swapped_applications() {
        let m = original(ORIGINAL);
        let ack = build(Some(&m), &Acknowledgment::Accept, 1_749_713_599_123_456);
        let l = lines(&ack);
        assert_eq!(l.len(), 2);
        let msh: Vec<&str> = l[0].split('|').collect();
        assert_eq!(
            &msh[..7],
            [
                "MSH",
                "^~\\&",
                "RCV",
                "RFAC",
                "MON^0123456789ABCDEF^EUI-64",
                "ICU\\T\\2",
                "20250612073319.1234+0000"
            ]
        );
        assert_eq!(
            &msh[8..12],
            [
                "ACK^R01^ACK",
                &control_id(1_749_713_599_123_456, "CTRL-1"),
                "P",
                "2.6"
            ]
        );
        assert_eq!(msh[9].len(), 19);
        assert_ne!(msh[9], "CTRL-1");
        assert_eq!(l[1], "MSA|AA|CTRL-1");
        let parsed = Message::parse(&ack).expect("the ACK parses");
        assert_eq!(parsed.component("MSH", 6, 1).as_deref(), Some("ICU&2"));
        assert_eq!(parsed.message_type().code, "ACK");
    }

    #[test]
    fn hl7_ack_error_names_location_and_code() {
        let m = original(ORIGINAL);
        let problem = Problem {
            code: ErrorCode::DataType,
            location: Some(
                Location::new("OBX", 3)
                    .with_field(5)
                    .with_repetition(1)
                    .with_component(1),
            ),
            message: "OBX[3]-5: \"7|2^x\" is not a number\r".to_owned(),
        };
        let ack = build(Some(&m), &Acknowledgment::refusal(problem), 0);
        let l = lines(&ack);
        assert_eq!(l[1], "MSA|AE|CTRL-1");
        assert_eq!(
            l[2],
            "ERR||OBX^3^5^1^1|102^Data type error^HL70357|E||||OBX[3]-5: \"7\\F\\2\\S\\x\" is not a number\\X0D\\"
        );
        let parsed = Message::parse(&ack).expect("the ACK parses");
        assert_eq!(
            parsed.component("ERR", 8, 1).as_deref(),
            Some("OBX[3]-5: \"7|2^x\" is not a number\r")
        );
    }

    #[test]
    fn hl7_ack_rejects_without_header() {
        let problem = Problem {
            code: ErrorCode::SegmentSequence,
            location: None,
            message: "the message does not begin with an MSH segment".to_owned(),
        };
        let ack = build(None, &Acknowledgment::refusal(problem), 0);
        let l = lines(&ack);
        assert!(
            l[0].starts_with("MSH|^~\\&|MEDRELAY||||19700101000000.0000+0000||ACK|"),
            "{}",
            l[0]
        );
        assert!(l[0].ends_with("|P|2.6|||NE|NE||UNICODE UTF-8"), "{}", l[0]);
        assert_eq!(l[1], "MSA|AR|");
        assert_eq!(
            l[2],
            "ERR|||100^Segment sequence error^HL70357|E||||the message does not begin with an MSH segment"
        );
    }

    #[test]
    fn hl7_ack_refusal_rule() {
        let p = |code, segment: Option<&str>| Problem {
            code,
            location: segment.map(|s| Location::new(s, 1)),
            message: String::new(),
        };
        assert_eq!(
            Acknowledgment::refusal(p(ErrorCode::DataType, Some("OBX"))).code(),
            "AE"
        );
        assert_eq!(
            Acknowledgment::refusal(p(ErrorCode::DataType, Some("MSH"))).code(),
            "AR"
        );
        assert_eq!(
            Acknowledgment::refusal(p(ErrorCode::DataType, None)).code(),
            "AR"
        );
        assert_eq!(
            Acknowledgment::refusal(p(ErrorCode::UnsupportedMessageType, Some("OBX"))).code(),
            "AR"
        );
        assert_eq!(
            Acknowledgment::refusal(p(ErrorCode::TableValueNotFound, Some("PID"))).code(),
            "AE"
        );
        assert_eq!(Acknowledgment::Accept.problem(), None);
    }

    #[test]
    fn hl7_ack_old_versions_use_msa3_and_err1() {
        let m = original("MSH|^~\\&|GW|WARD|||20250612093319||ORU^R01|77|P|2.3.1\r");
        let problem = Problem {
            code: ErrorCode::TableValueNotFound,
            location: Some(Location::new("OBX", 2).with_field(6).with_component(1)),
            message: "unit".to_owned(),
        };
        let l = lines(&build(Some(&m), &Acknowledgment::refusal(problem), 0));
        assert!(l[0].contains("|ACK^R01^ACK|"));
        assert!(l[0].contains("|P|2.3.1|"));
        assert_eq!(l[1], "MSA|AE|77|unit");
        assert_eq!(l[2], "ERR|OBX^2^6^103&Table value not found&HL70357");
        let problem = Problem {
            code: ErrorCode::SegmentSequence,
            location: None,
            message: "x".to_owned(),
        };
        let l = lines(&build(Some(&m), &Acknowledgment::refusal(problem), 0));
        assert_eq!(l[2], "ERR|^^^100&Segment sequence error&HL70357");
    }

    #[test]
    fn hl7_ack_sanitises_echoed_header_values() {
        let m = original("MSH|^~\\&|A|B|C|D|x||ZZZ^R01\\F\\|I\\X0B\\D|X|9.9\r");
        let ack = build(Some(&m), &Acknowledgment::Accept, 0);
        assert!(!ack.contains(&0x0B) && !ack.contains(&0x1C));
        let l = lines(&ack);
        let msh: Vec<&str> = l[0].split('|').collect();
        assert_eq!(&msh[8..12], ["ACK", &control_id(0, "I\u{b}D"), "P", "2.6"]);
        assert_eq!(l[1], "MSA|AA|I\\X0B\\D");
    }

    #[test]
    fn hl7_ack_shortens_long_messages() {
        assert_eq!(shorten("abc"), "abc");
        let long = "é".repeat(500);
        let short = shorten(&long);
        assert_eq!(short.chars().count(), 201);
        assert!(short.ends_with('…'));
    }

    #[test]
    fn hl7_ack_error_codes_match_table_0357() {
        let all = [
            (ErrorCode::SegmentSequence, 100),
            (ErrorCode::RequiredFieldMissing, 101),
            (ErrorCode::DataType, 102),
            (ErrorCode::TableValueNotFound, 103),
            (ErrorCode::UnsupportedMessageType, 200),
            (ErrorCode::UnsupportedEventCode, 201),
            (ErrorCode::UnsupportedProcessingId, 202),
            (ErrorCode::UnsupportedVersionId, 203),
        ];
        for (code, number) in all {
            assert_eq!(code.code(), number);
            assert!(!code.text().is_empty());
        }
    }
}
