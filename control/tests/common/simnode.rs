//! Simulated nodes for controller tests: Node objects that heartbeat through Leases, and a fake kubelet that runs
//! whatever is bound to them by marking pods Running and Ready (or Succeeded / Failed on demand), answers graceful
//! deletions, and can go silent like a dead machine.
//!
//! Pods are steered by annotations: `sim.skiff.dev/exit: "0"` makes a pod succeed, any other code makes it fail;
//! `sim.skiff.dev/unready: "true"` keeps it not Ready; `sim.skiff.dev/ready-after-ms` delays readiness.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

pub struct SimNodes {
    silent: Arc<Mutex<HashSet<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for SimNodes {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn micro_now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()
}

impl SimNodes {
    /// Registers `names` as Ready nodes with `cpu` and `memory` allocatable and starts their fake kubelets.
    pub async fn start(client: kube::Client, names: &[&str], cpu: &str, memory: &str) -> SimNodes {
        let nodes: Api<Node> = Api::all(client.clone());
        for (i, n) in names.iter().enumerate() {
            let node: Node = serde_json::from_value(json!({
                "metadata": {"name": n, "labels": {"kubernetes.io/hostname": n, "kubernetes.io/os": "linux", "topology.kubernetes.io/zone": format!("zone-{}", i % 2)}},
                "status": {
                    "capacity": {"cpu": cpu, "memory": memory, "pods": "110"},
                    "allocatable": {"cpu": cpu, "memory": memory, "pods": "110"},
                    "addresses": [{"type": "InternalIP", "address": format!("10.0.0.{}", 10 + i)}, {"type": "Hostname", "address": n}],
                    "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "simulated", "lastHeartbeatTime": now(), "lastTransitionTime": now()}],
                    "nodeInfo": {"kubeletVersion": "v1.32.4-sim", "containerRuntimeVersion": "sim://1", "osImage": "sim", "kernelVersion": "6", "architecture": "amd64", "operatingSystem": "linux",
                                 "machineID": "", "systemUUID": "", "bootID": "", "kubeProxyVersion": ""}
                }
            }))
            .expect("a node");
            let created = nodes.create(&PostParams::default(), &node).await.expect("node registered");
            // status is written through the status subresource after creation
            nodes
                .patch_status(n, &PatchParams::default(), &Patch::Merge(&json!({"status": node.status})))
                .await
                .expect("node status");
            let _ = created;
        }
        let silent: Arc<Mutex<HashSet<String>>> = Arc::default();
        let mut tasks = Vec::new();
        // heartbeats
        {
            let (client, names, silent) =
                (client.clone(), names.iter().map(|s| s.to_string()).collect::<Vec<_>>(), silent.clone());
            tasks.push(tokio::spawn(async move {
                let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
                loop {
                    for n in &names {
                        if silent.lock().expect("lock").contains(n) {
                            continue;
                        }
                        let lease: Lease = serde_json::from_value(json!({"metadata": {"name": n}, "spec": {"holderIdentity": n, "leaseDurationSeconds": 12, "renewTime": micro_now()}})).expect("lease");
                        match leases.get_opt(n).await {
                            Ok(Some(mut cur)) => {
                                cur.spec = lease.spec;
                                let _ = leases.replace(n, &PostParams::default(), &cur).await;
                            }
                            Ok(None) => {
                                let _ = leases.create(&PostParams::default(), &lease).await;
                            }
                            Err(_) => {}
                        }
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }));
        }
        // the fake kubelet
        {
            let (client, names, silent) =
                (client.clone(), names.iter().map(|s| s.to_string()).collect::<HashSet<_>>(), silent.clone());
            tasks.push(tokio::spawn(async move {
                let pods: Api<Pod> = Api::all(client.clone());
                let mut stream = watcher(pods, watcher::Config::default()).boxed();
                let ip = AtomicU32::new(2);
                let mut started: HashMap<String, ()> = HashMap::new();
                while let Some(ev) = stream.next().await {
                    let objs: Vec<Pod> = match ev {
                        Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => vec![p],
                        _ => continue,
                    };
                    for p in objs {
                        let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
                        if !names.contains(&node) || silent.lock().expect("lock").contains(&node) {
                            continue;
                        }
                        let ns = p.metadata.namespace.clone().unwrap_or_default();
                        let name = p.metadata.name.clone().unwrap_or_default();
                        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
                        if p.metadata.deletion_timestamp.is_some() {
                            let _ = api.delete(&name, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await;
                            continue;
                        }
                        let uid = p.metadata.uid.clone().unwrap_or_default();
                        if started.contains_key(&uid) {
                            continue;
                        }
                        started.insert(uid, ());
                        let ann = p.metadata.annotations.clone().unwrap_or_default();
                        let n = ip.fetch_add(1, Ordering::Relaxed);
                        let pod_ip = format!("10.244.{}.{}", n / 250, n % 250 + 2);
                        let containers: Vec<String> = p.spec.as_ref().map(|s| s.containers.iter().map(|c| c.name.clone()).collect()).unwrap_or_default();
                        let delay = ann.get("sim.skiff.dev/ready-after-ms").and_then(|d| d.parse::<u64>().ok()).unwrap_or(0);
                        let api2 = api.clone();
                        tokio::spawn(async move {
                            if delay > 0 {
                                tokio::time::sleep(Duration::from_millis(delay)).await;
                            }
                            let status = match ann.get("sim.skiff.dev/exit").map(String::as_str) {
                                Some(code) => {
                                    let code: i32 = code.parse().unwrap_or(1);
                                    let cs: Vec<_> = containers.iter().map(|c| json!({"name": c, "image": "sim", "imageID": "", "ready": false, "restartCount": 0,
                                        "state": {"terminated": {"exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" }, "startedAt": now(), "finishedAt": now()}}})).collect();
                                    json!({"phase": if code == 0 { "Succeeded" } else { "Failed" }, "podIP": pod_ip, "startTime": now(), "containerStatuses": cs,
                                           "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now()}]})
                                }
                                None => {
                                    let ready = ann.get("sim.skiff.dev/unready").map(String::as_str) != Some("true");
                                    let cs: Vec<_> = containers.iter().map(|c| json!({"name": c, "image": "sim", "imageID": "", "ready": ready, "started": true, "restartCount": 0,
                                        "state": {"running": {"startedAt": now()}}})).collect();
                                    json!({"phase": "Running", "podIP": pod_ip, "podIPs": [{"ip": pod_ip}], "startTime": now(), "containerStatuses": cs,
                                           "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }, "lastTransitionTime": now()},
                                                          {"type": "ContainersReady", "status": if ready { "True" } else { "False" }, "lastTransitionTime": now()}]})
                                }
                            };
                            let _ = api2.patch_status(&name, &PatchParams::default(), &Patch::Strategic(&json!({"status": status}))).await;
                        });
                    }
                }
            }));
        }
        SimNodes { silent, tasks }
    }

    /// Makes a node stop heartbeating and stop running pods (a dead machine).
    pub fn silence(&self, node: &str) {
        self.silent.lock().expect("lock").insert(node.to_string());
    }
}
