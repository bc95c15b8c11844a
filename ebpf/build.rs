//! Rebuild the kernel programs when bpf-linker changes: cargo does not track linkers itself.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
