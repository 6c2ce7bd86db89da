//! RBAC with the real kubectl (issue 14): a service account with no binding is refused, a RoleBinding grants
//! exactly its namespace, `auth can-i` (with `--list`) and `auth whoami` tell the truth, escalation and
//! impersonation without the right are refused, node credentials cannot administer the cluster, and aggregated
//! roles grow with labelled ClusterRoles.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::Cluster;

fn token_kubeconfig(c: &Cluster, name: &str, token: &str) -> PathBuf {
    c.token_kubeconfig(name, token)
}

/// Runs kubectl with `kubeconfig`: (success, stdout, stderr).
fn kubectl_as(c: &Cluster, kubeconfig: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    kubectl_as_with(c, kubeconfig, args, None)
}

/// [`kubectl_as`] with `stdin`.
fn kubectl_as_in(c: &Cluster, kubeconfig: &std::path::Path, args: &[&str], stdin: &str) -> (bool, String, String) {
    kubectl_as_with(c, kubeconfig, args, Some(stdin))
}

fn kubectl_as_with(
    c: &Cluster,
    kubeconfig: &std::path::Path,
    args: &[&str],
    stdin: Option<&str>,
) -> (bool, String, String) {
    c.kubectl_with(kubeconfig, args, stdin)
}

fn refused(c: &Cluster, kc: &std::path::Path, args: &[&str], expected: &str) {
    let (ok, out, err) = kubectl_as(c, kc, args);
    assert!(!ok, "kubectl {args:?} should be refused, printed:\n{out}");
    assert!(err.contains(expected), "kubectl {args:?}: expected {expected:?} in:\n{err}");
}

fn allowed(c: &Cluster, kc: &std::path::Path, args: &[&str]) -> String {
    let (ok, out, err) = kubectl_as(c, kc, args);
    assert!(ok, "kubectl {args:?} should be allowed:\n{err}");
    out
}

const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: team}\nspec: {containers: [{name: c, image: busybox}]}\n";

#[test]
fn a_service_account_gets_exactly_what_its_bindings_grant() {
    let c = Cluster::start_with(None);
    c.kubectl(&["create", "namespace", "team"]);
    c.kubectl(&["create", "serviceaccount", "ci", "-n", "team"]);
    c.kubectl_in(&["apply", "-f", "-"], POD);
    c.kubectl(&["create", "secret", "generic", "s", "-n", "team", "--from-literal=k=v"]);
    let token = c.kubectl(&["create", "token", "ci", "-n", "team"]);
    let sa = token_kubeconfig(&c, "ci", token.trim());
    let who = "User \"system:serviceaccount:team:ci\"";

    // no binding: nothing but discovery and self-review
    refused(
        &c,
        &sa,
        &["get", "secrets", "-A"],
        &format!("secrets is forbidden: {who} cannot list resource \"secrets\" in API group \"\" at the cluster scope"),
    );
    refused(
        &c,
        &sa,
        &["get", "pods", "-n", "team"],
        &format!("{who} cannot list resource \"pods\" in API group \"\" in the namespace \"team\""),
    );
    refused(&c, &sa, &["get", "secret", "s", "-n", "team"], "secrets \"s\" is forbidden");
    refused(&c, &sa, &["delete", "namespace", "team"], "cannot delete resource \"namespaces\"");
    let (ok, out, _) = kubectl_as(&c, &sa, &["auth", "can-i", "list", "pods", "-n", "team"]);
    assert!(!ok && out.trim() == "no", "can-i before the binding: {out}");
    assert!(allowed(&c, &sa, &["auth", "whoami"]).contains("system:serviceaccount:team:ci"));
    assert!(allowed(&c, &sa, &["api-resources"]).contains("deployments"), "discovery is open to every user");

    // a RoleBinding grants its namespace only
    c.kubectl(&["create", "role", "pod-reader", "--verb=get,list,watch", "--resource=pods", "-n", "team"]);
    c.kubectl(&["create", "rolebinding", "ci-reads", "--role=pod-reader", "--serviceaccount=team:ci", "-n", "team"]);
    assert!(allowed(&c, &sa, &["get", "pods", "-n", "team"]).contains('p'));
    refused(&c, &sa, &["get", "pods", "-n", "default"], "in the namespace \"default\"");
    refused(&c, &sa, &["get", "pods", "-A"], "at the cluster scope");
    refused(&c, &sa, &["get", "secrets", "-n", "team"], "cannot list resource \"secrets\"");
    refused(&c, &sa, &["delete", "pod", "p", "-n", "team"], "cannot delete resource \"pods\"");
    refused(&c, &sa, &["exec", "p", "-n", "team", "--", "true"], "cannot create resource \"pods/exec\"");
    refused(&c, &sa, &["logs", "p", "-n", "team"], "cannot get resource \"pods/log\"");
    assert_eq!(allowed(&c, &sa, &["auth", "can-i", "list", "pods", "-n", "team"]).trim(), "yes");
    let (_, out, _) = kubectl_as(&c, &sa, &["auth", "can-i", "list", "pods", "-n", "default"]);
    assert_eq!(out.trim(), "no");
    let list = allowed(&c, &sa, &["auth", "can-i", "--list", "-n", "team"]);
    let pods = list.lines().find(|l| l.starts_with("pods ")).unwrap_or_else(|| panic!("pods in:\n{list}"));
    assert!(pods.contains("[get list watch]"), "{pods}");
    assert!(!list.lines().any(|l| l.starts_with("secrets")), "{list}");
    assert!(list.contains("selfsubjectaccessreviews.authorization.k8s.io"), "{list}");
    // the admin's answer for another user (SubjectAccessReview through can-i --as)
    assert_eq!(
        c.kubectl(&["auth", "can-i", "get", "pods", "-n", "team", "--as=system:serviceaccount:team:ci"]).trim(),
        "yes"
    );
    let out = c
        .kubectl_output(&["auth", "can-i", "get", "secrets", "-n", "team", "--as=system:serviceaccount:team:ci"], None);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no");

    // a token for a deleted service account stops working
    c.kubectl(&["create", "serviceaccount", "gone", "-n", "team"]);
    let gone_token = c.kubectl(&["create", "token", "gone", "-n", "team"]);
    c.kubectl(&["delete", "serviceaccount", "gone", "-n", "team"]);
    let gone = token_kubeconfig(&c, "gone", gone_token.trim());
    refused(&c, &gone, &["auth", "whoami"], "Unauthorized");
}

#[test]
fn escalation_and_impersonation_need_their_own_rights() {
    let c = Cluster::start_with(None);
    c.kubectl(&["create", "namespace", "team"]);
    c.kubectl(&["create", "serviceaccount", "lead", "-n", "team"]);
    c.kubectl(&["create", "serviceaccount", "dev", "-n", "team"]);
    // the lead may manage RBAC in the namespace and read pods, nothing else
    c.kubectl(&[
        "create",
        "role",
        "rbac-manager",
        "--verb=create,get,list,update,patch,delete",
        "--resource=roles,rolebindings",
        "-n",
        "team",
    ]);
    c.kubectl(&["create", "role", "pod-reader", "--verb=get,list", "--resource=pods", "-n", "team"]);
    c.kubectl(&[
        "create",
        "rolebinding",
        "lead-rbac",
        "--role=rbac-manager",
        "--serviceaccount=team:lead",
        "-n",
        "team",
    ]);
    c.kubectl(&["create", "rolebinding", "lead-pods", "--role=pod-reader", "--serviceaccount=team:lead", "-n", "team"]);
    let token = c.kubectl(&["create", "token", "lead", "-n", "team"]);
    let lead = token_kubeconfig(&c, "lead", token.trim());

    // granting what one holds works
    allowed(&c, &lead, &["create", "role", "pods-too", "--verb=get", "--resource=pods", "-n", "team"]);
    allowed(
        &c,
        &lead,
        &["create", "rolebinding", "dev-pods", "--role=pod-reader", "--serviceaccount=team:dev", "-n", "team"],
    );
    // granting more is refused, whether by a role or by binding a bigger one
    refused(
        &c,
        &lead,
        &["create", "role", "secret-reader", "--verb=get", "--resource=secrets", "-n", "team"],
        "is attempting to grant RBAC permissions not currently held",
    );
    refused(
        &c,
        &lead,
        &[
            "create",
            "rolebinding",
            "dev-admin",
            "--clusterrole=cluster-admin",
            "--serviceaccount=team:dev",
            "-n",
            "team",
        ],
        "is attempting to grant RBAC permissions not currently held",
    );
    // widening an existing role is an update, checked the same way
    let (ok, _, err) = kubectl_as(
        &c,
        &lead,
        &[
            "patch",
            "role",
            "pods-too",
            "-n",
            "team",
            "--type=json",
            "-p",
            r#"[{"op":"add","path":"/rules/0/verbs/-","value":"delete"}]"#,
        ],
    );
    assert!(!ok && err.contains("not currently held"), "{err}");
    // with `bind` on the cluster role, binding it is allowed even without holding it (as upstream)
    c.kubectl(&[
        "create",
        "role",
        "may-bind-view",
        "--verb=bind",
        "--resource=clusterroles",
        "--resource-name=view",
        "-n",
        "team",
    ]);
    c.kubectl(&[
        "create",
        "rolebinding",
        "lead-bind",
        "--role=may-bind-view",
        "--serviceaccount=team:lead",
        "-n",
        "team",
    ]);
    allowed(
        &c,
        &lead,
        &["create", "rolebinding", "dev-view", "--clusterrole=view", "--serviceaccount=team:dev", "-n", "team"],
    );
    refused(
        &c,
        &lead,
        &["create", "rolebinding", "dev-edit", "--clusterrole=edit", "--serviceaccount=team:dev", "-n", "team"],
        "not currently held",
    );

    // impersonation: the admin may, the lead may not
    assert!(
        c.kubectl(&["auth", "whoami", "--as=system:serviceaccount:team:dev"])
            .contains("system:serviceaccount:team:dev")
    );
    let out = c.kubectl_output(&["get", "secrets", "-n", "team", "--as=system:serviceaccount:team:dev"], None);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("User \"system:serviceaccount:team:dev\" cannot list resource \"secrets\"")
    );
    refused(
        &c,
        &lead,
        &["get", "pods", "-n", "team", "--as=bob"],
        "User \"system:serviceaccount:team:lead\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope",
    );
    refused(&c, &lead, &["get", "pods", "-n", "team", "--as=bob", "--as-group=system:masters"], "cannot impersonate");
}

#[test]
fn node_credentials_cannot_administer_the_cluster() {
    let c = Cluster::start_with(None);
    let node = c.node_kubeconfig("n1");
    // what an agent needs works
    allowed(&c, &node, &["get", "pods", "-A"]);
    allowed(&c, &node, &["get", "services", "-A"]);
    // administering does not
    refused(&c, &node, &["create", "namespace", "x"], "cannot create resource \"namespaces\"");
    refused(
        &c,
        &node,
        &["create", "clusterrolebinding", "me", "--clusterrole=cluster-admin", "--group=system:nodes"],
        "forbidden",
    );
    refused(&c, &node, &["create", "deployment", "d", "--image=busybox"], "cannot create resource \"deployments\"");
    refused(&c, &node, &["delete", "service", "kubernetes"], "cannot delete resource \"services\"");
}

#[test]
fn default_roles_exist_and_aggregated_roles_grow() {
    let c = Cluster::start_with(None);
    for role in [
        "cluster-admin",
        "admin",
        "edit",
        "view",
        "system:basic-user",
        "system:discovery",
        "system:public-info-viewer",
        "system:node",
    ] {
        c.kubectl(&["get", "clusterrole", role]);
    }
    let view = c.get_json(&["clusterrole", "view"]);
    assert!(view["rules"].as_array().is_some_and(|r| !r.is_empty()), "view is aggregated at start: {view}");
    let crd_view = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: widgets-view\n  labels: {rbac.authorization.k8s.io/aggregate-to-view: \"true\"}\nrules:\n- {apiGroups: [example.com], resources: [widgets], verbs: [get, list, watch]}\n";
    c.kubectl_in(&["apply", "-f", "-"], crd_view);
    for role in ["view", "edit", "admin"] {
        c.eventually(&format!("{role} includes widgets"), Duration::from_secs(15), || {
            c.get_json(&["clusterrole", role])["rules"].to_string().contains("widgets")
        });
    }
    // a user's change to a default role is kept, and the defaults are reconciled back in at the next start
    assert!(!c.get_json(&["clusterrole", "view"])["rules"].to_string().contains("secrets"), "view never reads Secrets");
    // the API server's metrics need a grant (system:monitoring or an admin), not just any caller
    let url = format!("{}/metrics", c.server.url);
    let ca = c.server.pki.dir.join("ca.crt");
    let code = |extra: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", ca.to_str().expect("path")])
            .args(extra)
            .arg(&url)
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(code(&[]), "401");
    let token = c.kubectl(&["create", "token", "default", "-n", "default"]);
    let bearer = format!("Authorization: Bearer {}", token.trim());
    assert_eq!(code(&["-H", &bearer]), "403");
    let admin_crt = c.server.pki.dir.join("admin.crt");
    let admin_key = c.server.pki.dir.join("admin.key");
    assert_eq!(code(&["--cert", admin_crt.to_str().expect("path"), "--key", admin_key.to_str().expect("path")]), "200");
    c.kubectl(&[
        "create",
        "clusterrolebinding",
        "scraper",
        "--clusterrole=system:monitoring",
        "--serviceaccount=default:default",
    ]);
    assert_eq!(code(&["-H", &bearer]), "200");
}

#[test]
fn the_escape_hatches_are_closed() {
    let c = Cluster::start_with(None);
    c.kubectl(&["create", "namespace", "team"]);
    c.kubectl(&["create", "serviceaccount", "lead", "-n", "team"]);
    // the lead may create ClusterRoles and patch ConfigMaps, nothing more
    c.kubectl(&["create", "clusterrole", "role-maker", "--verb=create,get", "--resource=clusterroles"]);
    c.kubectl(&[
        "create",
        "clusterrolebinding",
        "lead-roles",
        "--clusterrole=role-maker",
        "--serviceaccount=team:lead",
    ]);
    c.kubectl(&["create", "role", "cm-patcher", "--verb=get,patch", "--resource=configmaps", "-n", "team"]);
    c.kubectl(&["create", "rolebinding", "lead-cm", "--role=cm-patcher", "--serviceaccount=team:lead", "-n", "team"]);
    let token = c.kubectl(&["create", "token", "lead", "-n", "team"]);
    let lead = token_kubeconfig(&c, "lead", token.trim());

    // an aggregation rule would gather cluster-admin's rules: it needs every right
    let aggregating = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: sneaky}\naggregationRule:\n  clusterRoleSelectors: [{matchLabels: {kubernetes.io/bootstrapping: rbac-defaults}}]\nrules: []\n";
    let (ok, _, err) = kubectl_as_in(&c, &lead, &["create", "-f", "-"], aggregating);
    assert!(!ok && err.contains("not currently held"), "{err}");
    // patch alone does not create (server-side apply of a missing object)
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: new-one, namespace: team}\ndata: {a: b}\n";
    let (ok, _, err) = kubectl_as_in(&c, &lead, &["apply", "--server-side", "-f", "-"], cm);
    assert!(!ok && err.contains("cannot create resource \"configmaps\""), "{err}");
    // a binding's roleRef cannot change
    c.kubectl(&["create", "rolebinding", "fixed", "--role=cm-patcher", "--user=bob", "-n", "team"]);
    let err = c.kubectl_fails(
        &[
            "patch",
            "rolebinding",
            "fixed",
            "-n",
            "team",
            "--type=merge",
            "-p",
            r#"{"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"cluster-admin"}}"#,
        ],
        None,
    );
    assert!(err.contains("cannot change roleRef"), "{err}");

    // token requests: only pods as bound objects, within the longest lifetime
    let err = c.kubectl_fails(
        &["create", "token", "lead", "-n", "team", "--bound-object-kind=Secret", "--bound-object-name=x"],
        None,
    );
    assert!(err.contains("spec.boundObjectRef.kind: Unsupported value: \"Secret\""), "{err}");
    let err = c.kubectl_fails(&["create", "token", "lead", "-n", "team", "--duration=2000000h"], None);
    assert!(err.contains("may not specify a duration longer than"), "{err}");

    // node credentials: no tokens for accounts of pods that are not scheduled, no plain pods
    let node = c.node_kubeconfig("n1");
    refused(&c, &node, &["create", "token", "lead", "-n", "team"], "a node may only request tokens bound to a pod");
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: team}\nspec: {nodeName: n1, containers: [{name: c, image: busybox}]}\n";
    let (ok, _, err) = kubectl_as_in(&c, &node, &["create", "-f", "-"], pod);
    assert!(!ok && err.contains("can only create mirror pods"), "{err}");
    let mirror = "apiVersion: v1\nkind: Pod\nmetadata: {name: m, namespace: team, annotations: {kubernetes.io/config.mirror: x}}\nspec:\n  nodeName: n1\n  containers: [{name: c, image: busybox}]\n  volumes: [{name: s, secret: {secretName: x}}]\n";
    let (ok, _, err) = kubectl_as_in(&c, &node, &["create", "-f", "-"], mirror);
    assert!(!ok && err.contains("mirror pods may not reference secrets"), "{err}");
}

#[test]
fn list_and_watch_on_everything_does_not_reach_the_node_proxy() {
    let c = Cluster::start_with(None);
    // A monitoring role as people write them: list and watch of every resource (and so every subresource).
    c.kubectl(&["create", "clusterrole", "watch-all", "--verb=list,watch", "--resource=*"]);
    c.kubectl(&["create", "clusterrolebinding", "mon-watch", "--clusterrole=watch-all", "--user=mon"]);
    // `?watch` on a proxied node path is a `get` of nodes/proxy (upstream's reading), which the role lacks; before,
    // it was authorized as `watch` and went on to the node (exec is reachable behind that proxy).
    for path in ["/api/v1/nodes/n1/proxy/policy/verdicts?watch=true", "/api/v1/nodes/n1/proxy/exec/a/p/c?watch=1"] {
        let err = c.kubectl_fails(&["get", "--raw", path, "--as=mon"], None);
        assert!(err.contains("Forbidden") || err.contains("forbidden"), "{path}: {err}");
    }
    // The role itself works.
    let out = c.kubectl_output(&["get", "--raw", "/api/v1/nodes?watch=true&timeoutSeconds=1", "--as=mon"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
