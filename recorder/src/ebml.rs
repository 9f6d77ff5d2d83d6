//! The EBML (Matroska/WebM) pieces the writer ([`crate::webm`]) and the merger
//! ([`crate::remux`]) share: element IDs, variable-length integers, element writers.

/// Matroska element IDs (with their length marker bits, as written).
pub(crate) mod id {
    pub const EBML: u32 = 0x1A45_DFA3;
    pub const EBML_VERSION: u32 = 0x4286;
    pub const EBML_READ_VERSION: u32 = 0x42F7;
    pub const EBML_MAX_ID_LENGTH: u32 = 0x42F2;
    pub const EBML_MAX_SIZE_LENGTH: u32 = 0x42F3;
    pub const DOC_TYPE: u32 = 0x4282;
    pub const DOC_TYPE_VERSION: u32 = 0x4287;
    pub const DOC_TYPE_READ_VERSION: u32 = 0x4285;
    pub const SEGMENT: u32 = 0x1853_8067;
    pub const SEEK_HEAD: u32 = 0x114D_9B74;
    pub const SEEK: u32 = 0x4DBB;
    pub const SEEK_ID: u32 = 0x53AB;
    pub const SEEK_POSITION: u32 = 0x53AC;
    pub const VOID: u32 = 0xEC;
    pub const INFO: u32 = 0x1549_A966;
    pub const TIMESTAMP_SCALE: u32 = 0x2AD7B1;
    pub const DURATION: u32 = 0x4489;
    pub const DATE_UTC: u32 = 0x4461;
    pub const MUXING_APP: u32 = 0x4D80;
    pub const WRITING_APP: u32 = 0x5741;
    pub const TRACKS: u32 = 0x1654_AE6B;
    pub const TRACK_ENTRY: u32 = 0xAE;
    pub const TRACK_NUMBER: u32 = 0xD7;
    pub const TRACK_UID: u32 = 0x73C5;
    pub const TRACK_TYPE: u32 = 0x83;
    pub const FLAG_LACING: u32 = 0x9C;
    pub const CODEC_ID: u32 = 0x86;
    pub const CODEC_PRIVATE: u32 = 0x63A2;
    pub const CODEC_DELAY: u32 = 0x56AA;
    pub const SEEK_PRE_ROLL: u32 = 0x56BB;
    pub const VIDEO: u32 = 0xE0;
    pub const PIXEL_WIDTH: u32 = 0xB0;
    pub const PIXEL_HEIGHT: u32 = 0xBA;
    pub const AUDIO: u32 = 0xE1;
    pub const SAMPLING_FREQUENCY: u32 = 0xB5;
    pub const CHANNELS: u32 = 0x9F;
    pub const CLUSTER: u32 = 0x1F43_B675;
    pub const TIMESTAMP: u32 = 0xE7;
    pub const SIMPLE_BLOCK: u32 = 0xA3;
    pub const CUES: u32 = 0x1C53_BB6B;
    pub const CUE_POINT: u32 = 0xBB;
    pub const CUE_TIME: u32 = 0xB3;
    pub const CUE_TRACK_POSITIONS: u32 = 0xB7;
    pub const CUE_TRACK: u32 = 0xF7;
    pub const CUE_CLUSTER_POSITION: u32 = 0xF1;
    pub const TAGS: u32 = 0x1254_C367;
    pub const ATTACHMENTS: u32 = 0x1941_A469;
    pub const CHAPTERS: u32 = 0x1043_A770;
    pub const NAME: u32 = 0x536E;
    pub const BLOCK_GROUP: u32 = 0xA0;
}

/// Whether an element ID belongs to the Segment's top level (and so ends a Cluster of
/// unknown size).
pub(crate) fn is_top_level(element: u32) -> bool {
    matches!(
        element,
        id::CLUSTER
            | id::CUES
            | id::SEEK_HEAD
            | id::INFO
            | id::TRACKS
            | id::TAGS
            | id::ATTACHMENTS
            | id::CHAPTERS
    )
}

/// Reads a variable-length integer of at most `max` bytes: its value (marker removed) and
/// length.
pub(crate) fn read_vint(buf: &[u8], max: usize) -> Option<(u64, usize)> {
    let first = *buf.first()?;
    let len = first.leading_zeros() as usize + 1;
    let bytes = buf.get(..len).filter(|_| len <= max)?;
    let marker_free = u64::from(first) & ((1u64 << (8 - len)) - 1);
    Some((read_uint(&bytes[1..]) | marker_free << (8 * (len - 1)), len))
}

/// A big-endian unsigned integer of at most 8 bytes.
pub(crate) fn read_uint(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .take(8)
        .fold(0, |acc, b| acc << 8 | u64::from(*b))
}

/// Writes an element ID (its bytes without leading zeros).
pub(crate) fn put_id(out: &mut Vec<u8>, element: u32) {
    let skip = (element.leading_zeros() / 8) as usize;
    out.extend_from_slice(&element.to_be_bytes()[skip..]);
}

/// How many bytes the minimal size field for `size` takes.
pub(crate) fn size_len(size: u64) -> usize {
    // A length-n field holds up to 2^(7n) - 2 (all ones means unknown).
    (1..=8).find(|n| size < (1u64 << (7 * n)) - 1).unwrap_or(8)
}

/// Writes `size` as a size field of the shortest length (never all ones, the unknown size).
pub(crate) fn put_size(out: &mut Vec<u8>, size: u64) {
    let n = size_len(size);
    out.extend_from_slice(&(size | 1u64 << (7 * n)).to_be_bytes()[8 - n..]);
}

/// Writes an element with `body`.
pub(crate) fn put_bytes(out: &mut Vec<u8>, element: u32, body: &[u8]) {
    put_id(out, element);
    put_size(out, body.len() as u64);
    out.extend_from_slice(body);
}

/// Writes an unsigned-integer element in its fewest bytes (at least one).
pub(crate) fn put_uint(out: &mut Vec<u8>, element: u32, value: u64) {
    let skip = ((value.leading_zeros() / 8) as usize).min(7);
    put_bytes(out, element, &value.to_be_bytes()[skip..]);
}

/// Writes an 8-byte float element.
pub(crate) fn put_float(out: &mut Vec<u8>, element: u32, value: f64) {
    put_bytes(out, element, &value.to_be_bytes());
}
