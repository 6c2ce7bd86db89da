//! Attaching the pinned policy programs to a pod's host-side veth (tcx, links pinned under
//! `<pin_dir>/policy-links/`, so enforcement outlives the agent).

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

use aya::programs::{SchedClassifier, TcAttachType, links::FdLink};
use skiff_ebpf_common::programs as progs;

use crate::{error::LbError, loader::replace_pin};

fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("policy-links")
}

/// The pinned links of interface `ifname`.
fn link_names(ifname: &str) -> [String; 2] {
    [format!("{ifname}-from"), format!("{ifname}-to")]
}

/// Attaches both policy programs to `ifname` (in the calling thread's network namespace). Attaching again replaces
/// the links make-before-break, which is how a restarted agent moves every pod to its own program version.
pub fn attach(pin_dir: &Path, ifname: &str) -> Result<(), LbError> {
    let dir = links_dir(pin_dir);
    let [from, to] = link_names(ifname);
    for (name, kind, link_name) in
        [(progs::POL_FROM_POD, TcAttachType::Ingress, from), (progs::POL_TO_POD, TcAttachType::Egress, to)]
    {
        let path = pin_dir.join("progs").join(name);
        let mut prog = SchedClassifier::from_pin(&path).map_err(|e| LbError::program(name, "open pinned", e))?;
        let id = prog.attach(ifname, kind).map_err(|e| LbError::program(name, format!("attach to {ifname}"), e))?;
        let link = prog.take_link(id).map_err(|e| LbError::program(name, "take link", e))?;
        let link: FdLink = link.try_into().map_err(|e| LbError::Link {
            path: dir.join(&link_name),
            message: format!("tc link is not a BPF link (tcx needs Linux 6.6+): {e}"),
        })?;
        replace_pin(&dir, link_name, link)?;
    }
    Ok(())
}

/// Detaches the policy programs from `ifname` (nothing to do when the interface is gone: its links went with it,
/// and this removes their pins).
pub fn detach(pin_dir: &Path, ifname: &str) -> Result<(), LbError> {
    let dir = links_dir(pin_dir);
    for name in link_names(ifname) {
        let path = dir.join(name.replace('.', "_"));
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(LbError::io("removing policy link", path, e)),
        }
    }
    Ok(())
}

/// The interfaces that have pinned policy links.
pub fn attached(pin_dir: &Path) -> Result<BTreeSet<String>, LbError> {
    let dir = links_dir(pin_dir);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => return Err(LbError::io("listing", dir, e)),
    };
    Ok(entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix("-from").or_else(|| name.strip_suffix("-to")).map(str::to_string)
        })
        .collect())
}
