//! `skiff secrets`: rotate the Secret encryption key (every Secret re-encrypted with the new one), retire an old
//! key, rotate the server token the cluster's shared secrets are sealed with. Each runs with the servers stopped.

use std::path::PathBuf;
use std::time::Duration;

use skiff_control::server::ServerConfig;

/// Flags of `skiff secrets`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

/// Where the offline commands find the cluster (the flags `skiff server` was started with).
#[derive(Debug, clap::Args)]
struct Target {
    /// The server's data directory.
    #[arg(long, default_value = "/var/lib/skiff/server")]
    data_dir: PathBuf,
    /// `sqlite` or `etcd://host:2379[,host:2379…]`, as given to `skiff server`.
    #[arg(long, default_value = "sqlite")]
    datastore: String,
    #[command(flatten)]
    etcd_tls: super::server::EtcdTlsArgs,
    /// The cluster's server token (default: `<data dir>/pki/server-token`): it opens the cluster's shared secrets in
    /// the datastore, which the other servers adopt when they start.
    #[arg(long, env = "SKIFF_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl Target {
    fn config(self) -> anyhow::Result<ServerConfig> {
        Ok(ServerConfig {
            data_dir: self.data_dir,
            listen: ([127, 0, 0, 1], 0).into(),
            advertise: None,
            extra_names: Vec::new(),
            datastore: super::server::datastore(&self.datastore, &self.etcd_tls)?,
            token: self.token,
            compaction_interval: Duration::from_secs(300),
            event_ttl: Duration::from_secs(3600),
            controllers: None,
            limits: Default::default(),
        })
    }
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Add a new encryption key (first in `<data dir>/pki/encryption-keys`, so it seals from now on; the old keys
    /// still open) and re-encrypt every Secret with it. Stop every server of the cluster first; each adopts the new
    /// key from the datastore when it starts again.
    RotateKey {
        #[command(flatten)]
        target: Target,
    },
    /// Remove an old encryption key from the cluster (after `rotate-key` re-encrypted every Secret away from it).
    /// Refused for the sealing key and while any Secret is still sealed with the key. Stop every server first.
    RetireKey {
        /// The key's name (the first field of its line in `<data dir>/pki/encryption-keys`).
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Seal the cluster's shared secrets under a new server token and write it to `<data dir>/pki/server-token`.
    /// Stop every server first; start the others again with `--token <new token>`.
    RotateToken {
        /// The new token (default: a new random one, printed).
        #[arg(long, env = "SKIFF_NEW_TOKEN", hide_env_values = true)]
        new_token: Option<String>,
        #[command(flatten)]
        target: Target,
    },
}

/// Runs the action.
pub fn run(args: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match args.action {
        Action::RotateKey { target } => {
            let (name, n) = rt.block_on(skiff_control::server::rotate_encryption_key(&target.config()?))?;
            eprintln!("new encryption key {name:?}; {n} Secrets re-encrypted with it");
        }
        Action::RetireKey { name, target } => {
            let left = rt.block_on(skiff_control::server::retire_encryption_key(&target.config()?, &name))?;
            eprintln!("encryption key {name:?} retired; the cluster's keys are now {left:?}");
        }
        Action::RotateToken { new_token, target } => {
            let generated = new_token.is_none();
            let token = rt.block_on(skiff_control::server::rotate_server_token(&target.config()?, new_token))?;
            eprintln!(
                "the cluster's secrets are sealed under the new server token (saved to <data dir>/pki/server-token)"
            );
            if generated {
                eprintln!("start the other servers with: --token {token}");
            }
        }
    }
    Ok(())
}
