//! `GET /telemetry/streams/{id}/record.edf`: a stream's durable record as an EDF+ file.
//!
//! One signal per waveform channel, with digital value = raw − baseline whenever that is
//! exact (else the finest linear scale that fits 16 bits); numerics and alarms are
//! annotations. Each contiguous stretch of frames (see [`CLOCK_SLACK_US`]) becomes data
//! records of its own (EDF+D when there are gaps); a stretch's last record is completed by
//! holding the last sample, and an annotation marks where the recorded data ends.

use crate::gateway::Gateway;
use crate::gateway::alarms::{Alarm, AlarmState};
use crate::gateway::http::{ErrorBody, HttpError, Visible, bearer};
use crate::gateway::record::{StreamRecord, Window};
use crate::wire::{Channel, Payload, StreamId, Vital};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use recorder::audit::Action;
use recorder::edf::{self, Annotation, Record, Signal, Start};
use serde::Deserialize;
use signaling::token::Role;
use std::sync::Arc;
use tracing::{info, warn};

/// Record durations tried, µs: the first that holds a whole number of samples of every
/// channel is used.
const RECORD_US: [i64; 8] = [
    1_000_000, 2_000_000, 5_000_000, 10_000_000, 500_000, 250_000, 200_000, 100_000,
];

/// A frame whose capture time is within this many µs of where the stretch's samples end
/// continues it: the agent's clock corrections move capture times by a few ms. Within a
/// stretch, time follows the sample count.
const CLOCK_SLACK_US: f64 = 250_000.0;

/// Routes of the EDF+ export.
pub fn routes(gw: Arc<Gateway>) -> axum::Router {
    axum::Router::new()
        .route("/telemetry/streams/{id}/record.edf", get(record_edf))
        .with_state(gw)
}

/// The optional time window, ms since the Unix epoch (inclusive).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct EdfQuery {
    /// Earliest capture time, ms since the Unix epoch.
    from: Option<String>,
    /// Latest capture time, ms since the Unix epoch.
    to: Option<String>,
}

/// The stream's record (every waveform channel, numerics and alarms as annotations) as an
/// EDF+ file, optionally limited to capture times `from`..=`to` (ms since the Unix epoch).
#[utoipa::path(get, path = "/telemetry/streams/{id}/record.edf",
    params(("id" = String, Path, description = "The ambulance stream"), EdfQuery),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn record_edf(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
    Query(q): Query<EdfQuery>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let claims = bearer(&gw, &headers)?;
    let visible = Visible::of(&claims)?;
    if !matches!(claims.role, Role::Er | Role::Specialist) {
        return Err(HttpError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "downloading a record needs an er or specialist token",
        ));
    }
    let ms = |name: &str, v: &Option<String>| -> Result<Option<i64>, HttpError> {
        v.as_deref()
            .map(|s| {
                s.trim()
                    .parse::<i64>()
                    .ok()
                    .and_then(|ms| ms.checked_mul(1000))
                    .ok_or_else(|| {
                        HttpError::new(
                            StatusCode::BAD_REQUEST,
                            "bad_query",
                            format!("{name} must be ms since the Unix epoch"),
                        )
                    })
            })
            .transpose()
    };
    let window = Window {
        from_us: ms("from", &q.from)?,
        to_us: ms("to", &q.to)?,
    };
    let not_found = || HttpError::unknown_stream(&id);
    let stream: StreamId = id.parse().map_err(|_| not_found())?;
    if !visible.allows(&stream) || !gw.has_record(&stream) {
        return Err(not_found());
    }
    let record = gw.record(&stream, window).await.map_err(|e| {
        warn!(%stream, "cannot read the stream's journal: {e}");
        HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the stream's record cannot be read",
        )
    })?;
    let bytes = build(&stream, &record)
        .and_then(|f| f.encode().map_err(|e| e.to_string()))
        .map_err(|m| HttpError::new(StatusCode::UNPROCESSABLE_ENTITY, "no_edf", m))?;
    let detail = (q.from.is_some() || q.to.is_some()).then(|| {
        format!(
            "from {} to {}",
            q.from.as_deref().unwrap_or("start"),
            q.to.as_deref().unwrap_or("end")
        )
    });
    gw.audit(&claims, Action::Export, &stream, detail)
        .await
        .map_err(|e| {
            warn!("an EDF+ export cannot be audited, so it is refused: {e}");
            HttpError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the audit trail cannot be written",
            )
        })?;
    info!(%stream, bytes = bytes.len(), "EDF+ export");
    let disposition = format!("attachment; filename=\"{stream}.edf\"");
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        bytes,
    )
        .into_response())
}

/// How a channel's raw samples become 16-bit digital values.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Scale {
    /// digital = round((raw − baseline) × factor)
    factor: f64,
    /// The signal's header fields.
    digital: (i16, i16),
    physical: (f64, f64),
}

impl Scale {
    /// Exact (`factor` 1) when the baseline is whole and `lo..=hi` (raw − baseline) fits.
    fn of(ch: &Channel, lo: f64, hi: f64) -> Self {
        let g = ch.gain;
        let whole = ch.baseline.fract() == 0.0;
        let exact = |dmin: i16, dmax: i16, pmin: f64, pmax: f64| {
            (whole && lo >= f64::from(dmin) && hi <= f64::from(dmax)).then_some(Self {
                factor: 1.0,
                digital: (dmin, dmax),
                physical: (pmin, pmax),
            })
        };
        let full = edf::exact_number(-32768.0 / g)
            .zip(edf::exact_number(32767.0 / g))
            .and_then(|_| exact(i16::MIN, i16::MAX, -32768.0 / g, 32767.0 / g));
        // A whole gain: ±k physical units are exactly ±k·gain digital.
        let whole_gain = (g.fract() == 0.0 && (1.0..=32767.0).contains(&g))
            .then(|| (32767.0 / g).floor())
            .and_then(|k| exact((-k * g) as i16, (k * g) as i16, -k, k));
        full.or(whole_gain).unwrap_or_else(|| {
            let factor = 32767.0 / lo.abs().max(hi.abs()).max(1.0);
            Self {
                factor,
                digital: (i16::MIN, i16::MAX),
                physical: (-32768.0 / (g * factor), 32767.0 / (g * factor)),
            }
        })
    }

    fn digital(&self, raw: i32, baseline: f64) -> i16 {
        let d = ((f64::from(raw) - baseline) * self.factor).round();
        d.clamp(f64::from(self.digital.0), f64::from(self.digital.1)) as i16
    }
}

/// A run of frames without gaps: per channel, its samples.
struct Stretch {
    start_us: i64,
    samples: Vec<Vec<i32>>,
}

/// The EDF+ file of `record`, or why there is none.
fn build(stream: &StreamId, record: &StreamRecord) -> Result<edf::File, String> {
    let mut layout: Option<Vec<Channel>> = None;
    let mut stretches: Vec<Stretch> = Vec::new();
    let mut annotations: Vec<(i64, String)> = Vec::new();
    for frame in &record.frames {
        let t = frame.header.capture_us;
        match &frame.payload {
            Payload::Layout(l) => {
                let mut channels = l.channels.clone();
                channels.sort_by_key(|c| c.index);
                if !stretches.is_empty() && layout.as_ref().is_some_and(|old| *old != channels) {
                    return Err("the stream's channels changed during the window; export a \
                                window (from, to) with one channel layout"
                        .into());
                }
                layout = Some(channels);
            }
            Payload::Waveform(w) => {
                let Some(channels) = layout.as_deref() else {
                    continue;
                };
                let continues = stretches.last().is_some_and(|s| {
                    channels.iter().zip(&s.samples).all(|(c, got)| {
                        let expected = s.start_us as f64 + got.len() as f64 * 1e6 / c.rate_hz;
                        (t as f64 - expected).abs() <= CLOCK_SLACK_US.max(0.5e6 / c.rate_hz)
                    })
                });
                if !continues {
                    stretches.push(Stretch {
                        start_us: t,
                        samples: vec![Vec::new(); channels.len()],
                    });
                }
                let s = stretches.last_mut().expect("a stretch");
                for b in &w.blocks {
                    if let Some(i) = channels.iter().position(|c| c.index == b.channel) {
                        s.samples[i].extend_from_slice(&b.samples);
                    }
                }
            }
            Payload::Numerics(values) => {
                let text: Vec<String> = values
                    .iter()
                    .map(|n| match Vital::from_code(n.code) {
                        Some(v) => format!("{}={}", v.name(), n.value),
                        None => format!("mdc{}={}", n.code, n.value),
                    })
                    .collect();
                annotations.push((t, format!("NUMERICS {}", text.join(" "))));
            }
        }
    }
    let channels = layout
        .as_deref()
        .filter(|_| !stretches.is_empty())
        .ok_or("the window holds no waveform samples (try a wider from/to window)")?;
    let record_us = RECORD_US
        .into_iter()
        .find(|&d| {
            channels.iter().all(|c| {
                let n = c.rate_hz * d as f64 / 1e6;
                n >= 1.0 && (n - n.round()).abs() < 1e-6
            })
        })
        .ok_or("no record duration up to 10 s holds whole samples of every channel's rate")?;
    let spr: Vec<usize> = channels
        .iter()
        .map(|c| (c.rate_hz * record_us as f64 / 1e6).round() as usize)
        .collect();
    let scales: Vec<Scale> = channels
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let (lo, hi) = stretches.iter().flat_map(|s| &s.samples[i]).fold(
                (0.0f64, 0.0f64),
                |(lo, hi), &r| {
                    let v = f64::from(r) - c.baseline;
                    (lo.min(v), hi.max(v))
                },
            );
            Scale::of(c, lo, hi)
        })
        .collect();

    let first_us = stretches[0].start_us;
    let file_start_us = first_us.div_euclid(1_000_000) * 1_000_000;
    let mut records: Vec<Record> = Vec::new();
    for s in &stretches {
        let mut onset = s.start_us - file_start_us;
        if let Some(prev) = records.last() {
            let end = prev.onset_us + record_us;
            if onset < end {
                annotations.push((
                    s.start_us,
                    format!("TIMING data shifted {} us later (clock step)", end - onset),
                ));
                onset = end;
            }
        }
        let n = s
            .samples
            .iter()
            .zip(&spr)
            .map(|(v, &k)| v.len().div_ceil(k))
            .max()
            .unwrap_or(0);
        let covered_us = channels
            .iter()
            .zip(&s.samples)
            .map(|(c, v)| (v.len() as f64 * 1e6 / c.rate_hz).round() as i64)
            .min()
            .unwrap_or(0);
        if covered_us < n as i64 * record_us {
            annotations.push((
                file_start_us + onset + covered_us,
                "END recorded data ends; the rest of this data record repeats the last sample"
                    .into(),
            ));
        }
        for r in 0..n {
            let samples = s
                .samples
                .iter()
                .zip(&spr)
                .zip(channels.iter().zip(&scales))
                .map(|((v, &k), (c, scale))| {
                    (r * k..(r + 1) * k)
                        .map(|j| {
                            let raw = v.get(j).or(v.last()).copied();
                            raw.map_or(scale.digital.0, |raw| scale.digital(raw, c.baseline))
                        })
                        .collect()
                })
                .collect();
            records.push(Record {
                onset_us: onset + r as i64 * record_us,
                samples,
            });
        }
    }
    annotations.extend(record.alarms.iter().map(alarm_text));
    annotations.sort_by_key(|a| a.0);

    let start = Start::from_unix(file_start_us / 1_000_000);
    Ok(edf::File {
        patient: "X X X X".into(),
        recording: format!("Startdate {} X medrelay {stream}", start.edfplus_date()),
        start,
        record_us,
        signals: channels
            .iter()
            .zip(&spr)
            .zip(&scales)
            .map(|((c, &k), s)| Signal {
                label: signal_label(c),
                transducer: String::new(),
                unit: c.unit.clone(),
                physical_min: s.physical.0,
                physical_max: s.physical.1,
                digital_min: s.digital.0,
                digital_max: s.digital.1,
                prefilter: String::new(),
                samples_per_record: k,
            })
            .collect(),
        records,
        annotations: annotations
            .into_iter()
            .map(|(t, text)| Annotation {
                onset_us: t - file_start_us,
                duration_us: None,
                text,
            })
            .collect(),
    })
}

/// `ECG <label>` for ECG leads (an ECG MDC code, or a voltage unit), else the label.
fn signal_label(c: &Channel) -> String {
    let ecg = c.mdc >> 16 == 2 || matches!(c.unit.as_str(), "mV" | "uV" | "µV" | "V");
    if ecg && !c.label.starts_with("ECG") {
        format!("ECG {}", c.label)
    } else {
        c.label.clone()
    }
}

/// When an alarm event happened (µs) and its text, e.g. `ALARM high HR 151 > 140 raised`.
fn alarm_text(a: &Alarm) -> (i64, String) {
    let condition = serde_json::to_value(a.condition)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let (at_ms, what) = match (a.acked_at_ms, a.cleared_at_ms, a.state) {
        (Some(t), c, _) if c.is_none_or(|c| t >= c) => (
            t,
            format!("acked by {}", a.acked_by.as_deref().unwrap_or("?")),
        ),
        (_, Some(t), AlarmState::Cleared) => (t, "cleared".to_owned()),
        _ => (a.raised_at_ms, "raised".to_owned()),
    };
    (
        at_ms * 1000,
        format!("ALARM {condition} {} {what}", a.message),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::alarms::{AlarmKind, Condition, Priority};
    use crate::wire::{Block, Frame, Layout, Numeric, Waveform};

    const T0: i64 = 1_767_225_600_250_000; // 2026-01-01 00:00:00.25 UTC

    fn frame(seq: u64, capture_us: i64, payload: Payload) -> Frame {
        Frame::for_test(seq, capture_us, payload)
    }

    fn wave(seq: u64, capture_us: i64, samples: Vec<i32>) -> Frame {
        let blocks = vec![Block {
            channel: 0,
            samples,
        }];
        frame(seq, capture_us, Payload::Waveform(Waveform { blocks }))
    }

    fn record() -> StreamRecord {
        let channel = Channel {
            index: 0,
            label: "MLII".into(),
            unit: "mV".into(),
            rate_hz: 4.0,
            gain: 200.0,
            baseline: 1024.0,
            mdc: 0,
        };
        let layout = Layout {
            channels: vec![channel],
        };
        let numerics = vec![Numeric {
            code: Vital::Hr.code(),
            value: 151.0,
        }];
        StreamRecord {
            frames: vec![
                frame(1, T0, Payload::Layout(layout)),
                wave(2, T0, vec![1024, 1025, 1000, 2047]),
                // 20 ms late (a clock correction): still contiguous.
                wave(3, T0 + 1_020_000, vec![0, 1, 2, 3, 4, 5]),
                frame(4, T0 + 1_500_000, Payload::Numerics(numerics)),
                // A gap of 2.5 s, then a stretch of two samples.
                wave(5, T0 + 5_000_000, vec![7, 8]),
            ],
            alarms: vec![Alarm {
                id: 1,
                kind: AlarmKind::Physiological,
                vital: Some(Vital::Hr),
                condition: Condition::High,
                priority: Priority::High,
                value: Some(151.0),
                limit: Some(140.0),
                state: AlarmState::Active,
                raised_at_ms: T0 / 1000 + 1_500,
                cleared_at_ms: None,
                acked_by: None,
                acked_at_ms: None,
                message: "HR 151 > 140".into(),
            }],
        }
    }

    #[test]
    fn edf_export_keeps_stretches_samples_and_annotations() {
        let f = build(&"AMB-7".parse().unwrap(), &record()).unwrap();
        assert_eq!(f.recording, "Startdate 01-JAN-2026 X medrelay AMB-7");
        assert_eq!(f.patient, "X X X X");
        assert_eq!(f.record_us, 1_000_000);
        let s = &f.signals[0];
        assert_eq!((s.label.as_str(), s.samples_per_record), ("ECG MLII", 4));
        assert_eq!((s.physical_min, s.physical_max), (-163.84, 163.835));
        let onsets: Vec<i64> = f.records.iter().map(|r| r.onset_us).collect();
        assert_eq!(onsets, vec![250_000, 1_250_000, 2_250_000, 5_250_000]);
        assert!(!f.contiguous());
        let digital: Vec<i16> = f
            .records
            .iter()
            .flat_map(|r| r.samples[0].clone())
            .collect();
        let want = [
            0, 1, -24, 1023, -1024, -1023, -1022, -1021, -1020, -1019, -1019, -1019,
        ];
        assert_eq!(&digital[..12], &want);
        assert_eq!(&digital[12..], &[-1017, -1016, -1016, -1016]);
        let texts: Vec<(i64, &str)> = f
            .annotations
            .iter()
            .map(|a| (a.onset_us, a.text.as_str()))
            .collect();
        assert_eq!(texts[0], (1_750_000, "NUMERICS hr=151"));
        assert_eq!(texts[1], (1_750_000, "ALARM high HR 151 > 140 raised"));
        assert_eq!(texts[2].0, 2_750_000);
        assert!(texts[2].1.starts_with("END"));
        assert_eq!(texts[3].0, 5_750_000);
        assert!(f.encode().is_ok());
    }

    #[test]
    fn edf_export_scales() {
        let mut c = record().frames[0].clone();
        let Payload::Layout(l) = &mut c.payload else {
            panic!()
        };
        let ch = &mut l.channels[0];
        ch.gain = 3.0;
        let s = Scale::of(ch, -100.0, 100.0);
        assert_eq!(
            (s.factor, s.digital, s.physical),
            (1.0, (-32766, 32766), (-10922.0, 10922.0))
        );
        ch.baseline = 0.5;
        let s = Scale::of(ch, -100.0, 100.0);
        assert_eq!(s.factor, 327.67);
        assert_eq!(s.digital(100, 0.5), 32603);
    }

    #[test]
    fn edf_export_refuses_empty_and_odd_rates() {
        let mut r = record();
        let id = "AMB-7".parse().unwrap();
        r.frames.truncate(1);
        assert!(build(&id, &r).unwrap_err().contains("no waveform"));
        let mut r = record();
        if let Payload::Layout(l) = &mut r.frames[0].payload {
            l.channels[0].rate_hz = 0.33;
        }
        assert!(build(&id, &r).unwrap_err().contains("record duration"));
    }
}
