//! Bounds every spec respects, whether it comes from a file or a request. A leaf: the file's schema
//! and the spec's own checks both enforce them.

/// The most instances one app may have, in a file, a request or after `chatctl scale`: far more
/// than any machine runs, small enough that a slot table of this size is cheap.
pub const MAX_INSTANCES: usize = 4096;

/// The longest duration a spec may carry (365 days). Deadlines are `Instant + duration`, which
/// panics on overflow; a year is longer than any sane timeout and far from that overflow.
pub const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);
