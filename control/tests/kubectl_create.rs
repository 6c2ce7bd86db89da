//! `kubectl create <generator>`, `run`, `expose`, `autoscale`, `create job --from` (kubectl sends these objects as protobuf) and
//! `auth whoami`/`auth can-i` and `explain` (issue 11). Each command runs with kubectl 1.31, 1.32 and 1.33, and the test checks the object the server stored,
//! not just the exit code.

#[macro_use]
mod common;

use common::Cluster;
use serde_json::{Value, json};

fn generators_create_what_they_say(kubectl: &'static str) {
    let mut c = Cluster::start_with(None);
    c.kubectl_bin = kubectl;
    let ok = |args: &[&str], want: &str| {
        let out = c.kubectl(args);
        assert!(out.contains(want), "{kubectl} {args:?}: {out}");
    };

    ok(&["create", "deployment", "my-app", "--image=nginx:1.27", "--replicas=2", "--port=80"], "created");
    let d = c.get_json(&["deploy", "my-app"]);
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(d["spec"]["selector"], json!({"matchLabels": {"app": "my-app"}}));
    let container = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "nginx:1.27");
    assert_eq!(container["ports"][0]["containerPort"], 80);
    assert_eq!(container["imagePullPolicy"], "IfNotPresent", "defaulted as for a JSON body");
    assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
    assert!(d["status"].is_object(), "status is {{}} as the real server answers: {d}");

    ok(&["create", "deployment", "idle", "--image=busybox", "--replicas=0"], "created");
    assert_eq!(c.get_json(&["deploy", "idle"])["spec"]["replicas"], 0, "an explicit 0 is not the default 1");

    ok(&["create", "service", "clusterip", "web", "--tcp=80:8080"], "service/web created");
    let s = c.get_json(&["svc", "web"]);
    assert_eq!(s["spec"]["ports"][0]["port"], 80);
    assert_eq!(s["spec"]["ports"][0]["targetPort"], 8080);
    assert!(s["spec"]["clusterIP"].as_str().is_some_and(|ip| ip.starts_with("10.")), "{s}");

    ok(&["create", "service", "nodeport", "np", "--tcp=80:8080", "--node-port=30123"], "service/np created");
    let s = c.get_json(&["svc", "np"]);
    assert_eq!(s["spec"]["type"], "NodePort");
    assert_eq!(s["spec"]["ports"][0]["nodePort"], 30123);

    ok(&["create", "service", "nodeport", "np2", "--tcp=81:8080"], "service/np2 created");
    let port = c.get_json(&["svc", "np2"])["spec"]["ports"][0]["nodePort"].as_i64().unwrap_or_default();
    assert!((30000..=32767).contains(&port), "an unset node port is allocated, got {port}");

    ok(&["expose", "deployment", "my-app", "--port=8080", "--target-port=80", "--name=my-app"], "exposed");
    let s = c.get_json(&["svc", "my-app"]);
    assert_eq!(s["spec"]["selector"], json!({"app": "my-app"}));
    assert_eq!(s["spec"]["ports"][0]["targetPort"], 80);

    // autoscale creates an autoscaling/v1 HPA (kubectl 1.32); it is stored as v2 and reads back in both versions
    ok(&["autoscale", "deployment", "my-app", "--min=2", "--max=5", "--cpu-percent=60"], "autoscaled");
    let v2 = c.get_json(&["hpa", "my-app"]);
    assert_eq!(v2["apiVersion"], "autoscaling/v2");
    assert_eq!(v2["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 60);
    assert_eq!(v2["spec"]["minReplicas"], 2);
    let raw = c.kubectl(&["get", "--raw", "/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers/my-app"]);
    let v1: Value = serde_json::from_str(&raw).expect("JSON");
    assert_eq!(v1["apiVersion"], "autoscaling/v1");
    assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 60);
    assert_eq!(v1["spec"]["scaleTargetRef"]["name"], "my-app");
    let hpas = c.kubectl(&["get", "hpa", "-o", "name"]);
    assert_eq!(hpas.lines().count(), 1, "one object, two versions: {hpas}");

    ok(&["create", "job", "once", "--image=busybox", "--", "echo", "hi"], "job.batch/once created");
    let j = c.get_json(&["job", "once"]);
    assert_eq!(j["spec"]["template"]["spec"]["containers"][0]["command"], json!(["echo", "hi"]));
    assert_eq!(j["spec"]["template"]["spec"]["restartPolicy"], "Never");

    ok(&["create", "cronjob", "tick", "--image=busybox", "--schedule=*/5 * * * *", "--", "date"], "created");
    let cj = c.get_json(&["cronjob", "tick"]);
    assert_eq!(cj["spec"]["schedule"], "*/5 * * * *");
    ok(&["create", "job", "tick-now", "--from=cronjob/tick"], "job.batch/tick-now created");
    let j = c.get_json(&["job", "tick-now"]);
    assert_eq!(j["metadata"]["ownerReferences"][0]["kind"], "CronJob");
    assert_eq!(j["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"], "manual");
    assert_eq!(j["spec"]["template"]["spec"]["containers"][0]["command"], json!(["date"]));

    ok(&["create", "namespace", "limited"], "namespace/limited created");
    ok(&["create", "quota", "small", "-n", "limited", "--hard=pods=10,requests.cpu=2,requests.memory=1Gi"], "created");
    let q = c.get_json(&["quota", "small", "-n", "limited"]);
    assert_eq!(q["spec"]["hard"], json!({"pods": "10", "requests.cpu": "2", "requests.memory": "1Gi"}));
    let err = c.kubectl_fails(&["run", "greedy", "-n", "limited", "--image=busybox"], None);
    assert!(err.contains("failed quota: small"), "the quota is enforced: {err}");

    ok(&["create", "serviceaccount", "builder"], "serviceaccount/builder created");
    ok(&["create", "role", "pod-reader", "--verb=get,list", "--resource=pods,pods/log"], "created");
    let r = c.get_json(&["role", "pod-reader"]);
    assert_eq!(r["rules"][0]["verbs"], json!(["get", "list"]));
    assert_eq!(r["rules"][0]["resources"], json!(["pods", "pods/log"]));
    ok(
        &[
            "create",
            "rolebinding",
            "read-pods",
            "--role=pod-reader",
            "--user=alice",
            "--serviceaccount=default:builder",
        ],
        "created",
    );
    let rb = c.get_json(&["rolebinding", "read-pods"]);
    assert_eq!(rb["roleRef"], json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"}));
    assert_eq!(rb["subjects"].as_array().map(Vec::len), Some(2));
    ok(&["create", "clusterrole", "node-reader", "--verb=get", "--resource=nodes"], "created");
    ok(&["create", "clusterrolebinding", "read-nodes", "--clusterrole=node-reader", "--group=ops"], "created");
    ok(&["create", "clusterrole", "system:skiff:probe", "--verb=get", "--non-resource-url=/healthz"], "created");

    ok(&["create", "secret", "generic", "db", "--from-literal=password=s3cret"], "secret/db created");
    ok(&["create", "configmap", "settings", "--from-literal=LOG_LEVEL=debug"], "configmap/settings created");
    ok(&["create", "namespace", "team-b"], "namespace/team-b created");
    assert!(c.get_json(&["ns", "team-b"])["status"]["phase"] == "Active");

    ok(&["create", "ingress", "web", "--class=skiff", "--rule=web.example.com/*=web:80,tls=web-tls"], "created");
    let ing = c.get_json(&["ingress", "web"]);
    let path = &ing["spec"]["rules"][0]["http"]["paths"][0];
    assert_eq!(path["pathType"], "Prefix");
    assert_eq!(path["backend"]["service"], json!({"name": "web", "port": {"number": 80}}));
    assert_eq!(ing["spec"]["tls"][0]["secretName"], "web-tls");

    ok(&["create", "poddisruptionbudget", "web-pdb", "--selector=app=my-app", "--min-available=1"], "created");
    assert_eq!(c.get_json(&["pdb", "web-pdb"])["spec"]["minAvailable"], 1);
    ok(&["create", "priorityclass", "high", "--value=1000", "--description=important"], "created");
    assert_eq!(c.get_json(&["priorityclass", "high"])["value"], 1000);

    ok(
        &["run", "shell", "--image=busybox", "--labels=app=shell", "--env=A=1", "--", "sleep", "3600"],
        "pod/shell created",
    );
    let p = c.get_json(&["pod", "shell"]);
    assert_eq!(p["spec"]["containers"][0]["args"], json!(["sleep", "3600"]));
    assert_eq!(p["spec"]["containers"][0]["env"], json!([{"name": "A", "value": "1"}]));
    assert_eq!(p["metadata"]["labels"], json!({"app": "shell"}));

    // explain reads the served OpenAPI v3 schemas (descriptions and types of the served version)
    let out = c.kubectl(&["explain", "deployment.spec.replicas"]);
    assert!(out.contains("replicas") && out.contains("<integer>") && out.contains("Number of desired pods"), "{out}");
    let out = c.kubectl(&["explain", "pod.spec.containers.ports"]);
    assert!(out.contains("containerPort") && out.contains("-required-"), "{out}");
    let out = c.kubectl(&["explain", "hpa.spec", "--api-version=autoscaling/v1"]);
    assert!(out.contains("targetCPUUtilizationPercentage"), "{out}");
    let out = c.kubectl(&["explain", "ingress", "--recursive"]);
    assert!(out.contains("pathType") && out.contains("secretName"), "{out}");

    // who am I, and what may I do (answered by the server's authorizer; RBAC is issue 14)
    let who: Value = serde_json::from_str(&c.kubectl(&["auth", "whoami", "-o", "json"])).expect("JSON");
    assert_eq!(who["kind"], "SelfSubjectReview");
    assert!(who["status"]["userInfo"]["username"].as_str().is_some_and(|u| !u.is_empty()), "{who}");
    assert_eq!(c.kubectl(&["auth", "can-i", "create", "deployments", "-n", "team-b"]).trim(), "yes");
    assert_eq!(c.kubectl(&["auth", "can-i", "get", "/healthz"]).trim(), "yes");
    let list = c.kubectl(&["auth", "can-i", "--list"]);
    assert!(list.contains("*.*") && list.contains("[*]"), "{list}");

    // bad input is refused with the server's validation message, and nothing is stored
    let err = c.kubectl_fails(&["create", "deployment", "Bad_Name", "--image=nginx"], None);
    assert!(err.contains("Invalid value") || err.contains("invalid"), "{err}");
    let all = c.kubectl(&["get", "deploy", "-o", "name"]);
    assert!(!all.to_lowercase().contains("bad"), "{all}");

    // a dry run answers with the object and stores nothing
    let out = c.kubectl(&["create", "deployment", "dry", "--image=nginx", "--dry-run=server", "-o", "json"]);
    let v: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["spec"]["template"]["spec"]["containers"][0]["image"], "nginx");
    assert!(!c.kubectl_output(&["get", "deploy", "dry"], None).status.success());
}

per_kubectl_version!(generators_create_what_they_say => generators_work_with_kubectl_1_31, generators_work_with_kubectl_1_32, generators_work_with_kubectl_1_33);
