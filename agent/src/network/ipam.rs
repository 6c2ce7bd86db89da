//! Pod addresses from the node's /24: `.1` is the bridge (gateway); `.2`–`.254` go to pods. Each allocation is a
//! file `ipam/<address>` holding the pod's uid, created exclusively, so allocations survive restarts and never
//! collide.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use ipnet::Ipv4Net;

/// The gateway (bridge) address of a pod CIDR: its first host.
pub fn gateway(cidr: Ipv4Net) -> Ipv4Addr {
    let n = u32::from(cidr.network());
    Ipv4Addr::from(n + 1)
}

/// The addresses pods may get, in order.
pub fn pod_addresses(cidr: Ipv4Net) -> impl Iterator<Item = Ipv4Addr> {
    let first = u32::from(cidr.network()) + 2;
    let last = u32::from(cidr.broadcast()).saturating_sub(1);
    (first..=last).map(Ipv4Addr::from)
}

/// File-backed allocator.
#[derive(Debug)]
pub struct Ipam {
    dir: PathBuf,
    cidr: Ipv4Net,
    next: AtomicU32,
}

impl Ipam {
    /// Allocations in `dir` from `cidr`.
    pub fn new(dir: &Path, cidr: Ipv4Net) -> Self {
        Ipam { dir: dir.to_path_buf(), cidr, next: AtomicU32::new(0) }
    }

    fn path(&self, ip: Ipv4Addr) -> PathBuf {
        self.dir.join(ip.to_string())
    }

    /// The address held by `uid`, if any.
    pub fn held_by(&self, uid: &str) -> Option<Ipv4Addr> {
        pod_addresses(self.cidr).find(|ip| std::fs::read_to_string(self.path(*ip)).is_ok_and(|o| o.trim() == uid))
    }

    /// Allocates an address for `uid` (the same one again if it already holds one). Addresses are handed out
    /// round-robin so a released address is not reused at once.
    pub fn allocate(&self, uid: &str) -> std::io::Result<Ipv4Addr> {
        if let Some(ip) = self.held_by(uid) {
            return Ok(ip);
        }
        let all: Vec<Ipv4Addr> = pod_addresses(self.cidr).collect();
        let start = self.next.load(Ordering::Relaxed) as usize;
        for i in 0..all.len() {
            let k = (start + i) % all.len();
            let ip = all[k];
            match std::fs::OpenOptions::new().write(true).create_new(true).open(self.path(ip)) {
                Ok(mut f) => {
                    f.write_all(uid.as_bytes())?;
                    self.next.store(u32::try_from(k + 1).unwrap_or(0), Ordering::Relaxed);
                    return Ok(ip);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::other(format!("no free address left in {}", self.cidr)))
    }

    /// Releases `ip` if `uid` holds it.
    pub fn release(&self, ip: Ipv4Addr, uid: &str) {
        let p = self.path(ip);
        if std::fs::read_to_string(&p).is_ok_and(|o| o.trim() == uid) {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Every allocation: (address, uid).
    pub fn allocations(&self) -> Vec<(Ipv4Addr, String)> {
        pod_addresses(self.cidr)
            .filter_map(|ip| std::fs::read_to_string(self.path(ip)).ok().map(|u| (ip, u.trim().to_string())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr() -> Ipv4Net {
        "10.244.3.0/24".parse().expect("cidr")
    }

    #[test]
    fn the_gateway_is_the_first_host_and_pods_get_the_rest() {
        assert_eq!(gateway(cidr()), Ipv4Addr::new(10, 244, 3, 1));
        let all: Vec<_> = pod_addresses(cidr()).collect();
        assert_eq!(all.first(), Some(&Ipv4Addr::new(10, 244, 3, 2)));
        assert_eq!(all.last(), Some(&Ipv4Addr::new(10, 244, 3, 254)));
        assert_eq!(all.len(), 253);
    }

    #[test]
    fn allocations_are_unique_stable_per_pod_and_not_reused_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ipam = Ipam::new(dir.path(), cidr());
        let a = ipam.allocate("pod-a").expect("a");
        let b = ipam.allocate("pod-b").expect("b");
        assert_ne!(a, b);
        assert_eq!(ipam.allocate("pod-a").expect("again"), a);
        ipam.release(a, "pod-a");
        let c = ipam.allocate("pod-c").expect("c");
        assert_ne!(c, a, "a released address is not handed out immediately");
        // another instance (an agent restart) sees the same allocations
        let again = Ipam::new(dir.path(), cidr());
        assert_eq!(again.held_by("pod-b"), Some(b));
        assert_eq!(again.allocations().len(), 2);
    }

    #[test]
    fn a_full_range_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ipam = Ipam::new(dir.path(), "10.0.0.0/30".parse().expect("cidr"));
        ipam.allocate("a").expect("the only address");
        assert!(ipam.allocate("b").is_err());
    }
}
