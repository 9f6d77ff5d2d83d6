//! Which peer connection an arriving datagram belongs to, on a socket that every peer shares.
//!
//! ICE gives one field to route by: the USERNAME of each STUN binding request, which starts
//! with the ufrag the router issued for that peer connection. The first valid check from an
//! address binds it; DTLS, SRTP and SRTCP from that address then follow by address alone.
//! The peer connection itself verifies MESSAGE-INTEGRITY, so a forged username only reaches
//! a connection that rejects it.
//!
//! **One path per peer connection.** A browser with several addresses (two interfaces, a VPN,
//! loopback beside a LAN address) checks a pair from each, and may move its media to another
//! pair after the first was nominated. The `rtc` crate's ICE agent keeps the first pair it
//! selected, so after such a move it sees no traffic on its pair, declares the connection
//! disconnected after 5 s, and the browser stops reading what it sends (seen in the
//! end-to-end tests: a participant's media stopped 5 s into the call). So a peer
//! connection's path is the address its DTLS and media first came from, and while that path
//! carries traffic, checks with the same credentials from any other address are not
//! answered: the browser cannot move to a pair the server would not follow. An ICE
//! restart's checks (new credentials) always get through. A path silent for [`PATH_SILENT_AFTER`]
//! gives way to the next address (a network change, which the page follows with an ICE
//! restart).
//!
//! **UDP before TCP.** While a peer connection's checks over UDP get through, its checks over
//! TCP (ICE-TCP, for clients whose UDP is blocked) go unanswered, so a browser that can use
//! UDP never settles on a TCP pair that happened to become usable first. A TCP path already
//! carrying the connection keeps its answers: the `rtc` agent would not follow a move.

use crate::ParticipantId;
use rtc::stun::attributes::ATTR_USERNAME;
use rtc::stun::message::{Message, is_stun_message};
use rtc::stun::textattrs::Username;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A peer connection's path that carried nothing for this long may be replaced by another.
pub const PATH_SILENT_AFTER: Duration = Duration::from_secs(2);

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
    by_addr: HashMap<SocketAddr, Path>,
    /// Each peer connection's current path.
    current: HashMap<PcKey, SocketAddr>,
    /// When each peer connection last had a check over UDP answered, and its credentials.
    last_udp_check: HashMap<PcKey, (Instant, String)>,
}

/// An address bound to a peer connection, and when it last carried a datagram.
#[derive(Debug, Clone)]
struct Path {
    key: PcKey,
    last_seen: Instant,
    /// Whether it is its peer connection's current path.
    current: bool,
    /// The local ufrag of its last check (an ICE restart brings a new one).
    ufrag: String,
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
        self.by_addr.retain(|_, path| path.key.0 != id);
        self.current.retain(|key, _| key.0 != id);
        self.last_udp_check.retain(|key, _| key.0 != id);
    }

    /// The peer connection a datagram from `from` (over TCP: `tcp`) is for, if any.
    pub fn route(
        &mut self,
        now: Instant,
        from: SocketAddr,
        tcp: bool,
        datagram: &[u8],
    ) -> Option<PcKey> {
        if is_stun_message(datagram)
            && let Some((key, ufrag)) = self.route_stun(datagram)
        {
            // A browser whose checks over UDP get through uses UDP: its checks over TCP (for
            // clients whose UDP is blocked) go unanswered meanwhile, so its media never takes
            // a TCP pair just because it became usable first. A TCP path already in use keeps
            // its answers (its consent checks), as the `rtc` agent keeps the pair it selected.
            if tcp
                && self.current.get(&key) != Some(&from)
                && self.last_udp_check.get(&key).is_some_and(|(at, u)| {
                    *u == ufrag && now.saturating_duration_since(*at) < PATH_SILENT_AFTER
                })
            {
                return None;
            }
            // Only checks with the current path's credentials are held: an ICE restart's
            // (new ufrag, often from new ports) must get through while the old path still
            // carries the media.
            let same_credentials = self
                .current
                .get(&key)
                .and_then(|addr| self.by_addr.get(addr))
                .is_some_and(|path| path.ufrag == ufrag);
            if same_credentials && self.held_elsewhere(now, key, from) {
                return None;
            }
            if !tcp {
                self.last_udp_check.insert(key, (now, ufrag.clone()));
            }
            // A (re)bound address: a new path, or an ICE restart from the same address.
            let current = self.current.get(&key) == Some(&from);
            self.by_addr.insert(
                from,
                Path {
                    key,
                    last_seen: now,
                    current,
                    ufrag,
                },
            );
            return Some(key);
        }
        let path = self.by_addr.get_mut(&from)?;
        path.last_seen = now;
        let key = path.key;
        if path.current {
            return Some(key);
        }
        // DTLS and media go over the pair the browser uses: that address becomes the path,
        // unless another one carries traffic.
        if !self.held_elsewhere(now, key, from) {
            if let Some(old) = self.current.insert(key, from)
                && let Some(old) = self.by_addr.get_mut(&old)
            {
                old.current = false;
            }
            if let Some(path) = self.by_addr.get_mut(&from) {
                path.current = true;
            }
        }
        Some(key)
    }

    /// Whether `key`'s current path is another address that carried traffic lately.
    fn held_elsewhere(&self, now: Instant, key: PcKey, from: SocketAddr) -> bool {
        self.current.get(&key).is_some_and(|addr| {
            *addr != from
                && self.by_addr.get(addr).is_some_and(|path| {
                    path.key == key
                        && now.saturating_duration_since(path.last_seen) < PATH_SILENT_AFTER
                })
        })
    }

    /// The peer connection a STUN check is for, by its USERNAME, and the local ufrag in it.
    fn route_stun(&self, datagram: &[u8]) -> Option<(PcKey, String)> {
        let mut message = Message::new();
        message.unmarshal_binary(datagram).ok()?;
        let username = Username::get_from_as(&message, ATTR_USERNAME).ok()?;
        let local_ufrag = username.text.split_once(':')?.0;
        let key = self.by_ufrag.get(local_ufrag).copied()?;
        Some((key, local_ufrag.to_owned()))
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
        let t0 = Instant::now();
        let mut demux = Demuxer::default();
        let key = (ParticipantId(7), PcKind::Subscriber);
        demux.register("abcd1234".into(), key);
        let from: SocketAddr = "127.0.0.1:40000".parse().unwrap();

        // DTLS before any check: unknown.
        assert_eq!(demux.route(t0, from, false, &[22, 254, 253, 0, 0]), None);
        assert_eq!(
            demux.route(t0, from, false, &binding_request("abcd1234:remote")),
            Some(key)
        );
        assert_eq!(
            demux.route(t0, from, false, &[22, 254, 253, 0, 0]),
            Some(key)
        );
        // Another address is not bound by the first one's check.
        let other: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        assert_eq!(demux.route(t0, other, false, &[128, 96, 0, 1]), None);
    }

    #[test]
    fn tcp_checks_go_unanswered_while_udp_checks_get_through() {
        let t0 = Instant::now();
        let mut demux = Demuxer::default();
        let key = (ParticipantId(4), PcKind::Publisher);
        demux.register("ufragudp".into(), key);
        let udp: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let tcp: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        // A client without UDP: TCP checks are answered.
        assert_eq!(
            demux.route(t0, tcp, true, &binding_request("ufragudp:x")),
            Some(key)
        );
        // Its UDP checks get through, so its TCP ones are no longer answered.
        assert_eq!(
            demux.route(t0, udp, false, &binding_request("ufragudp:x")),
            Some(key)
        );
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(
            demux.route(t1, tcp, true, &binding_request("ufragudp:x")),
            None
        );
        // UDP stopped (a firewall, a new network): TCP is answered again.
        let t2 = t0 + PATH_SILENT_AFTER + Duration::from_millis(1);
        assert_eq!(
            demux.route(t2, tcp, true, &binding_request("ufragudp:x")),
            Some(key)
        );
    }

    #[test]
    fn a_tcp_path_in_use_keeps_its_answers_while_udp_checks_get_through() {
        let t0 = Instant::now();
        let mut demux = Demuxer::default();
        let key = (ParticipantId(6), PcKind::Publisher);
        demux.register("ufragtcp".into(), key);
        let udp: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let tcp: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        let check = binding_request("ufragtcp:x");
        // TCP came first and carries DTLS: it is the path.
        assert_eq!(demux.route(t0, tcp, true, &check), Some(key));
        assert_eq!(demux.route(t0, tcp, true, &[22, 254, 253, 0, 0]), Some(key));
        // UDP checks arrive later; the TCP path's own checks are still answered.
        let t1 = t0 + Duration::from_millis(300);
        assert_eq!(
            demux.route(t1, udp, false, &check),
            None,
            "held: TCP carries it"
        );
        assert_eq!(demux.route(t1, tcp, true, &check), Some(key));
    }

    #[test]
    fn unknown_ufrag_and_garbage_are_not_routed() {
        let t0 = Instant::now();
        let mut demux = Demuxer::default();
        demux.register("abcd1234".into(), (ParticipantId(1), PcKind::Publisher));
        let from: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        assert_eq!(
            demux.route(t0, from, false, &binding_request("zzzz:remote")),
            None
        );
        assert_eq!(
            demux.route(t0, from, false, &binding_request("no-colon")),
            None
        );
        assert_eq!(
            demux.route(t0, from, false, b"\x00\x01garbage that is not stun"),
            None
        );
        assert_eq!(demux.route(t0, from, false, &[]), None);
    }

    #[test]
    fn a_new_ufrag_replaces_the_old_one() {
        let t0 = Instant::now();
        let mut demux = Demuxer::default();
        let key = (ParticipantId(3), PcKind::Subscriber);
        demux.register("oldufrag".into(), key);
        demux.register("newufrag".into(), key);
        let from: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        assert_eq!(
            demux.route(t0, from, false, &binding_request("oldufrag:x")),
            None
        );
        assert_eq!(
            demux.route(t0, from, false, &binding_request("newufrag:x")),
            Some(key)
        );
    }

    #[test]
    fn removing_a_participant_unbinds_its_addresses() {
        let t0 = Instant::now();
        let mut demux = Demuxer::default();
        let key = (ParticipantId(9), PcKind::Publisher);
        demux.register("ufragufrag".into(), key);
        let from: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        demux.route(t0, from, false, &binding_request("ufragufrag:x"));
        assert_eq!(demux.bound_addresses(), 1);
        demux.remove_participant(ParticipantId(9));
        assert_eq!(demux.bound_addresses(), 0);
        assert_eq!(
            demux.route(t0, from, false, &binding_request("ufragufrag:x")),
            None
        );
    }

    #[test]
    fn a_second_address_is_not_answered_while_the_first_carries_media() {
        let t0 = Instant::now();
        let mut demux = Demuxer::default();
        let key = (ParticipantId(5), PcKind::Subscriber);
        demux.register("ufrag5".into(), key);
        let lan: SocketAddr = "10.0.0.2:50000".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:50001".parse().unwrap();
        let check = binding_request("ufrag5:remote");
        // Before any media both paths may be checked.
        assert_eq!(demux.route(t0, lan, false, &check), Some(key));
        assert_eq!(demux.route(t0, lo, false, &check), Some(key));
        // DTLS over the LAN pair makes it the path.
        assert_eq!(
            demux.route(t0, lan, false, &[22, 254, 253, 0, 0]),
            Some(key)
        );
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(
            demux.route(at(100), lan, false, &[128, 96, 0, 1]),
            Some(key)
        );
        // The loopback pair's checks go unanswered while the LAN pair carries media, and its
        // datagrams do not move the path.
        assert_eq!(demux.route(at(1000), lo, false, &check), None);
        assert_eq!(
            demux.route(at(1100), lo, false, &[128, 96, 0, 1]),
            Some(key)
        );
        assert_eq!(
            demux.route(at(1900), lo, false, &check),
            None,
            "the LAN path still carries media"
        );
        // The LAN path falls silent (the network changed): the other address takes over.
        assert_eq!(demux.route(at(1100 + 2100), lo, false, &check), Some(key));
        assert_eq!(
            demux.route(at(3300), lo, false, &[128, 96, 0, 1]),
            Some(key)
        );
        assert_eq!(
            demux.route(at(3400), lan, false, &check),
            None,
            "now the LAN pair is the other one"
        );
    }

    #[test]
    fn an_ice_restart_from_a_new_port_gets_through_while_the_old_path_carries_media() {
        let t0 = Instant::now();
        let mut demux = Demuxer::default();
        let key = (ParticipantId(6), PcKind::Subscriber);
        demux.register("before".into(), key);
        let old: SocketAddr = "10.0.0.2:50000".parse().unwrap();
        let new: SocketAddr = "10.0.0.2:50002".parse().unwrap();
        assert_eq!(
            demux.route(t0, old, false, &binding_request("before:r1")),
            Some(key)
        );
        assert_eq!(demux.route(t0, old, false, &[128, 96, 0, 1]), Some(key));
        assert_eq!(
            demux.route(t0, new, false, &binding_request("before:r1")),
            None
        );
        demux.register("after".into(), key);
        assert_eq!(
            demux.route(t0, new, false, &binding_request("after:r2")),
            Some(key)
        );
        assert_eq!(demux.route(t0, new, false, &[128, 96, 0, 1]), Some(key));
    }
}
