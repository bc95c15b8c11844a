//! The running agent's context: the model, the kernel's counter maps, the facts fixed at
//! start-up, and the operations the tasks and the server perform on them.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use super::tasks::Health;
use crate::{
    expose::Source,
    families::{self, EventContext, FamilyMaps},
    kernel::{procfs, ring::Event},
    model::{
        Model,
        journal::Filter,
        owners::{self, Ownership},
        snapshot::{AgentFacts, Snapshot},
        states::{self, State},
        view::EventsView,
    },
};

pub struct Agent {
    pub facts: AgentFacts,
    pub model: Model,
    /// The kernel's counter maps (one lock: reading takes it briefly, forgetting too).
    pub maps: Mutex<FamilyMaps>,
    pub sources: procfs::Sources,
    pub health: Health,
    /// Woken when a namespace appears, so the next attribution scan comes soon.
    pub rescan_soon: tokio::sync::Notify,
    /// Container ids by cgroup id (for creators gone before /proc was read).
    pub cgroups: Mutex<procfs::CgroupNames>,
    /// Set when the first attribution scan has finished (`/-/ready`).
    pub scanned: std::sync::atomic::AtomicBool,
    /// Set when the last SIGHUP's config was refused; cleared by one that loads.
    pub reload_failed: std::sync::atomic::AtomicBool,
    /// The loaded programs' names by kernel id, for their cost metrics.
    pub programs: crate::kernel::health::ProgramNames,
}

impl Agent {
    /// Records how the last config reload went.
    pub fn set_reload_outcome(&self, ok: bool) {
        self.reload_failed.store(!ok, std::sync::atomic::Ordering::Relaxed);
    }

    fn maps(&self) -> std::sync::MutexGuard<'_, FamilyMaps> {
        self.maps.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies a batch of kernel records. Blocking (reads /proc for creators).
    pub fn apply(&self, events: Vec<Event>) {
        let notify = || self.rescan_soon.notify_one();
        let cx = EventContext {
            model: &self.model,
            sources: &self.sources,
            cgroups: &self.cgroups,
            on_new_namespace: &notify,
        };
        let created: Vec<u64> = events
            .iter()
            .filter_map(|event| match event {
                Event::Lifecycle(e) if e.kind == netns_agent_common::events::kind::NETNS_CREATED => {
                    Some(e.cookie)
                }
                _ => None,
            })
            .collect();
        for event in events {
            families::apply(&cx, event);
        }
        // Only namespaces the model tracks: their keys leave with them when their series
        // expire. A namespace past the tracking cap is never forgotten one by one, so seeding
        // it would leave two keys per namespace in the kernel's table for good (the churn
        // test's RSS and the key table grew with every namespace).
        let tracked: Vec<u64> = self
            .model
            .with(|state| created.into_iter().filter(|c| state.namespaces.get(*c).is_some()).collect());
        if !tracked.is_empty() {
            self.maps().seed(tracked);
        }
    }

    /// Rescans /proc, mounts and the CNI cache, then looks for what holds any orphaned
    /// namespace. Blocking.
    pub fn rescan(&self) {
        let started = SystemTime::now();
        let started_at = Instant::now();
        let mut owners = owners::scan(&self.sources);
        // Orphan detection concerns namespaces whose teardown has not begun, for which the
        // teardown-batch state does not matter.
        let ctx = self.model.state_context(Some(started), None);
        let orphaned: HashSet<u32> = self.model.with(|state| {
            state
                .namespaces
                .iter()
                .filter(|(_, ns)| states::classify(ns, owners.get(&ns.inum), &ctx) == State::Orphaned)
                .map(|(_, ns)| ns.inum)
                .collect()
        });
        let holders = procfs::find_holders(&self.sources, &orphaned);
        self.model.with(|state| {
            // An exec seen while this scan ran is newer than what the scan read of /proc.
            state.exec_owned.retain(|_, at| *at > started_at);
            for inum in state.exec_owned.keys() {
                if let (Some(scanned), Some(current)) =
                    (owners.get_mut(inum), state.ownership.owners.get(inum))
                {
                    scanned.main.clone_from(&current.main);
                    scanned.container_id.clone_from(&current.container_id);
                }
            }
            state.namespaces.remember_owners(&owners);
            state.ownership = Ownership {
                owners,
                holders: holders.found,
                holders_searched: orphaned,
                holders_unchecked: holders.unchecked,
                scanned: Some(started),
            };
        });
        log::debug!("attribution scan: {} ms", started_at.elapsed().as_millis());
        self.scanned.store(true, std::sync::atomic::Ordering::Release);
        // A scan allocates and frees a map per process; give the pages back to the system.
        crate::kernel::host::trim_heap();
    }

    /// Drops the series of namespaces destroyed longer than `grace` ago, in user space and
    /// in the kernel's counters (a namespace whose teardown is stuck stays: dying), and gives
    /// route-counter lines to alive namespaces that have none.
    pub fn expire(&self, grace: Duration) {
        let cleanup_end = self.maps().cleanup_end_ns();
        let ctx = self.model.state_context(None, cleanup_end);
        let removed: HashSet<u64> = self.model.with(|state| {
            // A stuck teardown (dying) keeps its series so that the alert on it holds; any other
            // torn-down namespace leaves after the grace period, whether or not its teardown
            // batch has been seen to end yet (under emulation a batch can take minutes).
            state
                .namespaces
                .expire(grace, Instant::now(), |ns| states::classify(ns, None, &ctx) != State::Dying);
            state.namespaces.take_removed().into_iter().collect()
        });
        if !removed.is_empty() {
            self.maps().forget(&removed);
            // Their series, journal views and counter keys were read at every scrape until
            // now: give the pages a burst of them took back to the system.
            crate::kernel::host::trim_heap();
        }
        let alive: Vec<u64> = self.model.with(|state| {
            state
                .namespaces
                .iter()
                .filter(|(_, ns)| ns.destroyed_at.is_none())
                .map(|(cookie, _)| cookie)
                .collect()
        });
        self.maps().give_lines(alive);
    }
}

impl Source for Agent {
    fn snapshot(&self) -> Snapshot {
        let counters = self.maps().read();
        let mut snapshot = self.model.snapshot(self.facts.clone(), self.health.tasks(), counters);
        snapshot.config_reload_failed = self.reload_failed.load(std::sync::atomic::Ordering::Relaxed);
        snapshot.kernel = crate::kernel::health::read(&self.programs);
        snapshot
    }

    fn events(&self, filter: &Filter, since: u64, limit: usize) -> EventsView {
        self.model.events(filter, since, limit)
    }

    fn netns_of_pid(&self, pid: i32) -> Option<u32> {
        procfs::process(&self.sources, pid).map(|p| p.netns)
    }

    fn ready(&self) -> bool {
        self.scanned.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// The agent shared by its tasks and the server.
pub type Shared = Arc<Agent>;
