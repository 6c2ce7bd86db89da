//! Two nodes, end to end: pods on different nodes reach each other through the routes the agents program, cluster
//! DNS answers on both, static pods are mirrored, and the kubelet endpoint demands a client certificate and serves
//! resource metrics. (Pulls from a registry: `agent_registry.rs`.)
//!
//! Needs root (network namespaces, runc, cgroups) and the built-in images of `scripts/setup`.

mod agent_support;

use std::time::Duration;

use agent_support::*;
use skiff_testkit::cluster::{Cluster, wait_for};

fn echo_pod(name: &str, node: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: spread}}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: {ECHO}
    env:
    - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
    - {{name: NODE_NAME, valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}}}
    readinessProbe: {{httpGet: {{path: /readyz, port: 8080}}, periodSeconds: 1}}
"#
    )
}

#[test]
fn pods_on_two_nodes_reach_each_other_and_the_node_endpoint_is_guarded() {
    let Some(c) = cluster("the two-node agent test", 2) else { return };
    step("pods on two nodes reach each other");
    apply(&c, &echo_pod("a", "n1"));
    apply(&c, &echo_pod("b", "n2"));
    let a = wait_ready(&c, "a");
    let b = wait_ready(&c, "b");
    let ip =
        |p: &serde_json::Value| p.pointer("/status/podIP").and_then(|v| v.as_str()).unwrap_or_default().to_string();
    let (ip_a, ip_b) = (ip(&a), ip(&b));
    let cidr = |n: &str| kubectl(&c, &["get", "node", n, "-o", "jsonpath={.spec.podCIDR}"]);
    let (cidr1, cidr2) = (cidr("n1"), cidr("n2"));
    assert_ne!(cidr1, cidr2, "each node has its own pod CIDR");
    assert!(ip_a.starts_with(cidr1.trim_end_matches("0/24")), "{ip_a} in {cidr1}");
    assert!(ip_b.starts_with(cidr2.trim_end_matches("0/24")), "{ip_b} in {cidr2}");
    // Routes to another node's pods follow its Node object, so they may trail the pods by a moment.
    let reached = wait_for(Duration::from_secs(20), "a → b across nodes", || {
        let (code, out, _) = exec(&c, "a", "web", &["wget", "-qO-", &format!("http://{ip_b}:8080/from-a")], None);
        (code == 0).then_some(out)
    });
    let out = reached.unwrap_or_else(|e| {
        let routes = c.on_node(0, "ip", &["route"]).unwrap_or_else(|e| e.to_string());
        fail(&c, &format!("{e}; routes on n1:\n{routes}"))
    });
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| fail(&c, &format!("{out:?}: {e}")));
    assert_eq!((v["pod"].as_str(), v["node"].as_str()), (Some("b"), Some("n2")));
    assert_eq!(
        v["peer"].as_str().map(|p| p.split(':').next().unwrap_or_default().to_string()),
        Some(ip_a.clone()),
        "no NAT between pods"
    );
    let (code, _, err) = exec(&c, "b", "web", &["wget", "-qO-", &format!("http://{ip_a}:8080/from-b")], None);
    assert_eq!(code, 0, "b → a: {err}");

    step("cluster DNS on the second node");
    apply(
        &c,
        "apiVersion: v1\nkind: Service\nmetadata: {name: spread}\nspec:\n  clusterIP: None\n  selector: {app: spread}\n  ports: [{name: http, port: 8080}]\n",
    );
    // The headless Service's records come from its EndpointSlices (written by the endpoints controller when it
    // runs); its name resolves either way through the node's DNS server.
    // (busybox's nslookup exits 1 when any search domain is NXDOMAIN, so the answer is what counts.)
    let (_, out, err) = exec(&c, "b", "web", &["nslookup", "kubernetes.default.svc.cluster.local"], None);
    assert!(out.contains("Name:\tkubernetes.default.svc.cluster.local\nAddress: 10.96.0.1"), "{out}{err}");
    let (_, out, _) =
        exec(&c, "b", "web", &["nslookup", &format!("{}.default.pod.cluster.local.", ip_a.replace('.', "-"))], None);
    assert!(out.contains(&ip_a), "pod records: {out}");

    step("the kubelet endpoint requires a client certificate signed by the cluster CA");
    let url = "https://10.0.0.11:10250/healthz";
    let no_cert = c.server_ns.exec("curl", &["-sk", "--max-time", "5", url]);
    assert!(no_cert.is_err(), "a client without a certificate is refused: {no_cert:?}");
    let pki = c.dir.join("server/pki");
    let (cert, key) = (pki.join("admin.crt"), pki.join("admin.key"));
    if cert.exists() && key.exists() {
        let ok = c.server_ns.exec(
            "curl",
            &[
                "-sk",
                "--max-time",
                "5",
                "--cert",
                &cert.display().to_string(),
                "--key",
                &key.display().to_string(),
                url,
            ],
        );
        assert_eq!(ok.as_deref().map(str::trim).ok(), Some("ok"), "{ok:?}");
        let metrics_url = "https://10.0.0.11:10250/apis/metrics.k8s.io/v1beta1/pods";
        let got = wait_for(Duration::from_secs(40), "pod metrics", || {
            let out = c
                .server_ns
                .exec(
                    "curl",
                    &[
                        "-sk",
                        "--max-time",
                        "5",
                        "--cert",
                        &cert.display().to_string(),
                        "--key",
                        &key.display().to_string(),
                        metrics_url,
                    ],
                )
                .ok()?;
            let v: serde_json::Value = serde_json::from_str(&out).ok()?;
            let item = v["items"].as_array()?.iter().find(|i| i["metadata"]["name"] == "a")?.clone();
            let nonzero =
                item["containers"][0]["usage"]["memory"].as_str().is_some_and(|m| m.ends_with("Ki") && m != "0Ki");
            nonzero.then_some(item)
        });
        let item = got.unwrap_or_else(|e| fail(&c, &e.to_string()));
        assert_eq!(item["window"], "10s");
        let agent_metrics = c
            .server_ns
            .exec(
                "curl",
                &[
                    "-sk",
                    "--max-time",
                    "5",
                    "--cert",
                    &cert.display().to_string(),
                    "--key",
                    &key.display().to_string(),
                    "https://10.0.0.11:10250/metrics",
                ],
            )
            .unwrap_or_default();
        assert!(agent_metrics.contains("skiff_agent_pod_start_duration_seconds_count"), "{agent_metrics}");

        step("another certificate the CA signed is authorized per request (SubjectAccessReview on nodes/proxy)");
        let alice_key = c.dir.join("alice.key");
        let alice_csr = c.dir.join("alice.csr");
        let alice_crt = c.dir.join("alice.crt");
        let p = |x: &std::path::Path| x.display().to_string();
        let openssl = |args: &[&str]| {
            let out = std::process::Command::new("openssl").args(args).output().expect("openssl runs");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", &p(&alice_key)]);
        openssl(&["req", "-new", "-key", &p(&alice_key), "-subj", "/CN=alice", "-out", &p(&alice_csr)]);
        // a v3 client certificate (webpki refuses v1)
        let ext = c.dir.join("alice.ext");
        std::fs::write(&ext, "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n")
            .expect("ext");
        openssl(&[
            "x509",
            "-req",
            "-in",
            &p(&alice_csr),
            "-CA",
            &p(&pki.join("ca.crt")),
            "-CAkey",
            &p(&pki.join("ca.key")),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &p(&ext),
            "-out",
            &p(&alice_crt),
        ]);
        let logs_url = "https://10.0.0.11:10250/containerLogs/default/a/web";
        let as_alice = || {
            c.server_ns
                .exec(
                    "curl",
                    &[
                        "-sk",
                        "--max-time",
                        "5",
                        "-w",
                        " %{http_code}",
                        "--cert",
                        &p(&alice_crt),
                        "--key",
                        &p(&alice_key),
                        logs_url,
                    ],
                )
                .unwrap_or_default()
        };
        let refused = as_alice();
        assert!(
            refused.ends_with(" 403")
                && refused.contains("Forbidden (user=alice, verb=get, resource=nodes, subresource=proxy)"),
            "{refused}"
        );
        kubectl(&c, &["create", "clusterrole", "node-proxy", "--verb=get", "--resource=nodes/proxy"]);
        kubectl(&c, &["create", "clusterrolebinding", "alice-proxy", "--clusterrole=node-proxy", "--user=alice"]);
        let allowed = wait_for(Duration::from_secs(10), "alice's grant", || {
            let out = as_alice();
            out.ends_with(" 200").then_some(out)
        });
        allowed.unwrap_or_else(|e| fail(&c, &format!("{e}: {}", as_alice())));
    } else {
        eprintln!(
            "the server keeps no admin.crt/admin.key files; the client-certificate success path is covered by kubectl logs/exec"
        );
    }

    step("each agent has its own certificate, issued through a CSR, and writes only as itself");
    let csrs = kubectl(&c, &["get", "csr", "-o", "json"]);
    let csrs: serde_json::Value = serde_json::from_str(&csrs).expect("json");
    for node in ["n1", "n2"] {
        let found = csrs["items"].as_array().into_iter().flatten().any(|i| {
            i["metadata"]["name"].as_str().is_some_and(|n| n.starts_with(&format!("node-csr-{node}-")))
                && i["spec"]["username"] == "system:bootstrap:skiff"
                && i["status"]["certificate"].as_str().is_some_and(|s| !s.is_empty())
        });
        assert!(found, "{node} joined with the token and got its certificate: {csrs}");
    }
    let n1_pki = c.nodes[0].data_dir.join("pki");
    let n1_cert = std::fs::read_to_string(n1_pki.join("node-client.crt")).expect("n1's certificate");
    assert_eq!(
        skiff_client::identity::subject_of_pem(&n1_cert),
        Some(("system:node:n1".to_string(), vec!["system:nodes".to_string()]))
    );
    let node_kubeconfig = c.dir.join("n1.kubeconfig");
    let kc = format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"{}\", certificate-authority: {}}}}}]\nusers: [{{name: n1, user: {{client-certificate: {}, client-key: {}}}}}]\ncontexts: [{{name: n1, context: {{cluster: c, user: n1}}}}]\ncurrent-context: n1\n",
        c.server_url,
        pki.join("ca.crt").display(),
        n1_pki.join("node-client.crt").display(),
        n1_pki.join("node-client.key").display()
    );
    std::fs::write(&node_kubeconfig, kc).expect("kubeconfig");
    let as_n1 = |args: &[&str]| {
        let mut cmd = c.server_ns.command("kubectl");
        cmd.arg("--kubeconfig").arg(&node_kubeconfig).args(args);
        let out = cmd.output().expect("kubectl runs");
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, err) = as_n1(&["label", "node", "n2", "stolen=yes"]);
    assert!(!ok && err.contains("is not allowed to modify node \"n2\""), "n1 cannot change n2: {err}");
    let (ok, err) = as_n1(&["delete", "pod", "b", "--wait=false"]);
    assert!(
        !ok && err.contains("can only modify pods with spec.nodeName set to itself"),
        "n1 cannot delete n2's pod: {err}"
    );
    let (ok, err) = as_n1(&["label", "node", "n1", "checked=yes"]);
    assert!(ok, "n1 changes itself: {err}");

    step("an agent's watches share its HTTP/2 connection");
    let server_port = c.server_url.rsplit(':').next().unwrap_or("6443").to_string();
    let conns = c.nodes[0]
        .ns
        .exec("ss", &["-tnH", "state", "established", &format!("( dport = :{server_port} )")])
        .unwrap_or_default();
    let n = conns.lines().filter(|l| !l.trim().is_empty()).count();
    eprintln!("n1's connections to the API server: {n}\n{conns}");
    assert!((1..=4).contains(&n), "one connection (plus the odd one being replaced), not one per watch: {n}\n{conns}");

    step("pods are cleaned up on both nodes");
    kubectl(&c, &["delete", "pods", "--all", "--wait=false"]);
    wait_gone(&c, "a", Duration::from_secs(30));
    wait_gone(&c, "b", Duration::from_secs(30));
    wait_for(Duration::from_secs(10), "no leftovers", || c.leftovers().is_empty().then_some(()))
        .unwrap_or_else(|_| fail(&c, &format!("left: {:?}", c.leftovers())));
}

#[test]
fn static_pods_run_from_the_manifest_directory_and_are_mirrored() {
    if !skiff_testkit::require_privileges("the static pod test") {
        return;
    }
    let manifests = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        manifests.path().join("web.yaml"),
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: static-web, namespace: kube-system}}\nspec:\n  containers:\n  - name: web\n    image: {ECHO}\n"),
    )
    .expect("manifest");
    let mut cfg = skiff_testkit::cluster::ClusterConfig::new(env!("CARGO_BIN_EXE_skiff").into(), 1);
    cfg.agent_args = vec!["--manifests".into(), manifests.path().display().to_string()];
    let c = Cluster::start(cfg).expect("cluster");
    let mirror = wait_for(Duration::from_secs(60), "the mirror pod to be Running", || {
        let (ok, out, _) =
            c.kubectl_output(&["get", "pod", "-n", "kube-system", "static-web-n1", "-o", "json"], None).ok()?;
        let v: serde_json::Value = serde_json::from_str(&out).ok().filter(|_| ok)?;
        (v.pointer("/status/phase").and_then(|p| p.as_str()) == Some("Running")).then_some(v)
    })
    .unwrap_or_else(|e| fail(&c, &e.to_string()));
    assert!(mirror.pointer("/metadata/annotations/kubernetes.io~1config.mirror").is_some(), "{mirror}");
    assert_eq!(mirror.pointer("/metadata/ownerReferences/0/kind").and_then(|k| k.as_str()), Some("Node"));
    // Deleting the mirror does not stop the static pod; the agent mirrors it again.
    kubectl(&c, &["delete", "pod", "-n", "kube-system", "static-web-n1", "--wait=false"]);
    wait_for(Duration::from_secs(60), "the mirror to come back", || {
        let (ok, _, _) = c.kubectl_output(&["get", "pod", "-n", "kube-system", "static-web-n1"], None).ok()?;
        ok.then_some(())
    })
    .unwrap_or_else(|e| fail(&c, &e.to_string()));
    // Removing the manifest stops it.
    std::fs::remove_file(manifests.path().join("web.yaml")).expect("remove");
    wait_for(Duration::from_secs(60), "the static pod to stop", || {
        let root = c.nodes[0].data_dir.join("runc");
        let out = std::process::Command::new("runc").arg("--root").arg(&root).args(["list", "-q"]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().is_empty().then_some(())
    })
    .unwrap_or_else(|e| fail(&c, &e.to_string()));
}
