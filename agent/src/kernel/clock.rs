//! Kernel timestamps (`bpf_ktime_get_boot_ns`, CLOCK_BOOTTIME) as wall-clock time.

use std::time::{Duration, SystemTime};

/// CLOCK_BOOTTIME now, nanoseconds: the clock the kernel programs stamp events with.
pub fn boot_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The wall-clock time of a kernel timestamp.
pub fn wall(boot: u64) -> SystemTime {
    let now = boot_ns();
    SystemTime::now() - Duration::from_nanos(now.saturating_sub(boot))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_timestamps_map_to_wall_clock() {
        let then = wall(boot_ns() - 2_000_000_000);
        let age = SystemTime::now().duration_since(then).unwrap();
        assert!(age >= Duration::from_millis(1990) && age < Duration::from_secs(3), "{age:?}");
    }
}
