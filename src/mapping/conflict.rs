//! Which side keeps a field when Ferry and the CRM disagree.
//!
//! The engine asks this only when the mapped value differs from the target side's value and the
//! target record exists (a record being created takes every non-blank mapped value). The policies
//! read as ownership rules, the same in both directions:
//!
//! | policy | inbound (CRM → Ferry) writes when | outbound (Ferry → CRM) writes when |
//! | --- | --- | --- |
//! | `remote_wins` | always (even a blank) | never |
//! | `local_wins` | never | always (even a blank) |
//! | `prefer_remote_unless_blank` | the CRM value is not blank | the CRM value is blank |
//! | `prefer_local_unless_blank` | the Ferry value is blank | the Ferry value is not blank |
//! | `newest_wins` | the CRM side was modified later | the Ferry side was modified later |
//!
//! `newest_wins` compares per-field modification times where the caller has them (HubSpot's
//! property history, Ferry's per-field times) and record times otherwise; equal times change
//! nothing, so two syncs of the same state never ping-pong.

use chrono::{DateTime, Utc};

use super::model::{ConflictPolicy, Flow};

/// One side of a field for the decision.
#[derive(Debug, Clone, Copy)]
pub struct Side {
    pub blank: bool,
    pub modified: DateTime<Utc>,
}

/// Whether the value flowing in `flow` from `source` overwrites `target`'s.
pub fn source_wins(policy: ConflictPolicy, flow: Flow, source: Side, target: Side) -> bool {
    match (policy, flow) {
        (ConflictPolicy::RemoteWins, Flow::Inbound) => true,
        (ConflictPolicy::RemoteWins, Flow::Outbound) => false,
        (ConflictPolicy::LocalWins, Flow::Inbound) => false,
        (ConflictPolicy::LocalWins, Flow::Outbound) => true,
        // The remote is the source inbound, the target outbound.
        (ConflictPolicy::PreferRemoteUnlessBlank, Flow::Inbound) => !source.blank,
        (ConflictPolicy::PreferRemoteUnlessBlank, Flow::Outbound) => target.blank,
        (ConflictPolicy::PreferLocalUnlessBlank, Flow::Inbound) => target.blank,
        (ConflictPolicy::PreferLocalUnlessBlank, Flow::Outbound) => !source.blank,
        (ConflictPolicy::NewestWins, _) => source.modified > target.modified,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ConflictPolicy::*;
    use Flow::*;

    fn side(blank: bool, minute: u32) -> Side {
        Side {
            blank,
            modified: DateTime::from_timestamp(i64::from(minute) * 60, 0).unwrap_or_default(),
        }
    }

    #[test]
    fn owners_win_both_ways() {
        let (a, b) = (side(false, 1), side(false, 2));
        assert!(source_wins(RemoteWins, Inbound, a, b));
        assert!(source_wins(RemoteWins, Inbound, side(true, 1), b));
        assert!(!source_wins(RemoteWins, Outbound, b, a));
        assert!(!source_wins(LocalWins, Inbound, b, a));
        assert!(source_wins(LocalWins, Outbound, side(true, 1), b));
    }

    #[test]
    fn preferences_yield_to_blanks() {
        let (full, blank) = (side(false, 1), side(true, 1));
        // Inbound: source = remote, target = local.
        assert!(source_wins(PreferRemoteUnlessBlank, Inbound, full, full));
        assert!(!source_wins(PreferRemoteUnlessBlank, Inbound, blank, full));
        assert!(!source_wins(PreferLocalUnlessBlank, Inbound, full, full));
        assert!(source_wins(PreferLocalUnlessBlank, Inbound, full, blank));
        // Outbound: source = local, target = remote.
        assert!(!source_wins(PreferRemoteUnlessBlank, Outbound, full, full));
        assert!(source_wins(PreferRemoteUnlessBlank, Outbound, full, blank));
        assert!(source_wins(PreferLocalUnlessBlank, Outbound, full, full));
        assert!(!source_wins(PreferLocalUnlessBlank, Outbound, blank, full));
    }

    #[test]
    fn newest_wins_and_ties_change_nothing() {
        let (older, newer) = (side(false, 1), side(false, 2));
        for flow in [Inbound, Outbound] {
            assert!(source_wins(NewestWins, flow, newer, older));
            assert!(!source_wins(NewestWins, flow, older, newer));
            assert!(!source_wins(NewestWins, flow, older, older));
        }
    }
}
