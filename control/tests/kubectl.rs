//! The real kubectl against Skiff's API server (in-process, temporary SQLite datastore).

mod common;

use std::time::Duration;

use common::Cluster;
use serde_json::Value;

const MANIFEST: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: skiff/echo:v1
        ports: [{containerPort: 8080, name: http}, {containerPort: 9090, name: metrics}]
        env: [{name: MODE, value: fast}]
      - name: sidecar
        image: busybox
        args: [sleep, infinity]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web}
spec:
  rules:
  - host: web.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {LOG_LEVEL: debug, OTHER: "x"}
"#;

#[test]
fn client_side_apply_creates_then_changes_and_removes_fields() {
    let c = Cluster::start_with(None);
    let out = c.kubectl_in(&["apply", "-f", "-"], MANIFEST);
    for line in [
        "deployment.apps/web created",
        "service/web created",
        "ingress.networking.k8s.io/web created",
        "configmap/settings created",
    ] {
        assert!(out.contains(line), "{out}");
    }
    let again = c.kubectl_in(&["apply", "-f", "-"], MANIFEST);
    assert!(again.contains("deployment.apps/web unchanged"), "{again}");
    let changed = MANIFEST
        .replace("replicas: 3", "replicas: 2")
        .replace("image: skiff/echo:v1", "image: skiff/echo:v2")
        .replace(", {containerPort: 9090, name: metrics}", "")
        .replace("        env: [{name: MODE, value: fast}]\n", "")
        .replace("      - name: sidecar\n        image: busybox\n        args: [sleep, infinity]\n", "")
        .replace("OTHER: \"x\"", "NEW: \"y\"");
    let out = c.kubectl_in(&["apply", "-f", "-"], &changed);
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    let d = c.get_json(&["deploy", "web"]);
    assert_eq!(d["spec"]["replicas"], 2);
    let containers = d["spec"]["template"]["spec"]["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "the sidecar was removed");
    assert_eq!(containers[0]["image"], "skiff/echo:v2");
    assert_eq!(containers[0]["ports"].as_array().expect("ports").len(), 1, "the metrics port was removed");
    assert!(containers[0].get("env").is_none(), "env was removed");
    assert_eq!(d["metadata"]["generation"], 2);
    let cm = c.get_json(&["cm", "settings"]);
    assert_eq!(cm["data"], serde_json::json!({"LOG_LEVEL": "debug", "NEW": "y"}));
}

#[test]
fn a_list_exported_with_get_applies_again() {
    let c = Cluster::start_with(None);
    c.kubectl_in(&["create", "configmap", "one", "--from-literal=k=v"], "");
    c.kubectl_in(&["create", "configmap", "two", "--from-literal=k=w"], "");
    // `kubectl get -o yaml` of several objects writes a `kind: List`, which kubectl validates against /openapi/v2.
    let exported = c.kubectl_in(&["get", "configmap", "one", "two", "-o", "yaml"], "");
    assert!(exported.contains("kind: List"), "{exported}");
    c.kubectl_in(&["delete", "configmap", "one", "two"], "");
    let out = c.kubectl_in(&["apply", "-f", "-"], &exported);
    assert!(out.contains("configmap/one created") && out.contains("configmap/two created"), "{out}");
    assert_eq!(c.get_json(&["cm", "two"])["data"]["k"], "w");
}

#[test]
fn server_side_apply_owns_fields_and_reports_conflicts() {
    let c = Cluster::start_with(None);
    let out = c.kubectl_in(&["apply", "--server-side", "-f", "-"], MANIFEST);
    assert!(out.contains("deployment.apps/web serverside-applied"), "{out}");
    let d = c.get_json(&["deploy", "web", "--show-managed-fields"]);
    let managers: Vec<&str> = d["metadata"]["managedFields"]
        .as_array()
        .expect("managed fields")
        .iter()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert_eq!(managers, vec!["kubectl"]);
    // dropping a field from the applied configuration removes it
    let smaller = MANIFEST.replace("        env: [{name: MODE, value: fast}]\n", "");
    c.kubectl_in(&["apply", "--server-side", "-f", "-"], &smaller);
    let d = c.get_json(&["deploy", "web"]);
    assert!(d["spec"]["template"]["spec"]["containers"][0].get("env").is_none());
    // another manager changing replicas conflicts, and --force-conflicts takes it over
    let other = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {replicas: 7}\n";
    let err = c.kubectl_fails(&["apply", "--server-side", "--field-manager", "ops", "-f", "-"], Some(other));
    assert!(err.contains("conflict") && err.contains(".spec.replicas"), "{err}");
    c.kubectl_in(&["apply", "--server-side", "--field-manager", "ops", "--force-conflicts", "-f", "-"], other);
    assert_eq!(c.get_json(&["deploy", "web"])["spec"]["replicas"], 7);
    // switching a client-side-applied object to server-side apply works
    c.kubectl_in(&["apply", "-f", "-"], "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: csa}\ndata: {a: '1'}\n");
    let out = c.kubectl_in(
        &["apply", "--server-side", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: csa}\ndata: {a: '2'}\n",
    );
    assert!(out.contains("serverside-applied"), "{out}");
    assert_eq!(c.get_json(&["cm", "csa"])["data"]["a"], "2");
}

#[test]
fn get_prints_tables_wide_columns_yaml_json_and_names() {
    let c = Cluster::start_with(None);
    c.kubectl_in(&["apply", "-f", "-"], MANIFEST);
    let t = c.kubectl(&["get", "deploy"]);
    assert!(t.starts_with("NAME   READY   UP-TO-DATE   AVAILABLE   AGE"), "{t}");
    assert!(t.contains("web    0/3"), "{t}");
    let wide = c.kubectl(&["get", "deploy", "-o", "wide"]);
    assert!(
        wide.contains("CONTAINERS")
            && wide.contains("web,sidecar")
            && wide.contains("skiff/echo:v1,busybox")
            && wide.contains("app=web"),
        "{wide}"
    );
    let svc = c.kubectl(&["get", "svc", "web"]);
    assert!(svc.contains("ClusterIP") && svc.contains("80/TCP"), "{svc}");
    let all = c.kubectl(&["get", "all"]);
    assert!(all.contains("service/web") && all.contains("deployment.apps/web"), "{all}");
    let labels = c.kubectl(&["get", "deploy", "-A", "--show-labels"]);
    assert!(labels.contains("default") && labels.contains("app=web"), "{labels}");
    let yaml = c.kubectl(&["get", "cm", "settings", "-o", "yaml"]);
    assert!(yaml.contains("LOG_LEVEL: debug") && yaml.contains("resourceVersion:"), "{yaml}");
    let names = c.kubectl(&["get", "cm", "-o", "name"]);
    assert!(names.contains("configmap/settings"), "{names}");
    let list = c.get_json(&["cm"]);
    assert_eq!(list["kind"], "List");
    let ns = c.kubectl(&["get", "ns"]);
    for n in ["default", "kube-system"] {
        assert!(ns.contains(n), "{ns}");
    }
    let ing = c.kubectl(&["get", "ing"]);
    assert!(ing.contains("web.example.com"), "{ing}");
    let version = c.kubectl(&["version"]);
    assert!(version.contains("Server Version: v1.32"), "{version}");
    let resources = c.kubectl(&["api-resources"]);
    for r in [
        "deployments",
        "deploy",
        "ingresses",
        "customresourcedefinitions",
        "horizontalpodautoscalers",
        "endpointslices",
        "leases",
    ] {
        assert!(resources.contains(r), "{r} missing from api-resources");
    }
}

#[test]
fn get_watch_prints_changes_as_they_happen() {
    let c = Cluster::start_with(None);
    c.kubectl_in(&["apply", "-f", "-"], "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: first}\n");
    let mut child = std::process::Command::new("kubectl")
        .env("KUBECONFIG", &c.server.kubeconfig)
        .args(["get", "cm", "-w", "--request-timeout=0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("kubectl -w starts");
    std::thread::sleep(Duration::from_millis(1500));
    c.kubectl_in(&["apply", "-f", "-"], "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: second}\n");
    c.kubectl(&["label", "cm", "second", "seen=yes"]);
    std::thread::sleep(Duration::from_millis(1500));
    let _ = child.kill();
    let out = child.wait_with_output().expect("kubectl exits");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("first"), "{text}");
    assert!(text.matches("second").count() >= 2, "the creation and the label change arrive as events: {text}");
}

#[test]
fn describe_label_annotate_scale_and_wait() {
    let c = Cluster::start_with(None);
    c.kubectl_in(&["apply", "-f", "-"], MANIFEST);
    let out = c.kubectl(&["describe", "deploy", "web"]);
    assert!(
        out.contains("Name:                   web") && out.contains("Replicas:") && out.contains("skiff/echo:v1"),
        "{out}"
    );
    c.kubectl(&["label", "deploy", "web", "tier=frontend"]);
    c.kubectl(&["annotate", "deploy", "web", "owner=team-a"]);
    let d = c.get_json(&["deploy", "web"]);
    assert_eq!(d["metadata"]["labels"]["tier"], "frontend");
    assert_eq!(d["metadata"]["annotations"]["owner"], "team-a");
    assert_eq!(
        c.kubectl(&["get", "deploy", "-l", "tier in (frontend,edge)", "-o", "name"]).trim(),
        "deployment.apps/web"
    );
    assert_eq!(c.kubectl(&["get", "deploy", "-l", "tier!=frontend", "-o", "name"]).trim(), "");
    c.kubectl(&["label", "deploy", "web", "tier-"]);
    assert!(c.get_json(&["deploy", "web"])["metadata"]["labels"].get("tier").is_none());
    let out = c.kubectl(&["scale", "deploy", "web", "--replicas=5"]);
    assert!(out.contains("scaled"), "{out}");
    assert_eq!(c.get_json(&["deploy", "web"])["spec"]["replicas"], 5);
    c.kubectl(&["patch", "deploy", "web", "--subresource=status", "--type=merge", "-p", r#"{"status":{"conditions":[{"type":"Available","status":"True","reason":"MinimumReplicasAvailable","message":"ok"}]}}"#]);
    let out = c.kubectl(&["wait", "--for=condition=Available", "deploy/web", "--timeout=10s"]);
    assert!(out.contains("condition met"), "{out}");
}

#[test]
fn create_generators_send_protobuf_and_secrets_are_encrypted_at_rest() {
    let c = Cluster::start_with(None);
    assert!(c.kubectl(&["create", "configmap", "app-cm", "--from-literal=a=b"]).contains("configmap/app-cm created"));
    let err = c.kubectl_fails(&["create", "configmap", "app-cm", "--from-literal=a=b"], None);
    assert!(err.contains("already exists"), "{err}");
    assert!(
        c.kubectl(&["create", "secret", "generic", "db", "--from-literal=password=correct-horse-battery-staple"])
            .contains("secret/db created")
    );
    let pki = c.server.pki.dir.clone();
    let crt = pki.join("apiserver.crt");
    let key = pki.join("apiserver.key");
    let out = c.kubectl(&[
        "create",
        "secret",
        "tls",
        "tls",
        "--cert",
        &crt.to_string_lossy(),
        "--key",
        &key.to_string_lossy(),
    ]);
    assert!(out.contains("secret/tls created"), "{out}");
    assert!(c.kubectl(&["create", "namespace", "team-b"]).contains("namespace/team-b created"));
    let s = c.get_json(&["secret", "tls"]);
    assert_eq!(s["type"], "kubernetes.io/tls");
    let pw = c.kubectl(&["get", "secret", "db", "-o", "jsonpath={.data.password}"]);
    assert_eq!(pw, "Y29ycmVjdC1ob3JzZS1iYXR0ZXJ5LXN0YXBsZQ==");
    let mut raw = Vec::new();
    for f in ["state.db", "state.db-wal"] {
        if let Ok(b) = std::fs::read(c.dir.path().join("server").join(f)) {
            raw.extend(b);
        }
    }
    let hay = String::from_utf8_lossy(&raw);
    assert!(
        !hay.contains("correct-horse-battery-staple") && !hay.contains("Y29ycmVjdC1ob3JzZS1iYXR0ZXJ5LXN0YXBsZQ"),
        "a Secret value is in the datastore in plain text"
    );
    assert!(hay.contains("app-cm"), "the check reads the datastore");
}

#[test]
fn custom_resource_definitions_add_types_on_demand() {
    let c = Cluster::start_with(None);
    let crd = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: crontabs.stable.example.com}
spec:
  group: stable.example.com
  scope: Namespaced
  names: {plural: crontabs, singular: crontab, kind: CronTab, shortNames: [ct]}
  versions:
  - name: v1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
    additionalPrinterColumns:
    - {name: Spec, type: string, jsonPath: .spec.cronSpec}
"#;
    c.kubectl_in(&["apply", "-f", "-"], crd);
    c.kubectl(&["wait", "--for=condition=Established", "crd/crontabs.stable.example.com", "--timeout=10s"]);
    let obj = "apiVersion: stable.example.com/v1\nkind: CronTab\nmetadata: {name: my-cron}\nspec: {cronSpec: '*/5 * * * *', image: x}\n";
    assert!(c.kubectl_in(&["apply", "-f", "-"], obj).contains("crontab.stable.example.com/my-cron created"));
    let t = c.kubectl(&["get", "ct"]);
    assert!(t.contains("SPEC") && t.contains("*/5 * * * *"), "{t}");
    assert!(c.kubectl(&["api-resources"]).contains("crontabs"));
    c.kubectl(&["patch", "ct", "my-cron", "--type=merge", "-p", r#"{"spec":{"image":"y"}}"#]);
    assert_eq!(c.get_json(&["ct", "my-cron"])["spec"]["image"], "y");
    c.kubectl(&["delete", "crd", "crontabs.stable.example.com"]);
    let err = c.kubectl_fails(&["get", "ct"], None);
    assert!(err.contains("doesn't have a resource type") || err.contains("could not find"), "{err}");
}

#[test]
fn delete_cascades_in_the_background_orphans_or_waits_for_dependents() {
    let c = Cluster::start_with(None);
    let owner = |name: &str| format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\n");
    let dependent = |name: &str, owner: &Value| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  ownerReferences:\n  - {{apiVersion: v1, kind: ConfigMap, name: {}, uid: {}, blockOwnerDeletion: true}}\n",
            owner["metadata"]["name"].as_str().expect("name"),
            owner["metadata"]["uid"].as_str().expect("uid")
        )
    };
    for policy in ["background", "orphan", "foreground"] {
        let o = format!("owner-{policy}");
        c.kubectl_in(&["apply", "-f", "-"], &owner(&o));
        let ov = c.get_json(&["cm", &o]);
        for i in 0..2 {
            c.kubectl_in(&["apply", "-f", "-"], &dependent(&format!("dep-{policy}-{i}"), &ov));
        }
        let out = c.kubectl(&["delete", "cm", &o, &format!("--cascade={policy}"), "--timeout=20s"]);
        assert!(out.contains("deleted"), "{out}");
        let deps =
            || c.kubectl(&["get", "cm", "-o", "name"]).lines().filter(|l| l.contains(&format!("dep-{policy}"))).count();
        match policy {
            "orphan" => {
                assert_eq!(deps(), 2, "orphaned dependents stay");
                let d = c.get_json(&["cm", "dep-orphan-0"]);
                assert!(
                    d["metadata"].get("ownerReferences").is_none_or(|r| r.as_array().is_some_and(Vec::is_empty)),
                    "{d}"
                );
            }
            _ => c.eventually(&format!("{policy} dependents deleted"), Duration::from_secs(15), || deps() == 0),
        }
    }
}

#[test]
fn deleting_a_namespace_deletes_its_contents() {
    let c = Cluster::start_with(None);
    c.kubectl(&["create", "namespace", "scratch"]);
    c.kubectl_in(&["apply", "-n", "scratch", "-f", "-"], MANIFEST);
    c.kubectl(&["delete", "namespace", "scratch", "--timeout=30s"]);
    let out = c.kubectl_output(&["get", "ns", "scratch"], None);
    assert!(!out.status.success());
    let err = c.kubectl_fails(&["delete", "namespace", "default"], None);
    assert!(err.contains("may not be deleted"), "{err}");
}

#[test]
fn requests_without_credentials_get_401() {
    let c = Cluster::start_with(None);
    let url = format!("{}/api/v1/namespaces/default/configmaps", c.server.url);
    let out = std::process::Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", &url])
        .output()
        .expect("curl runs");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
    let ca = c.server.pki.dir.join("ca.crt");
    let out = std::process::Command::new("curl")
        .args(["-s", "--cacert", &ca.to_string_lossy(), "-H", "Authorization: Bearer not-a-token", &url])
        .output()
        .expect("curl runs");
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"code\":401"));
    // the review resources answer who the caller is and what it may do: nobody anonymous gets an answer
    for (path, kind) in [
        ("/apis/authentication.k8s.io/v1/selfsubjectreviews", "SelfSubjectReview"),
        ("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", "SelfSubjectAccessReview"),
    ] {
        let body =
            format!(r#"{{"kind":"{kind}","spec":{{"resourceAttributes":{{"verb":"get","resource":"secrets"}}}}}}"#);
        let out = std::process::Command::new("curl")
            .args([
                "-sk",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
            ])
            .args(["-d", &body, &format!("{}{path}", c.server.url)])
            .output()
            .expect("curl runs");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "401", "{path}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn bodies_that_are_not_objects_get_400_on_every_write() {
    let c = Cluster::start_with(None);
    c.kubectl(&["create", "serviceaccount", "sa"]);
    c.kubectl(&["create", "configmap", "cm", "--from-literal=a=b"]);
    c.kubectl_in(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: busybox}]}\n",
    );
    let pki = &c.server.pki.dir;
    let base = format!("{}/api/v1/namespaces/default", c.server.url);
    let cases: &[(&str, String, &str, &str)] = &[
        ("POST", format!("{base}/serviceaccounts/sa/token"), "application/json", "[]"),
        ("POST", format!("{base}/pods/p/eviction"), "application/json", "[1]"),
        ("POST", format!("{base}/pods/p/binding"), "application/json", "\"x\""),
        ("POST", format!("{base}/configmaps"), "application/json", "[]"),
        ("PUT", format!("{base}/configmaps/cm"), "application/json", "null"),
        ("POST", format!("{base}/configmaps"), "application/yaml", "- a\n- b\n"),
        ("PATCH", format!("{base}/configmaps/cm"), "application/merge-patch+json", "[]"),
        ("PATCH", format!("{base}/configmaps/cm"), "application/strategic-merge-patch+json", "[]"),
        ("PATCH", format!("{base}/configmaps/cm?fieldManager=t"), "application/apply-patch+yaml", "[]"),
        ("POST", "https://x/apis/authorization.k8s.io/v1/selfsubjectaccessreviews".into(), "application/json", "[]"),
    ];
    for (method, url, ct, body) in cases {
        let url = url.replace("https://x", &c.server.url);
        let out = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method, "--data-binary", body])
            .args(["-H", &format!("Content-Type: {ct}")])
            .arg("--cacert")
            .arg(pki.join("ca.crt"))
            .arg("--cert")
            .arg(pki.join("admin.crt"))
            .arg("--key")
            .arg(pki.join("admin.key"))
            .arg(&url)
            .output()
            .expect("curl runs");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "400", "{method} {url} ({ct}) with {body}");
    }
    // a JSON patch that replaces the whole object with a non-object is refused too
    let err = c.kubectl_fails(
        &["patch", "configmap", "cm", "--type=json", "-p", r#"[{"op":"replace","path":"","value":[]}]"#],
        None,
    );
    assert!(err.contains("made the object an array"), "{err}");
    // and the server is still there
    c.kubectl(&["get", "configmap", "cm"]);
}

#[test]
fn bad_requests_get_the_right_status() {
    let c = Cluster::start_with(None);
    c.kubectl_in(&["apply", "-f", "-"], MANIFEST);
    let invalid = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: bad}\nspec:\n  replicas: -1\n  selector: {matchLabels: {app: a}}\n  template:\n    metadata: {labels: {app: b}}\n    spec: {containers: [{name: c}]}\n";
    let err = c.kubectl_fails(&["apply", "-f", "-"], Some(invalid));
    assert!(
        err.contains("is invalid")
            && err.contains("spec.replicas")
            && err.contains("spec.template.spec.containers[0].image"),
        "{err}"
    );
    let unknown_field = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: u}\ndatta: {a: b}\n";
    let err = c.kubectl_fails(&["apply", "-f", "-"], Some(unknown_field));
    assert!(err.contains("unknown field") && err.contains("datta"), "{err}");
    let err = c.kubectl_fails(&["get", "deploy", "nope"], None);
    assert!(err.contains("NotFound") && err.contains("deployments.apps \"nope\" not found"), "{err}");
    let stale = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, resourceVersion: \"1\"}\ndata: {a: b}\n";
    let err = c.kubectl_fails(&["replace", "-f", "-"], Some(stale));
    assert!(err.contains("Conflict") && err.contains("the object has been modified"), "{err}");
    let err =
        c.kubectl_fails(&["apply", "-f", "-"], Some("apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n"));
    assert!(!err.is_empty());
    // the raw API: malformed JSON 400, unknown media type 415, oversized 413; nothing half-written
    let pki = &c.server.pki.dir;
    let curl = |args: &[&str]| -> String {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "--cacert",
                &pki.join("ca.crt").to_string_lossy(),
                "--cert",
                &pki.join("admin.crt").to_string_lossy(),
                "--key",
                &pki.join("admin.key").to_string_lossy(),
            ])
            .args(args)
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let url = format!("{}/api/v1/namespaces/default/configmaps", c.server.url);
    assert!(
        curl(&["-X", "POST", "-H", "Content-Type: application/json", "-d", "{not json", &url]).contains("\"code\":400")
    );
    assert!(curl(&["-X", "POST", "-H", "Content-Type: text/plain", "-d", "x", &url]).contains("\"code\":415"));
    let big = c.dir.path().join("big.json");
    std::fs::write(&big, format!("{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"big\"}},\"data\":{{\"a\":\"{}\"}}}}", "x".repeat(4 << 20))).expect("write");
    let out = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &format!("@{}", big.display()),
        &url,
    ]);
    assert!(out.contains("\"code\":413"), "{}", &out[..out.len().min(300)]);
    assert!(!c.kubectl(&["get", "cm", "-o", "name"]).contains("configmap/big"));
}

#[test]
fn watches_resume_from_a_resource_version_and_expire_after_compaction() {
    let c = Cluster::start_with(None);
    c.kubectl_in(&["apply", "-f", "-"], "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n");
    let rv = c.get_json(&["cm", "a"])["metadata"]["resourceVersion"].as_str().expect("rv").to_string();
    c.kubectl_in(&["apply", "-f", "-"], "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n");
    c.kubectl(&["delete", "cm", "a"]);
    let pki = &c.server.pki.dir;
    let watch = |rv: &str| -> String {
        let url = format!(
            "{}/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}&timeoutSeconds=1",
            c.server.url
        );
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "--max-time",
                "5",
                "--cacert",
                &pki.join("ca.crt").to_string_lossy(),
                "--cert",
                &pki.join("admin.crt").to_string_lossy(),
                "--key",
                &pki.join("admin.key").to_string_lossy(),
                &url,
            ])
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let events: Vec<Value> =
        watch(&rv).lines().map(|l| serde_json::from_str(l).expect("one JSON event per line")).collect();
    let seen: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default().to_string(),
                e["object"]["metadata"]["name"].as_str().unwrap_or_default().to_string(),
            )
        })
        .filter(|(_, n)| n == "a" || n == "b")
        .collect();
    assert_eq!(
        seen,
        vec![("ADDED".into(), "b".into()), ("DELETED".into(), "a".into())],
        "only events after the resourceVersion"
    );
    let now = c.runtime.block_on(c.server.api.store.revision()).expect("revision");
    c.runtime.block_on(c.server.api.store.compact(now)).expect("compact");
    // the watch cache still holds what followed `rv` (its window, as kube-apiserver's cacher keeps its own):
    // resuming there still works after the store compacted
    assert!(watch(&rv).contains("\"DELETED\""), "served from the watch cache's history");
    // a revision older than both the cache's window and the store's history: 410 Gone, the client relists
    let older = (rv.parse::<i64>().expect("a number") - 1).to_string();
    let expired = watch(&older);
    assert!(
        expired.contains("\"type\":\"ERROR\"") && expired.contains("\"code\":410") && expired.contains("Expired"),
        "{expired}"
    );
}

#[test]
fn lists_page_and_come_as_objects_metadata_or_tables() {
    let c = Cluster::start_with(None);
    for n in ["l1", "l2", "l3"] {
        let cm = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {n}, labels: {{set: lists}}}}\ndata: {{k: \"é\\\"{n}\"}}\n"
        );
        c.kubectl_in(&["apply", "-f", "-"], &cm);
    }
    let pki = &c.server.pki.dir;
    let get = |query: &str, accept: &str| -> Value {
        let url = format!("{}/api/v1/namespaces/default/configmaps?labelSelector=set%3Dlists{query}", c.server.url);
        let out = std::process::Command::new("curl")
            .args(["-s", "--max-time", "5", "-H", &format!("Accept: {accept}")])
            .args(["--cacert", &pki.join("ca.crt").to_string_lossy()])
            .args(["--cert", &pki.join("admin.crt").to_string_lossy()])
            .args(["--key", &pki.join("admin.key").to_string_lossy(), &url])
            .output()
            .expect("curl runs");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    };
    let names = |list: &Value| -> Vec<String> {
        list["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| i["metadata"]["name"].as_str().expect("name").into())
            .collect()
    };
    // whole objects, two pages
    let first = get("&limit=2", "application/json");
    assert_eq!((first["kind"].as_str(), first["apiVersion"].as_str()), (Some("ConfigMapList"), Some("v1")));
    assert_eq!(names(&first), ["l1", "l2"]);
    assert_eq!(first["items"][1]["data"]["k"], "é\"l2", "the object whole, its strings intact");
    let token = first["metadata"]["continue"].as_str().expect("a continue token");
    let rest = get(&format!("&limit=2&continue={token}"), "application/json");
    assert_eq!(names(&rest), ["l3"]);
    assert!(rest["metadata"].get("continue").is_none(), "the last page");
    assert_eq!(rest["metadata"]["resourceVersion"], first["metadata"]["resourceVersion"], "one snapshot");
    // metadata only, as the garbage collector and `kubectl delete --all` ask
    let md = get("", "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1");
    assert_eq!(md["kind"], "PartialObjectMetadataList");
    assert_eq!(names(&md), ["l1", "l2", "l3"]);
    assert!(
        md["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|i| i["kind"] == "PartialObjectMetadata" && i.get("data").is_none())
    );
    assert_eq!(md["items"][0]["metadata"]["labels"]["set"], "lists");
    // a Table, as kubectl get asks
    let table = get("", "application/json;as=Table;g=meta.k8s.io;v=v1");
    assert_eq!(table["kind"], "Table");
    assert_eq!(table["rows"].as_array().map(Vec::len), Some(3));
    assert_eq!(table["columnDefinitions"][0]["name"], "Name");
    assert_eq!(table["rows"][2]["cells"][0], "l3");
    assert_eq!(table["rows"][2]["object"]["kind"], "PartialObjectMetadata");
    assert_eq!(table["rows"][2]["object"]["metadata"]["name"], "l3");
}

#[test]
fn a_network_policy_is_stored_without_a_warning_and_an_invalid_one_is_refused() {
    let c = Cluster::start_with(None);
    let policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-all}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n";
    let out = c.kubectl_output(&["apply", "-f", "-"], Some(policy));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let warned = String::from_utf8_lossy(&out.stderr);
    assert!(!warned.contains("Warning"), "{warned}");
    c.kubectl(&["get", "networkpolicy", "deny-all"]);
    // A policy implementations would read differently is refused, with the field named.
    let bad = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad}\nspec:\n  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]\n    ports: [{endPort: 90}]\n";
    let out = c.kubectl_output(&["apply", "-f", "-"], Some(bad));
    assert!(!out.status.success(), "an invalid policy was stored");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spec.ingress[0].from[0].ipBlock.except[0]") && err.contains("must be a strict subset of `cidr`"),
        "{err}"
    );
    assert!(err.contains("spec.ingress[0].ports[0].endPort"), "{err}");
}
