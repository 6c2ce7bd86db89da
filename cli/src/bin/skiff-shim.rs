//! `skiff-shim`: the per-container shim as a program of its own (see `skiff_agent::runtime::shim`).
//!
//! The agent starts it for every container when it sits beside the `skiff` binary. It links only the shim's code
//! (no async runtime, no allocator of the big binary, a few hundred KiB of relocated data instead of megabytes),
//! so a container's monitor costs about what conmon does; `skiff agent shim` runs the same code.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(skiff_agent::runtime::shim::main(&args));
}
