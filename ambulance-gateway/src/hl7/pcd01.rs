//! IHE PCD-01 (Communicate PCD Data) observation reports, `ORU^R01` (and `ORU^W01`-style
//! waveform feeds), with IEEE 11073-10101 (MDC) codes, mapped to [`Observations`].
//!
//! - Each `OBX` with value type `NM` and an MDC-coded OBX-3 (`147842^MDC_ECG_HEART_RATE^MDC`)
//!   becomes a [`Numeric`]. The codes of a [`Vital`] (see [`vital_for`]) are converted to its
//!   unit (°F and K to °C, kPa to mmHg) or refused; other codes are kept with their unit as
//!   sent. OBX-5 must be a number (`[+|-]digits[.digits]`); an empty OBX-5, and results whose
//!   status (OBX-11) is `X`, `D` or `W`, are skipped. `OBX` with other codings (LOINC, private)
//!   and other value types (`ST`, `CWE`, `NR` …) are skipped, but an `NM` value must be a number
//!   whatever its coding.
//! - Each `OBX` with value type `NA` or `MA` is a waveform ([`WaveformObs`]). `NA` separates
//!   samples with `^` and channels with `~`; `MA` separates channels with `^` and instants with
//!   `~`. As in the PCD waveform examples, its attributes are `NM` `OBX` one level below it in
//!   OBX-4 (`1.1.2.1` → `1.1.2.1.1`), in the same `OBR` group: `MDC_ATTR_SAMP_RATE` (required,
//!   in /s or Hz; OBX-3 often has code `0`, so the name is enough) and `MDC_ATTR_NU_MSMT_RES`
//!   (optional: the value of one sample step, whose unit is then the waveform's). Other
//!   `MDC_ATTR_*` `OBX` are not numerics and are skipped.
//! - Times (OBX-14, else the group's OBR-7, else MSH-7) are HL7 date/times. One without a UTC
//!   offset takes MSH-7's (HL7: the sender's time zone); if MSH-7 has none either the next
//!   source is used, and in the end the time the message was received.
//! - The source is MSH-3/MSH-4 and the first OBX-18 (equipment instance id); the patient is
//!   PID-3. One patient (`PID`) per message.

use std::borrow::Cow;

use super::ack::{ErrorCode, Problem, SUPPORTED_VERSIONS};
use super::dtm;
use super::fnv1a32;
use super::message::{Delimiters, Field, Location, Message, Repetition, Segment};
use crate::wire::{StreamId, Vital};

/// MDC_ATTR_SAMP_RATE, the sample rate attribute (partition 1, code 2456).
pub const MDC_ATTR_SAMP_RATE: u32 = 2456;
/// MDC_DIM_PERCENT, %.
pub const MDC_DIM_PERCENT: u32 = 262_688;
/// MDC_DIM_BEAT_PER_MIN, /min (beats).
pub const MDC_DIM_BEAT_PER_MIN: u32 = 264_864;
/// MDC_DIM_RESP_PER_MIN, /min (breaths).
pub const MDC_DIM_RESP_PER_MIN: u32 = 264_928;
/// MDC_DIM_MMHG, mmHg.
pub const MDC_DIM_MMHG: u32 = 266_016;
/// MDC_DIM_KILO_PASCAL, kPa.
pub const MDC_DIM_KILO_PASCAL: u32 = 265_987;
/// MDC_DIM_DEGC, °C.
pub const MDC_DIM_DEGC: u32 = 268_192;
/// MDC_DIM_FAHR, °F.
pub const MDC_DIM_FAHR: u32 = 266_560;
/// MDC_DIM_KELVIN, K.
pub const MDC_DIM_KELVIN: u32 = 266_528;
/// MDC_DIM_PER_SEC, /s (a sample rate).
pub const MDC_DIM_PER_SEC: u32 = 264_608;
/// MDC_DIM_HZ, Hz.
pub const MDC_DIM_HZ: u32 = 264_640;
/// MDC_DIM_MILLI_VOLT, mV.
pub const MDC_DIM_MILLI_VOLT: u32 = 266_418;

/// mmHg in one kPa (1 mmHg = 133.322387415 Pa).
const MMHG_PER_KPA: f64 = 1000.0 / 133.322_387_415;
/// Longest value quoted in an error message, in characters.
const QUOTE_CHARS: usize = 40;

/// The vital an MDC code measures, for the codes medrelay takes as vitals:
/// HR 147842 (MDC_ECG_HEART_RATE); SpO2 150456 (MDC_PULS_OXIM_SAT_O2); NIBP 150021/150022/150023
/// (MDC_PRESS_BLD_NONINV_SYS/DIA/MEAN); RR 151562 (MDC_RESP_RATE) and 151578
/// (MDC_TTHOR_RESP_RATE, impedance); temperature 150364 (MDC_TEMP_BODY), 150344 (MDC_TEMP, what
/// bedside monitors send), 150392 (MDC_TEMP_TYMP), 188420/188424/188428/188452
/// (MDC_TEMP_RECT/ORAL/EAR/AXILLA); EtCO2 151708 (MDC_AWAY_CO2_ET). Pulse rate 149530
/// (MDC_PULS_OXIM_PULS_RATE), NIBP 150020 and all others measure no [`Vital`].
pub fn vital_for(code: u32) -> Option<Vital> {
    match code {
        147_842 => Some(Vital::Hr),
        150_456 => Some(Vital::Spo2),
        150_021 => Some(Vital::NibpSys),
        150_022 => Some(Vital::NibpDia),
        150_023 => Some(Vital::NibpMean),
        151_562 | 151_578 => Some(Vital::Rr),
        150_364 | 150_344 | 150_392 | 188_420 | 188_424 | 188_428 | 188_452 => Some(Vital::Temp),
        151_708 => Some(Vital::Etco2),
        _ => None,
    }
}

/// The MDC unit code of a vital's unit (0 for the GPS vitals, which have none).
pub fn vital_unit(vital: Vital) -> u32 {
    match vital {
        Vital::Hr => MDC_DIM_BEAT_PER_MIN,
        Vital::Spo2 => MDC_DIM_PERCENT,
        Vital::NibpSys | Vital::NibpDia | Vital::NibpMean | Vital::Etco2 => MDC_DIM_MMHG,
        Vital::Rr => MDC_DIM_RESP_PER_MIN,
        Vital::Temp => MDC_DIM_DEGC,
        Vital::Lat | Vital::Lon => 0,
    }
}

/// What one message reported.
#[derive(Debug, Clone, PartialEq)]
pub struct Observations {
    /// Who sent it.
    pub source: Source,
    /// Whose values they are (PID-3), when given.
    pub patient: Option<Patient>,
    /// When (µs since the Unix epoch): the first OBR-7, else MSH-7, else the time received.
    pub time_us: i64,
    /// Where [`Observations::time_us`] came from.
    pub time_source: TimeSource,
    /// The numeric results, in message order.
    pub numerics: Vec<Numeric>,
    /// The waveforms, in message order.
    pub waveforms: Vec<WaveformObs>,
}

/// Where a message's time came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSource {
    /// OBR-7, the observation date/time.
    Request,
    /// MSH-7, the message date/time.
    Message,
    /// Neither was usable: the time the message was received.
    Received,
}

/// The sender of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// MSH-3 namespace id (component 1), e.g. `MINDRAY_EGATEWAY`.
    pub application: String,
    /// MSH-3 universal id (component 2), e.g. an EUI-64.
    pub application_id: String,
    /// MSH-4 namespace id.
    pub facility: String,
    /// The first OBX-18 equipment instance identifier (entity id), e.g. the monitor's EUI-64.
    pub device: Option<String>,
}

impl Source {
    /// A stream id for this source: the device (OBX-18), else MSH-3's universal id, else
    /// MSH-3 and MSH-4, else `HL7`; characters outside `[A-Za-z0-9._-]` become `-`, and an id
    /// longer than 32 characters is cut to 23 followed by `-` and a hash of the whole.
    pub fn stream_key(&self) -> StreamId {
        let basis = match self.device.as_deref() {
            Some(device) if !device.is_empty() => device.to_owned(),
            _ if !self.application_id.is_empty() => self.application_id.clone(),
            _ if !self.application.is_empty() || !self.facility.is_empty() => {
                format!("{}-{}", self.application, self.facility)
            }
            _ => "HL7".to_owned(),
        };
        let mut key: String = basis
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        if key.len() > crate::wire::MAX_STREAM_ID_LEN {
            key.truncate(23);
            key.push_str(&format!("-{:08x}", fnv1a32(basis.as_bytes())));
        }
        StreamId::try_from(key).expect("a non-empty key of at most 32 valid characters")
    }
}

/// A patient identifier (PID-3, the first repetition with an id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patient {
    /// The id (CX-1).
    pub id: String,
    /// The assigning authority (CX-4: its namespace id, else its universal id), may be empty.
    pub authority: String,
    /// The identifier type (CX-5), e.g. `MR`, may be empty.
    pub id_type: String,
}

/// One numeric result.
#[derive(Debug, Clone, PartialEq)]
pub struct Numeric {
    /// The MDC code (OBX-3).
    pub code: u32,
    /// The MDC reference id as sent (e.g. `MDC_ECG_HEART_RATE`), may be empty.
    pub label: String,
    /// The vital it measures, if one (see [`vital_for`]).
    pub vital: Option<Vital>,
    /// The value: in the vital's unit for a vital, else as sent.
    pub value: f64,
    /// The MDC unit code of `value` (the vital's unit for a vital; 0 when not known).
    pub unit_code: u32,
    /// OBX-4, the containment path (MDS.VMD.channel.metric).
    pub sub_id: String,
    /// When it was observed, µs since the Unix epoch.
    pub time_us: i64,
}

/// One channel of a waveform `OBX`.
#[derive(Debug, Clone, PartialEq)]
pub struct WaveformObs {
    /// The MDC code (OBX-3), 0 when not MDC-coded.
    pub code: u32,
    /// The MDC reference id or text as sent, e.g. `MDC_ECG_ELEC_POTL_II`.
    pub label: String,
    /// OBX-4.
    pub sub_id: String,
    /// Which channel of the `OBX` this is, from 0 (an `NA` or `MA` value may carry several).
    pub channel: usize,
    /// Samples per second.
    pub rate_hz: f64,
    /// The MDC unit code of the physical values (0 when not known).
    pub unit_code: u32,
    /// The value of one step of `samples` (MDC_ATTR_NU_MSMT_RES), when given.
    pub resolution: Option<f64>,
    /// The samples as sent; see [`WaveformObs::physical`].
    pub samples: Vec<f64>,
    /// When the first sample was taken, µs since the Unix epoch.
    pub time_us: i64,
}

impl WaveformObs {
    /// The samples in `unit_code`: each times the resolution, when given.
    pub fn physical(&self) -> impl Iterator<Item = f64> + '_ {
        let scale = self.resolution.unwrap_or(1.0);
        self.samples.iter().map(move |s| s * scale)
    }
}

/// Why a message cannot be taken as PCD-01 observations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    /// A required field is empty.
    #[error("{location}: {what} is missing")]
    Missing {
        /// Where it should be.
        location: Location,
        /// What it is.
        what: &'static str,
    },
    /// MSH-9 is not an `ORU`.
    #[error("MSH-9: message type {found:?} is not supported (ORU^R01 or ORU^W01)")]
    UnsupportedMessageType {
        /// MSH-9.1 as sent.
        found: String,
    },
    /// MSH-9 is an `ORU` with an event other than `R01` or `W01`.
    #[error("MSH-9: event {found:?} is not supported (ORU^R01 or ORU^W01)")]
    UnsupportedEvent {
        /// MSH-9.2 as sent.
        found: String,
    },
    /// MSH-11 is not `P`, `D` or `T`.
    #[error("MSH-11: processing id {found:?} is not supported (P, D or T)")]
    UnsupportedProcessingId {
        /// MSH-11.1 as sent.
        found: String,
    },
    /// MSH-12 is not a supported version.
    #[error("MSH-12: version {found:?} is not supported (2.3 to 2.9)")]
    UnsupportedVersion {
        /// MSH-12.1 as sent.
        found: String,
    },
    /// A value that must be a number is not.
    #[error("{location}: {value:?} is not a number")]
    NotNumeric {
        /// Where.
        location: Location,
        /// The value (at most 40 characters).
        value: String,
    },
    /// A date/time is malformed.
    #[error("{location}: {value:?} is not an HL7 date/time (YYYYMMDDHHMMSS[.S…][+/-ZZZZ])")]
    BadTime {
        /// Where.
        location: Location,
        /// The value (at most 40 characters).
        value: String,
    },
    /// A unit we cannot take (or convert) for what is measured.
    #[error("{location}: unit {unit:?} is not accepted for {what}")]
    Unit {
        /// The unit's field.
        location: Location,
        /// The unit as sent (at most 40 characters).
        unit: String,
        /// What was measured.
        what: String,
    },
    /// A waveform value or attribute is not usable.
    #[error("{location}: {reason}")]
    Waveform {
        /// Where.
        location: Location,
        /// Why.
        reason: &'static str,
    },
    /// A second `PID`.
    #[error("{location}: a second patient; send one patient (PID) per message")]
    SeveralPatients {
        /// The second `PID`.
        location: Location,
    },
}

impl MappingError {
    /// Where the error is, when in a segment.
    pub fn location(&self) -> Option<Location> {
        let msh = |field| Some(Location::new("MSH", 1).with_field(field));
        match self {
            MappingError::UnsupportedMessageType { .. } | MappingError::UnsupportedEvent { .. } => {
                msh(9)
            }
            MappingError::UnsupportedProcessingId { .. } => msh(11),
            MappingError::UnsupportedVersion { .. } => msh(12),
            MappingError::Missing { location, .. }
            | MappingError::NotNumeric { location, .. }
            | MappingError::BadTime { location, .. }
            | MappingError::Unit { location, .. }
            | MappingError::Waveform { location, .. }
            | MappingError::SeveralPatients { location } => Some(location.clone()),
        }
    }

    /// The error as an ACK reports it.
    pub fn problem(&self) -> Problem {
        let code = match self {
            MappingError::Missing { .. } => ErrorCode::RequiredFieldMissing,
            MappingError::UnsupportedMessageType { .. } => ErrorCode::UnsupportedMessageType,
            MappingError::UnsupportedEvent { .. } => ErrorCode::UnsupportedEventCode,
            MappingError::UnsupportedProcessingId { .. } => ErrorCode::UnsupportedProcessingId,
            MappingError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersionId,
            MappingError::NotNumeric { .. }
            | MappingError::BadTime { .. }
            | MappingError::Waveform { .. } => ErrorCode::DataType,
            MappingError::Unit { .. } => ErrorCode::TableValueNotFound,
            MappingError::SeveralPatients { .. } => ErrorCode::SegmentSequence,
        };
        Problem {
            code,
            location: self.location(),
            message: self.to_string(),
        }
    }
}

/// Checks MSH for what PCD-01 needs: `ORU^R01` or `ORU^W01`, a control id, processing id
/// `P`, `D` or `T`, and a supported version.
pub fn check_header(message: &Message) -> Result<(), MappingError> {
    let missing = |field, what| MappingError::Missing {
        location: Location::new("MSH", 1).with_field(field),
        what,
    };
    let kind = message.message_type();
    if kind.code.is_empty() {
        return Err(missing(9, "the message type"));
    }
    if kind.code != "ORU" {
        return Err(MappingError::UnsupportedMessageType {
            found: quote(&kind.code),
        });
    }
    if !matches!(kind.trigger.as_str(), "R01" | "W01") {
        return Err(MappingError::UnsupportedEvent {
            found: quote(&kind.trigger),
        });
    }
    if message.control_id().is_none() {
        return Err(missing(10, "the message control id"));
    }
    let processing = message
        .processing_id()
        .ok_or_else(|| missing(11, "the processing id"))?;
    if !matches!(&*processing, "P" | "D" | "T") {
        return Err(MappingError::UnsupportedProcessingId {
            found: quote(&processing),
        });
    }
    let version = message
        .version()
        .ok_or_else(|| missing(12, "the version id"))?;
    if !SUPPORTED_VERSIONS.contains(&&*version) {
        return Err(MappingError::UnsupportedVersion {
            found: quote(&version),
        });
    }
    Ok(())
}

/// Maps a parsed message (after [`check_header`], which this repeats); `now_us` is when it
/// was received, µs since the Unix epoch.
pub fn map(message: &Message, now_us: i64) -> Result<Observations, MappingError> {
    check_header(message)?;
    let msh = message
        .segment("MSH")
        .ok_or_else(|| MappingError::Missing {
            location: Location::new("MSH", 1),
            what: "MSH",
        })?;
    let msh_time = read_time(&msh, 7)?;
    let default_offset = msh_time.and_then(|t| t.offset_minutes);
    let msh_us = msh_time.and_then(|t| t.utc_us(default_offset));

    let mut patient = None;
    let mut groups: Vec<Group> = Vec::new();
    let mut first_obr_us = None;
    for segment in message.all_segments() {
        match segment.name() {
            "PID" if segment.sequence() > 1 => {
                return Err(MappingError::SeveralPatients {
                    location: segment.location(None),
                });
            }
            "PID" => patient = patient_of(&segment),
            "OBR" => {
                let time = read_time(&segment, 7)?.and_then(|t| t.utc_us(default_offset));
                if segment.sequence() == 1 {
                    first_obr_us = time;
                }
                groups.push(Group {
                    time_us: time,
                    observations: Vec::new(),
                });
            }
            "OBX" => match groups.last_mut() {
                Some(group) => group.observations.push(segment),
                None => groups.push(Group {
                    time_us: None,
                    observations: vec![segment],
                }),
            },
            _ => {}
        }
    }

    let (time_us, time_source) = match (first_obr_us, msh_us) {
        (Some(t), _) => (t, TimeSource::Request),
        (None, Some(t)) => (t, TimeSource::Message),
        (None, None) => (now_us, TimeSource::Received),
    };
    let device = message
        .segments("OBX")
        .find_map(|obx| obx.component(18, 1))
        .map(Cow::into_owned);
    let text = |field, component| {
        message
            .component("MSH", field, component)
            .map(Cow::into_owned)
            .unwrap_or_default()
    };
    let mut observations = Observations {
        source: Source {
            application: text(3, 1),
            application_id: text(3, 2),
            facility: text(4, 1),
            device,
        },
        patient,
        time_us,
        time_source,
        numerics: Vec::new(),
        waveforms: Vec::new(),
    };
    let context = Context {
        delimiters: *message.delimiters(),
        default_offset,
    };
    for group in &groups {
        let fallback_us = group.time_us.or(msh_us).unwrap_or(now_us);
        context.map_group(group, fallback_us, &mut observations)?;
    }
    Ok(observations)
}

/// The `OBX` after one `OBR` (or before any).
struct Group<'a> {
    time_us: Option<i64>,
    observations: Vec<Segment<'a>>,
}

/// What the mapping of every group needs.
struct Context {
    delimiters: Delimiters,
    default_offset: Option<i32>,
}

/// OBX-3, read.
struct ObservationId {
    /// The MDC code, when MDC-coded.
    code: Option<u32>,
    /// The MDC reference id, or the text or identifier as sent.
    label: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AttributeKind {
    SampleRate,
    Resolution,
    Other,
}

/// An attribute `OBX` of a waveform.
struct Attribute<'a> {
    /// OBX-4 of the waveform it belongs to.
    parent: String,
    kind: AttributeKind,
    value: f64,
    segment: Segment<'a>,
}

/// A unit as read from a CWE field.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Unit {
    /// An MDC unit code (also from a UCUM unit we know).
    Mdc(u32),
    /// UCUM `/min`: per minute, of what unsaid.
    PerMinute,
    /// Something else, as sent.
    Unknown(String),
    /// No unit.
    Absent,
}

impl Unit {
    /// The MDC code, 0 when not known.
    fn mdc_code(&self) -> u32 {
        match self {
            Unit::Mdc(code) => *code,
            Unit::PerMinute | Unit::Unknown(_) | Unit::Absent => 0,
        }
    }

    fn describe(&self) -> String {
        match self {
            Unit::Mdc(code) => code.to_string(),
            Unit::PerMinute => "/min".to_owned(),
            Unit::Unknown(text) => quote(text),
            Unit::Absent => String::new(),
        }
    }
}

impl Context {
    fn map_group(
        &self,
        group: &Group,
        fallback_us: i64,
        out: &mut Observations,
    ) -> Result<(), MappingError> {
        let mut attributes = Vec::new();
        let mut waveforms = Vec::new();
        for obx in &group.observations {
            match obx.component(2, 1).as_deref() {
                Some("NM") => {}
                Some("NA" | "MA") => {
                    waveforms.push(obx);
                    continue;
                }
                _ => continue,
            }
            let Some(value) = self.nm_value(obx)? else {
                continue;
            };
            let id = observation_id(obx)?;
            let sub_id = obx.component(4, 1).unwrap_or_default();
            if let Some(kind) = attribute_kind(&id) {
                if let Some((parent, _)) = sub_id.rsplit_once('.') {
                    attributes.push(Attribute {
                        parent: parent.to_owned(),
                        kind,
                        value,
                        segment: *obx,
                    });
                }
                continue;
            }
            let Some(code) = id.code.filter(|&c| c != 0) else {
                continue;
            };
            if !reported(obx) {
                continue;
            }
            let unit = read_unit(obx, 6)?;
            let vital = vital_for(code);
            let (value, unit_code) = match vital {
                Some(vital) => (to_vital_unit(obx, vital, value, &unit)?, vital_unit(vital)),
                None => (value, unit.mdc_code()),
            };
            out.numerics.push(Numeric {
                code,
                label: id.label,
                vital,
                value,
                unit_code,
                sub_id: sub_id.into_owned(),
                time_us: self.obx_time(obx, fallback_us)?,
            });
        }
        for obx in waveforms {
            self.map_waveform(obx, &attributes, fallback_us, out)?;
        }
        Ok(())
    }

    fn map_waveform(
        &self,
        obx: &Segment,
        attributes: &[Attribute],
        fallback_us: i64,
        out: &mut Observations,
    ) -> Result<(), MappingError> {
        let Some(field) = obx.field(5).filter(|f| !f.is_empty()) else {
            return Ok(());
        };
        if !reported(obx) {
            return Ok(());
        }
        let id = observation_id(obx)?;
        let multiplexed = obx.component(2, 1).as_deref() == Some("MA");
        let channels = samples(obx, &field, multiplexed)?;
        let sub_id = obx.component(4, 1).unwrap_or_default();
        let attribute = |kind| {
            attributes
                .iter()
                .find(|a| a.kind == kind && !sub_id.is_empty() && a.parent == sub_id)
        };
        let rate = attribute(AttributeKind::SampleRate).ok_or_else(|| MappingError::Missing {
            location: obx.location(Some(4)),
            what: "the sample rate (an OBX MDC_ATTR_SAMP_RATE one level below this OBX-4)",
        })?;
        let rate_unit = read_unit(&rate.segment, 6)?;
        if !matches!(
            rate_unit,
            Unit::Absent | Unit::Mdc(MDC_DIM_PER_SEC | MDC_DIM_HZ)
        ) {
            return Err(MappingError::Unit {
                location: rate.segment.location(Some(6)),
                unit: rate_unit.describe(),
                what: "a sample rate (264608 MDC_DIM_PER_SEC or 264640 MDC_DIM_HZ)".to_owned(),
            });
        }
        if rate.value <= 0.0 {
            return Err(MappingError::Waveform {
                location: rate.segment.location(Some(5)),
                reason: "the sample rate must be more than 0",
            });
        }
        let resolution = attribute(AttributeKind::Resolution);
        if let Some(r) = resolution.filter(|r| r.value <= 0.0) {
            return Err(MappingError::Waveform {
                location: r.segment.location(Some(5)),
                reason: "the resolution (MDC_ATTR_NU_MSMT_RES) must be more than 0",
            });
        }
        let mut unit_code = read_unit(obx, 6)?.mdc_code();
        if let Some(r) = resolution {
            let code = read_unit(&r.segment, 6)?.mdc_code();
            if code != 0 {
                unit_code = code;
            }
        }
        let time_us = self.obx_time(obx, fallback_us)?;
        for (channel, samples) in channels.into_iter().enumerate() {
            out.waveforms.push(WaveformObs {
                code: id.code.unwrap_or(0),
                label: id.label.clone(),
                sub_id: sub_id.clone().into_owned(),
                channel,
                rate_hz: rate.value,
                unit_code,
                resolution: resolution.map(|r| r.value),
                samples,
                time_us,
            });
        }
        Ok(())
    }

    /// OBX-5 as one `NM` value; `None` when empty.
    fn nm_value(&self, obx: &Segment) -> Result<Option<f64>, MappingError> {
        let Some(field) = obx.field(5).filter(|f| !f.is_empty()) else {
            return Ok(None);
        };
        let text = field
            .as_single()
            .unwrap_or_else(|| Cow::Owned(field.encode(&self.delimiters)));
        parse_nm(&text)
            .map(Some)
            .ok_or_else(|| MappingError::NotNumeric {
                location: obx.location(Some(5)),
                value: quote(&text),
            })
    }

    /// OBX-14 if it gives an instant, else `fallback_us`.
    fn obx_time(&self, obx: &Segment, fallback_us: i64) -> Result<i64, MappingError> {
        let time = read_time(obx, 14)?.and_then(|t| t.utc_us(self.default_offset));
        Ok(time.unwrap_or(fallback_us))
    }
}

/// The samples of a waveform value, per channel.
fn samples(obx: &Segment, field: &Field, multiplexed: bool) -> Result<Vec<Vec<f64>>, MappingError> {
    let mut rows = Vec::new();
    for (r, rep) in field.repetitions().enumerate() {
        let mut row = Vec::new();
        for (c, component) in rep.components().enumerate() {
            let mut subcomponents = component.subcomponents();
            let mut text = subcomponents.next().unwrap_or_default();
            for more in subcomponents {
                let joined = text.to_mut();
                joined.push('&');
                joined.push_str(&more);
            }
            let value = parse_nm(&text).ok_or_else(|| MappingError::NotNumeric {
                location: obx
                    .location(Some(5))
                    .with_repetition(r + 1)
                    .with_component(c + 1),
                value: quote(&text),
            })?;
            row.push(value);
        }
        rows.push(row);
    }
    if !multiplexed {
        return Ok(rows);
    }
    let width = rows.first().map_or(0, Vec::len);
    if let Some(r) = rows.iter().position(|row| row.len() != width) {
        return Err(MappingError::Waveform {
            location: obx.location(Some(5)).with_repetition(r + 1),
            reason: "every instant of an MA value must have one sample per channel",
        });
    }
    Ok((0..width)
        .map(|c| rows.iter().filter_map(|row| row.get(c).copied()).collect())
        .collect())
}

/// Whether component `system` of `rep` names MDC (or is empty while the identifier at `id`,
/// the first, is a bare number).
fn is_mdc(rep: &Repetition, id: usize, system: usize) -> bool {
    match rep.text(system) {
        Some(system) => system == "MDC",
        None => {
            id == 1
                && rep
                    .text(id)
                    .is_some_and(|i| i.bytes().all(|b| b.is_ascii_digit()))
        }
    }
}

/// Component `id` of `rep` as an MDC code.
fn mdc_code(
    segment: &Segment,
    field: usize,
    rep: &Repetition,
    id: usize,
) -> Result<u32, MappingError> {
    let identifier = rep.text(id).unwrap_or_default();
    identifier.parse().map_err(|_| MappingError::NotNumeric {
        location: segment.location(Some(field)).with_component(id),
        value: quote(&identifier),
    })
}

/// Reads OBX-3.
fn observation_id(obx: &Segment) -> Result<ObservationId, MappingError> {
    let rep = obx
        .field(3)
        .map(|f| f.first())
        .filter(|r| !r.is_empty())
        .ok_or_else(|| MappingError::Missing {
            location: obx.location(Some(3)),
            what: "the observation identifier",
        })?;
    for (id, text, system) in [(1, 2, 3), (4, 5, 6)] {
        if is_mdc(&rep, id, system) {
            return Ok(ObservationId {
                code: Some(mdc_code(obx, 3, &rep, id)?),
                label: rep.text(text).map(Cow::into_owned).unwrap_or_default(),
            });
        }
    }
    let label = rep
        .text(2)
        .or_else(|| rep.text(1))
        .map(Cow::into_owned)
        .unwrap_or_default();
    Ok(ObservationId { code: None, label })
}

fn attribute_kind(id: &ObservationId) -> Option<AttributeKind> {
    const MDC_ATTR_SAMP_RATE_CF: u32 = 65_536 + MDC_ATTR_SAMP_RATE;
    match id.label.as_str() {
        "MDC_ATTR_SAMP_RATE" => Some(AttributeKind::SampleRate),
        "MDC_ATTR_NU_MSMT_RES" => Some(AttributeKind::Resolution),
        label if label.starts_with("MDC_ATTR_") => Some(AttributeKind::Other),
        _ if matches!(id.code, Some(MDC_ATTR_SAMP_RATE | MDC_ATTR_SAMP_RATE_CF)) => {
            Some(AttributeKind::SampleRate)
        }
        _ => None,
    }
}

/// Whether OBX-11 leaves the result standing (not `X` cannot be obtained, `D` deleted or
/// `W` wrong).
fn reported(obx: &Segment) -> bool {
    !matches!(obx.component(11, 1).as_deref(), Some("X" | "D" | "W"))
}

/// Reads a unit (CWE): an MDC triplet (either one, or a bare number as the first), else a
/// UCUM one we know.
fn read_unit(segment: &Segment, field: usize) -> Result<Unit, MappingError> {
    let Some(rep) = segment
        .field(field)
        .map(|f| f.first())
        .filter(|r| !r.is_empty())
    else {
        return Ok(Unit::Absent);
    };
    for (id, system) in [(1, 3), (4, 6)] {
        if is_mdc(&rep, id, system) {
            return Ok(Unit::Mdc(mdc_code(segment, field, &rep, id)?));
        }
    }
    for (id, system) in [(1, 3), (4, 6)] {
        if rep.text(system).as_deref() == Some("UCUM")
            && let Some(unit) = ucum(&rep.text(id).unwrap_or_default())
        {
            return Ok(unit);
        }
    }
    let text = rep.text(1).or_else(|| rep.text(2)).unwrap_or_default();
    Ok(Unit::Unknown(text.into_owned()))
}

/// The UCUM units medrelay knows.
fn ucum(code: &str) -> Option<Unit> {
    let mdc = match code {
        "%" => MDC_DIM_PERCENT,
        "{beat}/min" | "{beats}/min" => MDC_DIM_BEAT_PER_MIN,
        "{breath}/min" | "{breaths}/min" | "{resp}/min" => MDC_DIM_RESP_PER_MIN,
        "/min" => return Some(Unit::PerMinute),
        "mm[Hg]" => MDC_DIM_MMHG,
        "kPa" => MDC_DIM_KILO_PASCAL,
        "Cel" => MDC_DIM_DEGC,
        "[degF]" => MDC_DIM_FAHR,
        "K" => MDC_DIM_KELVIN,
        "/s" => MDC_DIM_PER_SEC,
        "Hz" => MDC_DIM_HZ,
        "mV" => MDC_DIM_MILLI_VOLT,
        _ => return None,
    };
    Some(Unit::Mdc(mdc))
}

/// A vital's value in its unit, converting °F and K to °C and kPa to mmHg.
fn to_vital_unit(
    obx: &Segment,
    vital: Vital,
    value: f64,
    unit: &Unit,
) -> Result<f64, MappingError> {
    let converted = match (vital, unit) {
        (_, Unit::Mdc(code)) if *code == vital_unit(vital) => Some(value),
        (Vital::Hr | Vital::Rr, Unit::PerMinute) => Some(value),
        (
            Vital::NibpSys | Vital::NibpDia | Vital::NibpMean | Vital::Etco2,
            Unit::Mdc(MDC_DIM_KILO_PASCAL),
        ) => Some(value * MMHG_PER_KPA),
        (Vital::Temp, Unit::Mdc(MDC_DIM_FAHR)) => Some((value - 32.0) * 5.0 / 9.0),
        (Vital::Temp, Unit::Mdc(MDC_DIM_KELVIN)) => Some(value - 273.15),
        _ => None,
    };
    match (converted, unit) {
        (Some(v), _) => Ok(v),
        (None, Unit::Absent) => Err(MappingError::Missing {
            location: obx.location(Some(6)),
            what: "the unit",
        }),
        (None, _) => Err(MappingError::Unit {
            location: obx.location(Some(6)),
            unit: unit.describe(),
            what: format!("{} (unit {})", vital.name(), vital_unit(vital)),
        }),
    }
}

/// Reads a date/time field (its first component); `None` when empty.
fn read_time(segment: &Segment, field: usize) -> Result<Option<dtm::Dtm>, MappingError> {
    let Some(text) = segment.component(field, 1) else {
        return Ok(None);
    };
    dtm::parse(&text)
        .map(Some)
        .ok_or_else(|| MappingError::BadTime {
            location: segment.location(Some(field)),
            value: quote(&text),
        })
}

/// PID-3: the first repetition with an id.
fn patient_of(pid: &Segment) -> Option<Patient> {
    let rep = pid.field(3)?.repetitions().find(|r| r.text(1).is_some())?;
    let authority = rep
        .component(4)
        .and_then(|c| c.subcomponents().find(|s| !s.is_empty()))
        .map(Cow::into_owned)
        .unwrap_or_default();
    let text = |n| rep.text(n).map(Cow::into_owned).unwrap_or_default();
    Some(Patient {
        id: text(1),
        authority,
        id_type: text(5),
    })
}

/// An HL7 `NM`: `[+|-]digits[.digits]` (digits on at least one side of the point), spaces
/// around allowed; no exponent, `NaN` or infinity.
fn parse_nm(text: &str) -> Option<f64> {
    let text = text.trim_matches(' ');
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !digits(whole) || !digits(fraction) {
        return None;
    }
    text.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// A value cut to 40 characters for an error message.
fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTE_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A bedside monitor's PCD-01 report, written after the IHE PCD TF-2 examples: device
    /// hierarchy OBX, numerics in several units, an ECG lead II waveform with its attributes.
    pub(crate) const MONITOR: &str = "MSH|^~\\&|ACME_MON^0123456789ABCDEF^EUI-64|ICU|MEDRELAY|HOSP|20250612093319.1230+0200||ORU^R01^ORU_R01|MSG00042|P|2.6|||NE|AL||UNICODE UTF-8|||IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO\r\
PID|||123456^^^HOSP&1.2.3.4&ISO^MR||Doe^John^^^^^L|||M\r\
PV1||I|ICU^^BED5\r\
OBR|1|AB12^ACME_MON^0123456789ABCDEF^EUI-64|AB12^ACME_MON^0123456789ABCDEF^EUI-64|182777000^monitoring of patient^SCT|||20250612093319+0200\r\
OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X|||||||0123456789ABCDEF^EUI-64\r\
OBX|2|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1|72|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||R|||20250612093318+0200\r\
OBX|3|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.2.1.1|97|262688^MDC_DIM_PERCENT^MDC|||||R\r\
OBX|4|NM|149530^MDC_PULS_OXIM_PULS_RATE^MDC|1.2.1.2|73|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||R\r\
OBX|5|NM|150021^MDC_PRESS_BLD_NONINV_SYS^MDC|1.3.1.1|120|266016^MDC_DIM_MMHG^MDC|||||R|||20250612093000+0200\r\
OBX|6|NM|150022^MDC_PRESS_BLD_NONINV_DIA^MDC|1.3.1.2|80|266016^MDC_DIM_MMHG^MDC|||||R|||20250612093000+0200\r\
OBX|7|NM|150023^MDC_PRESS_BLD_NONINV_MEAN^MDC|1.3.1.3|93|266016^MDC_DIM_MMHG^MDC|||||R|||20250612093000+0200\r\
OBX|8|NM|151562^MDC_RESP_RATE^MDC|1.4.1.1|16|264928^MDC_DIM_RESP_PER_MIN^MDC|||||R\r\
OBX|9|NM|150364^MDC_TEMP_BODY^MDC|1.5.1.1|98.6|266560^MDC_DIM_FAHR^MDC|||||R\r\
OBX|10|NM|151708^MDC_AWAY_CO2_ET^MDC|1.6.1.1|5.0|265987^MDC_DIM_KILO_PASCAL^MDC|||||R\r\
OBX|11|NM|148066^MDC_ECG_V_P_C_RATE^MDC|1.1.1.2|2|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||R\r\
OBX|12|NA|131330^MDC_ECG_ELEC_POTL_II^MDC|1.1.2.1|512^530^601^588^520|266418^MDC_DIM_MILLI_VOLT^MDC|||||R|||20250612093318.500+0200\r\
OBX|13|NM|0^MDC_ATTR_SAMP_RATE^MDC|1.1.2.1.1|250|264608^MDC_DIM_PER_SEC^MDC|||||R\r\
OBX|14|NM|0^MDC_ATTR_NU_MSMT_RES^MDC|1.1.2.1.2|0.005|266418^MDC_DIM_MILLI_VOLT^MDC|||||R\r\
OBX|15|CWE|184326^MDC_ECG_STAT_RHY^MDC|1.1.1.3|SINUS^Sinus rhythm^99X|||||||R\r\
OBX|16|NM|8867-4^Heart rate^LN|1.9.1.1|71|/min^^UCUM|||||R\r";

    /// 2025-06-12T07:33:19Z.
    const MSH_US: i64 = 1_749_713_599_123_000;
    const OBR_US: i64 = 1_749_713_599_000_000;

    fn parse(text: &str) -> Message {
        Message::parse(text.as_bytes()).expect("parses")
    }

    fn map_text(text: &str) -> Result<Observations, MappingError> {
        map(&parse(text), 42)
    }

    fn with_obx(obx: &str) -> String {
        format!("MSH|^~\\&|M|F|||20250612093319+0200||ORU^R01|1|P|2.6\rOBR|1\r{obx}\r")
    }

    #[test]
    fn hl7_pcd01_maps_a_monitor_report() {
        let obs = map_text(MONITOR).expect("maps");
        assert_eq!(
            obs.source,
            Source {
                application: "ACME_MON".into(),
                application_id: "0123456789ABCDEF".into(),
                facility: "ICU".into(),
                device: Some("0123456789ABCDEF".into()),
            }
        );
        assert_eq!(obs.source.stream_key().as_str(), "0123456789ABCDEF");
        assert_eq!(
            obs.patient,
            Some(Patient {
                id: "123456".into(),
                authority: "HOSP".into(),
                id_type: "MR".into()
            })
        );
        assert_eq!(
            (obs.time_us, obs.time_source),
            (OBR_US, TimeSource::Request)
        );
        let n: Vec<_> = obs
            .numerics
            .iter()
            .map(|n| {
                (
                    n.code,
                    n.vital,
                    (n.value * 1000.0).round() / 1000.0,
                    n.unit_code,
                )
            })
            .collect();
        assert_eq!(
            n,
            [
                (147_842, Some(Vital::Hr), 72.0, MDC_DIM_BEAT_PER_MIN),
                (150_456, Some(Vital::Spo2), 97.0, MDC_DIM_PERCENT),
                (149_530, None, 73.0, MDC_DIM_BEAT_PER_MIN),
                (150_021, Some(Vital::NibpSys), 120.0, MDC_DIM_MMHG),
                (150_022, Some(Vital::NibpDia), 80.0, MDC_DIM_MMHG),
                (150_023, Some(Vital::NibpMean), 93.0, MDC_DIM_MMHG),
                (151_562, Some(Vital::Rr), 16.0, MDC_DIM_RESP_PER_MIN),
                (150_364, Some(Vital::Temp), 37.0, MDC_DIM_DEGC),
                (151_708, Some(Vital::Etco2), 37.503, MDC_DIM_MMHG),
                (148_066, None, 2.0, MDC_DIM_BEAT_PER_MIN),
            ]
        );
        let hr = &obs.numerics[0];
        assert_eq!(hr.label, "MDC_ECG_HEART_RATE");
        assert_eq!(hr.sub_id, "1.1.1.1");
        assert_eq!(hr.time_us, OBR_US - 1_000_000, "OBX-14");
        assert_eq!(obs.numerics[1].time_us, OBR_US, "OBR-7 when no OBX-14");
        assert_eq!(obs.numerics[3].time_us, OBR_US - 199_000_000);
        assert_eq!(obs.waveforms.len(), 1);
        let w = &obs.waveforms[0];
        assert_eq!(
            (w.code, w.label.as_str(), w.sub_id.as_str(), w.channel),
            (131_330, "MDC_ECG_ELEC_POTL_II", "1.1.2.1", 0)
        );
        assert_eq!(
            (w.rate_hz, w.unit_code, w.resolution),
            (250.0, MDC_DIM_MILLI_VOLT, Some(0.005))
        );
        assert_eq!(w.samples, [512.0, 530.0, 601.0, 588.0, 520.0]);
        let mv: Vec<f64> = w.physical().collect();
        assert!(
            (mv[0] - 2.56).abs() < 1e-9 && (mv[2] - 3.005).abs() < 1e-9,
            "{mv:?}"
        );
        assert_eq!(w.time_us, OBR_US - 500_000);
    }

    #[test]
    fn hl7_pcd01_time_falls_back_to_msh_then_receipt() {
        let obs = map_text("MSH|^~\\&|M|F|||20250612093319.123+0200||ORU^R01|1|P|2.6\rOBX|1|NM|147842^HR^MDC|1|60|264864^^MDC").expect("maps");
        assert_eq!(
            (obs.time_us, obs.time_source),
            (MSH_US, TimeSource::Message)
        );
        assert_eq!(obs.numerics[0].time_us, MSH_US);
        let obs = map_text("MSH|^~\\&|M|F|||20250612093319||ORU^R01|1|P|2.6\rOBR|1||||||20250612093318\rOBX|1|NM|147842^HR^MDC|1|60|264864^^MDC|||||F|||20250612093317").expect("maps");
        assert_eq!(
            (obs.time_us, obs.time_source),
            (42, TimeSource::Received),
            "no offset anywhere"
        );
        assert_eq!(obs.numerics[0].time_us, 42);
        // Times without an offset take MSH-7's.
        let obs = map_text("MSH|^~\\&|M|F|||20250612093319+0200||ORU^R01|1|P|2.6\rOBR|1||||||20250612093319\rOBX|1|NM|147842^HR^MDC|1|60|264864^^MDC|||||F|||20250612093318").expect("maps");
        assert_eq!(
            (obs.time_us, obs.time_source),
            (OBR_US, TimeSource::Request)
        );
        assert_eq!(obs.numerics[0].time_us, OBR_US - 1_000_000);
    }

    #[test]
    fn hl7_pcd01_bad_times_are_data_type_errors() {
        let err = map_text(&with_obx(
            "OBX|1|NM|147842^HR^MDC|1|60|264864^^MDC|||||F|||2025-06-12",
        ))
        .expect_err("bad OBX-14");
        assert_eq!(err.location(), Some(Location::new("OBX", 1).with_field(14)));
        assert_eq!(err.problem().code, ErrorCode::DataType);
        let err = map_text("MSH|^~\\&|M|F|||yesterday||ORU^R01|1|P|2.6").expect_err("bad MSH-7");
        assert_eq!(err.location(), Some(Location::new("MSH", 1).with_field(7)));
    }

    #[test]
    fn hl7_pcd01_non_numeric_nm_names_obx5() {
        for value in [
            "abc", "1e5", "NaN", "inf", "1.2.3", "-", ".", "7^2", "7~8", "7&8", "1,5",
        ] {
            let err = map_text(&with_obx(&format!(
                "OBX|1|NM|147842^HR^MDC|1|{value}|264864^^MDC"
            )))
            .expect_err(value);
            assert_eq!(
                err.location(),
                Some(Location::new("OBX", 1).with_field(5)),
                "{value}"
            );
            assert_eq!(err.problem().code, ErrorCode::DataType);
        }
        // Even with a coding we skip.
        assert!(map_text(&with_obx("OBX|1|NM|8867-4^HR^LN|1|fast")).is_err());
        for value in ["72", "+72", "-0.5", "72.", ".5", " 72 ", "0072.50"] {
            let obs = map_text(&with_obx(&format!(
                "OBX|1|NM|147842^HR^MDC|1|{value}|264864^^MDC"
            )))
            .expect(value);
            assert_eq!(obs.numerics.len(), 1, "{value}");
        }
    }

    #[test]
    fn hl7_pcd01_units_convert_or_refuse() {
        let one = |obx: &str| {
            map_text(&with_obx(obx)).map(|o| o.numerics.first().map(|n| (n.value, n.unit_code)))
        };
        assert_eq!(
            one("OBX|1|NM|150344^MDC_TEMP^MDC|1|310.15|266528^MDC_DIM_KELVIN^MDC")
                .expect("K")
                .map(|v| (v.0 * 100.0).round()),
            Some(3700.0)
        );
        assert_eq!(
            one("OBX|1|NM|150364^T^MDC|1|36.6|Cel^Cel^UCUM").expect("UCUM"),
            Some((36.6, MDC_DIM_DEGC))
        );
        assert_eq!(
            one("OBX|1|NM|150364^T^MDC|1|36.6|Cel^Cel^UCUM^268192^MDC_DIM_DEGC^MDC").expect("alt"),
            Some((36.6, MDC_DIM_DEGC))
        );
        assert_eq!(
            one("OBX|1|NM|147842^HR^MDC|1|60|/min^^UCUM").expect("/min"),
            Some((60.0, MDC_DIM_BEAT_PER_MIN))
        );
        assert_eq!(
            one("OBX|1|NM|151578^MDC_TTHOR_RESP_RATE^MDC|1|17|{breaths}/min^^UCUM").expect("rr"),
            Some((17.0, MDC_DIM_RESP_PER_MIN))
        );
        assert_eq!(
            one("OBX|1|NM|150021^S^MDC|1|16|265987^MDC_DIM_KILO_PASCAL^MDC")
                .expect("kPa")
                .map(|v| v.0.round()),
            Some(120.0)
        );
        assert_eq!(
            one("OBX|1|NM|150488^MDC_BLD_PERF_INDEX^MDC|1|1.76|262688^MDC_DIM_PERCENT^MDC")
                .expect("other"),
            Some((1.76, MDC_DIM_PERCENT))
        );
        assert_eq!(
            one("OBX|1|NM|150488^PI^MDC|1|1.76|pct").expect("unknown unit kept"),
            Some((1.76, 0))
        );
        for (obx, code) in [
            (
                "OBX|1|NM|151708^ETCO2^MDC|1|5|262688^MDC_DIM_PERCENT^MDC",
                ErrorCode::TableValueNotFound,
            ),
            (
                "OBX|1|NM|150456^SPO2^MDC|1|97|264864^MDC_DIM_BEAT_PER_MIN^MDC",
                ErrorCode::TableValueNotFound,
            ),
            (
                "OBX|1|NM|150364^T^MDC|1|37|degrees",
                ErrorCode::TableValueNotFound,
            ),
            (
                "OBX|1|NM|151562^RR^MDC|1|16|/s^^UCUM",
                ErrorCode::TableValueNotFound,
            ),
            (
                "OBX|1|NM|150456^SPO2^MDC|1|97",
                ErrorCode::RequiredFieldMissing,
            ),
            (
                "OBX|1|NM|150456^SPO2^MDC|1|97|pct^^MDC",
                ErrorCode::DataType,
            ),
        ] {
            let err = map_text(&with_obx(obx)).expect_err(obx);
            assert_eq!(err.problem().code, code, "{obx}: {err}");
            assert_eq!(
                err.location().map(|l| (l.segment, l.field)),
                Some(("OBX".to_owned(), Some(6))),
                "{obx}"
            );
        }
    }

    #[test]
    fn hl7_pcd01_skips_what_it_does_not_report() {
        let obs = map_text(&with_obx(
            "OBX|1|NM|147842^HR^MDC|1||264864^^MDC\rOBX|2|NM|147842^HR^MDC|2|70|264864^^MDC|||||X\rOBX|3|ST|147842^HR^MDC|3|fast\rOBX|4|NM|0^MDC_ATTR_LIMIT_CURR^MDC|1.1|50\rOBX|5|NM|8867-4^Heart rate^LN|5|60|/min^^UCUM\rOBX|6||69965^MDS^MDC|1.0.0.0\rOBX|7|NM|147842^HR^MDC|7|61|264864^^MDC|||||D",
        ))
        .expect("maps");
        assert!(obs.numerics.is_empty(), "{:?}", obs.numerics);
        assert!(obs.waveforms.is_empty());
    }

    #[test]
    fn hl7_pcd01_observation_id_checks() {
        let err = map_text(&with_obx("OBX|1|NM||1|60")).expect_err("no OBX-3");
        assert_eq!(err.problem().code, ErrorCode::RequiredFieldMissing);
        assert_eq!(err.location(), Some(Location::new("OBX", 1).with_field(3)));
        let err = map_text(&with_obx("OBX|1|NM|HR^Heart^MDC|1|60")).expect_err("bad MDC code");
        assert_eq!(
            err.location(),
            Some(Location::new("OBX", 1).with_field(3).with_component(1))
        );
        let obs = map_text(&with_obx("OBX|1|NM|147842^MDC_ECG_HEART_RATE|1|60|264864"))
            .expect("bare numbers are MDC");
        assert_eq!(
            (obs.numerics[0].code, obs.numerics[0].unit_code),
            (147_842, MDC_DIM_BEAT_PER_MIN)
        );
        let obs = map_text(&with_obx(
            "OBX|1|NM|8867-4^Heart rate^LN^147842^MDC_ECG_HEART_RATE^MDC|1|60|264864^^MDC",
        ))
        .expect("alternate MDC");
        assert_eq!(obs.numerics[0].label, "MDC_ECG_HEART_RATE");
    }

    #[test]
    fn hl7_pcd01_waveforms_na_ma_and_attributes() {
        // NA with two channels (repetitions), rate in Hz with code 0, no resolution.
        let obs = map_text(&with_obx(
            "OBX|1|NA|150452^MDC_PULS_OXIM_PLETH^MDC|1.2.3.4|1^2^3~4^5^6|262656^MDC_DIM_DIMLESS^MDC\rOBX|2|NM|0^MDC_ATTR_SAMP_RATE^MDC|1.2.3.4.1|125|264640^MDC_DIM_HZ^MDC",
        ))
        .expect("NA");
        let w: Vec<_> = obs
            .waveforms
            .iter()
            .map(|w| {
                (
                    w.channel,
                    w.rate_hz,
                    w.samples.clone(),
                    w.resolution,
                    w.unit_code,
                )
            })
            .collect();
        assert_eq!(
            w,
            [
                (0, 125.0, vec![1.0, 2.0, 3.0], None, 262_656),
                (1, 125.0, vec![4.0, 5.0, 6.0], None, 262_656)
            ]
        );
        // MA: instants as repetitions; the attribute before the waveform, by code 2456.
        let obs = map_text(&with_obx(
            "OBX|1|NM|2456^^MDC|1.1.1.1.1|500\rOBX|2|MA|131329^MDC_ECG_ELEC_POTL_I^MDC|1.1.1.1|1^10~2^20~3^30|266418^^MDC",
        ))
        .expect("MA");
        let w: Vec<_> = obs
            .waveforms
            .iter()
            .map(|w| (w.channel, w.rate_hz, w.samples.clone()))
            .collect();
        assert_eq!(
            w,
            [
                (0, 500.0, vec![1.0, 2.0, 3.0]),
                (1, 500.0, vec![10.0, 20.0, 30.0])
            ]
        );
        // Physical floats as in the NIST examples, rate unit absent.
        let obs = map_text(&with_obx(
            "OBX|1|NA|131330^MDC_ECG_LEAD_II^MDC|1.1.1.1002|1.0498^-0.25|266418^MDC_DIM_MILLI_VOLT^MDC\rOBX|2|NM|0^MDC_ATTR_SAMP_RATE^MDC|1.1.1.1002.1|150.0",
        ))
        .expect("floats");
        assert_eq!(
            obs.waveforms[0].physical().collect::<Vec<_>>(),
            [1.0498, -0.25]
        );
    }

    #[test]
    fn hl7_pcd01_waveform_errors() {
        let rate = "OBX|2|NM|0^MDC_ATTR_SAMP_RATE^MDC|1.1.1.1.1|250|264608^^MDC";
        for (obx, code, location) in [
            (
                "OBX|1|NA|131330^II^MDC|1.1.1.1|1^2^3",
                ErrorCode::RequiredFieldMissing,
                Location::new("OBX", 1).with_field(4),
            ),
            (
                &*format!("OBX|1|NA|131330^II^MDC|1.1.1.1|1^x^3\r{rate}"),
                ErrorCode::DataType,
                Location::new("OBX", 1)
                    .with_field(5)
                    .with_repetition(1)
                    .with_component(2),
            ),
            (
                &*format!("OBX|1|NA|131330^II^MDC|1.1.1.1|1^^3\r{rate}"),
                ErrorCode::DataType,
                Location::new("OBX", 1)
                    .with_field(5)
                    .with_repetition(1)
                    .with_component(2),
            ),
            (
                &*format!("OBX|1|MA|131330^II^MDC|1.1.1.1|1^2~3\r{rate}"),
                ErrorCode::DataType,
                Location::new("OBX", 1).with_field(5).with_repetition(2),
            ),
            (
                "OBX|1|NA|131330^II^MDC|1.1.1.1|1\rOBX|2|NM|0^MDC_ATTR_SAMP_RATE^MDC|1.1.1.1.1|0",
                ErrorCode::DataType,
                Location::new("OBX", 2).with_field(5),
            ),
            (
                "OBX|1|NA|131330^II^MDC|1.1.1.1|1\rOBX|2|NM|0^MDC_ATTR_SAMP_RATE^MDC|1.1.1.1.1|5|264320^MDC_DIM_SEC^MDC",
                ErrorCode::TableValueNotFound,
                Location::new("OBX", 2).with_field(6),
            ),
            (
                &*format!(
                    "OBX|1|NA|131330^II^MDC|1.1.1.1|1\r{rate}\rOBX|3|NM|0^MDC_ATTR_NU_MSMT_RES^MDC|1.1.1.1.2|-1"
                ),
                ErrorCode::DataType,
                Location::new("OBX", 3).with_field(5),
            ),
            (
                "OBX|1|NA|131330^II^MDC|1.1.1.1|1\rOBX|2|NM|0^MDC_ATTR_SAMP_RATE^MDC|1.1.1.1.1|fast",
                ErrorCode::DataType,
                Location::new("OBX", 2).with_field(5),
            ),
        ] {
            let err = map_text(&with_obx(obx)).expect_err(obx);
            assert_eq!(
                (err.problem().code, err.location()),
                (code, Some(location)),
                "{obx}: {err}"
            );
        }
        // The rate of another group does not count.
        let text = format!(
            "{}OBR|2\r{rate}\r",
            with_obx("OBX|1|NA|131330^II^MDC|1.1.1.1|1")
        );
        assert!(matches!(map_text(&text), Err(MappingError::Missing { .. })));
        // An empty waveform is skipped, with or without a rate.
        assert!(
            map_text(&with_obx("OBX|1|NA|131330^II^MDC|1.1.1.1|"))
                .expect("empty")
                .waveforms
                .is_empty()
        );
    }

    #[test]
    fn hl7_pcd01_header_checks() {
        let header = |msh9: &str, msh11: &str, msh12: &str| {
            let text = format!("MSH|^~\\&|M|F|||20250612093319+0200||{msh9}|1|{msh11}|{msh12}");
            check_header(&parse(&text))
        };
        assert_eq!(header("ORU^R01^ORU_R01", "P", "2.6"), Ok(()));
        assert_eq!(header("ORU^W01", "D", "2.4"), Ok(()));
        assert_eq!(header("ORU^R01", "T", "2.3.1"), Ok(()));
        let code = |r: Result<(), MappingError>| r.map_err(|e| (e.problem().code, e.location()));
        let msh = |f| Some(Location::new("MSH", 1).with_field(f));
        assert_eq!(
            code(header("ADT^A01", "P", "2.6")),
            Err((ErrorCode::UnsupportedMessageType, msh(9)))
        );
        assert_eq!(
            code(header("ORU^R30", "P", "2.6")),
            Err((ErrorCode::UnsupportedEventCode, msh(9)))
        );
        assert_eq!(
            code(header("ORU", "P", "2.6")),
            Err((ErrorCode::UnsupportedEventCode, msh(9)))
        );
        assert_eq!(
            code(header("", "P", "2.6")),
            Err((ErrorCode::RequiredFieldMissing, msh(9)))
        );
        assert_eq!(
            code(header("ORU^R01", "X", "2.6")),
            Err((ErrorCode::UnsupportedProcessingId, msh(11)))
        );
        assert_eq!(
            code(header("ORU^R01", "", "2.6")),
            Err((ErrorCode::RequiredFieldMissing, msh(11)))
        );
        assert_eq!(
            code(header("ORU^R01", "P", "3.0")),
            Err((ErrorCode::UnsupportedVersionId, msh(12)))
        );
        assert_eq!(
            code(header("ORU^R01", "P", "")),
            Err((ErrorCode::RequiredFieldMissing, msh(12)))
        );
        let no_id = check_header(&parse("MSH|^~\\&|M|F|||x||ORU^R01||P|2.6"));
        assert_eq!(code(no_id), Err((ErrorCode::RequiredFieldMissing, msh(10))));
    }

    #[test]
    fn hl7_pcd01_one_patient_per_message() {
        let text = format!("{}PID|||2\r", MONITOR);
        let err = map_text(&text).expect_err("two PIDs");
        assert_eq!(
            (err.problem().code, err.location()),
            (ErrorCode::SegmentSequence, Some(Location::new("PID", 2)))
        );
        let obs = map_text(&with_obx("PID|||^^^HOSP^PI~777^^^^PI")).expect("second repetition");
        assert_eq!(
            obs.patient.map(|p| (p.id, p.authority, p.id_type)),
            Some(("777".into(), String::new(), "PI".into()))
        );
        assert_eq!(
            map_text(&with_obx("PID|||^^^HOSP^PI"))
                .expect("no id")
                .patient,
            None
        );
    }

    #[test]
    fn hl7_pcd01_stream_keys_are_valid() {
        let source = |device: Option<&str>, app: &str, app_id: &str, facility: &str| Source {
            application: app.into(),
            application_id: app_id.into(),
            facility: facility.into(),
            device: device.map(str::to_owned),
        };
        assert_eq!(
            source(None, "GW", "00A037", "ICU").stream_key().as_str(),
            "00A037"
        );
        assert_eq!(
            source(None, "GW", "", "ICU 3").stream_key().as_str(),
            "GW-ICU-3"
        );
        assert_eq!(source(Some(""), "", "", "").stream_key().as_str(), "HL7");
        assert_eq!(source(Some("ü/1"), "", "", "").stream_key().as_str(), "--1");
        let long = source(Some(&"é".repeat(40)), "", "", "").stream_key();
        assert_eq!(long.as_str().len(), 32);
        let other = source(Some(&"é".repeat(41)), "", "", "").stream_key();
        assert_ne!(long, other, "the hash keeps long keys apart");
    }

    #[test]
    fn hl7_pcd01_vital_table() {
        for vital in Vital::ALL {
            if matches!(vital, Vital::Lat | Vital::Lon) {
                assert_eq!(vital_for(vital.code()), None);
                assert_eq!(vital_unit(vital), 0);
            } else {
                assert_eq!(vital_for(vital.code()), Some(vital), "{vital:?}");
            }
        }
        assert_eq!(
            vital_for(149_530),
            None,
            "pulse rate is not the ECG heart rate"
        );
        assert_eq!(vital_for(150_020), None);
        assert_eq!(vital_for(150_344), Some(Vital::Temp));
    }
}
