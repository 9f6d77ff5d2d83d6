//! HL7 v2 over MLLP from monitors (`medrelay serve --mllp-listen`): each `ORU^R01` (IHE
//! PCD-01) message is parsed by [`crate::hl7`], turned into frames of the stream named by its
//! sender ([`crate::hl7::pcd01::Source::stream_key`]) and taken like an agent's frames
//! (viewers, alarms, journal). `MSA|AA` is answered only once those frames are durable; a
//! refused message gets its `AE`/`AR` at once and the connection stays open.

use crate::gateway::{Gateway, StreamSlot, now_ms, now_us};
use crate::hl7::ack::{self, Acknowledgment, ErrorCode, Problem};
use crate::hl7::message::Message;
use crate::hl7::mllp::{MllpDecoder, encode};
use crate::hl7::pcd01::{self, Observations, WaveformObs};
use crate::hl7::{handle, reject_frame};
use crate::wire::{
    self, Block, Channel, Frame, Header, Layout, Numeric, Payload, StreamId, Waveform, WireError,
};
use bytes::Bytes;
use recorder::journal::JournalError;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, info, warn};

/// Largest MLLP frame (one HL7 message) taken; a larger one is answered `AR` and dropped.
pub const MAX_FRAME_BYTES: usize = 1 << 20;
/// Most MLLP connections at once; more are closed as they are accepted.
pub const MAX_CONNECTIONS: usize = 256;
/// A connection that sends nothing (or takes no ACK) for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for a message's frames to become durable before answering `AE` (207).
pub const DURABLE_WAIT: Duration = Duration::from_secs(5);
/// Most streams one connection may feed (a gateway or interface engine relays several
/// monitors); messages for more are answered `AE` (207).
pub const MAX_STREAMS_PER_CONNECTION: usize = 64;
/// Most samples in one waveform block (keeps a frame well under the wire limit).
const MAX_BLOCK_SAMPLES: usize = 8192;

/// Why an accepted message could not be stored.
#[derive(Debug, thiserror::Error)]
enum StoreError {
    #[error("the stream's journal cannot be opened: {0}")]
    Journal(#[from] JournalError),
    #[error("more than {MAX_STREAMS_PER_CONNECTION} streams on one connection")]
    TooManyStreams,
    #[error("more than 255 waveform channels")]
    TooManyChannels,
    #[error("a waveform's resolution or samples cannot be represented")]
    Unrepresentable,
    #[error("a frame cannot be encoded: {0}")]
    Encode(#[from] WireError),
    #[error("the stream refused the frames: {0}")]
    Ingest(#[from] crate::gateway::ingest::IngestError),
    #[error("the values were not stored within {DURABLE_WAIT:?}")]
    NotDurable,
}

/// Accepts MLLP connections until the listener fails; each is served on its own task.
pub async fn serve_mllp(gw: Arc<Gateway>, listener: TcpListener) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!("MLLP accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            warn!(%peer, "too many MLLP connections ({MAX_CONNECTIONS}); closing a new one");
            continue;
        };
        let gw = gw.clone();
        tokio::spawn(async move {
            connection(gw, socket, peer).await;
            drop(permit);
        });
    }
}

/// The streams a connection feeds; their link shows "up" while it is open.
struct Links {
    gw: Arc<Gateway>,
    attached: HashMap<StreamId, (Arc<StreamSlot>, u64)>,
}

impl Links {
    async fn slot(&mut self, id: &StreamId) -> Result<Arc<StreamSlot>, StoreError> {
        if let Some((slot, _)) = self.attached.get(id) {
            return Ok(slot.clone());
        }
        if self.attached.len() >= MAX_STREAMS_PER_CONNECTION {
            return Err(StoreError::TooManyStreams);
        }
        let slot = self.gw.load(id).await?;
        // No agent reads this channel: acknowledgements reach the monitor as HL7 ACKs.
        let (tx, _) = mpsc::unbounded_channel();
        let conn = self.gw.attach_agent(&slot, tx);
        self.attached.insert(id.clone(), (slot.clone(), conn));
        Ok(slot)
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        for (slot, conn) in self.attached.values() {
            self.gw.detach_agent(slot, *conn);
        }
    }
}

async fn connection(gw: Arc<Gateway>, mut socket: TcpStream, peer: SocketAddr) {
    let _ = socket.set_nodelay(true);
    info!(%peer, "MLLP connection opened");
    let mut decoder = MllpDecoder::new(MAX_FRAME_BYTES);
    let mut links = Links {
        gw: gw.clone(),
        attached: HashMap::new(),
    };
    let mut buf = vec![0u8; 16 * 1024];
    'read: loop {
        let n = match tokio::time::timeout(IDLE_TIMEOUT, socket.read(&mut buf)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                info!(%peer, "MLLP read failed: {e}");
                break;
            }
            Err(_) => {
                info!(%peer, "MLLP connection idle for {IDLE_TIMEOUT:?}; closing");
                break;
            }
        };
        decoder.push(&buf[..n]);
        while let Some(item) = decoder.poll() {
            let reply = match item {
                Ok(message) => take_message(&gw, &mut links, &message).await,
                Err(error) => {
                    count(&gw, "AR");
                    warn!(%peer, "MLLP framing error: {error}");
                    reject_frame(&error, now_us())
                }
            };
            let framed = encode(&reply);
            let write = socket.write_all(&framed);
            if !matches!(tokio::time::timeout(IDLE_TIMEOUT, write).await, Ok(Ok(()))) {
                info!(%peer, "MLLP peer does not take its ACK; closing");
                break 'read;
            }
        }
    }
    drop(links);
    info!(%peer, "MLLP connection closed");
}

fn count(gw: &Gateway, code: &str) {
    gw.metrics.hl7_messages.with_label_values(&[code]).inc();
}

/// Handles one message; returns its ACK (not framed).
async fn take_message(gw: &Gateway, links: &mut Links, message: &[u8]) -> Vec<u8> {
    let now = now_us();
    let handled = handle(message, now);
    let Some(observations) = handled.observations else {
        let code = handled.acknowledgment.code();
        count(gw, code);
        // The problem's text may quote the message's content: only its table code is logged.
        let err = handled.acknowledgment.problem().map(|p| p.code.code());
        info!(ack = code, err, "HL7 message refused");
        return handled.ack;
    };
    let stream = observations.source.stream_key();
    match store(gw, links, &stream, &observations).await {
        Ok(frames) => {
            count(gw, "AA");
            debug!(%stream, frames, "HL7 message stored");
            handled.ack
        }
        Err(e) => {
            count(gw, "AE");
            warn!(%stream, "HL7 message not stored: {e}");
            let problem = Problem {
                code: ErrorCode::ApplicationInternalError,
                location: None,
                message: e.to_string(),
            };
            let header = Message::parse_header(message).ok();
            ack::build(header.as_ref(), &Acknowledgment::Error(problem), now)
        }
    }
}

/// Takes the observations into `stream` and waits until they are durable; returns how many
/// frames they made.
async fn store(
    gw: &Gateway,
    links: &mut Links,
    stream: &StreamId,
    observations: &Observations,
) -> Result<usize, StoreError> {
    let slot = links.slot(stream).await?;
    let (last, since, n) = {
        let mut state = slot.state.lock().expect("stream");
        let frames = frames_for(observations, stream, state.next_seq(), state.layout())?;
        let Some((last, _)) = frames.last() else {
            return Ok(0);
        };
        let last = last.header.seq;
        let now = now_ms();
        let mut records = Vec::new();
        for (frame, bytes) in &frames {
            let outcome = state.on_frame(frame, bytes.clone(), now)?;
            if outcome.fresh {
                gw.metrics.frames.inc();
            }
            records.extend(outcome.records);
        }
        // Under the lock: the journal gets this stream's records in the order taken.
        gw.persist(stream, records);
        (last, slot.durability(), frames.len())
    };
    if slot.wait_durable(last, since, DURABLE_WAIT).await {
        Ok(n)
    } else {
        Err(StoreError::NotDurable)
    }
}

/// One message's frames, encoded, numbered from `first_seq`: a layout when its waveforms'
/// channels differ from `current`, then the vitals (one numerics frame), then the waveforms.
fn frames_for(
    observations: &Observations,
    stream: &StreamId,
    first_seq: u64,
    current: Option<&[Channel]>,
) -> Result<Vec<(Frame, Bytes)>, StoreError> {
    let mut payloads: Vec<(i64, Payload)> = Vec::new();
    let mut blocks = Vec::new();
    if !observations.waveforms.is_empty() {
        let mut channels = Vec::new();
        for (i, w) in observations.waveforms.iter().enumerate() {
            let index = u8::try_from(i).map_err(|_| StoreError::TooManyChannels)?;
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
fn quantize(w: &WaveformObs) -> Result<(f64, Vec<i32>), StoreError> {
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
        return Err(StoreError::Unrepresentable);
    }
    let raw = w
        .samples
        .iter()
        .map(|s| {
            let r = (s * scale).round();
            (r.is_finite() && r >= f64::from(i32::MIN) && r <= f64::from(i32::MAX))
                .then_some(r as i32)
                .ok_or(StoreError::Unrepresentable)
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
    use crate::gateway::stream::{AmbulanceStream, record_kind};
    use crate::hl7::pcd01::tests::MONITOR;
    use crate::wire::Vital;

    const NOW: i64 = 1_749_713_600_000_000;

    fn observations(text: &str) -> Observations {
        handle(text.as_bytes(), NOW).observations.expect("accepted")
    }

    #[test]
    fn mllp_frames_follow_the_stream_and_raise_alarms() {
        let obs = observations(&MONITOR.replacen("|72|", "|151|", 1));
        let id = obs.source.stream_key();
        assert_eq!(id.as_str(), "0123456789ABCDEF");
        let mut stream = AmbulanceStream::new(id.clone(), 4, 100, 0);
        assert_eq!(stream.next_seq(), 5, "continues after what is durable");

        let frames = frames_for(&obs, &id, stream.next_seq(), stream.layout()).unwrap();
        let seqs: Vec<u64> = frames.iter().map(|(f, _)| f.header.seq).collect();
        assert_eq!(seqs, [5, 6, 7], "layout, numerics, waveform");
        let Payload::Layout(layout) = &frames[0].0.payload else {
            panic!("a layout first: {:?}", frames[0].0.payload)
        };
        let lead = &layout.channels[0];
        assert_eq!(
            (lead.label.as_str(), lead.unit.as_str()),
            ("MDC_ECG_ELEC_POTL_II", "mV")
        );
        assert_eq!((lead.rate_hz, lead.gain, lead.mdc), (250.0, 200.0, 131_330));
        let Payload::Numerics(values) = &frames[1].0.payload else {
            panic!("numerics second")
        };
        let hr = values.iter().find(|n| n.code == Vital::Hr.code()).unwrap();
        assert_eq!(hr.value, 151.0);
        assert!(
            values.iter().all(|n| Vital::from_code(n.code).is_some()),
            "only vitals"
        );
        let Payload::Waveform(w) = &frames[2].0.payload else {
            panic!("waveform last")
        };
        assert_eq!(w.blocks[0].samples, [512, 530, 601, 588, 520]);

        let mut records = Vec::new();
        for (frame, bytes) in &frames {
            let outcome = stream.on_frame(frame, bytes.clone(), 1000).unwrap();
            assert!(outcome.fresh);
            records.extend(outcome.records);
        }
        assert_eq!(
            records.iter().filter_map(|r| r.seq).collect::<Vec<_>>(),
            [5, 6, 7]
        );
        assert!(records.iter().any(|r| r.kind == record_kind::ALARM));
        assert_eq!(stream.summary().numerics[&Vital::Hr], 151.0);
        assert_eq!(stream.summary().active_alarms, 1);

        // The same channels again: no new layout, numbering goes on.
        assert_eq!(stream.next_seq(), 8);
        let again = frames_for(&obs, &id, stream.next_seq(), stream.layout()).unwrap();
        let kinds: Vec<_> = again
            .iter()
            .map(|(f, _)| (f.header.seq, f.header.kind))
            .collect();
        assert_eq!(
            kinds,
            [(8, wire::Kind::Numerics), (9, wire::Kind::Waveform)]
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn mllp_store_returns_once_durable_and_links_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::gateway::GatewayConfig {
            data_dir: dir.path().into(),
            ring_seconds: 10,
        };
        let gw = Gateway::start(config, signaling::token::TokenKeys::new(&[7; 32]));
        let obs = observations(MONITOR);
        let id = obs.source.stream_key();
        let mut links = Links {
            gw: gw.clone(),
            attached: HashMap::new(),
        };
        assert_eq!(store(&gw, &mut links, &id, &obs).await.unwrap(), 3);
        let slot = gw.slot(&id).expect("loaded");
        assert_eq!(slot.durability().through, 3);
        assert_eq!(slot.state.lock().unwrap().summary().link, "up");
        assert_eq!(store(&gw, &mut links, &id, &obs).await.unwrap(), 2);
        assert_eq!(slot.durability().through, 5);
        drop(links);
        assert_eq!(slot.state.lock().unwrap().summary().link, "down");

        // Rewound while waiting (a journal failure): never taken as durable.
        let since = slot.durability();
        let rewound = crate::gateway::Durability {
            rewinds: since.rewinds + 1,
            ..since
        };
        slot.durability.send_replace(rewound);
        let limit = Duration::from_secs(1);
        assert!(!slot.wait_durable(since.through + 1, since, limit).await);
        let short = Duration::from_millis(50);
        assert!(!slot.wait_durable(since.through + 1, rewound, short).await);
        assert!(slot.wait_durable(since.through, rewound, short).await);
    }

    #[test]
    fn mllp_long_and_fractional_waveforms_are_split_and_scaled() {
        let mut obs = observations(MONITOR);
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
            Err(StoreError::Unrepresentable)
        ));
    }
}
