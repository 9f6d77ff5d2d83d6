//! Recorder: durable records for medrelay.
//!
//! [`journal`] is a crash-safe, append-only log of records in segment files: the hospital
//! gateway keeps each ambulance stream in one, and the ambulance agent's disk spool (its
//! store-and-forward queue) is one. Recording consults to standard files and the audit trail
//! (issue 5) will live here too. [`edf`] writes EDF+ files, [`edf_read`] reads EDF and EDF+.

pub mod edf;
pub mod edf_read;
pub mod journal;
