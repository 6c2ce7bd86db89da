//! A minimal standalone binary of the ingress for profiling builds that link only this crate:
//! `standalone ingress --from-file F --http-addr A --https-addr B --metrics-addr C [--threads N] [--access-log off]`
//! (the flags `scripts/bench-ingress` passes to `skiff ingress`; unknown flags are ignored).

use std::path::PathBuf;

use skiff_ingress::IngressConfig;
use skiff_ingress::config::AccessLog;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let mut config = IngressConfig::default();
    if let Some(v) = flag("--http-addr") {
        config.http_addr = v;
    }
    config.https_addr = flag("--https-addr");
    config.metrics_addr = flag("--metrics-addr");
    if let Some(v) = flag("--threads") {
        config.threads = v.parse()?;
    }
    if flag("--access-log").as_deref() == Some("off") {
        config.access_log = AccessLog::Off;
    }
    if let Some(v) = flag("--pid-file") {
        config.pid_file = v.into();
    }
    if let Some(v) = flag("--upgrade-sock") {
        config.upgrade_sock = v.into();
    }
    let file: PathBuf = flag("--from-file").ok_or("--from-file is required")?.into();
    skiff_ingress::run_from_file(file, config)?;
    Ok(())
}
