//! The media every publisher sends: a VP8 video clip and an Opus audio clip, encoded by
//! ffmpeg when the run starts, packetized once into RTP payloads and looped.
//!
//! Every payload of the clip is also entered in a [`Fingerprints`] table, so that a
//! subscriber can tell which packet of the clip it received without any marker in the
//! packet: the SFU under test forwards payloads untouched, whatever it does to headers.

use bytes::Bytes;
use rtc::media::io::ivf_reader::IVFReader;
use rtc::media::io::ogg_reader::OggReader;
use rtc::rtp::codec::opus::OpusPayloader;
use rtc::rtp::codec::vp8::Vp8Payloader;
use rtc::rtp::packetizer::Payloader;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Largest RTP payload the publishers send (leaves room for headers and SRTP under 1,280).
const MTU: usize = 1_150;

/// Why the clip could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    /// ffmpeg could not be started or failed.
    #[error("ffmpeg failed to make the clip: {0}")]
    Ffmpeg(String),
    /// The encoded file could not be read back.
    #[error("reading the encoded clip {path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// What the clip is made of.
#[derive(Debug, Clone, Copy)]
pub struct ClipSpec {
    /// Video width and height in pixels.
    pub width: u32,
    /// Video height in pixels.
    pub height: u32,
    /// Frames per second.
    pub fps: u32,
    /// Target video bitrate in kbit/s.
    pub video_kbps: u32,
    /// Clip length; the publishers loop it.
    pub seconds: u32,
}

impl Default for ClipSpec {
    /// 720p at 30 frames per second and 1.5 Mbit/s, 10 seconds.
    fn default() -> Self {
        Self {
            width: 1280,
            height: 720,
            fps: 30,
            video_kbps: 1_500,
            seconds: 10,
        }
    }
}

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Opus, 20 ms frames.
    Audio,
    /// VP8.
    Video,
}

/// One encoded frame split into RTP payloads.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The frame's payloads, in order; the last one carries the marker bit.
    pub payloads: Vec<Bytes>,
    /// Index of the frame's first payload among all payloads of its track.
    pub first_packet: u32,
}

/// One track of the clip.
#[derive(Debug, Clone)]
pub struct ClipTrack {
    /// Audio or video.
    pub kind: Kind,
    /// The frames, in order.
    pub frames: Vec<Frame>,
    /// Time between frames.
    pub frame_interval: Duration,
    /// RTP timestamp step between frames.
    pub timestamp_step: u32,
    /// Payloads in all frames.
    pub packets: u32,
}

/// The clip: both tracks and the fingerprint of every payload.
#[derive(Debug)]
pub struct Clip {
    /// VP8 video.
    pub video: ClipTrack,
    /// Opus audio.
    pub audio: ClipTrack,
    /// Payload fingerprints.
    pub fingerprints: Fingerprints,
}

/// Which packet of the clip a payload is.
#[derive(Debug, Default)]
pub struct Fingerprints {
    map: HashMap<u64, (Kind, u32)>,
    ambiguous: usize,
}

impl Fingerprints {
    /// The fingerprint of a payload: its length and its last 32 bytes (entropy-coded data,
    /// unique within a clip in practice; payloads that are not are left out).
    pub fn of(payload: &[u8]) -> u64 {
        let mut hasher = DefaultHasher::new();
        payload.len().hash(&mut hasher);
        payload[payload.len().saturating_sub(32)..].hash(&mut hasher);
        hasher.finish()
    }

    fn insert(&mut self, payload: &[u8], kind: Kind, index: u32) {
        match self.map.entry(Self::of(payload)) {
            Entry::Vacant(v) => {
                v.insert((kind, index));
            }
            Entry::Occupied(o) => {
                // Two packets alike: neither can be timed.
                o.remove();
                self.ambiguous += 1;
            }
        }
    }

    /// The track kind and packet index of a received payload, if it is a known one.
    pub fn lookup(&self, payload: &[u8]) -> Option<(Kind, u32)> {
        self.map.get(&Self::of(payload)).copied()
    }

    /// Payloads left out because another payload had the same fingerprint.
    pub fn ambiguous(&self) -> usize {
        self.ambiguous
    }
}

impl Clip {
    /// Encodes the clip into `dir` with ffmpeg (unless it is there already) and loads it.
    pub fn make(dir: &Path, spec: ClipSpec) -> Result<Self, ClipError> {
        let video_path = dir.join(format!(
            "clip-{}x{}-{}fps-{}k-{}s.ivf",
            spec.width, spec.height, spec.fps, spec.video_kbps, spec.seconds
        ));
        let audio_path = dir.join(format!("clip-opus-{}s.ogg", spec.seconds));
        if !video_path.exists() {
            let kbps = format!("{}k", spec.video_kbps);
            ffmpeg(&[
                "-f",
                "lavfi",
                "-i",
                &format!(
                    "testsrc2=size={}x{}:rate={}",
                    spec.width, spec.height, spec.fps
                ),
                "-t",
                &spec.seconds.to_string(),
                "-c:v",
                "libvpx",
                "-b:v",
                &kbps,
                "-minrate",
                &kbps,
                "-maxrate",
                &kbps,
                "-g",
                &(spec.fps * 3).to_string(),
                "-deadline",
                "realtime",
                "-cpu-used",
                "8",
                "-auto-alt-ref",
                "0",
                "-lag-in-frames",
                "0",
                "-f",
                "ivf",
                &video_path.to_string_lossy(),
            ])?;
        }
        if !audio_path.exists() {
            ffmpeg(&[
                "-f",
                "lavfi",
                "-i",
                "anoisesrc=color=pink:amplitude=0.2:sample_rate=48000",
                "-t",
                &spec.seconds.to_string(),
                "-c:a",
                "libopus",
                "-b:a",
                "48k",
                "-frame_duration",
                "20",
                // One 20 ms Opus packet per Ogg page.
                "-page_duration",
                "20000",
                &audio_path.to_string_lossy(),
            ])?;
        }
        let mut fingerprints = Fingerprints::default();
        let video = read_ivf(&video_path, spec.fps, &mut fingerprints)?;
        let audio = read_ogg(&audio_path, &mut fingerprints)?;
        Ok(Self {
            video,
            audio,
            fingerprints,
        })
    }

    /// The clip's track of `kind`.
    pub fn track(&self, kind: Kind) -> &ClipTrack {
        match kind {
            Kind::Audio => &self.audio,
            Kind::Video => &self.video,
        }
    }
}

fn ffmpeg(args: &[&str]) -> Result<(), ClipError> {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .output()
        .map_err(|e| ClipError::Ffmpeg(format!("starting ffmpeg: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ClipError::Ffmpeg(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }
}

fn read_error(path: &Path, e: impl std::fmt::Display) -> ClipError {
    ClipError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Splits frames into payloads and records each payload's fingerprint.
fn packetize(
    kind: Kind,
    encoded: Vec<Bytes>,
    payloader: &mut dyn Payloader,
    fingerprints: &mut Fingerprints,
) -> Result<(Vec<Frame>, u32), String> {
    let mut frames = Vec::with_capacity(encoded.len());
    let mut packets = 0u32;
    for data in encoded {
        let payloads = payloader.payload(MTU, &data).map_err(|e| e.to_string())?;
        for (i, p) in payloads.iter().enumerate() {
            fingerprints.insert(p, kind, packets + i as u32);
        }
        let first_packet = packets;
        packets += payloads.len() as u32;
        frames.push(Frame {
            payloads,
            first_packet,
        });
    }
    Ok((frames, packets))
}

fn read_ivf(
    path: &Path,
    fps: u32,
    fingerprints: &mut Fingerprints,
) -> Result<ClipTrack, ClipError> {
    let file = std::fs::File::open(path).map_err(|e| read_error(path, e))?;
    let (mut reader, _header) =
        IVFReader::new(std::io::BufReader::new(file)).map_err(|e| read_error(path, e))?;
    let mut encoded = Vec::new();
    while let Ok((frame, _)) = reader.parse_next_frame() {
        encoded.push(frame.freeze());
    }
    if encoded.is_empty() {
        return Err(read_error(path, "no frames"));
    }
    let mut payloader = Vp8Payloader::default();
    payloader.enable_picture_id = true;
    let (frames, packets) = packetize(Kind::Video, encoded, &mut payloader, fingerprints)
        .map_err(|e| read_error(path, e))?;
    Ok(ClipTrack {
        kind: Kind::Video,
        frames,
        frame_interval: Duration::from_secs(1) / fps,
        timestamp_step: 90_000 / fps,
        packets,
    })
}

fn read_ogg(path: &Path, fingerprints: &mut Fingerprints) -> Result<ClipTrack, ClipError> {
    let file = std::fs::File::open(path).map_err(|e| read_error(path, e))?;
    let (mut reader, _header) =
        OggReader::new(std::io::BufReader::new(file), true).map_err(|e| read_error(path, e))?;
    let mut encoded = Vec::new();
    while let Ok((page, header)) = reader.parse_next_page() {
        // Skip the OpusTags header page.
        if header.opus_header_type(&page).is_none() && !page.is_empty() {
            encoded.push(page.freeze());
        }
    }
    if encoded.is_empty() {
        return Err(read_error(path, "no Opus packets"));
    }
    let (frames, packets) = packetize(Kind::Audio, encoded, &mut OpusPayloader, fingerprints)
        .map_err(|e| read_error(path, e))?;
    Ok(ClipTrack {
        kind: Kind::Audio,
        frames,
        frame_interval: Duration::from_millis(20),
        timestamp_step: 960,
        packets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clip_made_by_ffmpeg_is_paced_and_every_payload_found_again() {
        let dir = std::env::temp_dir().join(format!("loadgen-clip-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let spec = ClipSpec {
            width: 320,
            height: 240,
            fps: 30,
            video_kbps: 300,
            seconds: 2,
        };
        let clip = Clip::make(&dir, spec).expect("ffmpeg makes the clip");
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(clip.video.frames.len(), 60);
        assert_eq!(clip.video.timestamp_step, 3_000);
        // 20 ms Opus packets, one per Ogg page (the encoder's pre-skip may add one).
        assert!((100..=101).contains(&clip.audio.frames.len()));
        for track in [&clip.video, &clip.audio] {
            let mut index = 0;
            for frame in &track.frames {
                assert_eq!(frame.first_packet, index);
                for payload in &frame.payloads {
                    assert!(payload.len() <= MTU);
                    if let Some(found) = clip.fingerprints.lookup(payload) {
                        assert_eq!(found, (track.kind, index));
                    }
                    index += 1;
                }
            }
            assert_eq!(index, track.packets);
        }
        // Almost every payload can be timed.
        let total = (clip.video.packets + clip.audio.packets) as usize;
        assert!(
            clip.fingerprints.ambiguous() * 100 < total,
            "{} ambiguous",
            clip.fingerprints.ambiguous()
        );
        assert_eq!(clip.fingerprints.lookup(b"not in the clip"), None);
    }
}
