//! Schema migrations, embedded in the binary and applied at start-up by one
//! runner for both backends. Each backend has its own SQL; versions are
//! shared so both report the same schema version (recorded in
//! `schema_migrations`: version, description, applied_at).
//!
//! During a rolling deploy an old and a new release run against one
//! database: the new one migrates, the old one finds a version it does not
//! know and keeps serving, which is why every migration only adds
//! (expand first, remove in a later release).

pub struct Migration {
    pub version: i32,
    pub description: &'static str,
    pub sql: &'static str,
}

pub const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        description: "users",
        sql: include_str!("../../migrations/sqlite/0001_init.sql"),
    },
    Migration {
        version: 2,
        description: "vacuum erased rows",
        sql: include_str!("../../migrations/sqlite/0002_vacuum_erased_rows.sql"),
    },
];

pub const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        description: "users",
        sql: include_str!("../../migrations/postgres/0001_init.sql"),
    },
    Migration {
        version: 2,
        description: "vacuum erased rows",
        sql: include_str!("../../migrations/postgres/0002_vacuum_erased_rows.sql"),
    },
];

/// The highest version applied, in either dialect.
pub const CURRENT_VERSION_SQL: &str = "SELECT coalesce(max(version), 0) FROM schema_migrations";

/// What a backend does for the runner, inside one transaction that holds
/// its migration lock (SQLite `BEGIN IMMEDIATE`, a PostgreSQL advisory
/// lock), so instances that start together migrate once.
pub(super) trait Ledger {
    type Error;
    /// Creates `schema_migrations` if needed; returns its highest version (0 if none).
    async fn current_version(&mut self) -> Result<i32, Self::Error>;
    /// Runs the migration's SQL and records it in `schema_migrations`.
    async fn apply(&mut self, m: &Migration) -> Result<(), Self::Error>;
}

/// Applies, in order, every migration newer than the database's version.
pub(super) async fn run<L: Ledger>(
    ledger: &mut L,
    migrations: &[Migration],
    backend: &'static str,
) -> Result<(), L::Error> {
    let current = ledger.current_version().await?;
    let known = migrations.last().map_or(0, |m| m.version);
    if current > known {
        tracing::info!(
            backend,
            database_version = current,
            release_version = known,
            "the database schema is newer than this release (a rolling deploy); migrations only add, so it still serves"
        );
    }
    for m in migrations.iter().filter(|m| m.version > current) {
        ledger.apply(m).await?;
        tracing::info!(
            backend,
            version = m.version,
            description = m.description,
            "applied migration"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_backends_share_strictly_increasing_versions() {
        let versions = |ms: &[Migration]| ms.iter().map(|m| m.version).collect::<Vec<_>>();
        assert_eq!(versions(SQLITE), versions(POSTGRES));
        assert!(versions(SQLITE).windows(2).all(|w| w[0] < w[1]));
        assert!(SQLITE.iter().all(|m| m.version > 0));
    }
}
