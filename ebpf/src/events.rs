//! The ring buffer every event family writes to (see `netns_agent_common::events`).

use aya_ebpf::{
    macros::map,
    maps::{Array, RingBuf},
};

use netns_agent_common::limits::EVENT_BUFFER_BYTES;

use crate::kernel::atomic_add;

/// Events for user space. Sized by the agent (`limits.event_buffer_bytes`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENT_BUFFER_BYTES, 0);

/// Records dropped because the ring buffer was full (slot 0).
#[map]
static EVENTS_LOST: Array<u64> = Array::with_max_entries(1, 0);

/// Sends one record; counts it as lost if user space has fallen behind.
#[inline(always)]
pub fn emit<T: 'static>(event: &T) {
    if EVENTS.output::<T>(event, 0).is_err()
        && let Some(slot) = EVENTS_LOST.get_ptr_mut(0)
    {
        atomic_add(slot, 1);
    }
}
