//! HL7 v2 over MLLP from monitors (`medrelay serve --mllp-listen`): each `ORU^R01` (IHE
//! PCD-01) message is parsed by [`crate::hl7`], turned into frames of the stream named by its
//! sender ([`crate::hl7::pcd01::Source::stream_key`]) and taken like an agent's frames
//! (viewers, alarms, journal). `MSA|AA` is answered only once those frames are durable; a
//! refused message gets its `AE`/`AR` at once and the connection stays open.

use crate::gateway::{Gateway, StreamSlot, now_ms, now_us};
use crate::hl7::frames::{FramesError, frames_for};
use crate::hl7::listener::{self, MessageHandler};
use crate::hl7::mllp::MllpError;
use crate::hl7::pcd01::Observations;
use crate::hl7::{handle, not_stored};
use crate::wire::StreamId;
use recorder::journal::JournalError;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

/// Longest wait for a message's frames to become durable before answering `AE` (207).
pub const DURABLE_WAIT: Duration = Duration::from_secs(5);
/// Most streams one connection may feed (a gateway or interface engine relays several
/// monitors); messages for more are answered `AE` (207).
pub const MAX_STREAMS_PER_CONNECTION: usize = 64;

/// Why an accepted message could not be stored.
#[derive(Debug, thiserror::Error)]
enum StoreError {
    #[error("the stream's journal cannot be opened: {0}")]
    Journal(#[from] JournalError),
    #[error("more than {MAX_STREAMS_PER_CONNECTION} streams on one connection")]
    TooManyStreams,
    #[error(transparent)]
    Frames(#[from] FramesError),
    #[error("the stream refused the frames: {0}")]
    Ingest(#[from] crate::gateway::ingest::IngestError),
    #[error("the values were not stored within {DURABLE_WAIT:?}")]
    NotDurable,
    #[error("the patient cannot be recorded: {0}")]
    Patient(std::io::Error),
}

/// Accepts MLLP connections (TLS ones with `tls`) until the listener fails.
pub async fn serve_mllp(gw: Arc<Gateway>, listener: TcpListener, tls: Option<TlsAcceptor>) {
    listener::serve(listener, tls, |_peer: SocketAddr| Links {
        gw: gw.clone(),
        attached: HashMap::new(),
    })
    .await;
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

impl MessageHandler for Links {
    async fn message(&mut self, message: &[u8]) -> Vec<u8> {
        let gw = self.gw.clone();
        take_message(&gw, self, message).await
    }

    fn framing_error(&mut self, _error: &MllpError) {
        count(&self.gw, "AR");
    }
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
            not_stored(message, e.to_string(), now)
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
    if let Some(patient) = &observations.patient {
        gw.observe_patient(stream, &patient.id, observations.time_us)
            .await
            .map_err(StoreError::Patient)?;
    }
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
        gw.persist_now(stream, records);
        (last, slot.durability(), frames.len())
    };
    if slot.wait_durable(last, since, DURABLE_WAIT).await {
        Ok(n)
    } else {
        Err(StoreError::NotDurable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::stream::{AmbulanceStream, record_kind};
    use crate::hl7::pcd01::tests::MONITOR;
    use crate::wire::{self, Payload, Vital};

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
            master_key: Some(recorder::sealed::MasterKey::from_bytes([9; 32])),
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
}
