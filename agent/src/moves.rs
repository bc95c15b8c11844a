//! Device moves in user space: per-namespace counters for `/metrics` and a line per move in
//! the log (kernel side: `ebpf/src/moves.rs`).

use std::collections::HashSet;

use aya::{
    Ebpf,
    maps::{HashMap, MapData},
};
use netns_agent_common::{
    events::kind,
    moves::{MoveCounts, MoveEvent},
};
use prometheus::proto::MetricFamily;

use crate::{
    labels,
    maps::{MapError, take},
    metrics,
    namespaces::NamespaceTable,
};

pub struct MoveMaps {
    moves: HashMap<MapData, u64, MoveCounts>,
}

impl MoveMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, MapError> {
        Ok(Self { moves: take(ebpf, "DEVICE_MOVES")? })
    }

    pub fn collect(&self, namespaces: &NamespaceTable, out: &mut Vec<MetricFamily>) {
        let mut moves = metrics::Family::new(&metrics::DEVICE_MOVES);
        let mut failures = metrics::Family::new(&metrics::DEVICE_MOVE_FAILURES);
        for (cookie, counts) in self.moves.iter().filter_map(Result::ok) {
            let Some(netns) = namespaces.label(cookie) else {
                continue;
            };
            moves.add(&[&netns, "in"], counts.moved_in as f64);
            moves.add(&[&netns, "out"], counts.moved_out as f64);
            failures.add(&[&netns], counts.failed as f64);
        }
        out.extend(moves.finish());
        out.extend(failures.finish());
    }

    /// Per namespace (cookie).
    pub fn totals(&self) -> crate::api::Totals<MoveCounts> {
        self.moves.iter().filter_map(Result::ok).collect()
    }

    pub fn forget(&mut self, cookies: &HashSet<u64>) {
        for cookie in cookies {
            let _ = self.moves.remove(cookie);
        }
    }
}

/// A one-line description of a move for the log.
pub fn describe(event: &MoveEvent) -> String {
    let name = labels::from_kernel(&event.name);
    let comm = labels::from_kernel(&event.comm);
    if event.kind == kind::DEVICE_MOVED {
        format!(
            "device {name:?} (ifindex {} -> {}) moved from netns {} to netns {} by pid {} ({comm:?})",
            event.ifindex, event.new_ifindex, event.from_inum, event.to_inum, event.pid
        )
    } else {
        format!(
            "device {name:?} (ifindex {}) failed to leave netns {} (pid {} {comm:?}, error {})",
            event.ifindex, event.from_inum, event.pid, event.error
        )
    }
}
