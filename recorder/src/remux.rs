//! Merging a consult's track files into one Matroska file ("download the consult as one file").
//!
//! [`merge`] takes the single-track files that [`TrackWriter`](crate::webm::TrackWriter)
//! wrote for one recording, each with its start offset from the recording's start, and
//! returns one file holding every track, so that the consult replays in sync:
//!
//! - **Header.** DocType `webm` when every input is WebM, else `matroska` (an H.264 track,
//!   which WebM does not allow). Info: TimestampScale 1 ms, Duration = the end of the longest
//!   track (its offset plus its duration, or its last block if it has no Duration), DateUTC =
//!   the recording's start (the first input's DateUTC less its offset), MuxingApp and
//!   WritingApp `medrelay`.
//! - **Tracks.** Each input's TrackEntry is copied element by element (CodecID,
//!   CodecPrivate, Video/Audio, CodecDelay, SeekPreRoll, ...), with TrackNumber and TrackUID
//!   renumbered 1..=n in input order and Name set from [`MergeInput::name`] when given.
//! - **Clusters.** Every SimpleBlock of every input, its time shifted by the input's offset,
//!   sorted by time (ties in input order); flags and frame are copied unchanged. A Cluster
//!   starts at each keyframe of a video track (unless one starts at that very time) and at
//!   least every 5 s.
//! - **Cues.** One per video keyframe (for a consult without video, one per Cluster). The
//!   SeekHead points at Info, Tracks and Cues, and every size is known: the result is a
//!   complete, seekable file, not a live one.
//!
//! **Limits.** Sans-IO and in memory: the inputs are whole plain files (read and unsealed by
//! the caller) and the result, about the sum of their sizes, is returned at once. An input
//! must be what `TrackWriter` writes: one track, SimpleBlocks only. An input cut after a
//! complete block (a recording still running, or not yet recovered) is merged up to its
//! last complete block, as a player would read it.

use crate::ebml::{id, is_top_level, put_bytes, put_id, put_size, put_uint, read_uint, read_vint};

/// A Cluster is started at least this often (ms).
const CLUSTER_MS: u64 = 5_000;
/// Nanoseconds per millisecond, the output's TimestampScale.
const MS_NS: u64 = 1_000_000;

/// One track file to merge.
#[derive(Debug, Clone, Copy)]
pub struct MergeInput<'a> {
    /// The whole plain file, as [`TrackWriter`](crate::webm::TrackWriter) wrote it.
    pub file: &'a [u8],
    /// When the track starts, in ms from the recording's start.
    pub start_offset_ms: u64,
    /// The track's Name (e.g. the participant and kind), replacing any in the file.
    pub name: Option<&'a str>,
}

/// Why the files cannot be merged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemuxError {
    /// No input was given.
    #[error("no tracks to merge")]
    NoInputs,
    /// An input (by its index) does not start with an EBML header (DocType `webm` or
    /// `matroska`) and a Segment.
    #[error("input {0} is not a WebM/Matroska file")]
    NotWebm(usize),
    /// An input does not have exactly one track.
    #[error("input {input} has {tracks} tracks, not one")]
    NotOneTrack {
        /// The input's index.
        input: usize,
        /// How many TrackEntries it has.
        tracks: usize,
    },
    /// An input has something a `TrackWriter` file never has.
    #[error("input {input} was not written by TrackWriter: {what}")]
    NotTrackWriter {
        /// The input's index.
        input: usize,
        /// What was found.
        what: &'static str,
    },
}

/// One input, read.
struct Track<'a> {
    webm: bool,
    /// The TrackEntry's body.
    entry: &'a [u8],
    video: bool,
    /// DateUTC less the start offset (ns from 2001-01-01).
    start_date_ns: Option<i64>,
    /// When the track ends, in ms from the recording's start.
    end_ms: u64,
}

/// One SimpleBlock, in ms from the recording's start.
struct Block<'a> {
    ms: u64,
    /// The input's index.
    track: usize,
    keyframe: bool,
    /// Flags and frame, copied as they are.
    payload: &'a [u8],
}

/// Merges single-track files into one Matroska file; see the [module docs](self).
pub fn merge(inputs: &[MergeInput<'_>]) -> Result<Vec<u8>, RemuxError> {
    if inputs.is_empty() {
        return Err(RemuxError::NoInputs);
    }
    let mut blocks = Vec::new();
    let tracks = inputs
        .iter()
        .enumerate()
        .map(|(i, input)| read_track(i, input, &mut blocks))
        .collect::<Result<Vec<_>, _>>()?;
    blocks.sort_by_key(|b| (b.ms, b.track)); // stable: a track keeps its order

    // Clusters, and Cues as (time, track number, position from the first Cluster).
    let any_video = tracks.iter().any(|t| t.video);
    let (mut clusters, mut cluster, mut head) = (Vec::new(), Vec::new(), Vec::new());
    let mut cues = Vec::new();
    let mut cluster_ms = None;
    for b in &blocks {
        let number = b.track as u64 + 1;
        let video_key = b.keyframe && tracks[b.track].video;
        let due = cluster_ms.is_none_or(|c| b.ms - c >= CLUSTER_MS || (video_key && b.ms > c));
        if due {
            if !cluster.is_empty() {
                put_bytes(&mut clusters, id::CLUSTER, &cluster);
                cluster.clear();
            }
            put_uint(&mut cluster, id::TIMESTAMP, b.ms);
            cluster_ms = Some(b.ms);
            if !any_video {
                cues.push((b.ms, number, clusters.len() as u64));
            }
        }
        if video_key {
            cues.push((b.ms, number, clusters.len() as u64));
        }
        let relative = (b.ms - cluster_ms.unwrap_or(b.ms)) as i16; // < CLUSTER_MS
        head.clear();
        put_size(&mut head, number);
        head.extend_from_slice(&relative.to_be_bytes());
        put_id(&mut cluster, id::SIMPLE_BLOCK);
        put_size(&mut cluster, (head.len() + b.payload.len()) as u64);
        cluster.extend_from_slice(&head);
        cluster.extend_from_slice(b.payload);
    }
    if !cluster.is_empty() {
        put_bytes(&mut clusters, id::CLUSTER, &cluster);
    }

    let mut ebml = Vec::new();
    put_uint(&mut ebml, id::EBML_VERSION, 1);
    put_uint(&mut ebml, id::EBML_READ_VERSION, 1);
    put_uint(&mut ebml, id::EBML_MAX_ID_LENGTH, 4);
    put_uint(&mut ebml, id::EBML_MAX_SIZE_LENGTH, 8);
    let doc_type = if tracks.iter().all(|t| t.webm) {
        "webm"
    } else {
        "matroska"
    };
    put_bytes(&mut ebml, id::DOC_TYPE, doc_type.as_bytes());
    put_uint(&mut ebml, id::DOC_TYPE_VERSION, 4);
    put_uint(&mut ebml, id::DOC_TYPE_READ_VERSION, 2);

    let mut info = Vec::new();
    put_uint(&mut info, id::TIMESTAMP_SCALE, MS_NS);
    let duration_ms = tracks.iter().map(|t| t.end_ms).max().unwrap_or(0);
    put_bytes(&mut info, id::DURATION, &(duration_ms as f64).to_be_bytes());
    if let Some(date) = tracks.iter().find_map(|t| t.start_date_ns) {
        put_bytes(&mut info, id::DATE_UTC, &date.to_be_bytes());
    }
    put_bytes(&mut info, id::MUXING_APP, b"medrelay");
    put_bytes(&mut info, id::WRITING_APP, b"medrelay");
    let info = element(id::INFO, &info);

    let mut entries = Vec::new();
    for (i, (track, input)) in tracks.iter().zip(inputs).enumerate() {
        let mut entry = Vec::new();
        put_uint(&mut entry, id::TRACK_NUMBER, i as u64 + 1);
        put_uint(&mut entry, id::TRACK_UID, i as u64 + 1);
        if let Some(name) = input.name {
            put_bytes(&mut entry, id::NAME, name.as_bytes());
        }
        for c in children(track.entry) {
            let replaced = c.id == id::NAME && input.name.is_some();
            if !matches!(c.id, id::TRACK_NUMBER | id::TRACK_UID) && !replaced {
                entry.extend_from_slice(c.raw);
            }
        }
        put_bytes(&mut entries, id::TRACK_ENTRY, &entry);
    }
    let tracks_element = element(id::TRACKS, &entries);

    // Positions count from the Segment's data; the SeekHead comes first, and its length does
    // not depend on the positions (8 bytes each).
    let relative = [
        (id::INFO, 0),
        (id::TRACKS, info.len() as u64),
        (
            id::CUES,
            (info.len() + tracks_element.len() + clusters.len()) as u64,
        ),
    ];
    let relative = &relative[..if cues.is_empty() { 2 } else { 3 }];
    let seek_len = seek_head(relative, 0).len() as u64;
    let seek = seek_head(relative, seek_len);
    let first_cluster = seek_len + (info.len() + tracks_element.len()) as u64;
    let mut cue_points = Vec::new();
    for (ms, track, position) in cues {
        let mut positions = Vec::new();
        put_uint(&mut positions, id::CUE_TRACK, track);
        put_uint(
            &mut positions,
            id::CUE_CLUSTER_POSITION,
            first_cluster + position,
        );
        let mut point = Vec::new();
        put_uint(&mut point, id::CUE_TIME, ms);
        put_bytes(&mut point, id::CUE_TRACK_POSITIONS, &positions);
        put_bytes(&mut cue_points, id::CUE_POINT, &point);
    }
    let cues = if cue_points.is_empty() {
        Vec::new()
    } else {
        element(id::CUES, &cue_points)
    };

    let parts = [&seek, &info, &tracks_element, &clusters, &cues];
    let segment_len: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(segment_len + ebml.len() + 32);
    put_bytes(&mut out, id::EBML, &ebml);
    put_id(&mut out, id::SEGMENT);
    put_size(&mut out, segment_len as u64);
    for part in parts {
        out.extend_from_slice(part);
    }
    Ok(out)
}

/// Reads input `index`, appending its blocks to `blocks`.
fn read_track<'a>(
    index: usize,
    input: &MergeInput<'a>,
    blocks: &mut Vec<Block<'a>>,
) -> Result<Track<'a>, RemuxError> {
    let file = input.file;
    let not_writer = |what| RemuxError::NotTrackWriter { input: index, what };
    let (ebml, ebml_end) = header(file, 0)
        .filter(|e| e.id == id::EBML)
        .and_then(|e| Some((e.body, e.end.filter(|&end| end <= file.len())?)))
        .ok_or(RemuxError::NotWebm(index))?;
    let doc_type = children(&file[ebml..ebml_end]).find(|c| c.id == id::DOC_TYPE);
    let webm = match doc_type.map(|c| c.body) {
        Some(b"webm") => true,
        Some(b"matroska") => false,
        _ => return Err(RemuxError::NotWebm(index)),
    };
    let segment = header(file, ebml_end)
        .filter(|e| e.id == id::SEGMENT)
        .ok_or(RemuxError::NotWebm(index))?;
    let segment_end = segment.end.map_or(file.len(), |e| e.min(file.len()));

    let (mut scale, mut duration, mut date_ns) = (MS_NS, 0.0, None);
    let (mut entry, mut number, mut video) = (None, 0, false);
    let first_block = blocks.len();
    let mut pos = segment.body;
    'top: while pos < segment_end {
        let Some(e) = header(file, pos) else { break };
        if e.id == id::CLUSTER {
            if entry.is_none() {
                return Err(not_writer("a Cluster before the Tracks"));
            }
            let end = e.end.map_or(segment_end, |end| end.min(segment_end));
            let mut cluster_ms = None;
            pos = e.body;
            while pos < end {
                let Some(c) = header(file, pos).filter(|c| !is_top_level(c.id)) else {
                    continue 'top; // the next top-level element, or a torn tail
                };
                let Some(c_end) = c.end.filter(|&c_end| c_end <= end) else {
                    break 'top; // torn
                };
                let body = &file[c.body..c_end];
                match c.id {
                    id::TIMESTAMP => cluster_ms = Some(read_uint(body)),
                    id::SIMPLE_BLOCK => {
                        let Some(base) = cluster_ms else {
                            return Err(not_writer("a SimpleBlock before its Cluster's Timestamp"));
                        };
                        let Some((track, n)) =
                            read_vint(body, 8).filter(|&(_, n)| body.len() > n + 2)
                        else {
                            return Err(not_writer("a malformed SimpleBlock"));
                        };
                        if track != number {
                            return Err(not_writer("a SimpleBlock of another track"));
                        }
                        let (a, b, payload) = (body[n], body[n + 1], &body[n + 2..]);
                        let ticks = (base as i64).saturating_add(i16::from_be_bytes([a, b]).into());
                        let ms = (ticks.max(0) as u64).saturating_mul(scale) / MS_NS;
                        blocks.push(Block {
                            ms: ms.saturating_add(input.start_offset_ms),
                            track: index,
                            keyframe: payload[0] & 0x80 != 0,
                            payload,
                        });
                    }
                    id::BLOCK_GROUP => return Err(not_writer("a BlockGroup")),
                    _ => {}
                }
                pos = c_end;
            }
            continue;
        }
        let Some(end) = e.end.filter(|&end| end <= segment_end) else {
            break; // torn, or of unknown size: what follows the Clusters is not needed
        };
        let body = &file[e.body..end];
        match e.id {
            id::INFO => {
                for c in children(body) {
                    match (c.id, c.body.len()) {
                        (id::TIMESTAMP_SCALE, _) => scale = read_uint(c.body).max(1),
                        (id::DURATION, 4) => {
                            duration = f64::from(f32::from_bits(read_uint(c.body) as u32))
                        }
                        (id::DURATION, 8) => duration = f64::from_bits(read_uint(c.body)),
                        (id::DATE_UTC, 8) => date_ns = Some(read_uint(c.body) as i64),
                        _ => {}
                    }
                }
            }
            id::TRACKS => {
                let entries: Vec<_> = children(body).filter(|c| c.id == id::TRACK_ENTRY).collect();
                if entries.len() != 1 {
                    return Err(RemuxError::NotOneTrack {
                        input: index,
                        tracks: entries.len(),
                    });
                }
                for c in children(entries[0].body) {
                    match c.id {
                        id::TRACK_NUMBER => number = read_uint(c.body),
                        id::TRACK_TYPE => video = read_uint(c.body) == 1,
                        _ => {}
                    }
                }
                entry = Some(entries[0].body);
            }
            _ => {}
        }
        pos = end;
    }
    let entry = entry.ok_or(RemuxError::NotOneTrack {
        input: index,
        tracks: 0,
    })?;
    let duration_ms = (duration.max(0.0) * scale as f64 / MS_NS as f64).round() as u64;
    let last_block = blocks[first_block..].last().map_or(0, |b| b.ms);
    let offset_ns = i64::try_from(input.start_offset_ms.saturating_mul(MS_NS)).unwrap_or(i64::MAX);
    Ok(Track {
        webm,
        entry,
        video,
        start_date_ns: date_ns.map(|d: i64| d.saturating_sub(offset_ns)),
        end_ms: last_block.max(input.start_offset_ms.saturating_add(duration_ms)),
    })
}

/// An element header read from a buffer.
struct Header {
    id: u32,
    /// Where the body starts.
    body: usize,
    /// Where the body ends (maybe beyond the buffer); `None` for the unknown size.
    end: Option<usize>,
}

/// Reads the element header at `pos`; `None` past the end or for an invalid header.
fn header(buf: &[u8], pos: usize) -> Option<Header> {
    let (_, id_len) = read_vint(buf.get(pos..)?, 4)?;
    let (size, size_len) = read_vint(buf.get(pos + id_len..)?, 8)?;
    let body = pos + id_len + size_len;
    let end = if size == (1u64 << (7 * size_len)) - 1 {
        None
    } else {
        Some(usize::try_from(size).ok()?.checked_add(body)?)
    };
    Some(Header {
        id: read_uint(&buf[pos..pos + id_len]) as u32,
        body,
        end,
    })
}

/// A child element wholly inside its parent's body.
struct Child<'a> {
    id: u32,
    body: &'a [u8],
    /// The whole element, header included.
    raw: &'a [u8],
}

/// The children of a master element's body, up to the first that is invalid or does not fit.
fn children(body: &[u8]) -> impl Iterator<Item = Child<'_>> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        let h = header(body, pos)?;
        let end = h.end.filter(|&end| end <= body.len())?;
        let child = Child {
            id: h.id,
            body: &body[h.body..end],
            raw: &body[pos..end],
        };
        pos = end;
        Some(child)
    })
}

/// A SeekHead naming the top-level elements at `positions` (plus `base`), 8 bytes each.
fn seek_head(positions: &[(u32, u64)], base: u64) -> Vec<u8> {
    let mut body = Vec::new();
    for &(element, position) in positions {
        let mut seek = Vec::new();
        put_bytes(&mut seek, id::SEEK_ID, &element.to_be_bytes());
        put_bytes(
            &mut seek,
            id::SEEK_POSITION,
            &(base + position).to_be_bytes(),
        );
        put_bytes(&mut body, id::SEEK, &seek);
    }
    element(id::SEEK_HEAD, &body)
}

fn element(id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 12);
    put_bytes(&mut out, id, body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webm::fixtures::{h264_access_units, opus_packets, vp8_frames, vp8_keyframe};
    use crate::webm::{TrackSpec, TrackWriter, VideoCodec};
    use std::process::Command;

    /// A finished track file of `(ms, frame, keyframe)`.
    fn track<'a>(spec: TrackSpec, frames: impl Iterator<Item = (u64, &'a [u8], bool)>) -> Vec<u8> {
        let mut w = TrackWriter::new(spec, 1_795_000_000_000).unwrap();
        let mut file = Vec::new();
        for (ms, data, key) in frames {
            w.push(ms, data, key, &mut file).unwrap();
        }
        w.finish().apply(&mut file);
        file
    }

    /// The first `n` frames of the 25 fps VP8 fixture.
    fn vp8(n: usize) -> Vec<u8> {
        let spec = TrackSpec::Video {
            codec: VideoCodec::Vp8,
            width: None,
            height: None,
        };
        let frames = vp8_frames()[..n].iter().enumerate();
        track(
            spec,
            frames.map(|(i, f)| (i as u64 * 40, &f[..], vp8_keyframe(f))),
        )
    }

    /// The 3 s Opus fixture.
    fn opus() -> Vec<u8> {
        let spec = TrackSpec::Opus {
            channels: 1,
            input_sample_rate: 48_000,
        };
        let packets = opus_packets().iter().enumerate();
        track(spec, packets.map(|(i, p)| (i as u64 * 20, &p[..], true)))
    }

    /// The 3 s H.264 fixture, as length-prefixed access units.
    fn h264() -> Vec<u8> {
        let units: Vec<(Vec<u8>, bool)> = h264_access_units()
            .iter()
            .map(|nals| {
                let key = nals.iter().any(|n| n[0] & 0x1F == 5);
                let au = nals.iter().flat_map(|n| {
                    (n.len() as u32)
                        .to_be_bytes()
                        .into_iter()
                        .chain(n.iter().copied())
                });
                (au.collect(), key)
            })
            .collect();
        let spec = TrackSpec::Video {
            codec: VideoCodec::H264,
            width: None,
            height: None,
        };
        let frames = units.iter().enumerate();
        track(
            spec,
            frames.map(|(i, (au, key))| (i as u64 * 40, &au[..], *key)),
        )
    }

    fn input<'a>(file: &'a [u8], start_offset_ms: u64, name: Option<&'a str>) -> MergeInput<'a> {
        MergeInput {
            file,
            start_offset_ms,
            name,
        }
    }

    /// ffprobe's JSON of a merged file, and ffmpeg's decoding errors.
    fn probe(file: &[u8], ext: &str) -> (serde_json::Value, String) {
        let tmp = tempfile::Builder::new()
            .suffix(&format!(".{ext}"))
            .tempfile()
            .unwrap();
        std::fs::write(tmp.path(), file).unwrap();
        let run = |program: &str, args: &[&str]| {
            let out = Command::new(program)
                .args(args)
                .arg(tmp.path())
                .args(if program == "ffmpeg" {
                    &["-f", "null", "-"][..]
                } else {
                    &[]
                })
                .output()
                .unwrap_or_else(|e| panic!("{program} must be installed: {e}"));
            let err = String::from_utf8_lossy(&out.stderr).to_string();
            assert!(out.status.success(), "{program} failed: {err}");
            (out.stdout, err)
        };
        let (json, _) = run(
            "ffprobe",
            &[
                "-v",
                "error",
                "-show_entries",
                "stream=index,codec_name,start_time:stream_tags=title:format=duration",
                "-of",
                "json",
            ],
        );
        let (_, errors) = run("ffmpeg", &["-v", "error", "-nostdin", "-i"]);
        (serde_json::from_slice(&json).unwrap(), errors)
    }

    fn seconds(v: &serde_json::Value) -> f64 {
        v.as_str().unwrap().parse().unwrap()
    }

    fn doc_type(file: &[u8]) -> String {
        let ebml = children(file).next().unwrap();
        let doc_type = children(ebml.body).find(|c| c.id == id::DOC_TYPE).unwrap();
        String::from_utf8(doc_type.body.to_vec()).unwrap()
    }

    #[test]
    fn merged_consult_plays_its_tracks_in_sync() {
        let (camera, mic, late) = (vp8(75), opus(), vp8(50));
        let merged = merge(&[
            input(&camera, 0, Some("alice camera")),
            input(&mic, 0, Some("alice microphone")),
            input(&late, 1500, Some("bob camera")),
        ])
        .unwrap();
        assert_eq!(doc_type(&merged), "webm");
        let (probe, errors) = probe(&merged, "webm");
        assert_eq!(errors, "");
        let streams = probe["streams"].as_array().unwrap();
        let codecs: Vec<_> = streams.iter().map(|s| s["codec_name"].as_str()).collect();
        assert_eq!(codecs, [Some("vp8"), Some("opus"), Some("vp8")], "{probe}");
        assert_eq!(streams[2]["tags"]["title"], "bob camera", "{probe}");
        assert!(seconds(&streams[0]["start_time"]).abs() < 0.1, "{probe}");
        assert!(
            (seconds(&streams[2]["start_time"]) - 1.5).abs() < 0.1,
            "{probe}"
        );
        assert!(
            (seconds(&probe["format"]["duration"]) - 3.5).abs() < 0.2,
            "{probe}"
        );
    }

    #[test]
    fn an_h264_track_makes_it_matroska() {
        let (camera, mic) = (h264(), opus());
        let merged = merge(&[input(&camera, 0, None), input(&mic, 500, None)]).unwrap();
        assert_eq!(doc_type(&merged), "matroska");
        let (probe, errors) = probe(&merged, "mkv");
        assert_eq!(errors, "");
        let codecs: Vec<_> = probe["streams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["codec_name"].as_str())
            .collect();
        assert_eq!(codecs, [Some("h264"), Some("opus")], "{probe}");
        assert!(
            (seconds(&probe["format"]["duration"]) - 3.5).abs() < 0.2,
            "{probe}"
        );
    }

    #[test]
    fn clusters_start_at_video_keyframes_and_at_least_every_five_seconds() {
        let spec = TrackSpec::Video {
            codec: VideoCodec::Vp9,
            width: Some(640),
            height: Some(480),
        };
        let data = [0x42u8; 30];
        // 12 s at 10 fps, keyframes at 0 and 6 s; audio from 1 s: Clusters at 0, 5, 6, 11 s.
        let video = track(spec, (0..120u64).map(|i| (i * 100, &data[..], i % 60 == 0)));
        let audio_spec = TrackSpec::Opus {
            channels: 1,
            input_sample_rate: 48_000,
        };
        let audio = track(audio_spec, (0..500u64).map(|i| (i * 20, &data[..], true)));
        let merged = merge(&[input(&video, 0, None), input(&audio, 1000, None)]).unwrap();
        let (clusters, cues) = clusters_and_cues(&merged);
        let times: Vec<_> = clusters.iter().map(|c| c.1).collect();
        assert_eq!(times, [0, 5000, 6000, 11_000]);
        // One cue per video keyframe, at the Cluster it starts.
        let (at_0, at_6) = (clusters[0].0, clusters[2].0);
        assert_eq!(cues, [(0, 1, at_0), (6000, 1, at_6)]);
        // Audio only: one cue per Cluster (every 5 s).
        let merged = merge(&[input(&audio, 1000, None)]).unwrap();
        let (clusters, cues) = clusters_and_cues(&merged);
        let expected: Vec<_> = clusters.iter().map(|&(at, ms)| (ms, 1, at)).collect();
        assert_eq!((clusters.len(), cues), (2, expected));
    }

    /// Clusters as (position, time) and Cues as (time, track, position).
    type Layout = (Vec<(u64, u64)>, Vec<(u64, u64, u64)>);

    /// A merged file's Clusters and Cues.
    fn clusters_and_cues(file: &[u8]) -> Layout {
        let top: Vec<_> = children(file).collect();
        assert_eq!(top.len(), 2, "EBML header and Segment");
        let (mut clusters, mut cues) = (Vec::new(), Vec::new());
        let segment = top[1].body;
        for e in children(segment) {
            let position = (e.raw.as_ptr() as usize - segment.as_ptr() as usize) as u64;
            let fields = |body| children(body).map(|c| (c.id, c)).collect::<Vec<_>>();
            match e.id {
                id::CLUSTER => {
                    let (timestamp, c) = &fields(e.body)[0];
                    assert_eq!(*timestamp, id::TIMESTAMP);
                    clusters.push((position, read_uint(c.body)));
                }
                id::CUES => {
                    for point in children(e.body) {
                        let point = fields(point.body);
                        let track = fields(point[1].1.body);
                        let value = |f: &(u32, Child)| read_uint(f.1.body);
                        cues.push((value(&point[0]), value(&track[0]), value(&track[1])));
                    }
                }
                _ => {}
            }
        }
        (clusters, cues)
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        assert_eq!(merge(&[]), Err(RemuxError::NoInputs));
        let camera = vp8(25);
        let garbage = input(b"RIFF....WAVEfmt ", 0, None);
        assert_eq!(merge(&[garbage]), Err(RemuxError::NotWebm(0)));
        assert_eq!(
            merge(&[input(&camera, 0, None), garbage]),
            Err(RemuxError::NotWebm(1))
        );
        let two = merge(&[input(&camera, 0, None), input(&camera, 0, None)]).unwrap();
        assert_eq!(
            merge(&[input(&two, 0, None)]),
            Err(RemuxError::NotOneTrack {
                input: 0,
                tracks: 2
            })
        );
    }

    #[test]
    fn cut_or_damaged_inputs_never_panic() {
        let camera = vp8(10);
        for n in 0..camera.len() {
            let _ = merge(&[input(&camera[..n], 0, None)]);
        }
        let mut damaged = camera.clone();
        for i in (0..damaged.len()).step_by(7) {
            damaged[i] ^= 0x5A;
            let _ = merge(&[input(&damaged, u64::MAX, None)]);
        }
        // Cut inside a block near the end: merged up to the block before.
        let cut = merge(&[input(&camera[..camera.len() - 200], 0, None)]);
        assert!(cut.is_ok(), "{cut:?}");
    }
}
