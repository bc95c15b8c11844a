//! Device moves in user space: per-namespace counters for `/metrics` (kernel side:
//! `ebpf/src/moves.rs`); each move also reaches the journal through the event stream.

use std::collections::HashSet;

use aya::{
    Ebpf,
    maps::{HashMap, MapData},
};
use netns_agent_common::moves::MoveCounts;
use prometheus::proto::MetricFamily;

use crate::{
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
