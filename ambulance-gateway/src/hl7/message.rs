//! HL7 v2 message parsing, following the encoding rules of HL7 v2.6 chapter 2.
//!
//! A message is segments separated by a carriage return (`\r`; `\n` and `\r\n` are accepted
//! too, empty lines are skipped). It must begin with `MSH`, whose first two fields declare the
//! delimiters: MSH-1 the field separator, MSH-2 the component, repetition, escape and
//! subcomponent characters (and, from v2.7, the truncation character). Every field is split
//! into repetitions, components and subcomponents, and every subcomponent is unescaped:
//!
//! - `\F\` `\S\` `\T\` `\R\` `\E\` (and `\P\` when a truncation character is declared) stand
//!   for the delimiters;
//! - `\Xhh…\` is bytes in hexadecimal (an even number of digits, at least two);
//! - `\.br\` (line break) becomes `\n`; `\H\` and `\N\` (highlighting on/off) are dropped;
//! - the other formatting commands (`\.sp…\`, `\.in…\`, `\.ce\` …) and the character-set
//!   escapes `\C…\`, `\M…\` and the local `\Z…\` are kept verbatim, escape characters included;
//! - anything else, or an escape character without its closing one, is
//!   [`ParseError::BadEscape`].
//!
//! Text is UTF-8, or ISO 8859-1 where a value is not valid UTF-8 (MSH-18 is not consulted).
//! Batches (`FHS`/`BHS`, several `MSH`) are not supported. Every error carries a [`Location`]
//! (segment, occurrence, field, repetition, component, subcomponent) for the ACK's `ERR`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use super::ack::{ErrorCode, Problem};

/// Longest segment accepted, in bytes, without its terminator.
pub const MAX_SEGMENT_BYTES: usize = 64 * 1024;

/// The delimiters a message declares in MSH-1 and MSH-2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delimiters {
    /// Field separator (MSH-1), usually `|`.
    pub field: u8,
    /// Component separator, usually `^`.
    pub component: u8,
    /// Repetition separator, usually `~`.
    pub repetition: u8,
    /// Escape character, usually `\`.
    pub escape: u8,
    /// Subcomponent separator, usually `&`.
    pub subcomponent: u8,
    /// Truncation character (v2.7 and later), usually `#`, when declared.
    pub truncation: Option<u8>,
}

impl Default for Delimiters {
    fn default() -> Self {
        Self {
            field: b'|',
            component: b'^',
            repetition: b'~',
            escape: b'\\',
            subcomponent: b'&',
            truncation: None,
        }
    }
}

impl Delimiters {
    /// MSH-2 as written in a message, e.g. `^~\&`.
    pub fn encoding_characters(&self) -> String {
        let mut s: String = [
            self.component,
            self.repetition,
            self.escape,
            self.subcomponent,
        ]
        .iter()
        .map(|&b| b as char)
        .collect();
        if let Some(t) = self.truncation {
            s.push(t as char);
        }
        s
    }

    /// Reads MSH-1 and MSH-2 from the MSH segment; returns them and the offset of the
    /// separator that ends MSH-2 (or the segment's length).
    fn from_msh(line: &[u8]) -> Result<(Self, usize), ParseError> {
        let bad = |reason| Err(ParseError::BadEncodingCharacters { reason });
        let Some(&field) = line.get(3) else {
            return bad("MSH has no field separator");
        };
        let rest = &line[4..];
        let end = rest.iter().position(|&b| b == field).unwrap_or(rest.len());
        let enc = &rest[..end];
        if !(4..=5).contains(&enc.len()) {
            return bad("MSH-2 must have 4 characters (5 with a truncation character)");
        }
        let all: Vec<u8> = std::iter::once(field).chain(enc.iter().copied()).collect();
        if !all
            .iter()
            .all(|b| b.is_ascii_graphic() && !b.is_ascii_alphanumeric())
        {
            return bad(
                "delimiters must be printable ASCII characters other than letters and digits",
            );
        }
        if (1..all.len()).any(|i| all[..i].contains(&all[i])) {
            return bad("delimiters must all differ");
        }
        let delimiters = Self {
            field,
            component: enc[0],
            repetition: enc[1],
            escape: enc[2],
            subcomponent: enc[3],
            truncation: enc.get(4).copied(),
        };
        Ok((delimiters, 4 + end))
    }
}

/// Where in a message something is: the `ERR-2` error location (`ERL`). Numbers are 1-based.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// Segment name, e.g. `OBX`.
    pub segment: String,
    /// Which occurrence of that segment in the message (the third `OBX` is 3).
    pub sequence: u32,
    /// Field position, when known.
    pub field: Option<u32>,
    /// Repetition of the field, when known.
    pub repetition: Option<u32>,
    /// Component, when known.
    pub component: Option<u32>,
    /// Subcomponent, when known.
    pub subcomponent: Option<u32>,
}

impl Location {
    /// A whole segment. (Numbers past `u32::MAX`, which a message within the limits cannot
    /// reach, are stored as `u32::MAX`.)
    pub fn new(segment: impl Into<String>, sequence: usize) -> Self {
        Self {
            segment: segment.into(),
            sequence: number(sequence),
            field: None,
            repetition: None,
            component: None,
            subcomponent: None,
        }
    }

    /// The same place narrowed to a field.
    pub fn with_field(mut self, field: usize) -> Self {
        self.field = Some(number(field));
        self
    }

    /// The same place narrowed to a repetition.
    pub fn with_repetition(mut self, repetition: usize) -> Self {
        self.repetition = Some(number(repetition));
        self
    }

    /// The same place narrowed to a component.
    pub fn with_component(mut self, component: usize) -> Self {
        self.component = Some(number(component));
        self
    }

    /// The same place narrowed to a subcomponent.
    pub fn with_subcomponent(mut self, subcomponent: usize) -> Self {
        self.subcomponent = Some(number(subcomponent));
        self
    }
}

fn number(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl fmt::Display for Location {
    /// `OBX[3]-5[1].2.1`: segment and occurrence, then field, repetition, component and
    /// subcomponent as far as known.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.segment, self.sequence)?;
        if let Some(field) = self.field {
            write!(f, "-{field}")?;
            if let Some(r) = self.repetition {
                write!(f, "[{r}]")?;
            }
            if let Some(c) = self.component {
                write!(f, ".{c}")?;
                if let Some(s) = self.subcomponent {
                    write!(f, ".{s}")?;
                }
            }
        }
        Ok(())
    }
}

/// Why bytes are not a well-formed HL7 v2 message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The first segment is not `MSH` (or there is none): not an HL7 v2 message.
    #[error("the message does not begin with an MSH segment")]
    NoMsh,
    /// MSH-1/MSH-2 do not declare a usable set of delimiters.
    #[error("MSH-1/MSH-2 encoding characters are invalid: {reason}")]
    BadEncodingCharacters {
        /// What is wrong with them.
        reason: &'static str,
    },
    /// A segment is longer than [`MAX_SEGMENT_BYTES`].
    #[error("{location}: the segment is {len} bytes, more than the limit of {MAX_SEGMENT_BYTES}")]
    SegmentTooLong {
        /// The segment (its name as far as it can be read).
        location: Location,
        /// Its length in bytes.
        len: usize,
    },
    /// A segment does not begin with a name of three upper-case letters or digits.
    #[error("{location}: {name:?} is not a segment name (3 upper-case letters or digits)")]
    BadSegmentName {
        /// The segment (name cut to 3 characters).
        location: Location,
        /// What stands where the name should be (at most 16 characters).
        name: String,
    },
    /// A second `MSH` (batches are not supported).
    #[error("{location}: a second MSH segment (batches are not supported)")]
    RepeatedMsh {
        /// The second `MSH`.
        location: Location,
    },
    /// A malformed or unknown escape sequence, or an escape character never closed.
    #[error("{location}: malformed escape sequence {sequence:?}")]
    BadEscape {
        /// The subcomponent holding it.
        location: Location,
        /// The sequence from its escape character on (at most 16 characters).
        sequence: String,
    },
}

impl ParseError {
    /// Where the error is, when it is in a segment.
    pub fn location(&self) -> Option<&Location> {
        match self {
            ParseError::NoMsh => None,
            ParseError::BadEncodingCharacters { .. } => None,
            ParseError::SegmentTooLong { location, .. }
            | ParseError::BadSegmentName { location, .. }
            | ParseError::RepeatedMsh { location }
            | ParseError::BadEscape { location, .. } => Some(location),
        }
    }

    /// The error as an ACK reports it (HL7 table 0357 code, location, text).
    pub fn problem(&self) -> Problem {
        let (code, location) = match self {
            ParseError::NoMsh => (ErrorCode::SegmentSequence, None),
            ParseError::BadEncodingCharacters { .. } => (
                ErrorCode::DataType,
                Some(Location::new("MSH", 1).with_field(2)),
            ),
            ParseError::SegmentTooLong { location, .. }
            | ParseError::BadEscape { location, .. } => {
                (ErrorCode::DataType, Some(location.clone()))
            }
            ParseError::BadSegmentName { location, .. } | ParseError::RepeatedMsh { location } => {
                (ErrorCode::SegmentSequence, Some(location.clone()))
            }
        };
        Problem {
            code,
            location,
            message: self.to_string(),
        }
    }
}

/// A parsed HL7 v2 message: its delimiters and segments, `MSH` first.
///
/// It keeps the bytes it was parsed from (up to the last segment read) and where each segment
/// is; [`Segment`], [`Field`], [`Repetition`] and [`Component`] are views split and unescaped
/// when read. Parsing has checked every escape sequence, so reading cannot fail. Parsing takes
/// time and memory linear in the bytes (at worst about 12 bytes a byte, for a message of bare
/// three-letter segments; about 1 for ordinary ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    delimiters: Delimiters,
    raw: Vec<u8>,
    segments: Vec<SegmentInfo>,
}

/// Where a segment is in [`Message::raw`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct SegmentInfo {
    /// Three upper-case letters or digits.
    name: [u8; 3],
    /// Which occurrence of its name, from 1.
    sequence: usize,
    /// The segment's bytes are `start..end`.
    start: usize,
    end: usize,
    /// Where the fields split on the field separator begin (past `end` when there are none).
    fields_at: usize,
    /// The number of the first of them: 1, or 3 for `MSH`.
    first_field: usize,
}

/// MSH-9, the message type, e.g. `ORU^R01^ORU_R01`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageType {
    /// Message code, e.g. `ORU` (empty when absent).
    pub code: String,
    /// Trigger event, e.g. `R01` (empty when absent).
    pub trigger: String,
    /// Message structure, e.g. `ORU_R01` (empty when absent).
    pub structure: String,
}

impl Message {
    /// Parses a whole message.
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        parse(bytes, usize::MAX)
    }

    /// Parses only the first segment, `MSH`, e.g. to acknowledge a message whose body is
    /// broken.
    pub fn parse_header(bytes: &[u8]) -> Result<Self, ParseError> {
        parse(bytes, 1)
    }

    /// The delimiters from MSH-1/MSH-2.
    pub fn delimiters(&self) -> &Delimiters {
        &self.delimiters
    }

    /// All segments in order, `MSH` first.
    pub fn all_segments(&self) -> impl ExactSizeIterator<Item = Segment<'_>> + '_ {
        self.segments.iter().map(|info| Segment {
            message: self,
            info,
        })
    }

    /// The segments with this name, in order.
    pub fn segments<'a>(&'a self, name: &'a str) -> impl Iterator<Item = Segment<'a>> + 'a {
        self.all_segments().filter(move |s| s.name() == name)
    }

    /// The first segment with this name.
    pub fn segment(&self, name: &str) -> Option<Segment<'_>> {
        self.all_segments().find(|s| s.name() == name)
    }

    /// Field `n` (HL7 numbering, MSH-1 is the field separator) of the first segment named so.
    pub fn field(&self, segment: &str, n: usize) -> Option<Field<'_>> {
        self.segment(segment)?.field(n)
    }

    /// Component `component` of the first repetition of a field of the first segment named
    /// so; `None` when absent or empty.
    pub fn component(&self, segment: &str, field: usize, component: usize) -> Option<Cow<'_, str>> {
        self.segment(segment)?.component(field, component)
    }

    /// MSH-9, the message type.
    pub fn message_type(&self) -> MessageType {
        let part = |c| {
            self.component("MSH", 9, c)
                .map(Cow::into_owned)
                .unwrap_or_default()
        };
        MessageType {
            code: part(1),
            trigger: part(2),
            structure: part(3),
        }
    }

    /// MSH-10, the message control id.
    pub fn control_id(&self) -> Option<Cow<'_, str>> {
        self.component("MSH", 10, 1)
    }

    /// MSH-11, the processing id (`P` production, `D` debugging, `T` training).
    pub fn processing_id(&self) -> Option<Cow<'_, str>> {
        self.component("MSH", 11, 1)
    }

    /// MSH-12, the version id, e.g. `2.6`.
    pub fn version(&self) -> Option<Cow<'_, str>> {
        self.component("MSH", 12, 1)
    }
}

/// One segment of a [`Message`].
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    message: &'a Message,
    info: &'a SegmentInfo,
}

impl<'a> Segment<'a> {
    /// The segment's name, e.g. `OBX`.
    pub fn name(&self) -> &'a str {
        std::str::from_utf8(&self.info.name).unwrap_or_default()
    }

    /// Which occurrence of its name it is in the message, from 1.
    pub fn sequence(&self) -> usize {
        self.info.sequence
    }

    /// Field `n`, HL7 numbering from 1. For `MSH`, MSH-1 (the field separator) and MSH-2
    /// (the encoding characters) are given as written, not split or unescaped.
    pub fn field(&self, n: usize) -> Option<Field<'a>> {
        let info = self.info;
        let raw = &self.message.raw;
        let d = &self.message.delimiters;
        let literal = |bytes: &'a [u8]| Field {
            raw: bytes,
            d,
            literal: true,
        };
        match n {
            1 if info.first_field == 3 => {
                return Some(literal(&raw[info.start + 3..info.start + 4]));
            }
            2 if info.first_field == 3 => {
                return Some(literal(&raw[info.start + 4..info.fields_at - 1]));
            }
            _ => {}
        }
        let index = n.checked_sub(info.first_field)?;
        let fields = raw.get(info.fields_at..info.end)?;
        let raw = fields.split(|&b| b == d.field).nth(index)?;
        Some(Field {
            raw,
            d,
            literal: false,
        })
    }

    /// Component `component` of the first repetition of field `field`; `None` when absent
    /// or empty.
    pub fn component(&self, field: usize, component: usize) -> Option<Cow<'a, str>> {
        self.field(field)?.component(component)
    }

    /// The location of this segment, or of one of its fields.
    pub fn location(&self, field: Option<usize>) -> Location {
        let location = Location::new(self.name(), self.sequence());
        match field {
            Some(n) => location.with_field(n),
            None => location,
        }
    }
}

/// One field: its repetitions (an empty field has one empty repetition).
#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    raw: &'a [u8],
    d: &'a Delimiters,
    /// MSH-1 and MSH-2: not split nor unescaped.
    literal: bool,
}

impl<'a> Field<'a> {
    /// The repetitions.
    pub fn repetitions(&self) -> impl Iterator<Item = Repetition<'a>> + 'a {
        let (d, literal) = (self.d, self.literal);
        split(self.raw, d.repetition, literal).map(move |raw| Repetition { raw, d, literal })
    }

    /// The first repetition.
    pub fn first(&self) -> Repetition<'a> {
        Repetition {
            raw: first_piece(self.raw, self.d.repetition, self.literal),
            d: self.d,
            literal: self.literal,
        }
    }

    /// Component `n` of the first repetition; `None` when absent or empty.
    pub fn component(&self, n: usize) -> Option<Cow<'a, str>> {
        self.first().text(n)
    }

    /// The text when the field is a single value (one repetition, component and
    /// subcomponent), else `None`.
    pub fn as_single(&self) -> Option<Cow<'a, str>> {
        let d = self.d;
        let separators = [d.repetition, d.component, d.subcomponent];
        let single = self.literal || !self.raw.iter().any(|b| separators.contains(b));
        single.then(|| text(self.raw, d, self.literal))
    }

    /// Whether the field has nothing but separators.
    pub fn is_empty(&self) -> bool {
        is_blank(
            self.raw,
            self.literal,
            &[self.d.repetition, self.d.component, self.d.subcomponent],
        )
    }

    /// The field written with these delimiters, escaping its text.
    pub fn encode(&self, delimiters: &Delimiters) -> String {
        let join = |parts: Vec<String>, sep: u8| parts.join((sep as char).to_string().as_str());
        let reps = self
            .repetitions()
            .map(|r| {
                let comps = r
                    .components()
                    .map(|c| {
                        let subs = c.subcomponents().map(|s| escape(&s, delimiters)).collect();
                        join(subs, delimiters.subcomponent)
                    })
                    .collect();
                join(comps, delimiters.component)
            })
            .collect();
        join(reps, delimiters.repetition)
    }
}

/// One repetition of a field: its components.
#[derive(Debug, Clone, Copy)]
pub struct Repetition<'a> {
    raw: &'a [u8],
    d: &'a Delimiters,
    literal: bool,
}

impl<'a> Repetition<'a> {
    /// The components.
    pub fn components(&self) -> impl Iterator<Item = Component<'a>> + 'a {
        let (d, literal) = (self.d, self.literal);
        split(self.raw, d.component, literal).map(move |raw| Component { raw, d, literal })
    }

    /// Component `n`, from 1.
    pub fn component(&self, n: usize) -> Option<Component<'a>> {
        self.components().nth(n.checked_sub(1)?)
    }

    /// The text (first subcomponent) of component `n`; `None` when absent or empty.
    pub fn text(&self, n: usize) -> Option<Cow<'a, str>> {
        Some(self.component(n)?.text()).filter(|t| !t.is_empty())
    }

    /// Whether the repetition has nothing but separators.
    pub fn is_empty(&self) -> bool {
        is_blank(
            self.raw,
            self.literal,
            &[self.d.component, self.d.subcomponent],
        )
    }
}

/// One component: its subcomponents.
#[derive(Debug, Clone, Copy)]
pub struct Component<'a> {
    raw: &'a [u8],
    d: &'a Delimiters,
    literal: bool,
}

impl<'a> Component<'a> {
    /// The subcomponents, unescaped (at least one).
    pub fn subcomponents(&self) -> impl Iterator<Item = Cow<'a, str>> + 'a {
        let (d, literal) = (self.d, self.literal);
        split(self.raw, d.subcomponent, literal).map(move |raw| text(raw, d, literal))
    }

    /// The first subcomponent, unescaped.
    pub fn text(&self) -> Cow<'a, str> {
        text(
            first_piece(self.raw, self.d.subcomponent, self.literal),
            self.d,
            self.literal,
        )
    }
}

/// The pieces of `raw` between separators (all of it when `literal`).
fn split(raw: &[u8], separator: u8, literal: bool) -> impl Iterator<Item = &[u8]> {
    raw.split(move |&b| !literal && b == separator)
}

/// The piece of `raw` before the first separator.
fn first_piece(raw: &[u8], separator: u8, literal: bool) -> &[u8] {
    match raw.iter().position(|&b| b == separator) {
        Some(end) if !literal => &raw[..end],
        _ => raw,
    }
}

/// Whether `raw` has nothing but `separators` (nothing at all when `literal`).
fn is_blank(raw: &[u8], literal: bool, separators: &[u8]) -> bool {
    if literal {
        return raw.is_empty();
    }
    raw.iter().all(|b| separators.contains(b))
}

/// A subcomponent's text: unescaped (unless `literal`), UTF-8 or else ISO 8859-1.
fn text<'a>(raw: &'a [u8], d: &Delimiters, literal: bool) -> Cow<'a, str> {
    if literal || !raw.contains(&d.escape) {
        return match std::str::from_utf8(raw) {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => Cow::Owned(latin1(raw)),
        };
    }
    let mut out = Vec::with_capacity(raw.len());
    match scan_escapes(raw, d, Some(&mut out)) {
        Ok(()) => Cow::Owned(String::from_utf8(out).unwrap_or_else(|e| latin1(e.as_bytes()))),
        // Parsing checked every escape sequence; were one bad, show the bytes as they are.
        Err(_) => String::from_utf8_lossy(raw),
    }
}

fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

/// Writes text for an HL7 field with these delimiters: delimiters become `\F\`, `\S\`,
/// `\T\`, `\R\`, `\E\` (`\P\` for a truncation character) and ASCII control characters
/// (carriage return, the MLLP framing bytes …) `\Xhh\`.
pub fn escape(text: &str, delimiters: &Delimiters) -> String {
    let d = delimiters;
    let esc = d.escape as char;
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        let named = match u8::try_from(ch) {
            Ok(b) if b == d.field => Some('F'),
            Ok(b) if b == d.component => Some('S'),
            Ok(b) if b == d.subcomponent => Some('T'),
            Ok(b) if b == d.repetition => Some('R'),
            Ok(b) if b == d.escape => Some('E'),
            Ok(b) if Some(b) == d.truncation => Some('P'),
            _ => None,
        };
        if let Some(code) = named {
            out.extend([esc, code, esc]);
        } else if ch.is_ascii_control() {
            out.push(esc);
            out.push_str(&format!("X{:02X}", ch as u32));
            out.push(esc);
        } else {
            out.push(ch);
        }
    }
    out
}

/// Parses up to `max_segments` segments.
fn parse(bytes: &[u8], max_segments: usize) -> Result<Message, ParseError> {
    let mut delimiters: Option<Delimiters> = None;
    let mut segments: Vec<SegmentInfo> = Vec::new();
    let mut counts: HashMap<[u8; 3], usize> = HashMap::new();
    let mut start = 0;
    for line in bytes.split(|&b| b == b'\r' || b == b'\n') {
        let line_start = start;
        start += line.len() + 1;
        if line.is_empty() {
            continue;
        }
        if segments.len() == max_segments {
            break;
        }
        let info = match &delimiters {
            None => {
                let (d, info) = parse_msh(line, line_start)?;
                delimiters = Some(d);
                counts.insert(info.name, 1);
                info
            }
            Some(d) => parse_segment(line, line_start, d, &mut counts)?,
        };
        segments.push(info);
    }
    let (Some(delimiters), Some(last)) = (delimiters, segments.last()) else {
        return Err(ParseError::NoMsh);
    };
    Ok(Message {
        delimiters,
        raw: bytes[..last.end].to_vec(),
        segments,
    })
}

/// Reads the first segment, which must be `MSH`.
fn parse_msh(line: &[u8], start: usize) -> Result<(Delimiters, SegmentInfo), ParseError> {
    if !line.starts_with(b"MSH") {
        return Err(ParseError::NoMsh);
    }
    if line.len() > MAX_SEGMENT_BYTES {
        return Err(ParseError::SegmentTooLong {
            location: Location::new("MSH", 1),
            len: line.len(),
        });
    }
    let (d, msh2_end) = Delimiters::from_msh(line)?;
    if let Some(fields) = line.get(msh2_end + 1..) {
        check_escapes(fields, &d, "MSH", 1, 3)?;
    }
    let info = SegmentInfo {
        name: *b"MSH",
        sequence: 1,
        start,
        end: start + line.len(),
        fields_at: start + msh2_end + 1,
        first_field: 3,
    };
    Ok((d, info))
}

/// Reads a segment other than the first.
fn parse_segment(
    line: &[u8],
    start: usize,
    d: &Delimiters,
    counts: &mut HashMap<[u8; 3], usize>,
) -> Result<SegmentInfo, ParseError> {
    let name_end = line
        .iter()
        .position(|&b| b == d.field)
        .unwrap_or(line.len());
    let raw_name = &line[..name_end];
    let name: Option<[u8; 3]> = raw_name.try_into().ok();
    let location = || {
        let shown = String::from_utf8_lossy(&raw_name[..raw_name.len().min(3)]).into_owned();
        let earlier = name.and_then(|n| counts.get(&n).copied()).unwrap_or(0);
        Location::new(shown, earlier + 1)
    };
    if line.len() > MAX_SEGMENT_BYTES {
        return Err(ParseError::SegmentTooLong {
            location: location(),
            len: line.len(),
        });
    }
    let valid = |n: &[u8; 3]| {
        n[0].is_ascii_uppercase()
            && n[1..]
                .iter()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    };
    let Some(name) = name.filter(valid) else {
        let shown = String::from_utf8_lossy(&raw_name[..raw_name.len().min(16)]).into_owned();
        return Err(ParseError::BadSegmentName {
            location: location(),
            name: shown,
        });
    };
    if &name == b"MSH" {
        return Err(ParseError::RepeatedMsh {
            location: location(),
        });
    }
    let sequence = location().sequence as usize;
    let name_text = std::str::from_utf8(&name).unwrap_or_default();
    if let Some(fields) = line.get(name_end + 1..) {
        check_escapes(fields, d, name_text, sequence, 1)?;
    }
    counts.insert(name, sequence);
    Ok(SegmentInfo {
        name,
        sequence,
        start,
        end: start + line.len(),
        fields_at: start + name_end + 1,
        first_field: 1,
    })
}

/// Checks every escape sequence in `fields` (the fields of a segment from number `first`).
fn check_escapes(
    fields: &[u8],
    d: &Delimiters,
    name: &str,
    sequence: usize,
    first: usize,
) -> Result<(), ParseError> {
    if !fields.contains(&d.escape) {
        return Ok(());
    }
    for (f, field) in fields.split(|&b| b == d.field).enumerate() {
        if !field.contains(&d.escape) {
            continue;
        }
        for (r, rep) in field.split(|&b| b == d.repetition).enumerate() {
            for (c, component) in rep.split(|&b| b == d.component).enumerate() {
                for (s, sub) in component.split(|&b| b == d.subcomponent).enumerate() {
                    scan_escapes(sub, d, None).map_err(|sequence_text| ParseError::BadEscape {
                        location: Location::new(name, sequence)
                            .with_field(first + f)
                            .with_repetition(r + 1)
                            .with_component(c + 1)
                            .with_subcomponent(s + 1),
                        sequence: sequence_text,
                    })?;
                }
            }
        }
    }
    Ok(())
}

/// Reads the escape sequences of one subcomponent, appending its unescaped bytes to `out`
/// when given; on error returns the offending sequence (at most 16 characters).
fn scan_escapes(raw: &[u8], d: &Delimiters, mut out: Option<&mut Vec<u8>>) -> Result<(), String> {
    let mut emit = |bytes: &[u8]| {
        if let Some(out) = out.as_deref_mut() {
            out.extend_from_slice(bytes);
        }
    };
    let mut i = 0;
    while i < raw.len() {
        let Some(offset) = raw[i..].iter().position(|&b| b == d.escape) else {
            emit(&raw[i..]);
            break;
        };
        emit(&raw[i..i + offset]);
        i += offset;
        let shown = |len: usize| {
            let end = raw.len().min(i + len).min(i + 16);
            String::from_utf8_lossy(&raw[i..end]).into_owned()
        };
        let Some(len) = raw[i + 1..].iter().position(|&b| b == d.escape) else {
            return Err(shown(raw.len() - i));
        };
        let body = &raw[i + 1..i + 1 + len];
        match body {
            b"F" => emit(&[d.field]),
            b"S" => emit(&[d.component]),
            b"T" => emit(&[d.subcomponent]),
            b"R" => emit(&[d.repetition]),
            b"E" => emit(&[d.escape]),
            b"P" if d.truncation.is_some() => emit(d.truncation.as_slice()),
            b"H" | b"N" => {}
            b".br" => emit(b"\n"),
            [b'X', hex @ ..] => emit(&decode_hex(hex).ok_or_else(|| shown(len + 2))?),
            [b'.', command @ ..] | [b'C' | b'M' | b'Z', command @ ..]
                if !command.is_empty()
                    && command
                        .iter()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-')) =>
            {
                emit(&raw[i..i + len + 2]);
            }
            _ => return Err(shown(len + 2)),
        }
        i += len + 2;
    }
    Ok(())
}

/// Hex digits in pairs to bytes; `None` unless there is at least one pair and all are hex.
fn decode_hex(hex: &[u8]) -> Option<Vec<u8>> {
    if hex.is_empty() || !hex.len().is_multiple_of(2) {
        return None;
    }
    hex.chunks(2)
        .map(|pair| {
            let digit = |b: u8| (b as char).to_digit(16);
            Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(text: &str) -> Result<Message, ParseError> {
        Message::parse(text.as_bytes())
    }

    #[test]
    fn hl7_parses_header_fields_and_structure() {
        let m = msg(
            "MSH|^~\\&|MON^0123456789ABCDEF^EUI-64|FAC|RCV|RFAC|20250612093319+0200||ORU^R01^ORU_R01|C1|P|2.6\r\
             PID|||123^^^HOSP&1.2.3&ISO^MR~456^^^OTHER^PI\r\
             OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1|72|264864^MDC_DIM_BEAT_PER_MIN^MDC\r",
        )
        .expect("parses");
        assert_eq!(m.delimiters(), &Delimiters::default());
        assert_eq!(
            m.field("MSH", 1)
                .map(|f| f.first().text(1).unwrap_or_default().into_owned()),
            Some("|".to_owned())
        );
        assert_eq!(
            m.field("MSH", 2).and_then(|f| f.component(1)).as_deref(),
            Some("^~\\&")
        );
        assert_eq!(
            m.component("MSH", 3, 2).as_deref(),
            Some("0123456789ABCDEF")
        );
        assert_eq!(
            m.message_type(),
            MessageType {
                code: "ORU".into(),
                trigger: "R01".into(),
                structure: "ORU_R01".into()
            }
        );
        assert_eq!(m.control_id().as_deref(), Some("C1"));
        assert_eq!(m.processing_id().as_deref(), Some("P"));
        assert_eq!(m.version().as_deref(), Some("2.6"));
        let pid3 = m.field("PID", 3).expect("PID-3");
        assert_eq!(pid3.repetitions().count(), 2);
        let authority = pid3.first().component(4).expect("authority");
        let subs: Vec<_> = authority.subcomponents().collect();
        assert_eq!(subs, ["HOSP", "1.2.3", "ISO"]);
        let second = pid3.repetitions().nth(1).expect("second");
        assert_eq!(second.text(1).as_deref(), Some("456"));
        let obx = m.segment("OBX").expect("OBX");
        assert_eq!((obx.name(), obx.sequence()), ("OBX", 1));
        assert_eq!(obx.component(5, 1).as_deref(), Some("72"));
        assert_eq!(obx.component(7, 1), None, "absent field");
        assert!(obx.field(0).is_none());
        assert_eq!(m.segments("OBX").count(), 1);
        assert_eq!(m.all_segments().len(), 3);
        assert!(m.segment("PV1").is_none());
    }

    #[test]
    fn hl7_accepts_lf_and_crlf_segment_separators() {
        for sep in ["\n", "\r\n", "\r\r"] {
            let text = format!("MSH|^~\\&|A|||||ORU^R01|1|P|2.6{sep}PID|||1{sep}OBX|1{sep}");
            let m = msg(&text).expect("parses");
            let names: Vec<_> = m.all_segments().map(|s| s.name()).collect();
            assert_eq!(names, ["MSH", "PID", "OBX"], "separator {sep:?}");
        }
    }

    #[test]
    fn hl7_counts_segment_occurrences() {
        let m = msg("MSH|^~\\&\rOBX|1\rNTE|1\rOBX|2\rOBX|3").expect("parses");
        let seqs: Vec<_> = m
            .segments("OBX")
            .map(|s| (s.sequence(), s.component(1, 1).map(Cow::into_owned)))
            .collect();
        let expected = [(1, "1"), (2, "2"), (3, "3")].map(|(n, t)| (n, Some(t.to_owned())));
        assert_eq!(seqs, expected);
    }

    #[test]
    fn hl7_honours_declared_delimiters() {
        let m = msg("MSH#*$!%#A*B#\rOBX#1#NM#1*x*MDC$2*y").expect("parses");
        let d = m.delimiters();
        assert_eq!(
            (d.field, d.component, d.repetition, d.escape, d.subcomponent),
            (b'#', b'*', b'$', b'!', b'%')
        );
        assert_eq!(m.component("MSH", 3, 2).as_deref(), Some("B"));
        let obx3 = m.field("OBX", 3).expect("OBX-3");
        assert_eq!(obx3.repetitions().count(), 2);
        let second = obx3.repetitions().nth(1).expect("second");
        assert_eq!(second.text(2).as_deref(), Some("y"));
        // `!` is the escape character here: `a!b%c` has an unclosed escape.
        assert!(matches!(
            msg("MSH#*$!%#A\rOBX#1#a!b"),
            Err(ParseError::BadEscape { .. })
        ));
    }

    #[test]
    fn hl7_truncation_character_is_accepted() {
        let m = msg("MSH|^~\\&#|A\rNTE|1||x\\P\\y#").expect("parses");
        assert_eq!(m.delimiters().truncation, Some(b'#'));
        assert_eq!(m.delimiters().encoding_characters(), "^~\\&#");
        assert_eq!(m.component("NTE", 3, 1).as_deref(), Some("x#y#"));
    }

    #[test]
    fn hl7_unescapes_delimiters_hex_and_formatting() {
        let m = msg(
            "MSH|^~\\&\rNTE|1||a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f|\\X41C3A9\\|x\\.br\\y|\\H\\bold\\N\\|\\.sp2\\z|\\C2842\\k|\\Zab\\",
        )
        .expect("parses");
        let nte = m.segment("NTE").expect("NTE");
        assert_eq!(nte.component(3, 1).as_deref(), Some("a|b^c&d~e\\f"));
        assert_eq!(nte.component(4, 1).as_deref(), Some("Aé"));
        assert_eq!(nte.component(5, 1).as_deref(), Some("x\ny"));
        assert_eq!(nte.component(6, 1).as_deref(), Some("bold"));
        assert_eq!(nte.component(7, 1).as_deref(), Some("\\.sp2\\z"));
        assert_eq!(nte.component(8, 1).as_deref(), Some("\\C2842\\k"));
        assert_eq!(nte.component(9, 1).as_deref(), Some("\\Zab\\"));
    }

    #[test]
    fn hl7_non_utf8_text_is_read_as_latin1() {
        let m = Message::parse(b"MSH|^~\\&\rNTE|1||M\xfcller|\\XFC\\").expect("parses");
        assert_eq!(m.component("NTE", 3, 1).as_deref(), Some("Müller"));
        assert_eq!(m.component("NTE", 4, 1).as_deref(), Some("ü"));
    }

    #[test]
    fn hl7_bad_escapes_are_located() {
        for (body, seq) in [
            ("a\\Q\\b", "\\Q\\"),
            ("\\X4\\", "\\X4\\"),
            ("\\XZZ\\", "\\XZZ\\"),
            ("\\X\\", "\\X\\"),
            ("\\\\", "\\\\"),
            ("abc\\F", "\\F"),
            ("\\P\\", "\\P\\"),
            ("\\.\\", "\\.\\"),
        ] {
            let text = format!("MSH|^~\\&\rOBX|1\rOBX|2|ST|x^y^z~1^2^{body}");
            let err = msg(&text).expect_err(body);
            let expected = Location::new("OBX", 2)
                .with_field(3)
                .with_repetition(2)
                .with_component(3)
                .with_subcomponent(1);
            assert_eq!(
                err,
                ParseError::BadEscape {
                    location: expected,
                    sequence: seq.into()
                },
                "{body}"
            );
            assert_eq!(err.problem().code, ErrorCode::DataType);
        }
    }

    #[test]
    fn hl7_requires_msh_first() {
        for text in [
            "",
            "\r\n",
            "PID|||1\rMSH|^~\\&",
            "hello world",
            "GET / HTTP/1.1\r\n\r\n",
            "MS",
        ] {
            assert_eq!(msg(text), Err(ParseError::NoMsh), "{text:?}");
        }
        assert_eq!(ParseError::NoMsh.problem().code, ErrorCode::SegmentSequence);
        assert_eq!(ParseError::NoMsh.location(), None);
    }

    #[test]
    fn hl7_rejects_bad_encoding_characters() {
        for text in [
            "MSH",
            "MSH|",
            "MSH|^~\\",
            "MSH|^~\\&#!|A",
            "MSH|^~\\^|A",
            "MSH|^~|&|A",
            "MSH|^~a&|A",
            "MSH|^~ &|A",
            "MSH1^~\\&1A",
            "MSH|^~\\\x01|A",
        ] {
            assert!(
                matches!(msg(text), Err(ParseError::BadEncodingCharacters { .. })),
                "{text:?}: {:?}",
                msg(text)
            );
        }
        let problem = msg("MSH|^^\\&|A").expect_err("dup").problem();
        assert_eq!(problem.code, ErrorCode::DataType);
        assert_eq!(
            problem.location,
            Some(Location::new("MSH", 1).with_field(2))
        );
    }

    #[test]
    fn hl7_limits_segment_length() {
        let long = "9".repeat(MAX_SEGMENT_BYTES);
        let at_limit = format!("MSH|^~\\&\rNTE|1||{}", &long[..MAX_SEGMENT_BYTES - 8]);
        assert!(msg(&at_limit).is_ok());
        let text = format!("MSH|^~\\&\rOBX|1\rOBX|2|NM|x||{long}\rOBX|3");
        let err = msg(&text).expect_err("too long");
        assert_eq!(
            err,
            ParseError::SegmentTooLong {
                location: Location::new("OBX", 2),
                len: MAX_SEGMENT_BYTES + 12
            }
        );
        let text = format!("MSH|^~\\&|{long}");
        assert!(
            matches!(msg(&text), Err(ParseError::SegmentTooLong { location, .. }) if location.segment == "MSH")
        );
    }

    #[test]
    fn hl7_rejects_bad_segment_names_and_batches() {
        assert!(matches!(
            msg("MSH|^~\\&\rOBX|1\robx|2"),
            Err(ParseError::BadSegmentName { location, .. }) if location == Location::new("obx", 1)
        ));
        assert!(matches!(
            msg("MSH|^~\\&\rOBXX|2"),
            Err(ParseError::BadSegmentName { .. })
        ));
        assert!(matches!(
            msg("MSH|^~\\&\rOB|2"),
            Err(ParseError::BadSegmentName { .. })
        ));
        assert!(matches!(
            msg("MSH|^~\\&\rGET / HTTP/1.1"),
            Err(ParseError::BadSegmentName { .. })
        ));
        assert!(msg("MSH|^~\\&\rZX1|custom").is_ok());
        assert!(msg("MSH|^~\\&\rPV1").is_ok(), "a segment without fields");
        assert_eq!(
            msg("MSH|^~\\&\rMSH|^~\\&"),
            Err(ParseError::RepeatedMsh {
                location: Location::new("MSH", 2)
            })
        );
    }

    #[test]
    fn hl7_large_inputs_parse_in_linear_time() {
        let mut text = String::from("MSH|^~\\&\r");
        text.push_str(&"NTE\r".repeat(100_000));
        let m = msg(&text).expect("parses");
        assert_eq!(
            m.segments("NTE").last().map(|s| s.sequence()),
            Some(100_000)
        );
        let text = format!("MSH|^~\\&\rNTE{}x", "|".repeat(60_000));
        let m = msg(&text).expect("parses");
        let nte = m.segment("NTE").expect("NTE");
        assert_eq!(nte.component(60_000, 1).as_deref(), Some("x"));
        assert!(nte.field(60_001).is_none());
    }

    #[test]
    fn hl7_parse_header_stops_after_msh() {
        let m = Message::parse_header(b"MSH|^~\\&|A||||||ORU^R01|X|P|2.6\rOBX|1|NM|a||\\Q\\")
            .expect("header");
        assert_eq!(m.all_segments().len(), 1);
        assert_eq!(m.control_id().as_deref(), Some("X"));
        assert!(Message::parse(b"MSH|^~\\&|A||||||ORU^R01|X|P|2.6\rOBX|1|NM|a||\\Q\\").is_err());
    }

    #[test]
    fn hl7_escape_round_trips() {
        let d = Delimiters::default();
        let text = "a|b^c&d~e\\f\rg\u{b}h\u{1c}é";
        let escaped = escape(text, &d);
        assert_eq!(
            escaped,
            "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\X0D\\g\\X0B\\h\\X1C\\é"
        );
        let m = msg(&format!("MSH|^~\\&\rNTE|1||{escaped}")).expect("parses");
        assert_eq!(m.component("NTE", 3, 1).as_deref(), Some(text));
        let field = m.field("NTE", 3).expect("field");
        assert_eq!(field.encode(&d), escaped);
    }

    #[test]
    fn hl7_field_encode_keeps_structure() {
        let m = msg("MSH|^~\\&\rPID|||1^^^A&B&ISO^MR~2\\S\\x").expect("parses");
        let pid3 = m.field("PID", 3).expect("PID-3");
        assert_eq!(
            pid3.encode(&Delimiters::default()),
            "1^^^A&B&ISO^MR~2\\S\\x"
        );
        assert!(!pid3.is_empty());
        assert!(m.field("PID", 2).is_some_and(|f| f.is_empty()));
    }

    #[test]
    fn hl7_location_display() {
        let l = Location::new("OBX", 3)
            .with_field(5)
            .with_repetition(1)
            .with_component(2)
            .with_subcomponent(1);
        assert_eq!(l.to_string(), "OBX[3]-5[1].2.1");
        assert_eq!(Location::new("PID", 1).to_string(), "PID[1]");
        assert_eq!(
            Location::new("OBX", 2)
                .with_field(6)
                .with_component(1)
                .to_string(),
            "OBX[2]-6.1"
        );
    }
}
