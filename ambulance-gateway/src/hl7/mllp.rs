//! MLLP, the Minimal Lower Layer Protocol that carries HL7 v2 over TCP: each message is framed
//! as `0x0B` message `0x1C 0x0D`. Sans-IO: [`MllpDecoder`] takes bytes as they arrive and
//! yields whole messages or typed errors; [`encode`] frames a message to send.

use std::collections::VecDeque;

use super::ack::{ErrorCode, Problem};

/// Start block, before a message.
pub const START_BLOCK: u8 = 0x0B;
/// End block, after a message.
pub const END_BLOCK: u8 = 0x1C;
/// Carriage return, after the end block.
pub const CARRIAGE_RETURN: u8 = 0x0D;

/// At most this many bytes of a dropped frame's first segment are kept in an error, so that
/// its `MSH` can still be acknowledged.
const HEAD_BYTES: usize = 1024;

/// What went wrong in the byte stream. Decoding goes on after each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MllpError {
    /// Bytes outside any frame (before a start block): not MLLP-framed HL7.
    #[error("{bytes} bytes outside an MLLP frame (a frame starts with 0x0B)")]
    Garbage {
        /// How many bytes the run had.
        bytes: usize,
    },
    /// A frame grew past the decoder's limit; the rest of it, up to the next start block, is
    /// dropped.
    #[error("an MLLP frame grew past the limit of {limit} bytes and was dropped")]
    FrameTooLarge {
        /// The decoder's limit.
        limit: usize,
        /// The frame's first segment (normally its `MSH`), at most 1024 bytes.
        head: Vec<u8>,
    },
    /// A start block arrived inside a frame: the frame so far is dropped and a new one begins.
    #[error("an MLLP frame was cut off after {bytes} bytes by the start of another")]
    Interrupted {
        /// How long the dropped frame was.
        bytes: usize,
        /// Its first segment, at most 1024 bytes.
        head: Vec<u8>,
    },
}

impl MllpError {
    /// The first segment of the dropped frame, if any.
    pub fn head(&self) -> Option<&[u8]> {
        match self {
            MllpError::Garbage { .. } => None,
            MllpError::FrameTooLarge { head, .. } | MllpError::Interrupted { head, .. } => {
                Some(head)
            }
        }
    }

    /// The error as an ACK reports it: not HL7 (100) or too large (102), with no location.
    pub fn problem(&self) -> Problem {
        let code = match self {
            MllpError::Garbage { .. } | MllpError::Interrupted { .. } => ErrorCode::SegmentSequence,
            MllpError::FrameTooLarge { .. } => ErrorCode::DataType,
        };
        Problem {
            code,
            location: None,
            message: self.to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between frames, waiting for a start block.
    Between,
    /// Inside a frame.
    InFrame,
    /// Dropping an oversized frame until the next start block.
    Discarding,
}

/// Splits a byte stream into MLLP frames.
///
/// A frame ends at its end block; the carriage return after it, like any CR or LF between
/// frames, is skipped. Other bytes between frames form a garbage run, reported once as
/// [`MllpError::Garbage`] when the run ends: at the next start block, or at the end of the
/// bytes given to that [`push`](Self::push), so that a peer sending something else is told at
/// once. A frame longer than the limit is reported as soon as it passes it and dropped up to
/// the next start block, so memory stays bounded even if it never ends.
#[derive(Debug)]
pub struct MllpDecoder {
    max_frame_bytes: usize,
    state: State,
    frame: Vec<u8>,
    garbage: usize,
    ready: VecDeque<Result<Vec<u8>, MllpError>>,
}

impl MllpDecoder {
    /// A decoder for frames of at most `max_frame_bytes` bytes of message.
    pub fn new(max_frame_bytes: usize) -> Self {
        Self {
            max_frame_bytes,
            state: State::Between,
            frame: Vec::new(),
            garbage: 0,
            ready: VecDeque::new(),
        }
    }

    /// Takes the next bytes of the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.step(b);
        }
        self.end_garbage_run();
    }

    /// The next whole message (without its framing) or error, in stream order.
    pub fn poll(&mut self) -> Option<Result<Vec<u8>, MllpError>> {
        self.ready.pop_front()
    }

    fn step(&mut self, b: u8) {
        match self.state {
            State::Between => match b {
                START_BLOCK => {
                    self.end_garbage_run();
                    self.state = State::InFrame;
                }
                b'\r' | b'\n' if self.garbage == 0 => {}
                _ => self.garbage += 1,
            },
            State::InFrame => match b {
                END_BLOCK => {
                    self.ready.push_back(Ok(std::mem::take(&mut self.frame)));
                    self.state = State::Between;
                }
                START_BLOCK => {
                    let error = MllpError::Interrupted {
                        bytes: self.frame.len(),
                        head: head(&self.frame),
                    };
                    self.ready.push_back(Err(error));
                    self.frame.clear();
                }
                _ if self.frame.len() >= self.max_frame_bytes => {
                    let error = MllpError::FrameTooLarge {
                        limit: self.max_frame_bytes,
                        head: head(&self.frame),
                    };
                    self.ready.push_back(Err(error));
                    self.frame = Vec::new();
                    self.state = State::Discarding;
                }
                _ => self.frame.push(b),
            },
            State::Discarding => {
                if b == START_BLOCK {
                    self.state = State::InFrame;
                }
            }
        }
    }

    fn end_garbage_run(&mut self) {
        if self.garbage > 0 {
            let bytes = std::mem::take(&mut self.garbage);
            self.ready.push_back(Err(MllpError::Garbage { bytes }));
        }
    }
}

/// The first segment of a frame, at most [`HEAD_BYTES`].
fn head(frame: &[u8]) -> Vec<u8> {
    let end = frame
        .iter()
        .take(HEAD_BYTES)
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(frame.len().min(HEAD_BYTES));
    frame[..end].to_vec()
}

/// Frames a message for sending: `0x0B` message `0x1C 0x0D`.
pub fn encode(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 3);
    out.push(START_BLOCK);
    out.extend_from_slice(message);
    out.extend_from_slice(&[END_BLOCK, CARRIAGE_RETURN]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(d: &mut MllpDecoder) -> Vec<Result<Vec<u8>, MllpError>> {
        std::iter::from_fn(|| d.poll()).collect()
    }

    #[test]
    fn hl7_mllp_round_trips_frames() {
        let mut d = MllpDecoder::new(1024);
        let mut stream = encode(b"MSH|a");
        stream.extend(encode(b"MSH|b"));
        stream.extend(encode(b""));
        d.push(&stream);
        assert_eq!(
            drain(&mut d),
            [Ok(b"MSH|a".to_vec()), Ok(b"MSH|b".to_vec()), Ok(Vec::new())]
        );
        assert_eq!(d.poll(), None);
    }

    #[test]
    fn hl7_mllp_reassembles_split_frames() {
        let stream = encode(b"MSH|^~\\&|x\rPID|1");
        for cut in 0..=stream.len() {
            let mut d = MllpDecoder::new(1024);
            d.push(&stream[..cut]);
            let early = drain(&mut d);
            d.push(&stream[cut..]);
            let mut all = early;
            all.extend(drain(&mut d));
            assert_eq!(all, [Ok(b"MSH|^~\\&|x\rPID|1".to_vec())], "cut at {cut}");
        }
        let mut d = MllpDecoder::new(1024);
        for b in encode(b"MSH|1").iter().chain(encode(b"MSH|2").iter()) {
            d.push(&[*b]);
        }
        assert_eq!(
            drain(&mut d),
            [Ok(b"MSH|1".to_vec()), Ok(b"MSH|2".to_vec())]
        );
    }

    #[test]
    fn hl7_mllp_reports_garbage_once_per_run_and_resyncs() {
        let mut d = MllpDecoder::new(1024);
        let mut stream = b"GET / HTTP/1.1\r\n\r\n".to_vec();
        stream.extend(encode(b"MSH|1"));
        stream.extend(b"\r\n\n");
        stream.extend(b"junk");
        stream.extend(encode(b"MSH|2"));
        d.push(&stream);
        assert_eq!(
            drain(&mut d),
            [
                Err(MllpError::Garbage { bytes: 18 }),
                Ok(b"MSH|1".to_vec()),
                Err(MllpError::Garbage { bytes: 4 }),
                Ok(b"MSH|2".to_vec()),
            ]
        );
        // A run with no frame after it is reported at the end of the push.
        d.push(b"\x00\x01\x02");
        assert_eq!(drain(&mut d), [Err(MllpError::Garbage { bytes: 3 })]);
        // Line ends alone between frames are not garbage.
        d.push(b"\r\n\r");
        assert!(drain(&mut d).is_empty());
    }

    #[test]
    fn hl7_mllp_accepts_missing_carriage_return_after_end_block() {
        let mut d = MllpDecoder::new(1024);
        d.push(b"\x0bMSH|1\x1c\x0bMSH|2\x1c\n");
        assert_eq!(
            drain(&mut d),
            [Ok(b"MSH|1".to_vec()), Ok(b"MSH|2".to_vec())]
        );
    }

    #[test]
    fn hl7_mllp_bounds_a_frame_that_never_ends() {
        let mut d = MllpDecoder::new(64);
        d.push(b"\x0bMSH|^~\\&|APP||||||ORU^R01|C9|P|2.6\r");
        d.push(&[b'9'; 10_000]);
        d.push(&[b'9'; 10_000]);
        let out = drain(&mut d);
        assert_eq!(out.len(), 1);
        let Err(MllpError::FrameTooLarge { limit, head }) = &out[0] else {
            panic!("{out:?}");
        };
        assert_eq!(*limit, 64);
        assert_eq!(head.as_slice(), b"MSH|^~\\&|APP||||||ORU^R01|C9|P|2.6");
        assert!(d.frame.capacity() <= 64, "memory stays bounded");
        // The tail of the big frame (even its end block) is dropped; the next frame works.
        d.push(b"999\x1c\x0d");
        d.push(&encode(b"MSH|ok"));
        assert_eq!(drain(&mut d), [Ok(b"MSH|ok".to_vec())]);
    }

    #[test]
    fn hl7_mllp_frame_at_the_limit_passes() {
        let mut d = MllpDecoder::new(5);
        d.push(&encode(b"12345"));
        d.push(&encode(b"123456"));
        d.push(&encode(b"ok"));
        let out = drain(&mut d);
        assert_eq!(out[0], Ok(b"12345".to_vec()));
        assert!(matches!(
            out[1],
            Err(MllpError::FrameTooLarge { limit: 5, .. })
        ));
        assert_eq!(out[2], Ok(b"ok".to_vec()));
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn hl7_mllp_new_start_block_interrupts_a_frame() {
        let mut d = MllpDecoder::new(1024);
        d.push(b"\x0bMSH|cut\rOBX|1");
        d.push(&encode(b"MSH|whole"));
        assert_eq!(
            drain(&mut d),
            [
                Err(MllpError::Interrupted {
                    bytes: 13,
                    head: b"MSH|cut".to_vec()
                }),
                Ok(b"MSH|whole".to_vec()),
            ]
        );
    }

    #[test]
    fn hl7_mllp_errors_map_to_problems() {
        let garbage = MllpError::Garbage { bytes: 3 };
        assert_eq!(garbage.problem().code, ErrorCode::SegmentSequence);
        assert_eq!(garbage.problem().location, None);
        assert_eq!(garbage.head(), None);
        let large = MllpError::FrameTooLarge {
            limit: 9,
            head: b"MSH".to_vec(),
        };
        assert_eq!(large.problem().code, ErrorCode::DataType);
        assert_eq!(large.head(), Some(&b"MSH"[..]));
        assert!(large.problem().message.contains("limit of 9 bytes"));
    }

    #[test]
    fn hl7_mllp_head_is_bounded() {
        assert_eq!(head(&[b'x'; 5000]).len(), HEAD_BYTES);
        assert_eq!(head(b"MSH|1\nPID"), b"MSH|1");
        assert_eq!(head(b""), b"");
    }
}
