// A library target lets the agent name this crate as a build-dependency, so cargo rebuilds
// the agent when the kernel programs change. The programs themselves live in the binary.
#![no_std]
