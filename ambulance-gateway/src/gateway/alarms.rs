//! Alarm rules for one stream: threshold limits per vital sign and a technical alarm when the
//! stream falls silent. A plain state machine: values and time in, changed alarms out.
//!
//! Only live values drive alarms; values back-filled after an outage describe the past and
//! are recorded but raise nothing.

use crate::wire::Vital;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Silence after which the technical alarm is raised, in milliseconds.
pub const SILENCE_MS: i64 = 5_000;

/// A vital's alarm limits: an alarm is raised below `low` or above `high`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Limit {
    /// Lower limit, if any.
    pub low: Option<f64>,
    /// Upper limit, if any.
    pub high: Option<f64>,
}

/// Adult default limits: HR < 40 or > 140, SpO2 < 90, systolic < 90 or > 180, RR < 8 or > 30.
pub fn default_limits() -> BTreeMap<Vital, Limit> {
    let l = |low: Option<f64>, high: Option<f64>| Limit { low, high };
    BTreeMap::from([
        (Vital::Hr, l(Some(40.0), Some(140.0))),
        (Vital::Spo2, l(Some(90.0), None)),
        (Vital::NibpSys, l(Some(90.0), Some(180.0))),
        (Vital::Rr, l(Some(8.0), Some(30.0))),
    ])
}

/// Physiological (a patient value) or technical (the equipment or link).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmKind {
    /// A vital sign crossed a limit.
    Physiological,
    /// The stream fell silent.
    Technical,
}

/// What an alarm is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// Below the low limit.
    Low,
    /// Above the high limit.
    High,
    /// No data for [`SILENCE_MS`].
    Silent,
}

/// How urgently staff must act (IEC 60601-1-8 terms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Act now.
    High,
    /// Act promptly.
    Medium,
}

/// Whether the condition still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmState {
    /// The condition holds.
    Active,
    /// The condition has ended.
    Cleared,
}

/// One alarm, as sent to viewers and kept in the stream's journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alarm {
    /// Unique within the stream for the gateway's run.
    pub id: u64,
    /// Physiological or technical.
    pub kind: AlarmKind,
    /// The vital, for physiological alarms.
    pub vital: Option<Vital>,
    /// What crossed what.
    pub condition: Condition,
    /// Urgency.
    pub priority: Priority,
    /// The value that raised it (the latest while active).
    pub value: Option<f64>,
    /// The limit crossed.
    pub limit: Option<f64>,
    /// Active or cleared.
    pub state: AlarmState,
    /// When raised, ms since the Unix epoch.
    pub raised_at_ms: i64,
    /// When cleared.
    pub cleared_at_ms: Option<i64>,
    /// Who acknowledged it.
    pub acked_by: Option<String>,
    /// When acknowledged.
    pub acked_at_ms: Option<i64>,
    /// Short text for displays, e.g. `HR 151 > 140`.
    pub message: String,
}

/// Why a request about alarms was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AlarmError {
    /// No current alarm has this id.
    #[error("no current alarm {0}")]
    UnknownAlarm(u64),
    /// Limits must be finite and `low < high`.
    #[error("invalid limits: {0}")]
    BadLimits(&'static str),
}

/// One stream's alarm rules and current alarms.
#[derive(Debug)]
pub struct AlarmEngine {
    limits: BTreeMap<Vital, Limit>,
    /// Alarms active or not yet acknowledged, by id.
    current: BTreeMap<u64, Alarm>,
    next_id: u64,
    last_data_ms: Option<i64>,
}

impl AlarmEngine {
    /// An engine with the adult defaults; silence is timed from `now_ms`.
    pub fn new(now_ms: i64) -> Self {
        Self {
            limits: default_limits(),
            current: BTreeMap::new(),
            next_id: 1,
            last_data_ms: Some(now_ms),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &BTreeMap<Vital, Limit> {
        &self.limits
    }

    /// Alarms that are active or not yet acknowledged, oldest first.
    pub fn current(&self) -> impl Iterator<Item = &Alarm> {
        self.current.values()
    }

    /// Changes one vital's limits (`None`, `None` removes them). Active alarms of that vital
    /// are re-evaluated at its next value.
    pub fn set_limit(&mut self, vital: Vital, limit: Limit) -> Result<(), AlarmError> {
        let finite = |v: Option<f64>| v.is_none_or(f64::is_finite);
        if !finite(limit.low) || !finite(limit.high) {
            return Err(AlarmError::BadLimits("limits must be finite numbers"));
        }
        if let (Some(low), Some(high)) = (limit.low, limit.high)
            && low >= high
        {
            return Err(AlarmError::BadLimits("low must be below high"));
        }
        if matches!(vital, Vital::Lat | Vital::Lon) {
            return Err(AlarmError::BadLimits("position has no alarm limits"));
        }
        if limit.low.is_none() && limit.high.is_none() {
            self.limits.remove(&vital);
        } else {
            self.limits.insert(vital, limit);
        }
        Ok(())
    }

    /// Any data arrived at `now_ms`: clears the silence alarm. Returns changed alarms.
    pub fn on_data(&mut self, now_ms: i64) -> Vec<Alarm> {
        self.last_data_ms = Some(now_ms);
        let silent = self.find(None, Condition::Silent);
        silent
            .map(|id| self.clear(id, now_ms))
            .into_iter()
            .flatten()
            .collect()
    }

    /// Live values arrived at `now_ms`. Returns alarms raised, updated or cleared.
    pub fn on_values(&mut self, now_ms: i64, values: &[(Vital, f64)]) -> Vec<Alarm> {
        let mut changed = self.on_data(now_ms);
        for &(vital, value) in values {
            let limit = self.limits.get(&vital).copied().unwrap_or_default();
            let breach = match (limit.low, limit.high) {
                (Some(low), _) if value < low => Some((Condition::Low, low)),
                (_, Some(high)) if value > high => Some((Condition::High, high)),
                _ => None,
            };
            for condition in [Condition::Low, Condition::High] {
                let existing = self.find(Some(vital), condition);
                match (breach, existing) {
                    (Some((c, bound)), None) if c == condition => {
                        changed.push(self.raise(Some(vital), c, Some(value), Some(bound), now_ms))
                    }
                    (Some((c, _)), Some(id)) if c == condition => {
                        let alarm = self.current.get_mut(&id).expect("found");
                        alarm.value = Some(value);
                    }
                    (_, Some(id)) => changed.extend(self.clear(id, now_ms)),
                    _ => {}
                }
            }
        }
        changed
    }

    /// Time passed: raises the silence alarm after [`SILENCE_MS`] without data.
    pub fn on_tick(&mut self, now_ms: i64) -> Vec<Alarm> {
        match self.last_data_ms {
            Some(last)
                if now_ms - last >= SILENCE_MS && self.find(None, Condition::Silent).is_none() =>
            {
                vec![self.raise(None, Condition::Silent, None, None, last + SILENCE_MS)]
            }
            _ => Vec::new(),
        }
    }

    /// Acknowledges alarm `id` by `who`. A cleared alarm leaves the current list.
    pub fn acknowledge(&mut self, id: u64, who: &str, now_ms: i64) -> Result<Alarm, AlarmError> {
        let alarm = self
            .current
            .get_mut(&id)
            .ok_or(AlarmError::UnknownAlarm(id))?;
        if alarm.acked_by.is_none() {
            alarm.acked_by = Some(who.to_owned());
            alarm.acked_at_ms = Some(now_ms);
        }
        let alarm = alarm.clone();
        if alarm.state == AlarmState::Cleared {
            self.current.remove(&id);
        }
        Ok(alarm)
    }

    fn find(&self, vital: Option<Vital>, condition: Condition) -> Option<u64> {
        self.current
            .values()
            .find(|a| a.vital == vital && a.condition == condition && a.state == AlarmState::Active)
            .map(|a| a.id)
    }

    fn raise(
        &mut self,
        vital: Option<Vital>,
        condition: Condition,
        value: Option<f64>,
        limit: Option<f64>,
        at_ms: i64,
    ) -> Alarm {
        let id = self.next_id;
        self.next_id += 1;
        let (kind, priority, message) = match (vital, value, limit) {
            (Some(v), Some(value), Some(limit)) => {
                let op = if condition == Condition::Low {
                    "<"
                } else {
                    ">"
                };
                let priority = match v {
                    Vital::Hr | Vital::Spo2 => Priority::High,
                    _ => Priority::Medium,
                };
                let name = v.name().to_uppercase();
                (
                    AlarmKind::Physiological,
                    priority,
                    format!("{name} {value} {op} {limit}"),
                )
            }
            _ => (
                AlarmKind::Technical,
                Priority::Medium,
                format!("no data for {} s", SILENCE_MS / 1000),
            ),
        };
        let alarm = Alarm {
            id,
            kind,
            vital,
            condition,
            priority,
            value,
            limit,
            state: AlarmState::Active,
            raised_at_ms: at_ms,
            cleared_at_ms: None,
            acked_by: None,
            acked_at_ms: None,
            message,
        };
        self.current.insert(id, alarm.clone());
        alarm
    }

    fn clear(&mut self, id: u64, now_ms: i64) -> Option<Alarm> {
        let alarm = self.current.get_mut(&id)?;
        alarm.state = AlarmState::Cleared;
        alarm.cleared_at_ms = Some(now_ms);
        let alarm = alarm.clone();
        if alarm.acked_by.is_some() {
            self.current.remove(&id);
        }
        Some(alarm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heart_rate_alarm_fires_updates_and_clears() {
        let mut e = AlarmEngine::new(0);
        assert!(e.on_values(1_000, &[(Vital::Hr, 80.0)]).is_empty());
        let raised = e.on_values(2_000, &[(Vital::Hr, 151.0)]);
        assert_eq!(raised.len(), 1);
        let a = &raised[0];
        assert_eq!(
            (a.vital, a.condition, a.priority),
            (Some(Vital::Hr), Condition::High, Priority::High)
        );
        assert_eq!(
            (a.value, a.limit, a.raised_at_ms),
            (Some(151.0), Some(140.0), 2_000)
        );
        assert_eq!(a.message, "HR 151 > 140");
        assert!(
            e.on_values(3_000, &[(Vital::Hr, 155.0)]).is_empty(),
            "still the same alarm"
        );
        let cleared = e.on_values(4_000, &[(Vital::Hr, 90.0)]);
        assert_eq!(cleared[0].state, AlarmState::Cleared);
        assert_eq!(cleared[0].cleared_at_ms, Some(4_000));
        assert_eq!(cleared[0].value, Some(155.0));
        // Cleared but unacknowledged: still listed until acknowledged.
        assert_eq!(e.current().count(), 1);
        let acked = e.acknowledge(a.id, "Dr Wang", 5_000).unwrap();
        assert_eq!(acked.acked_by.as_deref(), Some("Dr Wang"));
        assert_eq!(e.current().count(), 0);
        assert_eq!(
            e.acknowledge(a.id, "x", 6_000),
            Err(AlarmError::UnknownAlarm(a.id))
        );
    }

    #[test]
    fn every_default_limit_fires_on_both_sides() {
        let cases = [
            (Vital::Hr, 39.0, Condition::Low),
            (Vital::Hr, 141.0, Condition::High),
            (Vital::Spo2, 89.0, Condition::Low),
            (Vital::NibpSys, 89.0, Condition::Low),
            (Vital::NibpSys, 181.0, Condition::High),
            (Vital::Rr, 7.0, Condition::Low),
            (Vital::Rr, 31.0, Condition::High),
        ];
        for (vital, value, condition) in cases {
            let mut e = AlarmEngine::new(0);
            let raised = e.on_values(1, &[(vital, value)]);
            assert_eq!(raised.len(), 1, "{vital:?} {value}");
            assert_eq!(raised[0].condition, condition);
        }
        let mut e = AlarmEngine::new(0);
        let normal = [
            (Vital::Hr, 40.0),
            (Vital::Spo2, 90.0),
            (Vital::NibpSys, 180.0),
            (Vital::Rr, 8.0),
            (Vital::Temp, 41.0),
        ];
        assert!(e.on_values(1, &normal).is_empty());
    }

    #[test]
    fn a_value_jumping_from_low_to_high_clears_one_and_raises_the_other() {
        let mut e = AlarmEngine::new(0);
        e.on_values(1, &[(Vital::Hr, 30.0)]);
        let changed = e.on_values(2, &[(Vital::Hr, 160.0)]);
        let states: Vec<_> = changed.iter().map(|a| (a.condition, a.state)).collect();
        assert!(states.contains(&(Condition::Low, AlarmState::Cleared)));
        assert!(states.contains(&(Condition::High, AlarmState::Active)));
    }

    #[test]
    fn changed_limits_apply_to_the_next_value() {
        let mut e = AlarmEngine::new(0);
        e.set_limit(
            Vital::Hr,
            Limit {
                low: Some(40.0),
                high: Some(120.0),
            },
        )
        .unwrap();
        assert_eq!(e.on_values(1, &[(Vital::Hr, 130.0)]).len(), 1);
        e.set_limit(
            Vital::Hr,
            Limit {
                low: None,
                high: None,
            },
        )
        .unwrap();
        assert_eq!(
            e.on_values(2, &[(Vital::Hr, 130.0)])[0].state,
            AlarmState::Cleared
        );
        assert!(
            e.set_limit(
                Vital::Hr,
                Limit {
                    low: Some(100.0),
                    high: Some(50.0)
                }
            )
            .is_err()
        );
        assert!(
            e.set_limit(
                Vital::Hr,
                Limit {
                    low: Some(f64::NAN),
                    high: None
                }
            )
            .is_err()
        );
    }

    #[test]
    fn silence_raises_a_technical_alarm_that_data_clears() {
        let mut e = AlarmEngine::new(0);
        assert!(e.on_tick(4_999).is_empty());
        let raised = e.on_tick(5_000);
        assert_eq!(raised.len(), 1);
        assert_eq!(
            (raised[0].kind, raised[0].condition),
            (AlarmKind::Technical, Condition::Silent)
        );
        assert_eq!(raised[0].raised_at_ms, 5_000);
        assert!(e.on_tick(9_000).is_empty(), "raised once");
        let cleared = e.on_data(9_500);
        assert_eq!(cleared[0].state, AlarmState::Cleared);
        assert!(e.on_tick(10_000).is_empty());
        assert_eq!(e.on_tick(14_500).len(), 1, "silent again");
    }
}
