//! Pod Security Admission with the real kubectl (issue 14): a restricted namespace refuses a privileged pod with
//! upstream's message and admits a hardened one; baseline refuses hostPath; workloads and `warn` get warnings;
//! invalid levels are refused; a stricter level warns about the pods already there.

mod common;

use common::Cluster;

const PRIVILEGED: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: root, namespace: team}\nspec:\n  containers: [{name: c, image: busybox, securityContext: {privileged: true}}]\n";
const HARDENED: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: hardened, namespace: team}\nspec:\n  securityContext: {runAsNonRoot: true, runAsUser: 1000, seccompProfile: {type: RuntimeDefault}}\n  containers:\n  - name: c\n    image: busybox\n    securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}\n";
const HOST_PATH: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: host, namespace: base}\nspec:\n  containers: [{name: c, image: busybox}]\n  volumes: [{name: root, hostPath: {path: /}}]\n";
const DEPLOYMENT: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: team}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: c, image: busybox}]}\n";

#[test]
fn namespaces_enforce_warn_and_validate_their_levels() {
    let c = Cluster::start_with(None);
    c.kubectl(&["create", "namespace", "team"]);
    c.kubectl(&["create", "namespace", "base"]);
    // before any label, everything is admitted (privileged)
    c.kubectl_in(&["apply", "-f", "-"], PRIVILEGED);

    // a stricter level on a namespace with a violating pod: accepted, with a warning naming the pod
    let out = c.kubectl_output(&["label", "namespace", "team", "pod-security.kubernetes.io/enforce=restricted"], None);
    assert!(out.status.success());
    let warned = String::from_utf8_lossy(&out.stderr);
    assert!(
        warned.contains(
            "existing pods in namespace \"team\" violate the new PodSecurity enforce level \"restricted:latest\""
        ) && warned.contains("root: "),
        "{warned}"
    );
    c.kubectl(&["delete", "pod", "root", "-n", "team"]);

    let err = c.kubectl_fails(&["apply", "-f", "-"], Some(PRIVILEGED));
    assert!(err.contains(r#"pods "root" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false (container "c" must set securityContext.allowPrivilegeEscalation=false)"#), "{err}");
    assert!(err.contains(r#"privileged (container "c" must not set securityContext.privileged=true)"#), "{err}");
    c.kubectl_in(&["apply", "-f", "-"], HARDENED);
    // the service-account token volume every pod gets is a projected volume, which restricted allows
    assert!(
        c.kubectl(&["get", "pod", "hardened", "-n", "team", "-o", "jsonpath={.spec.volumes[*].name}"])
            .contains("kube-api-access-")
    );

    // a workload is admitted with a warning (its pods would be refused)
    let out = c.kubectl_output(&["apply", "-f", "-"], Some(DEPLOYMENT));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let warned = String::from_utf8_lossy(&out.stderr);
    assert!(
        warned.contains(r#"Warning: would violate PodSecurity "restricted:latest": allowPrivilegeEscalation != false"#),
        "{warned}"
    );

    // baseline refuses hostPath; warn=restricted only warns
    c.kubectl(&[
        "label",
        "namespace",
        "base",
        "pod-security.kubernetes.io/enforce=baseline",
        "pod-security.kubernetes.io/warn=restricted",
    ]);
    let err = c.kubectl_fails(&["apply", "-f", "-"], Some(HOST_PATH));
    assert!(err.contains(r#"violates PodSecurity "baseline:latest": hostPath volumes (volume "root")"#), "{err}");
    let plain = "apiVersion: v1\nkind: Pod\nmetadata: {name: plain, namespace: base}\nspec: {containers: [{name: c, image: busybox}]}\n";
    let out = c.kubectl_output(&["apply", "-f", "-"], Some(plain));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(r#"would violate PodSecurity "restricted:latest""#));

    // levels are validated
    let err = c.kubectl_fails(
        &["label", "namespace", "base", "pod-security.kubernetes.io/enforce=strict", "--overwrite"],
        None,
    );
    assert!(err.contains("must be one of privileged, baseline, restricted"), "{err}");
    let err = c.kubectl_fails(
        &["create", "-f", "-"],
        Some(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: bad, labels: {pod-security.kubernetes.io/warn: nope}}\n",
        ),
    );
    assert!(err.contains("Invalid value: \"nope\""), "{err}");
}
