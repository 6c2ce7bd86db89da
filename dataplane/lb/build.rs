//! Builds the BPF programs (ebpf/programs) for `bpfel-unknown-none` with Debian's cargo and rustc, which ship a
//! precompiled `core` for the BPF target (see the shared docs: ebpf-toolchain.md), and hands the object's path to
//! the crate as `SKIFF_EBPF_OBJECT`.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let programs = manifest_dir.join("../../ebpf/programs").canonicalize().context("ebpf/programs not found")?;
    let common = manifest_dir.join("../../ebpf/common").canonicalize().context("ebpf/common not found")?;
    for dir in [&programs, &common] {
        println!("cargo:rerun-if-changed={}", dir.join("src").display());
        println!("cargo:rerun-if-changed={}", dir.join("Cargo.toml").display());
    }
    println!("cargo:rerun-if-changed={}", programs.join("Cargo.lock").display());
    println!("cargo:rerun-if-env-changed=SKIFF_BPF_CARGO");
    println!("cargo:rerun-if-env-changed=SKIFF_BPF_RUSTC");

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // One BPF target dir per host target dir (OUT_DIR is <target>/<profile>/build/skiff-lb-<hash>/out), so builds
    // of skiff-lb with different feature sets reuse the same BPF build; cargo's lock serialises them.
    let target_dir =
        out_dir.ancestors().nth(4).map(|t| t.join("skiff-bpf")).unwrap_or_else(|| out_dir.join("bpf-target"));
    let cargo = env::var("SKIFF_BPF_CARGO").unwrap_or_else(|_| "/usr/bin/cargo".into());
    let rustc = env::var("SKIFF_BPF_RUSTC").unwrap_or_else(|_| "/usr/bin/rustc".into());
    for tool in [&cargo, &rustc] {
        if !Path::new(tool).exists() {
            bail!(
                "{tool} is missing: the BPF programs are built with Debian's rustc-web/cargo-web \
                 (run scripts/setup, or point SKIFF_BPF_CARGO/SKIFF_BPF_RUSTC at a toolchain with a bpfel core)"
            );
        }
    }

    let mut cmd = Command::new(&cargo);
    // Nothing of the host build may leak into the BPF build (rustup's toolchain, our target dir, wrappers, flags).
    for (key, _) in env::vars() {
        let host_build = key.starts_with("CARGO_") && key != "CARGO_HOME"
            || key.starts_with("RUSTUP_")
            || key.starts_with("RUSTC")
            || key.starts_with("DEP_")
            || ["RUSTFLAGS", "RUSTDOCFLAGS", "OUT_DIR", "TARGET", "HOST", "PROFILE", "OPT_LEVEL", "DEBUG", "NUM_JOBS"]
                .contains(&key.as_str());
        if host_build {
            cmd.env_remove(&key);
        }
    }
    cmd.current_dir(&programs)
        .args(["build", "--release", "--locked", "--target", "bpfel-unknown-none", "--target-dir"])
        .arg(&target_dir)
        .env("RUSTC", &rustc)
        // aya-ebpf needs #![feature(asm_experimental_arch)]; allow it for that crate only.
        .env("RUSTC_BOOTSTRAP", "aya_ebpf")
        .env("CARGO_ENCODED_RUSTFLAGS", "-Cdebuginfo=2\x1f-Clink-arg=--btf");
    let status = cmd.status().with_context(|| format!("running {cargo}"))?;
    if !status.success() {
        bail!("building ebpf/programs for bpfel-unknown-none failed ({status})");
    }
    let object = target_dir.join("bpfel-unknown-none/release/skiff-ebpf");
    if !object.exists() {
        bail!("the BPF build succeeded but {} is missing", object.display());
    }
    println!("cargo:rustc-env=SKIFF_EBPF_OBJECT={}", object.display());
    Ok(())
}
