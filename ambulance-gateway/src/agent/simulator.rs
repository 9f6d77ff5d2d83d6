//! A patient simulator: a 12-lead ECG and the vital signs of a monitor, computed from the
//! sample index alone (deterministic, no clock).
//!
//! The ECG comes from a moving cardiac dipole: each wave (P, Q, R, S, T) is a Gaussian pulse
//! along its own direction in space (x to the patient's left, y inferior, z anterior), placed
//! relative to each beat's R peak with intervals that follow the heart rate (Bazett's QT).
//! Every lead is a projection of that one vector, so the limb leads obey Einthoven and
//! Goldberger: III = II − I exactly, aVR = −(I + II)/2, aVL = I − II/2, aVF = II − I/2 within
//! rounding. Samples are in µV (gain 1000 raw units per mV, baseline 0).

use super::source::{Source, SourceError, TWELVE_LEADS, lead_mdc, rate_mhz};
use crate::wire::{Channel, Layout, Numeric, Vital};
use std::f64::consts::TAU;

/// Raw units per mV of the simulated ECG (samples are µV).
pub const GAIN: f64 = 1000.0;
/// Mean heart rate when none is forced, /min.
const BASE_HR: f64 = 84.0;
/// Swing of the heart rate around its mean, /min.
const HR_SWING: f64 = 6.0;
/// Period of the heart rate's swing, s.
const HR_PERIOD: f64 = 90.0;
/// Respiration rate, /min (also the baseline wander of the ECG).
const RR: f64 = 16.0;
/// Ambulance speed along the route, m/s.
const SPEED: f64 = 11.0;
/// Metres per degree of latitude.
const M_PER_DEG: f64 = 111_320.0;
/// The ambulance's route, (latitude, longitude); driven back and forth.
const ROUTE: [(f64, f64); 6] = [
    (31.2397, 121.4998),
    (31.2335, 121.4910),
    (31.2280, 121.4802),
    (31.2203, 121.4689),
    (31.2125, 121.4598),
    (31.2060, 121.4512),
];

/// One wave of the beat: a Gaussian pulse of the cardiac dipole.
struct Wave {
    /// Time of its peak relative to the R peak, s, given the beat period.
    center: fn(f64) -> f64,
    /// Its width (standard deviation), s, given the beat period.
    width: fn(f64) -> f64,
    /// The dipole at its peak, mV (x left, y inferior, z anterior).
    vector: [f64; 3],
}

const WAVES: [Wave; 5] = [
    // P: atrial depolarization, down and to the left; PR shortens a little as HR rises.
    Wave {
        center: |t| -(0.10 + 0.06 * t.min(1.2)),
        width: |_| 0.022,
        vector: [0.07, 0.12, 0.03],
    },
    // Q: septal depolarization, to the right and forward (small q in I, V6; r in V1).
    Wave {
        center: |_| -0.027,
        width: |_| 0.008,
        vector: [-0.07, -0.01, 0.10],
    },
    // R: the main ventricular vector, down, left and a little backward.
    Wave {
        center: |_| 0.0,
        width: |_| 0.010,
        vector: [0.90, 1.17, -0.22],
    },
    // S: late depolarization, up and backward.
    Wave {
        center: |_| 0.028,
        width: |_| 0.010,
        vector: [-0.12, -0.18, -0.30],
    },
    // T: repolarization, concordant with R; QT follows Bazett (0.40 s · √RR interval).
    Wave {
        center: |t| 0.40 * t.sqrt() - 0.09,
        width: |t| 0.045 * t.sqrt(),
        vector: [0.16, 0.24, 0.14],
    },
];

/// Directions of the precordial leads V1–V6 in the horizontal plane, degrees from the
/// patient's left toward the front.
const PRECORDIAL_DEG: [f64; 6] = [115.0, 95.0, 75.0, 55.0, 30.0, 5.0];

/// What to simulate.
#[derive(Debug, Clone, Copy)]
pub struct SimConfig {
    /// Samples per second of every lead.
    pub rate_hz: f64,
    /// A fixed heart rate, /min (else it drifts slowly around 84).
    pub hr: Option<f64>,
    /// A fixed SpO2, % (else 96–98).
    pub spo2: Option<f64>,
}

/// The simulated patient (see the [module documentation](self)).
#[derive(Debug, Clone)]
pub struct Simulator {
    cfg: SimConfig,
    rate_mhz: u64,
}

impl Simulator {
    /// A simulator; fails on an unusable rate or forced value.
    pub fn new(cfg: SimConfig) -> Result<Self, SourceError> {
        if cfg.hr.is_some_and(|hr| !(20.0..=300.0).contains(&hr)) {
            return Err(SourceError::Invalid(
                "the simulated HR must be 20 to 300 /min".into(),
            ));
        }
        if cfg.spo2.is_some_and(|s| !(0.0..=100.0).contains(&s)) {
            return Err(SourceError::Invalid(
                "the simulated SpO2 must be 0 to 100 %".into(),
            ));
        }
        Ok(Self {
            rate_mhz: rate_mhz(cfg.rate_hz)?,
            cfg,
        })
    }

    /// The heart rate at time `t` (s from sample 0), /min.
    pub fn heart_rate(&self, t: f64) -> f64 {
        self.cfg
            .hr
            .unwrap_or_else(|| BASE_HR + HR_SWING * (TAU * t / HR_PERIOD).sin())
    }

    /// Beats since sample 0 at time `t`: the integral of the heart rate, so the R peaks
    /// (integer phases) come at exactly the rate reported.
    fn phase(&self, t: f64) -> f64 {
        match self.cfg.hr {
            Some(hr) => t * hr / 60.0,
            None => {
                (BASE_HR * t + HR_SWING * HR_PERIOD / TAU * (1.0 - (TAU * t / HR_PERIOD).cos()))
                    / 60.0
            }
        }
    }

    /// The cardiac dipole at time `t`, mV.
    fn dipole(&self, t: f64) -> [f64; 3] {
        let period = 60.0 / self.heart_rate(t);
        let phase = self.phase(t);
        let nearest = phase.round();
        let mut d = [0.0; 3];
        for beat in [nearest - 1.0, nearest, nearest + 1.0] {
            let dt = (phase - beat) * period;
            for w in &WAVES {
                let x = (dt - (w.center)(period)) / (w.width)(period);
                let g = (-0.5 * x * x).exp();
                for (di, vi) in d.iter_mut().zip(w.vector) {
                    *di += g * vi;
                }
            }
        }
        let breath = 0.03 * (TAU * t * RR / 60.0).sin();
        d[0] += 0.3 * breath;
        d[1] += 0.8 * breath;
        d[2] += 0.5 * breath;
        d
    }

    /// The 12 leads at sample `i`, µV, in [`TWELVE_LEADS`] order.
    pub fn leads_at(&self, i: u64) -> [i32; 12] {
        let t = i as f64 * 1000.0 / self.rate_mhz as f64;
        let d = self.dipole(t);
        let uv = |x: f64| (x * GAIN).round() as i32;
        let lead_i = uv(d[0]);
        let lead_ii = uv(0.5 * d[0] + 0.866_025_403_784_438_6 * d[1]);
        let half = |x: i32| (f64::from(x) / 2.0).round() as i32;
        let mut out = [
            lead_i,
            lead_ii,
            lead_ii - lead_i,
            half(-(lead_i + lead_ii)),
            half(2 * lead_i - lead_ii),
            half(2 * lead_ii - lead_i),
            0,
            0,
            0,
            0,
            0,
            0,
        ];
        for (v, deg) in out[6..].iter_mut().zip(PRECORDIAL_DEG) {
            let (sin, cos) = deg.to_radians().sin_cos();
            *v = uv(cos * d[0] + sin * d[2]);
        }
        out
    }

    /// Where the ambulance is `second` seconds into the route: (latitude, longitude).
    fn position(second: u64) -> (f64, f64) {
        let legs: Vec<f64> = ROUTE
            .windows(2)
            .map(|w| {
                let dy = (w[1].0 - w[0].0) * M_PER_DEG;
                let dx = (w[1].1 - w[0].1) * M_PER_DEG * w[0].0.to_radians().cos();
                dx.hypot(dy)
            })
            .collect();
        let total: f64 = legs.iter().sum();
        let mut d = (second as f64 * SPEED) % (2.0 * total);
        if d > total {
            d = 2.0 * total - d;
        }
        for (w, len) in ROUTE.windows(2).zip(&legs) {
            if d <= *len {
                let f = d / len;
                return (
                    w[0].0 + f * (w[1].0 - w[0].0),
                    w[0].1 + f * (w[1].1 - w[0].1),
                );
            }
            d -= len;
        }
        ROUTE[ROUTE.len() - 1]
    }
}

impl Source for Simulator {
    fn layout(&self) -> Layout {
        Layout {
            channels: TWELVE_LEADS
                .iter()
                .enumerate()
                .map(|(i, label)| Channel {
                    index: i as u8,
                    label: (*label).into(),
                    unit: "mV".into(),
                    rate_hz: self.cfg.rate_hz,
                    gain: GAIN,
                    baseline: 0.0,
                    mdc: lead_mdc(label),
                })
                .collect(),
        }
    }

    fn rate_mhz(&self) -> u64 {
        self.rate_mhz
    }

    fn read(&mut self, start: u64, count: usize) -> Result<Vec<Vec<i32>>, SourceError> {
        let mut out = vec![Vec::with_capacity(count); TWELVE_LEADS.len()];
        for i in start..start + count as u64 {
            for (ch, v) in out.iter_mut().zip(self.leads_at(i)) {
                ch.push(v);
            }
        }
        Ok(out)
    }

    fn numerics(&self, second: u64) -> Vec<Numeric> {
        let s = second as f64;
        let wave = |period: f64| (TAU * s / period).sin();
        let spo2 = self
            .cfg
            .spo2
            .unwrap_or_else(|| (97.2 + 0.8 * wave(53.0)).round());
        let (lat, lon) = Self::position(second);
        let mut values = vec![
            (Vital::Hr, self.heart_rate(s).round()),
            (Vital::Spo2, spo2),
            (Vital::Rr, RR),
            (
                Vital::Temp,
                ((36.8 + 0.1 * wave(600.0)) * 10.0).round() / 10.0,
            ),
            (Vital::Etco2, (37.0 + 2.0 * wave(75.0)).round()),
            (Vital::Lat, lat),
            (Vital::Lon, lon),
        ];
        if second.is_multiple_of(30) {
            let sys = (124.0 + 6.0 * wave(300.0)).round();
            let dia = (78.0 + 4.0 * (TAU * s / 300.0 + 0.5).sin()).round();
            values.extend([
                (Vital::NibpSys, sys),
                (Vital::NibpDia, dia),
                (Vital::NibpMean, (dia + (sys - dia) / 3.0).round()),
            ]);
        }
        values
            .into_iter()
            .map(|(v, value)| Numeric {
                code: v.code(),
                value,
            })
            .collect()
    }

    fn has_numerics(&self) -> bool {
        true
    }

    fn identity(&self) -> String {
        format!("simulator:{}", self.rate_mhz)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim(hr: Option<f64>) -> Simulator {
        Simulator::new(SimConfig {
            rate_hz: 500.0,
            hr,
            spo2: None,
        })
        .unwrap()
    }

    /// R peaks of lead II from 0.5 s to 0.5 s + `secs`: local maxima above 0.8 mV, 200 ms
    /// apart.
    fn r_peaks(s: &Simulator, secs: u64) -> usize {
        let ii: Vec<i32> = (250..250 + secs * 500).map(|i| s.leads_at(i)[1]).collect();
        let mut peaks = 0;
        let mut last = None;
        for i in 1..ii.len() - 1 {
            if ii[i] > 800
                && ii[i] >= ii[i - 1]
                && ii[i] > ii[i + 1]
                && last.is_none_or(|l| i - l > 100)
            {
                peaks += 1;
                last = Some(i);
            }
        }
        peaks
    }

    fn value(values: &[Numeric], v: Vital) -> Option<f64> {
        values.iter().find(|n| n.code == v.code()).map(|n| n.value)
    }

    #[test]
    fn limb_leads_obey_einthoven_and_goldberger() {
        let s = sim(None);
        for i in (0..20_000).step_by(7) {
            let [l1, l2, l3, avr, avl, avf, ..] = s.leads_at(i);
            assert_eq!(l3, l2 - l1, "Einthoven at sample {i}");
            assert!((2 * avr + l1 + l2).abs() <= 1, "aVR at {i}");
            assert!((2 * avl - 2 * l1 + l2).abs() <= 1, "aVL at {i}");
            assert!((2 * avf - 2 * l2 + l1).abs() <= 1, "aVF at {i}");
            assert!((avr + avl + avf).abs() <= 2, "Goldberger sum at {i}");
        }
    }

    #[test]
    fn morphology_is_plausible() {
        let s = sim(Some(72.0));
        let beat: Vec<[i32; 12]> = (0..500).map(|i| s.leads_at(i)).collect();
        let max = |lead: usize| beat.iter().map(|l| l[lead]).max().unwrap();
        let min = |lead: usize| beat.iter().map(|l| l[lead]).min().unwrap();
        // Tall R in II (1.2–1.8 mV), negative QRS in aVR, rS in V1, upright R in V6.
        assert!((1200..=1800).contains(&max(1)), "II max {}", max(1));
        assert!(min(3) < -800, "aVR min {}", min(3));
        assert!(min(6) < -400 && max(6) < 300, "V1 {} {}", min(6), max(6));
        assert!(max(11) > 600, "V6 max {}", max(11));
        // Samples are i16 (µV), so frames stay compact.
        assert!(beat.iter().flatten().all(|v| i16::try_from(*v).is_ok()));
    }

    #[test]
    fn heart_rate_matches_the_beats() {
        let fixed = sim(Some(151.0));
        assert_eq!(r_peaks(&fixed, 60), 151);
        assert!((0..60).all(|sec| value(&fixed.numerics(sec), Vital::Hr) == Some(151.0)));
        // The drifting rate: over two full swings the beats are exactly 84/min on average,
        // and the numerics say so.
        let drifting = sim(None);
        let peaks = r_peaks(&drifting, 180);
        assert!((251..=253).contains(&peaks), "{peaks} beats in 3 min");
        let mean: f64 = (0..180)
            .map(|sec| value(&drifting.numerics(sec), Vital::Hr).unwrap())
            .sum::<f64>()
            / 180.0;
        assert!((mean - 84.0).abs() < 0.2, "mean HR {mean}");
    }

    #[test]
    fn numerics_are_complete_and_nibp_is_periodic() {
        let s = Simulator::new(SimConfig {
            rate_hz: 500.0,
            hr: None,
            spo2: Some(85.0),
        })
        .unwrap();
        let n0 = s.numerics(0);
        let n1 = s.numerics(1);
        assert_eq!(value(&n0, Vital::Spo2), Some(85.0));
        assert!(value(&n0, Vital::NibpSys).is_some() && value(&n1, Vital::NibpSys).is_none());
        assert!(value(&s.numerics(30), Vital::NibpMean).is_some());
        for v in [
            Vital::Hr,
            Vital::Rr,
            Vital::Temp,
            Vital::Etco2,
            Vital::Lat,
            Vital::Lon,
        ] {
            assert!(value(&n1, v).is_some(), "{v:?}");
        }
        // The ambulance moves (about 11 m/s).
        let (a, b) = (Simulator::position(0), Simulator::position(10));
        let metres = ((b.0 - a.0) * M_PER_DEG).hypot((b.1 - a.1) * M_PER_DEG * 0.855);
        assert!((100.0..=120.0).contains(&metres), "{metres} m in 10 s");
    }

    #[test]
    fn samples_depend_on_the_index_only() {
        let mut a = sim(None);
        let mut b = sim(None);
        let whole = a.read(0, 1000).unwrap();
        let tail = b.read(400, 600).unwrap();
        for (ch, t) in whole.iter().zip(&tail) {
            assert_eq!(&ch[400..], &t[..]);
        }
    }
}
