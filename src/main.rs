//! The `hello-birthday` binary: read the configuration, start logging, build
//! the application, serve until SIGTERM/SIGINT.

use clap::Parser;
use hello_birthday::app::Application;
use hello_birthday::config::Config;
use hello_birthday::{shutdown, telemetry, trace};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let mut config = Config::parse();
    let _logs = match telemetry::init(&config) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("hello-birthday: {e:#}");
            return ExitCode::from(2);
        }
    };
    let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(std::path::PathBuf::from);
    let url_in_env = std::env::var_os("DATABASE_URL").is_some_and(|v| !v.is_empty());
    match config.resolve_secrets(url_in_env, credentials.as_deref()) {
        Ok(None) => {}
        Ok(Some(warning)) => tracing::warn!("{warning}"),
        Err(e) => {
            eprintln!("hello-birthday: {e:#}");
            return ExitCode::from(2);
        }
    }
    let traces = match trace::init() {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("hello-birthday: {e:#}");
            return ExitCode::from(2);
        }
    };
    shutdown::raise_fd_limit();
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
