//! Consult recording under load (issue 5): a real [`Recorder`] records 50 concurrent VP8
//! tracks of about 1.5 Mbit/s each, fed in real time, and the bench prints the recorder
//! thread's CPU per recorded megabit.
//!
//! What it does:
//!
//! - Encodes a short clip with ffmpeg (`testsrc2` 1280×720 at 30 fps, libvpx VP8, 1.5 Mbit/s
//!   CBR without undershoot, realtime mode), parses its IVF frames and packetizes them once per RFC 7741: a 4-byte
//!   payload descriptor (X, S on a frame's first packet, a 15-bit picture id) and at most
//!   1,196 bytes of the frame, so payloads are at most 1,200 bytes; the marker bit on a
//!   frame's last packet.
//! - Starts the product's [`Recorder`] on a temporary data directory on the real disk (next
//!   to the build, not `/tmp`), with a fresh random master key, starts a recording and
//!   announces the tracks ([`MediaInput::Started`], `video/VP8`).
//! - A feeder thread (`rec-feeder`) delivers the packets through [`MediaSender::deliver`],
//!   exactly as the SFU's tap does: each track at 30 frames/s in real time (90 kHz RTP
//!   timestamps, its own sequence numbers), the tracks' frame times spread evenly over the
//!   33 ms frame period, the clip looped. Payloads are shared (`Bytes`), as the tap shares
//!   them with the forwarded copies.
//! - Measures, over the measured period after a warm-up: the CPU time (utime + stime from
//!   `/proc/self/task/*/stat`, and the on-CPU nanoseconds from `schedstat`) of the thread
//!   named `recorder` and of the feeder, the payload megabits delivered, the recorder's
//!   counters ([`recorder::consult::RecorderStats`]: bytes written, frames, drops, failed
//!   tracks), and the machine's CPU from `/proc/stat` (what other work on the shared machine
//!   took).
//! - Stops the recording (timed: every file completed, synced, indexed), then decrypts every
//!   sealed track file with [`SealedReader`], checks with `ffprobe` that each is a VP8 WebM
//!   with as many frames as were fed, and decodes one fully with `ffmpeg` (no error allowed).
//!
//! Run: `cargo bench -p recorder --bench recording_load [-- --tracks 50 --seconds 20
//! --warmup 3 --kbps 1500 --clip-seconds 10]`. Exits with 1 if a check fails or a packet was
//! dropped.

use bytes::Bytes;
use recorder::consult::{
    MediaInput, MediaSender, Present, Recorder, RecorderConfig, TapCodec, TappedPacket, TappedTrack,
};
use recorder::index::TrackKind;
use recorder::sealed::{MasterKey, SealedReader};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The RTP payload type announced for the tracks.
const VP8_PT: u8 = 96;
/// Largest RTP payload (descriptor included).
const MAX_PAYLOAD: usize = 1200;
/// The VP8 payload descriptor used: X, I with a 15-bit picture id.
const DESCRIPTOR_LEN: usize = 4;
/// Frames per second of the clip and of every track.
const FPS: u32 = 30;

/// Command-line options.
struct Options {
    tracks: usize,
    seconds: u64,
    warmup: u64,
    kbps: u32,
    clip_seconds: u32,
}

impl Options {
    fn parse() -> Options {
        let mut o = Options {
            tracks: 50,
            seconds: 20,
            warmup: 3,
            kbps: 1500,
            clip_seconds: 10,
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let mut value = |name: &str| -> u64 {
                args.next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{name} needs a number"))
            };
            match a.as_str() {
                "--tracks" => o.tracks = value("--tracks") as usize,
                "--seconds" => o.seconds = value("--seconds"),
                "--warmup" => o.warmup = value("--warmup"),
                "--kbps" => o.kbps = value("--kbps") as u32,
                "--clip-seconds" => o.clip_seconds = value("--clip-seconds") as u32,
                // `cargo bench` passes `--bench`; ignore it and anything unknown.
                _ => {}
            }
        }
        o
    }
}

/// One RTP packet of the clip, shared by every track.
#[derive(Clone)]
struct ClipPacket {
    payload: Bytes,
    marker: bool,
}

/// The clip as RTP packets, frame by frame.
struct Clip {
    frames: Vec<Vec<ClipPacket>>,
    /// Encoded bytes (the VP8 frames, without RTP).
    encoded_bytes: u64,
    keyframes: usize,
}

/// Encodes the test clip with ffmpeg into `dir` and returns the IVF path.
fn encode_clip(dir: &Path, o: &Options) -> PathBuf {
    let out = dir.join("clip.ivf");
    let rate = format!("{}k", o.kbps);
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size=1280x720:rate={FPS}"))
        .args(["-t", &o.clip_seconds.to_string()])
        .args(["-c:v", "libvpx", "-b:v", &rate, "-minrate", &rate])
        .args([
            "-maxrate",
            &rate,
            "-undershoot-pct",
            "0",
            "-deadline",
            "realtime",
        ])
        .args(["-cpu-used", "8"])
        .args(["-g", "90", "-f", "ivf"])
        .arg(&out)
        .status()
        .expect("ffmpeg runs (is it installed?)");
    assert!(status.success(), "ffmpeg failed to encode the clip");
    out
}

/// The frames of an IVF file.
fn ivf_frames(data: &[u8]) -> Vec<&[u8]> {
    assert!(data.len() >= 32 && &data[..4] == b"DKIF", "not an IVF file");
    let header = u16::from_le_bytes([data[6], data[7]]) as usize;
    let mut at = header;
    let mut frames = Vec::new();
    while at + 12 <= data.len() {
        let size = u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        at += 12;
        if at + size > data.len() {
            break;
        }
        frames.push(&data[at..at + size]);
        at += size;
    }
    frames
}

/// Packetizes VP8 frames per RFC 7741.
fn packetize(frames: &[&[u8]]) -> Clip {
    let mut out = Vec::with_capacity(frames.len());
    let mut encoded_bytes = 0;
    let mut keyframes = 0;
    for (i, frame) in frames.iter().enumerate() {
        encoded_bytes += frame.len() as u64;
        if frame.first().is_some_and(|b| b & 0x01 == 0) {
            keyframes += 1;
        }
        let picture_id = (i as u16) & 0x7fff;
        let chunks: Vec<&[u8]> = frame.chunks(MAX_PAYLOAD - DESCRIPTOR_LEN).collect();
        let last = chunks.len() - 1;
        let packets = chunks
            .iter()
            .enumerate()
            .map(|(j, chunk)| {
                let mut p = Vec::with_capacity(DESCRIPTOR_LEN + chunk.len());
                // X=1, S on the first packet, PID 0; I=1; M=1 + 15-bit picture id.
                p.push(0x80 | if j == 0 { 0x10 } else { 0 });
                p.push(0x80);
                p.push(0x80 | (picture_id >> 8) as u8);
                p.push(picture_id as u8);
                p.extend_from_slice(chunk);
                ClipPacket {
                    payload: Bytes::from(p),
                    marker: j == last,
                }
            })
            .collect();
        out.push(packets);
    }
    Clip {
        frames: out,
        encoded_bytes,
        keyframes,
    }
}

/// What the feeder has delivered so far.
#[derive(Default)]
struct Fed {
    packets: AtomicU64,
    payload_bytes: AtomicU64,
    /// Frames of the track with the fewest (all tracks get the same count at the end).
    frames_per_track: AtomicU64,
    /// Largest lateness of a frame time behind its schedule, µs.
    max_late_us: AtomicU64,
}

/// Delivers the clip to every track in real time until `stop`.
fn feed(clip: &Clip, media: &MediaSender, tracks: usize, fed: &Fed, stop: &AtomicBool) {
    let frame = Duration::from_secs(1) / FPS;
    let slot = frame / tracks as u32;
    let mut seq = vec![0u16; tracks];
    let start = Instant::now();
    let mut event: u64 = 0;
    loop {
        let due = start + slot * event as u32;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let late = due.elapsed().as_micros() as u64;
        fed.max_late_us.fetch_max(late, Ordering::Relaxed);
        let track = (event % tracks as u64) as usize;
        let k = event / tracks as u64;
        if track == 0 && stop.load(Ordering::Relaxed) {
            // Stop only between whole rounds, so every track has the same frames.
            break;
        }
        let packets = &clip.frames[(k as usize) % clip.frames.len()];
        let timestamp = (k as u32).wrapping_mul(90_000 / FPS);
        let mut bytes = 0;
        for p in packets {
            media.deliver(MediaInput::Packet(TappedPacket {
                tap: track as u64 + 1,
                payload_type: VP8_PT,
                sequence: seq[track],
                timestamp,
                marker: p.marker,
                payload: p.payload.clone(),
            }));
            seq[track] = seq[track].wrapping_add(1);
            bytes += p.payload.len() as u64;
        }
        fed.packets
            .fetch_add(packets.len() as u64, Ordering::Relaxed);
        fed.payload_bytes.fetch_add(bytes, Ordering::Relaxed);
        if track == tracks - 1 {
            fed.frames_per_track.store(k + 1, Ordering::Relaxed);
        }
        event += 1;
    }
}

// ----- CPU accounting ---------------------------------------------------------------------

/// Per thread: (name, utime + stime ticks, on-CPU ns from schedstat).
fn thread_cpu() -> HashMap<u32, (String, u64, u64)> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The name is in parentheses and may contain spaces; fields follow the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_string();
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        // After the name: state is field 3 (index 0), utime 14, stime 15.
        let ticks = fields
            .get(11)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            + fields
                .get(12)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        let ns = std::fs::read_to_string(entry.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
            .unwrap_or(0);
        out.insert(tid, (name, ticks, ns));
    }
    out
}

/// Machine-wide busy ticks from `/proc/stat` (user, nice, system, irq, softirq, steal).
fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let f = |i: usize| v.get(i).copied().unwrap_or(0);
    f(0) + f(1) + f(2) + f(5) + f(6) + f(7)
}

/// utime + stime of the whole process, ticks.
fn process_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let Some(close) = stat.rfind(')') else {
        return 0;
    };
    let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    fields
        .get(11)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// A CPU and progress snapshot.
struct Snap {
    at: Instant,
    threads: HashMap<u32, (String, u64, u64)>,
    process: u64,
    machine: u64,
    fed_bytes: u64,
    fed_packets: u64,
    written: u64,
    frames: u64,
    dropped: u64,
}

impl Snap {
    fn take(recorder: &Recorder, fed: &Fed) -> Snap {
        let s = recorder.stats();
        Snap {
            at: Instant::now(),
            threads: thread_cpu(),
            process: process_ticks(),
            machine: machine_busy_ticks(),
            fed_bytes: fed.payload_bytes.load(Ordering::Relaxed),
            fed_packets: fed.packets.load(Ordering::Relaxed),
            written: s.bytes.load(Ordering::Relaxed),
            frames: s.frames.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
        }
    }

    /// (ticks, ns) used by the threads named `name` since `earlier`.
    fn thread_delta(&self, earlier: &Snap, name: &str) -> (u64, u64) {
        let mut ticks = 0;
        let mut ns = 0;
        for (tid, (n, t, s)) in &self.threads {
            if n != name {
                continue;
            }
            let (bt, bs) = earlier
                .threads
                .get(tid)
                .map_or((0, 0), |(_, t, s)| (*t, *s));
            ticks += t.saturating_sub(bt);
            ns += s.saturating_sub(bs);
        }
        (ticks, ns)
    }
}

/// The figures of one measured period.
struct Figures {
    secs: f64,
    recorder_cores_ticks: f64,
    recorder_cores_ns: f64,
    feeder_cores: f64,
    process_cores: f64,
    machine_cores: f64,
    fed_mbit: f64,
    fed_packets: u64,
    written_bytes: u64,
    frames: u64,
    dropped: u64,
}

fn figures(a: &Snap, b: &Snap, tck: f64) -> Figures {
    let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
    let (rt, rns) = b.thread_delta(a, "recorder");
    let (_, fns) = b.thread_delta(a, "rec-feeder");
    Figures {
        secs,
        recorder_cores_ticks: rt as f64 / tck / secs,
        recorder_cores_ns: rns as f64 / 1e9 / secs,
        feeder_cores: fns as f64 / 1e9 / secs,
        process_cores: b.process.saturating_sub(a.process) as f64 / tck / secs,
        machine_cores: b.machine.saturating_sub(a.machine) as f64 / tck / secs,
        fed_mbit: (b.fed_bytes - a.fed_bytes) as f64 * 8.0 / 1e6,
        fed_packets: b.fed_packets - a.fed_packets,
        written_bytes: b.written - a.written,
        frames: b.frames - a.frames,
        dropped: b.dropped - a.dropped,
    }
}

// ----- verification -----------------------------------------------------------------------

/// Runs ffprobe on `path`: (codec, width, height, packets).
fn probe(path: &Path) -> Result<(String, u32, u32, u64), String> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-count_packets"])
        .args([
            "-show_entries",
            "stream=codec_name,width,height,nb_read_packets",
        ])
        .args(["-of", "csv=p=0"])
        .arg(path)
        .output()
        .map_err(|e| format!("ffprobe: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || !stderr.trim().is_empty() {
        return Err(format!("ffprobe: {}", stderr.trim()));
    }
    let f: Vec<&str> = stdout.trim().split(',').collect();
    let [codec, w, h, n] = f[..] else {
        return Err(format!("ffprobe said {stdout:?}"));
    };
    Ok((
        codec.to_string(),
        w.parse().unwrap_or(0),
        h.parse().unwrap_or(0),
        n.parse().unwrap_or(0),
    ))
}

/// Decodes `path` fully with ffmpeg: Ok if no error was reported.
fn decode(path: &Path) -> Result<(), String> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-xerror", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .map_err(|e| format!("ffmpeg: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() && stderr.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("ffmpeg decode: {}", stderr.trim()))
    }
}

/// Decrypts every track file of the recording and checks it; returns the problems found.
fn verify(
    rec_dir: &Path,
    key: &MasterKey,
    plain_dir: &Path,
    tracks: usize,
    frames: u64,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(rec_dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    if files.len() != tracks {
        problems.push(format!("{} track files, expected {tracks}", files.len()));
    }
    let mut sealed_total = 0;
    let mut plain_total = 0;
    for (i, f) in files.iter().enumerate() {
        sealed_total += std::fs::metadata(f).map_or(0, |m| m.len());
        let mut plain = Vec::new();
        if let Err(e) = SealedReader::open(f, key)
            .map_err(|e| e.to_string())
            .and_then(|mut r| r.read_to_end(&mut plain).map_err(|e| e.to_string()))
        {
            problems.push(format!("{}: cannot decrypt: {e}", f.display()));
            continue;
        }
        plain_total += plain.len() as u64;
        let out = plain_dir.join(format!("track{i}.webm"));
        std::fs::write(&out, &plain).expect("write the decrypted file");
        match probe(&out) {
            Ok((codec, w, h, n)) => {
                if codec != "vp8" || (w, h) != (1280, 720) || n != frames {
                    problems.push(format!(
                        "{}: {codec} {w}x{h}, {n} frames, expected vp8 1280x720, {frames}",
                        f.display()
                    ));
                }
            }
            Err(e) => problems.push(format!("{}: {e}", f.display())),
        }
        if i == 0
            && let Err(e) = decode(&out)
        {
            problems.push(format!("{}: {e}", f.display()));
        }
        let _ = std::fs::remove_file(&out);
    }
    println!(
        "verified {} files: {:.1} MB sealed, {:.1} MB plain ({:.2} % sealing overhead); \
         every file probed (codec, size, frame count), track 0 decoded fully",
        files.len(),
        sealed_total as f64 / 1e6,
        plain_total as f64 / 1e6,
        (sealed_total as f64 / plain_total.max(1) as f64 - 1.0) * 100.0
    );
    problems
}

fn main() {
    let o = Options::parse();
    let tck = clock_ticks_per_sec();
    // The data directory on the real disk, in the workspace's build output (not a tmpfs).
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    std::fs::create_dir_all(&base).expect("the target directory");
    let tmp = tempfile::Builder::new()
        .prefix("recording-load-")
        .tempdir_in(&base)
        .expect("a temporary directory");
    let clip_dir = tmp.path().join("clip");
    std::fs::create_dir_all(&clip_dir).unwrap();

    let t = Instant::now();
    let ivf = std::fs::read(encode_clip(&clip_dir, &o)).expect("read the clip");
    let frames = ivf_frames(&ivf);
    let clip = packetize(&frames);
    let clip_packets: usize = clip.frames.iter().map(Vec::len).sum();
    println!(
        "clip: {} frames ({} keyframes) in {:.1} s, {:.2} Mbit/s encoded, {} RTP packets \
         ({:.1} per frame); encoded in {:.1} s",
        clip.frames.len(),
        clip.keyframes,
        clip.frames.len() as f64 / FPS as f64,
        clip.encoded_bytes as f64 * 8.0 / 1e6 / (clip.frames.len() as f64 / FPS as f64),
        clip_packets,
        clip_packets as f64 / clip.frames.len() as f64,
        t.elapsed().as_secs_f64()
    );

    let mut key_bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key_bytes)
        .expect("random key");
    let key = MasterKey::from_bytes(key_bytes);
    let data_dir = tmp.path().join("data");
    let recorder = Arc::new(
        Recorder::start(RecorderConfig {
            data_dir: data_dir.clone(),
            master_key: key.clone(),
        })
        .expect("the recorder starts"),
    );
    let specialist = Present {
        identity: "dr-bench".into(),
        role: "specialist".into(),
    };
    let id = recorder
        .start_recording("bench-room", specialist.clone(), vec![specialist.clone()])
        .expect("the recording starts");
    let media = recorder.media();
    for tap in 1..=o.tracks as u64 {
        media.deliver(MediaInput::Started(TappedTrack {
            tap,
            room: "bench-room".into(),
            identity: format!("user{tap}"),
            kind: TrackKind::Video,
            codecs: vec![TapCodec {
                payload_type: VP8_PT,
                mime_type: "video/VP8".into(),
                channels: 0,
            }],
        }));
    }
    println!(
        "recording {id}: {} tracks at {FPS} fps, {} s warm-up, {} s measured, data in {}",
        o.tracks,
        o.warmup,
        o.seconds,
        data_dir.display()
    );

    let fed = Arc::new(Fed::default());
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (fed, stop, media) = (fed.clone(), stop.clone(), media.clone());
        let tracks = o.tracks;
        std::thread::Builder::new()
            .name("rec-feeder".into())
            .spawn(move || feed(&clip, &media, tracks, &fed, &stop))
            .expect("the feeder starts")
    };

    std::thread::sleep(Duration::from_secs(o.warmup));
    let first = Snap::take(&recorder, &fed);
    let mut last = Snap::take(&recorder, &fed);
    let end = first.at + Duration::from_secs(o.seconds);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_secs(5).min(end - Instant::now()));
        let now = Snap::take(&recorder, &fed);
        let f = figures(&last, &now, tck);
        println!(
            "  {:>4.0} s: recorder {:.3} cores, fed {:.1} Mbit/s, written {:.1} Mbit/s, \
             dropped {}, machine {:.2} cores busy",
            now.at.duration_since(first.at).as_secs_f64(),
            f.recorder_cores_ns,
            f.fed_mbit / f.secs,
            f.written_bytes as f64 * 8.0 / 1e6 / f.secs,
            f.dropped,
            f.machine_cores
        );
        last = now;
    }
    let measured = figures(&first, &last, tck);
    stop.store(true, Ordering::Relaxed);
    feeder.join().expect("the feeder ran");
    let max_late_ms = fed.max_late_us.load(Ordering::Relaxed) as f64 / 1e3;

    // Let the queue drain (the stop is a control message and could overtake media).
    let drain = Instant::now();
    let fed_frames = fed.frames_per_track.load(Ordering::Relaxed);
    let expected = fed_frames * o.tracks as u64;
    while recorder.stats().frames.load(Ordering::Relaxed) < expected
        && drain.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let stop_at = Instant::now();
    recorder
        .stop_recording("bench-room", specialist)
        .expect("the recording stops");
    let stop_ms = stop_at.elapsed().as_secs_f64() * 1e3;
    let stats = recorder.stats();
    let dropped = stats.dropped.load(Ordering::Relaxed);
    let failed = stats.failed_tracks.load(Ordering::Relaxed);

    let f = &measured;
    let mbit_s = f.fed_mbit / f.secs;
    let us_per_mbit = f.recorder_cores_ns * f.secs * 1e6 / f.fed_mbit.max(1e-9);
    let ns_per_packet = f.recorder_cores_ns * f.secs * 1e9 / f.fed_packets.max(1) as f64;
    println!();
    println!("== {} tracks, {:.1} s measured ==", o.tracks, f.secs);
    println!(
        "fed (RTP payload)          {:.1} Mbit/s ({:.2} per track), {:.0} packets/s",
        mbit_s,
        mbit_s / o.tracks as f64,
        f.fed_packets as f64 / f.secs
    );
    println!(
        "written (plain WebM)       {:.1} Mbit/s, {} frames/s",
        f.written_bytes as f64 * 8.0 / 1e6 / f.secs,
        (f.frames as f64 / f.secs).round()
    );
    println!(
        "recorder thread            {:.3} cores (schedstat), {:.3} cores (utime+stime ticks)",
        f.recorder_cores_ns, f.recorder_cores_ticks
    );
    println!(
        "recorder CPU per megabit   {us_per_mbit:.0} µs per recorded Mbit, {ns_per_packet:.0} ns per packet"
    );
    println!(
        "feeder thread              {:.3} cores (deliver + pacing), frame schedule max late {max_late_ms:.1} ms",
        f.feeder_cores
    );
    println!(
        "process / machine          {:.3} / {:.2} cores busy of {} (outside the process {:.2})",
        f.process_cores,
        f.machine_cores,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        (f.machine_cores - f.process_cores).max(0.0)
    );
    println!(
        "dropped (queue full)       {} in the measured period, {dropped} in all; failed tracks {failed}",
        f.dropped
    );
    println!(
        "stop_recording             {stop_ms:.0} ms ({} files completed, synced, indexed)",
        o.tracks
    );

    let plain_dir = tmp.path().join("plain");
    std::fs::create_dir_all(&plain_dir).unwrap();
    let problems = verify(
        &data_dir.join("recordings").join(&id),
        &key,
        &plain_dir,
        o.tracks,
        fed_frames,
    );
    println!("frames fed per track       {fed_frames}");
    if problems.is_empty() && dropped == 0 && failed == 0 {
        println!("all checks passed");
    } else {
        for p in &problems {
            println!("PROBLEM: {p}");
        }
        std::process::exit(1);
    }
}
