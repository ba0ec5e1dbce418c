//! Where the server's configuration comes from: `--config FILE` (or `COMFYUME_CONFIG`), `COMFYUME_…`
//! variables and flags, the same for `serve`, `users` and `config check`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use comfyume_server::ServerError;
use comfyume_server::config::{Overrides, ServerConfig};

use comfyume_cli::exit::Fail;

/// The configuration file and the data directory.
#[derive(Clone, Debug, Args)]
pub struct ConfigArgs {
    /// The configuration file (TOML, see comfyume.example.toml). Without one: the defaults and
    /// COMFYUME_… environment variables.
    #[arg(
        long,
        short = 'c',
        env = "COMFYUME_CONFIG",
        value_name = "FILE",
        global = true
    )]
    pub config: Option<PathBuf>,
    /// Where the job store, the credentials and every user's outputs live (overrides `data_dir`).
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
}

impl ConfigArgs {
    /// Loads and validates the configuration; an invalid one is a usage error (exit 2) that names the
    /// key and the file.
    pub fn load(&self, listen: Option<SocketAddr>) -> anyhow::Result<ServerConfig> {
        let overrides = Overrides {
            listen,
            data_dir: self.data_dir.clone(),
        };
        ServerConfig::load(self.config.as_deref(), &overrides).map_err(|e| match e {
            ServerError::Config(message) => Fail::usage(message),
            other => anyhow::Error::new(other),
        })
    }

    /// Where the configuration came from, for a person.
    pub fn source(&self) -> String {
        match &self.config {
            Some(path) => path.display().to_string(),
            None => "defaults and COMFYUME_… variables (no --config file)".to_string(),
        }
    }
}
