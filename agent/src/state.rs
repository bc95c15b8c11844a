//! The running agent's state: what `/metrics` and the API read, what the event stream and
//! the periodic scans update.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
    time::{Duration, Instant, SystemTime},
};

use aya::maps::{Array, MapData};
use netns_agent_common::{events::kind, lifecycle::LifecycleEvent, moves::MoveEvent};
use prometheus::proto::MetricFamily;

use crate::{
    attribution::{self, Holder, Owner, Sources},
    client, clock,
    events::Event,
    journal::{self, Entry, Journal},
    labels,
    lifecycle::LifecycleMaps,
    metrics,
    moves::MoveMaps,
    namespaces::{Creation, NamespaceTable},
    probes::Mode,
    routes::RouteMaps,
    states::{self, State},
};

/// Locks a mutex, recovering from a panicked holder (the data stays usable).
pub fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The result of the last full attribution scan.
#[derive(Default)]
pub struct Ownership {
    pub owners: HashMap<u32, Owner>,
    /// Processes holding orphaned namespaces by a file descriptor.
    pub holders: HashMap<u32, Vec<Holder>>,
    /// When the scan began.
    pub scanned: Option<SystemTime>,
}

pub struct AgentState {
    pub kernel: String,
    pub probes: Vec<(&'static str, Option<Mode>, Vec<Mode>)>,
    pub lifecycle: LifecycleMaps,
    pub events_lost: Array<MapData, u64>,
    pub cleanup: Array<MapData, u64>,
    pub routes: Mutex<RouteMaps>,
    pub moves: Mutex<MoveMaps>,
    pub namespaces: Mutex<NamespaceTable>,
    pub ownership: Mutex<Ownership>,
    pub journal: Mutex<Journal>,
    pub sources: Sources,
    pub dying_after: Duration,
    /// Whether the teardown-batch probe is attached (without it, dying cannot be told).
    pub cleanup_attached: bool,
    /// Woken when a namespace appears, so the next scan comes soon.
    pub rescan_soon: tokio::sync::Notify,
}

impl AgentState {
    pub fn render(&self) -> String {
        metrics::render(&self.gather())
    }

    pub fn gather(&self) -> Vec<MetricFamily> {
        let mut out = Vec::new();
        let mut info = metrics::Family::new(&metrics::AGENT_INFO);
        info.add(&[env!("CARGO_PKG_VERSION"), &self.kernel], 1.0);
        out.extend(info.finish());
        let mut attached = metrics::Family::new(&metrics::PROBE_ATTACHED);
        for (probe, mode, modes) in &self.probes {
            for m in modes {
                attached.add(&[probe, m.as_str()], if *mode == Some(*m) { 1.0 } else { 0.0 });
            }
        }
        out.extend(attached.finish());
        let mut lost = metrics::Family::new(&metrics::EVENTS_LOST);
        lost.add(&[], self.events_lost.get(&0, 0).unwrap_or(0) as f64);
        out.extend(lost.finish());
        self.lifecycle.collect(&mut out);
        let namespaces = lock(&self.namespaces);
        self.collect_namespaces(&namespaces, &mut out);
        lock(&self.moves).collect(&namespaces, &mut out);
        lock(&self.routes).collect(&namespaces, &mut out);
        out
    }

    /// How state is classified right now.
    pub fn state_context(&self, scanned: Option<SystemTime>) -> states::Context {
        states::Context {
            scan_started: scanned,
            cleanup_end_ns: self.cleanup_attached.then(|| self.cleanup.get(&1, 0).unwrap_or(0)),
            now_ns: clock::boot_ns(),
            dying_after: self.dying_after,
        }
    }

    /// `netns_info`, `netns_processes`, `netns_state`, `netns_age_seconds`.
    fn collect_namespaces(&self, namespaces: &NamespaceTable, out: &mut Vec<MetricFamily>) {
        let ownership = lock(&self.ownership);
        let ctx = self.state_context(ownership.scanned);
        let mut info = metrics::Family::new(&metrics::NETNS_INFO);
        let mut processes = metrics::Family::new(&metrics::NETNS_PROCESSES);
        let mut age = metrics::Family::new(&metrics::NETNS_AGE);
        let mut by_state: HashMap<State, u64> = State::HELD.iter().map(|s| (*s, 0)).collect();
        let none = Owner::default();
        let now = SystemTime::now();
        for (_, ns) in namespaces.iter() {
            let owner = ownership.owners.get(&ns.inum).filter(|_| ns.destroyed_at.is_none()).unwrap_or(&none);
            let state = states::classify(ns, Some(owner), &ctx);
            if let Some(n) = by_state.get_mut(&state) {
                *n += 1;
            }
            let netns = ns.inum.to_string();
            let (pid, comm) =
                owner.main.as_ref().map_or((String::new(), ""), |m| (m.pid.to_string(), m.comm.as_str()));
            info.add(
                &[
                    &netns,
                    &owner.name_label(),
                    comm,
                    &pid,
                    &owner.container_id,
                    &owner.pod,
                    &owner.pod_namespace,
                ],
                1.0,
            );
            processes.add(&[&netns], f64::from(owner.processes));
            if ns.destroyed_at.is_none() {
                age.add(&[&netns], now.duration_since(ns.first_seen).unwrap_or_default().as_secs_f64());
            }
        }
        let mut state = metrics::Family::new(&metrics::NETNS_STATE);
        for (s, n) in by_state {
            state.add(&[s.as_str()], n as f64);
        }
        let mut dropped = metrics::Family::new(&metrics::NAMESPACES_DROPPED);
        dropped.add(&[], namespaces.dropped as f64);
        out.extend(
            [info.finish(), processes.finish(), state.finish(), age.finish(), dropped.finish()]
                .into_iter()
                .flatten(),
        );
    }

    /// Rescans /proc, mounts and the CNI cache, then looks for what holds any orphaned
    /// namespace.
    pub fn rescan(&self) {
        let started = SystemTime::now();
        let owners = attribution::scan(&self.sources);
        let orphaned: HashSet<u32> = {
            let namespaces = lock(&self.namespaces);
            let ctx = self.state_context(Some(started));
            namespaces
                .iter()
                .filter(|(_, ns)| states::classify(ns, owners.get(&ns.inum), &ctx) == State::Orphaned)
                .map(|(_, ns)| ns.inum)
                .collect()
        };
        let holders = attribution::find_holders(&self.sources, &orphaned);
        *lock(&self.ownership) = Ownership { owners, holders, scanned: Some(started) };
        // A scan allocates and frees a map per process; give the pages back to the system.
        // SAFETY: malloc_trim only releases free heap memory.
        unsafe { libc::malloc_trim(0) };
    }

    /// Applies one kernel event: namespace table, attribution, journal.
    pub fn on_event(&self, event: Event) {
        match event {
            Event::Lifecycle(e) => {
                let entry = match e.kind {
                    kind::NETNS_CREATED => self.created(&e),
                    kind::NETNS_DESTROYED => self.destroyed(&e),
                    _ => Entry {
                        kind: "netns_setup_failed".into(),
                        error: Some(e.error),
                        ..self.entry_base(e.ts_ns, e.pid, &e.comm)
                    },
                };
                log::debug!("{}", client::event_line(&entry));
                lock(&self.journal).push(entry);
            }
            Event::Move(e) => {
                let entry = self.move_entry(&e);
                log::info!("{}", client::event_line(&entry));
                lock(&self.journal).push(entry);
            }
        }
    }

    fn entry_base(&self, ts_ns: u64, pid: u32, comm: &[u8]) -> Entry {
        Entry {
            time: journal::format_time(clock::wall(ts_ns)),
            pid,
            comm: labels::from_kernel(comm),
            ..Default::default()
        }
    }

    /// A creation: track it, resolve who made it before the process can exit.
    fn created(&self, e: &LifecycleEvent) -> Entry {
        lock(&self.namespaces).alive(e.cookie, e.inum);
        self.rescan_soon.notify_one();
        let creator = attribution::process(&self.sources, e.pid as i32);
        let container_id = creator.as_ref().map(|(_, _, c)| c.clone()).unwrap_or_default();
        // The process now in the namespace (the caller of unshare, a clone's child).
        let member = if e.member_pid != 0 { e.member_pid } else { e.pid };
        let member = if member == e.pid {
            creator.clone()
        } else {
            attribution::process(&self.sources, member as i32)
        };
        if let Some((inum, info, container)) = member.filter(|(inum, _, _)| *inum == e.inum) {
            let mut ownership = lock(&self.ownership);
            let owner = ownership.owners.entry(inum).or_default();
            if owner.main.is_none() {
                owner.main = Some(info);
                owner.processes = owner.processes.max(1);
                owner.container_id = container;
            }
        }
        let setup_ms = e.duration_ns as f64 / 1e6;
        let base = self.entry_base(e.ts_ns, e.pid, &e.comm);
        lock(&self.namespaces).created(
            e.cookie,
            clock::wall(e.ts_ns),
            Creation { pid: e.pid, comm: base.comm.clone(), container_id: container_id.clone(), setup_ms },
        );
        let pod = lock(&self.ownership).owners.get(&e.inum).map(|o| o.pod.clone()).filter(|p| !p.is_empty());
        Entry {
            kind: "netns_created".into(),
            netns: Some(e.inum),
            container_id: Some(container_id).filter(|c| !c.is_empty()),
            pod,
            setup_ms: (e.duration_ns != 0).then_some(setup_ms),
            ..base
        }
    }

    fn destroyed(&self, e: &LifecycleEvent) -> Entry {
        let mut namespaces = lock(&self.namespaces);
        namespaces.destroyed(e.cookie, e.inum, Instant::now(), e.ts_ns);
        let age = namespaces
            .get(e.cookie)
            .filter(|ns| ns.created.is_some())
            .and_then(|ns| clock::wall(e.ts_ns).duration_since(ns.first_seen).ok());
        Entry {
            kind: "netns_destroyed".into(),
            netns: Some(e.inum),
            age_seconds: age.map(|a| a.as_secs_f64()),
            ..self.entry_base(e.ts_ns, e.pid, &e.comm)
        }
    }

    fn move_entry(&self, e: &MoveEvent) -> Entry {
        let moved = e.kind == kind::DEVICE_MOVED;
        Entry {
            kind: if moved { "device_moved" } else { "device_move_failed" }.into(),
            netns: Some(e.from_inum),
            device: Some(labels::from_kernel(&e.name)),
            ifindex: Some(e.ifindex),
            new_ifindex: moved.then_some(e.new_ifindex),
            from_netns: Some(e.from_inum),
            to_netns: moved.then_some(e.to_inum),
            error: (!moved).then_some(e.error),
            ..self.entry_base(e.ts_ns, e.pid, &e.comm)
        }
    }

    /// Drops the series of namespaces destroyed longer than `grace` ago, in user space and
    /// in the kernel's counters; a namespace whose teardown has not finished stays (dying).
    pub fn expire(&self, grace: Duration) {
        let ctx = self.state_context(None);
        let removed: HashSet<u64> = {
            let mut namespaces = lock(&self.namespaces);
            namespaces.expire(grace, Instant::now(), |ns| states::classify(ns, None, &ctx) == State::Gone);
            namespaces.take_removed().into_iter().collect()
        };
        if !removed.is_empty() {
            lock(&self.routes).forget(&removed);
            lock(&self.moves).forget(&removed);
        }
    }
}
