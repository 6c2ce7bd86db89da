//! End-to-end support: a three-node Skiff cluster in network namespaces (from `skiff_testkit::cluster`) with the
//! eBPF Service load balancer on every node, the ingress controller on the first node and a client namespace;
//! plus the client side of the scenarios — an HTTP load generator running inside the client namespace, waits with
//! limits, and failure messages that carry the cluster's logs.
//!
//! The scenarios themselves are the integration tests of this crate (`tests/tests/*.rs`), one file per group,
//! each building its own cluster and removing it (namespaces, processes, containers, cgroups, BPF pins) on drop.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub use skiff_testkit::cluster::{CLIENT_IP, Cluster, ClusterConfig, wait_for};

/// The `skiff` binary of this build (next to the test executable's `deps` directory).
pub fn skiff_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile>");
    let skiff = dir.join("skiff");
    assert!(
        skiff.exists(),
        "{} is missing: build it first (`cargo build -p skiff`, scripts/test does)",
        skiff.display()
    );
    skiff
}

/// The repository's root (for `manifests/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("the repository root").to_path_buf()
}

/// A manifest of `manifests/`, read.
pub fn manifest(name: &str) -> String {
    let path = repo_root().join("manifests").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The whole product on `nodes` nodes, or `None` when not root and not in CI (in CI, not being root fails).
pub fn cluster(what: &str, nodes: usize) -> Option<Cluster> {
    if !skiff_testkit::require_privileges(what) {
        return None;
    }
    let index = std::fs::read_to_string("/var/lib/skiff/images/index.json").unwrap_or_default();
    assert!(
        index.contains("docker.io/skiff/echo:v1") && index.contains("docker.io/skiff/echo:v2"),
        "the built-in images are missing from /var/lib/skiff/images: run scripts/setup"
    );
    step(&format!("starting a {nodes}-node cluster (server, agents with the eBPF load balancer, ingress, client)"));
    let started = Instant::now();
    let c = Cluster::start(ClusterConfig::full(skiff_binary(), nodes)).expect("starting the cluster");
    step(&format!("cluster ready in {:.1} s ({})", started.elapsed().as_secs_f64(), c.dir.display()));
    Some(c)
}

/// Prints a step of a scenario.
pub fn step(what: &str) {
    eprintln!("--- {what}");
}

/// Fails with the cluster's recent logs attached.
pub fn fail(c: &Cluster, msg: &str) -> ! {
    panic!("{msg}\n\n{}", c.logs_tail(40));
}

/// `kubectl …` or fail with the logs.
pub fn kubectl(c: &Cluster, args: &[&str]) -> String {
    match c.kubectl_output(args, None) {
        Ok((true, out, _)) => out,
        Ok((false, out, err)) => fail(c, &format!("kubectl {args:?} failed: {out}{err}")),
        Err(e) => fail(c, &format!("kubectl {args:?}: {e}")),
    }
}

/// `kubectl apply -f -` or fail with the logs.
pub fn apply(c: &Cluster, yaml: &str) {
    if let Err(e) = c.apply(yaml) {
        fail(c, &format!("{e}\n{yaml}"));
    }
}

/// Waits with a limit or fails with the logs.
pub fn wait(c: &Cluster, limit: Duration, what: &str, f: impl FnMut() -> Option<()>) {
    if let Err(e) = wait_for(limit, what, f) {
        fail(c, &e.to_string());
    }
}

/// `kubectl exec POD -- argv` → (exit code, stdout).
pub fn exec(c: &Cluster, pod: &str, argv: &[&str]) -> (i32, String) {
    let mut args = vec!["exec", pod, "--"];
    args.extend_from_slice(argv);
    let mut cmd = c.server_ns.command("kubectl");
    cmd.arg("--kubeconfig").arg(&c.kubeconfig).args(&args);
    let out = cmd.output().expect("kubectl runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Names of the pods matching `selector` that are Ready.
pub fn ready_pods(c: &Cluster, selector: &str) -> Vec<String> {
    let jp = r#"{range .items[*]}{.metadata.name}{" "}{.status.conditions[?(@.type=="Ready")].status}{" "}{.metadata.deletionTimestamp}{"\n"}{end}"#;
    let out = c.kubectl(&["get", "pods", "-l", selector, "-o", &format!("jsonpath={jp}")]).unwrap_or_default();
    out.lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (name, ready, deleting) = (f.next()?, f.next()?, f.next().unwrap_or(""));
            (ready == "True" && deleting.is_empty()).then(|| name.to_string())
        })
        .collect()
}

/// One HTTP/1.1 request over a fresh connection: (status, body).
pub fn http_get(addr: SocketAddr, host: &str, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: skiff-e2e\r\nConnection: close\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| {
        std::io::Error::other(format!("not an HTTP response: {:?}", text.chars().take(80).collect::<String>()))
    })?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// The answer to one request of a [`Load`].
#[derive(Clone, Debug)]
pub struct Sample {
    /// When it was sent, from the start of the load.
    pub at: Duration,
    /// How long it took.
    pub took: Duration,
    /// The echo server's `version` and `pod`, or the error.
    pub result: Result<(String, String), String>,
}

/// Requests sent one after another from the client namespace until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<Sample>>>,
    /// When it started.
    pub started: Instant,
}

impl Load {
    /// Starts sending `GET path` with `Host: host` to `addr` from the cluster's client namespace, one request at a
    /// time with `pause` between them (each with a 2 s timeout). Bounded: it stops by itself after `limit`.
    pub fn start(c: &Cluster, addr: SocketAddr, host: &str, path: &str, pause: Duration, limit: Duration) -> Load {
        Self::start_with_timeout(c, addr, host, path, pause, limit, Duration::from_secs(2))
    }

    /// [`Load::start`] with each request's timeout (connect, then each read and write) set to `timeout`.
    pub fn start_with_timeout(
        c: &Cluster,
        addr: SocketAddr,
        host: &str,
        path: &str,
        pause: Duration,
        limit: Duration,
        timeout: Duration,
    ) -> Load {
        let ns = c.client.as_ref().expect("a client namespace").path().to_path_buf();
        let stop = Arc::new(AtomicBool::new(false));
        let (host, path, flag) = (host.to_string(), path.to_string(), stop.clone());
        let started = Instant::now();
        let thread = std::thread::spawn(move || {
            let file = std::fs::File::open(&ns).expect("opening the client namespace");
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("entering the client namespace");
            let mut out = Vec::new();
            while !flag.load(Ordering::Relaxed) && started.elapsed() < limit {
                let at = started.elapsed();
                let result = match http_get(addr, &host, &path, timeout) {
                    Ok((200, body)) => match serde_json::from_str::<serde_json::Value>(&body) {
                        Ok(v) => Ok((
                            v["version"].as_str().unwrap_or("").to_string(),
                            v["pod"].as_str().unwrap_or("").to_string(),
                        )),
                        Err(_) => Err(format!("200 with a body that is not the echo server's: {body:.80}")),
                    },
                    Ok((status, body)) => Err(format!("{status}: {body:.80}")),
                    Err(e) => Err(e.to_string()),
                };
                out.push(Sample { at, took: started.elapsed() - at, result });
                std::thread::sleep(pause);
            }
            out
        });
        Load { stop, thread: Some(thread), started }
    }

    /// Stops and returns every sample.
    pub fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map(|t| t.join().expect("the load thread")).unwrap_or_default()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The failed samples.
pub fn failures(samples: &[Sample]) -> Vec<&Sample> {
    samples.iter().filter(|s| s.result.is_err()).collect()
}

/// A one-line account of a load run, for the test's output.
pub fn summary(samples: &[Sample]) -> String {
    let failed = failures(samples);
    let slowest = samples.iter().map(|s| s.took).max().unwrap_or_default();
    let mut s = format!("{} requests, {} failed, slowest {:.2} s", samples.len(), failed.len(), slowest.as_secs_f64());
    if let (Some(first), Some(last)) = (failed.first(), failed.last()) {
        s.push_str(&format!(
            " (between {:.2} s and {:.2} s; first: {:?})",
            first.at.as_secs_f64(),
            last.at.as_secs_f64(),
            first.result
        ));
    }
    s
}
