//! `comfyume users …`: edit the credentials file the configuration names (a running server picks the
//! change up within seconds).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use comfyume_core::UserId;
use comfyume_server::auth::credentials::Credentials;

use crate::password::new_password;
use crate::settings::ConfigArgs;
use comfyume_cli::exit::Fail;

/// Options of `comfyume users`.
#[derive(Debug, Args)]
pub struct UsersArgs {
    #[command(subcommand)]
    pub command: UsersCommand,
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// What to do with the users.
#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Add a user (asks for the password, or reads it with --password-stdin).
    Add {
        /// The user name (1-64 of A-Z a-z 0-9 _ - .).
        name: String,
        /// Make them an admin (sees and steers everyone's jobs).
        #[arg(long)]
        admin: bool,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove a user; their sessions and tokens stop working.
    Remove {
        /// The user name.
        name: String,
    },
    /// Set a new password; every browser session of the user ends.
    Passwd {
        /// The user name.
        name: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Make a user an admin, or with --revoke take it away.
    Admin {
        /// The user name.
        name: String,
        /// Take admin rights away instead.
        #[arg(long)]
        revoke: bool,
    },
    /// Issue an API token for the command line; it is printed once (only its hash is kept).
    Token {
        /// The user name.
        name: String,
        /// What the token is for, to tell tokens apart.
        #[arg(long, default_value = "cli")]
        label: String,
    },
    /// Revoke every API token of a user.
    RevokeTokens {
        /// The user name.
        name: String,
    },
    /// Add the users of an Apache htpasswd file of bcrypt hashes (`htpasswd -B`), as non-admins.
    Import {
        /// The htpasswd file.
        file: PathBuf,
    },
    /// List the users.
    List,
}

fn user(name: &str) -> anyhow::Result<UserId> {
    UserId::new(name).map_err(|e| Fail::usage(e.to_string()))
}

fn load(path: &Path) -> anyhow::Result<Credentials> {
    if !path.exists() {
        return Err(Fail::usage(format!(
            "no credentials file at {} (`comfyume serve` creates it on its first start, `comfyume users add` \
             too)",
            path.display()
        )));
    }
    Ok(Credentials::load(path)?)
}

/// A credentials error (no such user, name taken, password too short) is the caller's mistake.
fn edit<T>(result: Result<T, comfyume_server::ServerError>) -> anyhow::Result<T> {
    result.map_err(|e| Fail::usage(e.to_string()))
}

/// `comfyume users …`.
pub fn run(args: UsersArgs) -> anyhow::Result<()> {
    let config = args.config.load(None)?;
    let path = config.credentials_path();
    let picked_up = "(a running server picks this up within seconds)";
    match args.command {
        UsersCommand::Add {
            name,
            admin,
            password_stdin,
        } => {
            let name = user(&name)?;
            let mut creds = Credentials::load_or_new(&path)?;
            if creds.user(name.as_str()).is_some() {
                return Err(Fail::usage(format!("user '{name}' already exists")));
            }
            let password = new_password(name.as_str(), password_stdin)?;
            edit(creds.add_user(&name, &password, admin))?;
            creds.save(&path)?;
            let role = if admin { "admin" } else { "user" };
            eprintln!("added {role} {name} to {} {picked_up}", path.display());
        }
        UsersCommand::Remove { name } => {
            let name = user(&name)?;
            let mut creds = load(&path)?;
            edit(creds.remove_user(&name))?;
            creds.save(&path)?;
            eprintln!("removed {name} {picked_up}");
            if !creds.has_admin() {
                eprintln!("note: no admin is left; make one with `comfyume users admin NAME`");
            }
        }
        UsersCommand::Passwd { name, password_stdin } => {
            let name = user(&name)?;
            let mut creds = load(&path)?;
            if creds.user(name.as_str()).is_none() {
                return Err(Fail::usage(format!("no user '{name}'")));
            }
            let password = new_password(name.as_str(), password_stdin)?;
            edit(creds.set_password(&name, &password))?;
            creds.save(&path)?;
            eprintln!("new password set for {name}; their browser sessions ended {picked_up}");
        }
        UsersCommand::Admin { name, revoke } => {
            let name = user(&name)?;
            let mut creds = load(&path)?;
            edit(creds.set_admin(&name, !revoke))?;
            creds.save(&path)?;
            match revoke {
                true => eprintln!("{name} is no longer an admin {picked_up}"),
                false => eprintln!("{name} is an admin {picked_up}"),
            }
        }
        UsersCommand::Token { name, label } => {
            let name = user(&name)?;
            let mut creds = load(&path)?;
            let token = edit(creds.issue_token(&name, &label))?;
            creds.save(&path)?;
            println!("{token}");
            eprintln!(
                "API token '{label}' for {name}, shown only this once. Use it with COMFYUME_TOKEN=<token> or \
                 --token; revoke with `comfyume users revoke-tokens {name}` {picked_up}"
            );
        }
        UsersCommand::RevokeTokens { name } => {
            let name = user(&name)?;
            let mut creds = load(&path)?;
            let n = edit(creds.revoke_tokens(&name))?;
            creds.save(&path)?;
            eprintln!("revoked {n} token(s) of {name} {picked_up}");
        }
        UsersCommand::Import { file } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| Fail::usage(format!("cannot read {}: {e}", file.display())))?;
            let mut creds = Credentials::load_or_new(&path)?;
            let imported = edit(creds.import_htpasswd(&text))
                .with_context(|| format!("importing {}", file.display()))?;
            creds.save(&path)?;
            eprintln!(
                "imported {} user(s) from {}: {} {picked_up}",
                imported.len(),
                file.display(),
                imported.join(", ")
            );
        }
        UsersCommand::List => {
            let creds = load(&path)?;
            let width = creds.users.keys().map(String::len).max().unwrap_or(4).max(4);
            println!("{:<width$}  {:<5}  TOKENS", "USER", "ADMIN");
            for (name, entry) in &creds.users {
                let labels: Vec<&str> = entry.tokens.iter().map(|t| t.label.as_str()).collect();
                let tokens = match labels.len() {
                    0 => "-".to_string(),
                    n => format!("{n} ({})", labels.join(", ")),
                };
                let admin = if entry.admin { "yes" } else { "no" };
                println!("{name:<width$}  {admin:<5}  {tokens}");
            }
        }
    }
    Ok(())
}
