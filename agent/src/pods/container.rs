//! A container's runtime configuration from the pod spec, as a pure function of already-resolved inputs (image,
//! environment, volume paths, user): bind mounts for volumeMounts (with subPath) and the pod's `/etc` files, limits
//! from resources, security context.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};
use skiff_api::quantity::Quantity;

use crate::runtime::seccomp;
use crate::runtime::spec::{BindMount, ContainerConfig, Limits};

/// Files of the pod directory that every container mounts.
#[derive(Clone, Debug)]
pub struct PodFiles {
    /// /etc/hosts.
    pub hosts: PathBuf,
    /// /etc/resolv.conf.
    pub resolv: PathBuf,
    /// /etc/hostname.
    pub hostname: PathBuf,
}

/// Resolved inputs of one container run.
#[derive(Clone, Debug)]
pub struct RunInputs<'a> {
    /// argv.
    pub args: Vec<String>,
    /// Environment.
    pub env: Vec<(String, String)>,
    /// Image working directory.
    pub image_workdir: Option<String>,
    /// uid, gid.
    pub user: (u32, u32),
    /// Volume name → host path.
    pub volumes: &'a BTreeMap<String, PathBuf>,
    /// The pod's /etc files.
    pub files: &'a PodFiles,
    /// The termination-log file for this run.
    pub termination_log: &'a Path,
    /// Root file system.
    pub rootfs: PathBuf,
    /// Network namespace (`None` for hostNetwork: the agent's own).
    pub netns: Option<PathBuf>,
    /// Relative cgroup path.
    pub cgroups_path: String,
    /// Whether containers without a seccomp profile get `RuntimeDefault`.
    pub seccomp_default: bool,
    /// Where `Localhost` seccomp profiles are.
    pub seccomp_dir: &'a Path,
}

fn quantity(c: &Container, kind: &str, res: &str) -> Option<Quantity> {
    let r = c.resources.as_ref()?;
    let m = if kind == "limits" { r.limits.as_ref()? } else { r.requests.as_ref()? };
    m.get(res)?.0.parse().ok()
}

/// Limits from the container's resources.
pub fn limits(c: &Container) -> Limits {
    Limits {
        memory: quantity(c, "limits", "memory").map(|q| q.as_units()).filter(|m| *m > 0),
        cpu_limit_milli: quantity(c, "limits", "cpu").map(|q| q.as_milli()).filter(|m| *m > 0),
        cpu_request_milli: quantity(c, "requests", "cpu").map(|q| q.as_milli()).filter(|m| *m > 0),
    }
}

/// Checks a subPath (relative, no `..`).
pub fn valid_sub_path(p: &str) -> bool {
    !Path::new(p).is_absolute() && !Path::new(p).components().any(|c| matches!(c, std::path::Component::ParentDir))
}

/// The runtime configuration.
pub fn config(pod: &Pod, c: &Container, inp: &RunInputs<'_>) -> Result<ContainerConfig, String> {
    let spec = pod.spec.clone().unwrap_or_default();
    if spec.host_users == Some(false) {
        return Err("hostUsers: false (a user namespace per pod) is not supported by this node: its volumes would \
                    need idmapped mounts, which Skiff's agent does not make yet"
            .into());
    }
    let mut mounts = Vec::new();
    let mounted = |dest: &str, mounts: &[BindMount]| mounts.iter().any(|m| m.destination == dest);
    for vm in c.volume_mounts.clone().unwrap_or_default() {
        let base =
            inp.volumes.get(&vm.name).ok_or_else(|| format!("volume {:?} not found in the pod's volumes", vm.name))?;
        let source = match vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) if valid_sub_path(sub) => {
                let p = base.join(sub);
                if !p.exists() {
                    std::fs::create_dir_all(&p).map_err(|e| format!("creating subPath {sub}: {e}"))?;
                }
                p
            }
            Some(sub) => return Err(format!("invalid subPath {sub:?}")),
            None => base.clone(),
        };
        mounts.push(BindMount { source, destination: vm.mount_path.clone(), read_only: vm.read_only == Some(true) });
    }
    for (dest, src) in [
        ("/etc/hosts", &inp.files.hosts),
        ("/etc/resolv.conf", &inp.files.resolv),
        ("/etc/hostname", &inp.files.hostname),
    ] {
        if !mounted(dest, &mounts) {
            mounts.push(BindMount { source: src.clone(), destination: dest.into(), read_only: false });
        }
    }
    let tlog = c.termination_message_path.clone().unwrap_or_else(|| "/dev/termination-log".into());
    if !mounted(&tlog, &mounts) {
        mounts.push(BindMount { source: inp.termination_log.to_path_buf(), destination: tlog, read_only: false });
    }
    let sc = c.security_context.clone().unwrap_or_default();
    let caps = sc.capabilities.clone().unwrap_or_default();
    let privileged = sc.privileged == Some(true);
    let supplemental: Vec<u32> = spec
        .security_context
        .as_ref()
        .and_then(|s| s.supplemental_groups.clone())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|g| u32::try_from(g).ok())
        .collect();
    let workdir = c
        .working_dir
        .clone()
        .filter(|w| !w.is_empty())
        .or_else(|| inp.image_workdir.clone().filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".into());
    let mut cfg = ContainerConfig {
        args: inp.args.clone(),
        env: inp.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        cwd: workdir,
        user: (inp.user.0, inp.user.1, supplemental),
        hostname: super::etc::hostname(pod),
        rootfs: inp.rootfs.clone(),
        readonly_rootfs: sc.read_only_root_filesystem == Some(true),
        mounts,
        netns: inp.netns.clone(),
        cgroups_path: inp.cgroups_path.clone(),
        limits: limits(c),
        cap_add: caps.add.unwrap_or_default(),
        cap_drop: caps.drop.unwrap_or_default(),
        privileged,
        no_new_privileges: sc.allow_privilege_escalation == Some(false),
        terminal: c.tty == Some(true),
        oom_score_adj: match super::status::qos_class(&spec) {
            "Guaranteed" => -997,
            "BestEffort" => 1000,
            _ => 500,
        },
        seccomp: None,
    };
    let pod_sc = spec.security_context.as_ref().and_then(|s| serde_json::to_value(s).ok());
    let container_sc = c.security_context.as_ref().and_then(|s| serde_json::to_value(s).ok());
    cfg.seccomp = match seccomp::choose(pod_sc.as_ref(), container_sc.as_ref(), privileged, inp.seccomp_default) {
        seccomp::Profile::Unconfined => None,
        seccomp::Profile::RuntimeDefault => {
            Some(seccomp::runtime_default(&crate::runtime::spec::capabilities(&cfg), seccomp::host_arch()))
        }
        seccomp::Profile::Localhost(name) => Some(seccomp::localhost(inp.seccomp_dir, &name)?),
    };
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements, VolumeMount};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity as Q;

    fn inputs<'a>(volumes: &'a BTreeMap<String, PathBuf>, files: &'a PodFiles, tlog: &'a Path) -> RunInputs<'a> {
        RunInputs {
            args: vec!["sh".into()],
            env: vec![("A".into(), "1".into())],
            image_workdir: Some("/app".into()),
            user: (0, 0),
            volumes,
            files,
            termination_log: tlog,
            rootfs: "/r".into(),
            netns: Some("/n".into()),
            cgroups_path: "skiff/podu/c".into(),
            seccomp_default: false,
            seccomp_dir: Path::new("/nonexistent"),
        }
    }

    #[test]
    fn volume_mounts_and_pod_files_become_bind_mounts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let vols: BTreeMap<String, PathBuf> = [("data".to_string(), dir.path().to_path_buf())].into();
        let files = PodFiles { hosts: "/p/hosts".into(), resolv: "/p/resolv".into(), hostname: "/p/hostname".into() };
        let pod = Pod { spec: Some(PodSpec::default()), ..Default::default() };
        let c = Container {
            name: "c".into(),
            volume_mounts: Some(vec![
                VolumeMount {
                    name: "data".into(),
                    mount_path: "/data".into(),
                    read_only: Some(true),
                    ..Default::default()
                },
                VolumeMount {
                    name: "data".into(),
                    mount_path: "/sub".into(),
                    sub_path: Some("x/y".into()),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        let cfg = config(&pod, &c, &inputs(&vols, &files, Path::new("/p/tlog"))).expect("config");
        let dests: Vec<&str> = cfg.mounts.iter().map(|m| m.destination.as_str()).collect();
        assert_eq!(
            dests,
            vec!["/data", "/sub", "/etc/hosts", "/etc/resolv.conf", "/etc/hostname", "/dev/termination-log"]
        );
        assert!(cfg.mounts[0].read_only);
        assert!(dir.path().join("x/y").is_dir(), "subPath directories are created");
        assert_eq!(cfg.cwd, "/app");
    }

    #[test]
    fn bad_sub_paths_and_unknown_volumes_are_errors() {
        let vols: BTreeMap<String, PathBuf> = [("data".to_string(), PathBuf::from("/tmp"))].into();
        let files = PodFiles { hosts: "/h".into(), resolv: "/r".into(), hostname: "/n".into() };
        let pod = Pod::default();
        let escape = Container {
            volume_mounts: Some(vec![VolumeMount {
                name: "data".into(),
                mount_path: "/x".into(),
                sub_path: Some("../etc".into()),
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert!(config(&pod, &escape, &inputs(&vols, &files, Path::new("/t"))).is_err());
        let unknown = Container {
            volume_mounts: Some(vec![VolumeMount {
                name: "nope".into(),
                mount_path: "/x".into(),
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert!(config(&pod, &unknown, &inputs(&vols, &files, Path::new("/t"))).is_err());
    }

    #[test]
    fn resources_become_limits() {
        let c = Container {
            resources: Some(ResourceRequirements {
                limits: Some([("memory".to_string(), Q("32Mi".into())), ("cpu".to_string(), Q("500m".into()))].into()),
                requests: Some([("cpu".to_string(), Q("100m".into()))].into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            limits(&c),
            Limits { memory: Some(32 << 20), cpu_limit_milli: Some(500), cpu_request_milli: Some(100) }
        );
    }
}
