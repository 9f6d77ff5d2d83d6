//! PCD-01 observations as frames of the telemetry wire format ([`crate::wire`]), so that
//! values taken over HL7 land in the same streams, alarms and records as an agent's frames.
//! Used by the gateway's MLLP listener and by the agent's (`--mllp-listen`).

use crate::hl7::pcd01::{self, Observations, WaveformObs};
use crate::wire::{
    self, Block, Channel, Frame, Header, Layout, Numeric, Payload, StreamId, Waveform, WireError,
};
use bytes::Bytes;

/// Most samples in one waveform block (keeps a frame well under the wire limit).
pub const MAX_BLOCK_SAMPLES: usize = 8192;

/// Why observations cannot be made into frames.
#[derive(Debug, thiserror::Error)]
pub enum FramesError {
    /// More waveform channels than a layout holds.
    #[error("more than 255 waveform channels")]
    TooManyChannels,
    /// A resolution, rate or sample out of range.
    #[error("a waveform's resolution or samples cannot be represented")]
    Unrepresentable,
    /// The encoder refused a frame.
    #[error("a frame cannot be encoded: {0}")]
    Encode(#[from] WireError),
}

/// One message's frames, encoded, numbered from `first_seq`: a layout when its waveforms'
/// channels differ from `current`, then the vitals (one numerics frame), then the waveforms.
pub fn frames_for(
    observations: &Observations,
    stream: &StreamId,
    first_seq: u64,
    current: Option<&[Channel]>,
) -> Result<Vec<(Frame, Bytes)>, FramesError> {
    let mut payloads: Vec<(i64, Payload)> = Vec::new();
    let mut blocks = Vec::new();
    if !observations.waveforms.is_empty() {
        let mut channels = Vec::new();
        for (i, w) in observations.waveforms.iter().enumerate() {
            let index = u8::try_from(i).map_err(|_| FramesError::TooManyChannels)?;
            let (gain, raw) = quantize(w)?;
            channels.push(Channel {
                index,
                label: w.label.clone(),
                unit: unit_name(w.unit_code).to_owned(),
                rate_hz: w.rate_hz,
                gain,
                baseline: 0.0,
                mdc: w.code,
            });
            blocks.push((index, w, raw));
        }
        if current != Some(channels.as_slice()) {
            payloads.push((observations.time_us, Payload::Layout(Layout { channels })));
        }
    }
    let vitals: Vec<Numeric> = observations
        .numerics
        .iter()
        .filter_map(|n| {
            n.vital.map(|v| Numeric {
                code: v.code(),
                value: n.value,
            })
        })
        .collect();
    if !vitals.is_empty() {
        payloads.push((observations.time_us, Payload::Numerics(vitals)));
    }
    for (index, w, raw) in blocks {
        for (k, chunk) in raw.chunks(MAX_BLOCK_SAMPLES).enumerate() {
            let offset_us = (k * MAX_BLOCK_SAMPLES) as f64 * 1e6 / w.rate_hz;
            let block = Block {
                channel: index,
                samples: chunk.to_vec(),
            };
            payloads.push((
                w.time_us + offset_us as i64,
                Payload::Waveform(Waveform {
                    blocks: vec![block],
                }),
            ));
        }
    }
    payloads
        .into_iter()
        .zip(first_seq..)
        .map(|((capture_us, payload), seq)| {
            let frame = Frame {
                header: Header {
                    kind: payload.kind(),
                    flags: 0,
                    stream: stream.clone(),
                    seq,
                    capture_us,
                },
                payload,
            };
            let bytes = Bytes::from(wire::encode(&frame)?);
            Ok((frame, bytes))
        })
        .collect()
}

/// The gain (raw units per physical unit) and raw samples of a waveform: the samples as sent
/// when they are integers, else scaled by the least power of ten (up to 10⁶) that makes them
/// so.
fn quantize(w: &WaveformObs) -> Result<(f64, Vec<i32>), FramesError> {
    let scale = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6]
        .into_iter()
        .find(|m| {
            w.samples
                .iter()
                .all(|s| ((s * m).round() - s * m).abs() < 1e-6)
        })
        .unwrap_or(1e6);
    let gain = scale / w.resolution.unwrap_or(1.0);
    if !(gain.is_finite() && gain > 0.0 && w.rate_hz > 0.0) {
        return Err(FramesError::Unrepresentable);
    }
    let raw = w
        .samples
        .iter()
        .map(|s| {
            let r = (s * scale).round();
            (r.is_finite() && r >= f64::from(i32::MIN) && r <= f64::from(i32::MAX))
                .then_some(r as i32)
                .ok_or(FramesError::Unrepresentable)
        })
        .collect::<Result<_, _>>()?;
    Ok((gain, raw))
}

/// A channel's unit text for an MDC unit code (empty when not known).
fn unit_name(code: u32) -> &'static str {
    match code {
        pcd01::MDC_DIM_MILLI_VOLT => "mV",
        pcd01::MDC_DIM_PERCENT => "%",
        pcd01::MDC_DIM_MMHG => "mmHg",
        pcd01::MDC_DIM_KILO_PASCAL => "kPa",
        pcd01::MDC_DIM_DEGC => "Cel",
        pcd01::MDC_DIM_BEAT_PER_MIN => "/min",
        pcd01::MDC_DIM_RESP_PER_MIN => "/min",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hl7::handle;
    use crate::hl7::pcd01::tests::MONITOR;

    #[test]
    fn long_and_fractional_waveforms_are_split_and_scaled() {
        let mut obs = handle(MONITOR.as_bytes(), 1_749_713_600_000_000)
            .observations
            .expect("accepted");
        let w = &mut obs.waveforms[0];
        w.resolution = None;
        w.samples = (0..MAX_BLOCK_SAMPLES + 10)
            .map(|i| i as f64 * 0.25)
            .collect();
        let rate = w.rate_hz;
        let start = w.time_us;
        let id = obs.source.stream_key();
        let frames = frames_for(&obs, &id, 1, None).unwrap();
        let Payload::Layout(layout) = &frames[0].0.payload else {
            panic!()
        };
        assert_eq!(layout.channels[0].gain, 100.0);
        let waves: Vec<_> = frames
            .iter()
            .filter_map(|(f, _)| match &f.payload {
                Payload::Waveform(w) => Some((f.header.capture_us, w.blocks[0].samples.len())),
                _ => None,
            })
            .collect();
        let second = start + (MAX_BLOCK_SAMPLES as f64 * 1e6 / rate) as i64;
        assert_eq!(waves, [(start, MAX_BLOCK_SAMPLES), (second, 10)]);

        obs.waveforms[0].samples = vec![1e12];
        assert!(matches!(
            frames_for(&obs, &id, 1, None),
            Err(FramesError::Unrepresentable)
        ));
    }
}
