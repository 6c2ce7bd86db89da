//! `skiff image`: the node's image store (an OCI image layout shared by every agent on the machine) — import
//! `docker save` and OCI archives, list, pull from a registry, remove a name.

use std::path::PathBuf;

use anyhow::Context as _;
use skiff_agent::config;
use skiff_agent::images::{Images, Reference};

/// Flags of `skiff image`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image store.
    #[arg(long, global = true, default_value = config::DEFAULT_IMAGE_STORE)]
    image_store: PathBuf,
    #[command(subcommand)]
    command: Sub,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Import a `docker save` archive or an OCI archive (tar, optionally gzip-compressed).
    Import {
        /// The archive.
        file: PathBuf,
        /// Name for an image the archive leaves unnamed (or a new name for its only image).
        #[arg(long)]
        tag: Option<String>,
    },
    /// List the images.
    #[command(alias = "list")]
    Ls,
    /// Pull an image from a registry.
    Pull {
        /// The image reference.
        reference: String,
        /// A registry reached over plain HTTP (`host:port`; repeatable; localhost is always).
        #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
        insecure_registries: Vec<String>,
    },
    /// Remove an image's name (its content stays until nothing names it).
    Rm {
        /// The image reference.
        reference: String,
    },
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1}GB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1}MB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1}kB", b as f64 / 1024.0),
        b => format!("{b}B"),
    }
}

/// Runs `skiff image`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let store = std::path::absolute(&args.image_store)?;
    match args.command {
        Sub::Import { file, tag } => {
            let images = Images::open(&store, vec![])?;
            let names = skiff_agent::images::archive::import(images.store(), &file, tag.as_deref())
                .with_context(|| format!("importing {}", file.display()))?;
            for n in names {
                println!("imported {n}");
            }
            Ok(())
        }
        Sub::Ls => {
            let images = Images::open(&store, vec![])?;
            let mut list = images.store().list()?;
            list.sort_by(|a, b| a.reference.cmp(&b.reference));
            println!("{:<50} {:<20} {:<14} {:>8}", "IMAGE", "TAG", "IMAGE ID", "SIZE");
            for img in list {
                let r = Reference::parse(&img.reference)?;
                let id = img.config_digest.trim_start_matches("sha256:").chars().take(12).collect::<String>();
                println!(
                    "{:<50} {:<20} {:<14} {:>8}",
                    r.name(),
                    r.tag.clone().unwrap_or_else(|| "<none>".into()),
                    id,
                    human(img.size)
                );
            }
            Ok(())
        }
        Sub::Pull { reference, insecure_registries } => {
            let images = Images::open(&store, insecure_registries)?;
            super::runtime()?.block_on(async move {
                let (img, how) = images.ensure(&reference, Some("Always")).await?;
                println!("{} {} ({how:?})", img.reference, img.manifest_digest);
                Ok(())
            })
        }
        Sub::Rm { reference } => {
            let images = Images::open(&store, vec![])?;
            let name = Reference::parse(&reference)?.to_string();
            if !images.store().untag(&name)? {
                anyhow::bail!("no image named {name}");
            }
            println!("untagged {name}");
            Ok(())
        }
    }
}
