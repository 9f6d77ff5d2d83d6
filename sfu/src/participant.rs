//! Participants as the router knows them.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Identifies one participant for as long as it is in a room. Chosen by signaling; rendered
/// as `p` followed by hexadecimal digits, which is also the `a=msid` stream id of its tracks
/// in other participants' subscriber connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct ParticipantId(pub u64);

impl ParticipantId {
    /// A fresh random id.
    pub fn random() -> Self {
        Self(rand::random::<u64>() >> 16)
    }
}

impl fmt::Display for ParticipantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{:x}", self.0)
    }
}

impl FromStr for ParticipantId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.strip_prefix('p')
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            .map(ParticipantId)
            .ok_or_else(|| format!("not a participant id: {s:?}"))
    }
}

impl From<ParticipantId> for String {
    fn from(id: ParticipantId) -> Self {
        id.to_string()
    }
}

impl TryFrom<String> for ParticipantId {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// What the router needs to know about a participant when it joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantInfo {
    /// Its id, unique in the router.
    pub id: ParticipantId,
    /// The room it joins; media is forwarded only within a room.
    pub room: String,
    /// Display name from the join token (shown to others, never logged).
    pub identity: String,
    /// Role from the join token, passed through to others' track lists.
    pub role: String,
    /// Whether its publish offers are accepted.
    pub can_publish: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn participant_id_round_trips_through_its_text_form() {
        let id = ParticipantId(0xabc123);
        assert_eq!(id.to_string(), "pabc123");
        assert_eq!("pabc123".parse::<ParticipantId>().unwrap(), id);
        assert!("xabc".parse::<ParticipantId>().is_err());
        assert!("p".parse::<ParticipantId>().is_err());
    }
}
