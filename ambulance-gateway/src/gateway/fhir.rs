//! FHIR R4 read access to the streams (`docs/telemetry.md`, "FHIR R4"):
//! `GET /fhir/metadata` (a CapabilityStatement) and `GET /fhir/Observation` searches by
//! subject, code and date, answered from the stream's durable record. Numerics become
//! Observations coded in MDC and LOINC; waveforms become Observations with a `SampledData`
//! component per channel that reproduces the sent raw samples exactly. Errors are
//! OperationOutcomes.

use crate::gateway::http::{Visible, bearer};
use crate::gateway::record::{StreamRecord, Window};
use crate::gateway::{Gateway, now_us};
use crate::hl7::dtm::days_from_civil;
use crate::wire::{Channel, Frame, Payload, StreamId, Vital};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use recorder::audit::Action;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use tracing::warn;

const MDC: &str = "urn:iso:std:iso:11073:10101";
const LOINC: &str = "http://loinc.org";
const UCUM: &str = "http://unitsofmeasure.org";
const FHIR_JSON: &str = "application/fhir+json";
/// Longest waveform window one search may ask for, µs.
const MAX_WINDOW_US: i64 = 5 * 60 * 1_000_000;
/// Waveform frames starting up to this long before a window are read, as their later samples
/// may fall in it.
const LOOKBACK_US: i64 = 5 * 60 * 1_000_000;
/// The window of an ECG search without `date`: the last 10 s.
const RECENT_US: i64 = 10_000_000;
/// MDC_ECG_ELEC_POTL: the ECG lead family; the leads' codes follow it.
const ECG_FAMILY: u32 = 131_328;
const ECG_LEADS: std::ops::RangeInclusive<u32> = 131_328..=131_583;

/// The FHIR routes.
pub fn routes(gw: Arc<Gateway>) -> axum::Router {
    axum::Router::new()
        .route("/fhir/metadata", get(metadata))
        .route("/fhir/Observation", get(search))
        .with_state(gw)
}

fn fhir(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, FHIR_JSON)],
        body.to_string(),
    )
        .into_response()
}

/// A refused request, answered as an OperationOutcome.
#[derive(Debug, PartialEq)]
struct Outcome {
    status: StatusCode,
    /// FHIR `IssueType` code.
    code: &'static str,
    diagnostics: String,
}

impl Outcome {
    fn new(status: StatusCode, code: &'static str, diagnostics: impl Into<String>) -> Self {
        Self {
            status,
            code,
            diagnostics: diagnostics.into(),
        }
    }

    fn invalid(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", diagnostics)
    }

    fn body(&self) -> Value {
        json!({
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": self.code, "diagnostics": self.diagnostics}],
        })
    }
}

impl IntoResponse for Outcome {
    fn into_response(self) -> Response {
        let mut response = fhir(self.status, &self.body());
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

async fn metadata() -> Response {
    let param = |name: &str, kind: &str| json!({"name": name, "type": kind});
    fhir(
        StatusCode::OK,
        &json!({
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": format_instant(now_us()),
            "kind": "instance",
            "software": {"name": "medrelay", "version": env!("CARGO_PKG_VERSION")},
            "implementation": {"description": "medrelay ambulance telemetry gateway"},
            "fhirVersion": "4.0.1",
            "format": ["json", FHIR_JSON],
            "rest": [{
                "mode": "server",
                "security": {"description": "Authorization: Bearer <er or specialist token>"},
                "resource": [{
                    "type": "Observation",
                    "interaction": [{"code": "search-type"}],
                    "searchParam": [
                        param("subject", "reference"),
                        param("code", "token"),
                        param("date", "date"),
                    ],
                }],
            }],
        }),
    )
}

async fn search(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, Outcome> {
    let claims = bearer(&gw, &headers).map_err(|e| Outcome::new(e.status, "login", e.message))?;
    let visible =
        Visible::of(&claims).map_err(|e| Outcome::new(e.status, "forbidden", e.message))?;
    let query = Query::parse(query.as_deref().unwrap_or(""), now_us())?;
    let read = query.read_window();
    // (stream, the part of its record that belongs to the subject, from … until exclusive)
    let mut parts = Vec::new();
    match &query.subject {
        Subject::Device(id) => {
            if !visible.allows(id) {
                return Err(Outcome::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!("your token does not grant stream {id}"),
                ));
            }
            // A stream never seen and without a record: an empty Bundle.
            if gw.has_record(id) {
                parts.push((id.clone(), i64::MIN, i64::MAX));
            }
        }
        Subject::Patient(patient) => {
            let spans = gw.patient_spans(patient).await.map_err(|e| {
                warn!("cannot read the patient index for FHIR: {e}");
                Outcome::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "exception",
                    "the patient index cannot be read",
                )
            })?;
            // Only what the token may see: a stream scoped token sees its own stream.
            parts.extend(
                spans
                    .into_iter()
                    .filter(|s| visible.allows(&s.stream))
                    .map(|s| (s.stream, s.from_us, s.until_us.unwrap_or(i64::MAX))),
            );
        }
    }
    let mut records = Vec::new();
    for (stream, from, until) in parts {
        let window = Window {
            from_us: Some(read.from_us.map_or(from, |f| f.max(from))),
            to_us: Some(read.to_us.map_or(until - 1, |t| t.min(until - 1))),
        };
        let record = gw.record(&stream, window).await.map_err(|e| {
            warn!(%stream, "cannot read a journal for FHIR: {e}");
            Outcome::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                "the stream's record cannot be read",
            )
        })?;
        records.push(Part {
            stream,
            from_us: from,
            until_us: until,
            record,
        });
    }
    let entries = query.observations(&records);
    // A patient's search is audited on each stream it read.
    let audited: Vec<StreamId> = match &query.subject {
        Subject::Device(id) => vec![id.clone()],
        Subject::Patient(_) => records.iter().map(|p| p.stream.clone()).collect(),
    };
    for stream in &audited {
        gw.audit(
            &claims,
            Action::View,
            stream,
            Some("FHIR Observation search".into()),
        )
        .await
        .map_err(|e| {
            warn!("a FHIR search cannot be audited, so it is refused: {e}");
            Outcome::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                "the audit trail cannot be written",
            )
        })?;
    }
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": entries.len(),
        "entry": entries
            .into_iter()
            .map(|r| json!({"resource": r, "search": {"mode": "match"}}))
            .collect::<Vec<_>>(),
    });
    Ok(fhir(StatusCode::OK, &bundle))
}

/// A `code` search token: `[system|]code`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    system: Option<String>,
    code: String,
}

impl Token {
    fn is(&self, system: &str, code: &str) -> bool {
        self.system.as_deref().is_none_or(|s| s == system) && self.code == code
    }

    /// The MDC code if it names an ECG lead or the lead family.
    fn ecg(&self) -> Option<u32> {
        let system_ok = self.system.as_deref().is_none_or(|s| s == MDC);
        let code: u32 = self.code.parse().ok()?;
        (system_ok && ECG_LEADS.contains(&code)).then_some(code)
    }
}

/// Whose Observations are searched.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Subject {
    /// A stream: an ambulance or a monitor (`Device/<id>`, or a bare id).
    Device(StreamId),
    /// A patient named by HL7 feeds (PID-3): every stream's stretch while it measured them.
    Patient(String),
}

impl Subject {
    fn reference(&self) -> String {
        match self {
            Subject::Device(id) => format!("Device/{id}"),
            Subject::Patient(id) => format!("Patient/{id}"),
        }
    }
}

/// The part of one stream's record that belongs to the subject.
#[derive(Debug)]
struct Part {
    stream: StreamId,
    /// First instant, µs (inclusive).
    from_us: i64,
    /// Last instant, µs (exclusive).
    until_us: i64,
    record: StreamRecord,
}

/// One numeric value found.
#[derive(Debug, Clone)]
struct Reading {
    stream: StreamId,
    vital: Vital,
    at_us: i64,
    value: f64,
}

/// A parsed Observation search.
#[derive(Debug, PartialEq)]
struct Query {
    subject: Subject,
    /// `None`: any code.
    codes: Option<Vec<Token>>,
    /// The waveform window, µs (inclusive), when waveforms are asked for.
    waveform: Option<(i64, i64)>,
    /// Which numerics, when numerics are asked for.
    numerics: Option<Numerics>,
}

/// Which numerics a search returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Numerics {
    /// Each vital's latest value (a search without `date`).
    Latest,
    /// Every value captured in the window, µs (inclusive).
    In(i64, i64),
}

impl Query {
    fn parse(raw: &str, now: i64) -> Result<Self, Outcome> {
        let mut subject = None;
        let mut codes = None;
        let (mut from, mut to) = (None::<i64>, None::<i64>);
        let mut dated = false;
        for (name, value) in url::form_urlencoded::parse(raw.as_bytes()) {
            match &*name {
                "subject" if subject.is_none() => {
                    subject = Some(parse_subject(&value)?);
                }
                "code" if codes.is_none() => {
                    let tokens: Vec<Token> = value
                        .split(',')
                        .map(|t| match t.split_once('|') {
                            Some((s, c)) => Token {
                                system: (!s.is_empty()).then(|| s.to_owned()),
                                code: c.to_owned(),
                            },
                            None => Token {
                                system: None,
                                code: t.to_owned(),
                            },
                        })
                        .collect();
                    if tokens.iter().any(|t| t.code.is_empty()) {
                        return Err(Outcome::invalid("code has an empty token"));
                    }
                    codes = Some(tokens);
                }
                "date" => {
                    dated = true;
                    let (prefix, at) = parse_date(&value)?;
                    match prefix {
                        "ge" => from = Some(from.map_or(at, |f| f.max(at))),
                        "gt" => from = Some(from.map_or(at + 1, |f| f.max(at + 1))),
                        "le" => to = Some(to.map_or(at, |t| t.min(at))),
                        _ => to = Some(to.map_or(at - 1, |t| t.min(at - 1))),
                    }
                }
                "subject" | "code" => {
                    return Err(Outcome::invalid(format!("{name} is given more than once")));
                }
                other => {
                    return Err(Outcome::invalid(format!(
                        "unsupported search parameter {other:?} (subject, code, date)"
                    )));
                }
            }
        }
        let subject = subject.ok_or_else(|| Outcome::invalid("subject is required"))?;
        let wants_ecg = codes
            .as_ref()
            .is_none_or(|c: &Vec<Token>| c.iter().any(|t| t.ecg().is_some()));
        let wants_numerics = codes
            .as_ref()
            .is_none_or(|c: &Vec<Token>| c.iter().any(|t| t.ecg().is_none()));
        let (waveform, numerics) = if dated {
            let Some(from) = from else {
                return Err(Outcome::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "too-costly",
                    "date needs a lower bound (ge or gt)",
                ));
            };
            let to = to.unwrap_or(now);
            if to.saturating_sub(from) > MAX_WINDOW_US {
                return Err(Outcome::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "too-costly",
                    "a date window spans at most 5 minutes",
                ));
            }
            let w = Some((from, to));
            let numerics = Numerics::In(from, to);
            (w.filter(|_| wants_ecg), wants_numerics.then_some(numerics))
        } else {
            // Without a date, waveforms only when a lead's code asks for them.
            let recent = codes.is_some() && wants_ecg;
            let w = recent.then_some((now - RECENT_US, now));
            (w, wants_numerics.then_some(Numerics::Latest))
        };
        Ok(Self {
            subject,
            codes,
            waveform,
            numerics,
        })
    }

    /// What to read of the record.
    fn read_window(&self) -> Window {
        let mut from = i64::MAX;
        let mut to = i64::MIN;
        match self.numerics {
            Some(Numerics::Latest) => return Window::default(),
            Some(Numerics::In(f, t)) => (from, to) = (f, t),
            None => {}
        }
        if let Some((f, t)) = self.waveform {
            from = from.min(f.saturating_sub(LOOKBACK_US));
            to = to.max(t);
        }
        Window {
            from_us: Some(from),
            to_us: Some(to),
        }
    }

    fn wants_vital(&self, v: Vital) -> bool {
        let Some(info) = vital_info(v) else {
            return false;
        };
        self.codes.as_ref().is_none_or(|c| {
            c.iter()
                .any(|t| t.is(MDC, &v.code().to_string()) || t.is(LOINC, info.loinc))
        })
    }

    fn wants_channel(&self, ch: &Channel) -> bool {
        self.codes.as_ref().is_none_or(|c| {
            c.iter()
                .filter_map(Token::ecg)
                .any(|code| (code == ECG_FAMILY && is_ecg(ch)) || (ch.mdc != 0 && code == ch.mdc))
        })
    }

    /// The Observations in `parts`, the subject's share of each stream's record.
    fn observations(&self, parts: &[Part]) -> Vec<Value> {
        let subject = self.subject.reference();
        let mut out = Vec::new();
        if let Some(which) = self.numerics {
            let mut readings: Vec<Reading> =
                parts.iter().flat_map(|p| self.readings(p, which)).collect();
            if which == Numerics::Latest {
                let mut latest: BTreeMap<Vital, Reading> = BTreeMap::new();
                for r in readings {
                    if latest.get(&r.vital).is_none_or(|l| r.at_us >= l.at_us) {
                        latest.insert(r.vital, r);
                    }
                }
                readings = latest.into_values().collect();
            }
            out.extend(readings.iter().map(|r| numeric_observation(&subject, r)));
        }
        if let Some((from, to)) = self.waveform {
            for p in parts {
                let (from, to) = (from.max(p.from_us), to.min(p.until_us - 1));
                let segments = segments(&p.record.frames, from, to, |c| self.wants_channel(c));
                out.extend(
                    segments
                        .iter()
                        .map(|s| waveform_observation(&subject, &p.stream, s)),
                );
            }
        }
        out
    }

    /// The wanted numerics of one part: all in the window, or each vital's latest.
    fn readings(&self, part: &Part, which: Numerics) -> Vec<Reading> {
        let (from, to) = match which {
            Numerics::Latest => (i64::MIN, i64::MAX),
            Numerics::In(from, to) => (from, to),
        };
        let (from, to) = (from.max(part.from_us), to.min(part.until_us - 1));
        let mut latest: BTreeMap<Vital, Reading> = BTreeMap::new();
        let mut out = Vec::new();
        for f in &part.record.frames {
            let Payload::Numerics(values) = &f.payload else {
                continue;
            };
            let t = f.header.capture_us;
            if t < from || t > to {
                continue;
            }
            for n in values {
                let Some(v) = Vital::from_code(n.code).filter(|&v| self.wants_vital(v)) else {
                    continue;
                };
                let reading = Reading {
                    stream: part.stream.clone(),
                    vital: v,
                    at_us: t,
                    value: n.value,
                };
                if which != Numerics::Latest {
                    out.push(reading);
                } else if latest.get(&v).is_none_or(|l| t >= l.at_us) {
                    latest.insert(v, reading);
                }
            }
        }
        out.extend(latest.into_values());
        out
    }
}

/// Parses a `subject`: `Patient/<id>`, `Device/<stream id>` or a bare stream id.
fn parse_subject(value: &str) -> Result<Subject, Outcome> {
    if let Some(id) = value.strip_prefix("Patient/") {
        let ok = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"/|,".contains(&b));
        return ok
            .then(|| Subject::Patient(id.to_owned()))
            .ok_or_else(|| Outcome::invalid("subject Patient/<id>: the id is empty or invalid"));
    }
    let id = value.strip_prefix("Device/").unwrap_or(value);
    id.parse::<StreamId>().map(Subject::Device).map_err(|_| {
        Outcome::invalid("subject must be Patient/<id>, Device/<stream id> or <stream id>")
    })
}

/// Parses a `date` value: a prefix (`ge`, `gt`, `le`, `lt`) and an instant.
fn parse_date(value: &str) -> Result<(&str, i64), Outcome> {
    let bad = || {
        Outcome::invalid(
            "date must be ge|gt|le|lt followed by YYYY-MM-DDThh:mm:ss[.fff](Z|+hh:mm|-hh:mm)",
        )
    };
    let prefix = value.get(..2).ok_or_else(bad)?;
    if !matches!(prefix, "ge" | "gt" | "le" | "lt") {
        return Err(bad());
    }
    let at = parse_instant(&value[2..]).ok_or_else(bad)?;
    Ok((prefix, at))
}

/// Parses `YYYY-MM-DDThh:mm:ss[.f…](Z|±hh:mm)` to µs since the Unix epoch.
fn parse_instant(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let d = b.get(r)?;
        d.iter()
            .all(u8::is_ascii_digit)
            .then(|| std::str::from_utf8(d).ok()?.parse().ok())?
    };
    let seps = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if seps.iter().any(|&(i, c)| b.get(i) != Some(&c)) {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let days_in_month = match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        1..=12 => 31,
        _ => return None,
    };
    if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut rest = &s[19..];
    let mut micros = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 || n > 9 {
            return None;
        }
        let digits = &frac[..n];
        micros = format!("{digits:0<6}")[..6].parse::<i64>().ok()?;
        rest = &frac[n..];
    }
    let offset_s = match rest.as_bytes() {
        b"Z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digits = [*h1, *h2, *m1, *m2];
            if !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let d = |i: usize| i64::from(digits[i] - b'0');
            let (h, m) = (d(0) * 10 + d(1), d(2) * 10 + d(3));
            if h > 14 || m > 59 {
                return None;
            }
            let sign = if *sign == b'-' { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
        _ => return None,
    };
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    Some((secs - offset_s) * 1_000_000 + micros)
}

/// Formats µs since the Unix epoch as a FHIR instant, `YYYY-MM-DDThh:mm:ss.ffffffZ`.
fn format_instant(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    // Civil date from days since the epoch (inverse of `days_from_civil`).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        tod / 3600,
        tod / 60 % 60,
        tod % 60
    )
}

/// How a vital is coded beyond MDC.
struct VitalInfo {
    mdc_name: &'static str,
    loinc: &'static str,
    display: &'static str,
    ucum: &'static str,
    unit: &'static str,
}

fn vital_info(v: Vital) -> Option<VitalInfo> {
    let (mdc_name, loinc, display, ucum, unit) = match v {
        Vital::Hr => ("MDC_ECG_HEART_RATE", "8867-4", "Heart rate", "/min", "/min"),
        Vital::Spo2 => (
            "MDC_PULS_OXIM_SAT_O2",
            "59408-5",
            "Oxygen saturation in Arterial blood by Pulse oximetry",
            "%",
            "%",
        ),
        Vital::NibpSys => (
            "MDC_PRESS_BLD_NONINV_SYS",
            "8480-6",
            "Systolic blood pressure",
            "mm[Hg]",
            "mmHg",
        ),
        Vital::NibpDia => (
            "MDC_PRESS_BLD_NONINV_DIA",
            "8462-4",
            "Diastolic blood pressure",
            "mm[Hg]",
            "mmHg",
        ),
        Vital::NibpMean => (
            "MDC_PRESS_BLD_NONINV_MEAN",
            "8478-0",
            "Mean blood pressure",
            "mm[Hg]",
            "mmHg",
        ),
        Vital::Rr => (
            "MDC_RESP_RATE",
            "9279-1",
            "Respiratory rate",
            "/min",
            "/min",
        ),
        Vital::Temp => ("MDC_TEMP_BODY", "8310-5", "Body temperature", "Cel", "°C"),
        Vital::Etco2 => (
            "MDC_AWAY_CO2_ET",
            "19889-5",
            "Carbon dioxide [Partial pressure] in Exhaled gas --at end expiration",
            "mm[Hg]",
            "mmHg",
        ),
        Vital::Lat | Vital::Lon => return None,
    };
    Some(VitalInfo {
        mdc_name,
        loinc,
        display,
        ucum,
        unit,
    })
}

fn vital_signs_category() -> Value {
    json!([{"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
        "code": "vital-signs",
        "display": "Vital Signs",
    }]}])
}

fn numeric_observation(subject: &str, r: &Reading) -> Value {
    let (v, stream, at_us) = (r.vital, &r.stream, r.at_us);
    let info = vital_info(v).expect("only coded vitals are selected");
    json!({
        "resourceType": "Observation",
        "id": format!("{stream}-{}-{at_us}", v.code()),
        "status": "final",
        "category": vital_signs_category(),
        "code": {
            "coding": [
                {"system": MDC, "code": v.code().to_string(), "display": info.mdc_name},
                {"system": LOINC, "code": info.loinc, "display": info.display},
            ],
            "text": info.display,
        },
        "subject": {"reference": subject},
        "device": {"reference": format!("Device/{stream}")},
        "effectiveDateTime": format_instant(at_us),
        "valueQuantity": {"value": r.value, "unit": info.unit, "system": UCUM, "code": info.ucum},
    })
}

/// Whether a channel is an ECG lead: an ECG lead's MDC code or, without a code, a voltage.
fn is_ecg(ch: &Channel) -> bool {
    if ch.mdc != 0 {
        ECG_LEADS.contains(&ch.mdc)
    } else {
        matches!(ch.unit.as_str(), "mV" | "uV" | "µV" | "V")
    }
}

/// One channel's samples, contiguous in time.
#[derive(Debug, Clone, PartialEq)]
struct Trace {
    channel: Channel,
    /// Capture time of the first sample, µs.
    start_us: f64,
    samples: Vec<i32>,
}

impl Trace {
    fn period_us(&self) -> f64 {
        1e6 / self.channel.rate_hz
    }

    fn end_us(&self) -> f64 {
        self.start_us + (self.samples.len().saturating_sub(1)) as f64 * self.period_us()
    }
}

/// Waveform samples without gaps and under one layout: one trace per channel.
#[derive(Debug, Default, PartialEq)]
struct Segment {
    traces: BTreeMap<u8, Trace>,
}

/// The samples of the channels `keep` selects whose time (the frame's capture time plus
/// `i / rate`) is in `[from, to]`, split where a channel's samples do not follow on in time
/// (by more than 1.5 sample periods) or the layout changes.
fn segments(frames: &[Frame], from: i64, to: i64, keep: impl Fn(&Channel) -> bool) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut current = Segment::default();
    let mut layout: Option<&[Channel]> = None;
    for f in frames {
        let waveform = match &f.payload {
            Payload::Layout(l) => {
                if layout.is_some_and(|old| old != l.channels.as_slice()) {
                    out.push(std::mem::take(&mut current));
                }
                layout = Some(&l.channels);
                continue;
            }
            Payload::Waveform(w) => w,
            Payload::Numerics(_) => continue,
        };
        for block in &waveform.blocks {
            let Some(ch) = layout.and_then(|l| l.iter().find(|c| c.index == block.channel)) else {
                continue;
            };
            if !keep(ch) {
                continue;
            }
            let period = 1e6 / ch.rate_hz;
            let t0 = f.header.capture_us as f64;
            let time = |i: usize| t0 + i as f64 * period;
            let Some(first) = (0..block.samples.len()).find(|&i| time(i) >= from as f64) else {
                continue;
            };
            let kept: Vec<i32> = (first..block.samples.len())
                .take_while(|&i| time(i) <= to as f64)
                .map(|i| block.samples[i])
                .collect();
            if kept.is_empty() {
                continue;
            }
            let start = time(first);
            if let Some(trace) = current.traces.get(&block.channel) {
                let expected = trace.end_us() + period;
                if (start - expected).abs() > 1.5 * period {
                    out.push(std::mem::take(&mut current));
                }
            }
            current
                .traces
                .entry(block.channel)
                .or_insert_with(|| Trace {
                    channel: ch.clone(),
                    start_us: start,
                    samples: Vec::new(),
                })
                .samples
                .extend(kept);
        }
    }
    out.push(current);
    out.retain(|s| !s.traces.is_empty());
    out
}

/// A channel's unit as a UCUM code, when it is one.
fn ucum(unit: &str) -> Option<&'static str> {
    Some(match unit {
        "mV" => "mV",
        "uV" | "µV" => "uV",
        "V" => "V",
        "mmHg" => "mm[Hg]",
        "%" => "%",
        _ => return None,
    })
}

fn sampled_data(t: &Trace) -> Value {
    let ch = &t.channel;
    let mut origin = json!({"value": 0, "unit": ch.unit});
    if let Some(code) = ucum(&ch.unit) {
        origin["system"] = json!(UCUM);
        origin["code"] = json!(code);
    }
    // Raw minus baseline: exact integers for an integral baseline; factor × data is physical.
    let data: Vec<String> = t
        .samples
        .iter()
        .map(|&s| format!("{}", f64::from(s) - ch.baseline))
        .collect();
    json!({
        "origin": origin,
        "period": 1000.0 / ch.rate_hz,
        "factor": 1.0 / ch.gain,
        "dimensions": 1,
        "data": data.join(" "),
    })
}

fn waveform_observation(subject: &str, stream: &StreamId, s: &Segment) -> Value {
    let start = s
        .traces
        .values()
        .map(|t| t.start_us)
        .fold(f64::MAX, f64::min);
    let end = s
        .traces
        .values()
        .map(Trace::end_us)
        .fold(f64::MIN, f64::max);
    let all_ecg = s.traces.values().all(|t| is_ecg(&t.channel));
    let code = if all_ecg {
        json!({"coding": [{"system": MDC, "code": ECG_FAMILY.to_string(), "display": "MDC_ECG_ELEC_POTL"}], "text": "ECG"})
    } else {
        json!({"text": "Waveforms"})
    };
    let components: Vec<Value> = s
        .traces
        .values()
        .map(|t| {
            let mut code = json!({"text": t.channel.label});
            if t.channel.mdc != 0 {
                code["coding"] = json!([{"system": MDC, "code": t.channel.mdc.to_string()}]);
            }
            json!({"code": code, "valueSampledData": sampled_data(t)})
        })
        .collect();
    json!({
        "resourceType": "Observation",
        "id": format!("{stream}-waveform-{}", start.round() as i64),
        "status": "final",
        "code": code,
        "subject": {"reference": subject},
        "device": {"reference": format!("Device/{stream}")},
        "effectivePeriod": {
            "start": format_instant(start.round() as i64),
            "end": format_instant(end.round() as i64),
        },
        "component": components,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Block, Layout, Numeric, Waveform};

    fn channel(index: u8, label: &str) -> Channel {
        Channel {
            index,
            label: label.into(),
            unit: "mV".into(),
            rate_hz: 360.0,
            gain: 200.0,
            baseline: 1024.0,
            mdc: 0,
        }
    }

    fn frame(seq: u64, capture_us: i64, payload: Payload) -> Frame {
        Frame::for_test(seq, capture_us, payload)
    }

    fn wave(seq: u64, capture_us: i64, first: i32, n: i32) -> Frame {
        frame(
            seq,
            capture_us,
            Payload::Waveform(Waveform {
                blocks: vec![Block {
                    channel: 0,
                    samples: (first..first + n).collect(),
                }],
            }),
        )
    }

    fn layout(seq: u64, channels: Vec<Channel>) -> Frame {
        frame(seq, 0, Payload::Layout(Layout { channels }))
    }

    const T: i64 = 1_800_000_000_000_000;

    fn whole(stream: &str, record: StreamRecord) -> Part {
        Part {
            stream: stream.parse().unwrap(),
            from_us: i64::MIN,
            until_us: i64::MAX,
            record,
        }
    }

    fn hr(seq: u64, at: i64, value: f64) -> Frame {
        frame(
            seq,
            at,
            Payload::Numerics(vec![Numeric {
                code: Vital::Hr.code(),
                value,
            }]),
        )
    }

    #[test]
    fn fhir_patient_searches_take_only_the_patients_stretches() {
        let q = Query::parse("subject=Patient/MRN-0042", T).unwrap();
        assert_eq!(q.subject, Subject::Patient("MRN-0042".into()));
        // MON-1 measured the patient from T+1 s until T+3 s; MON-2 from T+2.5 s on.
        let mon1 = StreamRecord {
            frames: (0..5)
                .map(|i| hr(i, T + i as i64 * 1_000_000, 60.0 + i as f64))
                .collect(),
            alarms: Vec::new(),
        };
        let mon2 = StreamRecord {
            frames: vec![hr(1, T + 2_000_000, 90.0), hr(2, T + 2_600_000, 91.0)],
            alarms: Vec::new(),
        };
        let parts = [
            Part {
                stream: "MON-1".parse().unwrap(),
                from_us: T + 1_000_000,
                until_us: T + 3_000_000,
                record: mon1,
            },
            Part {
                stream: "MON-2".parse().unwrap(),
                from_us: T + 2_500_000,
                until_us: i64::MAX,
                record: mon2,
            },
        ];
        let latest = q.observations(&parts);
        assert_eq!(latest.len(), 1, "one latest HR over both monitors");
        assert_eq!(latest[0]["valueQuantity"]["value"], json!(91.0));
        assert_eq!(latest[0]["subject"]["reference"], "Patient/MRN-0042");
        assert_eq!(latest[0]["device"]["reference"], "Device/MON-2");

        let all = Query {
            numerics: Some(Numerics::In(T - 1, T + 10_000_000)),
            ..q
        }
        .observations(&parts);
        // Every value of the window, but only within the patient's stretches.
        let values: Vec<_> = all
            .iter()
            .map(|o| o["valueQuantity"]["value"].as_f64().unwrap())
            .collect();
        assert_eq!(
            values,
            [61.0, 62.0, 91.0],
            "MON-1 at 1 s and 2 s, MON-2 at 2.6 s"
        );
        assert!(parse_subject("Patient/").is_err());
        assert!(parse_subject("Patient/a|b").is_err());
    }

    #[test]
    fn fhir_instants_parse_and_format() {
        assert_eq!(parse_instant("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_instant("2027-01-15T09:30:00.25Z"),
            Some(1_800_005_400_250_000)
        );
        assert_eq!(
            parse_instant("2027-01-15T10:30:00.25+01:00"),
            parse_instant("2027-01-15T09:30:00.250Z")
        );
        assert_eq!(
            format_instant(1_800_005_400_250_000),
            "2027-01-15T09:30:00.250000Z"
        );
        for bad in [
            "2027-01-15",
            "2027-01-15T09:30:00",
            "2027-02-29T00:00:00Z",
            "2027-01-15T24:00:00Z",
            "2027-01-15T09:30:00.Z",
            "2027-01-15 09:30:00Z",
            "2027-01-15T09:30:00+1:00",
        ] {
            assert_eq!(parse_instant(bad), None, "{bad}");
        }
        let t = 1_234_567_890_123_456;
        assert_eq!(parse_instant(&format_instant(t)), Some(t));
    }

    #[test]
    fn fhir_search_parameters_parse() {
        let q = Query::parse(
            "subject=Device%2FAMB-7&date=ge2027-01-15T09:30:00Z&date=lt2027-01-15T09:31:00Z",
            T,
        )
        .unwrap();
        let (from, to) = (1_800_005_400_000_000, 1_800_005_460_000_000 - 1);
        assert_eq!(q.subject, Subject::Device("AMB-7".parse().unwrap()));
        assert_eq!(q.waveform, Some((from, to)));
        assert_eq!(q.numerics, Some(Numerics::In(from, to)));

        let q = Query::parse("subject=AMB-7&code=http://loinc.org|8867-4", T).unwrap();
        assert_eq!(q.waveform, None);
        assert_eq!(q.numerics, Some(Numerics::Latest));
        assert!(q.wants_vital(Vital::Hr) && !q.wants_vital(Vital::Spo2));
        assert_eq!(q.read_window(), Window::default());

        let q = Query::parse("subject=AMB-7&code=131328", T).unwrap();
        assert_eq!(q.waveform, Some((T - RECENT_US, T)));
        assert_eq!(q.numerics, None);
        assert!(q.wants_channel(&channel(0, "MLII")));

        let invalid = |raw: &str| Query::parse(raw, T).unwrap_err().code;
        assert_eq!(invalid(""), "invalid");
        assert_eq!(invalid("subject=Patient/x y"), "invalid");
        assert_eq!(
            invalid("subject=AMB-7&date=2027-01-15T09:30:00Z"),
            "invalid"
        );
        assert_eq!(invalid("subject=AMB-7&date=ge2027-01-15"), "invalid");
        assert_eq!(invalid("subject=AMB-7&foo=1"), "invalid");
        assert_eq!(invalid("subject=AMB-7&subject=AMB-8"), "invalid");
        assert_eq!(
            invalid("subject=AMB-7&date=le2027-01-15T09:30:00Z"),
            "too-costly"
        );
        assert_eq!(
            invalid("subject=AMB-7&date=ge2027-01-15T09:30:00Z&date=le2027-01-15T09:35:00.001Z"),
            "too-costly"
        );
    }

    #[test]
    fn fhir_sampled_data_cuts_frames_at_the_window() {
        // 10 samples per frame at 360 Hz; frames follow on without gaps.
        let step = 10_000_000 / 360;
        let frames = vec![
            layout(1, vec![channel(0, "MLII")]),
            wave(2, T, 1000, 10),
            wave(3, T + step, 1010, 10),
            wave(4, T + 2 * step, 1020, 10),
        ];
        let period = 1e6 / 360.0;
        // From sample 5 (of the first frame) to sample 24 (the 5th of the third).
        let from = T + (4.5 * period) as i64;
        let to = T + (24.5 * period) as i64;
        let segs = segments(&frames, from, to, |_| true);
        assert_eq!(segs.len(), 1);
        let trace = &segs[0].traces[&0];
        assert_eq!(trace.samples, (1005..1025).collect::<Vec<_>>());
        let sd = sampled_data(trace);
        let data: Vec<i64> = sd["data"]
            .as_str()
            .unwrap()
            .split(' ')
            .map(|d| d.parse().unwrap())
            .collect();
        assert_eq!(data, (-19..1).collect::<Vec<_>>());
        assert_eq!(sd["factor"], json!(0.005));
        assert_eq!(sd["period"], json!(1000.0 / 360.0));
        assert_eq!(
            sd["origin"],
            json!({"value": 0, "unit": "mV", "system": UCUM, "code": "mV"})
        );

        // A gap of a second starts another Observation.
        let mut gapped = frames.clone();
        gapped.push(wave(5, T + 1_000_000, 1030, 10));
        let segs = segments(&gapped, T, T + 2_000_000, |_| true);
        assert_eq!(segs.len(), 2);
        assert_eq!(segs[0].traces[&0].samples.len(), 30);
        assert_eq!(segs[1].traces[&0].samples, (1030..1040).collect::<Vec<_>>());
        let obs = waveform_observation("Device/AMB-7", &"AMB-7".parse().unwrap(), &segs[1]);
        assert_eq!(obs["code"]["coding"][0]["code"], "131328");
        assert_eq!(obs["subject"]["reference"], "Device/AMB-7");
        assert_eq!(obs["component"][0]["code"]["text"], "MLII");
    }

    #[test]
    fn fhir_latest_numerics_are_coded_observations() {
        let values = |hr: f64| {
            Payload::Numerics(vec![
                Numeric {
                    code: Vital::Hr.code(),
                    value: hr,
                },
                Numeric {
                    code: Vital::Lat.code(),
                    value: 52.0,
                },
            ])
        };
        let record = StreamRecord {
            frames: vec![
                frame(1, T, values(70.0)),
                frame(2, T + 1_000_000, values(72.0)),
            ],
            alarms: Vec::new(),
        };
        let q = Query::parse("subject=AMB-7", T).unwrap();
        let obs = q.observations(&[whole("AMB-7", record)]);
        assert_eq!(obs.len(), 1);
        let o = &obs[0];
        assert_eq!(
            o["code"]["coding"][0],
            json!({"system": MDC, "code": "147842", "display": "MDC_ECG_HEART_RATE"})
        );
        assert_eq!(o["code"]["coding"][1]["code"], "8867-4");
        assert_eq!(o["valueQuantity"]["value"], json!(72.0));
        assert_eq!(o["valueQuantity"]["code"], "/min");
        assert_eq!(o["effectiveDateTime"], format_instant(T + 1_000_000));
        assert_eq!(o["category"][0]["coding"][0]["code"], "vital-signs");
    }

    #[test]
    fn fhir_operation_outcomes_have_one_error_issue() {
        let o = Outcome::invalid("subject is required");
        assert_eq!(o.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            o.body(),
            json!({"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "invalid", "diagnostics": "subject is required"}]})
        );
        let r = o.into_response();
        assert_eq!(r.headers()[header::CONTENT_TYPE], FHIR_JSON);
    }
}
