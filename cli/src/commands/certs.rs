//! `skiff certs`: when the API server's certificates expire, and renewing them now.

use std::path::PathBuf;

use skiff_control::pki;

/// Flags of `skiff certs`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
    /// The server's data directory.
    #[arg(long, global = true, default_value = "/var/lib/skiff/server")]
    data_dir: PathBuf,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Print each certificate's expiry and whether it is due for renewal (servers renew due ones by themselves,
    /// at start and every minute).
    Check,
    /// Renew the API server's serving certificate and the admin client certificate now, with the same CA. A
    /// running server serves the new ones within a minute and rewrites `<data dir>/kubeconfig`.
    Rotate,
}

fn describe(dir: &std::path::Path) -> anyhow::Result<()> {
    let now = jiff::Timestamp::now().as_second();
    for name in ["ca", "apiserver", "admin"] {
        let path = dir.join(format!("{name}.crt"));
        let pem = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let (from, to) =
            pki::validity_of(&pem).ok_or_else(|| anyhow::anyhow!("{}: not a certificate", path.display()))?;
        let when = jiff::Timestamp::from_second(to).map(|t| t.to_string()).unwrap_or_default();
        let state = if to <= now {
            "EXPIRED"
        } else if pki::needs_renewal(from, to, now) {
            "due for renewal"
        } else {
            "ok"
        };
        println!("{name:<10} expires {when}  {state}");
    }
    Ok(())
}

/// Runs the action.
pub fn run(args: Args) -> anyhow::Result<()> {
    let dir = args.data_dir.join("pki");
    match args.action {
        Action::Check => describe(&dir),
        Action::Rotate => {
            let names_file = dir.join("apiserver.names");
            let names: Vec<String> = std::fs::read_to_string(&names_file)
                .map_err(|e| anyhow::anyhow!("{}: {e} (is this a server's data directory?)", names_file.display()))?
                .trim()
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            pki::rotate_certificates(&dir, &names)?;
            eprintln!(
                "renewed the serving and admin certificates (same CA); a running server uses them within a minute"
            );
            describe(&dir)
        }
    }
}
