//! One simulated participant of a medrelay consult room: the signaling WebSocket
//! (`docs/signaling.md`) and the participant's two peer connections.

use crate::peer::{ClientPeer, MediaPlan, Origin, PeerError, Timing};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;
use tokio::net::TcpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tracing::warn;

/// Why a participant could not take part.
#[derive(Debug, thiserror::Error)]
pub enum SignalingError {
    /// The WebSocket failed.
    #[error("signaling socket: {0}")]
    Socket(#[from] tokio_tungstenite::tungstenite::Error),
    /// Connecting failed.
    #[error("connecting to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    /// The server answered with an error.
    #[error("the server refused: {0}")]
    Refused(String),
    /// The server closed the socket or said something unexpected.
    #[error("unexpected signaling: {0}")]
    Protocol(String),
    /// A peer connection could not be set up.
    #[error(transparent)]
    Peer(#[from] PeerError),
}

/// Where and how a participant joins.
pub struct Seat {
    /// The server's address (`host:port` of its HTTP listener).
    pub server: SocketAddr,
    /// The loopback address the signaling socket connects from (the server limits joins
    /// per address; the load spreads them over 127.0.0.0/8).
    pub source: IpAddr,
    /// The room.
    pub room: String,
    /// A token for the room.
    pub token: String,
    /// The publisher index if the participant publishes the clip.
    pub publisher: Option<usize>,
}

/// Joins, publishes if asked to, answers every subscribe offer, and runs the peer
/// connections until `stop`; then leaves.
pub async fn participate(
    seat: Seat,
    plan: impl FnOnce(crate::peer::PublishedTracks) -> MediaPlan,
    timing: Timing,
    mut stop: watch::Receiver<bool>,
) -> Result<(), SignalingError> {
    let socket = TcpSocket::new_v4().map_err(|e| SignalingError::Connect(seat.server, e))?;
    socket
        .bind(SocketAddr::new(seat.source, 0))
        .map_err(|e| SignalingError::Connect(seat.server, e))?;
    let stream = socket
        .connect(seat.server)
        .await
        .map_err(|e| SignalingError::Connect(seat.server, e))?;
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("ws://{}/ws", seat.server), stream).await?;
    ws.send(text(
        json!({"type": "join", "token": seat.token, "room": seat.room}),
    ))
    .await?;

    let mut peers = JoinSet::new();
    let mut publisher = None;
    let mut plan = Some(plan);
    let mut subscriber: Option<mpsc::Sender<_>> = None;
    let result = loop {
        let message = tokio::select! {
            m = ws.next() => m,
            _ = stop.changed() => break Ok(()),
        };
        let value: Value = match message {
            Some(Ok(Message::Text(t))) => serde_json::from_str(&t)
                .map_err(|e| SignalingError::Protocol(format!("bad JSON: {e}")))?,
            Some(Ok(Message::Close(_))) | None => {
                break Err(SignalingError::Protocol(
                    "the server closed the socket".into(),
                ));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => break Err(e.into()),
        };
        match value["type"].as_str().unwrap_or_default() {
            "joined" => {
                if let Some(index) = seat.publisher {
                    let mut peer = ClientPeer::new(Instant::now()).await?;
                    let (sdp, tracks) = peer.offer_tracks(index)?;
                    let described: Vec<Value> = tracks
                        .track_ids()
                        .map(|(kind, id)| {
                            json!({"track_id": id, "source": match kind {
                                crate::clip::Kind::Audio => "microphone",
                                crate::clip::Kind::Video => "camera",
                            }})
                        })
                        .collect();
                    ws.send(text(
                        json!({"type": "publish_offer", "sdp": sdp, "tracks": described}),
                    ))
                    .await?;
                    publisher = Some((peer, tracks));
                }
            }
            "publish_answer" => {
                let (Some((mut peer, tracks)), Some(plan)) = (publisher.take(), plan.take()) else {
                    continue;
                };
                peer.accept_answer(value["sdp"].as_str().unwrap_or_default().to_owned())?;
                let (_, idle) = mpsc::channel(1);
                peers.spawn(peer.run(
                    Some(plan(tracks)),
                    timing.clone(),
                    Origin::TrackId,
                    idle,
                    stop.clone(),
                ));
            }
            "subscribe_offer" => {
                let sdp = value["sdp"].as_str().unwrap_or_default().to_owned();
                let answer = match &subscriber {
                    None => {
                        let mut peer = ClientPeer::new(Instant::now()).await?;
                        let answer = peer.answer(sdp)?;
                        let (tx, rx) = mpsc::channel(4);
                        peers.spawn(peer.run(
                            None,
                            timing.clone(),
                            Origin::TrackId,
                            rx,
                            stop.clone(),
                        ));
                        subscriber = Some(tx);
                        answer
                    }
                    Some(tx) => {
                        let (reply, answered) = oneshot::channel();
                        if tx.send((sdp, reply)).await.is_err() {
                            break Err(SignalingError::Protocol("subscriber peer gone".into()));
                        }
                        match answered.await {
                            Ok(answer) => answer?,
                            Err(_) => {
                                break Err(SignalingError::Protocol("subscriber peer gone".into()));
                            }
                        }
                    }
                };
                ws.send(text(json!({"type": "subscribe_answer", "sdp": answer})))
                    .await?;
            }
            "error" => {
                let code = value["code"].as_str().unwrap_or_default().to_owned();
                warn!(room = %seat.room, %code, message = %value["message"], "server error");
                if code != "invalid_json" && code != "unknown_type" {
                    break Err(SignalingError::Refused(code));
                }
            }
            _ => {}
        }
    };
    let _ = ws.send(text(json!({"type": "leave"}))).await;
    let _ = ws.close(None).await;
    while peers.join_next().await.is_some() {}
    result
}

fn text(value: Value) -> Message {
    Message::Text(value.to_string().into())
}
