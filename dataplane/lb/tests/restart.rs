//! Fail-static: the balancer process exits and restarts while connections are open. Maps and links are pinned, so
//! traffic keeps flowing without it, and the restarted balancer resumes from the pinned state without rewriting it.
//! Runs as root; fails instead of skipping when CI=true.

mod common;

use common::{Cluster, apply, exchange, node_ip, service, slice};
use serde_json::json;
use skiff_testkit::{probe, require_privileges};

#[test]
fn probe_entry() {
    probe::entry();
}

#[test]
fn open_connections_survive_a_balancer_restart_and_it_resumes_without_rewriting_the_maps() {
    if !require_privileges("balancer restart test") {
        return;
    }
    let mut c = Cluster::new(2).expect("cluster");
    let client_pod = c.add_pod(0).expect("pod");
    let local = c.add_pod(0).expect("pod");
    let remote = c.add_pod(1).expect("pod");
    let _servers = [c.serve(local, "tcp", 8080, "local"), c.serve(remote, "tcp", 8080, "remote")];
    let svc = service(
        "web",
        "10.96.0.10",
        json!({"type": "NodePort",
        "ports": [{"name": "p", "port": 80, "nodePort": 30080, "protocol": "TCP"}]}),
    );
    let eps = vec![(c.pods[local].ip, "node-0", true), (c.pods[remote].ip, "node-1", true)];
    let cfg = c.config();

    let mut lb = c.start_lb(&cfg);
    apply(&mut lb, vec![svc.clone()], vec![slice("web", &eps, 8080, "TCP")]);
    let generation = lb.applier().generation();

    // One connection through the socket hooks, several through the tc path (so both a local and a remote backend,
    // i.e. DNAT-only and SNAT flows, are likely held open).
    let mut pod_conn =
        probe::spawn(Some(&c.cgroup), Some(&c.pods[client_pod].ns), "hold 10.96.0.10:80").expect("probe");
    assert!(pod_conn.read_line_starting(probe::MARK).expect("hello").starts_with("connected"));
    let mut ext_conns = Vec::new();
    for _ in 0..4 {
        let mut conn = probe::spawn(None, Some(&c.client), &format!("hold {}:30080", node_ip(0))).expect("probe");
        let hello = conn.read_line_starting(probe::MARK).expect("hello");
        assert!(hello.starts_with("connected"), "{hello}");
        ext_conns.push(conn);
    }
    assert!(exchange(&mut pod_conn, "one").starts_with("reply"));
    for conn in &mut ext_conns {
        assert!(exchange(conn, "one").starts_with("reply"));
    }

    // The balancer exits (its handles close; programs and maps stay pinned).
    drop(lb);
    assert!(exchange(&mut pod_conn, "two").starts_with("reply"), "open socket-LB connection without a balancer");
    for conn in &mut ext_conns {
        let r = exchange(conn, "two");
        assert!(r.starts_with("reply"), "open tc-path connection without a balancer: {r}");
    }
    let new_pod = c.run_in_pod(client_pod, "tcp 3 10.96.0.10:80");
    assert!(new_pod.iter().all(|l| l.starts_with("ok")), "new connections without a balancer: {new_pod:?}");
    let new_ext = c.run_on_client(&format!("tcp 3 {}:30080", node_ip(0)));
    assert!(new_ext.iter().all(|l| l.starts_with("ok")), "new connections without a balancer: {new_ext:?}");

    // Restart: resume from the pins, re-attach (make before break), full sync with the same objects.
    let mut lb = c.start_lb(&cfg);
    lb.store_mut().replace_services(vec![svc]);
    lb.store_mut().replace_slices(vec![slice("web", &eps, 8080, "TCP")]);
    let report = lb.full_sync(None);
    assert_eq!(report.ops, 0, "the restarted balancer rewrote maps: {report:?}");
    assert!(lb.applier().generation() > generation);
    assert!(exchange(&mut pod_conn, "three").starts_with("reply"));
    for conn in &mut ext_conns {
        assert!(exchange(conn, "three").starts_with("reply"));
    }

    // And it keeps working incrementally: drop the remote backend.
    apply(&mut lb, vec![], vec![slice("web", &eps[..1], 8080, "TCP")]);
    let lines = c.run_on_client(&format!("tcp 10 {}:30080", node_ip(0)));
    assert!(lines.iter().all(|l| probe::field(l, "id") == Some("local")), "{lines:?}");
}
