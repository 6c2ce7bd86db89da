//! bpffs pin directories for tests, removed (with everything pinned in them) on drop.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use crate::unique_name;

/// A directory `/sys/fs/bpf/<prefix>-<pid>-<n>` that is removed recursively on drop, which unpins (and so
/// detaches/frees) whatever a test pinned there.
#[derive(Debug)]
pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    /// A fresh path under /sys/fs/bpf (not created: the code under test creates it). `prefix` should start with
    /// `skiff` so leftovers are recognisable.
    pub fn new(prefix: &str) -> io::Result<Self> {
        let path = Path::new("/sys/fs/bpf").join(unique_name(prefix));
        if !Path::new("/sys/fs/bpf").exists() {
            return Err(io::Error::other("/sys/fs/bpf is missing; run scripts/setup"));
        }
        Ok(Self { path })
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}
