//! Keeps a subscriber's NACKs from turning into a retransmission storm.
//!
//! The `rtc` NACK responder resends every packet a NACK names, every time. On a congested
//! link the retransmissions add to the congestion, more packets are lost, and the receiver
//! asks again for all of them each round trip: retransmissions then outgrow the media many
//! times over and starve everything else on the link (signaling included). A [`NackBudget`]
//! trims each inbound NACK before the responder sees it (the inbound-RTCP interceptor in
//! [`keyframe_relay`](crate::keyframe_relay) applies it): a packet is resent at most
//! [`MAX_RESENDS`] times and not again within [`MIN_RESEND_INTERVAL`], and all resends
//! together stay within a share of the subscriber's bandwidth estimate.

use crate::bandwidth::Estimate;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{
    TransportLayerNack, nack_pairs_from_sequence_numbers,
};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Resends of one packet at most.
pub const MAX_RESENDS: u8 = 3;
/// One packet is not resent again sooner than this.
pub const MIN_RESEND_INTERVAL: Duration = Duration::from_millis(150);
/// Share of the bandwidth estimate that retransmissions may use.
const RESEND_SHARE: f64 = 0.2;
/// Size assumed for a resent packet, in bits (a full video packet).
const RESEND_PACKET_BITS: f64 = 1200.0 * 8.0;
/// Requests remembered per stream (older ones are forgotten).
const REMEMBERED: usize = 2048;

/// What a subscriber's NACKs may still ask for (see the [module docs](self)).
pub(crate) struct NackBudget {
    estimate: Estimate,
    /// (media SSRC, sequence number) → (resends so far, last resend).
    resent: HashMap<(u32, u16), (u8, Instant)>,
    order: VecDeque<(u32, u16)>,
    /// Resends the budget allows now (a token bucket), and when it was last filled.
    tokens: f64,
    filled: Option<Instant>,
}

impl NackBudget {
    pub(crate) fn new(estimate: Estimate) -> Self {
        Self {
            estimate,
            resent: HashMap::new(),
            order: VecDeque::new(),
            tokens: 0.0,
            filled: None,
        }
    }

    /// The estimate the budget is a share of.
    pub(crate) fn estimate(&self) -> &Estimate {
        &self.estimate
    }

    /// `nack` reduced to what may be resent now (noted as resent), or `None` for nothing.
    pub(crate) fn trim(
        &mut self,
        now: Instant,
        nack: &TransportLayerNack,
    ) -> Option<TransportLayerNack> {
        let allowed = self.allow(now, nack);
        (!allowed.is_empty()).then(|| TransportLayerNack {
            sender_ssrc: nack.sender_ssrc,
            media_ssrc: nack.media_ssrc,
            nacks: nack_pairs_from_sequence_numbers(&allowed),
        })
    }

    /// The sequence numbers of `nack` that may be resent now, noting them as resent.
    fn allow(&mut self, now: Instant, nack: &TransportLayerNack) -> Vec<u16> {
        let per_second = self.estimate.bps() as f64 * RESEND_SHARE / RESEND_PACKET_BITS;
        // The bucket holds a second's worth and starts full.
        let elapsed = self.filled.map_or(f64::INFINITY, |t| {
            now.saturating_duration_since(t).as_secs_f64()
        });
        self.tokens = (self.tokens + elapsed * per_second).min(per_second.max(1.0));
        self.filled = Some(now);
        let mut allowed = Vec::new();
        for seq in nack.nacks.iter().flat_map(|pair| pair.packet_list()) {
            let key = (nack.media_ssrc, seq);
            let entry = self.resent.get(&key).copied();
            let due = entry.is_none_or(|(count, at)| {
                count < MAX_RESENDS && now.saturating_duration_since(at) >= MIN_RESEND_INTERVAL
            });
            if !due || self.tokens < 1.0 {
                continue;
            }
            self.tokens -= 1.0;
            let count = entry.map_or(0, |(c, _)| c);
            if entry.is_none() {
                self.order.push_back(key);
                if self.order.len() > REMEMBERED
                    && let Some(old) = self.order.pop_front()
                {
                    self.resent.remove(&old);
                }
            }
            self.resent.insert(key, (count + 1, now));
            allowed.push(seq);
        }
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nack(seqs: &[u16]) -> TransportLayerNack {
        TransportLayerNack {
            sender_ssrc: 1,
            media_ssrc: 42,
            nacks: nack_pairs_from_sequence_numbers(seqs),
        }
    }

    #[test]
    fn a_packet_is_resent_a_few_times_and_not_in_quick_succession() {
        let t0 = Instant::now();
        let mut limiter = NackBudget::new(Estimate::new());
        let t = t0;
        assert_eq!(limiter.allow(t, &nack(&[10, 11])), vec![10, 11]);
        assert!(
            limiter
                .allow(t + Duration::from_millis(50), &nack(&[10]))
                .is_empty()
        );
        let mut later = t;
        let mut resends = 1;
        for _ in 0..6 {
            later += MIN_RESEND_INTERVAL;
            resends += limiter.allow(later, &nack(&[10])).len();
        }
        assert_eq!(resends, MAX_RESENDS as usize);
    }

    #[test]
    fn resends_stay_within_a_share_of_the_estimate() {
        let t0 = Instant::now();
        let mut limiter = NackBudget::new(Estimate::new());
        let mut total = 0;
        // Ten seconds of NACKs for 100 new packets every 100 ms.
        for i in 0..100u16 {
            let now = t0 + Duration::from_millis(100 * i as u64);
            let seqs: Vec<u16> = (i * 100..i * 100 + 100).collect();
            total += limiter.allow(now, &nack(&seqs)).len();
        }
        let per_second = crate::bandwidth::INITIAL_BPS as f64 * RESEND_SHARE / RESEND_PACKET_BITS;
        assert!(
            (total as f64) <= per_second * 10.0 + per_second,
            "{total} resends in 10 s, budget {per_second}/s"
        );
        assert!(total > 0);
    }
}
