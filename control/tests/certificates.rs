//! Per-node identity with the real kubectl (issue 14): the join token can only ask for a node certificate, which
//! the server approves and signs by itself; other requests wait for a person with the right to approve; each node's
//! certificate names it, and a node changes only its own Node, Lease and pods.

mod common;

use std::time::Duration;

use common::Cluster;

const KUBELET_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";

fn run(c: &Cluster, kubeconfig: &std::path::Path, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    c.kubectl_with(kubeconfig, args, stdin)
}

fn whoami(c: &Cluster, kubeconfig: &std::path::Path) -> serde_json::Value {
    let (ok, out, err) = run(c, kubeconfig, &["auth", "whoami", "-o", "json"], None);
    assert!(ok, "whoami: {err}");
    serde_json::from_str(&out).expect("json")
}

#[test]
fn the_join_token_only_bootstraps_a_node_identity() {
    let c = Cluster::start_with(None);
    let token = c.token_kubeconfig("bootstrap", &c.server.pki.node_token);
    // the token itself reads and changes nothing
    for args in [&["get", "pods", "-A"][..], &["get", "secrets", "-A"], &["get", "nodes"]] {
        let (ok, _, err) = run(&c, &token, args, None);
        assert!(!ok && err.contains("User \"system:bootstrap:skiff\" cannot"), "{args:?}: {err}");
    }
    // a node certificate asked for with it is approved and signed without anyone
    let n1 = c.node_kubeconfig("n1");
    let me = whoami(&c, &n1);
    assert_eq!(me["status"]["userInfo"]["username"], "system:node:n1");
    assert!(me["status"]["userInfo"]["groups"].to_string().contains("system:nodes"), "{me}");
    let csr = c.get_json(&["csr", "csr-system-node-n1"]);
    let approved = &csr["status"]["conditions"][0];
    assert_eq!((approved["type"].as_str(), approved["reason"].as_str()), (Some("Approved"), Some("AutoApproved")));
    assert_eq!(csr["spec"]["username"], "system:bootstrap:skiff", "the requester is recorded by the server");

    // what is not a plain node certificate is left to a person, even when asked for with the token
    let (admin_csr, _) = c.request_certificate(&token, "skiff-admin", &["system:masters"], KUBELET_SIGNER);
    let (user_csr, _) = c.request_certificate(&token, "eve", &[], CLIENT_SIGNER);
    let (node_with_masters, _) =
        c.request_certificate(&token, "system:node:n9", &["system:nodes", "system:masters"], KUBELET_SIGNER);
    // n2's request goes through the controller after the others: once it is signed, they have been looked at
    let _n2 = c.node_kubeconfig("n2");
    for name in [&admin_csr, &user_csr, &node_with_masters] {
        let csr = c.get_json(&["csr", name]);
        assert!(
            csr["status"].get("certificate").is_none() && csr["status"].get("conditions").is_none(),
            "{name} stays pending: {csr}"
        );
    }
    // once n1 is registered, the shared token cannot get its name again (a node could become another)
    c.kubectl_in(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Node\nmetadata: {name: n1, annotations: {skiff.dev/node-certificate: \"true\"}}\n",
    );
    let again = c.kubectl_output(&["delete", "csr", "csr-system-node-n1"], None);
    assert!(again.status.success());
    let (n1_again, _) = c.request_certificate(&token, "system:node:n1", &["system:nodes"], KUBELET_SIGNER);
    let _n3 = c.node_kubeconfig("n3");
    let csr = c.get_json(&["csr", &n1_again]);
    assert!(csr["status"].get("conditions").is_none(), "a registered node's name waits for a person: {csr}");

    // a Node an older agent registered (no annotation) may bootstrap once: upgrading an agent needs no person
    c.kubectl_in(&["apply", "-f", "-"], "apiVersion: v1\nkind: Node\nmetadata: {name: old}\n");
    let old = c.node_kubeconfig("old");
    assert_eq!(whoami(&c, &old)["status"]["userInfo"]["username"], "system:node:old");

    // a subject two parsers could read differently (two CNs, the second another node) is refused at once
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new("openssl")
        .args(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout"])
        .arg(dir.path().join("k.pem"))
        .args(["-subj", "/O=system:nodes/CN=system:node:n9/CN=system:node:n1"])
        .output()
        .expect("openssl runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    use base64::Engine as _;
    let yaml = format!(
        "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata: {{name: two-cns}}\nspec:\n  request: {}\n  signerName: {KUBELET_SIGNER}\n  usages: [client auth]\n",
        base64::engine::general_purpose::STANDARD.encode(&out.stdout)
    );
    let (ok, _, err) = run(&c, &token, &["create", "-f", "-"], Some(&yaml));
    assert!(!ok && err.contains("one common name"), "{err}");

    let table = c.kubectl(&["get", "csr"]);
    assert!(table.contains("Pending") && table.contains("Approved,Issued"), "{table}");
    // and the token cannot approve them
    let (ok, _, err) = run(&c, &token, &["certificate", "approve", &admin_csr], None);
    assert!(!ok && err.contains("forbidden"), "{err}");
}

#[test]
fn a_person_with_the_right_approves_other_requests() {
    let c = Cluster::start_with(None);
    let admin = c.server.kubeconfig.clone();
    let (alice_csr, alice_key) = c.request_certificate(&admin, "alice", &["dev"], CLIENT_SIGNER);
    let (eve_csr, _) = c.request_certificate(&admin, "eve", &[], CLIENT_SIGNER);

    // mallory may update approvals but holds no `approve` on the signer: refused, as upstream
    let role = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: csr-updater}\nrules:\n- {apiGroups: [certificates.k8s.io], resources: [certificatesigningrequests], verbs: [get, list]}\n- {apiGroups: [certificates.k8s.io], resources: [certificatesigningrequests/approval], verbs: [update]}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: mallory-csr}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: csr-updater}\nsubjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: mallory}]\n";
    c.kubectl_in(&["apply", "-f", "-"], role);
    let err = c.kubectl_fails(&["certificate", "approve", &alice_csr, "--as=mallory"], None);
    assert!(err.contains("user not permitted to approve requests with signerName"), "{err}");
    // …and with it, allowed
    let signer_role = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{name: client-approver}}\nrules:\n- {{apiGroups: [certificates.k8s.io], resources: [signers], resourceNames: [\"{CLIENT_SIGNER}\"], verbs: [approve]}}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: mallory-approves}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: client-approver}}\nsubjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: mallory}}]\n"
    );
    c.kubectl_in(&["apply", "-f", "-"], &signer_role);
    c.eventually("mallory may approve", Duration::from_secs(10), || {
        c.kubectl_output(&["certificate", "approve", &alice_csr, "--as=mallory"], None).status.success()
    });
    let cert = c.issued_certificate(&alice_csr);
    let alice = c.cert_kubeconfig("alice", &cert, &alice_key);
    let me = whoami(&c, &alice);
    assert_eq!(me["status"]["userInfo"]["username"], "alice");
    assert!(me["status"]["userInfo"]["groups"].to_string().contains("dev"), "{me}");

    // setting a certificate takes `sign` on the signer, besides `update` on the status: a request for a signer this
    // server does not serve, approved, stays for its own signer, and mallory cannot pose as it
    let (other_csr, _) = c.request_certificate(&admin, "zed", &[], "example.com/signer");
    c.kubectl(&["certificate", "approve", &other_csr]);
    let status_role = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: csr-status}\nrules:\n- {apiGroups: [certificates.k8s.io], resources: [certificatesigningrequests/status], verbs: [update]}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: mallory-status}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: csr-status}\nsubjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: mallory}]\n";
    c.kubectl_in(&["apply", "-f", "-"], status_role);
    let mut forged = c.get_json(&["csr", &other_csr]);
    forged["status"]["certificate"] = serde_json::json!("Zm9yZ2Vk");
    let path = format!("/apis/certificates.k8s.io/v1/certificatesigningrequests/{other_csr}/status");
    c.eventually("mallory may update the status", Duration::from_secs(10), || {
        let out = c.kubectl_output(&["replace", "--raw", &path, "-f", "-", "--as=mallory"], Some(&forged.to_string()));
        String::from_utf8_lossy(&out.stderr).contains("user not permitted to sign requests with signerName")
    });
    let other = c.get_json(&["csr", &other_csr]);
    assert!(other["status"].get("certificate").is_none(), "no certificate without `sign`: {other}");

    // a denied request is never signed, and a decision cannot be reversed
    c.kubectl(&["certificate", "deny", &eve_csr]);
    let mut both = c.get_json(&["csr", &eve_csr]);
    let approved = serde_json::json!({"type": "Approved", "status": "True", "reason": "Changed", "message": "my mind"});
    both["status"]["conditions"].as_array_mut().expect("conditions").push(approved);
    let path = format!("/apis/certificates.k8s.io/v1/certificatesigningrequests/{eve_csr}/approval");
    let err = c.kubectl_fails(&["replace", "--raw", &path, "-f", "-"], Some(&both.to_string()));
    assert!(err.contains("cannot be both approved and denied"), "{err}");
    std::thread::sleep(Duration::from_millis(500));
    let eve = c.get_json(&["csr", &eve_csr]);
    assert!(eve["status"].get("certificate").is_none(), "{eve}");
    // the spec is the requester's and stays so
    let err = c.kubectl_fails(
        &["patch", "csr", &alice_csr, "--type=merge", "-p", r#"{"spec":{"signerName":"example.com/other"}}"#],
        None,
    );
    assert!(err.contains("immutable"), "{err}");
}

#[test]
fn a_node_changes_only_its_own_node_lease_and_pods() {
    let c = Cluster::start_with(None);
    // as agents do: a certificate first, then the Node registered with it
    let (n1, n2) = (c.node_kubeconfig("n1"), c.node_kubeconfig("n2"));
    for n in ["n1", "n2"] {
        c.kubectl_in(&["apply", "-f", "-"], &format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {n}}}\n"));
    }
    let (ok, _, err) = run(&c, &n1, &["label", "node", "n1", "role=edge"], None);
    assert!(ok, "a node labels itself: {err}");
    let (ok, _, err) = run(&c, &n1, &["label", "node", "n2", "role=edge"], None);
    assert!(!ok && err.contains("is not allowed to modify node \"n2\""), "{err}");
    let (ok, _, err) = run(&c, &n1, &["delete", "node", "n2"], None);
    assert!(!ok && err.contains("is not allowed to modify node"), "{err}");
    // nor its taints, nor the labels an admin places workloads by
    let (ok, _, err) = run(&c, &n1, &["taint", "node", "n1", "dedicated=db:NoSchedule"], None);
    assert!(!ok && err.contains("is not allowed to modify taints"), "{err}");
    let (ok, _, err) = run(&c, &n1, &["label", "node", "n1", "node-role.kubernetes.io/control-plane="], None);
    assert!(!ok && err.contains("is not allowed to modify labels"), "{err}");
    let (ok, _, err) = run(&c, &n1, &["label", "node", "n1", "topology.kubernetes.io/zone=a"], None);
    assert!(ok, "kubelet's own labels: {err}");

    let lease = |n: &str| {
        format!(
            "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {{name: {n}, namespace: kube-node-lease}}\nspec: {{holderIdentity: {n}}}\n"
        )
    };
    c.kubectl_in(&["apply", "-f", "-"], &lease("n2"));
    let (ok, _, err) = run(&c, &n1, &["create", "-f", "-"], Some(&lease("n1")));
    assert!(ok, "a node creates its own lease: {err}");
    let (ok, _, err) = run(&c, &n1, &["annotate", "lease", "n2", "-n", "kube-node-lease", "x=y"], None);
    assert!(!ok && err.contains("not allowed to modify lease"), "{err}");

    // LoadBalancer announcement Leases (kube-system/skiff-lb-A-B-C-D): a node holds, renews and releases them for
    // itself only
    let announce = |name: &str, holder: &str| {
        format!(
            "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {{name: {name}, namespace: kube-system}}\nspec: {{holderIdentity: \"{holder}\", leaseDurationSeconds: 1}}\n"
        )
    };
    let (ok, _, err) = run(&c, &n1, &["create", "-f", "-"], Some(&announce("skiff-lb-10-0-0-200", "n1")));
    assert!(ok, "a node takes an address for itself: {err}");
    let (ok, _, err) = run(&c, &n2, &["create", "-f", "-"], Some(&announce("skiff-lb-10-0-0-201", "n1")));
    assert!(!ok && err.contains("as its holder"), "not on another node's behalf: {err}");
    let (ok, _, err) = run(&c, &n1, &["create", "-f", "-"], Some(&announce("skiff-lb-whatever", "n1")));
    assert!(!ok && err.contains("as its holder"), "only skiff-lb-A-B-C-D names: {err}");
    let release = r#"{"spec":{"holderIdentity":""}}"#;
    let (ok, _, err) = run(
        &c,
        &n2,
        &["patch", "lease", "skiff-lb-10-0-0-200", "-n", "kube-system", "--type=merge", "-p", release],
        None,
    );
    assert!(!ok && err.contains("only hold, renew or release"), "n2 cannot release n1's address: {err}");
    let (ok, _, err) = run(&c, &n2, &["delete", "lease", "skiff-lb-10-0-0-200", "-n", "kube-system"], None);
    assert!(!ok && err.contains("only hold, renew or release"), "nor delete it: {err}");
    let take = r#"{"spec":{"holderIdentity":"n2"}}"#;
    let (ok, _, err) =
        run(&c, &n2, &["patch", "lease", "skiff-lb-10-0-0-200", "-n", "kube-system", "--type=merge", "-p", take], None);
    assert!(ok, "an expired holder's address may be taken over by the claimant: {err}");
    c.kubectl_in(
        &["apply", "-f", "-"],
        "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {name: some-controller, namespace: kube-system}\nspec: {holderIdentity: x}\n",
    );
    let (ok, _, err) = run(&c, &n1, &["annotate", "lease", "some-controller", "-n", "kube-system", "x=y"], None);
    assert!(!ok && err.contains("not allowed to modify lease"), "other kube-system Leases stay off limits: {err}");

    c.kubectl_in(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata: {name: on-n2}\nspec: {nodeName: n2, containers: [{name: c, image: busybox}]}\n",
    );
    // status writes as an agent makes them (PATCH pods/status), with each node's own client
    let patch_status = |kubeconfig: &std::path::Path| {
        c.runtime.block_on(async {
            let client = skiff_client::connect(kubeconfig).await.expect("client");
            let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client, "default");
            let patch = serde_json::json!({"status": {"phase": "Running"}});
            pods.patch_status("on-n2", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(patch)).await
        })
    };
    let err = patch_status(&n1).expect_err("n1 may not write n2's pod").to_string();
    assert!(err.contains("can only modify pods with spec.nodeName set to itself"), "{err}");
    patch_status(&n2).expect("n2 writes its own pod's status");
    let (ok, _, err) = run(&c, &n1, &["delete", "pod", "on-n2", "--grace-period=0", "--force"], None);
    assert!(!ok && err.contains("can only modify pods"), "{err}");
    // evicting is deleting: n1 cannot evict n2's pod
    let evicted = c.runtime.block_on(async {
        let client = skiff_client::connect(&n1).await.expect("client");
        let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client, "default");
        pods.evict("on-n2", &kube::api::EvictParams::default()).await
    });
    let err = evicted.expect_err("n1 may not evict n2's pod").to_string();
    assert!(err.contains("can only modify pods"), "{err}");

    // reading: only the Secrets and ConfigMaps of the node's own pods, one at a time
    c.kubectl(&["create", "secret", "generic", "for-n2", "--from-literal=k=v"]);
    c.kubectl(&["create", "secret", "generic", "unused", "--from-literal=k=v"]);
    c.kubectl(&["create", "configmap", "cm-for-n2", "--from-literal=k=v"]);
    c.kubectl_in(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata: {name: reads}\nspec:\n  nodeName: n2\n  containers: [{name: c, image: busybox, envFrom: [{configMapRef: {name: cm-for-n2}}]}]\n  volumes: [{name: s, secret: {secretName: for-n2}}]\n",
    );
    let (ok, _, err) = run(&c, &n2, &["get", "secret", "for-n2"], None);
    assert!(ok, "n2 reads its pod's Secret: {err}");
    let (ok, _, err) = run(&c, &n2, &["get", "configmap", "cm-for-n2"], None);
    assert!(ok, "n2 reads its pod's ConfigMap: {err}");
    let (ok, _, err) = run(&c, &n2, &["get", "secrets", "--field-selector", "metadata.name=for-n2"], None);
    assert!(ok, "a list of it by name (what a watch of one object asks): {err}");
    for (who, args) in [
        (&n1, &["get", "secret", "for-n2"][..]),
        (&n2, &["get", "secret", "unused"]),
        (&n2, &["get", "secrets"]),
        (&n2, &["get", "secrets", "-A"]),
        (&n2, &["delete", "secret", "for-n2"]),
    ] {
        let (ok, _, err) = run(&c, who, args, None);
        assert!(!ok && err.contains("forbidden"), "{args:?} is refused: {err}");
    }
    let (_, _, err) = run(&c, &n1, &["get", "secret", "for-n2"], None);
    assert!(err.contains("no relationship found between node 'n1' and this object"), "{err}");

    let mirror = "apiVersion: v1\nkind: Pod\nmetadata: {name: m, annotations: {kubernetes.io/config.mirror: x}}\nspec: {nodeName: n2, containers: [{name: c, image: busybox}]}\n";
    let (ok, _, err) = run(&c, &n1, &["create", "-f", "-"], Some(mirror));
    assert!(!ok && err.contains("spec.nodeName set to itself"), "n1 cannot create n2's mirror pod: {err}");
    // a mirror pod naming a pull secret would make the node authorizer hand that Secret over: refused
    let pulls = "apiVersion: v1\nkind: Pod\nmetadata: {name: m2, annotations: {kubernetes.io/config.mirror: x}}\nspec: {nodeName: n1, imagePullSecrets: [{name: for-n2}], containers: [{name: c, image: busybox}]}\n";
    let (ok, _, err) = run(&c, &n1, &["create", "-f", "-"], Some(pulls));
    assert!(!ok && err.contains("mirror pods may not reference secrets"), "{err}");
    let (ok, _, _) = run(&c, &n1, &["get", "secret", "for-n2"], None);
    assert!(!ok, "and the Secret stays out of n1's reach");
}
