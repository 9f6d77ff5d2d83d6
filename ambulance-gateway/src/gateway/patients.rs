//! Which patient each HL7-fed stream measured, and from when: the index behind FHIR searches
//! by `subject=Patient/<id>`.
//!
//! A monitor's stream is named after the monitor (PCD-01's equipment identifier); its
//! messages name the patient (PID-3). When the patient a stream reports changes, an
//! [`Assignment`] is appended to `<data_dir>/telemetry/patients.jsonl` (synced) and kept in
//! memory; a patient's [`Span`]s are the stretches of each stream between an assignment to
//! them and the stream's next assignment. [`PatientIndex`] is the plain state machine;
//! [`PatientFile`] the file around it. Patient identifiers stay in the data directory and
//! are never logged.

use crate::wire::StreamId;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use tracing::warn;

/// From `from_us` on, `stream` reports patient `patient`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The stream (a monitor).
    pub stream: StreamId,
    /// The patient identifier (PID-3, CX-1).
    pub patient: String,
    /// The first message's observation time, µs since the Unix epoch.
    pub from_us: i64,
}

/// A stretch of one stream that belongs to one patient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// The stream.
    pub stream: StreamId,
    /// First instant, µs (inclusive).
    pub from_us: i64,
    /// The next patient's first instant, µs (exclusive); `None` while it is still this one.
    pub until_us: Option<i64>,
}

/// The assignments in memory (see the [module documentation](self)).
#[derive(Debug, Default)]
pub struct PatientIndex {
    /// Every stream's assignments in time order.
    by_stream: HashMap<StreamId, Vec<Assignment>>,
}

impl PatientIndex {
    /// Takes an assignment read back from the file.
    pub fn restore(&mut self, a: Assignment) {
        let list = self.by_stream.entry(a.stream.clone()).or_default();
        let at = list.partition_point(|b| b.from_us <= a.from_us);
        list.insert(at, a);
    }

    /// Notes that `stream` reported `patient` at `at_us`; returns the assignment to store when
    /// this is a change (a new stream, another patient).
    pub fn observe(&mut self, stream: &StreamId, patient: &str, at_us: i64) -> Option<Assignment> {
        let current = self
            .by_stream
            .get(stream)
            .and_then(|list| list.iter().rfind(|a| a.from_us <= at_us));
        if current.is_some_and(|a| a.patient == patient) {
            return None;
        }
        let a = Assignment {
            stream: stream.clone(),
            patient: patient.to_owned(),
            from_us: at_us,
        };
        self.restore(a.clone());
        Some(a)
    }

    /// The stretches of every stream that reported `patient`, by stream then time.
    pub fn spans(&self, patient: &str) -> Vec<Span> {
        let mut out = Vec::new();
        for list in self.by_stream.values() {
            for (i, a) in list.iter().enumerate() {
                if a.patient == patient {
                    out.push(Span {
                        stream: a.stream.clone(),
                        from_us: a.from_us,
                        until_us: list.get(i + 1).map(|next| next.from_us),
                    });
                }
            }
        }
        out.sort_by(|a, b| (&a.stream, a.from_us).cmp(&(&b.stream, b.from_us)));
        out
    }
}

/// The index with its append-only file.
#[derive(Debug)]
pub struct PatientFile {
    path: PathBuf,
    index: PatientIndex,
}

impl PatientFile {
    /// Reads `<dir>/patients.jsonl` (absent: empty). A last line cut short by a crash is
    /// cut off the file; other unreadable lines are skipped with a warning.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let path = dir.join("patients.jsonl");
        let mut index = PatientIndex::default();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if whole < bytes.len() {
            warn!(file = %path.display(), "cutting off a torn last line");
            OpenOptions::new()
                .write(true)
                .open(&path)?
                .set_len(whole as u64)?;
        }
        for line in bytes[..whole]
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
        {
            match serde_json::from_slice::<Assignment>(line) {
                Ok(a) => index.restore(a),
                Err(e) => warn!(file = %path.display(), "skipping an unreadable line: {e}"),
            }
        }
        Ok(Self { path, index })
    }

    /// [`PatientIndex::observe`], with a change appended and synced before it returns.
    pub fn observe(&mut self, stream: &StreamId, patient: &str, at_us: i64) -> io::Result<()> {
        let Some(a) = self.index.observe(stream, patient, at_us) else {
            return Ok(());
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        let mut line = serde_json::to_vec(&a).map_err(io::Error::other)?;
        line.push(b'\n');
        file.write_all(&line)?;
        file.sync_data()
    }

    /// See [`PatientIndex::spans`].
    pub fn spans(&self, patient: &str) -> Vec<Span> {
        self.index.spans(patient)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> StreamId {
        s.parse().unwrap()
    }

    #[test]
    fn a_patients_spans_end_where_the_next_patient_begins() {
        let mut index = PatientIndex::default();
        let (m1, m2) = (id("MON-1"), id("MON-2"));
        assert!(index.observe(&m1, "P1", 100).is_some());
        assert!(index.observe(&m1, "P1", 200).is_none(), "no change");
        assert!(index.observe(&m1, "P2", 300).is_some());
        assert!(index.observe(&m2, "P1", 250).is_some());
        assert!(index.observe(&m1, "P1", 400).is_some(), "back to P1");
        let spans = index.spans("P1");
        let got: Vec<_> = spans
            .iter()
            .map(|s| (s.stream.as_str(), s.from_us, s.until_us))
            .collect();
        assert_eq!(
            got,
            [
                ("MON-1", 100, Some(300)),
                ("MON-1", 400, None),
                ("MON-2", 250, None)
            ]
        );
        assert_eq!(index.spans("P2").len(), 1);
        assert!(index.spans("P3").is_empty());
    }

    #[test]
    fn assignments_survive_a_restart_and_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = PatientFile::open(dir.path()).unwrap();
        file.observe(&id("MON-1"), "P1", 100).unwrap();
        file.observe(&id("MON-1"), "P1", 150).unwrap();
        file.observe(&id("MON-1"), "P2", 200).unwrap();
        let path = dir.path().join("patients.jsonl");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2, "only changes are written");
        std::fs::write(&path, format!("{text}{{\"stream\":\"MON")).unwrap();
        let mut again = PatientFile::open(dir.path()).unwrap();
        again.observe(&id("MON-2"), "P1", 300).unwrap();
        let again = PatientFile::open(dir.path()).unwrap();
        assert_eq!(
            again.spans("P1").len(),
            2,
            "the line after the torn one reads"
        );
        assert_eq!(
            again.spans("P1")[..1],
            [Span {
                stream: id("MON-1"),
                from_us: 100,
                until_us: Some(200)
            }]
        );
    }
}
