//! How client commands reach the server: `--url`, and a token or a user name and password.

use std::io::IsTerminal;

use clap::Args;

use comfyume_cli::client::Client;
use comfyume_cli::exit::Fail;

/// The server and credentials, shared by every client command.
#[derive(Clone, Debug, Args)]
pub struct ClientArgs {
    /// The comfyume server.
    #[arg(
        long,
        env = "COMFYUME_URL",
        default_value = "http://127.0.0.1:8190",
        global = true
    )]
    pub url: String,
    /// An API token (an admin makes one with `comfyume users token NAME`) or a session token.
    #[arg(long, env = "COMFYUME_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Log in as this user instead of using a token; the password comes from COMFYUME_PASSWORD or a
    /// prompt.
    #[arg(long, value_name = "NAME", global = true)]
    pub user: Option<String>,
}

impl ClientArgs {
    /// A client with these credentials (logging in first with `--user`).
    pub async fn connect(&self) -> anyhow::Result<Client> {
        if let Some(user) = &self.user {
            let password = match std::env::var("COMFYUME_PASSWORD") {
                Ok(p) if !p.is_empty() => p,
                _ if std::io::stdin().is_terminal() => {
                    rpassword::prompt_password(format!("password for {user}: "))
                        .map_err(|e| Fail::connection(format!("cannot read the password: {e}")))?
                }
                _ => {
                    return Err(Fail::connection(format!(
                        "no password for {user}: set COMFYUME_PASSWORD or run in a terminal to be asked"
                    )));
                }
            };
            return Ok(Client::login(&self.url, user, &password).await?);
        }
        match &self.token {
            Some(token) if !token.trim().is_empty() => Ok(Client::new(&self.url, token.trim())?),
            _ => Err(Fail::connection(
                "no credentials: pass --token or set COMFYUME_TOKEN (an admin makes one with `comfyume users \
                 token NAME`), or log in with --user NAME",
            )),
        }
    }
}
