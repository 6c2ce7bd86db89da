//! Network namespaces (`ip netns add`, removed on drop), veth pairs and bridges.

use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{run, unique_name};

/// A network namespace created with `ip netns add` and deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    path: PathBuf,
}

impl NetNs {
    /// Creates a namespace named `<prefix>-<pid>-<n>` with its loopback up.
    pub fn new(prefix: &str) -> io::Result<Self> {
        let name = unique_name(prefix);
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { path: PathBuf::from("/var/run/netns").join(&name), name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its bind-mount path (for `nsenter --net=` and `setns`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> io::Result<String> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command that runs `program` inside the namespace (through `nsenter --net`, which, unlike
    /// `ip netns exec`, keeps /sys and the cgroup files visible).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path.display())).arg("--").arg(program);
        c
    }

    /// Runs a command inside the namespace to completion.
    pub fn exec(&self, program: &str, args: &[&str]) -> io::Result<String> {
        run(self.command(program).args(args))
    }

    /// Sets a sysctl inside the namespace (e.g. `net.ipv4.ip_forward`).
    pub fn sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")]).map(|_| ())
    }

    /// Runs `f` on a thread that has entered the namespace (only that thread switches), and returns its result.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        let file = File::open(&self.path)?;
        std::thread::scope(|s| {
            s.spawn(move || {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                Ok(f())
            })
            .join()
            .map_err(|_| io::Error::other("the thread inside the namespace panicked"))?
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// Creates a veth pair `a_if` in `a` and `b_if` in `b`, both up. Links go away with their namespaces.
pub fn veth(a: &NetNs, a_if: &str, b: &NetNs, b_if: &str) -> io::Result<()> {
    a.ip(&["link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name()])?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])?;
    Ok(())
}

/// Creates a bridge `name` in `ns`, up, with `ports` (interfaces already in `ns`) attached.
pub fn bridge(ns: &NetNs, name: &str, ports: &[&str]) -> io::Result<()> {
    ns.ip(&["link", "add", name, "type", "bridge"])?;
    ns.ip(&["link", "set", name, "up"])?;
    for p in ports {
        ns.ip(&["link", "set", p, "master", name])?;
    }
    Ok(())
}
