//! Parsers of untrusted text from the host: cgroup paths, mountinfo lines, the CNI result
//! cache, kernel strings as label values. Pure functions, no I/O: whatever a process, a
//! runtime or a mount can write reaches the agent through here, so each parser is total
//! (bad input gives `None` or is skipped, never a panic) and unit-tested on hostile input.

pub mod cgroup;
pub mod cni;
pub mod labels;
pub mod mountinfo;
