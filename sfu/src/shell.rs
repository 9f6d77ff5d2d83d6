//! The tokio shell around [`Router`]: one UDP socket (and ICE-TCP connections on the same
//! port, see [`crate::tcp`]), a command channel, a timer.
//!
//! The shell only moves bytes: it reads datagrams and commands, feeds them to the router with
//! the current time, sends what the router wants sent, passes the router's events on, and
//! sleeps until the router's next deadline. Every decision is the router's.

use crate::tap::TapSink;
use crate::tcp::{self, TcpEvent};
use crate::{
    Datagram, ParticipantId, ParticipantInfo, PublishAnswer, Router, RouterConfig, RouterEvent,
    RouterStats, SfuError, TrackSource,
};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

/// Largest datagram read from the socket.
const MAX_DATAGRAM: usize = 2048;
/// Commands waiting for the media loop; senders wait when it is full.
const COMMAND_QUEUE: usize = 1024;
/// ICE-TCP frames and connection changes waiting for the media loop.
const TCP_EVENT_QUEUE: usize = 4096;
/// Datagrams sent in one system call.
const SEND_BATCH: usize = 64;
/// Datagrams read in one go before outputs are flushed.
const READ_BATCH: usize = 64;
/// Ports tried when the system picks the media port: the number it picks for UDP may be
/// taken for TCP (another connection's local port), and ICE-TCP needs the same number.
const EPHEMERAL_BIND_ATTEMPTS: usize = 16;

/// A command from signaling to the media loop.
enum Command {
    Join(ParticipantInfo, oneshot::Sender<Result<(), SfuError>>),
    PublishOffer {
        id: ParticipantId,
        sdp: String,
        sources: Vec<(String, TrackSource)>,
        reply: oneshot::Sender<Result<PublishAnswer, SfuError>>,
    },
    SubscribeAnswer {
        id: ParticipantId,
        sdp: String,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    Leave(ParticipantId),
    Resume(ParticipantId, oneshot::Sender<Result<(), SfuError>>),
    BroadcastChat {
        from: ParticipantId,
        payload: String,
    },
    SetRecording {
        room: String,
        on: bool,
    },
    SetShownHeight {
        id: ParticipantId,
        track_id: String,
        height: u32,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    SetPinned {
        id: ParticipantId,
        track_id: Option<String>,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
}

/// A snapshot of the router's gauges and counters, refreshed by the media loop.
#[derive(Debug, Clone, Default)]
pub struct MediaStats {
    /// Participants with peer connections.
    pub participants: usize,
    /// Published tracks.
    pub tracks: usize,
    /// Forwarded (track, subscriber) pairs.
    pub subscriptions: usize,
    /// Counters.
    pub router: RouterStats,
}

/// Signaling's handle to the media loop. Cheap to clone.
#[derive(Clone)]
pub struct SfuHandle {
    commands: mpsc::Sender<Command>,
    stats: Arc<Mutex<MediaStats>>,
    media_addr: SocketAddr,
}

/// The media loop stopped; nothing can be forwarded any more.
#[derive(Debug, thiserror::Error)]
#[error("the media loop has stopped")]
pub struct MediaLoopGone;

impl SfuHandle {
    /// The shared UDP socket's address.
    pub fn media_addr(&self) -> SocketAddr {
        self.media_addr
    }

    /// The latest statistics snapshot.
    pub fn stats(&self) -> MediaStats {
        self.stats.lock().expect("stats lock").clone()
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, SfuError>>) -> Command,
    ) -> Result<Result<T, SfuError>, MediaLoopGone> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| MediaLoopGone)?;
        rx.await.map_err(|_| MediaLoopGone)
    }

    /// See [`Router::join`].
    pub async fn join(&self, info: ParticipantInfo) -> Result<Result<(), SfuError>, MediaLoopGone> {
        self.call(|reply| Command::Join(info, reply)).await
    }

    /// See [`Router::publish_offer`].
    pub async fn publish_offer(
        &self,
        id: ParticipantId,
        sdp: String,
        sources: Vec<(String, TrackSource)>,
    ) -> Result<Result<PublishAnswer, SfuError>, MediaLoopGone> {
        self.call(|reply| Command::PublishOffer {
            id,
            sdp,
            sources,
            reply,
        })
        .await
    }

    /// See [`Router::subscribe_answer`].
    pub async fn subscribe_answer(
        &self,
        id: ParticipantId,
        sdp: String,
    ) -> Result<Result<(), SfuError>, MediaLoopGone> {
        self.call(|reply| Command::SubscribeAnswer { id, sdp, reply })
            .await
    }

    /// See [`Router::leave`].
    pub async fn leave(&self, id: ParticipantId) {
        let _ = self.commands.send(Command::Leave(id)).await;
    }

    /// See [`Router::resume`].
    pub async fn resume(&self, id: ParticipantId) -> Result<Result<(), SfuError>, MediaLoopGone> {
        self.call(|reply| Command::Resume(id, reply)).await
    }

    /// See [`Router::set_recording`]: the room's tracks go to the tap sink given to
    /// [`spawn`] while on.
    pub async fn set_recording(&self, room: &str, on: bool) -> Result<(), MediaLoopGone> {
        self.commands
            .send(Command::SetRecording {
                room: room.to_owned(),
                on,
            })
            .await
            .map_err(|_| MediaLoopGone)
    }

    /// See [`Router::set_shown_height`].
    pub async fn set_shown_height(
        &self,
        id: ParticipantId,
        track_id: String,
        height: u32,
    ) -> Result<Result<(), SfuError>, MediaLoopGone> {
        self.call(|reply| Command::SetShownHeight {
            id,
            track_id,
            height,
            reply,
        })
        .await
    }

    /// See [`Router::set_pinned`].
    pub async fn set_pinned(
        &self,
        id: ParticipantId,
        track_id: Option<String>,
    ) -> Result<Result<(), SfuError>, MediaLoopGone> {
        self.call(|reply| Command::SetPinned {
            id,
            track_id,
            reply,
        })
        .await
    }

    /// See [`Router::broadcast_chat`].
    pub async fn broadcast_chat(&self, from: ParticipantId, payload: String) {
        let _ = self
            .commands
            .send(Command::BroadcastChat { from, payload })
            .await;
    }
}

/// Binds the media UDP socket and the ICE-TCP listener on the same port number.
///
/// With port 0 the system picks the number, and a number free for UDP may be taken for TCP;
/// then another is tried (the taken ones are held until the end so none comes back). An
/// explicit port that is taken is an error at once.
async fn bind_media(bind: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    let mut taken = Vec::new();
    loop {
        let socket = UdpSocket::bind(bind).await?;
        match TcpListener::bind(socket.local_addr()?).await {
            Ok(listener) => return Ok((socket, listener)),
            Err(e)
                if bind.port() == 0
                    && e.kind() == std::io::ErrorKind::AddrInUse
                    && taken.len() + 1 < EPHEMERAL_BIND_ATTEMPTS =>
            {
                taken.push(socket);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Binds the media socket and spawns the media loop.
///
/// Returns the handle for signaling and the stream of router events. Events are control
/// plane (offers, chat, failures): a handful per participant action, so their channel is
/// unbounded; the media path never waits on signaling. Recorded rooms' taps go to `taps`
/// (dropped when there is none).
pub async fn spawn(
    bind: SocketAddr,
    announce: Option<std::net::IpAddr>,
    taps: Option<Box<dyn TapSink>>,
    fec: bool,
) -> std::io::Result<(SfuHandle, mpsc::UnboundedReceiver<RouterEvent>)> {
    let (socket, listener) = bind_media(bind).await?;
    let local = socket.local_addr()?;
    let (tcp_tx, tcp_rx) = mpsc::channel(TCP_EVENT_QUEUE);
    tokio::spawn(tcp::accept(listener, tcp_tx));
    let media_addr = SocketAddr::new(announce.unwrap_or(local.ip()), local.port());
    let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
    let (event_tx, event_rx) = mpsc::unbounded_channel();
    let stats = Arc::new(Mutex::new(MediaStats::default()));
    let router = Router::new(RouterConfig {
        fec,
        ..RouterConfig::new(media_addr)
    });
    info!(%local, announced = %media_addr, "media socket bound");
    tokio::spawn(run(
        router,
        MediaTransport {
            udp: socket,
            tcp_events: tcp_rx,
            local,
        },
        command_rx,
        event_tx,
        taps,
        stats.clone(),
    ));
    Ok((
        SfuHandle {
            commands,
            stats,
            media_addr,
        },
        event_rx,
    ))
}

/// Where the media loop's packets come and go.
struct MediaTransport {
    /// The shared UDP socket.
    udp: UdpSocket,
    /// Frames and connection changes from the ICE-TCP connections.
    tcp_events: mpsc::Receiver<TcpEvent>,
    /// The socket's local address.
    local: SocketAddr,
}

async fn run(
    mut router: Router,
    transport: MediaTransport,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::UnboundedSender<RouterEvent>,
    mut taps: Option<Box<dyn TapSink>>,
    stats: Arc<Mutex<MediaStats>>,
) {
    let MediaTransport {
        udp: socket,
        mut tcp_events,
        local,
    } = transport;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut outbox = Vec::with_capacity(SEND_BATCH);
    // Open ICE-TCP connections by peer address.
    let mut tcp_writers: HashMap<SocketAddr, mpsc::Sender<Bytes>> = HashMap::new();
    let mut last_stats = Instant::now();
    let mut changed = false;
    loop {
        while let Some(d) = router.poll_transmit() {
            if d.tcp {
                // Never waits: a full connection loses the packet, as UDP would.
                if let Some(writer) = tcp_writers.get(&d.remote) {
                    let _ = writer.try_send(d.data.freeze());
                }
            } else {
                outbox.push(d);
                if outbox.len() == SEND_BATCH {
                    send_all(&socket, &mut outbox).await;
                }
            }
        }
        send_all(&socket, &mut outbox).await;
        while let Some(tap) = router.poll_tap() {
            if let Some(sink) = taps.as_mut() {
                sink.deliver(tap);
            }
        }
        while let Some(event) = router.poll_event() {
            if events.send(event).is_err() {
                warn!("signaling stopped listening; media loop ends");
                return;
            }
        }
        let now = Instant::now();
        if changed || now.duration_since(last_stats) >= Duration::from_millis(250) {
            last_stats = now;
            changed = false;
            *stats.lock().expect("stats lock") = MediaStats {
                participants: router.participant_count(),
                tracks: router.track_count(),
                subscriptions: router.subscription_count(),
                router: router.stats(),
            };
        }
        let deadline = router
            .poll_timeout()
            .unwrap_or(now + Duration::from_millis(250))
            .min(now + Duration::from_millis(250));

        tokio::select! {
            command = commands.recv() => match command {
                Some(command) => {
                    apply(&mut router, command);
                    changed = true;
                }
                None => return,
            },
            received = socket.recv_from(&mut buf) => {
                let mut next = Some(received);
                let mut batch = 0;
                while let Some(result) = next.take() {
                    match result {
                        Ok((n, remote)) => router.handle_datagram(Instant::now(), Datagram {
                            local,
                            remote,
                            data: BytesMut::from(&buf[..n]),
                            tcp: false,
                        }),
                        Err(e) => debug!(error = %e, "receive failed"),
                    }
                    batch += 1;
                    if batch < READ_BATCH {
                        next = match socket.try_recv_from(&mut buf) {
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
                            other => Some(other),
                        };
                    }
                }
            }
            Some(event) = tcp_events.recv() => match event {
                TcpEvent::Opened { remote, writer } => {
                    tcp_writers.insert(remote, writer);
                }
                TcpEvent::Frame { remote, data } => router.handle_datagram(Instant::now(), Datagram {
                    local,
                    remote,
                    data,
                    tcp: true,
                }),
                TcpEvent::Closed { remote } => {
                    tcp_writers.remove(&remote);
                }
            },
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
        router.handle_timeout(Instant::now());
    }
}

/// Sends every datagram of `outbox` and empties it: on Linux, up to [`SEND_BATCH`] in one
/// `sendmmsg` call (the forwarding fan-out makes many datagrams at once, to different peers).
async fn send_all(socket: &UdpSocket, outbox: &mut Vec<Datagram>) {
    let mut sent = 0;
    while sent < outbox.len() {
        match send_batch(socket, &outbox[sent..]).await {
            Ok(n) => sent += n.max(1),
            Err(e) => {
                // The first datagram failed (an unreachable peer): skip it, send the rest.
                debug!(remote = %outbox[sent].remote, error = %e, "send failed");
                sent += 1;
            }
        }
    }
    outbox.clear();
}

#[cfg(target_os = "linux")]
async fn send_batch(socket: &UdpSocket, batch: &[Datagram]) -> std::io::Result<usize> {
    use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};
    use std::io::IoSlice;
    use std::os::fd::AsRawFd;
    let slices: Vec<[IoSlice<'_>; 1]> = batch.iter().map(|d| [IoSlice::new(&d.data)]).collect();
    let addresses: Vec<Option<SockaddrStorage>> = batch
        .iter()
        .map(|d| Some(SockaddrStorage::from(d.remote)))
        .collect();
    socket
        .async_io(tokio::io::Interest::WRITABLE, || {
            // Holds raw pointers (not Send): made afresh for each attempt.
            let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(batch.len(), None);
            sendmmsg(
                socket.as_raw_fd(),
                &mut headers,
                &slices,
                &addresses,
                [],
                MsgFlags::empty(),
            )
            .map(|results| results.count())
            .map_err(std::io::Error::from)
        })
        .await
}

#[cfg(not(target_os = "linux"))]
async fn send_batch(socket: &UdpSocket, batch: &[Datagram]) -> std::io::Result<usize> {
    socket
        .send_to(&batch[0].data, batch[0].remote)
        .await
        .map(|_| 1)
}

fn apply(router: &mut Router, command: Command) {
    let now = Instant::now();
    match command {
        Command::Join(info, reply) => {
            let _ = reply.send(router.join(now, info));
        }
        Command::PublishOffer {
            id,
            sdp,
            sources,
            reply,
        } => {
            let _ = reply.send(router.publish_offer(now, id, sdp, sources));
        }
        Command::SubscribeAnswer { id, sdp, reply } => {
            let _ = reply.send(router.subscribe_answer(now, id, sdp));
        }
        Command::Leave(id) => router.leave(now, id),
        Command::Resume(id, reply) => {
            let _ = reply.send(router.resume(now, id));
        }
        Command::BroadcastChat { from, payload } => router.broadcast_chat(now, from, &payload),
        Command::SetRecording { room, on } => router.set_recording(now, &room, on),
        Command::SetShownHeight {
            id,
            track_id,
            height,
            reply,
        } => {
            let _ = reply.send(router.set_shown_height(now, id, &track_id, height));
        }
        Command::SetPinned {
            id,
            track_id,
            reply,
        } => {
            let _ = reply.send(router.set_pinned(now, id, track_id.as_deref()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_system_picked_port_serves_udp_and_tcp() {
        let (udp, tcp) = bind_media("127.0.0.1:0".parse().unwrap()).await.unwrap();
        assert_eq!(udp.local_addr().unwrap(), tcp.local_addr().unwrap());
    }

    #[tokio::test]
    async fn an_explicit_port_taken_for_tcp_is_an_error() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = bind_media(held.local_addr().unwrap()).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    }
}
