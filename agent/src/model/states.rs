//! What state each namespace the kernel holds is in, and (for leaks) what holds it.
//!
//! - `active`: processes live in it;
//! - `parked`: no process, but a bind mount holds it on purpose (`ip netns add`, a
//!   runtime's netns file);
//! - `orphaned`: no process and no mount: only a file descriptor or a socket somewhere, or
//!   a kernel reference, keeps it (the classic leak);
//! - `terminating`: teardown began and has not finished yet (normally milliseconds);
//! - `dying`: teardown began longer than `dying_after` ago and has not finished (the
//!   "unregister_netdevice: waiting for lo to become free" case);
//! - `new`: created since the last scan of /proc and mounts, not classified yet;
//! - `gone`: torn down; its series stay for the grace period.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::{namespaces::Namespace, owners::Owner};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    New,
    Active,
    Parked,
    Orphaned,
    Terminating,
    Dying,
    Gone,
}

impl State {
    /// The states of namespaces the kernel still holds (exported as `netns_namespaces`).
    pub const HELD: [State; 6] =
        [State::New, State::Active, State::Parked, State::Orphaned, State::Terminating, State::Dying];

    /// The states of a leak: nothing lives in the namespace or names it, yet it stays
    /// (`orphaned`), or its teardown is stuck (`dying`). `terminating` is a teardown under
    /// way (milliseconds), not a leak.
    pub fn is_leak(self) -> bool {
        matches!(self, State::Orphaned | State::Dying)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::New => "new",
            State::Active => "active",
            State::Parked => "parked",
            State::Orphaned => "orphaned",
            State::Terminating => "terminating",
            State::Dying => "dying",
            State::Gone => "gone",
        }
    }
}

/// What the classification needs besides the namespace itself.
pub struct Context {
    /// When the last full scan of /proc and mounts started (None: none yet).
    pub scan_started: Option<SystemTime>,
    /// When the last teardown batch ended, kernel boot ns (None: the probe is detached, so
    /// a teardown is taken as finished when it begins).
    pub cleanup_end_ns: Option<u64>,
    /// Kernel boot time now.
    pub now_ns: u64,
    pub dying_after: Duration,
}

pub fn classify(ns: &Namespace, owner: Option<&Owner>, ctx: &Context) -> State {
    if let Some(began) = ns.destroyed_boot_ns {
        return match ctx.cleanup_end_ns {
            None => State::Gone,
            Some(end) if end >= began => State::Gone,
            Some(_) if ctx.now_ns.saturating_sub(began) >= ctx.dying_after.as_nanos() as u64 => State::Dying,
            Some(_) => State::Terminating,
        };
    }
    let owner = owner.cloned().unwrap_or_default();
    if owner.processes > 0 {
        return State::Active;
    }
    if !owner.names.is_empty() {
        return State::Parked;
    }
    // Only a scan that began after the namespace appeared can say nothing holds it.
    match ctx.scan_started {
        Some(scan) if scan > ns.first_seen => State::Orphaned,
        _ => State::New,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::model::namespaces::NamespaceTable;

    fn ctx(cleanup_end_ns: Option<u64>, now_ns: u64) -> Context {
        Context {
            scan_started: Some(SystemTime::now() + Duration::from_secs(1)),
            cleanup_end_ns,
            now_ns,
            dying_after: Duration::from_secs(30),
        }
    }

    fn namespace() -> Namespace {
        let mut t = NamespaceTable::default();
        t.alive(1, 100);
        t.get(1).unwrap().clone()
    }

    #[test]
    fn held_namespaces_are_active_parked_or_orphaned() {
        let ns = namespace();
        let active = Owner { processes: 2, ..Default::default() };
        let parked = Owner { names: ["red".to_owned()].into(), ..Default::default() };
        assert_eq!(classify(&ns, Some(&active), &ctx(None, 0)), State::Active);
        assert_eq!(classify(&ns, Some(&parked), &ctx(None, 0)), State::Parked);
        assert_eq!(classify(&ns, None, &ctx(None, 0)), State::Orphaned);
        let early = Context { scan_started: Some(ns.first_seen - Duration::from_secs(1)), ..ctx(None, 0) };
        assert_eq!(classify(&ns, None, &early), State::New, "not scanned since it appeared");
    }

    #[test]
    fn teardown_is_terminating_then_dying_until_a_batch_ends() {
        let mut t = NamespaceTable::default();
        t.alive(1, 100);
        t.destroyed(1, 100, Instant::now(), 1_000);
        let ns = t.get(1).unwrap().clone();
        let s = 1_000_000_000;
        assert_eq!(classify(&ns, None, &ctx(Some(500), 1_000 + s)), State::Terminating);
        assert_eq!(classify(&ns, None, &ctx(Some(500), 1_000 + 31 * s)), State::Dying);
        assert_eq!(classify(&ns, None, &ctx(Some(2_000), 1_000 + 31 * s)), State::Gone);
        assert_eq!(classify(&ns, None, &ctx(None, 1_000 + 31 * s)), State::Gone, "no cleanup probe");
    }
}
