//! The model: every namespace the agent knows (by cookie), its state, its owners, and the
//! journal of what happened to it. One lock guards it all; readers take a [`Snapshot`],
//! which joins namespaces, owners and the kernel's counters once, and every way out
//! (`/metrics`, the JSON API, the CLI) renders from that one join.

pub mod counters;
pub mod journal;
pub mod namespaces;
pub mod owners;
pub mod snapshot;
pub mod states;
pub mod view;

use std::{
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use journal::Journal;
use namespaces::NamespaceTable;
use owners::Ownership;

/// What the model holds, behind its one lock.
pub struct ModelState {
    pub namespaces: NamespaceTable,
    pub ownership: Ownership,
    pub journal: Journal,
    /// Namespaces whose owner a first-exec event set, and when: a scan that began before
    /// then must not put back what it read earlier.
    pub exec_owned: std::collections::HashMap<u32, std::time::Instant>,
}

/// The agent's model of the host's namespaces.
pub struct Model {
    state: Mutex<ModelState>,
    /// A teardown unfinished after this long is `dying` (milliseconds; a config reload
    /// changes it).
    dying_after_ms: std::sync::atomic::AtomicU64,
}

impl Model {
    pub fn new(namespaces: NamespaceTable, journal: Journal, dying_after: Duration) -> Self {
        Self {
            state: Mutex::new(ModelState {
                namespaces,
                ownership: Ownership::default(),
                journal,
                exec_owned: Default::default(),
            }),
            dying_after_ms: std::sync::atomic::AtomicU64::new(dying_after.as_millis() as u64),
        }
    }

    /// After how long an unfinished teardown is `dying`.
    pub fn dying_after(&self) -> Duration {
        Duration::from_millis(self.dying_after_ms.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Changes it (config reload).
    pub fn set_dying_after(&self, value: Duration) {
        self.dying_after_ms.store(value.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Runs `f` under the model's lock. Keep `f` short and free of I/O but the journal's.
    pub fn with<R>(&self, f: impl FnOnce(&mut ModelState) -> R) -> R {
        f(&mut self.lock())
    }

    fn lock(&self) -> MutexGuard<'_, ModelState> {
        // A panicked holder leaves plain data that is still consistent enough to serve.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The classification context now.
    pub fn state_context(
        &self,
        scan_started: Option<std::time::SystemTime>,
        cleanup_end_ns: Option<u64>,
    ) -> states::Context {
        states::Context {
            scan_started,
            cleanup_end_ns,
            now_ns: crate::kernel::clock::boot_ns(),
            dying_after: self.dying_after(),
        }
    }
}
