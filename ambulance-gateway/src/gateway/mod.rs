//! The hospital gateway: agents' frames in, viewers' streams out (`docs/telemetry.md`).
//!
//! The sans-IO parts are [`ingest`] (sequencing), [`alarms`] (rules), [`viewer`] (messages
//! and bounded queues) and [`stream`] (one [`stream::AmbulanceStream`] tying them together).
//! This module holds the shared [`Gateway`] state and the journal threads: each owns the
//! journals of a share of the streams, appends their records, syncs them in batches and
//! reports what became durable, so that agents are acknowledged only for what survives a
//! crash.
//! [`http`] has the WebSocket and REST handlers.

pub mod alarms;
pub mod edf_export;
pub mod fhir;
pub mod http;
pub mod ingest;
mod metrics;
pub mod mllp;
pub mod patients;
pub mod record;
pub mod stream;
pub mod viewer;

use crate::wire::{self, GatewayControl, Layout, Payload, StreamId};
use recorder::journal::{FilesystemSync, Journal, JournalError, JournalOptions};
use signaling::token::TokenKeys;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use stream::{AmbulanceStream, JournalRecord, record_kind};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};
use viewer::StreamSummary;

/// Gateway settings (part of `medrelay serve`'s configuration).
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Journals go to `<data_dir>/telemetry/<stream>/`.
    pub data_dir: PathBuf,
    /// How much recent data each stream keeps in memory.
    pub ring_seconds: u32,
    /// Journals of new streams are sealed under this key (`recorder::journal_seal`); `None`
    /// keeps them plain (tests and benchmarks). A journal created plain stays plain.
    pub master_key: Option<recorder::sealed::MasterKey>,
}

/// A stream journal's data key, when the journal is sealed.
type Seal = Option<Arc<recorder::journal_seal::JournalKey>>;

/// Journal threads; each owns the journals of a share of the streams, so that their syncs
/// proceed in parallel.
const JOURNAL_THREADS: usize = 2;
/// A journal thread starts a batch at most this often (group commit): every stream it owns
/// is synced at most once per period, however many frames arrive. A job someone waits on
/// ([`Gateway::persist_now`], reads) starts the batch at once.
const GROUP_COMMIT: Duration = Duration::from_millis(500);
/// How much lower than the rest of the server a journal thread runs (`nice`, per thread on
/// Linux): its work can wait up to a group commit period, the live path cannot.
const JOURNAL_NICE: i32 = 10;
/// While it gathers a batch, a journal thread appends what has arrived this often.
const APPEND_STEP: Duration = Duration::from_millis(20);
/// Most append jobs taken at once (one sync per stream per batch).
const MAX_BATCH_JOBS: usize = 1 << 20;

/// Frames per second a ring buffer is sized for (25 waveform frames and a few numerics).
const RING_FRAMES_PER_SECOND: usize = 30;

/// Current time in µs since the Unix epoch.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as i64
}

/// Current time in ms since the Unix epoch.
pub fn now_ms() -> i64 {
    now_us() / 1000
}

/// The connected agent of a stream.
struct AgentLink {
    conn: u64,
    tx: mpsc::UnboundedSender<GatewayControl>,
}

/// How far a stream's journal is durable, for waiting on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durability {
    /// Every frame up to this sequence number is durable.
    pub through: u64,
    /// How often the stream was rewound after a journal failure (frames handed in before a
    /// rewind are lost, and their sequence numbers reused).
    pub rewinds: u64,
}

/// A stream and its agent connection.
pub struct StreamSlot {
    /// The stream's state.
    pub state: Mutex<AmbulanceStream>,
    agent: Mutex<Option<AgentLink>>,
    durability: watch::Sender<Durability>,
}

impl StreamSlot {
    /// The durability now. Read it under the state lock right after handing frames in, to
    /// pass to [`StreamSlot::wait_durable`].
    pub fn durability(&self) -> Durability {
        *self.durability.borrow()
    }

    /// Waits up to `limit` until every frame up to `seq` is durable. False if the time ran
    /// out or the stream was rewound since `since` (the frames may be lost).
    pub async fn wait_durable(&self, seq: u64, since: Durability, limit: Duration) -> bool {
        let mut rx = self.durability.subscribe();
        let done = |d: &Durability| d.through >= seq || d.rewinds != since.rewinds;
        match tokio::time::timeout(limit, rx.wait_for(done)).await {
            Ok(Ok(d)) => d.rewinds == since.rewinds,
            _ => false,
        }
    }

    /// Sends a control message to the stream's agent, if one is connected.
    pub fn send_to_agent(&self, msg: GatewayControl) -> bool {
        self.agent
            .lock()
            .expect("agent link")
            .as_ref()
            .is_some_and(|a| a.tx.send(msg).is_ok())
    }
}

enum Job {
    Adopt(StreamId, Journal, Seal),
    /// Records to append; `true`: someone waits for them, start the batch at once.
    Append(StreamId, Vec<JournalRecord>, bool),
    /// Retention: delete segments last written before `cutoff`, except the `keep` streams'.
    Expire {
        cutoff: SystemTime,
        keep: std::collections::HashSet<StreamId>,
        reply: tokio::sync::oneshot::Sender<Vec<(StreamId, usize)>>,
    },
    /// A reader of the stream's durable records (answered after the batch's syncs).
    Read(StreamId, ReadReply),
}

/// The queue of one journal thread. Appends go in without waking the thread: it sleeps
/// through the group commit period and takes the whole batch at once, so it wakes about
/// twice per period however many frames arrive. A job someone waits on wakes it at once.
struct JournalQueue {
    jobs: std::sync::mpsc::Sender<Job>,
    worker: std::thread::Thread,
    urgent: Arc<AtomicBool>,
}

impl JournalQueue {
    /// Starts a journal thread for `gw`.
    fn spawn(telemetry_dir: PathBuf, gw: Weak<Gateway>) -> JournalQueue {
        let (jobs, rx) = std::sync::mpsc::channel();
        let urgent = Arc::new(AtomicBool::new(false));
        let flag = urgent.clone();
        let worker = std::thread::Builder::new()
            .name("telemetry-journal".into())
            .spawn(move || durability_worker(rx, &flag, &telemetry_dir, gw))
            .expect("spawn a journal thread")
            .thread()
            .clone();
        JournalQueue {
            jobs,
            worker,
            urgent,
        }
    }

    fn send(&self, job: Job) {
        let urgent = job.waited_on();
        if self.jobs.send(job).is_ok() && urgent {
            self.urgent.store(true, Ordering::Release);
            self.worker.unpark();
        }
    }
}

impl Job {
    /// Whether someone waits for this job's result.
    fn waited_on(&self) -> bool {
        matches!(
            self,
            Job::Append(_, _, true) | Job::Read(..) | Job::Expire { .. }
        )
    }
}

/// Shared gateway state.
pub struct Gateway {
    config: GatewayConfig,
    keys: TokenKeys,
    streams: Mutex<HashMap<StreamId, Arc<StreamSlot>>>,
    /// Serializes journal recovery so a stream is loaded once.
    loading: tokio::sync::Mutex<()>,
    /// One queue per journal thread; a stream's jobs always go to the same one.
    jobs: Vec<JournalQueue>,
    summaries: Mutex<Arc<Vec<StreamSummary>>>,
    metrics: metrics::GatewayMetrics,
    /// Patients of HL7-fed streams, read from the data directory on first use.
    patients: tokio::sync::Mutex<Option<patients::PatientFile>>,
    /// The records service: where reads, exports and alarm actions are audited and streams
    /// are indexed (set at start-up).
    records: std::sync::OnceLock<Arc<recorder::consult::Recorder>>,
}

impl Gateway {
    /// Starts the gateway: the durability worker thread and the timer task (silence alarms,
    /// the streams list). Call inside a tokio runtime.
    pub fn start(config: GatewayConfig, keys: TokenKeys) -> Arc<Gateway> {
        // A journal thread upgrades its `Weak` only after a batch, so never before `gw` is
        // made.
        let telemetry_dir = config.data_dir.join("telemetry");
        let gw = Arc::new_cyclic(|weak| Gateway {
            config,
            keys,
            streams: Mutex::new(HashMap::new()),
            loading: tokio::sync::Mutex::new(()),
            jobs: (0..JOURNAL_THREADS)
                .map(|_| JournalQueue::spawn(telemetry_dir.clone(), weak.clone()))
                .collect(),
            summaries: Mutex::new(Arc::new(Vec::new())),
            metrics: metrics::GatewayMetrics::new(),
            patients: tokio::sync::Mutex::new(None),
            records: std::sync::OnceLock::new(),
        });
        tokio::spawn(timer(Arc::downgrade(&gw)));
        gw
    }

    /// Adds the gateway's metrics to the server's `/metrics`.
    pub fn register_metrics(&self, registry: &signaling::metrics::Metrics) {
        self.metrics.register(registry);
    }

    /// Token keys, for the HTTP handlers.
    pub fn keys(&self) -> &TokenKeys {
        &self.keys
    }

    /// The stream, if it has connected since the gateway started.
    pub fn slot(&self, id: &StreamId) -> Option<Arc<StreamSlot>> {
        self.streams.lock().expect("streams").get(id).cloned()
    }

    /// From now on, audits telemetry accesses in `recorder`'s audit trail and lists each
    /// stream's record in its index.
    pub fn set_records(&self, recorder: Arc<recorder::consult::Recorder>) {
        let _ = self.records.set(recorder);
    }

    /// Appends `action` by the token's holder on `stream` to the audit trail and waits until
    /// it is synced (before data leaves); fails only if the trail cannot be written. Without
    /// an audit trail (tests, benches) it does nothing.
    pub(crate) async fn audit(
        &self,
        claims: &signaling::token::Claims,
        action: recorder::audit::Action,
        stream: &StreamId,
        detail: Option<String>,
    ) -> Result<(), recorder::consult::RecorderError> {
        let Some(recorder) = self.records.get().cloned() else {
            return Ok(());
        };
        let record = audit_record(claims, action, stream, detail);
        tokio::task::spawn_blocking(move || recorder.audit_synced(record))
            .await
            .unwrap_or(Err(recorder::consult::RecorderError::Stopped))
    }

    /// Appends `action` by the token's holder on `stream` to the audit trail without waiting
    /// (for actions on a viewer's socket: subscribing, acknowledging, changing limits).
    pub(crate) fn audit_later(
        &self,
        claims: &signaling::token::Claims,
        action: recorder::audit::Action,
        stream: &StreamId,
        detail: Option<String>,
    ) {
        if let Some(recorder) = self.records.get() {
            recorder.audit(audit_record(claims, action, stream, detail));
        }
    }

    /// Whether the stream has connected since the gateway started or has a record in the
    /// data directory.
    pub fn has_record(&self, id: &StreamId) -> bool {
        self.slot(id).is_some() || self.stream_dir(id).is_dir()
    }

    fn stream_dir(&self, id: &StreamId) -> PathBuf {
        self.config.data_dir.join("telemetry").join(id.as_str())
    }

    /// Notes that `stream` reported `patient` at `at_us` (see [`patients`]); a change is
    /// synced to the data directory before this returns.
    pub async fn observe_patient(
        &self,
        stream: &StreamId,
        patient: &str,
        at_us: i64,
    ) -> std::io::Result<()> {
        let mut file = self.patient_file().await?;
        let file = file.as_mut().expect("opened");
        // Rare (a new patient) and small: done in place.
        file.observe(stream, patient, at_us)
    }

    /// The stretches of streams that reported `patient` (see [`patients::Span`]).
    pub async fn patient_spans(&self, patient: &str) -> std::io::Result<Vec<patients::Span>> {
        let file = self.patient_file().await?;
        Ok(file.as_ref().expect("opened").spans(patient))
    }

    async fn patient_file(
        &self,
    ) -> std::io::Result<tokio::sync::MutexGuard<'_, Option<patients::PatientFile>>> {
        let mut file = self.patients.lock().await;
        if file.is_none() {
            let dir = self.config.data_dir.join("telemetry");
            *file = Some(patients::PatientFile::open(&dir)?);
        }
        Ok(file)
    }

    /// Every stream's summary as of the last timer tick (at most a second old).
    pub fn summaries(&self) -> Arc<Vec<StreamSummary>> {
        self.summaries.lock().expect("summaries").clone()
    }

    /// The stream's slot, recovering its journal on first use.
    pub async fn load(self: &Arc<Self>, id: &StreamId) -> Result<Arc<StreamSlot>, JournalError> {
        if let Some(slot) = self.slot(id) {
            return Ok(slot);
        }
        let _guard = self.loading.lock().await;
        if let Some(slot) = self.slot(id) {
            return Ok(slot);
        }
        let dir = self.stream_dir(id);
        let master = self.config.master_key.clone();
        let context = id.as_str().as_bytes().to_vec();
        let (journal, seal, durable, layout) =
            tokio::task::spawn_blocking(move || recover(dir, master.as_ref(), &context))
                .await
                .expect("recovery task")?;
        let mut stream = AmbulanceStream::new(
            id.clone(),
            durable,
            self.config.ring_seconds as usize * RING_FRAMES_PER_SECOND,
            now_ms(),
        );
        if let Some((seq, layout)) = layout {
            stream.restore_layout(seq, layout);
        }
        info!(stream = %id, durable, "telemetry stream loaded");
        if let Some(records) = self.records.get() {
            records.register_telemetry(id.as_str(), now_ms());
        }
        self.journal_queue(id)
            .send(Job::Adopt(id.clone(), journal, seal));
        let slot = Arc::new(StreamSlot {
            state: Mutex::new(stream),
            agent: Mutex::new(None),
            durability: watch::Sender::new(Durability {
                through: durable,
                rewinds: 0,
            }),
        });
        self.streams
            .lock()
            .expect("streams")
            .insert(id.clone(), slot.clone());
        Ok(slot)
    }

    /// Retention: deletes every stream's whole journal segments last written more than
    /// `retention_days` ago (never a segment still appended to), except the streams in
    /// `held` (legal hold); each deletion is audited. Returns (stream, segments deleted) for
    /// the streams that lost any.
    pub async fn expire_telemetry(
        self: &Arc<Self>,
        retention_days: u32,
        held: &[String],
    ) -> Result<Vec<(StreamId, usize)>, JournalError> {
        let dir = self.config.data_dir.join("telemetry");
        let mut ids = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry.path().is_dir()
                    && let Some(id) = entry.file_name().to_str().and_then(|n| n.parse().ok())
                {
                    ids.push(id);
                }
            }
        }
        for id in &ids {
            self.load(id).await?;
        }
        let cutoff = SystemTime::now() - Duration::from_secs(u64::from(retention_days) * 24 * 3600);
        let keep: std::collections::HashSet<StreamId> =
            held.iter().filter_map(|h| h.parse().ok()).collect();
        let mut expired = Vec::new();
        for queue in &self.jobs {
            let (tx, rx) = tokio::sync::oneshot::channel();
            queue.send(Job::Expire {
                cutoff,
                keep: keep.clone(),
                reply: tx,
            });
            expired.extend(rx.await.unwrap_or_default());
        }
        if let Some(records) = self.records.get().cloned() {
            let report = expired.clone();
            tokio::task::spawn_blocking(move || {
                for (id, n) in report {
                    let detail = format!("{n} journal segments older than {retention_days} days");
                    if let Err(e) = records.audit_telemetry_expiry(id.as_str(), detail) {
                        warn!(stream = %id, "an expiry cannot be audited: {e}");
                    }
                }
            })
            .await
            .expect("audit task");
        }
        Ok(expired)
    }

    /// Hands records to the durability worker (synced with the next group commit).
    pub fn persist(&self, id: &StreamId, records: Vec<JournalRecord>) {
        if !records.is_empty() {
            self.journal_queue(id)
                .send(Job::Append(id.clone(), records, false));
        }
    }

    /// Hands records to the durability worker for a sync without waiting for the group
    /// commit period: for a sender that waits for each acknowledgement (an HL7 monitor).
    pub fn persist_now(&self, id: &StreamId, records: Vec<JournalRecord>) {
        if !records.is_empty() {
            self.journal_queue(id)
                .send(Job::Append(id.clone(), records, true));
        }
    }

    /// The stream's durable record, read from its journal (see [`record::StreamRecord`]).
    pub async fn record(
        self: &Arc<Self>,
        id: &StreamId,
        window: record::Window,
    ) -> Result<record::StreamRecord, JournalError> {
        self.load(id).await?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.journal_queue(id).send(Job::Read(id.clone(), tx));
        let (records, seal) = rx.await.map_err(|_| {
            JournalError::from(std::io::Error::other("the journal thread has stopped"))
        })??;
        tokio::task::spawn_blocking(move || {
            record::StreamRecord::collect(records, window, seal.as_deref())
        })
        .await
        .expect("record reading task")
    }

    fn journal_queue(&self, id: &StreamId) -> &JournalQueue {
        use std::hash::{BuildHasher, RandomState};
        static HASHER: std::sync::OnceLock<RandomState> = std::sync::OnceLock::new();
        let hash = HASHER.get_or_init(RandomState::new).hash_one(id);
        &self.jobs[hash as usize % self.jobs.len()]
    }

    /// Registers `tx` as the stream's agent connection (replacing an older one, whose
    /// channel closes). Returns the connection's id.
    pub fn attach_agent(
        &self,
        slot: &StreamSlot,
        tx: mpsc::UnboundedSender<GatewayControl>,
    ) -> u64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let conn = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *slot.agent.lock().expect("agent link") = Some(AgentLink { conn, tx });
        slot.state.lock().expect("stream").set_link(true);
        conn
    }

    /// Forgets agent connection `conn` if it is still the stream's current one.
    pub fn detach_agent(&self, slot: &StreamSlot, conn: u64) {
        let mut agent = slot.agent.lock().expect("agent link");
        if agent.as_ref().is_some_and(|a| a.conn == conn) {
            *agent = None;
            slot.state.lock().expect("stream").set_link(false);
        }
    }

    fn synced(&self, id: &StreamId, through: u64) {
        let Some(slot) = self.slot(id) else { return };
        let ack = slot.state.lock().expect("stream").on_synced(through);
        if let Some(through) = ack {
            slot.durability
                .send_modify(|d| d.through = d.through.max(through));
            slot.send_to_agent(GatewayControl::Ack {
                stream: id.clone(),
                through,
            });
        }
    }

    fn journal_failed(&self, id: &StreamId) {
        let Some(slot) = self.slot(id) else { return };
        // What was handed to the journal may not be on disk: forget it, so the agent (which
        // still holds everything unacknowledged) sends it again on its next connection.
        {
            let mut state = slot.state.lock().expect("stream");
            state.rewind_to_durable();
            // Under the lock, so that a producer reading the durability after handing frames
            // in sees whether they were rewound.
            slot.durability.send_modify(|d| d.rewinds += 1);
        }
        slot.send_to_agent(GatewayControl::Error {
            code: "internal".into(),
            message: "the gateway could not store the stream; reconnect".into(),
        });
    }
}

/// Opens a stream's journal: what is durable, and the latest layout.
#[allow(clippy::type_complexity)]
fn recover(
    dir: PathBuf,
    master: Option<&recorder::sealed::MasterKey>,
    context: &[u8],
) -> Result<(Journal, Seal, u64, Option<(u64, Layout)>), JournalError> {
    // A new journal is sealed when there is a master key; one written plain stays plain.
    let plain_already = !dir.join(recorder::journal_seal::KEY_FILE).exists()
        && std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some());
    let seal = match master {
        Some(master) if !plain_already => Some(Arc::new(
            recorder::journal_seal::JournalKey::open_or_create(&dir, master, context)
                .map_err(|e| JournalError::from(std::io::Error::other(e.to_string())))?,
        )),
        _ => None,
    };
    let journal = Journal::open(&dir, JournalOptions::default())?;
    let mut durable = 0;
    let mut layout = None;
    for record in journal.records()? {
        let record = record?;
        if record.kind != record_kind::FRAME {
            continue;
        }
        let payload = match &seal {
            Some(key) => match key.open(record.kind, &record.payload) {
                Ok(p) => p,
                Err(e) => {
                    warn!(dir = %dir.display(), "unreadable frame in journal: {e}");
                    continue;
                }
            },
            None => record.payload,
        };
        match wire::decode(&payload) {
            Ok(frame) => {
                durable = durable.max(frame.header.seq);
                if let Payload::Layout(l) = frame.payload {
                    layout = Some((frame.header.seq, l));
                }
            }
            Err(e) => warn!(dir = %dir.display(), "undecodable frame in journal: {e}"),
        }
    }
    Ok((journal, seal, durable, layout))
}

/// Appends and syncs in batches; reports what became durable.
/// What a journal thread gathered for one group commit.
#[derive(Default)]
struct Batch {
    /// Streams appended to, with the last sequence number appended.
    synced: HashMap<StreamId, u64>,
    /// Streams whose journal failed.
    failed: Vec<StreamId>,
    /// Reads to answer after the sync.
    reads: Vec<(StreamId, ReadReply)>,
    /// Someone waits for a job of this batch: sync at once.
    waited_on: bool,
}

/// The answer to [`Job::Read`].
type ReadReply =
    tokio::sync::oneshot::Sender<Result<(recorder::journal::Records, Seal), JournalError>>;

impl Batch {
    /// Does `job`: appends, adopts and expires at once; reads wait for the sync.
    fn take(&mut self, job: Job, journals: &mut HashMap<StreamId, (Journal, Seal)>) {
        self.waited_on |= job.waited_on();
        match job {
            Job::Adopt(id, journal, seal) => {
                journals.insert(id, (journal, seal));
            }
            Job::Read(id, reply) => self.reads.push((id, reply)),
            Job::Expire {
                cutoff,
                keep,
                reply,
            } => {
                let mut expired = Vec::new();
                for (id, (journal, _)) in journals.iter_mut().filter(|(id, _)| !keep.contains(id)) {
                    match journal.expire_before(cutoff) {
                        Ok(0) => {}
                        Ok(n) => {
                            info!(stream = %id, segments = n, "expired telemetry deleted");
                            expired.push((id.clone(), n));
                        }
                        Err(e) => warn!(stream = %id, "expiring telemetry failed: {e}"),
                    }
                }
                let _ = reply.send(expired);
            }
            Job::Append(id, records, _) => {
                let Some((journal, seal)) = journals.get_mut(&id) else {
                    return;
                };
                let entry = self.synced.entry(id.clone()).or_default();
                for r in records {
                    let appended = match seal {
                        Some(key) => journal.append(r.kind, &key.seal(r.kind, &r.payload)),
                        None => journal.append(r.kind, &r.payload),
                    };
                    if let Err(e) = appended {
                        error!(stream = %id, "journal append failed: {e}");
                        self.failed.push(id.clone());
                        return;
                    }
                    if let Some(seq) = r.seq {
                        *entry = (*entry).max(seq);
                    }
                }
            }
        }
    }
}

fn durability_worker(
    rx: std::sync::mpsc::Receiver<Job>,
    urgent: &AtomicBool,
    telemetry_dir: &Path,
    gw: Weak<Gateway>,
) {
    // The live path (ingest to viewers) waits for nobody; the journal's bursts (a batch's
    // writes and sync every half second) can wait for it.
    if let Err(e) = rustix::process::nice(JOURNAL_NICE) {
        warn!("the journal thread keeps its priority: {e}");
    }
    // One `syncfs` per batch for all journals, or else an `fdatasync` per journal.
    let filesystem = FilesystemSync::open(telemetry_dir).inspect_err(|e| {
        warn!("journals are synced one by one: {e}");
    });
    let mut journals: HashMap<StreamId, (Journal, Seal)> = HashMap::new();
    let mut last_batch: Option<std::time::Instant> = None;
    while let Ok(first) = rx.recv() {
        let mut batch = Batch::default();
        batch.take(first, &mut journals);
        // Until the group commit period has passed (or at once for a job someone waits on),
        // append what arrives in small steps, so the work is spread over the period instead
        // of taking a core in one burst; the thread wakes once per step, not per frame.
        if let Some(deadline) = last_batch.map(|t| t + GROUP_COMMIT) {
            while !batch.waited_on && !urgent.swap(false, Ordering::AcqRel) {
                let now = std::time::Instant::now();
                if now >= deadline {
                    break;
                }
                std::thread::park_timeout((deadline - now).min(APPEND_STEP));
                for job in rx.try_iter().take(MAX_BATCH_JOBS) {
                    batch.take(job, &mut journals);
                }
            }
        }
        urgent.store(false, Ordering::Release);
        last_batch = Some(std::time::Instant::now());
        for job in rx.try_iter().take(MAX_BATCH_JOBS) {
            batch.take(job, &mut journals);
        }
        let Batch {
            mut synced,
            mut failed,
            reads,
            ..
        } = batch;
        let Some(gw) = gw.upgrade() else { return };
        synced.retain(|id, _| !failed.contains(id));
        let (ids, mut batch): (Vec<&StreamId>, Vec<&mut Journal>) = journals
            .iter_mut()
            .filter(|(id, _)| synced.contains_key(*id))
            .map(|(id, (journal, _))| (id, journal))
            .unzip();
        let results = match &filesystem {
            Ok(filesystem) => filesystem.sync(&mut batch),
            Err(_) => batch.iter_mut().map(|journal| journal.sync()).collect(),
        };
        for (id, result) in ids.into_iter().zip(results) {
            match result {
                Ok(()) if synced[id] > 0 => gw.synced(id, synced[id]),
                Ok(()) => {}
                Err(e) => {
                    error!(stream = %id, "journal sync failed: {e}");
                    failed.push(id.clone());
                }
            }
        }
        for id in failed {
            gw.metrics.journal_errors.inc();
            gw.journal_failed(&id);
        }
        for (id, reply) in reads {
            if let Some((journal, seal)) = journals.get(&id) {
                let _ = reply.send(journal.records().map(|r| (r, seal.clone())));
            }
        }
    }
}

/// The audit entry of an action on a telemetry stream.
fn audit_record(
    claims: &signaling::token::Claims,
    action: recorder::audit::Action,
    stream: &StreamId,
    detail: Option<String>,
) -> recorder::consult::AuditRecord {
    recorder::consult::AuditRecord {
        time_ms: now_ms() as u64,
        actor: claims.sub.clone(),
        role: claims.role.to_string(),
        action,
        room: None,
        target: Some(format!("telemetry:{stream}")),
        detail,
    }
}

/// Every 250 ms: silence alarms; every second: the streams list.
async fn timer(gw: Weak<Gateway>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut n = 0u64;
    loop {
        tick.tick().await;
        let Some(gw) = gw.upgrade() else { return };
        let slots: Vec<Arc<StreamSlot>> = gw
            .streams
            .lock()
            .expect("streams")
            .values()
            .cloned()
            .collect();
        let now = now_ms();
        for slot in &slots {
            let mut state = slot.state.lock().expect("stream");
            let records = state.on_tick(now);
            if !records.is_empty() {
                let id = state.id().clone();
                drop(state);
                gw.persist(&id, records);
            }
        }
        if n.is_multiple_of(4) {
            let mut list: Vec<StreamSummary> = slots
                .iter()
                .map(|s| s.state.lock().expect("stream").summary())
                .collect();
            list.sort_by(|a, b| a.id.cmp(&b.id));
            gw.metrics.observe(&list);
            *gw.summaries.lock().expect("summaries") = Arc::new(list);
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use recorder::journal::{Journal, JournalOptions};

    /// A journal of small segments for `id`, the older ones last written `age` ago.
    fn old_journal(data: &std::path::Path, id: &str, age: Duration) -> usize {
        let dir = data.join("telemetry").join(id);
        let mut journal = Journal::open(&dir, JournalOptions { segment_bytes: 256 }).unwrap();
        for i in 0..40u8 {
            journal.append(record_kind::ALARM, &[i; 40]).unwrap();
        }
        journal.sync().unwrap();
        let segments = journal.segments();
        let then = SystemTime::now() - age;
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let last = format!("{:020}.seg", segments.last().unwrap());
            if entry.file_name().to_str() != Some(last.as_str()) {
                let f = std::fs::File::options()
                    .write(true)
                    .open(entry.path())
                    .unwrap();
                f.set_modified(then).unwrap();
            }
        }
        segments.len()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn retention_deletes_old_telemetry_segments_except_under_legal_hold() {
        let data = tempfile::tempdir().unwrap();
        let day = Duration::from_secs(24 * 3600);
        let segments = old_journal(data.path(), "AMB-1", 3 * day);
        old_journal(data.path(), "AMB-2", 3 * day);
        old_journal(data.path(), "AMB-3", day / 2);
        assert!(segments > 3);
        let gw = Gateway::start(
            GatewayConfig {
                data_dir: data.path().into(),
                ring_seconds: 10,
                master_key: None,
            },
            TokenKeys::new(&[3; 32]),
        );
        let expired = gw.expire_telemetry(2, &["AMB-2".into()]).await.unwrap();
        assert_eq!(
            expired,
            [("AMB-1".parse().unwrap(), segments - 1)],
            "AMB-1's old segments, not AMB-2's (held) nor AMB-3's (recent)"
        );
        let left = |id: &str| {
            std::fs::read_dir(data.path().join("telemetry").join(id))
                .unwrap()
                .count()
        };
        assert_eq!(left("AMB-1"), 1, "the segment still appended to stays");
        assert_eq!(left("AMB-2"), segments);
        assert_eq!(left("AMB-3"), segments);
    }
}
