//! Ambulance telemetry, both ends of the link (`docs/telemetry.md`):
//!
//! - [`wire`]: the frame format and control messages agents, the gateway and viewers share;
//! - [`agent`]: `medrelay ambulance`, on the ambulance's computer: sources (recorded
//!   waveforms, a simulator), the disk spool (store and forward) and the uplink;
//! - [`gateway`]: in the hospital, inside `medrelay serve`: ingest with deduplication,
//!   ordering and durable acknowledgement, ring buffers, fan-out to viewers, alarms.
//! - [`hl7`]: HL7 v2 in, sans-IO: MLLP framing, the parser, IHE PCD-01 mapping and ACKs.

pub mod agent;
pub mod gateway;
pub mod hl7;
pub mod wire;
