//! What a recording tap costs the forwarding path (issue 5): the [`Router`]'s work per
//! published RTP packet with its room recorded and not, on one router, alternating.
//!
//! Set-up, in process and on a virtual clock as in `tests/router_forwarding.rs`: real `rtc`
//! peer connections (ICE-lite, DTLS, SRTP) for one publisher of a VP8 track and N subscribers
//! (3 by default: a consult's other participants), all connected and negotiated through the
//! router. The publisher sends synthetic VP8 at about 1.5 Mbit/s (30 frames/s of 6,250 bytes,
//! 1,200-byte RTP payloads with a valid RFC 7741 descriptor, a keyframe every 90 frames), and
//! the virtual clock moves at that rate.
//!
//! Recording "on" is the production path: [`Router::set_recording`] taps the track, and the
//! taps drained by [`Router::poll_tap`] are converted to `recorder::consult::MediaInput`
//! (as `medrelay`'s `Taps` sink does) and handed to a real, running `Recorder`'s
//! `MediaSender::deliver` (a bounded-queue `try_send`); the recorder thread writes sealed
//! WebM files to a temporary directory on the real disk meanwhile, on the machine's other
//! core. "Off" has no tap.
//!
//! Timed per packet, with `Instant`: `handle_datagram` (SRTP decrypt, NACK bookkeeping, the
//! tap's `Bytes` clone and queue push, N header rewrites and SRTP encrypts), draining
//! `poll_transmit` (the N datagrams, collected in a `Vec`; the socket sends of the real media
//! loop are not included) and draining `poll_tap` into the sink. The publisher's encryption
//! and the subscribers' decryption are untimed. Rounds alternate off and on (the order
//! swapped each round) so that drift in machine load hits both alike; the first round is a
//! warm-up and is not counted.
//!
//! Packets are spaced `--gap-us` apart in wall time (200 µs by default; a 1.5 Mbit/s track's
//! come about 5 ms apart, 50 such tracks' about 130 µs apart), so that, as in production, the
//! recorder thread has finished the previous packet and gone idle, and each tap has to wake
//! it. With `--gap-us 0` the packets come back to back and the recorder is often still busy.
//!
//! `--batch K` hands the taps over after every K packets instead of after each (the media
//! loop drains the taps once per batch of received datagrams, so under load one hand-off
//! covers several packets); the time is counted in the packet that hands them over.
//!
//! `--sink none` converts the taps but drops them instead of handing them to the recorder:
//! the router's own share of the cost, without the hand-off to the recorder thread.
//!
//! Run: `cargo bench -p sfu --bench tap_overhead [-- --subscribers 3 --packets 3000
//! --rounds 12 --gap-us 200 --batch 1 --sink recorder|none]`.

use bytes::Bytes;
use recorder::consult::{
    MediaInput, MediaSender, Present, Recorder, RecorderConfig, TapCodec as RecCodec, TappedPacket,
    TappedTrack,
};
use recorder::sealed::MasterKey;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use sfu::tap::Tap;
use sfu::{
    Datagram, ParticipantId, ParticipantInfo, Router, RouterConfig, RouterEvent, TrackSource,
};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const ROUTER_ADDR: &str = "127.0.0.1:50000";
const ROOM: &str = "consult";
/// Frames per second of the published track.
const FPS: u32 = 30;
/// Bytes per frame: 1.5 Mbit/s at 30 frames/s.
const FRAME_BYTES: usize = 6_250;
/// Largest RTP payload, descriptor included.
const MAX_PAYLOAD: usize = 1_200;
/// A keyframe every this many frames.
const KEYFRAME_EVERY: u64 = 90;

/// Command-line options.
struct Options {
    subscribers: usize,
    packets: usize,
    rounds: usize,
    gap_us: u64,
    /// Hand the taps to the recorder (false: convert them and drop them).
    sink: bool,
    /// Hand the taps over after every this many packets.
    batch: usize,
}

impl Options {
    fn parse() -> Options {
        let mut o = Options {
            subscribers: 3,
            packets: 3_000,
            rounds: 12,
            gap_us: 200,
            sink: true,
            batch: 1,
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let mut value = |name: &str| -> usize {
                args.next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{name} needs a number"))
            };
            match a.as_str() {
                "--subscribers" => o.subscribers = value("--subscribers"),
                "--packets" => o.packets = value("--packets"),
                "--rounds" => o.rounds = value("--rounds").max(2),
                "--gap-us" => o.gap_us = value("--gap-us") as u64,
                "--batch" => o.batch = value("--batch").max(1),
                "--sink" => o.sink = args.next().as_deref() != Some("none"),
                // `cargo bench` passes `--bench`; ignore it and anything unknown.
                _ => {}
            }
        }
        o
    }
}

// ----- the virtual network (as in tests/router_forwarding.rs) -----------------------------

#[path = "../tests/support/mod.rs"]
mod support;

/// One client peer connection at a virtual address.
struct Client {
    addr: SocketAddr,
    pc: RTCPeerConnection,
    connected: bool,
    received: u64,
}

fn client(now: Instant, port: u16) -> Client {
    let (addr, pc) = support::client_peer(now, port);
    Client {
        addr,
        pc,
        connected: false,
        received: 0,
    }
}

/// The taps' destination: the production conversion into a running recorder's queue, or
/// (`--sink none`) the conversion only, the input then dropped.
struct Sink(Option<MediaSender>);

impl Sink {
    /// What `medrelay`'s `Taps` sink does with a tap.
    fn deliver(&self, tap: Tap) {
        let input = match tap {
            Tap::Started(t) => MediaInput::Started(TappedTrack {
                tap: t.tap,
                room: t.room,
                identity: t.identity,
                kind: match (t.kind, t.source) {
                    (_, TrackSource::Screen) => recorder::index::TrackKind::Screen,
                    (sfu::TrackKind::Audio, _) => recorder::index::TrackKind::Audio,
                    (sfu::TrackKind::Video, _) => recorder::index::TrackKind::Video,
                },
                codecs: t
                    .codecs
                    .into_iter()
                    .map(|c| RecCodec {
                        payload_type: c.payload_type,
                        mime_type: c.mime_type,
                        channels: c.channels,
                    })
                    .collect(),
            }),
            Tap::Packet(p) => MediaInput::Packet(TappedPacket {
                tap: p.tap,
                payload_type: p.payload_type,
                sequence: p.sequence_number,
                timestamp: p.timestamp,
                marker: p.marker,
                payload: p.payload,
            }),
            Tap::Ended { tap } => MediaInput::Ended { tap },
        };
        match &self.0 {
            Some(media) => media.deliver(input),
            None => drop(std::hint::black_box(input)),
        }
    }
}

/// The router, its clients, and the publisher's track.
struct Net {
    now: Instant,
    router: Router,
    router_addr: SocketAddr,
    /// Client 0 publishes; the others subscribe.
    clients: Vec<Client>,
    sender: Option<RTCRtpSenderId>,
    ssrc: u32,
    payload_type: u8,
    seq: u16,
    frame: u64,
    /// The router's datagrams of the packet being timed.
    out: Vec<Datagram>,
    sink: Sink,
    /// Taps are handed over after every `batch` packets (the real media loop hands over
    /// what a batch of received datagrams produced).
    batch: usize,
    /// Packets whose taps are waiting.
    held: usize,
}

impl Net {
    /// Carries every pending datagram both ways, runs due timers (all untimed).
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            while let Some(d) = self.router.poll_transmit() {
                self.out.push(d);
            }
            for d in self.out.drain(..) {
                moved = true;
                if let Some(c) = self.clients.iter_mut().find(|c| c.addr == d.remote) {
                    let _ = c.pc.handle_read(TaggedBytesMut {
                        now: self.now,
                        transport: TransportContext {
                            local_addr: c.addr,
                            peer_addr: d.local,
                            ecn: None,
                            transport_protocol: TransportProtocol::UDP,
                        },
                        message: d.data,
                    });
                }
            }
            for c in &mut self.clients {
                while let Some(m) = c.pc.poll_write() {
                    moved = true;
                    self.router.handle_datagram(
                        self.now,
                        Datagram {
                            local: self.router_addr,
                            remote: c.addr,
                            data: m.message,
                            tcp: false,
                        },
                    );
                }
                while let Some(e) = c.pc.poll_event() {
                    if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) = e {
                        c.connected = s == RTCPeerConnectionState::Connected;
                    }
                }
                while let Some(m) = c.pc.poll_read() {
                    if matches!(
                        m.message,
                        rtc::peer_connection::message::RTCMessage::RtpPacket(..)
                    ) {
                        c.received += 1;
                    }
                }
                if c.pc.poll_timeout().is_some_and(|t| t <= self.now) {
                    let _ = c.pc.handle_timeout(self.now);
                    moved = true;
                }
            }
            if self.router.poll_timeout().is_some_and(|t| t <= self.now) {
                self.router.handle_timeout(self.now);
                moved = true;
            }
            while self.held == 0
                && let Some(t) = self.router.poll_tap()
            {
                self.sink.deliver(t);
            }
            if !moved {
                break;
            }
        }
    }

    /// Pumps and advances the clock in 5 ms steps for `d`, or until `done`.
    fn run(&mut self, d: Duration, mut done: impl FnMut(&Net) -> bool) -> bool {
        let deadline = self.now + d;
        while self.now < deadline {
            self.pump();
            if done(self) {
                return true;
            }
            self.now += Duration::from_millis(5);
        }
        false
    }

    /// Answers every pending subscribe offer (the latest per participant); participant
    /// `ParticipantId(k)` is client `k - 1`. The publisher's own subscriber connection is
    /// left unanswered (it receives nothing), as in the forwarding tests. Returns how many
    /// were answered.
    fn answer_offers(&mut self) -> usize {
        let mut offers = std::collections::BTreeMap::new();
        while let Some(e) = self.router.poll_event() {
            if let RouterEvent::SubscribeOffer {
                participant, sdp, ..
            } = e
                && participant != ParticipantId(1)
            {
                offers.insert(participant, sdp);
            }
        }
        let answered = offers.len();
        for (id, sdp) in offers {
            let pc = &mut self.clients[id.0 as usize - 1].pc;
            pc.set_remote_description(self.now, RTCSessionDescription::offer(sdp).unwrap())
                .unwrap();
            let answer = pc.create_answer(None).unwrap();
            pc.set_local_description(self.now, answer.clone()).unwrap();
            self.router
                .subscribe_answer(self.now, id, answer.sdp)
                .unwrap();
        }
        answered
    }

    /// The next frame's RTP packets, written by the publisher (SRTP happens here, untimed).
    fn publish_frame(&mut self) -> usize {
        let keyframe = self.frame.is_multiple_of(KEYFRAME_EVERY);
        let mut frame = vec![0x5au8; FRAME_BYTES];
        // The VP8 frame tag: P bit 0 on a keyframe, then the start code and 1280x720.
        frame[0] = if keyframe { 0x10 } else { 0x11 };
        if keyframe {
            frame[3..10].copy_from_slice(&[0x9d, 0x01, 0x2a, 0x00, 0x05, 0xd0, 0x02]);
        }
        let chunks: Vec<&[u8]> = frame.chunks(MAX_PAYLOAD - 4).collect();
        let last = chunks.len() - 1;
        let timestamp = (self.frame as u32).wrapping_mul(90_000 / FPS);
        let picture_id = (self.frame as u16) & 0x7fff;
        let sender = self.sender.unwrap();
        let now = self.now;
        for (j, chunk) in chunks.iter().enumerate() {
            let mut payload = Vec::with_capacity(chunk.len() + 4);
            payload.extend_from_slice(&[
                0x80 | if j == 0 { 0x10 } else { 0 },
                0x80,
                0x80 | (picture_id >> 8) as u8,
                picture_id as u8,
            ]);
            payload.extend_from_slice(chunk);
            let mut packet = rtc::rtp::Packet::default();
            packet.header.version = 2;
            packet.header.ssrc = self.ssrc;
            packet.header.sequence_number = self.seq;
            packet.header.timestamp = timestamp;
            packet.header.payload_type = self.payload_type;
            packet.header.marker = j == last;
            packet.payload = Bytes::from(payload);
            self.seq = self.seq.wrapping_add(1);
            self.clients[0]
                .pc
                .rtp_sender(sender)
                .unwrap()
                .write_rtp(now, packet)
                .unwrap();
        }
        self.frame += 1;
        chunks.len()
    }

    /// Sends `packets` publisher packets through the router at the track's pace, timing the
    /// router's work for each; after each, waits until `gap` has passed since it came in.
    /// Returns the per-packet ns: (everything, until the forwarded copies are out).
    fn measure(&mut self, packets: usize, gap: Duration) -> (Vec<u64>, Vec<u64>) {
        let mut times = Vec::with_capacity(packets);
        let mut forward = Vec::with_capacity(packets);
        let frame_time = Duration::from_secs(1) / FPS;
        while times.len() < packets {
            let n = self.publish_frame();
            let mut datagrams = Vec::with_capacity(n);
            while let Some(m) = self.clients[0].pc.poll_write() {
                datagrams.push(m.message);
            }
            for data in datagrams {
                let d = Datagram {
                    local: self.router_addr,
                    remote: self.clients[0].addr,
                    data,
                    tcp: false,
                };
                let t0 = Instant::now();
                self.router.handle_datagram(self.now, d);
                while let Some(d) = self.router.poll_transmit() {
                    self.out.push(d);
                }
                let t1 = Instant::now();
                self.held += 1;
                if self.held >= self.batch || times.len() + 1 == packets {
                    self.held = 0;
                    while let Some(t) = self.router.poll_tap() {
                        self.sink.deliver(t);
                    }
                }
                let t2 = Instant::now();
                times.push((t2 - t0).as_nanos() as u64);
                forward.push((t1 - t0).as_nanos() as u64);
                // The subscribers take their copies (untimed).
                self.pump();
                // Packets of a 1.5 Mbit/s track come ~5 ms apart (and those of 50 such
                // tracks ~130 µs apart): the recorder thread has gone idle before the next
                // one, as in production; without a gap it would still be busy.
                let left = gap.saturating_sub(t0.elapsed());
                if !left.is_zero() {
                    std::thread::sleep(left);
                }
            }
            self.now += frame_time;
            self.pump();
        }
        (times, forward)
    }
}

/// CPU counters in clock ticks: the machine's busy and total time (`/proc/stat`, all CPUs)
/// and this process's utime + stime (`/proc/self/stat`).
struct Load {
    busy: u64,
    total: u64,
    process: u64,
    cpus: usize,
}

impl Load {
    fn take() -> Load {
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
        // user nice system idle iowait irq softirq steal
        let busy = f(0) + f(1) + f(2) + f(5) + f(6) + f(7);
        let own = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let fields: Vec<u64> = own
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .unwrap_or_default()
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        Load {
            busy,
            total: busy + f(3) + f(4),
            process: fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0),
            cpus: stat
                .lines()
                .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
                .count(),
        }
    }

    /// (machine cores busy, this process's cores, CPUs) since `earlier`.
    fn cores_since(&self, earlier: &Load) -> (f64, f64, usize) {
        let total = self.total.saturating_sub(earlier.total).max(1) as f64;
        let cpus = self.cpus.max(1) as f64;
        (
            self.busy.saturating_sub(earlier.busy) as f64 / total * cpus,
            self.process.saturating_sub(earlier.process) as f64 / total * cpus,
            self.cpus,
        )
    }
}

/// Percentile of sorted values.
fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p / 100.0).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn mean(v: &[u64]) -> f64 {
    v.iter().sum::<u64>() as f64 / v.len().max(1) as f64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let o = Options::parse();
    // The workspace's build output (cargo runs benches in the package's directory).
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    std::fs::create_dir_all(&base).expect("the target directory");
    let tmp = tempfile::Builder::new()
        .prefix("tap-overhead-")
        .tempdir_in(&base)
        .expect("a temporary directory");
    let key: [u8; 32] = rand::random();
    let recorder = Recorder::start(RecorderConfig {
        data_dir: tmp.path().to_path_buf(),
        master_key: MasterKey::from_bytes(key),
    })
    .expect("the recorder starts");
    let specialist = Present {
        identity: "dr-bench".into(),
        role: "specialist".into(),
    };
    recorder
        .start_recording(ROOM, specialist.clone(), vec![])
        .expect("the recording starts");

    let router_addr: SocketAddr = ROUTER_ADDR.parse().unwrap();
    let now = Instant::now();
    let mut net = Net {
        now,
        router: Router::new(RouterConfig::new(router_addr)),
        router_addr,
        clients: Vec::new(),
        sender: None,
        ssrc: 0x1234_5678,
        payload_type: 0,
        seq: 1,
        frame: 0,
        out: Vec::new(),
        sink: Sink(o.sink.then(|| recorder.media())),
        batch: o.batch,
        held: 0,
    };

    // The publisher (participant 1, client 0).
    let publisher = ParticipantId(1);
    net.router
        .join(
            net.now,
            ParticipantInfo {
                id: publisher,
                room: ROOM.into(),
                identity: "clinic".into(),
                role: "clinic".into(),
                can_publish: true,
            },
        )
        .unwrap();
    let mut c = client(net.now, 40_000);
    let sender = support::publish_vp8(&mut net.router, &mut c.pc, net.now, publisher, net.ssrc);
    net.payload_type =
        c.pc.rtp_sender(sender)
            .unwrap()
            .get_parameters()
            .rtp_parameters
            .codecs[0]
            .payload_type;
    net.sender = Some(sender);
    net.clients.push(c);

    // The subscribers (participants 2.., clients 1..).
    for i in 0..o.subscribers {
        let id = ParticipantId(2 + i as u64);
        net.router
            .join(
                net.now,
                ParticipantInfo {
                    id,
                    room: ROOM.into(),
                    identity: format!("viewer{i}"),
                    role: "specialist".into(),
                    can_publish: false,
                },
            )
            .unwrap();
        net.clients.push(client(net.now, 40_001 + i as u16));
    }
    assert!(
        net.run(Duration::from_secs(5), |n| n.clients[0].connected),
        "the publisher connects"
    );
    // The first frame publishes the track; then every subscriber answers its offer.
    net.publish_frame();
    net.run(Duration::from_millis(200), |_| false);
    assert!(
        net.answer_offers() == o.subscribers,
        "an offer for every participant"
    );
    assert!(
        net.run(Duration::from_secs(5), |n| n
            .clients
            .iter()
            .all(|c| c.connected)),
        "every subscriber connects"
    );
    net.run(Duration::from_millis(500), |_| false);
    net.measure(300, Duration::ZERO);
    assert!(
        net.clients[1..].iter().all(|c| c.received > 100),
        "every subscriber receives the track"
    );
    assert_eq!(net.router.subscription_count(), o.subscribers);

    let gap = Duration::from_micros(o.gap_us);
    println!(
        "1 VP8 track (~1.5 Mbit/s, {} packets/frame, {FPS} fps) to {} subscribers; \
         {} rounds of {} packets off and {} on (round 1 a warm-up), packets {} µs apart, taps {} after every {} packet(s)",
        FRAME_BYTES.div_ceil(MAX_PAYLOAD - 4),
        o.subscribers,
        o.rounds,
        o.packets,
        o.packets,
        o.gap_us,
        if o.sink {
            "to the recorder"
        } else {
            "converted and dropped"
        },
        o.batch
    );
    let load_before = Load::take();
    let (mut all_off, mut all_on) = (Vec::new(), Vec::new());
    let (mut fwd_off, mut fwd_on) = (Vec::new(), Vec::new());
    let mut tap_on = Vec::new();
    let mut ratios = Vec::new();
    let mut deltas = Vec::new();
    let forwarded_before = net.router.stats().forwarded_packets;
    for round in 0..o.rounds {
        let run = |net: &mut Net, on: bool| {
            net.router.set_recording(net.now, ROOM, on);
            net.pump();
            net.measure(o.packets, gap)
        };
        let ((off, off_fwd), (on, on_fwd)) = if round % 2 == 0 {
            let off = run(&mut net, false);
            (off, run(&mut net, true))
        } else {
            let on = run(&mut net, true);
            (run(&mut net, false), on)
        };
        let (m_off, m_on) = (mean(&off), mean(&on));
        println!(
            "  round {:>2}: off {:>6.0} ns/packet, on {:>6.0} ns/packet ({:+.1} %); \
             until forwarded: off {:.0}, on {:.0}{}",
            round + 1,
            m_off,
            m_on,
            (m_on / m_off - 1.0) * 100.0,
            mean(&off_fwd),
            mean(&on_fwd),
            if round == 0 { "  (warm-up)" } else { "" }
        );
        if round > 0 {
            ratios.push(m_on / m_off);
            deltas.push(m_on - m_off);
            tap_on.extend(on.iter().zip(&on_fwd).map(|(a, f)| a - f));
            all_off.extend(off);
            all_on.extend(on);
            fwd_off.extend(off_fwd);
            fwd_on.extend(on_fwd);
        }
    }
    let load = Load::take().cores_since(&load_before);
    net.router.set_recording(net.now, ROOM, false);
    net.pump();
    let forwarded = net.router.stats().forwarded_packets - forwarded_before;
    let dropped_taps = net.router.stats().dropped_taps;
    recorder
        .stop_recording(ROOM, specialist)
        .expect("the recording stops");
    let rec = recorder.stats();

    for v in [
        &mut all_off,
        &mut all_on,
        &mut fwd_off,
        &mut fwd_on,
        &mut tap_on,
    ] {
        v.sort_unstable();
    }
    let (m_off, m_on) = (mean(&all_off), mean(&all_on));
    let (rmin, rmax) = ratios
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    println!();
    println!(
        "== router time per published packet, ns ({} subscribers; {} packets each way) ==",
        o.subscribers,
        all_off.len()
    );
    println!("                                  mean      p50      p90      p99    p99.9");
    for (name, v) in [
        ("whole loop, recording off", &all_off),
        ("whole loop, recording on ", &all_on),
        ("until forwarded, off      ", &fwd_off),
        ("until forwarded, on       ", &fwd_on),
    ] {
        println!(
            "{name} {:>9.0} {:>8} {:>8} {:>8} {:>8}",
            mean(v),
            pct(v, 50.0),
            pct(v, 90.0),
            pct(v, 99.0),
            pct(v, 99.9)
        );
    }
    println!(
        "on / off, whole loop (all packets) {:.3} ({:+.0} ns per packet)",
        m_on / m_off,
        m_on - m_off
    );
    println!(
        "on / off, whole loop (per round)   median {:.3} [{rmin:.3} – {rmax:.3}], Δ median {:+.0} ns",
        median(&mut ratios),
        median(&mut deltas)
    );
    println!(
        "on − off, until forwarded          {:+.0} ns mean, {:+} ns p50",
        mean(&fwd_on) - mean(&fwd_off),
        pct(&fwd_on, 50.0) as i64 - pct(&fwd_off, 50.0) as i64
    );
    println!(
        "tap drain + deliver (on)           {:.0} ns mean per packet; p50 {}, p90 {}, p99 {}",
        mean(&tap_on),
        pct(&tap_on, 50.0),
        pct(&tap_on, 90.0),
        pct(&tap_on, 99.0)
    );
    println!(
        "machine during the rounds          {:.2} of {} cores busy, this process {:.2}, \
         outside it {:.2}",
        load.0,
        load.2,
        load.1,
        (load.0 - load.1).max(0.0)
    );
    println!(
        "forwarded {forwarded} copies; dropped taps {dropped_taps}; recorder: {} frames, \
         {:.1} MB, dropped {}, failed tracks {}",
        rec.frames.load(std::sync::atomic::Ordering::Relaxed),
        rec.bytes.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e6,
        rec.dropped.load(std::sync::atomic::Ordering::Relaxed),
        rec.failed_tracks.load(std::sync::atomic::Ordering::Relaxed),
    );
}
