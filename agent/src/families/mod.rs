//! The event families, one file each with the same stem as `ebpf/src/` and `common/src/`:
//! `lifecycle`, `moves`, `routes`. Each reads its kernel maps into the model's plain counters
//! and applies its kernel records to the model. Kernel in, model out: nothing here renders.

pub mod lifecycle;
pub mod moves;
pub mod routes;

use std::collections::HashSet;

use aya::{
    Ebpf,
    maps::{Array, MapData},
};

use crate::{
    kernel::{
        maps::{MapError, take},
        procfs::{CgroupNames, Sources},
        ring::Event,
    },
    model::{Model, counters::Counters},
};

/// Every counter map the families read, taken out of the loaded object once.
pub struct FamilyMaps {
    lifecycle: lifecycle::LifecycleMaps,
    moves: moves::MoveMaps,
    routes: routes::RouteMaps,
    events_lost: Array<MapData, u64>,
    cleanup: Array<MapData, u64>,
    /// Whether the teardown-batch probe attached (without it, `dying` cannot be told).
    cleanup_attached: bool,
}

impl FamilyMaps {
    pub fn take(ebpf: &mut Ebpf, cleanup_attached: bool) -> Result<Self, MapError> {
        Ok(Self {
            lifecycle: lifecycle::LifecycleMaps::take(ebpf)?,
            moves: moves::MoveMaps::take(ebpf)?,
            routes: routes::RouteMaps::take(ebpf)?,
            events_lost: take(ebpf, "EVENTS_LOST")?,
            cleanup: take(ebpf, "CLEANUP_BATCHES")?,
            cleanup_attached,
        })
    }

    /// When the last teardown batch ended (boot ns), if the probe that tells is attached.
    pub fn cleanup_end_ns(&self) -> Option<u64> {
        self.cleanup_attached.then(|| self.cleanup.get(&1, 0).unwrap_or(0))
    }

    /// Everything the kernel counts, now.
    pub fn read(&self) -> Counters {
        Counters {
            lifecycle: self.lifecycle.read(),
            events_lost: self.events_lost.get(&0, 0).unwrap_or(0),
            cleanup_end_ns: self.cleanup_end_ns(),
            routes: self.routes.read(),
            route_keys_full: self.routes.keys_full(),
            moves: self.moves.read(),
        }
    }

    /// Gives route-counter lines to the namespaces in `cookies` that have none yet.
    pub fn give_lines(&mut self, cookies: impl IntoIterator<Item = u64>) {
        self.routes.give_lines(cookies);
    }

    /// Makes the route counters of namespaces the agent just learned of (see
    /// [`routes::RouteMaps::seed`]).
    pub fn seed(&mut self, cookies: impl IntoIterator<Item = u64>) {
        self.routes.seed(cookies);
    }

    /// Deletes the kernel-side counters of namespaces whose series expired.
    pub fn forget(&mut self, cookies: &HashSet<u64>) {
        self.routes.forget(cookies);
        self.moves.forget(cookies);
    }
}

/// What applying an event needs besides the event.
pub struct EventContext<'a> {
    pub model: &'a Model,
    pub sources: &'a Sources,
    /// Container ids by cgroup id, for creators that exited before /proc could be read.
    pub cgroups: &'a std::sync::Mutex<CgroupNames>,
    /// Called when a namespace appears, so attribution looks soon.
    pub on_new_namespace: &'a (dyn Fn() + Sync),
}

/// Applies one kernel record to the model. Blocking (may read /proc): call it from a
/// blocking thread.
pub fn apply(cx: &EventContext<'_>, event: Event) {
    match event {
        Event::Lifecycle(e) => lifecycle::apply(cx, &e),
        Event::Move(e) => moves::apply(cx, &e),
    }
}
