//! Namespace lifecycle in user space: the kernel's counters for `/metrics` (kernel side:
//! `ebpf/src/lifecycle.rs`); each event also reaches the journal through the event stream.

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData},
};
use netns_agent_common::{
    COMM_LEN,
    lifecycle::{SETUP_BUCKETS_NS, SETUP_HISTOGRAM_SLOTS, counter},
};
use prometheus::proto::MetricFamily;

use crate::{
    labels,
    maps::{MapError, take},
    metrics,
};

/// Comm label for creations the per-comm table had no room for.
pub const OTHER_COMM: &str = "(other)";

/// The kernel's lifecycle counters.
pub struct LifecycleMaps {
    counters: Array<MapData, u64>,
    histogram: Array<MapData, u64>,
    by_comm: HashMap<MapData, [u8; COMM_LEN], u64>,
}

impl LifecycleMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, MapError> {
        Ok(Self {
            counters: take(ebpf, "LIFECYCLE_COUNTERS")?,
            histogram: take(ebpf, "SETUP_HISTOGRAM")?,
            by_comm: take(ebpf, "CREATED_BY_COMM")?,
        })
    }

    pub fn counter(&self, slot: u32) -> u64 {
        self.counters.get(&slot, 0).unwrap_or(0)
    }

    pub fn collect(&self, out: &mut Vec<MetricFamily>) {
        let mut created = metrics::Family::new(&metrics::CREATED);
        for (comm, count) in self.by_comm.iter().filter_map(Result::ok) {
            created.add(&[&labels::from_kernel(&comm)], count as f64);
        }
        let overflow = self.counter(counter::CREATED_COMM_OVERFLOW);
        if overflow > 0 {
            created.add(&[OTHER_COMM], overflow as f64);
        }

        let bounds: Vec<f64> = SETUP_BUCKETS_NS.iter().map(|ns| *ns as f64 / 1e9).collect();
        let counts: Vec<u64> =
            (0..SETUP_HISTOGRAM_SLOTS).map(|slot| self.histogram.get(&slot, 0).unwrap_or(0)).collect();
        let mut duration = metrics::Family::new(&metrics::SETUP_DURATION);
        duration.histogram(&bounds, &counts, self.counter(counter::SETUP_SUM_NS) as f64 / 1e9);

        let single = |def: &'static metrics::MetricDef, value: f64| {
            let mut f = metrics::Family::new(def);
            f.add(&[], value);
            f.finish()
        };
        out.extend(
            [
                created.finish(),
                single(&metrics::SETUP_FAILURES, self.counter(counter::SETUP_FAILURES) as f64),
                duration.finish(),
                single(&metrics::DESTROYED, self.counter(counter::DESTROYED) as f64),
                // Two's complement in the kernel: seeded by the walk, so never below zero
                // once the inventory ran; clamp for kernels where it cannot.
                single(&metrics::ALIVE, (self.counter(counter::ALIVE) as i64).max(0) as f64),
                single(&metrics::LIVE_FULL, self.counter(counter::LIVE_FULL) as f64),
                single(&metrics::RECONCILED, self.counter(counter::RECONCILED) as f64),
            ]
            .into_iter()
            .flatten(),
        );
    }
}
