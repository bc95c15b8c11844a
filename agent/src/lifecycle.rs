//! Namespace lifecycle in user space: reads the kernel's counters for `/metrics` and drains
//! the lifecycle ring buffer (kernel side: `ebpf/src/lifecycle.rs`).

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, RingBuf},
};
use netns_agent_common::{
    COMM_LEN,
    lifecycle::{LifecycleEvent, SETUP_BUCKETS_NS, SETUP_HISTOGRAM_SLOTS, counter, event_kind},
};
use prometheus::proto::MetricFamily;
use tokio::io::unix::AsyncFd;

use crate::{labels, metrics};

/// Comm label for creations the per-comm table had no room for.
pub const OTHER_COMM: &str = "(other)";

#[derive(Debug, thiserror::Error)]
#[error("lifecycle map {name}: {reason}")]
pub struct MapError {
    name: &'static str,
    reason: String,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, MapError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(MapError {
        name,
        reason: "missing from the object".into(),
    })?;
    T::try_from(map).map_err(|err| MapError {
        name,
        reason: err.to_string(),
    })
}

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
        let counts: Vec<u64> = (0..SETUP_HISTOGRAM_SLOTS)
            .map(|slot| self.histogram.get(&slot, 0).unwrap_or(0))
            .collect();
        let mut duration = metrics::Family::new(&metrics::SETUP_DURATION);
        duration.histogram(
            &bounds,
            &counts,
            self.counter(counter::SETUP_SUM_NS) as f64 / 1e9,
        );

        let single = |def: &'static metrics::MetricDef, value: f64| {
            let mut f = metrics::Family::new(def);
            f.add(&[], value);
            f.finish()
        };
        out.extend(
            [
                created.finish(),
                single(
                    &metrics::SETUP_FAILURES,
                    self.counter(counter::SETUP_FAILURES) as f64,
                ),
                duration.finish(),
                single(&metrics::DESTROYED, self.counter(counter::DESTROYED) as f64),
                // Two's complement in the kernel: seeded by the walk, so never below zero
                // once the inventory ran; clamp for kernels where it cannot.
                single(
                    &metrics::ALIVE,
                    (self.counter(counter::ALIVE) as i64).max(0) as f64,
                ),
                single(
                    &metrics::EVENTS_LOST,
                    self.counter(counter::EVENTS_LOST) as f64,
                ),
                single(&metrics::LIVE_FULL, self.counter(counter::LIVE_FULL) as f64),
                single(
                    &metrics::RECONCILED,
                    self.counter(counter::RECONCILED) as f64,
                ),
            ]
            .into_iter()
            .flatten(),
        );
    }
}

/// Parses one ring-buffer record.
pub fn parse_event(bytes: &[u8]) -> Option<LifecycleEvent> {
    if bytes.len() < size_of::<LifecycleEvent>() {
        return None;
    }
    // SAFETY: the length is checked and LifecycleEvent is plain data valid for any bytes.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<LifecycleEvent>()) })
}

/// A one-line description of an event for the log.
pub fn describe(event: &LifecycleEvent) -> String {
    let comm = labels::from_kernel(&event.comm);
    match event.kind {
        event_kind::CREATED => format!(
            "netns {} created by pid {} ({comm:?}) in {:.3} ms",
            event.inum,
            event.pid,
            event.duration_ns as f64 / 1e6
        ),
        event_kind::DESTROYED => format!("netns {} teardown began", event.inum),
        event_kind::SETUP_FAILED => {
            format!(
                "netns creation by pid {} ({comm:?}) failed: errno {}",
                event.pid, -event.error
            )
        }
        other => format!("unknown lifecycle event kind {other}"),
    }
}

/// Drains the lifecycle ring buffer until the task is dropped, handing each event on.
pub async fn consume_events(
    ring: RingBuf<MapData>,
    mut handle: impl FnMut(LifecycleEvent),
) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its fd and keeps it open for as long as the AsyncFd holds it.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|err| std::io::Error::other(err.to_string()))?;
    loop {
        let mut guard = fd.readable_mut().await?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            match parse_event(&item) {
                Some(event) => handle(event),
                None => log::warn!("short lifecycle record ({} bytes)", item.len()),
            }
        }
        guard.clear_ready();
    }
}

/// The lifecycle ring buffer, taken out of the object.
pub fn take_events(ebpf: &mut Ebpf) -> Result<RingBuf<MapData>, MapError> {
    take(ebpf, "LIFECYCLE_EVENTS")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_parse_from_ring_records() {
        let mut event = LifecycleEvent::new(event_kind::CREATED);
        event.inum = 4026532000;
        event.pid = 42;
        event.comm[..2].copy_from_slice(b"ip");
        event.duration_ns = 1_500_000;
        // SAFETY: viewing a plain-data struct as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts((&raw const event).cast::<u8>(), size_of::<LifecycleEvent>())
        };
        let parsed = parse_event(bytes).unwrap();
        assert_eq!(parsed, event);
        assert_eq!(
            describe(&parsed),
            "netns 4026532000 created by pid 42 (\"ip\") in 1.500 ms"
        );
        assert!(parse_event(&bytes[..10]).is_none());
    }
}
