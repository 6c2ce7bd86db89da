//! The node agent on one node, end to end: the real `skiff server` and `skiff agent` processes inside network
//! namespaces, pods created with `spec.nodeName` set (no scheduler involved), observed and driven with the real
//! kubectl. One cluster for the whole file; the steps run in order and each checks what Kubernetes would show.
//!
//! Needs root (network namespaces, runc, cgroups) and the built-in images of `scripts/setup`.

mod agent_support;

use std::time::{Duration, Instant};

use agent_support::*;
use skiff_testkit::cluster::{Cluster, wait_for};

fn steps() -> Option<Vec<String>> {
    std::env::var("AGENT_TEST_STEPS").ok().map(|s| s.split(',').map(str::to_string).collect())
}

fn wanted(name: &str) -> bool {
    steps().is_none_or(|s| s.iter().any(|x| x == name))
}

#[test]
fn pods_on_one_node_behave_as_in_kubernetes() {
    let Some(mut c) = cluster("the single-node agent test", 1) else { return };
    let started = Instant::now();
    if wanted("localhost") {
        two_containers_talk_over_localhost(&c);
    }
    if wanted("exec") {
        exec_reports_exit_codes_and_takes_stdin(&c);
    }
    if wanted("cp") {
        cp_copies_files_both_ways(&c);
    }
    if wanted("attach") {
        attach_joins_a_running_container_and_run_i_rm_cleans_up(&c);
    }
    if wanted("portforward") {
        port_forward_reaches_pods_and_services(&c);
    }
    if wanted("dns") {
        cluster_dns_answers_from_inside_a_pod(&c);
    }
    if wanted("readiness") {
        a_readiness_probe_flips_ready(&c);
    }
    if wanted("liveness") {
        a_liveness_failure_restarts_the_container(&c);
    }
    if wanted("oom") {
        an_oom_kill_is_reported_as_oomkilled(&c);
    }
    if wanted("crashloop") {
        a_crashing_container_backs_off(&c);
    }
    if wanted("config") {
        config_maps_and_secrets_reach_env_and_files(&c);
    }
    if wanted("logs") {
        logs_follow_tail_and_previous(&c);
    }
    if wanted("termination") {
        termination_honours_the_grace_period(&c);
    }
    if wanted("readopt") {
        a_restarted_agent_readopts_its_pods(&mut c);
    }
    if wanted("cleanup") {
        nothing_is_left_behind(&c);
    }
    eprintln!("all steps passed in {:.1}s", started.elapsed().as_secs_f64());
}

fn two_containers_talk_over_localhost(c: &Cluster) {
    step("two containers of a pod talk over localhost");
    apply(
        c,
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: duo, labels: {{app: echo}}}}
spec:
  nodeName: n1
  containers:
  - name: web
    image: {ECHO}
    env:
    - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
    - {{name: POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}
    readinessProbe: {{httpGet: {{path: /readyz, port: 8080}}, periodSeconds: 1}}
  - name: client
    image: {BUSYBOX}
    command: ["sh", "-c", "while true; do sleep 1; done"]
"#
        ),
    );
    let p = wait_ready(c, "duo");
    let ip = p.pointer("/status/podIP").and_then(|v| v.as_str()).unwrap_or_default().to_string();
    assert!(ip.starts_with("10.244."), "pod IP from the node's /24: {ip}");
    assert_eq!(p.pointer("/status/hostIP").and_then(|v| v.as_str()), Some("10.0.0.11"));
    let web = container_status(&p, "web").expect("web status");
    assert!(web["containerID"].as_str().unwrap_or_default().starts_with("runc://"), "{web}");
    assert!(web["imageID"].as_str().unwrap_or_default().contains("@sha256:"), "{web}");
    let (code, out, err) = exec(c, "duo", "client", &["wget", "-qO-", "http://localhost:8080/hello"], None);
    assert_eq!(code, 0, "wget over localhost: {err}");
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| fail(c, &format!("echo answered {out:?}: {e}")));
    assert_eq!(v["pod"], "duo");
    assert_eq!(v["path"], "/hello");
    assert_eq!(v["ip"], ip.as_str());
    // the node reaches the pod too
    let from_node = c
        .on_node(0, "wget", &["-qO-", &format!("http://{ip}:8080/")])
        .or_else(|_| c.on_node(0, "curl", &["-s", &format!("http://{ip}:8080/")]));
    assert!(from_node.is_ok_and(|o| o.contains("\"pod\":\"duo\"")), "the node reaches the pod's IP");
}

fn exec_reports_exit_codes_and_takes_stdin(c: &Cluster) {
    step("kubectl exec: exit codes and stdin");
    let (code, out, _) = exec(c, "duo", "client", &["sh", "-c", "echo out; echo err >&2; exit 3"], None);
    assert_eq!(code, 3, "kubectl exits with the command's code");
    assert_eq!(out.trim(), "out");
    let (code, out, err) = exec(c, "duo", "client", &["cat"], Some(b"hello through stdin\n"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "hello through stdin\n");
    let (code, out, _) = exec(c, "duo", "web", &["cat", "/etc/hostname"], None);
    assert_eq!((code, out.trim()), (0, "duo"));
}

/// `kubectl port-forward TARGET 0:PORT` with a given kubectl, in the server's namespace; the local port it chose.
fn port_forward(c: &Cluster, kubectl: &std::path::Path, target: &str, port: &str) -> (skiff_testkit::Child, u16) {
    let mut cmd = c.server_ns.command(kubectl);
    cmd.arg("--kubeconfig").arg(&c.kubeconfig).args(["port-forward", "--address", "127.0.0.1", target]);
    cmd.arg(format!("0:{port}"));
    let mut child = skiff_testkit::Child::spawn(cmd, format!("kubectl port-forward {target}")).expect("kubectl runs");
    let line = child
        .read_line_starting("Forwarding from 127.0.0.1:")
        .unwrap_or_else(|e| fail(c, &format!("port-forward {target} with {}: {e}", kubectl.display())));
    let local = line.split_whitespace().next().and_then(|p| p.parse().ok());
    let local = local.unwrap_or_else(|| fail(c, &format!("kubectl printed {line:?}")));
    (child, local)
}

/// An HTTP GET through a local port in the server's namespace (bounded by curl's own limit).
fn get_local(c: &Cluster, port: u16, path: &str) -> Result<String, String> {
    c.server_ns
        .exec("curl", &["-sS", "--max-time", "10", &format!("http://127.0.0.1:{port}{path}")])
        .map_err(|e| e.to_string())
}

/// A Role letting `user` read pods (and nothing else), removed on drop.
struct PodReader<'a>(&'a Cluster);

impl<'a> PodReader<'a> {
    fn bind(c: &'a Cluster, user: &str) -> Self {
        apply(
            c,
            &format!(
                r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: pod-reader}}
rules: [{{apiGroups: [""], resources: [pods], verbs: [get, list, watch]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: pod-reader}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: {user}}}]
"#
            ),
        );
        PodReader(c)
    }
}

impl Drop for PodReader<'_> {
    fn drop(&mut self) {
        let _ = self.0.kubectl_output(&["delete", "rolebinding/pod-reader", "role/pod-reader"], None);
    }
}

fn attach_joins_a_running_container_and_run_i_rm_cleans_up(c: &Cluster) {
    step("kubectl attach and kubectl run -i --rm: stdin to the main process, its output back, the pod removed");
    // run -i --rm: kubectl creates the pod (stdin, stdinOnce), attaches, sends its stdin, and deletes the pod after.
    // Each kubectl version the server supports, one after the other.
    for minor in ["1.31", "1.32", "1.33"] {
        let mut cmd = c.server_ns.command(skiff_testkit::kubectl_version(minor));
        cmd.arg("--kubeconfig").arg(&c.kubeconfig);
        cmd.args(["run", "reader", "-i", "--rm", "--restart=Never", "--image", BUSYBOX, "--"]);
        cmd.args(["sh", "-c", r#"read line; echo "got: $line"; read more || echo "stdin closed""#]);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("kubectl runs");
        {
            use std::io::Write as _;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(b"hello attach\n").expect("stdin");
            // Dropping it ends kubectl's stdin: with stdinOnce, the container's stdin closes and `read more` fails.
        }
        let done = wait_for(Duration::from_secs(90), "kubectl run -i --rm to end", || child.try_wait().ok().flatten());
        if let Err(e) = done {
            let _ = child.kill();
            fail(c, &e.to_string());
        }
        let out = child.wait_with_output().expect("kubectl ends");
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "kubectl {minor} run -i --rm: {stdout}{stderr}");
        assert!(stdout.contains("got: hello attach"), "the container read kubectl's stdin: {stdout:?} {stderr:?}");
        assert!(stdout.contains("stdin closed"), "stdinOnce closed the container's stdin: {stdout:?}");
        wait_gone(c, "reader", Duration::from_secs(60));
    }

    // run -it: the container gets a terminal (runc's console, held by the shim); kubectl needs one too (script's).
    let inner = format!(
        "kubectl --kubeconfig {} run term -it --rm --restart=Never --image {BUSYBOX} -- sh -c 'read x; tty; echo \"typed $x\"'",
        c.kubeconfig.display()
    );
    let mut cmd = c.server_ns.command("script");
    cmd.args(["-qec", &inner, "/dev/null"]);
    cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("script runs");
    let mut stdin = child.stdin.take().expect("stdin");
    let typed = wait_for(Duration::from_secs(90), "the terminal pod to run", || {
        pod(c, "term").filter(|p| container_status(p, "term").is_some_and(|s| s.pointer("/state/running").is_some()))
    });
    if let Err(e) = typed {
        let _ = child.kill();
        fail(c, &e.to_string());
    }
    // Give kubectl a moment to attach before typing (what is typed earlier reaches the terminal anyway).
    std::thread::sleep(Duration::from_millis(500));
    {
        use std::io::Write as _;
        stdin.write_all(b"over-the-tty\r").expect("typing");
    }
    let done = wait_for(Duration::from_secs(60), "kubectl run -it to end", || child.try_wait().ok().flatten());
    if let Err(e) = done {
        let _ = child.kill();
        fail(c, &e.to_string());
    }
    drop(stdin);
    let out = child.wait_with_output().expect("script ends");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("/dev/pts/"), "the container runs on a terminal: {text:?}");
    assert!(text.contains("typed over-the-tty"), "typed input reached it through the terminal: {text:?}");
    wait_gone(c, "term", Duration::from_secs(60));

    // attach to a running container: its output from now on; leaving does not stop it.
    apply(
        c,
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: ticker}}
spec:
  nodeName: n1
  containers:
  - name: t
    image: {BUSYBOX}
    stdin: true
    command: ["sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done & cat"]
"#
        ),
    );
    wait_pod(c, "ticker", Duration::from_secs(60), "running", |p| {
        container_status(p, "t").is_some_and(|s| s.pointer("/state/running").is_some())
    });
    for round in 0..2 {
        let mut cmd = c.server_ns.command("kubectl");
        cmd.arg("--kubeconfig").arg(&c.kubeconfig).args(["attach", "-i", "ticker"]);
        let mut session = skiff_testkit::Child::spawn(cmd, "kubectl attach").expect("kubectl runs");
        session.read_line_starting("tick ").unwrap_or_else(|e| fail(c, &format!("attach round {round}: {e}")));
        // Without stdinOnce the container's stdin stays open across sessions: cat echoes each session's input.
        let word = format!("echoed-{round}");
        session.send_line(&word).expect("stdin");
        session.read_line_starting(&word).unwrap_or_else(|e| fail(c, &format!("attach round {round} stdin: {e}")));
    }
    let p = pod(c, "ticker").expect("ticker");
    let t = container_status(&p, "t").expect("status");
    assert!(t.pointer("/state/running").is_some() && t["restartCount"] == 0, "leaving did not stop it: {t}");

    // A user who may read pods but not attach to them is refused.
    let _reader = PodReader::bind(c, "mallory");
    let (ok, _, err) =
        c.kubectl_output(&["--as=mallory", "attach", "ticker"], None).unwrap_or_else(|e| fail(c, &e.to_string()));
    assert!(!ok && err.contains("cannot create resource \"pods/attach\""), "mallory may not attach: {err}");
    kubectl(c, &["delete", "pod", "ticker", "--grace-period=1"]);
}

fn port_forward_reaches_pods_and_services(c: &Cluster) {
    step("kubectl port-forward: pod and service, over SPDY (1.30) and WebSocket (1.31+), refused for the wrong user");
    apply(
        c,
        r#"
apiVersion: v1
kind: Service
metadata: {name: pf-svc}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: pf-deploy}
spec:
  replicas: 1
  selector: {matchLabels: {app: pf-deploy}}
  template:
    metadata: {labels: {app: pf-deploy}}
    spec:
      containers:
      - {name: web, image: skiff/echo:v1, readinessProbe: {httpGet: {path: /readyz, port: 8080}, periodSeconds: 1}}
"#,
    );
    kubectl(c, &["rollout", "status", "deployment/pf-deploy", "--timeout=90s"]);
    // kubectl 1.30 speaks SPDY on the upgraded connection; 1.31 and later tunnel it in WebSocket messages.
    let targets = [
        ("1.30", "pod/duo", "8080", "duo"),
        ("1.31", "deployment/pf-deploy", "8080", "pf-deploy-"),
        ("1.32", "pod/duo", "8080", "duo"),
        ("1.33", "svc/pf-svc", "80", "duo"),
    ];
    for (minor, target, port, answering) in targets {
        let kubectl = skiff_testkit::kubectl_version(minor);
        let (_forward, local) = port_forward(c, &kubectl, target, port);
        // Several connections through one forward, each a separate pair of streams.
        for i in 0..3 {
            let path = format!("/pf-{minor}-{i}");
            let out = get_local(c, local, &path).unwrap_or_else(|e| fail(c, &format!("{minor} {target}: {e}")));
            let v: serde_json::Value =
                serde_json::from_str(out.trim()).unwrap_or_else(|e| fail(c, &format!("echo answered {out:?}: {e}")));
            let pod = v["pod"].as_str().unwrap_or_default();
            assert!(pod.starts_with(answering) && v["path"] == path.as_str(), "kubectl {minor} {target}: {v}");
        }
    }
    // A port nothing listens on: the connection through the forward fails with kubelet's message on the error
    // stream (kubectl 1.31+ then ends the forward: "lost connection to pod").
    let (_forward, local) = port_forward(c, &skiff_testkit::kubectl_version("1.32"), "pod/duo", "9");
    assert!(get_local(c, local, "/").is_err(), "nothing listens on port 9 in the pod");
    // A user who may read pods but not port-forward to them is refused by the API server.
    let _reader = PodReader::bind(c, "mallory");
    let (ok, _, err) = c
        .kubectl_output(&["--as=mallory", "port-forward", "pod/duo", "0:8080"], None)
        .unwrap_or_else(|e| fail(c, &e.to_string()));
    assert!(!ok && err.contains("cannot create resource \"pods/portforward\""), "mallory may not port-forward: {err}");
    kubectl(c, &["delete", "service/pf-svc", "deployment/pf-deploy"]);
}

fn cp_copies_files_both_ways(c: &Cluster) {
    step("kubectl cp: into a container and back (tar over exec)");
    let dir = tempfile::tempdir().expect("tempdir");
    let local = dir.path().join("notes.txt");
    let body: String = (0..2000).map(|i| format!("line {i}\n")).collect();
    std::fs::write(&local, &body).expect("local file");
    kubectl(c, &["cp", &local.to_string_lossy(), "duo:/tmp/notes.txt", "-c", "client"]);
    let (code, out, _) = exec(c, "duo", "client", &["wc", "-l", "/tmp/notes.txt"], None);
    assert_eq!((code, out.split_whitespace().next()), (0, Some("2000")), "{out}");
    let back = dir.path().join("back.txt");
    kubectl(c, &["cp", "duo:/tmp/notes.txt", &back.to_string_lossy(), "-c", "client"]);
    assert_eq!(std::fs::read_to_string(&back).expect("copied back"), body);
}

fn cluster_dns_answers_from_inside_a_pod(c: &Cluster) {
    step("cluster DNS from inside a pod");
    apply(
        c,
        "apiVersion: v1\nkind: Service\nmetadata: {name: echo-svc}\nspec:\n  selector: {app: echo}\n  ports: [{name: http, port: 80, targetPort: 8080}]\n",
    );
    let ip = kubectl(c, &["get", "svc", "echo-svc", "-o", "jsonpath={.spec.clusterIP}"]);
    let (code, out, err) = exec(c, "duo", "client", &["cat", "/etc/resolv.conf"], None);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("nameserver 10.96.0.10")
            && out.contains("search default.svc.cluster.local svc.cluster.local cluster.local")
            && out.contains("ndots:5"),
        "{out}"
    );
    let (code, out, err) = exec(c, "duo", "client", &["nslookup", "kubernetes.default.svc.cluster.local"], None);
    assert_eq!(code, 0, "nslookup kubernetes: {out}{err}");
    assert!(out.contains("10.96.0.1"), "{out}");
    // busybox's nslookup queries every search domain and exits 1 when any of them is NXDOMAIN (a known busybox
    // quirk in every Kubernetes cluster), so the answer is what counts here.
    let (_, out, err) = exec(c, "duo", "client", &["nslookup", "echo-svc"], None);
    assert!(out.contains("Name:\techo-svc.default.svc.cluster.local"), "nslookup through the search path: {out}{err}");
    assert!(out.contains(ip.trim()), "echo-svc is {ip}: {out}");
    let started = Instant::now();
    let (code, out, _) = exec(c, "duo", "client", &["nslookup", "nothing.example"], None);
    assert_ne!(code, 0, "unknown names fail: {out}");
    assert!(started.elapsed() < Duration::from_secs(5), "NXDOMAIN comes quickly, not after a timeout");
    let slice = kubectl(
        c,
        &["get", "endpointslice", "-n", "kube-system", "kube-dns-n1", "-o", "jsonpath={.endpoints[0].addresses[0]}"],
    );
    assert_eq!(slice.trim(), "10.0.0.11", "the node publishes its DNS endpoint");
}

fn a_readiness_probe_flips_ready(c: &Cluster) {
    step("a readiness probe flips Ready");
    let flip = |v: &str| {
        let (code, _, err) = exec(
            c,
            "duo",
            "client",
            &["wget", "-qO-", "--post-data=", &format!("http://localhost:8080/readyz?ready={v}")],
            None,
        );
        assert_eq!(code, 0, "{err}");
    };
    flip("false");
    let p = wait_pod(c, "duo", Duration::from_secs(20), "Ready=False", |p| {
        condition(p, "Ready").as_deref() == Some("False")
    });
    assert_eq!(container_status(&p, "web").map(|s| s["ready"].clone()), Some(serde_json::json!(false)));
    assert_eq!(
        container_status(&p, "web").map(|s| s["restartCount"].clone()),
        Some(serde_json::json!(0)),
        "readiness never restarts"
    );
    flip("true");
    wait_ready(c, "duo");
}

fn a_liveness_failure_restarts_the_container(c: &Cluster) {
    step("a liveness failure restarts the container");
    apply(
        c,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: live}}\nspec:\n  nodeName: n1\n  terminationGracePeriodSeconds: 2\n  containers:\n  - name: web\n    image: {ECHO}\n    livenessProbe: {{httpGet: {{path: /healthz, port: 8080}}, periodSeconds: 1, failureThreshold: 2}}\n"
        ),
    );
    let p = wait_ready(c, "live");
    let ip = p.pointer("/status/podIP").and_then(|v| v.as_str()).unwrap_or_default().to_string();
    c.on_node(0, "wget", &["-qO-", "--post-data=", &format!("http://{ip}:8080/healthz?healthy=false")])
        .unwrap_or_else(|e| fail(c, &e.to_string()));
    let p = wait_pod(c, "live", Duration::from_secs(40), "a restart", |p| {
        container_status(p, "web").is_some_and(|s| s["restartCount"].as_i64().unwrap_or(0) >= 1)
    });
    let s = container_status(&p, "web").expect("status");
    assert!(s.pointer("/lastState/terminated").is_some(), "{s}");
    wait_ready(c, "live");
    let events = kubectl(
        c,
        &["get", "events", "--field-selector", "involvedObject.name=live", "-o", "jsonpath={.items[*].reason}"],
    );
    assert!(events.contains("Unhealthy") && events.contains("Killing"), "events: {events}");
    kubectl(c, &["delete", "pod", "live", "--wait=false"]);
}

fn an_oom_kill_is_reported_as_oomkilled(c: &Cluster) {
    step("an OOM kill is reported as OOMKilled");
    apply(
        c,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: oom}}\nspec:\n  nodeName: n1\n  restartPolicy: Never\n  containers:\n  - name: hog\n    image: {BUSYBOX}\n    command: [\"sh\", \"-c\", \"x=0123456789; while true; do x=$x$x; done\"]\n    resources: {{limits: {{memory: 16Mi}}}}\n"
        ),
    );
    let p = wait_pod(c, "oom", Duration::from_secs(60), "OOMKilled", |p| {
        container_status(p, "hog")
            .and_then(|s| s.pointer("/state/terminated/reason").and_then(|r| r.as_str().map(str::to_string)))
            .is_some()
    });
    let t = container_status(&p, "hog").and_then(|s| s.pointer("/state/terminated").cloned()).expect("terminated");
    assert_eq!(t["reason"], "OOMKilled", "{t}");
    assert_eq!(t["exitCode"], 137, "{t}");
    assert_eq!(p.pointer("/status/phase").and_then(|v| v.as_str()), Some("Failed"));
    kubectl(c, &["delete", "pod", "oom", "--wait=false"]);
}

fn a_crashing_container_backs_off(c: &Cluster) {
    step("a crashing container goes into CrashLoopBackOff");
    apply(
        c,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: crash}}\nspec:\n  nodeName: n1\n  containers:\n  - name: c\n    image: {BUSYBOX}\n    command: [\"sh\", \"-c\", \"echo crashing; exit 3\"]\n"
        ),
    );
    let p = wait_pod(c, "crash", Duration::from_secs(30), "CrashLoopBackOff", |p| {
        container_status(p, "c")
            .and_then(|s| s.pointer("/state/waiting/reason").and_then(|r| r.as_str().map(str::to_string)))
            .as_deref()
            == Some("CrashLoopBackOff")
    });
    let s = container_status(&p, "c").expect("status");
    assert_eq!(s.pointer("/lastState/terminated/exitCode"), Some(&serde_json::json!(3)), "{s}");
    assert_eq!(s.pointer("/lastState/terminated/reason"), Some(&serde_json::json!("Error")), "{s}");
    let msg = s.pointer("/state/waiting/message").and_then(|m| m.as_str()).unwrap_or_default().to_string();
    assert!(msg.starts_with("back-off 10s restarting failed container=c pod=crash_default("), "{msg}");
    // The first restart is immediate, the next waits 10 s, then 20 s: within 8 s of the second run ending the
    // container does not run a third time.
    let count = s["restartCount"].as_i64().unwrap_or(0);
    assert_eq!(count, 1, "one immediate restart, then back-off: {s}");
    std::thread::sleep(Duration::from_secs(5));
    let later = container_status(&pod(c, "crash").expect("pod"), "c").expect("status");
    assert_eq!(later["restartCount"], 1, "still backing off after 5 s: {later}");
    let p = wait_pod(c, "crash", Duration::from_secs(30), "the back-off to double", |p| {
        container_status(p, "c")
            .and_then(|s| s.pointer("/state/waiting/message").and_then(|m| m.as_str().map(str::to_string)))
            .is_some_and(|m| m.starts_with("back-off 20s"))
    });
    assert_eq!(container_status(&p, "c").map(|s| s["restartCount"].clone()), Some(serde_json::json!(2)));
    assert_eq!(
        p.pointer("/status/phase").and_then(|v| v.as_str()),
        Some("Running"),
        "a crash-looping Always pod stays Running"
    );
    let events = kubectl(
        c,
        &["get", "events", "--field-selector", "involvedObject.name=crash", "-o", "jsonpath={.items[*].reason}"],
    );
    assert!(events.contains("BackOff"), "events: {events}");
    kubectl(c, &["delete", "pod", "crash", "--wait=false"]);
}

fn config_maps_and_secrets_reach_env_and_files(c: &Cluster) {
    step("ConfigMaps and Secrets as env and files, updated in place");
    kubectl(c, &["create", "configmap", "cfg", "--from-literal=color=blue"]);
    kubectl(c, &["create", "secret", "generic", "sec", "--from-literal=pw=hunter2"]);
    apply(
        c,
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: conf}}
spec:
  nodeName: n1
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {BUSYBOX}
    command: ["sh", "-c", "while true; do sleep 1; done"]
    env:
    - {{name: COLOR, valueFrom: {{configMapKeyRef: {{name: cfg, key: color}}}}}}
    - {{name: PW, valueFrom: {{secretKeyRef: {{name: sec, key: pw}}}}}}
    envFrom: [{{prefix: CFG_, configMapRef: {{name: cfg}}}}]
    volumeMounts:
    - {{name: cfg, mountPath: /etc/cfg}}
    - {{name: sec, mountPath: /etc/sec, readOnly: true}}
  volumes:
  - {{name: cfg, configMap: {{name: cfg}}}}
  - {{name: sec, secret: {{secretName: sec, defaultMode: 0400}}}}
"#
        ),
    );
    wait_ready(c, "conf");
    let (_, env, _) = exec(c, "conf", "c", &["env"], None);
    assert!(env.contains("COLOR=blue\n") && env.contains("PW=hunter2\n") && env.contains("CFG_color=blue\n"), "{env}");
    let (_, color, _) = exec(c, "conf", "c", &["cat", "/etc/cfg/color"], None);
    assert_eq!(color, "blue");
    let (_, pw, _) = exec(c, "conf", "c", &["cat", "/etc/sec/pw"], None);
    assert_eq!(pw, "hunter2");
    let (_, mode, _) = exec(c, "conf", "c", &["stat", "-L", "-c", "%a", "/etc/sec/pw"], None);
    assert_eq!(mode.trim(), "400");
    apply(c, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata: {color: green}\n");
    let seen = wait_for(Duration::from_secs(30), "the running pod to see the new file", || {
        let (_, v, _) = exec(c, "conf", "c", &["cat", "/etc/cfg/color"], None);
        (v == "green").then_some(())
    });
    if let Err(e) = seen {
        fail(c, &e.to_string());
    }
    let (_, links, _) = exec(c, "conf", "c", &["readlink", "/etc/cfg/color"], None);
    assert_eq!(links.trim(), "..data/color", "files are links into the atomically swapped ..data");
    // A pod referring to a missing ConfigMap waits with CreateContainerConfigError.
    apply(
        c,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: noconf}}\nspec:\n  nodeName: n1\n  containers:\n  - name: c\n    image: {BUSYBOX}\n    command: [sleep, '100']\n    env: [{{name: X, valueFrom: {{configMapKeyRef: {{name: missing, key: k}}}}}}]\n"
        ),
    );
    let p = wait_pod(c, "noconf", Duration::from_secs(30), "CreateContainerConfigError", |p| {
        container_status(p, "c")
            .and_then(|s| s.pointer("/state/waiting/reason").and_then(|r| r.as_str().map(str::to_string)))
            .as_deref()
            == Some("CreateContainerConfigError")
    });
    let msg = container_status(&p, "c").and_then(|s| s.pointer("/state/waiting/message").cloned()).unwrap_or_default();
    assert_eq!(msg, "configmap \"missing\" not found");
    kubectl(c, &["delete", "pod", "conf", "noconf", "--wait=false"]);
}

fn logs_follow_tail_and_previous(c: &Cluster) {
    step("kubectl logs: -c, --tail, --previous, -f, --timestamps");
    apply(
        c,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: talker}}\nspec:\n  nodeName: n1\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: once\n    image: {BUSYBOX}\n    command: [\"sh\", \"-c\", \"for i in 1 2 3 4 5; do echo run line $i; done; echo to stderr >&2; sleep 2; exit 1\"]\n  - name: ticker\n    image: {BUSYBOX}\n    command: [\"sh\", \"-c\", \"i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done\"]\n"
        ),
    );
    wait_pod(c, "talker", Duration::from_secs(40), "a restart of `once`", |p| {
        container_status(p, "once").is_some_and(|s| s["restartCount"].as_i64().unwrap_or(0) >= 1)
    });
    let prev = kubectl(c, &["logs", "talker", "-c", "once", "--previous"]);
    assert_eq!(prev, "run line 1\nrun line 2\nrun line 3\nrun line 4\nrun line 5\nto stderr\n");
    let tail = kubectl(c, &["logs", "talker", "-c", "once", "--previous", "--tail=2"]);
    assert_eq!(tail, "run line 5\nto stderr\n");
    let ts = kubectl(c, &["logs", "talker", "-c", "once", "--previous", "--timestamps", "--tail=1"]);
    assert!(ts.contains("Z to stderr"), "{ts}");
    let (ok, _, err) = c.kubectl_output(&["logs", "talker"], None).expect("kubectl");
    // kubectl picks the first container of a multi-container pod and says so (as with any API server).
    assert!(ok && err.contains("Defaulted container \"once\""), "{err}");
    // -f streams while the container runs
    let mut cmd = c.server_ns.command("kubectl");
    cmd.arg("--kubeconfig").arg(&c.kubeconfig).args(["logs", "-f", "talker", "-c", "ticker", "--tail=1"]);
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null());
    let child = skiff_testkit::Child::spawn(cmd, "kubectl logs -f");
    let mut child = child.unwrap_or_else(|e| fail(c, &e.to_string()));
    let first = child.read_line_starting("tick ").unwrap_or_else(|e| fail(c, &e.to_string()));
    let n0: i64 = first.parse().unwrap_or(-1);
    let later = (0..10).map(|_| child.read_line_starting("tick ").unwrap_or_default()).last().unwrap_or_default();
    let n1: i64 = later.parse().unwrap_or(-1);
    assert!(n1 >= n0 + 10, "follow delivers new lines as they are written: {n0} then {n1}");
    drop(child);
    kubectl(c, &["delete", "pod", "talker", "--wait=false"]);
}

fn termination_honours_the_grace_period(c: &Cluster) {
    step("graceful termination within the grace period");
    apply(
        c,
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: graceful}}
spec:
  nodeName: n1
  terminationGracePeriodSeconds: 30
  containers:
  - name: c
    image: {BUSYBOX}
    command: ["sh", "-c", "trap 'echo got TERM; exit 0' TERM; while true; do sleep 0.2; done"]
---
apiVersion: v1
kind: Pod
metadata: {{name: stubborn}}
spec:
  nodeName: n1
  terminationGracePeriodSeconds: 3
  containers:
  - name: c
    image: {BUSYBOX}
    command: ["sh", "-c", "trap '' TERM; while true; do sleep 0.2; done"]
"#
        ),
    );
    wait_ready(c, "graceful");
    wait_ready(c, "stubborn");
    let t0 = Instant::now();
    kubectl(c, &["delete", "pod", "graceful", "stubborn", "--wait=false"]);
    wait_gone(c, "graceful", Duration::from_secs(25));
    let graceful = t0.elapsed();
    wait_gone(c, "stubborn", Duration::from_secs(25));
    let stubborn = t0.elapsed();
    assert!(
        graceful < Duration::from_secs(10),
        "a pod that exits on SIGTERM is gone well within its 30 s grace period ({graceful:?})"
    );
    assert!(stubborn >= Duration::from_secs(3), "a pod that ignores SIGTERM keeps its 3 s grace period ({stubborn:?})");
    assert!(stubborn < Duration::from_secs(15), "and is killed after it ({stubborn:?})");
}

fn runc_ids(c: &Cluster) -> Vec<String> {
    let root = c.nodes[0].data_dir.join("runc");
    let out =
        std::process::Command::new("runc").arg("--root").arg(&root).args(["list", "-q"]).output().expect("runc list");
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

fn a_restarted_agent_readopts_its_pods(c: &mut Cluster) {
    step("a killed agent leaves its pods running and re-adopts them");
    let before = wait_ready(c, "duo");
    let ids = |p: &serde_json::Value| -> Vec<String> {
        ["web", "client"]
            .iter()
            .map(|n| {
                container_status(p, n).and_then(|s| s["containerID"].as_str().map(str::to_string)).unwrap_or_default()
            })
            .collect()
    };
    let containers_before = runc_ids(c);
    let client_id = ids(&before)[1].trim_start_matches("runc://").to_string();
    let shim = shim_of(&client_id).unwrap_or_else(|| fail(c, &format!("no shim runs for container {client_id}")));
    let exe = std::fs::read_link(format!("/proc/{shim}/exe")).expect("the shim's executable");
    assert!(exe.ends_with("skiff-shim"), "containers run under the small skiff-shim program, not {}", exe.display());
    c.kill_agent(0);
    std::thread::sleep(Duration::from_secs(2));
    let ip = before.pointer("/status/podIP").and_then(|v| v.as_str()).unwrap_or_default().to_string();
    let answer = c.on_node(0, "wget", &["-qO-", &format!("http://{ip}:8080/")]).unwrap_or_default();
    assert!(answer.contains("\"pod\":\"duo\""), "the pod serves while its agent is down: {answer:?}");
    // the container writes to its own stdout while no agent runs: the shim keeps logging it
    let root = c.nodes[0].data_dir.join("runc");
    let wrote = std::process::Command::new("runc")
        .arg("--root")
        .arg(&root)
        .args(["exec", &client_id, "sh", "-c", "echo written-while-the-agent-was-down > /proc/1/fd/1"])
        .status()
        .expect("runc exec");
    assert!(wrote.success(), "runc exec into the client container");
    c.start_agent(0).expect("restarting the agent");
    c.wait_node_ready(0, Duration::from_secs(60)).unwrap_or_else(|e| fail(c, &e.to_string()));
    let after = wait_ready(c, "duo");
    assert_eq!(ids(&before), ids(&after), "the same containers, not new ones");
    for n in ["web", "client"] {
        assert_eq!(
            container_status(&after, n).map(|s| s["restartCount"].clone()),
            container_status(&before, n).map(|s| s["restartCount"].clone())
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    let mut now = runc_ids(c);
    let mut was = containers_before;
    now.sort();
    was.sort();
    assert_eq!(now, was, "no container was started twice or lost");
    let (code, out, _) = exec(c, "duo", "client", &["echo", "still here"], None);
    assert_eq!((code, out.trim()), (0, "still here"), "exec works through the new agent");
    let logs = kubectl(c, &["logs", "duo", "-c", "client"]);
    assert!(logs.contains("written-while-the-agent-was-down"), "the shim logged while the agent was down: {logs:?}");
    assert_eq!(shim_of(&client_id), Some(shim), "the same shim watches the container");
}

/// The pid of the shim of container `id` (its command line has `--id ID`).
fn shim_of(id: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid = e.file_name().to_string_lossy().parse::<u32>().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_shim =
            args.windows(2).any(|w| w[0] == b"--id" && w[1] == id.as_bytes()) && args.iter().any(|a| *a == b"--exit");
        is_shim.then_some(pid)
    })
}

fn nothing_is_left_behind(c: &Cluster) {
    step("deleting every pod leaves nothing behind");
    kubectl(c, &["delete", "pods", "--all", "--wait=false"]);
    let gone = wait_for(Duration::from_secs(60), "every pod to be deleted", || {
        let out = c.kubectl(&["get", "pods", "-o", "name"]).ok()?;
        out.trim().is_empty().then_some(())
    });
    if let Err(e) = gone {
        fail(c, &e.to_string());
    }
    std::thread::sleep(Duration::from_secs(1));
    assert!(runc_ids(c).is_empty(), "containers left: {:?}", runc_ids(c));
    let left = c.leftovers();
    assert!(left.is_empty(), "left behind: {left:?}");
    let links = c.on_node(0, "ip", &["-o", "link"]).expect("ip link");
    // The bridge stays (it is the node's); pod veths (`sk<hash>`) go with their pods.
    assert!(!links.lines().any(|l| l.contains(": sk") && !l.contains(": skiff0:")), "veths left: {links}");
    let netns: Vec<_> =
        std::fs::read_dir(c.nodes[0].data_dir.join("netns")).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(netns.is_empty(), "network namespaces left: {netns:?}");
    let ipam: Vec<_> =
        std::fs::read_dir(c.nodes[0].data_dir.join("ipam")).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(ipam.is_empty(), "addresses still allocated: {ipam:?}");
}
