//! Everything that talks to the kernel: the probe registry and the attach engine, the
//! running kernel's layout (BTF offsets), loading the object, its maps and ring buffer, the
//! inventory walk, host facts, clocks, and `/proc` with the syscalls it takes. Every
//! `unsafe` block of the agent is in this layer, each with its reason.

pub mod attach;
pub mod clock;
pub mod health;
pub mod host;
pub mod inventory;
pub mod layout;
pub mod loader;
pub mod maps;
pub mod privileges;
pub mod probes;
pub mod procfs;
pub mod ring;
