//! Who is in which room: the signaling side's record of rooms and participants, and the
//! channel to each participant's WebSocket session.

use crate::protocol::{
    ErrorCode, LeaveReason, ParticipantView, ProtocolError, RecordingStatus, ServerMessage,
};
use serde::Serialize;
use sfu::ParticipantId;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tracing::debug;

/// Messages queued for one session before further ones are dropped (a session that does
/// not drain its socket is cut off by the liveness check).
pub const SESSION_QUEUE: usize = 256;

/// What a session is told to do.
#[derive(Debug, Clone)]
pub enum SessionSignal {
    /// Send this message.
    Send(ServerMessage),
    /// Send this error and close; the participant leaves for `reason`.
    Close(ProtocolError, LeaveReason),
}

/// A room as the REST API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RoomView {
    /// The room name (as in tokens).
    pub name: String,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// Participant limit, if any.
    pub max_participants: Option<u32>,
    /// Participants present now.
    pub participants: u32,
    /// Whether the room is recorded whenever someone is in it.
    pub record: bool,
    /// Its recording in progress, if any.
    pub recording: Option<RecordingStatus>,
}

/// A participant as the REST API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ParticipantDetail {
    /// Id, identity and role.
    #[serde(flatten)]
    pub participant: ParticipantView,
    /// Join time, milliseconds since the Unix epoch.
    pub joined_at_ms: u64,
}

struct Room {
    created_at_ms: u64,
    max_participants: Option<u32>,
    members: Vec<ParticipantId>,
    closed: bool,
    /// Recorded from the start (created so by the REST API).
    record: bool,
}

impl Room {
    fn new() -> Self {
        Self {
            created_at_ms: now_ms(),
            max_participants: None,
            members: Vec::new(),
            closed: false,
            record: false,
        }
    }
}

struct Member {
    view: ParticipantView,
    room: String,
    joined_at_ms: u64,
    session: mpsc::Sender<SessionSignal>,
    muted: HashSet<String>,
}

#[derive(Default)]
struct Inner {
    rooms: HashMap<String, Room>,
    members: HashMap<ParticipantId, Member>,
    /// Recordings in progress by room (a room emptied while recorded stays here until its
    /// recording is stopped).
    recordings: HashMap<String, RecordingStatus>,
}

impl Inner {
    /// Queues `message` for everyone in `room`.
    fn broadcast(&self, room: &str, message: &ServerMessage) {
        let members = self.rooms.get(room).map_or(&[][..], |r| &r.members[..]);
        for id in members {
            if let Some(m) = self.members.get(id) {
                deliver(&m.session, SessionSignal::Send(message.clone()));
            }
        }
    }

    fn view(&self, name: &str, r: &Room) -> RoomView {
        RoomView {
            name: name.to_owned(),
            created_at_ms: r.created_at_ms,
            max_participants: r.max_participants,
            participants: r.members.len() as u32,
            record: r.record,
            recording: self.recordings.get(name).cloned(),
        }
    }
}

/// Rooms and participants. All methods take the lock briefly and never await.
#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

fn deliver(session: &mpsc::Sender<SessionSignal>, signal: SessionSignal) {
    if session.try_send(signal).is_err() {
        debug!("a session's queue is full or closed; message dropped");
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("registry lock")
    }

    /// Admits a participant to `room` (creating the room on first use) and tells the others.
    /// Returns the others already present.
    pub fn admit(
        &self,
        view: ParticipantView,
        room: &str,
        session: mpsc::Sender<SessionSignal>,
    ) -> Result<Vec<ParticipantView>, ProtocolError> {
        let mut inner = self.lock();
        let entry = inner.rooms.entry(room.to_owned()).or_insert_with(Room::new);
        if entry.closed {
            return Err(ProtocolError::new(
                ErrorCode::RoomClosed,
                "this room has been closed",
            ));
        }
        if entry
            .max_participants
            .is_some_and(|max| entry.members.len() as u32 >= max)
        {
            return Err(ProtocolError::new(ErrorCode::RoomFull, "this room is full"));
        }
        entry.members.push(view.id);
        let others: Vec<ParticipantId> = entry
            .members
            .iter()
            .copied()
            .filter(|m| *m != view.id)
            .collect();
        let mut views = Vec::new();
        for other in others {
            if let Some(member) = inner.members.get(&other) {
                views.push(member.view.clone());
                deliver(
                    &member.session,
                    SessionSignal::Send(ServerMessage::ParticipantJoined {
                        participant: view.clone(),
                    }),
                );
            }
        }
        inner.members.insert(
            view.id,
            Member {
                view,
                room: room.to_owned(),
                joined_at_ms: now_ms(),
                session,
                muted: HashSet::new(),
            },
        );
        Ok(views)
    }

    /// Removes a participant and tells the others why it left. Returns whether it was there.
    pub fn remove(&self, id: ParticipantId, reason: LeaveReason) -> bool {
        let mut inner = self.lock();
        let Some(member) = inner.members.remove(&id) else {
            return false;
        };
        let mut others = Vec::new();
        if let Some(room) = inner.rooms.get_mut(&member.room) {
            room.members.retain(|m| *m != id);
            others = room.members.clone();
            if room.members.is_empty()
                && !room.closed
                && room.max_participants.is_none()
                && !room.record
            {
                inner.rooms.remove(&member.room);
            }
        }
        for other in others {
            if let Some(m) = inner.members.get(&other) {
                deliver(
                    &m.session,
                    SessionSignal::Send(ServerMessage::ParticipantLeft {
                        participant_id: id,
                        reason,
                    }),
                );
            }
        }
        true
    }

    /// Queues a signal for one participant's session.
    pub fn send(&self, id: ParticipantId, signal: SessionSignal) -> bool {
        match self.lock().members.get(&id) {
            Some(m) => {
                deliver(&m.session, signal);
                true
            }
            None => false,
        }
    }

    /// Records a mute change and tells the others in the room.
    pub fn set_muted(&self, id: ParticipantId, track_id: &str, muted: bool) {
        let mut inner = self.lock();
        let Some(member) = inner.members.get_mut(&id) else {
            return;
        };
        if muted {
            member.muted.insert(track_id.to_owned());
        } else {
            member.muted.remove(track_id);
        }
        let room = member.room.clone();
        let message = ServerMessage::TrackMuted {
            participant_id: id,
            // The id the others see in their subscriber connections.
            track_id: format!("{id}-{track_id}"),
            muted,
        };
        let others: Vec<ParticipantId> = inner
            .rooms
            .get(&room)
            .map(|r| r.members.iter().copied().filter(|m| *m != id).collect())
            .unwrap_or_default();
        for other in others {
            if let Some(m) = inner.members.get(&other) {
                deliver(&m.session, SessionSignal::Send(message.clone()));
            }
        }
    }

    /// Whether a publisher has muted one of its tracks (by the publisher's track id).
    pub fn is_muted(&self, publisher: ParticipantId, publisher_track_id: &str) -> bool {
        self.lock()
            .members
            .get(&publisher)
            .is_some_and(|m| m.muted.contains(publisher_track_id))
    }

    /// The identity of a participant, if present.
    pub fn identity(&self, id: ParticipantId) -> Option<String> {
        self.lock()
            .members
            .get(&id)
            .map(|m| m.view.identity.clone())
    }

    /// Creates (or reopens) a room with an optional participant limit, recorded whenever
    /// someone is in it if `record`.
    pub fn create_room(&self, name: &str, max_participants: Option<u32>, record: bool) -> RoomView {
        let mut inner = self.lock();
        let room = inner.rooms.entry(name.to_owned()).or_insert_with(Room::new);
        room.closed = false;
        room.max_participants = max_participants;
        room.record = record;
        let room = inner.rooms.get(name).expect("just inserted");
        inner.view(name, room)
    }

    /// Open rooms.
    pub fn rooms(&self) -> Vec<RoomView> {
        let inner = self.lock();
        let mut rooms: Vec<RoomView> = inner
            .rooms
            .iter()
            .filter(|(_, r)| !r.closed)
            .map(|(name, r)| inner.view(name, r))
            .collect();
        rooms.sort_by(|a, b| a.name.cmp(&b.name));
        rooms
    }

    /// Whether `room` is recorded whenever someone is in it.
    pub fn records_from_start(&self, room: &str) -> bool {
        self.lock().rooms.get(room).is_some_and(|r| r.record)
    }

    /// Whether nobody is in `room`.
    pub fn is_empty(&self, room: &str) -> bool {
        self.lock()
            .rooms
            .get(room)
            .is_none_or(|r| r.members.is_empty())
    }

    /// The room's recording in progress.
    pub fn recording(&self, room: &str) -> Option<RecordingStatus> {
        self.lock().recordings.get(room).cloned()
    }

    /// Sends `message` to everyone in `room`.
    pub fn broadcast(&self, room: &str, message: ServerMessage) {
        self.lock().broadcast(room, &message);
    }

    /// Notes that `room`'s recording started (`Some`) or stopped (`None`) and tells everyone
    /// in the room.
    pub fn set_recording(&self, room: &str, status: Option<RecordingStatus>) {
        let mut inner = self.lock();
        match &status {
            Some(s) => inner.recordings.insert(room.to_owned(), s.clone()),
            None => inner.recordings.remove(room),
        };
        let message = ServerMessage::Recording {
            on: status.is_some(),
            status,
        };
        inner.broadcast(room, &message);
    }

    /// Closes a room: refuses new joins and tells every session to close. Returns whether
    /// the room existed.
    pub fn close_room(&self, name: &str) -> bool {
        let mut inner = self.lock();
        let Some(room) = inner.rooms.get_mut(name) else {
            return false;
        };
        room.closed = true;
        let members = room.members.clone();
        for id in members {
            if let Some(m) = inner.members.get(&id) {
                deliver(
                    &m.session,
                    SessionSignal::Close(
                        ProtocolError::new(
                            ErrorCode::RoomClosed,
                            "the room was closed by an administrator",
                        ),
                        LeaveReason::RoomClosed,
                    ),
                );
            }
        }
        true
    }

    /// The participants of an open room, or `None` if there is no such room.
    pub fn participants(&self, room: &str) -> Option<Vec<ParticipantDetail>> {
        let inner = self.lock();
        let room = inner.rooms.get(room).filter(|r| !r.closed)?;
        Some(
            room.members
                .iter()
                .filter_map(|id| inner.members.get(id))
                .map(|m| ParticipantDetail {
                    participant: m.view.clone(),
                    joined_at_ms: m.joined_at_ms,
                })
                .collect(),
        )
    }

    /// Tells a participant of `room` that it was removed. Returns whether it was there.
    pub fn kick(&self, room: &str, id: ParticipantId) -> bool {
        let inner = self.lock();
        match inner.members.get(&id).filter(|m| m.room == room) {
            Some(m) => {
                deliver(
                    &m.session,
                    SessionSignal::Close(
                        ProtocolError::new(ErrorCode::Removed, "removed by an administrator"),
                        LeaveReason::Removed,
                    ),
                );
                true
            }
            None => false,
        }
    }

    /// (open rooms, participants) for metrics.
    pub fn counts(&self) -> (usize, usize) {
        let inner = self.lock();
        (
            inner.rooms.values().filter(|r| !r.closed).count(),
            inner.members.len(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(n: u64) -> ParticipantView {
        ParticipantView {
            id: ParticipantId(n),
            identity: format!("user{n}"),
            role: "clinic".into(),
        }
    }

    #[test]
    fn admit_tells_others_and_remove_tells_them_why() {
        let reg = Registry::default();
        let (tx1, mut rx1) = mpsc::channel(8);
        let (tx2, _rx2) = mpsc::channel(8);
        assert!(reg.admit(view(1), "r", tx1).unwrap().is_empty());
        let others = reg.admit(view(2), "r", tx2).unwrap();
        assert_eq!(others, vec![view(1)]);
        assert!(matches!(
            rx1.try_recv().unwrap(),
            SessionSignal::Send(ServerMessage::ParticipantJoined { participant }) if participant == view(2)
        ));
        assert!(reg.remove(ParticipantId(2), LeaveReason::Disconnected));
        assert!(matches!(
            rx1.try_recv().unwrap(),
            SessionSignal::Send(ServerMessage::ParticipantLeft {
                reason: LeaveReason::Disconnected,
                ..
            })
        ));
        assert!(!reg.remove(ParticipantId(2), LeaveReason::Left));
    }

    #[test]
    fn recording_state_reaches_everyone_and_outlives_an_emptied_room() {
        let reg = Registry::default();
        let room = reg.create_room("rec", None, true);
        assert!(room.record && room.recording.is_none());
        assert!(reg.records_from_start("rec"));
        let (tx, mut rx) = mpsc::channel(8);
        reg.admit(view(1), "rec", tx).unwrap();
        let status = RecordingStatus {
            recording_id: "r1".into(),
            by: "Dr Li".into(),
            since_ms: 5,
        };
        reg.set_recording("rec", Some(status.clone()));
        assert!(matches!(
            rx.try_recv().unwrap(),
            SessionSignal::Send(ServerMessage::Recording { on: true, status: Some(s) }) if s == status
        ));
        assert_eq!(reg.rooms()[0].recording.as_ref(), Some(&status));
        reg.remove(ParticipantId(1), LeaveReason::Left);
        assert!(reg.is_empty("rec"));
        assert_eq!(reg.rooms().len(), 1, "a room recorded from the start stays");
        assert_eq!(
            reg.recording("rec"),
            Some(status),
            "until its recording is stopped"
        );
        reg.set_recording("rec", None);
        assert_eq!(reg.recording("rec"), None);
        let json = serde_json::to_value(ServerMessage::Recording {
            on: true,
            status: Some(RecordingStatus {
                recording_id: "r2".into(),
                by: "api".into(),
                since_ms: 7,
            }),
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type": "recording", "on": true, "recording_id": "r2", "by": "api", "since_ms": 7})
        );
    }

    #[test]
    fn full_and_closed_rooms_refuse_joins() {
        let reg = Registry::default();
        reg.create_room("small", Some(1), false);
        let (tx, mut rx) = mpsc::channel(8);
        reg.admit(view(1), "small", tx.clone()).unwrap();
        assert_eq!(
            reg.admit(view(2), "small", tx.clone()).unwrap_err().code,
            ErrorCode::RoomFull
        );
        assert!(reg.close_room("small"));
        assert!(
            matches!(rx.try_recv().unwrap(), SessionSignal::Close(e, LeaveReason::RoomClosed) if e.code == ErrorCode::RoomClosed)
        );
        assert_eq!(
            reg.admit(view(3), "small", tx).unwrap_err().code,
            ErrorCode::RoomClosed
        );
        assert!(reg.rooms().is_empty());
    }

    #[test]
    fn kick_only_reaches_a_member_of_that_room() {
        let reg = Registry::default();
        let (tx, mut rx) = mpsc::channel(8);
        reg.admit(view(1), "a", tx).unwrap();
        assert!(!reg.kick("b", ParticipantId(1)));
        assert!(reg.kick("a", ParticipantId(1)));
        assert!(
            matches!(rx.try_recv().unwrap(), SessionSignal::Close(e, LeaveReason::Removed) if e.code == ErrorCode::Removed)
        );
    }
}
