//! Compiles the vendored Kubernetes `generated.proto` files (api/vendor/kubernetes) into one descriptor set: the
//! schema of every built-in type ([`schema`](src/schema.rs)), which the API server decodes protobuf request bodies
//! with and strategic merge patch takes its merge metadata from. protox is a pure-Rust protobuf compiler, so no
//! `protoc` is needed for this.

use std::path::{Path, PathBuf};

fn protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            protos(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../vendor/kubernetes/proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    protos(&root, &mut files)?;
    files.sort();
    anyhow::ensure!(!files.is_empty(), "no .proto files under {}", root.display());
    let set = protox::compile(&files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("kubernetes.fds");
    std::fs::write(&out, prost::Message::encode_to_vec(&set))?;
    Ok(())
}
