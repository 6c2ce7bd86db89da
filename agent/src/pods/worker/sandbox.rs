//! The sandbox steps of a pass: network namespace and veth, NetworkPolicy admission, the pod's `/etc` files, the
//! pids limit, and volumes (service-account tokens, claims, then every local volume written on the blocking pool).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, ServiceAccount};
use kube::api::{Api, Patch, PatchParams, PostParams};
use skiff_client::events::EventType;

use super::{Step, Worker, blocking};
use crate::metrics::StartPhase;
use crate::pods::container::PodFiles;
use crate::pods::env::PodFacts;
use crate::pods::volumes::{self, VolumeInputs};
use crate::pods::{NamespaceLookup, etc};

/// How soon a failed sandbox step is tried again.
const SANDBOX_RETRY: Duration = Duration::from_secs(5);
/// How soon volumes that could not be set up are tried again.
const VOLUME_RETRY: Duration = Duration::from_secs(10);

impl Worker {
    async fn sandbox_failed(&self, message: &str) -> Step {
        self.event(None, EventType::Warning, "FailedCreatePodSandBox", message).await;
        Step::Halt(SANDBOX_RETRY)
    }

    pub(super) async fn create_sandbox(&mut self) -> Step {
        let started = Instant::now();
        match self.ctx.net.attach(&self.rec.uid).await {
            Ok(net) => {
                self.rec.net = Some(net);
                self.touch();
                // the namespace exists now: the record must say so even if the agent stops in this pass
                self.flush().await;
                self.ctx.metrics.operation("create_sandbox", started.elapsed().as_secs_f64());
                self.ctx.metrics.start_phase(StartPhase::SandboxNetwork, started.elapsed().as_secs_f64());
                Step::Done
            }
            Err(e) => self.sandbox_failed(&format!("Failed to create pod sandbox: {e}")).await,
        }
    }

    pub(super) async fn admit_policy(&mut self) -> Step {
        let (Some(policy), Some(net)) = (&self.ctx.policy, &self.rec.net) else { return Step::Done };
        match policy.admit(&self.rec.uid, &self.pod, net).await {
            Ok(()) => {
                self.progress.policy_admitted = true;
                Step::Done
            }
            Err(e) => self.sandbox_failed(&format!("Failed to put the pod under network policy: {e}")).await,
        }
    }

    pub(super) async fn limit_pids(&mut self, max: u64) -> Step {
        let (cgroups, cg) = (self.ctx.cgroups.clone(), self.ctx.pod_cgroup(&self.rec.uid));
        match blocking(move || cgroups.limit_pids(&cg, max)).await {
            Some(Ok(())) => {
                self.progress.pids_limited = true;
                Step::Done
            }
            Some(Err(e)) => self.sandbox_failed(&format!("Failed to limit the pod's processes to {max}: {e}")).await,
            None => Step::Halt(SANDBOX_RETRY),
        }
    }

    pub(super) fn facts(&self) -> PodFacts {
        PodFacts {
            pod_ip: if self.host_network() {
                self.ctx.node.ip.to_string()
            } else {
                self.rec.net.as_ref().map(|n| n.ip.to_string()).unwrap_or_default()
            },
            host_ip: self.ctx.node.ip.to_string(),
            node_name: self.ctx.node.name.clone(),
        }
    }

    pub(super) fn pod_file_paths(&self) -> PodFiles {
        let d = self.pod_dir();
        PodFiles { hosts: d.join("hosts"), resolv: d.join("resolv.conf"), hostname: d.join("hostname") }
    }

    /// Writes the pod's `/etc` files where their content changed (computed here, written on the blocking pool).
    pub(super) async fn write_pod_files(&mut self) -> Step {
        let ip = if self.host_network() { Some(self.ctx.node.ip) } else { self.rec.net.as_ref().map(|n| n.ip) };
        let cfg = &self.ctx.cfg;
        let content = [
            etc::hosts_file(&self.pod, ip, &cfg.cluster_domain),
            etc::resolv_conf(&self.pod, cfg.cluster_dns, &cfg.cluster_domain, &self.ctx.node_resolv),
            format!("{}\n", etc::hostname(&self.pod)),
        ];
        if self.pod_files.as_ref() == Some(&content) {
            return Step::Done;
        }
        let (f, dir, files) = (self.pod_file_paths(), self.pod_dir(), content.clone());
        let written = blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(dir)?;
            for (path, text) in [f.hosts, f.resolv, f.hostname].iter().zip(&files) {
                if std::fs::read_to_string(path).ok().as_deref() != Some(text.as_str()) {
                    std::fs::write(path, text)?;
                }
            }
            Ok(())
        });
        match written.await {
            Some(Ok(())) => {
                self.pod_files = Some(content);
                Step::Done
            }
            Some(Err(e)) => self.sandbox_failed(&format!("Failed to write the pod's /etc files: {e}")).await,
            None => Step::Halt(SANDBOX_RETRY),
        }
    }

    /// Waits (briefly) until the Secrets and ConfigMaps this pod names have been listed by their watches: a missing
    /// one is then really missing, not merely not seen yet.
    pub(super) async fn objects_listed(&self) {
        if !self.ctx.caches.objects.synced(&self.pod, Duration::from_secs(10)).await {
            tracing::debug!(pod = %self.rec.name, "the pod's Secrets and ConfigMaps are not all listed yet");
        }
    }

    async fn issue_tokens(&mut self) -> Result<(), String> {
        let sa =
            self.pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into());
        for (vol, path, audience, expiry) in volumes::token_requests(&self.pod) {
            let key = (vol.clone(), path.clone());
            let fresh = self.tokens.get(&key).is_some_and(|(_, at)| {
                at.elapsed() < Duration::from_secs(u64::try_from(expiry).unwrap_or(3600) * 8 / 10)
            });
            if fresh {
                continue;
            }
            let body = serde_json::json!({
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"audiences": audience.map(|a| vec![a]).unwrap_or_default(), "expirationSeconds": expiry,
                         "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.rec.name, "uid": self.rec.uid}}
            });
            let api: Api<ServiceAccount> = Api::namespaced(self.ctx.client.clone(), &self.rec.namespace);
            let resp: serde_json::Value = api
                .create_subresource("token", &sa, &PostParams::default(), &body)
                .await
                .map_err(|e| format!("requesting a token for service account {sa}: {e}"))?;
            let token =
                resp.pointer("/status/token").and_then(|t| t.as_str()).ok_or("the token request returned no token")?;
            self.tokens.insert(key, (token.to_string(), Instant::now()));
        }
        Ok(())
    }

    /// Prepares every volume; halts the pass (with a FailedMount event when the reason changed) while one cannot be.
    pub(super) async fn prepare_volumes(&mut self) -> Step {
        match self.try_prepare_volumes().await {
            Ok(paths) => {
                self.volume_paths = paths;
                self.volume_error = None;
                Step::Done
            }
            Err(msg) => {
                if self.volume_error.as_deref() != Some(msg.as_str()) {
                    let names: Vec<String> = self
                        .pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.volumes.as_ref())
                        .map(|v| v.iter().map(|v| v.name.clone()).collect())
                        .unwrap_or_default();
                    let message = format!("MountVolume.SetUp failed for volumes [{}]: {msg}", names.join(" "));
                    self.event(None, EventType::Warning, "FailedMount", &message).await;
                    self.volume_error = Some(msg);
                }
                Step::Halt(VOLUME_RETRY)
            }
        }
    }

    async fn try_prepare_volumes(&mut self) -> Result<BTreeMap<String, PathBuf>, String> {
        self.objects_listed().await;
        self.issue_tokens().await?;
        let facts = self.facts();
        let ns = self.rec.namespace.clone();
        let tokens: BTreeMap<(String, String), String> =
            self.tokens.iter().map(|(k, (t, _))| (k.clone(), t.clone())).collect();
        let dir = self.pod_dir().join("volumes");
        let mut out = BTreeMap::new();
        let mut local = Vec::new();
        for v in self.pod.spec.as_ref().and_then(|s| s.volumes.clone()).unwrap_or_default() {
            if let Some(claim) = &v.persistent_volume_claim {
                out.insert(v.name.clone(), self.claim_path(&ns, &claim.claim_name).await?);
                continue;
            }
            let lookup = NamespaceLookup { caches: &self.ctx.caches, namespace: &ns };
            let inp = VolumeInputs {
                pod: &self.pod,
                facts: &facts,
                lookup: &lookup,
                node_cpus: self.ctx.node.cpus,
                node_memory: self.ctx.node.memory,
                tokens: &tokens,
            };
            local.push(volumes::local_setup(&v, &dir, &inp)?);
        }
        let applied = blocking(move || {
            local
                .iter()
                .map(|s| volumes::apply_local(s).map(|p| (s.volume.name.clone(), p)))
                .collect::<Result<Vec<_>, _>>()
        });
        out.extend(applied.await.ok_or("setting up volumes panicked")??);
        Ok(out)
    }

    async fn claim_path(&self, ns: &str, claim: &str) -> Result<PathBuf, String> {
        let create_dir = |p: PathBuf| async move {
            let shown = p.display().to_string();
            let made = blocking(move || std::fs::create_dir_all(&p).map(|()| p)).await;
            made.ok_or_else(|| format!("creating {shown}: panicked"))?.map_err(|e| format!("creating {shown}: {e}"))
        };
        let (pvc, pv) = volumes::claim(&self.ctx.client, ns, claim).await?;
        if let Some(pv) = pv {
            let p = volumes::pv_path(&pv)
                .ok_or_else(|| format!("volume of claim {claim} has no host path this node can mount"))?;
            return create_dir(p).await;
        }
        let class = pvc.spec.as_ref().and_then(|s| s.storage_class_name.clone()).unwrap_or_default();
        if class != "local-path" && !class.is_empty() {
            return Err(format!("pod has unbound immediate PersistentVolumeClaims ({claim}, storage class {class})"));
        }
        // Provision on this node and bind.
        let pv = volumes::local_path_volume(&pvc, &self.ctx.node.name, &self.ctx.paths.root().join("local-path"));
        let path = create_dir(volumes::pv_path(&pv).ok_or("no path")?).await?;
        let pvs: Api<PersistentVolume> = Api::all(self.ctx.client.clone());
        match pvs.create(&PostParams::default(), &pv).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(format!("creating the volume for claim {claim}: {e}")),
        }
        let pv_name = pv.metadata.name.clone().unwrap_or_default();
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(self.ctx.client.clone(), ns);
        let bind = Patch::Merge(serde_json::json!({"spec": {"volumeName": pv_name}}));
        pvcs.patch(claim, &PatchParams::default(), &bind).await.map_err(|e| format!("binding claim {claim}: {e}"))?;
        let bound = Patch::Merge(serde_json::json!({"status": {
            "phase": "Bound",
            "accessModes": pvc.spec.as_ref().and_then(|s| s.access_modes.clone()),
            "capacity": pv.spec.as_ref().and_then(|s| s.capacity.clone()),
        }}));
        if let Err(e) = pvcs.patch_status(claim, &PatchParams::default(), &bound).await {
            tracing::warn!(claim, error = %e, "marking the claim Bound failed");
        }
        let phase = Patch::Merge(serde_json::json!({"status": {"phase": "Bound"}}));
        if let Err(e) = pvs.patch_status(&pv_name, &PatchParams::default(), &phase).await {
            tracing::warn!(volume = %pv_name, error = %e, "marking the volume Bound failed");
        }
        Ok(path)
    }

    /// Rewrites configMap/secret/projected/downwardAPI volumes whose content changed (atomic swap).
    pub(super) async fn refresh_volumes(&mut self) {
        if let Ok(paths) = self.try_prepare_volumes().await {
            self.volume_paths = paths;
        }
    }
}
