//! The `hello-birthday` binary: read the configuration, start logging, build
//! the application, serve until SIGTERM/SIGINT. `hello-birthday database`
//! says what `DATABASE_URL` names, for the backup and restore scripts.

use clap::Parser;
use hello_birthday::app::Application;
use hello_birthday::config::{Cli, Command, Config};
use hello_birthday::{fd_limit, shutdown, telemetry, trace};
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    // The URL from DATABASE_URL_FILE or the systemd credential, for the
    // service and for `database` alike (the backup unit loads it too).
    let credentials = std::env::var_os("CREDENTIALS_DIRECTORY")
        .filter(|d| !d.is_empty())
        .map(std::path::PathBuf::from);
    let url_in_env = std::env::var_os("DATABASE_URL").is_some_and(|v| !v.is_empty());
    let warning = match cli
        .config
        .resolve_secrets(url_in_env, credentials.as_deref())
    {
        Ok(warning) => warning,
        Err(e) => {
            eprintln!("hello-birthday: {e:#}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        None => serve(cli.config, warning),
        Some(Command::Database { env }) => {
            if let Some(w) = warning {
                eprintln!("hello-birthday: {w}");
            }
            database(&cli.config, env)
        }
    }
}

/// `hello-birthday database [--env]`: the URL was parsed (and a bad one
/// refused, exit 2) before this runs.
fn database(config: &Config, env: bool) -> ExitCode {
    let url = &config.database_url;
    let out = if env {
        url.shell_env(config.database_ca_file.as_deref())
    } else {
        Ok(format!("{url}\n").into_bytes())
    };
    match out.and_then(|bytes| std::io::stdout().lock().write_all(&bytes)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hello-birthday: {e}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn serve(config: Config, warning: Option<String>) -> ExitCode {
    let _logs = match telemetry::init(&config) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("hello-birthday: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Some(w) = warning {
        tracing::warn!("{w}");
    }
    let traces = match trace::init() {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("hello-birthday: {e:#}");
            return ExitCode::from(2);
        }
    };
    fd_limit::raise_fd_limit();
    let result = async {
        let app = Application::build(config).await?;
        app.run_until(shutdown::signal()).await
    }
    .await;
    // The exporter's last batch, off the async workers (it blocks).
    let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
    match result {
        Ok(()) => {
            // The requests of the last, partial window are counted too.
            telemetry::final_summary();
            ExitCode::SUCCESS
        }
        Err(e) => {
            // The whole cause chain, so the operator sees why (no secrets:
            // the database URL is only ever printed redacted).
            tracing::error!(error = format!("{e:#}"), "fatal");
            eprintln!("hello-birthday: {e:#}");
            ExitCode::FAILURE
        }
    }
}
