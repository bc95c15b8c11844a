//! The namespaces user space knows, by `net_cookie`: what the `netns` label of their series
//! is (the inode number users see in `/proc/PID/ns/net` and `lsns`), and when series of a
//! destroyed namespace may leave the exposition.
//!
//! Fed by lifecycle events and resynchronised from the kernel's alive set on every
//! inventory walk. Inode numbers are reused within seconds: a namespace that takes a dead
//! one's number replaces it at once, so no two series ever carry the same `netns` value.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant, SystemTime},
};

use netns_agent_common::{lifecycle::NetnsRecord, routes::UNKNOWN_NETNS};

use super::owners::Owner;

/// The `netns` label of lookups that could not be attributed.
pub const UNKNOWN_LABEL: &str = "unknown";

/// The `netns` label of namespaces past the tracking cap (`limits.tracked_namespaces`).
pub const OVERFLOW_LABEL: &str = "overflow";

#[derive(Debug, Clone, PartialEq)]
pub struct Namespace {
    pub inum: u32,
    /// When its teardown was seen; series stay for the grace period after it.
    pub destroyed_at: Option<Instant>,
    /// When its teardown began, kernel boot time (compared with teardown batch ends).
    pub destroyed_boot_ns: Option<u64>,
    /// When the agent first knew it: its creation if the agent saw it, else discovery.
    pub first_seen: SystemTime,
    /// Its creation, when the agent saw it.
    pub created: Option<Creation>,
    /// Its owner as the last scan before its teardown saw it: a destroyed namespace keeps
    /// its labels for the grace period.
    pub last_owner: Option<Owner>,
}

/// Who created a namespace, resolved when it happened.
#[derive(Debug, Clone, PartialEq)]
pub struct Creation {
    pub pid: u32,
    pub comm: String,
    pub container_id: String,
    pub setup_ms: f64,
}

impl Namespace {
    fn new(inum: u32) -> Self {
        Self {
            inum,
            destroyed_at: None,
            destroyed_boot_ns: None,
            // The host's namespace is as old as the boot; others found already alive are dated
            // from when the agent first saw them (a lower bound).
            first_seen: if inum == super::owners::HOST_NETNS {
                crate::kernel::clock::wall(0)
            } else {
                SystemTime::now()
            },
            created: None,
            last_owner: None,
        }
    }
}

#[derive(Debug)]
pub struct NamespaceTable {
    by_cookie: HashMap<u64, Namespace>,
    /// inode -> cookie of the namespace that holds that number now.
    by_inum: HashMap<u32, u64>,
    /// Cookies removed since the last `take_removed`, whose kernel-side entries must go.
    removed: Vec<u64>,
    /// Most namespaces tracked one by one; past it they are folded into `overflow`.
    capacity: usize,
    /// Namespaces refused for lack of room (alive ones only).
    refused: HashSet<u64>,
    /// How many namespaces have been refused since start.
    pub dropped: u64,
}

impl Default for NamespaceTable {
    fn default() -> Self {
        Self::with_capacity(usize::MAX)
    }
}

impl NamespaceTable {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            by_cookie: HashMap::new(),
            by_inum: HashMap::new(),
            removed: Vec::new(),
            capacity,
            refused: HashSet::new(),
            dropped: 0,
        }
    }

    /// A namespace is alive (created, or found by the inventory).
    pub fn alive(&mut self, cookie: u64, inum: u32) {
        if !self.by_cookie.contains_key(&cookie) && self.by_cookie.len() >= self.capacity {
            if self.refused.insert(cookie) {
                self.dropped += 1;
            }
            return;
        }
        if let Some(previous) = self.by_inum.insert(inum, cookie)
            && previous != cookie
        {
            // Its number was reused: the old namespace is gone, its series go with it.
            self.by_cookie.remove(&previous);
            self.removed.push(previous);
        }
        self.by_cookie.entry(cookie).or_insert_with(|| Namespace::new(inum));
    }

    /// A namespace was created (after `alive`): records who did it and when.
    pub fn created(&mut self, cookie: u64, at: SystemTime, creation: Creation) {
        if let Some(ns) = self.by_cookie.get_mut(&cookie) {
            ns.first_seen = at;
            ns.created = Some(creation);
        }
    }

    /// A namespace's teardown began (`boot_ns`: when, in kernel time).
    pub fn destroyed(&mut self, cookie: u64, inum: u32, now: Instant, boot_ns: u64) {
        if self.refused.remove(&cookie) {
            return;
        }
        // One the table never held (its creation refused for room and then dropped from
        // `refused` by an inventory walk that no longer found it alive): no room past the
        // cap for it now either.
        if !self.by_cookie.contains_key(&cookie) && self.by_cookie.len() >= self.capacity {
            return;
        }
        let entry = self.by_cookie.entry(cookie).or_insert_with(|| Namespace::new(inum));
        entry.destroyed_at.get_or_insert(now);
        entry.destroyed_boot_ns.get_or_insert(boot_ns);
        self.by_inum.entry(inum).or_insert(cookie);
    }

    /// Resynchronises with the kernel's alive set: adds what events missed, marks as
    /// destroyed what the kernel no longer holds.
    pub fn sync(&mut self, live: &[(u64, NetnsRecord)], now: Instant) {
        let alive: HashMap<u64, u32> = live.iter().map(|(cookie, r)| (*cookie, r.inum)).collect();
        for (cookie, inum) in &alive {
            self.alive(*cookie, *inum);
        }
        self.refused.retain(|cookie| alive.contains_key(cookie));
        let boot_ns = crate::kernel::clock::boot_ns();
        for (cookie, ns) in &mut self.by_cookie {
            if ns.destroyed_at.is_none() && !alive.contains_key(cookie) {
                ns.destroyed_at = Some(now);
                ns.destroyed_boot_ns = Some(boot_ns);
            }
        }
    }

    /// Drops namespaces destroyed more than `grace` ago for which `finished` holds.
    pub fn expire(&mut self, grace: Duration, now: Instant, finished: impl Fn(&Namespace) -> bool) {
        let expired: Vec<u64> = self
            .by_cookie
            .iter()
            .filter(|(_, ns)| ns.destroyed_at.is_some_and(|t| now.duration_since(t) >= grace) && finished(ns))
            .map(|(cookie, _)| *cookie)
            .collect();
        for cookie in expired {
            if let Some(ns) = self.by_cookie.remove(&cookie)
                && self.by_inum.get(&ns.inum) == Some(&cookie)
            {
                self.by_inum.remove(&ns.inum);
            }
            self.removed.push(cookie);
        }
    }

    /// Cookies dropped since the last call (their kernel-side counters can be deleted).
    pub fn take_removed(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.removed)
    }

    /// The `netns` label for a cookie: its inode number, `unknown` for unattributed lookups,
    /// `None` for a namespace this table does not know (not exported).
    pub fn label(&self, cookie: u64) -> Option<String> {
        if cookie == UNKNOWN_NETNS {
            return Some(UNKNOWN_LABEL.to_owned());
        }
        if self.refused.contains(&cookie) {
            return Some(OVERFLOW_LABEL.to_owned());
        }
        self.by_cookie.get(&cookie).map(|ns| ns.inum.to_string())
    }

    pub fn get(&self, cookie: u64) -> Option<&Namespace> {
        self.by_cookie.get(&cookie)
    }

    /// Remembers the owners of the namespaces still alive, from a fresh scan.
    pub fn remember_owners(&mut self, owners: &HashMap<u32, Owner>) {
        for (inum, owner) in owners {
            self.remember_owner(*inum, owner);
        }
    }

    /// Remembers what is known of the owner of the live namespace numbered `inum` (a scan,
    /// or a process seen entering it). What a later look no longer sees is kept: a
    /// container's process usually exits before its namespace is torn down, and the labels a
    /// destroyed namespace keeps should name who it was.
    pub fn remember_owner(&mut self, inum: u32, owner: &Owner) {
        let Some(cookie) = self.by_inum.get(&inum) else { return };
        let Some(ns) = self.by_cookie.get_mut(cookie) else { return };
        if ns.destroyed_at.is_some() {
            return;
        }
        let merged = match ns.last_owner.take() {
            None => owner.clone(),
            Some(last) => {
                let keep = |new: &String, old: String| if new.is_empty() { old } else { new.clone() };
                Owner {
                    names: if owner.names.is_empty() { last.names } else { owner.names.clone() },
                    main: owner.main.clone().or(last.main),
                    processes: owner.processes,
                    container_id: keep(&owner.container_id, last.container_id),
                    pod: keep(&owner.pod, last.pod),
                    pod_namespace: keep(&owner.pod_namespace, last.pod_namespace),
                }
            }
        };
        ns.last_owner = Some(merged);
    }

    /// Every namespace tracked one by one (alive or within its grace period).
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Namespace)> {
        self.by_cookie.iter().map(|(cookie, ns)| (*cookie, ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(inum: u32) -> NetnsRecord {
        NetnsRecord { inum, ..Default::default() }
    }

    #[test]
    fn a_namespace_whose_process_exited_keeps_naming_it_until_teardown() {
        let mut t = NamespaceTable::default();
        t.alive(10, 500);
        let main = crate::kernel::procfs::ProcessInfo { pid: 7, comm: "sleep".into(), start_ticks: 1 };
        let with = Owner {
            names: ["web".to_owned()].into(),
            main: Some(main.clone()),
            processes: 1,
            container_id: "abc".into(),
            ..Default::default()
        };
        t.remember_owners(&HashMap::from([(500, with)]));
        // The process exited: the next scan sees the name only.
        let without = Owner { names: ["web".to_owned()].into(), ..Default::default() };
        t.remember_owners(&HashMap::from([(500, without)]));
        let last = t.get(10).unwrap().last_owner.clone().unwrap();
        assert_eq!((last.main, last.container_id.as_str(), last.processes), (Some(main), "abc", 0));
    }

    #[test]
    fn labels_are_inode_numbers() {
        let mut t = NamespaceTable::default();
        t.alive(10, 4026532000);
        assert_eq!(t.label(10).as_deref(), Some("4026532000"));
        assert_eq!(t.label(UNKNOWN_NETNS).as_deref(), Some("unknown"));
        assert_eq!(t.label(11), None);
    }

    #[test]
    fn destroyed_namespaces_stay_for_the_grace_period() {
        let mut t = NamespaceTable::default();
        let t0 = Instant::now();
        t.alive(10, 500);
        t.destroyed(10, 500, t0, 1);
        t.expire(Duration::from_secs(60), t0 + Duration::from_secs(59), |_| true);
        assert!(t.label(10).is_some());
        t.expire(Duration::from_secs(60), t0 + Duration::from_secs(60), |_| true);
        assert!(t.label(10).is_none());
        assert_eq!(t.take_removed(), vec![10]);
        assert!(t.take_removed().is_empty());
    }

    #[test]
    fn a_reused_inode_replaces_the_dead_namespace_at_once() {
        let mut t = NamespaceTable::default();
        let t0 = Instant::now();
        t.alive(10, 500);
        t.destroyed(10, 500, t0, 1);
        t.alive(11, 500);
        assert_eq!(t.label(11).as_deref(), Some("500"));
        assert_eq!(t.label(10), None, "two series must never share a netns label");
        assert_eq!(t.take_removed(), vec![10]);
    }

    #[test]
    fn namespaces_past_the_cap_fold_into_overflow_and_are_counted_once() {
        let mut t = NamespaceTable::with_capacity(2);
        t.alive(1, 501);
        t.alive(2, 502);
        t.alive(3, 503);
        t.alive(3, 503);
        t.sync(&[(1, record(501)), (2, record(502)), (3, record(503))], Instant::now());
        assert_eq!(t.label(3).as_deref(), Some("overflow"));
        assert_eq!(t.dropped, 1);
        assert_eq!(t.iter().count(), 2, "memory stays bounded by the cap");
        t.destroyed(3, 503, Instant::now(), 1);
        assert_eq!(t.label(3), None);
    }

    #[test]
    fn a_refused_namespace_torn_down_after_a_walk_stays_out_past_the_cap() {
        // Refused for room, then gone from the kernel's list before its teardown event came
        // (the walk forgets it): the teardown must not add it past the cap (seen in the
        // 100,000-namespace soak as hundreds of netns values at a cap of 67).
        let mut t = NamespaceTable::with_capacity(1);
        t.alive(1, 501);
        t.alive(2, 502);
        t.sync(&[(1, record(501))], Instant::now());
        t.destroyed(2, 502, Instant::now(), 1);
        assert_eq!(t.label(2), None);
        assert_eq!(t.iter().count(), 1, "memory stays bounded by the cap");
    }

    #[test]
    fn sync_adds_missed_and_retires_vanished_namespaces() {
        let mut t = NamespaceTable::default();
        let t0 = Instant::now();
        t.alive(10, 500);
        t.sync(&[(11, record(501))], t0);
        assert_eq!(t.label(11).as_deref(), Some("501"));
        assert_eq!(t.get(10).unwrap().destroyed_at, Some(t0));
        assert_eq!(t.get(11).unwrap().destroyed_at, None);
    }
}
