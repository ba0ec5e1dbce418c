//! Reading a new password: from a no-echo prompt (asked twice), or one line of standard input for
//! scripts (`--password-stdin`).

use std::io::{BufRead, IsTerminal};

use anyhow::Context;
use comfyume_server::auth::credentials::MIN_PASSWORD_LEN;

use comfyume_cli::exit::Fail;

/// A new password for `user`.
pub fn new_password(user: &str, from_stdin: bool) -> anyhow::Result<String> {
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        line.trim_end_matches(['\n', '\r']).to_string()
    } else if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("new password for {user}: "))
            .context("reading the password")?;
        let again = rpassword::prompt_password("again: ").context("reading the password")?;
        if first != again {
            return Err(Fail::usage("the two passwords differ; nothing was changed"));
        }
        first
    } else {
        return Err(Fail::usage(
            "no terminal to ask for a password: pass --password-stdin and write it to standard input",
        ));
    };
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(Fail::usage(format!(
            "the password is too short: use at least {MIN_PASSWORD_LEN} characters"
        )));
    }
    Ok(password)
}
