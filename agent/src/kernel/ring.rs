//! The kernel's event stream (the `EVENTS` ring buffer; see `netns_agent_common::events`):
//! records are decoded by kind and handed to the families that use them.

use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use netns_agent_common::{events::kind, lifecycle::LifecycleEvent, moves::MoveEvent};
use tokio::io::unix::AsyncFd;

use super::maps::{MapError, take};

/// One decoded record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Lifecycle(LifecycleEvent),
    Move(MoveEvent),
}

/// Reads a plain-data record of type `T` from `bytes`.
fn read<T: Copy>(bytes: &[u8]) -> Option<T> {
    (bytes.len() >= size_of::<T>())
        // SAFETY: the length is checked and T is plain data valid for any bytes.
        .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Option<Event> {
    match read::<u32>(bytes)? {
        kind::NETNS_CREATED | kind::NETNS_DESTROYED | kind::NETNS_SETUP_FAILED | kind::NETNS_FIRST_EXEC => {
            read(bytes).map(Event::Lifecycle)
        }
        kind::DEVICE_MOVED | kind::DEVICE_MOVE_FAILED => read(bytes).map(Event::Move),
        _ => None,
    }
}

/// The kernel's event stream: the `EVENTS` ring buffer, readable when records wait.
pub struct EventStream {
    fd: AsyncFd<RingBuf<MapData>>,
}

impl EventStream {
    /// Takes the ring buffer out of the object, not yet registered with a runtime.
    pub fn take(ebpf: &mut Ebpf) -> Result<RingBuf<MapData>, RingError> {
        Ok(take(ebpf, "EVENTS")?)
    }

    /// Registers the ring buffer with the runtime this is called on, which must be the one
    /// that reads it: a registration dies with its runtime's reactor (start-up runs on a
    /// runtime of its own, dropped before serving begins).
    pub fn register(ring: RingBuf<MapData>) -> Result<Self, RingError> {
        // SAFETY: the ring buffer owns its fd and keeps it open as long as the AsyncFd holds it.
        let fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|err| RingError::Register(std::io::Error::other(err.to_string())))?;
        Ok(Self { fd })
    }

    /// Waits until records are there, then takes up to `max` of them, decoded.
    pub async fn next_batch(&mut self, max: usize) -> std::io::Result<Vec<Event>> {
        loop {
            let mut guard = self.fd.readable_mut().await?;
            let ring = guard.get_inner_mut();
            let mut batch = Vec::new();
            while batch.len() < max
                && let Some(item) = ring.next()
            {
                match decode(&item) {
                    Some(event) => batch.push(event),
                    None => log::warn!("undecodable event record ({} bytes)", item.len()),
                }
            }
            if batch.len() < max {
                // Drained: wait for the next wake-up. A full batch leaves readiness set, so the
                // next call reads on without waiting.
                guard.clear_ready();
            }
            if !batch.is_empty() {
                return Ok(batch);
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error(transparent)]
    Map(#[from] MapError),
    #[error("cannot watch the event ring buffer")]
    Register(#[source] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes<T>(value: &T) -> Vec<u8> {
        // SAFETY: viewing plain data as bytes.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    #[test]
    fn records_decode_by_kind() {
        let mut created = LifecycleEvent::new(kind::NETNS_CREATED);
        created.inum = 7;
        assert_eq!(decode(&bytes(&created)), Some(Event::Lifecycle(created)));
        let mut moved = MoveEvent::new(kind::DEVICE_MOVED);
        moved.ifindex = 3;
        assert_eq!(decode(&bytes(&moved)), Some(Event::Move(moved)));
        assert_eq!(decode(&bytes(&99u32)), None);
        assert_eq!(decode(&bytes(&created)[..20]), None, "short records are refused");
    }
}
