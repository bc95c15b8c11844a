//! The one ring buffer (`EVENTS`) that carries every kernel event user space needs. Each
//! record starts with a `u32` kind from [`kind`] that says which struct follows.

/// Record kinds.
pub mod kind {
    /// `lifecycle::LifecycleEvent`: a namespace was created.
    pub const NETNS_CREATED: u32 = 1;
    /// `lifecycle::LifecycleEvent`: a namespace's teardown began.
    pub const NETNS_DESTROYED: u32 = 2;
    /// `lifecycle::LifecycleEvent`: creating a namespace failed.
    pub const NETNS_SETUP_FAILED: u32 = 3;
    /// `lifecycle::LifecycleEvent`: one of the first execs in a namespace created since the
    /// agent started (a container's entrypoint among them): who its main process really is.
    pub const NETNS_FIRST_EXEC: u32 = 4;
    /// `moves::MoveEvent`: a device moved between namespaces.
    pub const DEVICE_MOVED: u32 = 16;
    /// `moves::MoveEvent`: a device move failed.
    pub const DEVICE_MOVE_FAILED: u32 = 17;
}
