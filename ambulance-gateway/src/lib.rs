//! Ambulance telemetry gateway: ingest, ring buffers, fan-out and alarms.
//!
//! Not built yet: this crate reserves its place in the workspace. Issue 3 fills it.
