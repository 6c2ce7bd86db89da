//! The README's tour, command by command, against `skiff up` running inside a network namespace of its own (a
//! "node" with one veth to a peer namespace, no route anywhere else). The tour's shell block is taken from README.md
//! as written (only its kubeconfig path is pointed at this test's data directory) and run with `sh -e`, one
//! command at a time, so a README that drifts from the product fails here.
//!
//! Needs root (network namespaces, runc, BPF, ports 80/443 inside the namespace) and the built-in images.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skiff_e2e::*;
use skiff_testkit::{Cgroup, NetNs, PinDir, spawn_in, unique_name, veth};

const NODE_IP: &str = "10.0.8.1";

/// The shell block after `<!-- tour -->` in README.md.
fn tour(readme: &str) -> Vec<String> {
    let start = readme.find("<!-- tour -->").expect("README.md has a `<!-- tour -->` block");
    let block = &readme[start..];
    let body = block.split_once("```sh\n").expect("a sh block after the marker").1;
    let body = body.split_once("```").expect("the block ends").0;
    body.lines().map(str::to_string).filter(|l| !l.trim().is_empty()).collect()
}

/// Ends a process group we started (the tour's shell and what it left in the background, e.g. Prometheus).
fn end_group(pgid: u32) {
    let pid = nix::unistd::Pid::from_raw(-i32::try_from(pgid).unwrap_or(i32::MAX));
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
}

struct Up {
    child: std::process::Child,
    dir: std::path::PathBuf,
    cgroup_root: String,
    ns: NetNs,
    _peer: NetNs,
    _pins: PinDir,
    node_cgroup: Cgroup,
    groups: Vec<u32>,
}

impl Drop for Up {
    fn drop(&mut self) {
        for g in &self.groups {
            end_group(*g);
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(0)),
            nix::sys::signal::Signal::SIGINT,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("nsenter")
            .arg(format!("--net={}", self.ns.path().display()))
            .arg("--")
            .arg(skiff_binary())
            .args(["agent", "reset", "--data-dir"])
            .arg(self.dir.join("agent"))
            .args(["--cgroup-root", &self.cgroup_root])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(self.dir.with_extension("log"));
        // What the tour's Prometheus command wrote.
        let _ = std::fs::remove_dir_all("/tmp/skiff-prometheus");
        let _ = std::fs::remove_file("/tmp/skiff-prometheus.log");
    }
}

fn kubectl_in(ns: &NetNs, kubeconfig: &Path, args: &[&str]) -> Option<String> {
    let out = ns.command("kubectl").arg("--kubeconfig").arg(kubeconfig).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn the_readme_tour_works_as_written() {
    if !skiff_testkit::require_privileges("the README tour") {
        return;
    }
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let commands = tour(&readme);
    assert!(commands.len() >= 10, "the tour has its commands: {commands:?}");

    let ns = NetNs::new("sktour").expect("netns");
    let peer = NetNs::new("sktourp").expect("netns");
    veth(&ns, "eth0", &peer, "eth0").expect("veth");
    ns.ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", "eth0"]).expect("address");
    peer.ip(&["addr", "add", "10.0.8.2/24", "dev", "eth0"]).expect("address");
    let dir = std::env::temp_dir().join(unique_name("skiff-tour"));
    std::fs::create_dir_all(&dir).expect("data dir");
    let pins = PinDir::new("skiff-tour").expect("pin dir");
    // The node's own processes: the tour's shell runs here, and `skiff up` attaches its node-scope socket programs
    // here instead of to the machine's root cgroup.
    let node_cgroup = Cgroup::new("skiff-tour-node").expect("cgroup");
    let cgroup_root = unique_name("skiff-tour");
    step("skiff up in its own network namespace");
    let log = std::fs::File::create(dir.with_extension("log")).expect("log file");
    let child = Command::new("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .arg("--")
        .arg(skiff_binary())
        .args(["up", "--data-dir"])
        .arg(&dir)
        .args([
            "--node-ip",
            NODE_IP,
            "--interface",
            "eth0",
            "--node-name",
            "tour",
            "--cgroup-root",
            &cgroup_root,
            "--lb-node-cgroup",
        ])
        .arg(node_cgroup.path())
        .arg("--lb-pin-dir")
        .arg(pins.path())
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("skiff up");
    let mut up =
        Up { child, dir: dir.clone(), cgroup_root, ns, _peer: peer, _pins: pins, node_cgroup, groups: Vec::new() };
    let log_path = dir.with_extension("log");
    let log_text = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let ready = wait_for(Duration::from_secs(120), "`skiff up` to print its summary", || {
        log_text().contains("Skiff is up.").then_some(())
    });
    if let Err(e) = ready {
        panic!("{e}\n{}", log_text());
    }
    let kubeconfig = dir.join("kubeconfig");
    assert!(
        kubectl_in(&up.ns, &kubeconfig, &["get", "ingressclass", "skiff"]).is_some(),
        "skiff up made the default IngressClass"
    );

    for (i, line) in commands.iter().enumerate() {
        let line = line.replace("/var/lib/skiff/kubeconfig", &kubeconfig.display().to_string());
        step(&format!("tour {}: {line}", i + 1));
        let script = commands[..i]
            .iter()
            .filter(|l| l.starts_with("export "))
            .map(|l| l.replace("/var/lib/skiff/kubeconfig", &kubeconfig.display().to_string()))
            .chain(std::iter::once(line.clone()))
            .collect::<Vec<_>>()
            .join("\n");
        if line.starts_with("kubectl logs deployment/") {
            // kubectl picks the pod that has been ready longest, which right after a rollout can be an old pod that
            // is still terminating and is gone by the time kubectl asks for its logs (on any cluster). A reader
            // runs this step a moment later; the tour waits for the old pods to finish terminating.
            let settled = wait_for(Duration::from_secs(30), "old pods to finish terminating", || {
                let stamps = kubectl_in(
                    &up.ns,
                    &kubeconfig,
                    &["get", "pods", "-o", "jsonpath={.items[*].metadata.deletionTimestamp}"],
                )?;
                stamps.trim().is_empty().then_some(())
            });
            if let Err(e) = settled {
                panic!("{e}");
            }
        }
        let mut cmd = spawn_in(Some(&up.node_cgroup), Some(&up.ns), Path::new("sh"), &["-ec".into(), script.clone()]);
        cmd.current_dir(repo_root()).env("NODE_IP", NODE_IP).stdin(Stdio::null());
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().expect("sh");
        up.groups.push(child.id());
        let out = child.wait_with_output().expect("sh ends");
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        eprint!("{stdout}");
        assert!(
            out.status.success(),
            "README tour step {} failed: {line}\n{stdout}{stderr}\n--- skiff up log (tail) ---\n{}",
            i + 1,
            {
                let t = log_text();
                t.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
            }
        );
    }
}
