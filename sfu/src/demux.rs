//! Which peer connection an arriving datagram belongs to, on a socket that every peer shares.
//!
//! ICE gives one field to route by: the USERNAME of each STUN binding request, which starts
//! with the ufrag the router issued for that peer connection. The first valid check from an
//! address binds it; DTLS, SRTP and SRTCP from that address then follow by address alone.
//! The peer connection itself verifies MESSAGE-INTEGRITY, so a forged username only reaches
//! a connection that rejects it.

use crate::ParticipantId;
use rtc::stun::attributes::ATTR_USERNAME;
use rtc::stun::message::{Message, is_stun_message};
use rtc::stun::textattrs::Username;
use std::collections::HashMap;
use std::net::SocketAddr;

/// Which of a participant's two peer connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PcKind {
    /// The client offers; carries what the participant sends.
    Publisher,
    /// The router offers; carries what the participant receives.
    Subscriber,
}

/// A peer connection's address in the router.
pub type PcKey = (ParticipantId, PcKind);

/// Routes datagrams to peer connections by ICE ufrag, then by remote address.
#[derive(Debug, Default)]
pub struct Demuxer {
    by_ufrag: HashMap<String, PcKey>,
    by_addr: HashMap<SocketAddr, PcKey>,
}

impl Demuxer {
    /// Registers the local ufrag a peer connection answers to, replacing the one it had
    /// before (an ICE restart issues a new one).
    pub fn register(&mut self, ufrag: String, key: PcKey) {
        self.by_ufrag.retain(|_, k| *k != key);
        self.by_ufrag.insert(ufrag, key);
    }

    /// Forgets everything about a participant's peer connections.
    pub fn remove_participant(&mut self, id: ParticipantId) {
        self.by_ufrag.retain(|_, key| key.0 != id);
        self.by_addr.retain(|_, key| key.0 != id);
    }

    /// The peer connection a datagram from `from` is for, if any.
    pub fn route(&mut self, from: SocketAddr, datagram: &[u8]) -> Option<PcKey> {
        if is_stun_message(datagram)
            && let Some(key) = self.route_stun(datagram)
        {
            // A (re)bound address: a new path, or an ICE restart from the same address.
            self.by_addr.insert(from, key);
            return Some(key);
        }
        self.by_addr.get(&from).copied()
    }

    fn route_stun(&self, datagram: &[u8]) -> Option<PcKey> {
        let mut message = Message::new();
        message.unmarshal_binary(datagram).ok()?;
        let username = Username::get_from_as(&message, ATTR_USERNAME).ok()?;
        let local_ufrag = username.text.split_once(':')?.0;
        self.by_ufrag.get(local_ufrag).copied()
    }

    /// How many addresses are bound (for metrics and tests).
    pub fn bound_addresses(&self) -> usize {
        self.by_addr.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::stun::message::{BINDING_REQUEST, Setter};
    use rtc::stun::textattrs::TextAttribute;

    fn binding_request(username: &str) -> Vec<u8> {
        let mut m = Message::new();
        m.set_type(BINDING_REQUEST);
        m.new_transaction_id().unwrap();
        TextAttribute::new(ATTR_USERNAME, username.to_owned())
            .add_to(&mut m)
            .unwrap();
        m.encode();
        m.raw.clone()
    }

    #[test]
    fn stun_username_binds_the_address_then_other_packets_follow_it() {
        let mut demux = Demuxer::default();
        let key = (ParticipantId(7), PcKind::Subscriber);
        demux.register("abcd1234".into(), key);
        let from: SocketAddr = "127.0.0.1:40000".parse().unwrap();

        // DTLS before any check: unknown.
        assert_eq!(demux.route(from, &[22, 254, 253, 0, 0]), None);
        assert_eq!(
            demux.route(from, &binding_request("abcd1234:remote")),
            Some(key)
        );
        assert_eq!(demux.route(from, &[22, 254, 253, 0, 0]), Some(key));
        // Another address is not bound by the first one's check.
        let other: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        assert_eq!(demux.route(other, &[128, 96, 0, 1]), None);
    }

    #[test]
    fn unknown_ufrag_and_garbage_are_not_routed() {
        let mut demux = Demuxer::default();
        demux.register("abcd1234".into(), (ParticipantId(1), PcKind::Publisher));
        let from: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        assert_eq!(demux.route(from, &binding_request("zzzz:remote")), None);
        assert_eq!(demux.route(from, &binding_request("no-colon")), None);
        assert_eq!(demux.route(from, b"\x00\x01garbage that is not stun"), None);
        assert_eq!(demux.route(from, &[]), None);
    }

    #[test]
    fn a_new_ufrag_replaces_the_old_one() {
        let mut demux = Demuxer::default();
        let key = (ParticipantId(3), PcKind::Subscriber);
        demux.register("oldufrag".into(), key);
        demux.register("newufrag".into(), key);
        let from: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        assert_eq!(demux.route(from, &binding_request("oldufrag:x")), None);
        assert_eq!(demux.route(from, &binding_request("newufrag:x")), Some(key));
    }

    #[test]
    fn removing_a_participant_unbinds_its_addresses() {
        let mut demux = Demuxer::default();
        let key = (ParticipantId(9), PcKind::Publisher);
        demux.register("ufragufrag".into(), key);
        let from: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        demux.route(from, &binding_request("ufragufrag:x"));
        assert_eq!(demux.bound_addresses(), 1);
        demux.remove_participant(ParticipantId(9));
        assert_eq!(demux.bound_addresses(), 0);
        assert_eq!(demux.route(from, &binding_request("ufragufrag:x")), None);
    }
}
