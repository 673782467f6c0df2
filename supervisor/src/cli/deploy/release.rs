//! Release names and the choices made from a host's list of them: which to delete after a deploy,
//! which one `revert N` goes back to. Pure: the scripts report the list, these decide.
//!
//! A release is named `<UTC time>-<short commit>` (`20261202-070100-1a2b3c4`), so that sorting the
//! names sorts the releases by the time they were deployed, on every host alike (one rollout gives
//! every host the same name).

use chrono::{DateTime, Utc};

/// The time part of the releases one rollout creates.
pub(super) fn stamp(now: DateTime<Utc>) -> String {
    now.format("%Y%m%d-%H%M%S").to_string()
}

/// Whether `name` can be a release directory (a name the scripts may `rm -rf` under `releases/`).
pub(super) fn plausible(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.starts_with('.')
}

/// The releases to delete so that `keep` remain: the oldest first, never `current` (an operator who
/// reverted far back keeps the release that serves) nor `previous` when `keep` leaves room for it.
pub(super) fn to_prune(releases: &[String], current: &str, previous: Option<&str>, keep: usize) -> Vec<String> {
    let mut sorted: Vec<&String> = releases.iter().filter(|r| plausible(r)).collect();
    sorted.sort();
    let excess = sorted.len().saturating_sub(keep.max(1));
    let spared = |r: &str| r == current || (keep > 1 && previous == Some(r));
    sorted.into_iter().filter(|r| !spared(r)).take(excess).cloned().collect()
}

/// The release `back` steps before `current` in deploy order, or why there is none.
pub(super) fn revert_target(releases: &[String], current: Option<&str>, back: usize) -> Result<String, String> {
    let mut sorted: Vec<&String> = releases.iter().filter(|r| plausible(r)).collect();
    sorted.sort();
    let Some(current) = current.filter(|c| !c.is_empty()) else {
        return Err("no current release to go back from (deploy first)".to_owned());
    };
    let Some(at) = sorted.iter().position(|r| *r == current) else {
        return Err(format!("the current release {current} is not in releases/"));
    };
    match at.checked_sub(back) {
        Some(target) if back > 0 => Ok(sorted[target].clone()),
        _ => Err(format!(
            "no release {back} before {current}: {} older release(s) kept ({})",
            at,
            if at == 0 {
                "none".to_owned()
            } else {
                sorted[..at].iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
            }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_stamp_sorts_as_time_does() {
        let at = |s: &str| stamp(DateTime::parse_from_rfc3339(s).expect("time").with_timezone(&Utc));
        assert_eq!(at("2026-12-02T07:01:00+00:00"), "20261202-070100");
        assert!(at("2026-12-02T09:59:59+00:00") < at("2026-12-02T10:00:00+00:00"));
        assert!(at("2026-12-31T23:59:59+00:00") < at("2027-01-01T00:00:00+00:00"));
    }

    #[test]
    fn pruning_keeps_the_newest_and_never_the_current_release() {
        let all = names(&["20261201-a", "20261203-c", "20261202-b", "20261204-d"]);
        // (current, previous, keep, deleted)
        let table: &[(&str, Option<&str>, usize, &[&str])] = &[
            ("20261204-d", Some("20261203-c"), 5, &[]),
            ("20261204-d", Some("20261203-c"), 4, &[]),
            ("20261204-d", Some("20261203-c"), 2, &["20261201-a", "20261202-b"]),
            ("20261204-d", Some("20261203-c"), 1, &["20261201-a", "20261202-b", "20261203-c"]),
            // After a revert to the oldest: it stays, the oldest others go.
            ("20261201-a", Some("20261204-d"), 2, &["20261202-b", "20261203-c"]),
            ("20261201-a", None, 1, &["20261202-b", "20261203-c", "20261204-d"]),
            // keep = 0 is refused by the file's checks; here it keeps the current one anyway.
            ("20261204-d", None, 0, &["20261201-a", "20261202-b", "20261203-c"]),
        ];
        for (current, previous, keep, deleted) in table {
            assert_eq!(to_prune(&all, current, *previous, *keep), names(deleted), "{current} {previous:?} keep {keep}");
        }
        let odd = names(&["..", ".x.tmp", "a/b", "20261201-a"]);
        assert_eq!(to_prune(&odd, "20261201-a", None, 1), Vec::<String>::new(), "nothing that is not a release");
    }

    #[test]
    fn revert_counts_back_from_the_current_release() {
        let all = names(&["20261203-c", "20261201-a", "20261202-b"]);
        assert_eq!(revert_target(&all, Some("20261203-c"), 1), Ok("20261202-b".to_owned()));
        assert_eq!(revert_target(&all, Some("20261203-c"), 2), Ok("20261201-a".to_owned()));
        assert_eq!(revert_target(&all, Some("20261202-b"), 1), Ok("20261201-a".to_owned()));
        let err = revert_target(&all, Some("20261203-c"), 3).expect_err("too far");
        assert!(err.contains("2 older release(s) kept (20261201-a, 20261202-b)"), "{err}");
        assert!(revert_target(&all, Some("20261201-a"), 1).expect_err("oldest").contains("none"));
        assert!(revert_target(&all, None, 1).is_err());
        assert!(revert_target(&all, Some("gone"), 1).expect_err("unknown").contains("not in releases/"));
        assert!(revert_target(&all, Some("20261203-c"), 0).is_err(), "0 steps back is no revert");
    }
}
