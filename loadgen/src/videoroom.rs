//! The scenario on Janus's VideoRoom: one Janus session per participant, one publisher
//! handle per publisher, and one subscriber handle per (receiver, feed).

use crate::janus::{JanusClient, JanusError};
use crate::peer::{ClientPeer, MediaPlan, Origin, Timing};
use crate::stats::SendLog;
use crate::{Clip, Scenario};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// The first room id used in Janus.
const FIRST_ROOM: u64 = 4_200;

/// Publishes every publisher of every room, then subscribes every receiver to each feed of
/// its room; the peers run in `tasks` until `stop`.
pub(crate) async fn fill_rooms(
    scenario: &Scenario,
    clip: &Arc<Clip>,
    logs: &Arc<Vec<SendLog>>,
    timing: &Timing,
    stop: &watch::Receiver<bool>,
    tasks: &mut JoinSet<Result<(), String>>,
    gap: Duration,
) -> Result<(), JanusError> {
    let url = format!("ws://{}", scenario.server);
    let admin = JanusClient::connect(&url).await?;
    let mut feeds: Vec<Vec<(usize, u64)>> = Vec::new();
    for r in 0..scenario.rooms {
        let room = FIRST_ROOM + r as u64;
        admin
            .create_room(room, (scenario.publishers + 1) as u32)
            .await?;
        let mut room_feeds = Vec::new();
        for k in 0..scenario.publishers {
            let index = r * scenario.publishers + k;
            let client = JanusClient::connect(&url).await?;
            let mut peer = ClientPeer::new(Instant::now())
                .await
                .map_err(|e| JanusError::Protocol(e.to_string()))?;
            let (offer, tracks) = peer
                .offer_tracks(index)
                .map_err(|e| JanusError::Protocol(e.to_string()))?;
            let (feed, answer) = client
                .publish(room, &format!("pub-{index}"), &offer)
                .await?;
            peer.accept_answer(answer)
                .map_err(|e| JanusError::Protocol(e.to_string()))?;
            let plan = MediaPlan {
                clip: clip.clone(),
                tracks,
                log: logs.clone(),
                index,
            };
            let (idle, offers) = mpsc::channel(1);
            let (timing, stop) = (timing.clone(), stop.clone());
            tasks.spawn(async move {
                peer.run(Some(plan), timing, Origin::Fixed(index), offers, stop)
                    .await;
                drop(idle);
                let _ = client.close().await;
                Ok(())
            });
            room_feeds.push((index, feed));
            tokio::time::sleep(gap).await;
        }
        feeds.push(room_feeds);
    }
    for (r, room_feeds) in feeds.iter().enumerate() {
        let room = FIRST_ROOM + r as u64;
        let receivers = room_feeds
            .iter()
            .map(|&(index, _)| Some(index))
            .chain((0..scenario.subscribers).map(|_| None));
        for me in receivers {
            let client = Arc::new(JanusClient::connect(&url).await?);
            for &(publisher, feed) in room_feeds.iter().filter(|(p, _)| Some(*p) != me) {
                let (handle, offer) = client.subscribe(room, &[feed]).await?;
                let mut peer = ClientPeer::new(Instant::now())
                    .await
                    .map_err(|e| JanusError::Protocol(e.to_string()))?;
                let answer = peer
                    .answer(offer)
                    .map_err(|e| JanusError::Protocol(e.to_string()))?;
                client.start(handle, &answer).await?;
                let (idle, offers) = mpsc::channel(1);
                let (timing, stop, client) = (timing.clone(), stop.clone(), client.clone());
                tasks.spawn(async move {
                    peer.run(None, timing, Origin::Fixed(publisher), offers, stop)
                        .await;
                    drop((idle, client));
                    Ok(())
                });
            }
            tokio::time::sleep(gap).await;
        }
    }
    // The rooms live as long as the admin session; it ends with the run.
    let mut stop = stop.clone();
    tasks.spawn(async move {
        let _ = stop.wait_for(|s| *s).await;
        let _ = admin.close().await;
        Ok(())
    });
    Ok(())
}
