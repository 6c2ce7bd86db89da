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

fn binary() -> io::Result<&'static str> {
    ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "etcd is not installed (scripts/setup installs it)"))
}

/// Starts a member keeping its data under `dir`; returns once it accepts connections. An error of kind `NotFound` means etcd is not installed
/// (`scripts/setup` installs it); the caller decides whether that skips or fails.
pub fn start(dir: &Path, tls: Option<Tls<'_>>) -> io::Result<Etcd> {
    Ok(start_cluster(dir, 1, tls)?.pop().expect("one member"))
}

/// Starts a cluster of `members` members on loopback (peers over plain HTTP, clients over TLS when `tls` is
/// given), each keeping its data under `dir/etcd-N`; returns once every member accepts connections.
pub fn start_cluster(dir: &Path, members: usize, tls: Option<Tls<'_>>) -> io::Result<Vec<Etcd>> {
    start_cluster_in(None, dir, members, tls)
}

/// [`start_cluster`] on the loopback of the network namespace `ns` (a test's own; `None`: this machine's).
pub fn start_cluster_in(
    ns: Option<&crate::NetNs>,
    dir: &Path,
    members: usize,
    tls: Option<Tls<'_>>,
) -> io::Result<Vec<Etcd>> {
    let bin = binary()?;
    // a namespace of the test's own has every port free; this machine's loopback is asked
    let mut next = 2379u16;
    let mut port = || -> io::Result<u16> {
        if ns.is_some() {
            next += 1;
            Ok(next)
        } else {
            free_port()
        }
    };
    let ports: Vec<(u16, u16)> = (0..members).map(|_| Ok((port()?, port()?))).collect::<io::Result<_>>()?;
    let name = |i: usize| if members == 1 { "default".to_string() } else { format!("m{i}") };
    let initial: Vec<String> =
        ports.iter().enumerate().map(|(i, (_, peer))| format!("{}=http://127.0.0.1:{peer}", name(i))).collect();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut started = Vec::new();
    for (i, (port, peer)) in ports.iter().enumerate() {
        let endpoint = format!("{scheme}://127.0.0.1:{port}");
        let data = if members == 1 { dir.join("etcd") } else { dir.join(format!("etcd-{i}")) };
        let mut cmd = match ns {
            Some(ns) => ns.command(bin),
            None => std::process::Command::new(bin),
        };
        cmd.arg("--name")
            .arg(name(i))
            .arg("--data-dir")
            .arg(data)
            .args(["--logger", "zap", "--log-level", "error"])
            .args(["--listen-client-urls", &endpoint, "--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args(["--initial-cluster", &initial.join(","), "--initial-cluster-state", "new"]);
        if let Some(t) = tls {
            cmd.arg("--cert-file").arg(t.cert).arg("--key-file").arg(t.key);
            cmd.arg("--trusted-ca-file").arg(t.ca).arg("--client-cert-auth");
        }
        started.push(Etcd { _child: Child::spawn(cmd, "etcd")?, endpoint, port: *port });
    }
    // ready when each accepts connections (a client started before that fails at its first request)
    let connects = |port: u16| match ns {
        Some(ns) => ns.enter(|| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()).unwrap_or(false),
        None => std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
    };
    // a member of a new cluster answers once it has a quorum: the later ones must be up too, so this can take a
    // while on a loaded machine
    for member in &started {
        let up = (0..300).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(100));
            connects(member.port)
        });
        if !up {
            return Err(io::Error::other("etcd did not accept connections within 30 s"));
        }
    }
    Ok(started)
}
