//! Health checks of a hosted terminator, as `host.v1` configures them (`portChecks`,
//! `httpChecks`): each check result runs through the check's actions, and the actions move the
//! terminator's precedence and cost. Pure: results and time come in, a new (cost, precedence)
//! comes out when it changed. The Go tunneler's semantics: an action fires on `pass`, `fail` or
//! `change`, optionally only after `consecutiveEvents` results or `duration` in that state;
//! `mark unhealthy` sets precedence failed, `mark healthy` restores the configured one,
//! `increase cost N` / `decrease cost N` move the cost (never below the configured cost, and
//! never up while failed); `send event` is accepted and only logged.

use std::time::{Duration, Instant};

use ziti_sdk::edge::Precedence;
use ziti_sdk::services::CheckAction;

/// What an action does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Precedence back to the configured one.
    MarkHealthy,
    /// Precedence failed: dials go elsewhere while another terminator exists.
    MarkUnhealthy,
    /// Report the result (logged).
    SendEvent,
    /// Cost up by this much (saturating).
    IncreaseCost(u16),
    /// Cost down by this much, not below the configured cost.
    DecreaseCost(u16),
}

/// When an action fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// On a passing result.
    Pass,
    /// On a failing result.
    Fail,
    /// On the first result after a change.
    Change,
}

/// An action the config gives that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid health check action {trigger:?} / {action:?}: {why}")]
pub struct ActionError {
    trigger: String,
    action: String,
    why: &'static str,
}

#[derive(Debug, Clone)]
struct Rule {
    trigger: Trigger,
    consecutive: Option<u32>,
    duration: Option<Duration>,
    effect: Effect,
    passes: u64,
    passing_since: Option<Instant>,
}

impl Rule {
    fn parse(a: &CheckAction) -> Result<Self, ActionError> {
        let err = |why| ActionError {
            trigger: a.trigger.clone(),
            action: a.action.clone(),
            why,
        };
        let trigger = match a.trigger.trim().to_ascii_lowercase().as_str() {
            "pass" => Trigger::Pass,
            "fail" => Trigger::Fail,
            "change" => Trigger::Change,
            _ => return Err(err("the trigger must be pass, fail or change")),
        };
        let action = a.action.trim().to_ascii_lowercase();
        let amount = |s: &str| -> Result<u16, ActionError> {
            s.trim()
                .parse::<u16>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| err("the cost change must be 1..=65535"))
        };
        let effect = match action.as_str() {
            "mark healthy" => Effect::MarkHealthy,
            "mark unhealthy" => Effect::MarkUnhealthy,
            "send event" => Effect::SendEvent,
            s => {
                if let Some(n) = s.strip_prefix("increase cost ") {
                    Effect::IncreaseCost(amount(n)?)
                } else if let Some(n) = s.strip_prefix("decrease cost ") {
                    Effect::DecreaseCost(amount(n)?)
                } else {
                    return Err(err(
                        "the action must be mark healthy, mark unhealthy, send event, increase cost N or decrease cost N",
                    ));
                }
            }
        };
        Ok(Rule {
            trigger,
            consecutive: a.consecutive_events,
            duration: a.duration,
            effect,
            passes: 0,
            passing_since: None,
        })
    }

    fn matches(&mut self, now: Instant, healthy: bool, fails: u64, failing_since: Instant) -> bool {
        if healthy {
            if self.passes == 0 {
                self.passing_since = Some(now);
            }
            self.passes += 1;
        } else {
            self.passes = 0;
        }
        let fires = match self.trigger {
            Trigger::Fail => !healthy,
            Trigger::Pass => healthy,
            Trigger::Change => self.passes == 1 || fails == 1,
        };
        if !fires {
            return false;
        }
        if let Some(n) = self.consecutive {
            let run = if healthy { self.passes } else { fails };
            if run < u64::from(n) {
                return false;
            }
        }
        if let Some(d) = self.duration {
            let since = if healthy {
                self.passing_since.unwrap_or(now)
            } else {
                failing_since
            };
            if now.saturating_duration_since(since) < d {
                return false;
            }
        }
        true
    }
}

/// One check's actions and its run of results.
#[derive(Debug, Clone)]
pub struct CheckRules {
    rules: Vec<Rule>,
    fails: u64,
    failing_since: Option<Instant>,
}

impl CheckRules {
    /// The rules of one check's `actions`.
    pub fn new(actions: &[CheckAction]) -> Result<Self, ActionError> {
        Ok(CheckRules {
            rules: actions.iter().map(Rule::parse).collect::<Result<_, _>>()?,
            fails: 0,
            failing_since: None,
        })
    }

    /// The effects of one result, in the order the actions are configured.
    pub fn record(&mut self, now: Instant, healthy: bool) -> Vec<Effect> {
        if healthy {
            self.fails = 0;
            self.failing_since = None;
        } else {
            self.fails += 1;
            self.failing_since.get_or_insert(now);
        }
        let (fails, since) = (self.fails, self.failing_since.unwrap_or(now));
        self.rules
            .iter_mut()
            .filter_map(|r| r.matches(now, healthy, fails, since).then_some(r.effect))
            .collect()
    }
}

/// A terminator's cost and precedence as its checks move them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminatorHealth {
    baseline: (u16, Precedence),
    /// Current cost.
    pub cost: u16,
    /// Current precedence.
    pub precedence: Precedence,
}

impl TerminatorHealth {
    /// Starting from the configured cost and precedence.
    pub fn new(cost: u16, precedence: Precedence) -> Self {
        TerminatorHealth {
            baseline: (cost, precedence),
            cost,
            precedence,
        }
    }

    /// Applies effects; `Some((cost, precedence))` when either changed.
    pub fn apply(&mut self, effects: &[Effect]) -> Option<(u16, Precedence)> {
        let before = (self.cost, self.precedence);
        for e in effects {
            match *e {
                Effect::MarkHealthy => self.precedence = self.baseline.1,
                Effect::MarkUnhealthy => self.precedence = Precedence::Failed,
                Effect::SendEvent => {}
                Effect::IncreaseCost(n) => {
                    if self.precedence != Precedence::Failed {
                        self.cost = self.cost.saturating_add(n);
                    }
                }
                Effect::DecreaseCost(n) => {
                    self.cost = self.cost.saturating_sub(n).max(self.baseline.0);
                }
            }
        }
        let after = (self.cost, self.precedence);
        (after != before).then_some(after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(trigger: &str, n: Option<u32>, action: &str) -> CheckAction {
        CheckAction {
            trigger: trigger.into(),
            consecutive_events: n,
            duration: None,
            action: action.into(),
        }
    }

    #[test]
    fn fail_marks_unhealthy_after_consecutive_failures_and_pass_restores() {
        let mut rules = CheckRules::new(&[
            action("fail", Some(2), "mark unhealthy"),
            action("pass", None, "mark healthy"),
        ])
        .unwrap();
        let mut t = TerminatorHealth::new(0, Precedence::Required);
        let now = Instant::now();
        assert_eq!(t.apply(&rules.record(now, true)), None);
        assert_eq!(t.apply(&rules.record(now, false)), None);
        assert_eq!(
            t.apply(&rules.record(now, false)),
            Some((0, Precedence::Failed))
        );
        assert_eq!(t.apply(&rules.record(now, false)), None);
        assert_eq!(
            t.apply(&rules.record(now, true)),
            Some((0, Precedence::Required))
        );
    }

    #[test]
    fn cost_moves_within_bounds_and_not_up_while_failed() {
        let mut t = TerminatorHealth::new(10, Precedence::Default);
        assert_eq!(
            t.apply(&[Effect::IncreaseCost(65535)]),
            Some((65535, Precedence::Default))
        );
        assert_eq!(
            t.apply(&[Effect::DecreaseCost(65535)]),
            Some((10, Precedence::Default))
        );
        t.apply(&[Effect::MarkUnhealthy]);
        assert_eq!(t.apply(&[Effect::IncreaseCost(5)]), None);
    }

    #[test]
    fn durations_and_change_triggers() {
        let mut rules = CheckRules::new(&[CheckAction {
            trigger: "fail".into(),
            consecutive_events: None,
            duration: Some(Duration::from_secs(10)),
            action: "mark unhealthy".into(),
        }])
        .unwrap();
        let t0 = Instant::now();
        assert!(rules.record(t0, false).is_empty());
        assert!(rules.record(t0 + Duration::from_secs(5), false).is_empty());
        assert_eq!(
            rules.record(t0 + Duration::from_secs(10), false),
            vec![Effect::MarkUnhealthy]
        );
        let mut change = CheckRules::new(&[action("change", None, "send event")]).unwrap();
        assert_eq!(change.record(t0, true), vec![Effect::SendEvent]);
        assert!(change.record(t0, true).is_empty());
        assert_eq!(change.record(t0, false), vec![Effect::SendEvent]);
        assert!(change.record(t0, false).is_empty());
    }

    #[test]
    fn unusable_actions_say_why() {
        let e = CheckRules::new(&[action("fail", None, "reboot")]).unwrap_err();
        assert!(e.to_string().contains("the action must be"), "{e}");
        let e = CheckRules::new(&[action("sometimes", None, "send event")]).unwrap_err();
        assert!(e.to_string().contains("pass, fail or change"), "{e}");
        let e = CheckRules::new(&[action("fail", None, "increase cost 0")]).unwrap_err();
        assert!(e.to_string().contains("1..=65535"), "{e}");
    }
}
