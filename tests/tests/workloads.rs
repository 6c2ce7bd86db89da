//! Seed scenarios 4, 5 and 6 on one three-node cluster:
//! 4. an HPA on a CPU-burning Deployment scales up under load and back down after its (shortened) stabilization
//!    window, reading the resource metrics the agents serve through `metrics.k8s.io`;
//! 5. a CronJob running every minute, and a failing Job retried up to its backoffLimit;
//! 6. a ConfigMap and a Secret reaching a pod as environment variables and files; the datastore holds no Secret
//!    value in plain text;
//! - and a pod's own identity (issue 14): kube-rs' in-cluster configuration in a pod reads what the pod's service
//!   account is granted and is refused the rest; a pod with automounting off has no token.
//!
//! Needs root (network namespaces, runc, BPF) and the built-in images of `scripts/setup`.

use std::time::{Duration, Instant};

use skiff_e2e::*;

#[test]
fn hpa_jobs_cronjobs_config_and_secrets() {
    let Some(c) = cluster("the workload scenarios", 3) else { return };
    // The CronJob's first run comes at the next minute boundary: start it first and check it last.
    step("scenario 5: kubectl apply -f manifests/scenarios/jobs.yaml");
    kubectl(&c, &["apply", "-f", &repo_root().join("manifests/scenarios/jobs.yaml").display().to_string()]);
    let jobs_applied = Instant::now();
    scenario_6_config_and_secrets(&c);
    in_cluster_identity(&c);
    scenario_4_hpa(&c);
    scenario_5_jobs(&c, jobs_applied);
}

fn scenario_6_config_and_secrets(c: &Cluster) {
    step("scenario 6: a ConfigMap and a Secret as env and files");
    kubectl(c, &["apply", "-f", &repo_root().join("manifests/scenarios/config.yaml").display().to_string()]);
    kubectl(c, &["wait", "--for=condition=Ready", "pod/config-reader", "--timeout=60s"]);
    let (code, env) = exec(c, "config-reader", &["env"]);
    assert_eq!(code, 0);
    assert!(env.contains("GREETING=hello from a configmap\n"), "{env}");
    assert!(env.contains("PASSWORD=s3cr3t-p4ssw0rd-e2e\n"), "{env}");
    let (_, props) = exec(c, "config-reader", &["cat", "/etc/app/app.properties"]);
    assert_eq!(props, "color=teal\nsize=3\n");
    let (_, token) = exec(c, "config-reader", &["cat", "/etc/secret/token.txt"]);
    assert_eq!(token, "t0ken-in-a-file-e2e");

    step("an updated ConfigMap reaches the mounted file");
    kubectl(c, &["patch", "configmap", "app-config", "-p", r#"{"data":{"app.properties":"color=amber\n"}}"#]);
    wait(c, Duration::from_secs(60), "the new ConfigMap content in the pod", || {
        let (_, props) = exec(c, "config-reader", &["cat", "/etc/app/app.properties"]);
        (props == "color=amber\n").then_some(())
    });

    step("no Secret value in plain text in the datastore");
    let server = c.dir.join("server");
    let mut checked = 0;
    for entry in std::fs::read_dir(&server).expect("the server's directory").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("state.db") {
            continue;
        }
        let bytes = std::fs::read(entry.path()).expect("reading the datastore");
        for secret in ["s3cr3t-p4ssw0rd-e2e", "t0ken-in-a-file-e2e", "czNjcjN0LXA0c3N3MHJkLWUyZQ"] {
            assert!(!contains(&bytes, secret.as_bytes()), "{name} holds {secret:?} in plain text");
        }
        // The ConfigMap (not encrypted) is there: the check above looks at the right file.
        checked += usize::from(contains(&bytes, b"hello from a configmap"));
    }
    assert!(
        checked > 0,
        "the ConfigMap's value was found in the datastore, so the Secret search looked at the right files"
    );
    kubectl(c, &["delete", "pod", "config-reader", "--wait=false"]);
}

const IDENTITY: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: reader}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pod-reader}
rules: [{apiGroups: [""], resources: [pods], verbs: [get, list]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: reader-reads-pods}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}
subjects: [{kind: ServiceAccount, name: reader}]
---
apiVersion: v1
kind: Pod
metadata: {name: api-reader}
spec:
  serviceAccountName: reader
  containers: [{name: echo, image: skiff/echo:v1}]
---
apiVersion: v1
kind: Pod
metadata: {name: no-token}
spec:
  automountServiceAccountToken: false
  containers: [{name: echo, image: skiff/echo:v1}]
"#;

/// What the pod's in-cluster client gets for a GET of `path`: (code, the whole answer).
fn from_inside(c: &Cluster, pod: &str, path: &str) -> (i64, serde_json::Value) {
    let url = format!("http://127.0.0.1:8080/kube?path={path}");
    let (code, out) = exec(c, pod, &["wget", "-qO-", &url]);
    assert_eq!(code, 0, "wget in {pod}: {out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| fail(c, &format!("{e}: {out}")));
    (v["code"].as_i64().unwrap_or(-1), v)
}

fn in_cluster_identity(c: &Cluster) {
    step("a pod's service account: kube-rs in-cluster config gets what the Role grants, nothing more");
    apply(c, IDENTITY);
    kubectl(c, &["wait", "--for=condition=Ready", "pod/api-reader", "pod/no-token", "--timeout=90s"]);
    let volumes = kubectl(c, &["get", "pod", "api-reader", "-o", "jsonpath={.spec.volumes[*].name}"]);
    assert!(volumes.contains("kube-api-access-"), "{volumes}");
    let (_, ns) = exec(c, "api-reader", &["cat", "/var/run/secrets/kubernetes.io/serviceaccount/namespace"]);
    assert_eq!(ns, "default");
    let (code, pods) = from_inside(c, "api-reader", "/api/v1/namespaces/default/pods");
    assert_eq!(code, 200, "{pods}");
    assert!(
        pods["body"]["items"].as_array().is_some_and(|i| i.iter().any(|p| p["metadata"]["name"] == "api-reader")),
        "{pods}"
    );
    for (path, words) in [
        (
            "/api/v1/namespaces/default/secrets",
            r#"cannot list resource "secrets" in API group "" in the namespace "default""#,
        ),
        ("/api/v1/namespaces/kube-system/pods", r#"in the namespace "kube-system""#),
        ("/api/v1/nodes", "at the cluster scope"),
    ] {
        let (code, answer) = from_inside(c, "api-reader", path);
        assert_eq!(code, 403, "{path}: {answer}");
        let msg = answer["body"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains("system:serviceaccount:default:reader") && msg.contains(words), "{path}: {msg}");
    }
    let (code, answer) = from_inside(c, "no-token", "/api/v1/namespaces/default/pods");
    assert_eq!(code, 0, "no token mounted, so no in-cluster configuration: {answer}");
    let (rc, _) = exec(c, "no-token", &["ls", "/var/run/secrets/kubernetes.io/serviceaccount"]);
    assert_ne!(rc, 0, "nothing mounted where the token would be");
    kubectl(c, &["delete", "pod", "api-reader", "no-token", "--wait=false"]);
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn replicas(c: &Cluster) -> (i64, i64) {
    let out = c
        .kubectl(&["get", "hpa", "burner", "-o", "jsonpath={.status.currentReplicas} {.status.desiredReplicas}"])
        .unwrap_or_default();
    let mut it = out.split(' ').map(|n| n.parse().unwrap_or(-1));
    (it.next().unwrap_or(-1), it.next().unwrap_or(-1))
}

fn scenario_4_hpa(c: &Cluster) {
    step("scenario 4: an HPA on a CPU-burning Deployment");
    kubectl(c, &["apply", "-f", &repo_root().join("manifests/scenarios/hpa.yaml").display().to_string()]);
    kubectl(c, &["rollout", "status", "deployment/burner", "--timeout=60s"]);
    wait(c, Duration::from_secs(60), "the HPA to read the pods' CPU", || {
        let cur = c
            .kubectl(&[
                "get",
                "hpa",
                "burner",
                "-o",
                "jsonpath={.status.currentMetrics[0].resource.current.averageUtilization}",
            ])
            .ok()?;
        (!cur.trim().is_empty()).then_some(())
    });
    // The same resource metrics through kubectl.
    let top = kubectl(c, &["top", "pods", "-l", "app=burner"]);
    assert!(top.contains("CPU(cores)") && top.contains("burner-"), "{top}");
    let top = kubectl(c, &["top", "nodes"]);
    assert!(["n1", "n2", "n3"].iter().all(|n| top.contains(n)), "{top}");
    // Load: one client in the client namespace asking for 900 ms of CPU at a time through the NodePort — about one
    // core, ten times the pod's 100m request.
    let target: std::net::SocketAddr = "10.0.0.12:30081".parse().expect("address");
    let load = Load::start(c, target, "burner", "/burn?ms=900", Duration::from_millis(1), Duration::from_secs(150));
    let loaded = Instant::now();
    let up = wait_for(Duration::from_secs(120), "the HPA to scale up", || (replicas(c).1 >= 2).then_some(()));
    let up_after = loaded.elapsed();
    let samples = load.finish();
    step(&format!("load: {} requests", samples.len()));
    if let Err(e) = up {
        let describe = kubectl(c, &["describe", "hpa", "burner"]);
        fail(c, &format!("{e}\n{describe}"));
    }
    step(&format!("scaled up to {} replicas {:.0} s after the load started", replicas(c).1, up_after.as_secs_f64()));
    let quiet = Instant::now();
    let down =
        wait_for(Duration::from_secs(150), "the HPA to scale back down to 1", || (replicas(c) == (1, 1)).then_some(()));
    if let Err(e) = down {
        let describe = kubectl(c, &["describe", "hpa", "burner"]);
        fail(c, &format!("{e}\n{describe}"));
    }
    step(&format!("back to 1 replica {:.0} s after the load stopped (window 15 s)", quiet.elapsed().as_secs_f64()));
    assert!(quiet.elapsed() >= Duration::from_secs(15), "not before the stabilization window");
    let events = kubectl(
        c,
        &["get", "events", "--field-selector", "involvedObject.name=burner,reason=SuccessfulRescale", "-o", "name"],
    );
    assert!(events.lines().count() >= 2, "rescale events up and down: {events}");
    kubectl(
        c,
        &["delete", "-f", &repo_root().join("manifests/scenarios/hpa.yaml").display().to_string(), "--wait=false"],
    );
}

fn scenario_5_jobs(c: &Cluster, applied: Instant) {
    step("scenario 5: the failing Job is retried up to its backoffLimit (2)");
    wait(c, Duration::from_secs(120), "the Job to fail", || {
        let s = c
            .kubectl(&[
                "get",
                "job",
                "always-fails",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Failed\")].reason}",
            ])
            .ok()?;
        (s == "BackoffLimitExceeded").then_some(())
    });
    let failed = kubectl(c, &["get", "job", "always-fails", "-o", "jsonpath={.status.failed}"]);
    assert_eq!(failed, "3", "one run and two retries");
    let pods = kubectl(c, &["get", "pods", "-l", "job-name=always-fails", "-o", "jsonpath={.items[*].status.phase}"]);
    assert_eq!(pods.split(' ').filter(|p| *p == "Failed").count(), 3, "{pods}");
    let logs = kubectl(c, &["logs", "job/always-fails"]);
    assert_eq!(logs, "failing\n");

    step("scenario 5: the CronJob runs every minute");
    let limit = Duration::from_secs(150).saturating_sub(applied.elapsed()).max(Duration::from_secs(10));
    wait(c, limit, "two successful runs of the CronJob", || {
        let out = c
            .kubectl(&[
                "get",
                "jobs",
                "-o",
                "jsonpath={range .items[*]}{.metadata.ownerReferences[0].name} {.status.succeeded}{\"\\n\"}{end}",
            ])
            .ok()?;
        let done = out.lines().filter(|l| *l == "every-minute 1").count();
        (done >= 2).then_some(())
    });
    let last = kubectl(c, &["get", "cronjob", "every-minute", "-o", "jsonpath={.status.lastSuccessfulTime}"]);
    assert!(!last.is_empty(), "lastSuccessfulTime is set");
    step(&format!("CronJob: two runs done, last success at {last}"));
}
