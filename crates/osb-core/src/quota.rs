//! When an instance over its storage quota loses its write rights and when it gets them back.
//! Shared by every broker that enforces quotas, so they all behave alike.

use serde::Deserialize;

/// Frozen at or above `freeze_at_percent` of the quota; once frozen, thawed only below
/// `thaw_below_percent`, so that an app writing at the boundary does not flap between the two.
/// A broker's config holds it as a table of its own (`[<service>.quota_policy]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawPolicy")]
pub struct QuotaPolicy {
    freeze_at_percent: u32,
    thaw_below_percent: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default = "default_freeze")]
    freeze_at_percent: u32,
    #[serde(default = "default_thaw")]
    thaw_below_percent: u32,
}

fn default_freeze() -> u32 {
    100
}

fn default_thaw() -> u32 {
    90
}

impl Default for QuotaPolicy {
    fn default() -> Self {
        Self {
            freeze_at_percent: default_freeze(),
            thaw_below_percent: default_thaw(),
        }
    }
}

impl TryFrom<RawPolicy> for QuotaPolicy {
    type Error = String;

    fn try_from(raw: RawPolicy) -> Result<Self, String> {
        if !(1..=1000).contains(&raw.freeze_at_percent) {
            return Err(format!(
                "freeze_at_percent must be 1 to 1000, not {}",
                raw.freeze_at_percent
            ));
        }
        if raw.thaw_below_percent == 0 || raw.thaw_below_percent > raw.freeze_at_percent {
            return Err(format!(
                "thaw_below_percent must be 1 to freeze_at_percent ({}), not {}",
                raw.freeze_at_percent, raw.thaw_below_percent
            ));
        }
        Ok(Self {
            freeze_at_percent: raw.freeze_at_percent,
            thaw_below_percent: raw.thaw_below_percent,
        })
    }
}

impl QuotaPolicy {
    /// Whether an instance using `used` of `quota` bytes is to be frozen, given whether it is
    /// frozen now.
    pub fn frozen(&self, used: u64, quota: u64, frozen_now: bool) -> bool {
        let percent_of = |p: u32| u128::from(quota) * u128::from(p);
        let used = u128::from(used) * 100;
        used >= percent_of(self.freeze_at_percent)
            || (frozen_now && used >= percent_of(self.thaw_below_percent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(freeze: u32, thaw: u32) -> Result<QuotaPolicy, String> {
        serde_json::from_value(
            serde_json::json!({"freeze_at_percent": freeze, "thaw_below_percent": thaw}),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn frozen_at_the_quota_and_thawed_only_below_the_lower_mark() {
        let p = QuotaPolicy::default();
        assert!(!p.frozen(999, 1000, false));
        assert!(p.frozen(1000, 1000, false));
        // Between the marks the instance stays as it is.
        assert!(p.frozen(950, 1000, true));
        assert!(!p.frozen(950, 1000, false));
        assert!(p.frozen(900, 1000, true));
        assert!(!p.frozen(899, 1000, true));
        assert!(p.frozen(u64::MAX, u64::MAX, false), "no overflow");
        assert!(p.frozen(1, 0, false), "a zero quota freezes any data");
    }

    #[test]
    fn marks_are_checked() {
        assert_eq!(policy(100, 90).unwrap(), QuotaPolicy::default());
        assert!(policy(100, 100).is_ok());
        assert!(policy(90, 100).unwrap_err().contains("thaw_below_percent"));
        assert!(policy(0, 0).unwrap_err().contains("freeze_at_percent"));
        let defaults: QuotaPolicy = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(defaults, QuotaPolicy::default());
    }
}
