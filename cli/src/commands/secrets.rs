//! `skiff secrets rotate-key`: a new Secret encryption key, and every Secret re-encrypted with it.

use std::path::PathBuf;
use std::time::Duration;

use skiff_control::server::ServerConfig;

/// Flags of `skiff secrets`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Add a new encryption key (first in `<data dir>/pki/encryption-keys`, so it seals from now on; the old keys
    /// still open) and re-encrypt every Secret with it. Stop every server of the cluster first; each adopts the new
    /// key from the datastore when it starts again.
    RotateKey {
        /// The server's data directory.
        #[arg(long, default_value = "/var/lib/skiff/server")]
        data_dir: PathBuf,
        /// `sqlite` or `etcd://host:2379[,host:2379…]`, as given to `skiff server`.
        #[arg(long, default_value = "sqlite")]
        datastore: String,
        #[command(flatten)]
        etcd_tls: super::server::EtcdTlsArgs,
        /// The cluster's server token (default: `<data dir>/pki/server-token`): the new key is added to the
        /// cluster's shared secrets in the datastore, which the other servers adopt when they start.
        #[arg(long, env = "SKIFF_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

/// Runs the action.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.action {
        Action::RotateKey { data_dir, datastore, etcd_tls, token } => {
            let cfg = ServerConfig {
                data_dir,
                listen: ([127, 0, 0, 1], 0).into(),
                advertise: None,
                extra_names: Vec::new(),
                datastore: super::server::datastore(&datastore, &etcd_tls)?,
                token,
                compaction_interval: Duration::from_secs(300),
                event_ttl: Duration::from_secs(3600),
                controllers: None,
                limits: Default::default(),
            };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (name, n) = rt.block_on(skiff_control::server::rotate_encryption_key(&cfg))?;
            eprintln!("new encryption key {name:?}; {n} Secrets re-encrypted with it");
            Ok(())
        }
    }
}
