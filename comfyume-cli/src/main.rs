//! The `comfyume` command: the server (`serve`, `dev`), the client (`submit`, `watch`, `jobs`, `cancel`,
//! `outputs`), administration (`users`, `config check`), the simulated worker and load measurements.
//!
//! Thin by design: each command parses its options and calls the libraries (`comfyume-server`,
//! `comfyume-providers`) or the API client in `comfyume_cli::client`.

mod admin;
mod agent;
mod config_check;
mod connect;
mod dev;
mod frontend;
mod inputs;
mod jobs;
mod limits;
mod load;
mod loadtest;
mod logging;
mod outputs;
mod password;
mod progress;
mod samples;
mod serve;
mod settings;
mod sim_worker;
mod submit;
mod users;
mod workflow;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::logging::LogFormat;
use comfyume_cli::exit::{EXIT_CODES_HELP, code_of};

/// comfyume: a shared, fair GPU queue for ComfyUI.
#[derive(Debug, Parser)]
#[command(name = "comfyume", version, after_help = MAIN_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The subcommands of `comfyume`.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: the fair queue, the REST API and live events, on the configured providers.
    #[command(after_help = EXIT_CODES_HELP)]
    Serve(serve::ServeArgs),
    /// Try everything on a laptop: a server plus SIMULATED ComfyUI workers (no GPU, no inference), a
    /// `dev` user with a fresh token, and a ready-made `submit` line.
    #[command(after_help = EXIT_CODES_HELP)]
    Dev(dev::DevArgs),
    /// Submit a workflow (API format); with --wait, follow it live and list its outputs.
    #[command(after_help = EXIT_CODES_HELP)]
    Submit(submit::SubmitArgs),
    /// Follow a job live until it ends, then list its outputs.
    #[command(after_help = EXIT_CODES_HELP)]
    Watch(submit::WatchArgs),
    /// List your jobs (admins: --all, or --owner NAME).
    #[command(after_help = EXIT_CODES_HELP)]
    Jobs(jobs::JobsArgs),
    /// Cancel jobs: a queued one at once, a running one at its next step.
    #[command(after_help = EXIT_CODES_HELP)]
    Cancel(jobs::CancelArgs),
    /// Upload a file for your workflows to load (LoadImage and the other loaders name it); it replaces
    /// one of the same name. Prints the name to use.
    #[command(after_help = EXIT_CODES_HELP)]
    Upload(inputs::UploadArgs),
    /// List your uploaded inputs, or delete one.
    #[command(after_help = EXIT_CODES_HELP)]
    Inputs(inputs::InputsArgs),
    /// List a job's output files, or download them.
    #[command(after_help = EXIT_CODES_HELP)]
    Outputs(outputs::OutputsArgs),
    /// Manage who may log in: add, remove, passwd, admin, token, revoke-tokens, import, list.
    #[command(after_help = EXIT_CODES_HELP)]
    Users(users::UsersArgs),
    /// Steer the queue as the instructor (admins): jobs in run order, pause, reorder, cancel, users and
    /// their usage, providers, the audit log. The same as the admin page at /admin/.
    #[command(after_help = EXIT_CODES_HELP)]
    Admin(admin::AdminArgs),
    /// Check a configuration file.
    #[command(after_help = EXIT_CODES_HELP)]
    Config(config_check::ConfigCommandArgs),
    /// Install the official ComfyUI frontend that every user's workspace at /u/NAME/ is served from.
    #[command(after_help = EXIT_CODES_HELP)]
    Frontend(frontend::FrontendArgs),
    /// Run a SIMULATED ComfyUI worker: a protocol-faithful stand-in for tests, demos and load tests.
    /// It never runs inference: it executes a few simple node types on real pixels and writes real
    /// files, taking a configurable time per job.
    SimWorker(sim_worker::SimWorkerArgs),
    /// Run the agent that sits beside an unmodified ComfyUI inside a serverless GPU container: the
    /// platform's async layer sends it one whole job (POST /comfyume/run), it answers with the outputs;
    /// GET /health follows the platform's health-check contract.
    Agent(agent::AgentArgs),
    /// Measure a real `comfyume serve` process: memory with many users and event streams, and the
    /// time from start to ready. Prints figures; talks to 127.0.0.1 only.
    #[command(subcommand)]
    Load(load::LoadCommand),
    /// Load a server with N users × M jobs over its real API and event WebSockets (a running one, or
    /// with --spawn one of its own on SIMULATED workers): throughput, waits, fairness, lost and
    /// duplicated jobs, the server's memory and CPU, and an HTML page of charts.
    Loadtest(Box<loadtest::LoadtestArgs>),
}

/// The end of `comfyume --help`: how to start, and the exit codes.
const MAIN_HELP: &str = concat!(
    "Getting started:\n",
    "  comfyume dev                                   a server + simulated workers on this laptop\n",
    "  comfyume serve --config comfyume.toml          the workshop server (first start prints the admin password)\n",
    "  comfyume users add NAME                        a participant; `comfyume users token NAME` for the CLI\n",
    "  comfyume submit flow.json --wait               run a workflow (API format) and follow it live\n",
    "  comfyume admin jobs                            the queue in run order (admins; also /admin/ in a browser)\n",
    "\n",
    "Client commands read COMFYUME_URL (default http://127.0.0.1:8190) and COMFYUME_TOKEN.\n",
    "\n",
    "Exit codes:\n",
    "  0  success\n",
    "  1  any other error\n",
    "  2  usage: bad arguments, an unreadable or malformed workflow or configuration file\n",
    "  3  connection or authentication: the server cannot be reached or refused the credentials\n",
    "  4  the job failed or was cancelled, or its workflow was refused as one no provider can run"
);

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve::run(args).await,
        Command::Dev(args) => dev::run(args).await,
        Command::Submit(args) => submit::submit(args).await,
        Command::Watch(args) => submit::watch(args).await,
        Command::Jobs(args) => jobs::list(args).await,
        Command::Cancel(args) => jobs::cancel(args).await,
        Command::Outputs(args) => outputs::run(args).await,
        Command::Upload(args) => inputs::upload(args).await,
        Command::Inputs(args) => inputs::inputs(args).await,
        Command::Users(args) => users::run(args),
        Command::Admin(args) => admin::run(args).await,
        Command::Config(args) => config_check::run(args),
        Command::Frontend(args) => frontend::run(args).await,
        Command::SimWorker(args) => sim_worker::run(args).await,
        Command::Agent(args) => agent::run(args).await,
        Command::Load(command) => load::run(command).await,
        Command::Loadtest(args) => loadtest::run(*args).await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (format, level) = match &cli.command {
        Command::Serve(a) => (a.log_format, "info"),
        Command::Dev(a) => (a.log_format, "info"),
        Command::SimWorker(_) | Command::Agent(_) => (LogFormat::Human, "info"),
        _ => (LogFormat::Human, "warn"),
    };
    logging::init(format, level);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli.command));
    // Do not wait for stray blocking tasks (a password prompt, a slow disk) once the command is done.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            code_of(&e).into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_main_help_lists_the_same_exit_codes_as_every_command() {
        assert!(MAIN_HELP.ends_with(EXIT_CODES_HELP), "{MAIN_HELP}");
    }
}
