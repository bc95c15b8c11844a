//! Namespace lifecycle (kernel side: `ebpf/src/lifecycle.rs`): the kernel's counters read
//! into the model's plain data, and each creation, teardown or setup failure applied to the
//! model (namespace table, owner, journal).

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData},
};
use netns_agent_common::{
    COMM_LEN,
    events::kind,
    lifecycle::{LifecycleEvent, SETUP_HISTOGRAM_SLOTS, counter},
};

use super::EventContext;
use crate::{
    kernel::{
        clock,
        maps::{MapError, take},
        procfs,
    },
    model::{counters::LifecycleCounters, journal::Entry, namespaces::Creation, owners::Owner},
    parse::labels,
};

/// The kernel's lifecycle maps.
pub struct LifecycleMaps {
    counters: Array<MapData, u64>,
    histogram: Array<MapData, u64>,
    by_comm: HashMap<MapData, [u8; COMM_LEN], u64>,
    failed_by_comm: HashMap<MapData, [u8; COMM_LEN], u64>,
}

impl LifecycleMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, MapError> {
        Ok(Self {
            counters: take(ebpf, "LIFECYCLE_COUNTERS")?,
            histogram: take(ebpf, "SETUP_HISTOGRAM")?,
            by_comm: take(ebpf, "CREATED_BY_COMM")?,
            failed_by_comm: take(ebpf, "FAILED_BY_COMM")?,
        })
    }

    fn counter(&self, slot: u32) -> u64 {
        self.counters.get(&slot, 0).unwrap_or(0)
    }

    pub fn read(&self) -> LifecycleCounters {
        LifecycleCounters {
            created_by_comm: self
                .by_comm
                .iter()
                .filter_map(Result::ok)
                .map(|(comm, n)| (labels::from_kernel(&comm), n))
                .collect(),
            created_comm_overflow: self.counter(counter::CREATED_COMM_OVERFLOW),
            setup_failures: self.counter(counter::SETUP_FAILURES),
            failed_by_comm: self
                .failed_by_comm
                .iter()
                .filter_map(Result::ok)
                .map(|(comm, n)| (labels::from_kernel(&comm), n))
                .collect(),
            failed_comm_overflow: self.counter(counter::FAILED_COMM_OVERFLOW),
            setup_failures_unattributed: self.counter(counter::SETUP_FAILURES_UNATTRIBUTED),
            setup_buckets: (0..SETUP_HISTOGRAM_SLOTS)
                .map(|slot| self.histogram.get(&slot, 0).unwrap_or(0))
                .collect(),
            setup_sum_ns: self.counter(counter::SETUP_SUM_NS),
            destroyed: self.counter(counter::DESTROYED),
            // Two's complement in the kernel: seeded by the walk, so never below zero once
            // the inventory ran; clamp for kernels where it cannot.
            alive: (self.counter(counter::ALIVE) as i64).max(0) as u64,
            live_full: self.counter(counter::LIVE_FULL),
            reconciled: self.counter(counter::RECONCILED),
        }
    }
}

/// Applies one lifecycle event to the model.
pub fn apply(cx: &EventContext<'_>, e: &LifecycleEvent) {
    if e.kind == kind::NETNS_FIRST_EXEC {
        return first_exec(cx, e);
    }
    let entry = match e.kind {
        kind::NETNS_CREATED => created(cx, e),
        kind::NETNS_DESTROYED => destroyed(cx, e),
        _ => Entry { kind: "netns_setup_failed".into(), error: Some(e.error), ..base(e) },
    };
    // One line per event: busy hosts create and destroy namespaces by the thousand, so the
    // routine ones are debug (the journal keeps them); a failure is a warning.
    if e.kind == kind::NETNS_CREATED || e.kind == kind::NETNS_DESTROYED {
        log::debug!("{}", entry.detail());
    } else {
        log::warn!("{}", entry.detail());
    }
    cx.model.with(|state| state.journal.push(entry));
}

fn base(e: &LifecycleEvent) -> Entry {
    Entry {
        time: crate::model::journal::format_time(clock::wall(e.ts_ns)),
        pid: e.pid,
        comm: labels::from_kernel(&e.comm),
        ..Default::default()
    }
}

/// A creation: track it, resolve who made it before the process can exit.
fn created(cx: &EventContext<'_>, e: &LifecycleEvent) -> Entry {
    cx.model.with(|state| {
        state.namespaces.alive(e.cookie, e.inum);
        // A scan that began after the creation saw this namespace (not an earlier one with
        // its number) though its event arrives only now: what it found is this one's owner.
        let scanned_after = state.ownership.scanned.is_some_and(|at| at >= clock::wall(e.ts_ns));
        if let Some(owner) = state.ownership.owners.get(&e.inum).filter(|_| scanned_after) {
            let owner = owner.clone();
            state.namespaces.remember_owner(e.inum, &owner);
        }
    });
    (cx.on_new_namespace)();
    let creator = procfs::process(cx.sources, e.pid as i32);
    // The creator's cgroup as the kernel saw it names the container even when the process
    // is already gone (a runtime's short-lived child); /proc, when it is still there, agrees.
    let container_id = match &creator {
        Some(c) if !c.container_id.is_empty() => c.container_id.clone(),
        _ => cx.cgroups.lock().unwrap_or_else(|p| p.into_inner()).container_id(e.cgroup_id),
    };
    // The process now in the namespace (the caller of unshare, a clone's child).
    let member_pid = if e.member_pid != 0 { e.member_pid } else { e.pid };
    let member = if member_pid == e.pid { creator } else { procfs::process(cx.sources, member_pid as i32) };
    let setup_ms = e.duration_ns as f64 / 1e6;
    let base = base(e);
    let pod = cx.model.with(|state| {
        if let Some(member) = member.filter(|m| m.netns == e.inum) {
            let member_container =
                if member.container_id.is_empty() { container_id.clone() } else { member.container_id };
            // The process in it now is this namespace's for sure (an older scan's entry for
            // its number may be an earlier namespace's): remembered on its own.
            let seen = Owner {
                main: Some(member.info.clone()),
                processes: 1,
                container_id: member_container.clone(),
                ..Owner::default()
            };
            state.namespaces.remember_owner(e.inum, &seen);
            let owner = state.ownership.owners.entry(member.netns).or_default();
            if owner.main.is_none() {
                owner.main = Some(member.info);
                owner.processes = owner.processes.max(1);
                owner.container_id = member_container;
            }
        }
        state.namespaces.created(
            e.cookie,
            clock::wall(e.ts_ns),
            Creation { pid: e.pid, comm: base.comm.clone(), container_id: container_id.clone(), setup_ms },
        );
        state.ownership.owners.get(&e.inum).map(|o| o.pod.clone()).filter(|p| !p.is_empty())
    });
    Entry {
        kind: "netns_created".into(),
        netns: Some(e.inum),
        cookie: Some(e.cookie),
        container_id: Some(container_id).filter(|c| !c.is_empty()),
        pod,
        setup_ms: (e.duration_ns != 0).then_some(setup_ms),
        ..base
    }
}

/// An exec in a new namespace: its real main process may have started (a container's
/// entrypoint replacing `runc:[2:INIT]`, or the first process of a namespace a runtime made
/// empty). Its owner is named now rather than at the next full scan, so the first series a
/// scrape sees for a running container already names it.
fn first_exec(cx: &EventContext<'_>, e: &LifecycleEvent) {
    // A helper that already exited again (iptables run in the namespace by a runtime) names
    // nobody: only a live process in the namespace can be its main one.
    let Some(record) = procfs::process(cx.sources, e.pid as i32).filter(|r| r.netns == e.inum) else {
        return;
    };
    let info = record.info;
    let container_id = if record.container_id.is_empty() {
        cx.cgroups.lock().unwrap_or_else(|p| p.into_inner()).container_id(e.cgroup_id)
    } else {
        record.container_id
    };
    log::debug!("netns {}: exec by {} ({})", e.inum, info.pid, info.comm);
    // The exec'ing process is the namespace's main one unless an older process is still in
    // it (a container's init while a helper execs, a pause process joined by others). A main
    // process recorded earlier may be gone since (the runtime's child that made the
    // namespace): only a live one counts. Checked outside the lock.
    let recorded = cx.model.with(|state| state.ownership.owners.get(&e.inum).and_then(|o| o.main.clone()));
    let older = recorded.is_some_and(|m| {
        m.pid != info.pid
            && m.start_ticks <= info.start_ticks
            && procfs::process(cx.sources, m.pid).is_some_and(|r| r.netns == e.inum)
    });
    if older {
        return;
    }
    cx.model.with(|state| {
        state.exec_owned.insert(e.inum, std::time::Instant::now());
        let owner = state.ownership.owners.entry(e.inum).or_default();
        owner.main = Some(info);
        owner.processes = owner.processes.max(1);
        if !container_id.is_empty() {
            owner.container_id = container_id;
        }
        let owner = owner.clone();
        state.namespaces.remember_owner(e.inum, &owner);
    });
}

fn destroyed(cx: &EventContext<'_>, e: &LifecycleEvent) -> Entry {
    let age = cx.model.with(|state| {
        state.namespaces.destroyed(e.cookie, e.inum, std::time::Instant::now(), e.ts_ns);
        state
            .namespaces
            .get(e.cookie)
            .filter(|ns| ns.created.is_some())
            .and_then(|ns| clock::wall(e.ts_ns).duration_since(ns.first_seen).ok())
    });
    Entry {
        kind: "netns_destroyed".into(),
        netns: Some(e.inum),
        cookie: Some(e.cookie),
        age_seconds: age.map(|a| a.as_secs_f64()),
        ..base(e)
    }
}
