//! Device moves (kernel side: `ebpf/src/moves.rs`): per-namespace counters read into the
//! model's plain data, and each move recorded in the journal.

use std::collections::HashSet;

use aya::{
    Ebpf,
    maps::{HashMap, MapData},
};
use netns_agent_common::{
    events::kind,
    moves::{MoveCounts, MoveEvent},
};

use super::EventContext;
use crate::{
    kernel::{
        clock,
        maps::{MapError, take},
    },
    model::journal::{Entry, format_time},
    parse::labels,
};

pub struct MoveMaps {
    moves: HashMap<MapData, u64, MoveCounts>,
}

impl MoveMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, MapError> {
        Ok(Self { moves: take(ebpf, "DEVICE_MOVES")? })
    }

    /// Moves by namespace cookie.
    pub fn read(&self) -> Vec<(u64, MoveCounts)> {
        self.moves.iter().filter_map(Result::ok).collect()
    }

    /// Deletes the counters of namespaces whose series expired.
    pub fn forget(&mut self, cookies: &HashSet<u64>) {
        for cookie in cookies {
            let _ = self.moves.remove(cookie);
        }
    }
}

/// Records one move (or failed move) in the journal.
pub fn apply(cx: &EventContext<'_>, e: &MoveEvent) {
    let moved = e.kind == kind::DEVICE_MOVED;
    let entry = Entry {
        kind: if moved { "device_moved" } else { "device_move_failed" }.into(),
        time: format_time(clock::wall(e.ts_ns)),
        pid: e.pid,
        comm: labels::from_kernel(&e.comm),
        netns: Some(e.from_inum),
        cookie: Some(e.from_cookie),
        to_cookie: moved.then_some(e.to_cookie),
        device: Some(labels::from_kernel(&e.name)),
        ifindex: Some(e.ifindex),
        new_ifindex: moved.then_some(e.new_ifindex),
        from_netns: Some(e.from_inum),
        to_netns: moved.then_some(e.to_inum),
        error: (!moved).then_some(e.error),
        ..Default::default()
    };
    // Routine moves are debug (the journal keeps them); a failed move is a warning.
    if moved {
        log::debug!("{}", entry.detail());
    } else {
        log::warn!("{}", entry.detail());
    }
    cx.model.with(|state| state.journal.push(entry));
}
