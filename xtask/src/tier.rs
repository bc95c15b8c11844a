//! One row of `cargo xtask test`'s summary, shared by the tiers' runners.

use std::time::Duration;

/// One row of the summary.
pub struct Tier {
    pub name: String,
    pub passed: u32,
    pub failed: u32,
    /// Set when the tier could not run its tests to the end.
    pub error: Option<String>,
    /// Shown after the row without counting as a failure (what a failed test left behind).
    pub note: Option<String>,
    pub elapsed: Duration,
}

impl Tier {
    pub fn ok(&self) -> bool {
        self.failed == 0 && self.error.is_none()
    }
}
