//! The guards clean up after themselves, and the probe works across namespaces. Runs as root; fails instead of
//! skipping when CI=true.

use std::{path::Path, time::Duration};

use skiff_testkit::{Cgroup, Child, NetNs, probe, require_privileges, veth};

#[test]
fn probe_entry() {
    probe::entry();
}

fn netns_exists(name: &str) -> bool {
    Path::new("/var/run/netns").join(name).exists()
}

#[test]
fn namespaces_links_and_cgroups_are_removed_when_their_guards_drop() {
    if !require_privileges("testkit guard test") {
        return;
    }
    let (a_name, cg_path) = {
        let a = NetNs::new("tk-a").expect("netns");
        let b = NetNs::new("tk-b").expect("netns");
        veth(&a, "v0", &b, "v1").expect("veth");
        let cg = Cgroup::new("skiff-tk").expect("cgroup");
        assert!(netns_exists(a.name()) && cg.path().exists());
        (a.name().to_string(), cg.path().to_path_buf())
    };
    assert!(!netns_exists(&a_name));
    assert!(!cg_path.exists());
}

#[test]
fn a_child_is_killed_by_pid_on_drop_and_a_cgroup_with_processes_is_still_removed() {
    if !require_privileges("testkit child test") {
        return;
    }
    let cg = Cgroup::new("skiff-tk").expect("cgroup");
    let mut cmd = skiff_testkit::spawn_in(Some(&cg), None, Path::new("sleep"), &["300".into()]);
    cmd.env_clear().env("PATH", "/usr/bin:/bin");
    let child = Child::spawn(cmd, "sleep").expect("spawn");
    let pid = child.pid();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(cg.pids(), vec![pid]);
    drop(child);
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "the child was killed and reaped");
    let path = cg.path().to_path_buf();
    let mut cmd = skiff_testkit::spawn_in(Some(&cg), None, Path::new("sleep"), &["300".into()]);
    cmd.env("PATH", "/usr/bin:/bin");
    let mut orphan = cmd.spawn().expect("spawn");
    std::thread::sleep(Duration::from_millis(100));
    drop(cg);
    assert!(!path.exists(), "the cgroup ended the process the test left in it and was removed");
    assert!(!orphan.wait().expect("reaping").success());
}

#[test]
fn the_probe_talks_tcp_and_udp_across_a_veth_pair() {
    if !require_privileges("testkit probe test") {
        return;
    }
    let a = NetNs::new("tk-a").expect("netns");
    let b = NetNs::new("tk-b").expect("netns");
    veth(&a, "v0", &b, "v1").expect("veth");
    a.ip(&["addr", "add", "10.9.0.1/24", "dev", "v0"]).expect("addr");
    b.ip(&["addr", "add", "10.9.0.2/24", "dev", "v1"]).expect("addr");
    let _tcp = probe::server(&a, "serve-tcp 10.9.0.1:7000 alpha").expect("server");
    let _udp = probe::server(&a, "serve-udp 10.9.0.1:7001 alpha").expect("server");
    let lines = probe::client(None, Some(&b), "tcp 2 10.9.0.1:7000").expect("client");
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|l| probe::field(l, "id") == Some("alpha")), "{lines:?}");
    assert!(lines.iter().all(|l| probe::field(l, "peer").is_some_and(|p| p.starts_with("10.9.0.2:"))));
    let lines = probe::client(None, Some(&b), "udp 1 10.9.0.1:7001 unconnected").expect("client");
    assert_eq!(probe::field(&lines[0], "from"), Some("10.9.0.1:7001"));
    let refused = probe::client(None, Some(&b), "tcp 1 10.9.0.1:7999").expect("client");
    assert_eq!(probe::field(&refused[0], "kind"), Some("refused"));
}

#[test]
fn fields_are_read_from_result_lines() {
    assert_eq!(probe::field("ok id=b1 peer=10.0.0.1:5 ms=3", "peer"), Some("10.0.0.1:5"));
    assert_eq!(probe::field("ok id=b1", "idx"), None);
    assert_eq!(probe::field("err kind=refused", "kind"), Some("refused"));
}
