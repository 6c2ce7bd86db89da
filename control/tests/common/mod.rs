//! A Skiff API server in-process on 127.0.0.1 with a temporary SQLite datastore, and the real kubectl pointed at it.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

pub mod simnode;

pub struct Cluster {
    pub server: skiff_control::server::RunningServer,
    pub dir: tempfile::TempDir,
    pub runtime: tokio::runtime::Runtime,
    /// The kubectl binary the helpers run (`kubectl`, the dispatcher, or a fixed version such as `kubectl.1.31`).
    pub kubectl_bin: &'static str,
    cache: PathBuf,
}

impl Cluster {
    pub fn start() -> Cluster {
        Self::start_with(Some(Default::default()))
    }

    /// Starts a cluster with these controller options (`None`: the API server alone).
    pub fn start_with(controllers: Option<skiff_control::controllers::manager::ManagerOptions>) -> Cluster {
        Self::start_full(controllers, Default::default())
    }

    /// Starts the API server alone with these limits.
    pub fn start_with_limits(limits: skiff_control::apiserver::limits::Limits) -> Cluster {
        Self::start_full(None, limits)
    }

    fn start_full(
        controllers: Option<skiff_control::controllers::manager::ManagerOptions>,
        limits: skiff_control::apiserver::limits::Limits,
    ) -> Cluster {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let dir = tempfile::tempdir().expect("temp dir");
        let cfg = skiff_control::server::ServerConfig {
            data_dir: dir.path().join("server"),
            listen: "127.0.0.1:0".parse().expect("address"),
            advertise: None,
            extra_names: Vec::new(),
            datastore: skiff_control::server::Datastore::Sqlite,
            token: None,
            compaction_interval: Duration::from_secs(300),
            event_ttl: Duration::from_secs(3600),
            controllers,
            limits,
        };
        let server = runtime.block_on(skiff_control::server::start(cfg)).expect("server starts");
        let cache = dir.path().join("kube-cache");
        Cluster { server, dir, runtime, kubectl_bin: "kubectl", cache }
    }

    /// A kube-rs client for the cluster.
    pub fn client(&self) -> kube::Client {
        self.runtime.block_on(skiff_client::connect(&self.server.kubeconfig)).expect("client")
    }

    /// Runs kubectl with the cluster's kubeconfig.
    pub fn kubectl_output(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut cmd = Command::new(self.kubectl_bin);
        cmd.env("KUBECONFIG", &self.server.kubeconfig).arg("--cache-dir").arg(&self.cache).args(args);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("kubectl runs (is it installed?)");
        if let Some(input) = stdin {
            child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
        } else {
            drop(child.stdin.take());
        }
        child.wait_with_output().expect("kubectl finishes")
    }

    /// Runs kubectl, expecting success; returns stdout.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = self.kubectl_output(args, None);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubectl with stdin, expecting success.
    pub fn kubectl_in(&self, args: &[&str], stdin: &str) -> String {
        let out = self.kubectl_output(args, Some(stdin));
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubectl expecting failure; returns stderr.
    pub fn kubectl_fails(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl_output(args, stdin);
        assert!(
            !out.status.success(),
            "kubectl {args:?} should have failed:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Runs kubectl with another kubeconfig: (success, stdout, stderr).
    pub fn kubectl_with(
        &self,
        kubeconfig: &std::path::Path,
        args: &[&str],
        stdin: Option<&str>,
    ) -> (bool, String, String) {
        let mut all = vec!["--kubeconfig", kubeconfig.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        let out = self.kubectl_output(&all, stdin);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A kubeconfig that authenticates with `token` only (no client certificate).
    pub fn token_kubeconfig(&self, name: &str, token: &str) -> PathBuf {
        let content = skiff_control::kubeconfig::render(
            "skiff",
            &self.server.url,
            &self.server.pki.ca.cert_pem,
            name,
            skiff_control::kubeconfig::Credential::Token(token),
        );
        let path = self.dir.path().join(format!("{name}.kubeconfig"));
        std::fs::write(&path, content).expect("writing a kubeconfig");
        path
    }

    /// A kubeconfig with a client certificate.
    pub fn cert_kubeconfig(&self, name: &str, cert_pem: &str, key_pem: &str) -> PathBuf {
        let content = skiff_control::kubeconfig::render(
            "skiff",
            &self.server.url,
            &self.server.pki.ca.cert_pem,
            name,
            skiff_control::kubeconfig::Credential::ClientCert { cert_pem, key_pem },
        );
        let path = self.dir.path().join(format!("{name}.kubeconfig"));
        std::fs::write(&path, content).expect("writing a kubeconfig");
        path
    }

    /// Creates a CertificateSigningRequest for `cn`/`orgs` as the holder of `kubeconfig`: (CSR name, key PEM).
    pub fn request_certificate(
        &self,
        kubeconfig: &std::path::Path,
        cn: &str,
        orgs: &[&str],
        signer: &str,
    ) -> (String, String) {
        use base64::Engine as _;
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        for o in orgs {
            p.distinguished_name.push(rcgen::DnType::OrganizationName, *o);
        }
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let pem = p.serialize_request(&key).expect("csr").pem().expect("pem");
        let name = format!("csr-{}", cn.replace(':', "-"));
        let yaml = format!(
            "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata: {{name: {name}}}\nspec:\n  request: {}\n  signerName: {signer}\n  usages: [digital signature, client auth]\n",
            base64::engine::general_purpose::STANDARD.encode(pem)
        );
        let out = self
            .kubectl_output(&["--kubeconfig", kubeconfig.to_str().expect("utf-8"), "create", "-f", "-"], Some(&yaml));
        assert!(out.status.success(), "creating {name}: {}", String::from_utf8_lossy(&out.stderr));
        (name, key.serialize_pem())
    }

    /// Waits (bounded) for the certificate of CSR `name`.
    pub fn issued_certificate(&self, name: &str) -> String {
        use base64::Engine as _;
        let mut cert = String::new();
        self.eventually(&format!("CSR {name} to be signed"), Duration::from_secs(20), || {
            let b64 = self.kubectl(&["get", "csr", name, "-o", "jsonpath={.status.certificate}"]);
            cert = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64.trim()).unwrap_or_default())
                .unwrap_or_default();
            !cert.is_empty()
        });
        cert
    }

    /// A kubeconfig for node `node` with its own certificate, obtained as an agent obtains it: a request made with
    /// the join token, approved and signed by the server.
    pub fn node_kubeconfig(&self, node: &str) -> PathBuf {
        let token = self.token_kubeconfig("bootstrap", &self.server.pki.node_token);
        let (csr, key) = self.request_certificate(
            &token,
            &format!("system:node:{node}"),
            &["system:nodes"],
            "kubernetes.io/kube-apiserver-client-kubelet",
        );
        let cert = self.issued_certificate(&csr);
        self.cert_kubeconfig(node, &cert, &key)
    }

    /// Parses `kubectl get … -o json`.
    pub fn get_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a: Vec<&str> = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.kubectl(&a)).expect("kubectl prints JSON")
    }

    /// Waits (bounded) until `check` holds.
    pub fn eventually(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if check() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out after {timeout:?} waiting for: {what}");
    }
}

/// The path of a fixed kubectl version (`1.31`), installed beside the `kubectl` dispatcher on these machines.
pub fn kubectl_version(minor: &str) -> &'static str {
    let path = skiff_testkit::kubectl_version(minor);
    Box::leak(path.to_string_lossy().into_owned().into_boxed_str())
}

/// One test per kubectl version the server supports (1.31, 1.32, 1.33), each running `$check` with that kubectl.
#[allow(unused_macros)]
macro_rules! per_kubectl_version {
    ($check:ident => $v31:ident, $v32:ident, $v33:ident) => {
        #[test]
        fn $v31() {
            $check(common::kubectl_version("1.31"));
        }

        #[test]
        fn $v32() {
            $check(common::kubectl_version("1.32"));
        }

        #[test]
        fn $v33() {
            $check(common::kubectl_version("1.33"));
        }
    };
}
