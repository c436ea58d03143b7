//! The signals that start a graceful shutdown.

/// Exit status of a second Ctrl-C: 128 + SIGINT, what a shell reports for a
/// process that SIGINT ended.
pub const FORCED_EXIT: i32 = 130;

/// Resolves on SIGTERM (systemd, the deploy script, an ASG scale-in) or
/// SIGINT (Ctrl-C).
///
/// After a SIGINT a second one exits at once, without the drain: someone at
/// a terminal should not wait for it. A second SIGTERM changes nothing:
/// deploy scripts may send it twice and still expect the drain.
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (mut int, mut term) = match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(int), Ok(term)) => (int, term),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot listen for SIGINT/SIGTERM");
                return std::future::pending().await;
            }
        };
        tokio::select! {
            _ = int.recv() => {
                tracing::info!("SIGINT received: draining; press Ctrl-C again to exit at once");
                tokio::spawn(async move {
                    int.recv().await;
                    tracing::warn!("second SIGINT: exiting at once, without the drain");
                    crate::telemetry::flush();
                    std::process::exit(FORCED_EXIT);
                });
            }
            // Once tokio handles SIGTERM it keeps handling it: later ones
            // are ignored, not fatal.
            _ = term.recv() => tracing::info!("SIGTERM received"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("Ctrl-C received");
    }
}
