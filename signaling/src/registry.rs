//! Who is in which room: the signaling side's record of rooms and participants, and the
//! channel to each participant's WebSocket session.

use crate::protocol::{
    ErrorCode, LeaveReason, ParticipantView, ProtocolError, RecordingStatus, ServerMessage,
};
use crate::resume::{Detached, Epoch, ResumeToken, Suspensions};
use serde::Serialize;
use sfu::ParticipantId;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
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
    /// A new socket has resumed the participant: close without leaving.
    Replaced,
}

/// A participant admitted or resumed on a socket.
#[derive(Debug)]
pub struct Admission {
    /// The participant.
    pub view: ParticipantView,
    /// The others in the room now.
    pub others: Vec<ParticipantView>,
    /// The socket's epoch (see [`Suspensions`]).
    pub epoch: Epoch,
    /// The secret that resumes it on the next socket.
    pub resume_token: ResumeToken,
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
    resume_token: ResumeToken,
}

struct Inner {
    rooms: HashMap<String, Room>,
    members: HashMap<ParticipantId, Member>,
    /// Recordings in progress by room (a room emptied while recorded stays here until its
    /// recording is stopped).
    recordings: HashMap<String, RecordingStatus>,
    /// Which socket each member is on, or until when it is suspended.
    suspensions: Suspensions,
}

impl Inner {
    fn new(resume_window: Duration) -> Self {
        Self {
            rooms: HashMap::new(),
            members: HashMap::new(),
            recordings: HashMap::new(),
            suspensions: Suspensions::new(resume_window),
        }
    }

    /// Others of `id`'s room, as views.
    fn others(&self, room: &str, id: ParticipantId) -> Vec<ParticipantView> {
        self.rooms
            .get(room)
            .map_or(&[][..], |r| &r.members[..])
            .iter()
            .filter(|m| **m != id)
            .filter_map(|m| self.members.get(m))
            .map(|m| m.view.clone())
            .collect()
    }

    /// Removes a participant and tells the others why it left.
    fn remove(&mut self, id: ParticipantId, reason: LeaveReason) -> bool {
        self.suspensions.forget(id);
        let Some(member) = self.members.remove(&id) else {
            return false;
        };
        let mut others = Vec::new();
        if let Some(room) = self.rooms.get_mut(&member.room) {
            room.members.retain(|m| *m != id);
            others = room.members.clone();
            if room.members.is_empty()
                && !room.closed
                && room.max_participants.is_none()
                && !room.record
            {
                self.rooms.remove(&member.room);
            }
        }
        for other in others {
            if let Some(m) = self.members.get(&other) {
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
pub struct Registry {
    inner: Mutex<Inner>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new(crate::resume::DEFAULT_RESUME_WINDOW)
    }
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
    /// An empty registry whose participants may resume for `resume_window` after losing
    /// their socket (zero: never).
    pub fn new(resume_window: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner::new(resume_window)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("registry lock")
    }

    /// Admits a participant to `room` (creating the room on first use) on the socket of
    /// `session` and tells the others.
    pub fn admit(
        &self,
        view: ParticipantView,
        room: &str,
        session: mpsc::Sender<SessionSignal>,
    ) -> Result<Admission, ProtocolError> {
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
        let resume_token = ResumeToken::random();
        let epoch = inner.suspensions.attach(view.id);
        inner.members.insert(
            view.id,
            Member {
                view: view.clone(),
                room: room.to_owned(),
                joined_at_ms: now_ms(),
                session,
                muted: HashSet::new(),
                resume_token: resume_token.clone(),
            },
        );
        Ok(Admission {
            view,
            others: views,
            epoch,
            resume_token,
        })
    }

    /// Removes a participant and tells the others why it left. Returns whether it was there.
    pub fn remove(&self, id: ParticipantId, reason: LeaveReason) -> bool {
        self.lock().remove(id, reason)
    }

    /// Removes a participant if `epoch` is still its socket (a socket that another has
    /// taken over removes nobody). Returns whether it was removed.
    pub fn depart(&self, id: ParticipantId, epoch: Epoch, reason: LeaveReason) -> bool {
        let mut inner = self.lock();
        inner.suspensions.is_current(id, epoch) && inner.remove(id, reason)
    }

    /// The socket of `epoch` ended without `leave` at `now`: suspends the participant, or
    /// removes it at once (reason `disconnected`) when resume is off.
    pub fn detach(&self, id: ParticipantId, epoch: Epoch, now: Instant) -> Detached {
        let mut inner = self.lock();
        let outcome = inner.suspensions.detach(id, epoch, now);
        if outcome == Detached::Remove {
            inner.remove(id, LeaveReason::Disconnected);
        }
        outcome
    }

    /// Removes a participant whose suspension of `epoch` has run out at `now` (reason
    /// `disconnected`). Returns whether it was removed.
    pub fn expire(&self, id: ParticipantId, epoch: Epoch, now: Instant) -> bool {
        let mut inner = self.lock();
        inner.suspensions.expire(id, epoch, now) && inner.remove(id, LeaveReason::Disconnected)
    }

    /// Whether a participant is suspended (its socket lost, within the resume window).
    pub fn is_suspended(&self, id: ParticipantId) -> bool {
        self.lock().suspensions.is_suspended(id)
    }

    /// Participants suspended now.
    pub fn suspended_count(&self) -> usize {
        self.lock().suspensions.suspended_count()
    }

    /// Attaches participant `id` of `room` to a new socket, `session`, if `resume_token` is
    /// its secret and `identity` and `role` (from the new socket's join token) are its own;
    /// an old socket still open is told to close without leaving. The others are not told.
    pub fn resume(
        &self,
        id: ParticipantId,
        room: &str,
        (identity, role): (&str, &str),
        resume_token: &str,
        session: mpsc::Sender<SessionSignal>,
        now: Instant,
    ) -> Result<Admission, ProtocolError> {
        let failed = |why: &str| ProtocolError::new(ErrorCode::ResumeFailed, why);
        let mut inner = self.lock();
        let Some(member) = inner.members.get(&id).filter(|m| m.room == room) else {
            return Err(failed(
                "no such participant in this room (it left, or its resume window ended); join again",
            ));
        };
        if !member.resume_token.matches(resume_token) {
            return Err(failed("wrong resume token; join again"));
        }
        if member.view.identity != identity || member.view.role != role {
            return Err(failed(
                "the token is for another identity or role; join again",
            ));
        }
        if inner.rooms.get(room).is_some_and(|r| r.closed) {
            return Err(ProtocolError::new(
                ErrorCode::RoomClosed,
                "this room has been closed",
            ));
        }
        let epoch = inner
            .suspensions
            .resume(id, now)
            .map_err(|e| failed(&format!("{e}; join again")))?;
        let resume_token = ResumeToken::random();
        let member = inner.members.get_mut(&id).expect("checked above");
        let old = std::mem::replace(&mut member.session, session);
        member.resume_token = resume_token.clone();
        let view = member.view.clone();
        deliver(&old, SessionSignal::Replaced);
        Ok(Admission {
            others: inner.others(room, id),
            view,
            epoch,
            resume_token,
        })
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
        assert!(reg.admit(view(1), "r", tx1).unwrap().others.is_empty());
        let others = reg.admit(view(2), "r", tx2).unwrap().others;
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
    fn a_lost_socket_suspends_silently_and_resume_takes_the_participant_over() {
        let reg = Registry::new(Duration::from_secs(30));
        let t0 = Instant::now();
        let (tx1, mut rx1) = mpsc::channel(8);
        let (tx2, mut rx2) = mpsc::channel(8);
        reg.admit(view(1), "r", tx1).unwrap();
        let second = reg.admit(view(2), "r", tx2).unwrap();
        let _ = rx1.try_recv(); // participant_joined
        assert!(matches!(
            reg.detach(ParticipantId(2), second.epoch, t0),
            Detached::Suspended { .. }
        ));
        assert!(reg.is_suspended(ParticipantId(2)));
        assert!(rx1.try_recv().is_err(), "the others are not told");
        assert_eq!(reg.participants("r").unwrap().len(), 2);

        let who = ("user2", "clinic");
        let resume = |token: &str, id: u64, room: &str, at: Instant| {
            let (tx, _rx) = mpsc::channel(8);
            reg.resume(ParticipantId(id), room, who, token, tx, at)
                .map(|a| a.epoch)
                .map_err(|e| e.code)
        };
        let secret = second.resume_token.as_str().to_owned();
        assert_eq!(resume("00", 2, "r", t0), Err(ErrorCode::ResumeFailed));
        assert_eq!(resume(&secret, 9, "r", t0), Err(ErrorCode::ResumeFailed));
        assert_eq!(
            resume(&secret, 2, "other", t0),
            Err(ErrorCode::ResumeFailed)
        );
        let (tx, _rx) = mpsc::channel(8);
        assert_eq!(
            reg.resume(
                ParticipantId(2),
                "r",
                ("mallory", "clinic"),
                &secret,
                tx,
                t0
            )
            .unwrap_err()
            .code,
            ErrorCode::ResumeFailed,
            "another identity's token does not resume it"
        );
        let (tx3, _rx3) = mpsc::channel(8);
        let third = reg
            .resume(
                ParticipantId(2),
                "r",
                who,
                &secret,
                tx3,
                t0 + Duration::from_secs(5),
            )
            .unwrap();
        assert_eq!(third.others, vec![view(1)]);
        assert_ne!(
            third.resume_token.as_str(),
            secret,
            "a new secret each time"
        );
        assert!(matches!(rx2.try_recv().unwrap(), SessionSignal::Replaced));
        assert!(!reg.is_suspended(ParticipantId(2)));
        // The old socket's end and its suspension's deadline change nothing now.
        assert_eq!(
            reg.detach(ParticipantId(2), second.epoch, t0),
            Detached::Stale
        );
        assert!(!reg.expire(ParticipantId(2), second.epoch, t0 + Duration::from_secs(60)));
        assert!(!reg.depart(ParticipantId(2), second.epoch, LeaveReason::Left));
        assert!(rx1.try_recv().is_err(), "still nobody was told");
        assert_eq!(
            resume(&secret, 2, "r", t0),
            Err(ErrorCode::ResumeFailed),
            "the old secret is spent"
        );
    }

    #[test]
    fn the_end_of_the_window_removes_the_participant_and_a_late_resume_fails() {
        let window = Duration::from_secs(30);
        let reg = Registry::new(window);
        let t0 = Instant::now();
        let (tx1, mut rx1) = mpsc::channel(8);
        let (tx2, _rx2) = mpsc::channel(8);
        reg.admit(view(1), "r", tx1).unwrap();
        let second = reg.admit(view(2), "r", tx2).unwrap();
        let _ = rx1.try_recv();
        reg.detach(ParticipantId(2), second.epoch, t0);
        let (tx, _rx) = mpsc::channel(8);
        let late = reg.resume(
            ParticipantId(2),
            "r",
            ("user2", "clinic"),
            second.resume_token.as_str(),
            tx,
            t0 + window,
        );
        assert_eq!(late.unwrap_err().code, ErrorCode::ResumeFailed);
        assert!(reg.expire(ParticipantId(2), second.epoch, t0 + window));
        assert!(matches!(
            rx1.try_recv().unwrap(),
            SessionSignal::Send(ServerMessage::ParticipantLeft {
                reason: LeaveReason::Disconnected,
                ..
            })
        ));
        assert_eq!(reg.participants("r").unwrap().len(), 1);

        // With resume off, a lost socket removes at once.
        let off = Registry::new(Duration::ZERO);
        let (tx, _rx) = mpsc::channel(8);
        let a = off.admit(view(3), "q", tx).unwrap();
        assert_eq!(off.detach(ParticipantId(3), a.epoch, t0), Detached::Remove);
        assert!(off.participants("q").is_none());
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
