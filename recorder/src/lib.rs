//! Recorder: durable records for medrelay.
//!
//! [`journal`] is a crash-safe, append-only log of records in segment files: the hospital
//! gateway keeps each ambulance stream in one, and the ambulance agent's disk spool (its
//! store-and-forward queue) is one; [`journal_seal`] encrypts its records at rest. [`edf`]
//! writes EDF+ files, [`edf_read`] reads EDF and EDF+.
//!
//! Consult recording: [`depacketize`] turns a track's RTP payloads into frames, [`webm`]
//! writes them to WebM/Matroska, [`sealed`] encrypts files at rest (AES-256-GCM under
//! per-file data keys wrapped by a master key), [`index`] is the recordings index (SQLite)
//! with retention and legal hold, and [`audit`] the hash-chained audit trail. [`consult`] is
//! the recorder service that ties them together for a consult room's tapped media.

pub mod audit;
pub mod consult;
pub mod depacketize;
mod ebml;
pub mod edf;
pub mod edf_read;
pub mod index;
pub mod journal;
pub mod journal_seal;
pub mod remux;
pub mod sealed;
pub mod webm;
