//! Recorder: consult media and telemetry to standard files, with an audit trail.
//!
//! Not built yet: this crate reserves its place in the workspace. Issue 5 fills it.
