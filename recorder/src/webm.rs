//! A sans-IO WebM/Matroska writer for one track per file, with crash recovery.
//!
//! [`TrackWriter`] takes encoded frames ([`push`](TrackWriter::push)) and returns the bytes to
//! append to the file; [`finish`](TrackWriter::finish) returns what to append and what to
//! overwrite at known offsets so that players see the duration and can seek. VP8, VP9 and Opus
//! go to WebM (`V_VP8`, `V_VP9`, `A_OPUS`); H.264 goes to Matroska (`V_MPEG4/ISO/AVC` with an
//! `avcC` CodecPrivate), since WebM does not allow it ([`TrackWriter::extension`]).
//!
//! **Layout.** EBML header; Segment of unknown size; SeekHead (Info, Tracks, and a Void
//! reserved for the Cues entry); Info (TimestampScale 1 ms, a Duration placeholder, DateUTC,
//! MuxingApp/WritingApp `medrelay`); Tracks; then Clusters of SimpleBlocks. A video Cluster
//! starts at each keyframe and at least every 5 s, an audio Cluster every 2 s.
//!
//! **Why unknown sizes.** The Segment and every Cluster are written with the EBML "unknown
//! size", as live WebM is: the bytes of a block never change once returned, so the caller
//! can append and sync them at once, and a file cut anywhere after a complete block is a
//! valid live-style file that ffmpeg and browsers play. Nothing is buffered beyond one frame.
//!
//! **Finishing.** [`Finish`] appends Cues (one per Cluster that starts at a keyframe, at most
//! [`MAX_CUES`]) and patches the Duration and the reserved SeekHead entry (pointing at the
//! Cues). The Segment and Clusters keep their unknown sizes: ffmpeg reports an error for an
//! unknown-sized Cluster inside a Segment of known size, and patching every Cluster would make
//! the patch list grow with the recording. The duration is the last block's timestamp plus
//! the last interval between frames (the last frame's length, at most 1 s).
//!
//! **Crash recovery.** After `kill -9`, [`recover`] reads the file's bytes: it finds the
//! placeholders in the header and walks the Clusters block by block; the file is valid up to
//! the end of the last complete SimpleBlock (a torn block, a torn Cluster header or a
//! zero-filled tail ends the walk). The caller truncates the file there and applies the
//! returned [`Finish`] exactly as after a normal stop, so a recovered file is indistinguishable
//! from a finished one that stopped at that block.

use crate::ebml::{
    id, is_top_level, put_bytes, put_float, put_id, put_size, put_uint, read_uint, read_vint,
    size_len,
};

/// The most cue points kept; later Clusters are not indexed (seeking still works by scanning).
pub const MAX_CUES: usize = 100_000;
/// A video Cluster is started at least this often (ms), even without a keyframe.
const VIDEO_CLUSTER_MS: u64 = 5_000;
/// An audio Cluster is started this often (ms).
const AUDIO_CLUSTER_MS: u64 = 2_000;
/// The last frame's assumed length is capped at this (ms).
const MAX_FRAME_MS: u64 = 1_000;
/// Opus pre-skip in samples at 48 kHz and SeekPreRoll in ns, as ffmpeg's libopus muxing writes.
const OPUS_PRE_SKIP: u16 = 312;
const OPUS_SEEK_PRE_ROLL_NS: u64 = 80_000_000;
/// The EBML "unknown size" in 8 bytes.
const UNKNOWN_SIZE: [u8; 8] = [0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
/// Size of one Seek entry with an 8-byte position, and of the Void that reserves it.
const SEEK_ENTRY_LEN: usize = 21;
/// Milliseconds from the Unix epoch to Matroska's 2001-01-01T00:00:00 UTC.
const MATROSKA_EPOCH_UNIX_MS: i64 = 978_307_200_000;

/// Why a frame cannot be written or a file cannot be recovered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebmError {
    /// Opus with other than 1 or 2 channels (needs a channel mapping table).
    #[error("Opus with {0} channels is not supported (1 or 2)")]
    UnsupportedChannels(u8),
    /// A video track must begin with a keyframe; the frame was not written.
    #[error("the first video frame must be a keyframe")]
    NeedKeyframe,
    /// The first H.264 keyframe carries no SPS and PPS, so no `avcC` can be built.
    #[error("the first H.264 keyframe has no SPS and PPS")]
    MissingParameterSets,
    /// An H.264 access unit is not a sequence of 4-byte length-prefixed NAL units.
    #[error("malformed length-prefixed H.264 access unit")]
    MalformedAccessUnit,
    /// An empty frame.
    #[error("empty frame")]
    EmptyFrame,
    /// Recovery: the bytes do not start with an EBML header and a Segment.
    #[error("not a WebM/Matroska file")]
    NotWebm,
    /// Recovery: the file ends inside its header, before any block.
    #[error("the file ends inside its header")]
    TruncatedHeader,
    /// Recovery: the header lacks the placeholders a `TrackWriter` writes.
    #[error("the file was not written by TrackWriter: {0} not found")]
    UnknownLayout(&'static str),
}

/// A video codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    /// VP8, in WebM.
    Vp8,
    /// VP9, in WebM.
    Vp9,
    /// H.264: frames are access units of 4-byte length-prefixed NAL units; in Matroska.
    H264,
}

/// What the one track of a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackSpec {
    /// A video track. Unknown dimensions are taken from a VP8 keyframe; for VP9 and H.264
    /// they are left out (the decoder reads them from the stream).
    Video {
        /// The codec.
        codec: VideoCodec,
        /// Width in pixels, if known.
        width: Option<u32>,
        /// Height in pixels, if known.
        height: Option<u32>,
    },
    /// An Opus track (decoded at 48 kHz).
    Opus {
        /// 1 or 2.
        channels: u8,
        /// The sample rate of the original input, informational (48 000 for WebRTC).
        input_sample_rate: u32,
    },
}

/// Bytes to overwrite at an offset of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    /// Offset from the start of the file.
    pub offset: u64,
    /// The new bytes (same length as the old ones).
    pub bytes: Vec<u8>,
}

/// How to complete a file: append `append`, then apply `patches`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Finish {
    /// Bytes to append at the end (the Cues).
    pub append: Vec<u8>,
    /// Bytes to overwrite (the Duration and the Cues SeekHead entry).
    pub patches: Vec<Patch>,
    /// The duration written, in ms.
    pub duration_ms: u64,
}

impl Finish {
    /// Applies the finish to a whole file held in memory.
    pub fn apply(&self, file: &mut Vec<u8>) {
        file.extend_from_slice(&self.append);
        for p in &self.patches {
            let at = p.offset as usize;
            if let Some(dst) = file.get_mut(at..at + p.bytes.len()) {
                dst.copy_from_slice(&p.bytes);
            }
        }
    }
}

/// What [`recover`] found in a cut file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Truncate the file to this many bytes (the end of the last complete block)...
    pub valid_len: u64,
    /// ...then apply this.
    pub finish: Finish,
}

/// Where the header's placeholders are (absolute file offsets).
#[derive(Debug, Clone, Copy)]
struct Layout {
    /// The first byte of the Segment's data (positions in SeekHead and Cues count from here).
    segment_data: u64,
    /// The Duration's 8-byte float.
    duration_at: u64,
    /// The Void reserved for the Cues entry of the SeekHead.
    cues_seek_at: u64,
}

/// One Cluster that starts with a keyframe.
#[derive(Debug, Clone, Copy)]
struct CuePoint {
    time_ms: u64,
    /// The Cluster's offset from the Segment's data.
    cluster_position: u64,
}

/// Timing of the blocks written, for the duration.
#[derive(Debug, Clone, Copy, Default)]
struct Timing {
    last_ms: Option<u64>,
    last_interval_ms: u64,
}

impl Timing {
    fn block(&mut self, ms: u64) {
        if let Some(last) = self.last_ms
            && ms > last
        {
            self.last_interval_ms = (ms - last).min(MAX_FRAME_MS);
        }
        self.last_ms = Some(ms);
    }

    fn duration_ms(&self) -> u64 {
        self.last_ms.map_or(0, |l| l + self.last_interval_ms)
    }
}

/// Writes one track to a WebM/Matroska file; see the [module docs](self).
#[derive(Debug)]
pub struct TrackWriter {
    spec: TrackSpec,
    start_unix_ms: i64,
    /// Set once the header is written.
    layout: Option<Layout>,
    /// Bytes returned so far (the file's length).
    written: u64,
    /// The current Cluster's timestamp.
    cluster_ms: Option<u64>,
    timing: Timing,
    cues: Vec<CuePoint>,
}

impl TrackWriter {
    /// A writer for `spec`, recording from `start_unix_ms` (written as DateUTC; block
    /// timestamps count from it).
    pub fn new(spec: TrackSpec, start_unix_ms: i64) -> Result<Self, WebmError> {
        if let TrackSpec::Opus { channels, .. } = spec
            && !(1..=2).contains(&channels)
        {
            return Err(WebmError::UnsupportedChannels(channels));
        }
        Ok(Self {
            spec,
            start_unix_ms,
            layout: None,
            written: 0,
            cluster_ms: None,
            timing: Timing::default(),
            cues: Vec::new(),
        })
    }

    /// The file name extension: `webm`, or `mkv` for H.264.
    pub fn extension(&self) -> &'static str {
        match self.spec {
            TrackSpec::Video {
                codec: VideoCodec::H264,
                ..
            } => "mkv",
            _ => "webm",
        }
    }

    /// Appends to `out` the bytes for one frame at `timestamp_ms` after the track's start
    /// (preceded by the header on the first frame, and by a new Cluster when one is due).
    /// A video track's first frame must be a keyframe. Timestamps are kept strictly
    /// increasing (players reject equal decode times): one not after the previous frame's is
    /// written 1 ms after it (a sender may give two frames the same RTP timestamp).
    pub fn push(
        &mut self,
        timestamp_ms: u64,
        data: &[u8],
        keyframe: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), WebmError> {
        if data.is_empty() {
            return Err(WebmError::EmptyFrame);
        }
        let before = out.len();
        let layout = match self.layout {
            Some(l) => l,
            None => {
                let l = self.write_header(data, keyframe, out)?;
                self.layout = Some(l);
                l
            }
        };
        let video = matches!(self.spec, TrackSpec::Video { .. });
        let keyframe = keyframe || !video;
        let ms = self
            .timing
            .last_ms
            .map_or(timestamp_ms, |l| timestamp_ms.max(l + 1));
        let due = match self.cluster_ms {
            None => true,
            Some(c) if video => keyframe || ms - c >= VIDEO_CLUSTER_MS,
            Some(c) => ms - c >= AUDIO_CLUSTER_MS,
        };
        if due {
            let position = self.written + (out.len() - before) as u64 - layout.segment_data;
            if keyframe && self.cues.len() < MAX_CUES {
                self.cues.push(CuePoint {
                    time_ms: ms,
                    cluster_position: position,
                });
            }
            put_id(out, id::CLUSTER);
            out.extend_from_slice(&UNKNOWN_SIZE);
            put_uint(out, id::TIMESTAMP, ms);
            self.cluster_ms = Some(ms);
        }
        let relative = (ms - self.cluster_ms.unwrap_or(ms)) as i16;
        put_id(out, id::SIMPLE_BLOCK);
        put_size(out, 4 + data.len() as u64);
        out.push(0x81); // track number 1
        out.extend_from_slice(&relative.to_be_bytes());
        out.push(if keyframe { 0x80 } else { 0 });
        out.extend_from_slice(data);
        self.timing.block(ms);
        self.written += (out.len() - before) as u64;
        Ok(())
    }

    /// Completes the file: Cues and Duration. Empty if no frame was written (the
    /// caller may then delete the file).
    pub fn finish(self) -> Finish {
        match self.layout {
            Some(layout) => finalize(&layout, &self.cues, self.written, self.timing),
            None => Finish::default(),
        }
    }

    /// Builds the EBML header, Segment start, SeekHead, Info and Tracks into `out`.
    fn write_header(
        &self,
        first: &[u8],
        keyframe: bool,
        out: &mut Vec<u8>,
    ) -> Result<Layout, WebmError> {
        let base = self.written;
        let mut entry = Vec::new();
        put_uint(&mut entry, id::TRACK_NUMBER, 1);
        let uid = (self.start_unix_ms as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        put_uint(&mut entry, id::TRACK_UID, uid);
        put_uint(&mut entry, id::FLAG_LACING, 0);
        let doc_type = match self.spec {
            TrackSpec::Video {
                codec,
                width,
                height,
            } => {
                if !keyframe {
                    return Err(WebmError::NeedKeyframe);
                }
                put_uint(&mut entry, id::TRACK_TYPE, 1);
                let (codec_id, doc_type) = match codec {
                    VideoCodec::Vp8 => ("V_VP8", "webm"),
                    VideoCodec::Vp9 => ("V_VP9", "webm"),
                    VideoCodec::H264 => ("V_MPEG4/ISO/AVC", "matroska"),
                };
                put_bytes(&mut entry, id::CODEC_ID, codec_id.as_bytes());
                if codec == VideoCodec::H264 {
                    put_bytes(&mut entry, id::CODEC_PRIVATE, &avc_config(first)?);
                }
                let dims = match (width, height) {
                    (Some(w), Some(h)) => Some((w, h)),
                    _ if codec == VideoCodec::Vp8 => vp8_dimensions(first),
                    _ => None,
                };
                if let Some((w, h)) = dims {
                    let mut video = Vec::new();
                    put_uint(&mut video, id::PIXEL_WIDTH, u64::from(w));
                    put_uint(&mut video, id::PIXEL_HEIGHT, u64::from(h));
                    put_bytes(&mut entry, id::VIDEO, &video);
                }
                doc_type
            }
            TrackSpec::Opus {
                channels,
                input_sample_rate,
            } => {
                put_uint(&mut entry, id::TRACK_TYPE, 2);
                put_bytes(&mut entry, id::CODEC_ID, b"A_OPUS");
                let mut head = b"OpusHead".to_vec();
                head.extend_from_slice(&[1, channels]);
                head.extend_from_slice(&OPUS_PRE_SKIP.to_le_bytes());
                head.extend_from_slice(&input_sample_rate.to_le_bytes());
                head.extend_from_slice(&[0, 0, 0]); // output gain, mapping family 0
                put_bytes(&mut entry, id::CODEC_PRIVATE, &head);
                let delay_ns = u64::from(OPUS_PRE_SKIP) * 1_000_000_000 / 48_000;
                put_uint(&mut entry, id::CODEC_DELAY, delay_ns);
                put_uint(&mut entry, id::SEEK_PRE_ROLL, OPUS_SEEK_PRE_ROLL_NS);
                let mut audio = Vec::new();
                put_float(&mut audio, id::SAMPLING_FREQUENCY, 48_000.0);
                put_uint(&mut audio, id::CHANNELS, u64::from(channels));
                put_bytes(&mut entry, id::AUDIO, &audio);
                "webm"
            }
        };

        let start = out.len();
        let mut ebml = Vec::new();
        put_uint(&mut ebml, id::EBML_VERSION, 1);
        put_uint(&mut ebml, id::EBML_READ_VERSION, 1);
        put_uint(&mut ebml, id::EBML_MAX_ID_LENGTH, 4);
        put_uint(&mut ebml, id::EBML_MAX_SIZE_LENGTH, 8);
        put_bytes(&mut ebml, id::DOC_TYPE, doc_type.as_bytes());
        put_uint(&mut ebml, id::DOC_TYPE_VERSION, 4);
        put_uint(&mut ebml, id::DOC_TYPE_READ_VERSION, 2);
        put_bytes(out, id::EBML, &ebml);
        put_id(out, id::SEGMENT);
        out.extend_from_slice(&UNKNOWN_SIZE);
        let segment_data = base + (out.len() - start) as u64;

        let mut info = Vec::new();
        put_uint(&mut info, id::TIMESTAMP_SCALE, 1_000_000);
        put_float(&mut info, id::DURATION, 0.0);
        let duration_in_info = info.len() - 8;
        let date_ns = (self.start_unix_ms - MATROSKA_EPOCH_UNIX_MS).saturating_mul(1_000_000);
        put_bytes(&mut info, id::DATE_UTC, &date_ns.to_be_bytes());
        put_bytes(&mut info, id::MUXING_APP, b"medrelay");
        put_bytes(&mut info, id::WRITING_APP, b"medrelay");
        let mut tracks = Vec::new();
        put_bytes(&mut tracks, id::TRACK_ENTRY, &entry);

        let seek_head_len = 4 + 1 + 3 * SEEK_ENTRY_LEN as u64;
        let info_position = seek_head_len;
        let info_header = 4 + size_len(info.len() as u64) as u64;
        let tracks_position = info_position + info_header + info.len() as u64;
        let mut seek_head = Vec::new();
        seek_head.extend_from_slice(&seek_entry(id::INFO, info_position));
        seek_head.extend_from_slice(&seek_entry(id::TRACKS, tracks_position));
        let cues_seek_in_head = seek_head.len();
        seek_head.push(id::VOID as u8);
        seek_head.push(0x80 | (SEEK_ENTRY_LEN as u8 - 2));
        seek_head.resize(3 * SEEK_ENTRY_LEN, 0);
        put_bytes(out, id::SEEK_HEAD, &seek_head);
        put_bytes(out, id::INFO, &info);
        put_bytes(out, id::TRACKS, &tracks);
        Ok(Layout {
            segment_data,
            duration_at: segment_data + info_position + info_header + duration_in_info as u64,
            cues_seek_at: segment_data + 5 + cues_seek_in_head as u64,
        })
    }
}

/// The Cues, Duration and SeekHead entry for a file of `end` bytes.
fn finalize(layout: &Layout, cues: &[CuePoint], end: u64, timing: Timing) -> Finish {
    let duration_ms = timing.duration_ms();
    let mut patches = vec![Patch {
        offset: layout.duration_at,
        bytes: (duration_ms as f64).to_be_bytes().to_vec(),
    }];
    let mut append = Vec::new();
    if !cues.is_empty() {
        let mut body = Vec::new();
        for cue in cues {
            let mut positions = Vec::new();
            put_uint(&mut positions, id::CUE_TRACK, 1);
            put_uint(
                &mut positions,
                id::CUE_CLUSTER_POSITION,
                cue.cluster_position,
            );
            let mut point = Vec::new();
            put_uint(&mut point, id::CUE_TIME, cue.time_ms);
            put_bytes(&mut point, id::CUE_TRACK_POSITIONS, &positions);
            put_bytes(&mut body, id::CUE_POINT, &point);
        }
        put_bytes(&mut append, id::CUES, &body);
        patches.push(Patch {
            offset: layout.cues_seek_at,
            bytes: seek_entry(id::CUES, end - layout.segment_data),
        });
    }
    Finish {
        append,
        patches,
        duration_ms,
    }
}

/// Finds where a file cut by a crash stops being valid, and how to finish it; see the
/// [module docs](self). Works on a finished file too (its Cues are rebuilt).
pub fn recover(file: &[u8]) -> Result<Recovered, WebmError> {
    let mut r = Reader { buf: file, pos: 0 };
    let ebml = r.element().ok_or(WebmError::NotWebm)?;
    if ebml.id != id::EBML {
        return Err(WebmError::NotWebm);
    }
    r.skip(&ebml).ok_or(WebmError::TruncatedHeader)?;
    let segment = r.element().ok_or(WebmError::NotWebm)?;
    if segment.id != id::SEGMENT {
        return Err(WebmError::NotWebm);
    }
    let segment_data = r.pos as u64;
    let mut duration_at = None;
    let mut cues_seek_at = None;
    let mut header_end = None;
    let mut cues = Vec::new();
    let mut timing = Timing::default();
    let mut valid_len = None;
    while let Some(e) = r.element() {
        match e.id {
            id::SEEK_HEAD | id::INFO => {
                let end = e.end().ok_or(WebmError::TruncatedHeader)?;
                let body = file.get(r.pos..end).ok_or(WebmError::TruncatedHeader)?;
                let mut c = Reader { buf: body, pos: 0 };
                while let Some(child) = c.element() {
                    let at = (r.pos + child.start) as u64;
                    let len = child.size.map(|s| child.header + s as usize);
                    match child.id {
                        id::DURATION if child.size == Some(8) => {
                            duration_at = Some(at + child.header as u64);
                        }
                        id::VOID | id::SEEK if len == Some(SEEK_ENTRY_LEN) => {
                            let is_cues = body
                                .get(child.start..)
                                .is_some_and(|b| b.starts_with(&seek_entry(id::CUES, 0)[..10]));
                            if child.id == id::VOID || is_cues {
                                cues_seek_at.get_or_insert(at);
                            }
                        }
                        _ => {}
                    }
                    if c.skip(&child).is_none() {
                        break;
                    }
                }
                r.pos = end;
                header_end = Some(end as u64);
            }
            id::CLUSTER => {
                let cluster_position = e.start as u64 - segment_data;
                let end = e.end().unwrap_or(file.len()).min(file.len());
                let mut cluster_ms = None;
                let mut first_block = true;
                let mut torn = false;
                while r.pos < end {
                    let Some(child) = r.element() else {
                        torn = true;
                        break;
                    };
                    if is_top_level(child.id) {
                        r.pos = child.start;
                        break;
                    }
                    let Some(child_end) = child.end().filter(|&e| e <= end) else {
                        torn = true;
                        break;
                    };
                    match child.id {
                        id::TIMESTAMP => cluster_ms = Some(read_uint(&file[r.pos..child_end])),
                        id::SIMPLE_BLOCK => {
                            let (Some(base), Some(&[_, a, b, flags])) = (
                                cluster_ms,
                                file.get(r.pos..child_end).and_then(|b| b.get(..4)),
                            ) else {
                                torn = true;
                                break;
                            };
                            let ms =
                                base.saturating_add_signed(i64::from(i16::from_be_bytes([a, b])));
                            if first_block && flags & 0x80 != 0 && cues.len() < MAX_CUES {
                                cues.push(CuePoint {
                                    time_ms: ms,
                                    cluster_position,
                                });
                            }
                            first_block = false;
                            timing.block(ms);
                            valid_len = Some(child_end as u64);
                        }
                        _ => {}
                    }
                    r.pos = child_end;
                }
                if torn {
                    break; // a torn or garbled element: the valid part ends before it
                }
            }
            id::TRACKS => {
                let end = e
                    .end()
                    .filter(|&e| e <= file.len())
                    .ok_or(WebmError::TruncatedHeader)?;
                header_end = Some(end as u64);
                r.pos = end;
            }
            _ => break, // Cues, Tags, ...: what follows the Clusters is rebuilt
        }
    }
    let layout = Layout {
        segment_data,
        duration_at: duration_at.ok_or(WebmError::UnknownLayout("Duration"))?,
        cues_seek_at: cues_seek_at.ok_or(WebmError::UnknownLayout("reserved Cues entry"))?,
    };
    let valid_len = match valid_len {
        Some(v) => v,
        None => header_end.ok_or(WebmError::TruncatedHeader)?,
    };
    Ok(Recovered {
        valid_len,
        finish: finalize(&layout, &cues, valid_len, timing),
    })
}

/// An element header read from a buffer.
#[derive(Debug, Clone, Copy)]
struct Element {
    id: u32,
    /// Offset of the ID in the buffer.
    start: usize,
    /// Length of ID plus size field.
    header: usize,
    /// `None` for the unknown size.
    size: Option<u64>,
}

impl Element {
    /// Where the element ends in the buffer, if its size is known.
    fn end(&self) -> Option<usize> {
        let size = usize::try_from(self.size?).ok()?;
        (self.start + self.header).checked_add(size)
    }
}

/// Reads EBML element headers; `None` at the end of the buffer or on an invalid header.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    /// Reads an element header and moves past it.
    fn element(&mut self) -> Option<Element> {
        let start = self.pos;
        let (_, id_len) = read_vint(self.buf.get(start..)?, 4)?;
        let (size, size_len) = read_vint(self.buf.get(start + id_len..)?, 8)?;
        let id_value = read_uint(&self.buf[start..start + id_len]) as u32;
        let unknown = size == (1u64 << (7 * size_len)) - 1;
        self.pos = start + id_len + size_len;
        Some(Element {
            id: id_value,
            start,
            header: id_len + size_len,
            size: (!unknown).then_some(size),
        })
    }

    /// Moves past an element of known size that lies wholly in the buffer.
    fn skip(&mut self, e: &Element) -> Option<()> {
        let end = e.end().filter(|&end| end <= self.buf.len())?;
        self.pos = end;
        Some(())
    }
}

/// A Seek entry naming a top-level `element` (4-byte ID) at `position` (8 bytes):
/// [`SEEK_ENTRY_LEN`] bytes.
fn seek_entry(element: u32, position: u64) -> Vec<u8> {
    let mut body = Vec::with_capacity(SEEK_ENTRY_LEN);
    put_bytes(&mut body, id::SEEK_ID, &element.to_be_bytes());
    put_bytes(&mut body, id::SEEK_POSITION, &position.to_be_bytes());
    let mut entry = Vec::with_capacity(SEEK_ENTRY_LEN);
    put_bytes(&mut entry, id::SEEK, &body);
    entry
}

/// Width and height from a VP8 keyframe's header (RFC 6386 section 9.1).
fn vp8_dimensions(frame: &[u8]) -> Option<(u32, u32)> {
    let h = frame.get(..10)?;
    if h[0] & 1 != 0 || h[3..6] != [0x9D, 0x01, 0x2A] {
        return None;
    }
    let w = u16::from_le_bytes([h[6], h[7]]) & 0x3FFF;
    let ht = u16::from_le_bytes([h[8], h[9]]) & 0x3FFF;
    Some((u32::from(w), u32::from(ht)))
}

/// An `AVCDecoderConfigurationRecord` from the SPS and PPS of a length-prefixed access unit.
fn avc_config(access_unit: &[u8]) -> Result<Vec<u8>, WebmError> {
    let (mut sps, mut pps) = (None, None);
    let mut rest = access_unit;
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or(WebmError::MalformedAccessUnit)?;
        let len = u32::from_be_bytes(*len) as usize;
        let nal = tail
            .get(..len)
            .filter(|n| !n.is_empty())
            .ok_or(WebmError::MalformedAccessUnit)?;
        match nal[0] & 0x1F {
            7 => sps = sps.or(Some(nal)),
            8 => pps = pps.or(Some(nal)),
            _ => {}
        }
        rest = &tail[len..];
    }
    let (Some(sps), Some(pps)) = (sps, pps) else {
        return Err(WebmError::MissingParameterSets);
    };
    if sps.len() < 4 {
        return Err(WebmError::MissingParameterSets);
    }
    let mut c = vec![1, sps[1], sps[2], sps[3], 0xFF, 0xE1];
    c.extend_from_slice(&(sps.len() as u16).to_be_bytes());
    c.extend_from_slice(sps);
    c.push(1);
    c.extend_from_slice(&(pps.len() as u16).to_be_bytes());
    c.extend_from_slice(pps);
    Ok(c)
}

/// Test material made at test time with ffmpeg (which the README test command installs; a
/// test that needs it fails without it), and helpers shared with the depacketizer tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use crate::depacketize::RtpPacket;
    use std::path::Path;
    use std::process::Command;
    use std::sync::OnceLock;

    /// Runs ffmpeg and returns what it wrote to stdout.
    fn ffmpeg_stdout(args: &[&str]) -> Vec<u8> {
        let out = Command::new("ffmpeg")
            .args(["-v", "error", "-nostdin"])
            .args(args)
            .output()
            .expect("ffmpeg must be installed (the README test command installs it)");
        assert!(
            out.status.success(),
            "ffmpeg {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// 3 s of VP8 from ffmpeg's `testsrc` (320x240, 25 fps, a keyframe every 25 frames,
    /// realtime settings as in WebRTC), as the frames of an IVF file.
    pub(crate) fn vp8_frames() -> &'static [Vec<u8>] {
        static FRAMES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
        FRAMES.get_or_init(|| {
            let ivf = ffmpeg_stdout(&[
                "-f",
                "lavfi",
                "-i",
                "testsrc=size=320x240:rate=25",
                "-t",
                "3",
                "-c:v",
                "libvpx",
                "-g",
                "25",
                "-keyint_min",
                "25",
                "-b:v",
                "1M",
                "-deadline",
                "realtime",
                "-auto-alt-ref",
                "0",
                "-lag-in-frames",
                "0",
                "-f",
                "ivf",
                "-",
            ]);
            assert_eq!(&ivf[..4], b"DKIF");
            let mut pos = usize::from(u16::from_le_bytes([ivf[6], ivf[7]]));
            let mut frames = Vec::new();
            while pos + 12 <= ivf.len() {
                let len = u32::from_le_bytes(ivf[pos..pos + 4].try_into().unwrap()) as usize;
                frames.push(ivf[pos + 12..pos + 12 + len].to_vec());
                pos += 12 + len;
            }
            assert_eq!(frames.len(), 75);
            frames
        })
    }

    /// Whether a VP8 frame is a keyframe (P bit 0).
    pub(crate) fn vp8_keyframe(frame: &[u8]) -> bool {
        frame[0] & 1 == 0
    }

    /// 3 s of a 440 Hz sine in Opus (20 ms packets) from ffmpeg, as the audio packets of an
    /// Ogg file.
    pub(crate) fn opus_packets() -> &'static [Vec<u8>] {
        static PACKETS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
        PACKETS.get_or_init(|| {
            let ogg = ffmpeg_stdout(&[
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440:sample_rate=48000",
                "-t",
                "3",
                "-c:a",
                "libopus",
                "-b:a",
                "48k",
                "-frame_duration",
                "20",
                "-f",
                "ogg",
                "-",
            ]);
            let (mut packets, mut current, mut pos) = (Vec::new(), Vec::new(), 0);
            while pos + 27 <= ogg.len() {
                assert_eq!(&ogg[pos..pos + 4], b"OggS");
                let segments = usize::from(ogg[pos + 26]);
                let mut body = pos + 27 + segments;
                for &lace in &ogg[pos + 27..pos + 27 + segments] {
                    current.extend_from_slice(&ogg[body..body + usize::from(lace)]);
                    body += usize::from(lace);
                    if lace < 255 {
                        packets.push(std::mem::take(&mut current));
                    }
                }
                pos = body;
            }
            assert!(packets[0].starts_with(b"OpusHead") && packets[1].starts_with(b"OpusTags"));
            packets.drain(..2);
            packets
        })
    }

    /// 3 s of H.264 (baseline, 25 fps, a keyframe every 25 frames, SPS/PPS only before the
    /// first) from ffmpeg's libx264 as Annex-B, split into access units of NAL units.
    pub(crate) fn h264_access_units() -> &'static [Vec<Vec<u8>>] {
        static UNITS: OnceLock<Vec<Vec<Vec<u8>>>> = OnceLock::new();
        UNITS.get_or_init(|| {
            let annexb = ffmpeg_stdout(&[
                "-f",
                "lavfi",
                "-i",
                "testsrc=size=320x240:rate=25",
                "-t",
                "3",
                "-c:v",
                "libx264",
                "-pix_fmt",
                "yuv420p",
                "-profile:v",
                "baseline",
                "-g",
                "25",
                "-bf",
                "0",
                "-threads",
                "1",
                "-bsf:v",
                "h264_mp4toannexb",
                "-f",
                "h264",
                "-",
            ]);
            let mut starts = Vec::new();
            let mut i = 0;
            while i + 3 <= annexb.len() {
                if annexb[i..i + 3] == [0, 0, 1] {
                    starts.push(i + 3);
                    i += 3;
                } else {
                    i += 1;
                }
            }
            let mut nals = Vec::new();
            for (k, &s) in starts.iter().enumerate() {
                let mut end = starts.get(k + 1).map_or(annexb.len(), |&n| n - 3);
                while end > s && annexb[end - 1] == 0 {
                    end -= 1;
                }
                nals.push(annexb[s..end].to_vec());
            }
            let (mut units, mut current, mut has_slice) = (Vec::new(), Vec::new(), false);
            for nal in nals {
                let kind = nal[0] & 0x1F;
                let slice = kind == 1 || kind == 5;
                if has_slice && (!slice || nal[1] & 0x80 != 0) {
                    units.push(std::mem::take(&mut current));
                    has_slice = false;
                }
                has_slice |= slice;
                current.push(nal);
            }
            units.push(current);
            assert_eq!(units.len(), 75);
            units
        })
    }

    /// An RTP packet that owns its payload.
    #[derive(Debug, Clone)]
    pub(crate) struct Packet {
        pub payload: Vec<u8>,
        pub sequence: u16,
        pub timestamp: u32,
        pub marker: bool,
    }

    impl Packet {
        pub(crate) fn rtp(&self) -> RtpPacket<'_> {
            RtpPacket {
                payload: &self.payload,
                sequence: self.sequence,
                timestamp: self.timestamp,
                marker: self.marker,
            }
        }
    }

    /// Packetizes VP8 frames as RFC 7741 does (15-bit PictureID, at most `mtu` bytes of
    /// frame per packet), frame `i` at `first_timestamp + i * step`.
    pub(crate) fn packetize_vp8(
        frames: &[Vec<u8>],
        first_sequence: u16,
        first_timestamp: u32,
        step: u32,
        mtu: usize,
    ) -> Vec<Packet> {
        let mut packets = Vec::new();
        let mut sequence = first_sequence;
        for (i, frame) in frames.iter().enumerate() {
            let chunks: Vec<&[u8]> = frame.chunks(mtu).collect();
            for (k, chunk) in chunks.iter().enumerate() {
                let picture_id = (i as u16) & 0x7FFF;
                let mut payload = vec![if k == 0 { 0x90 } else { 0x80 }, 0x80];
                payload.extend_from_slice(&(0x8000 | picture_id).to_be_bytes());
                payload.extend_from_slice(chunk);
                packets.push(Packet {
                    payload,
                    sequence,
                    timestamp: first_timestamp.wrapping_add(step.wrapping_mul(i as u32)),
                    marker: k + 1 == chunks.len(),
                });
                sequence = sequence.wrapping_add(1);
            }
        }
        packets
    }

    /// Packetizes H.264 access units as RFC 6184 mode 1: runs of small NAL units in STAP-A,
    /// NAL units over `mtu` in FU-A, others alone; frame `i` at `i * 3600`.
    pub(crate) fn packetize_h264(
        units: &[Vec<Vec<u8>>],
        first_sequence: u16,
        mtu: usize,
    ) -> Vec<Packet> {
        let mut payloads: Vec<(Vec<u8>, u32, bool)> = Vec::new();
        for (i, unit) in units.iter().enumerate() {
            let ts = i as u32 * 3600;
            let start = payloads.len();
            let mut k = 0;
            while k < unit.len() {
                let nal = &unit[k];
                if nal.len() > mtu {
                    let header = nal[0];
                    let chunks: Vec<&[u8]> = nal[1..].chunks(mtu).collect();
                    for (c, chunk) in chunks.iter().enumerate() {
                        let mut fu = (header & 0x1F)
                            | if c == 0 { 0x80 } else { 0 }
                            | if c + 1 == chunks.len() { 0x40 } else { 0 };
                        fu &= 0xDF;
                        let mut p = vec![(header & 0xE0) | 28, fu];
                        p.extend_from_slice(chunk);
                        payloads.push((p, ts, false));
                    }
                    k += 1;
                } else if k + 1 < unit.len() && nal.len() + unit[k + 1].len() + 5 <= mtu {
                    let mut p = vec![24];
                    while k < unit.len() && p.len() + unit[k].len() + 2 <= mtu {
                        p.extend_from_slice(&(unit[k].len() as u16).to_be_bytes());
                        p.extend_from_slice(&unit[k]);
                        k += 1;
                    }
                    payloads.push((p, ts, false));
                } else {
                    payloads.push((nal.clone(), ts, false));
                    k += 1;
                }
            }
            if payloads.len() > start {
                payloads.last_mut().unwrap().2 = true;
            }
        }
        payloads
            .into_iter()
            .enumerate()
            .map(|(i, (payload, timestamp, marker))| Packet {
                payload,
                sequence: first_sequence.wrapping_add(i as u16),
                timestamp,
                marker,
            })
            .collect()
    }

    /// What ffprobe says of a file.
    #[derive(Debug)]
    pub(crate) struct Probe {
        pub codec: String,
        /// NaN when ffprobe prints `N/A` (a live file has no duration).
        pub duration: f64,
        pub frames: u64,
    }

    /// Writes `bytes` to a temporary file named `*.ext`, runs ffprobe (counting decoded frames)
    /// and `ffmpeg -v error -f null`, and returns the probe and ffmpeg's error output.
    pub(crate) fn probe_and_decode(bytes: &[u8], ext: &str) -> (Probe, String) {
        let file = tempfile::Builder::new()
            .suffix(&format!(".{ext}"))
            .tempfile()
            .unwrap();
        std::fs::write(file.path(), bytes).unwrap();
        (probe(file.path()), decode_errors(file.path()))
    }

    fn probe(path: &Path) -> Probe {
        let out = Command::new("ffprobe")
            .args(["-v", "error", "-count_frames", "-show_entries"])
            .args([
                "stream=codec_name,nb_read_frames:format=duration",
                "-of",
                "default=nw=1",
            ])
            .arg(path)
            .output()
            .expect("ffprobe must be installed (the README test command installs it)");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "ffprobe failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("ffprobe printed no {name}: {text}"))
                .to_string()
        };
        Probe {
            codec: field("codec_name"),
            duration: field("duration").parse().unwrap_or(f64::NAN),
            frames: field("nb_read_frames").parse().unwrap(),
        }
    }

    fn decode_errors(path: &Path) -> String {
        let out = Command::new("ffmpeg")
            .args(["-v", "error", "-nostdin", "-i"])
            .arg(path)
            .args(["-f", "null", "-"])
            .output()
            .expect("ffmpeg must be installed (the README test command installs it)");
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{opus_packets, probe_and_decode, vp8_frames, vp8_keyframe};
    use super::*;

    const START: i64 = 1_795_000_000_000;

    /// Writes frames `(ms, data, keyframe)`; returns the unfinished file, the file length after
    /// each block, and the writer.
    fn write<'a>(
        spec: TrackSpec,
        frames: impl IntoIterator<Item = (u64, &'a [u8], bool)>,
    ) -> (Vec<u8>, Vec<usize>, TrackWriter) {
        let mut w = TrackWriter::new(spec, START).unwrap();
        let (mut file, mut ends) = (Vec::new(), Vec::new());
        for (ms, data, key) in frames {
            w.push(ms, data, key, &mut file).unwrap();
            ends.push(file.len());
        }
        (file, ends, w)
    }

    fn vp8_file() -> (Vec<u8>, Vec<usize>, TrackWriter) {
        let spec = TrackSpec::Video {
            codec: VideoCodec::Vp8,
            width: None,
            height: None,
        };
        let frames = vp8_frames()
            .iter()
            .enumerate()
            .map(|(i, f)| (i as u64 * 40, f.as_slice(), vp8_keyframe(f)));
        write(spec, frames)
    }

    fn opus_file() -> (Vec<u8>, Vec<usize>, TrackWriter) {
        let spec = TrackSpec::Opus {
            channels: 1,
            input_sample_rate: 48_000,
        };
        let frames = opus_packets()
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u64 * 20, p.as_slice(), true));
        write(spec, frames)
    }

    #[test]
    fn vp8_track_plays_with_its_codec_and_duration() {
        let (mut file, _, w) = vp8_file();
        assert_eq!(w.extension(), "webm");
        let finish = w.finish();
        assert_eq!(finish.duration_ms, 3000);
        finish.apply(&mut file);
        let (probe, errors) = probe_and_decode(&file, "webm");
        assert_eq!(probe.codec, "vp8");
        assert!((probe.duration - 3.0).abs() < 0.1, "{probe:?}");
        assert_eq!(probe.frames, 75);
        assert_eq!(errors, "");
    }

    #[test]
    fn opus_track_plays_with_its_codec_and_duration() {
        let (mut file, _, w) = opus_file();
        let n = opus_packets().len() as f64;
        w.finish().apply(&mut file);
        let (probe, errors) = probe_and_decode(&file, "webm");
        assert_eq!(probe.codec, "opus");
        assert!((probe.duration - 3.0).abs() < 0.1, "{probe:?}");
        assert!((probe.duration - n * 0.020).abs() < 0.01, "{probe:?}");
        assert_eq!(errors, "");
    }

    #[test]
    fn unfinished_file_cut_after_a_block_plays_live_style() {
        let (file, ends, _) = vp8_file();
        let (probe, errors) = probe_and_decode(&file[..ends[40]], "webm");
        assert_eq!(probe.codec, "vp8");
        assert_eq!(probe.frames, 41);
        assert_eq!(errors, "");
    }

    #[test]
    fn recovery_of_a_file_cut_inside_a_block_plays_to_the_last_whole_block() {
        let (file, ends, _) = vp8_file();
        let cut = &file[..ends[60] + 100];
        let recovered = recover(cut).unwrap();
        assert_eq!(recovered.valid_len, ends[60] as u64);
        assert_eq!(recovered.finish.duration_ms, 61 * 40);
        let mut fixed = cut[..recovered.valid_len as usize].to_vec();
        recovered.finish.apply(&mut fixed);
        let (probe, errors) = probe_and_decode(&fixed, "webm");
        assert!((probe.duration - 2.44).abs() < 0.1, "{probe:?}");
        assert_eq!(probe.frames, 61);
        assert_eq!(errors, "");
    }

    #[test]
    fn recovery_of_an_audio_file_cut_in_a_cluster_header_plays() {
        let (file, ends, _) = opus_file();
        // Block 100 (at 2 s) opens a new Cluster: cut inside its header.
        let cut = &file[..ends[99] + 6];
        let recovered = recover(cut).unwrap();
        assert_eq!(recovered.valid_len, ends[99] as u64);
        let mut fixed = cut[..ends[99]].to_vec();
        recovered.finish.apply(&mut fixed);
        let (probe, errors) = probe_and_decode(&fixed, "webm");
        assert_eq!(probe.codec, "opus");
        assert!((probe.duration - 2.0).abs() < 0.05, "{probe:?}");
        assert_eq!(errors, "");
    }

    #[test]
    fn recovery_ignores_a_zero_filled_tail() {
        let (mut file, ends, _) = vp8_file();
        file.truncate(ends[10]);
        file.extend_from_slice(&[0; 4096]);
        assert_eq!(recover(&file).unwrap().valid_len, ends[10] as u64);
    }

    #[test]
    fn recovery_of_a_finished_file_finishes_it_the_same_way() {
        let (mut file, _, w) = vp8_file();
        let len = file.len();
        let finish = w.finish();
        finish.apply(&mut file);
        let recovered = recover(&file).unwrap();
        assert_eq!(recovered.valid_len, len as u64);
        assert_eq!(recovered.finish, finish);
    }

    #[test]
    fn recovery_of_any_cut_or_damaged_prefix_never_panics() {
        let (file, ends, _) = vp8_file();
        let head = &file[..ends[3] + 50];
        for n in 0..head.len() {
            if let Ok(r) = recover(&head[..n]) {
                assert!(r.valid_len <= n as u64);
            }
        }
        let mut damaged = head.to_vec();
        for i in (0..damaged.len()).step_by(13) {
            damaged[i] ^= 0x5A;
            let _ = recover(&damaged);
        }
    }

    #[test]
    fn recovery_rejects_other_files_and_torn_headers() {
        assert_eq!(recover(b"RIFF....WAVE"), Err(WebmError::NotWebm));
        let (file, _, _) = opus_file();
        assert_eq!(recover(&file[..20]), Err(WebmError::TruncatedHeader));
        let header_only = recover(&file[..100]);
        assert!(header_only.is_err(), "{header_only:?}");
    }

    #[test]
    fn clusters_start_at_keyframes_and_at_least_every_five_seconds() {
        let spec = TrackSpec::Video {
            codec: VideoCodec::Vp9,
            width: Some(640),
            height: Some(480),
        };
        let data = [0x42u8; 30];
        // 12 s at 10 fps, keyframes at 0 and 6 s: Clusters at 0, 5, 6 and 11 s.
        let frames = (0..120u64).map(|i| (i * 100, &data[..], i == 0 || i == 60));
        let (file, _, _) = write(spec, frames);
        let clusters = file
            .windows(4)
            .filter(|w| *w == [0x1F, 0x43, 0xB6, 0x75])
            .count();
        assert_eq!(clusters, 4);
    }

    #[test]
    fn video_must_start_with_a_keyframe_and_time_always_moves_on() {
        let spec = TrackSpec::Video {
            codec: VideoCodec::Vp8,
            width: Some(2),
            height: Some(2),
        };
        let mut w = TrackWriter::new(spec, START).unwrap();
        let mut out = Vec::new();
        assert_eq!(
            w.push(0, &[1, 2], false, &mut out),
            Err(WebmError::NeedKeyframe)
        );
        assert!(out.is_empty());
        assert_eq!(w.push(0, &[], true, &mut out), Err(WebmError::EmptyFrame));
        w.push(100, &[0, 2], true, &mut out).unwrap();
        // Earlier, then equal: written at 101 and 102, 1 ms apart.
        w.push(50, &[1, 2], false, &mut out).unwrap();
        w.push(101, &[1, 3], false, &mut out).unwrap();
        assert_eq!(w.finish().duration_ms, 103);
    }

    #[test]
    fn h264_needs_parameter_sets_in_its_first_keyframe() {
        let spec = TrackSpec::Video {
            codec: VideoCodec::H264,
            width: None,
            height: None,
        };
        let mut w = TrackWriter::new(spec, START).unwrap();
        assert_eq!(w.extension(), "mkv");
        let mut out = Vec::new();
        let idr_only = [0, 0, 0, 2, 0x65, 0x88];
        assert_eq!(
            w.push(0, &idr_only, true, &mut out),
            Err(WebmError::MissingParameterSets)
        );
        assert_eq!(
            w.push(0, &[0, 0, 0, 9, 0x65], true, &mut out),
            Err(WebmError::MalformedAccessUnit)
        );
        assert!(out.is_empty());
        assert_eq!(w.finish(), Finish::default());
    }

    #[test]
    fn opus_needs_one_or_two_channels() {
        let spec = TrackSpec::Opus {
            channels: 6,
            input_sample_rate: 48_000,
        };
        assert_eq!(
            TrackWriter::new(spec, START).unwrap_err(),
            WebmError::UnsupportedChannels(6)
        );
    }

    #[test]
    fn sizes_use_the_shortest_field_but_never_all_ones() {
        let encode = |n| {
            let mut v = Vec::new();
            put_size(&mut v, n);
            v
        };
        assert_eq!(encode(0), [0x80]);
        assert_eq!(encode(126), [0xFE]);
        assert_eq!(encode(127), [0x40, 0x7F]);
        assert_eq!(encode(16_383), [0x20, 0x3F, 0xFF]);
        assert_eq!(read_vint(&[0x40, 0x7F], 8), Some((127, 2)));
    }
}
