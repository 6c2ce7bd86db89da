//! An etcd member for tests: Debian's `etcd-server` on loopback ports of this machine, its data under a directory
//! the test owns, optionally serving TLS and asking for client certificates (`--client-cert-auth`).

use std::io;
use std::path::Path;

use crate::Child;

/// The files of a member serving TLS: the CA its clients' certificates must chain to (and the test's client
/// trusts), and its serving certificate and key (valid for 127.0.0.1).
#[derive(Clone, Copy, Debug)]
pub struct Tls<'a> {
    /// CA certificate (PEM).
    pub ca: &'a Path,
    /// Serving certificate (PEM).
    pub cert: &'a Path,
    /// Its key (PEM).
    pub key: &'a Path,
}

/// A running member, killed (by pid) and reaped on drop.
#[derive(Debug)]
pub struct Etcd {
    _child: Child,
    /// Its client URL (`http://127.0.0.1:PORT`, or `https://` with TLS).
    pub endpoint: String,
    /// Its client port.
    pub port: u16,
}

fn free_port() -> io::Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr().map(|a| a.port())
}

/// Starts a member keeping its data under `dir`; returns once it accepts connections. An error of kind `NotFound` means etcd is not installed
/// (`scripts/setup` installs it); the caller decides whether that skips or fails.
pub fn start(dir: &Path, tls: Option<Tls<'_>>) -> io::Result<Etcd> {
    let bin = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "etcd is not installed (scripts/setup installs it)"))?;
    let (port, peer) = (free_port()?, free_port()?);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = format!("{scheme}://127.0.0.1:{port}");
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("--data-dir")
        .arg(dir.join("etcd"))
        .args(["--logger", "zap", "--log-level", "error"])
        .args(["--listen-client-urls", &endpoint, "--advertise-client-urls", &endpoint])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args(["--initial-cluster", &format!("default=http://127.0.0.1:{peer}")]);
    if let Some(t) = tls {
        cmd.arg("--cert-file").arg(t.cert).arg("--key-file").arg(t.key);
        cmd.arg("--trusted-ca-file").arg(t.ca).arg("--client-cert-auth");
    }
    let etcd = Etcd { _child: Child::spawn(cmd, "etcd")?, endpoint, port };
    // ready when it accepts connections (a client started before that fails at its first request)
    let up = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    if !up {
        return Err(io::Error::other("etcd did not accept connections within 10 s"));
    }
    Ok(etcd)
}
