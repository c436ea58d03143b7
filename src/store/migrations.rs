//! Schema migrations, embedded in the binary and applied at start-up. Each
//! backend has its own SQL; versions are shared so both report the same
//! schema version (recorded in `schema_migrations`).

pub struct Migration {
    pub version: i32,
    pub description: &'static str,
    pub sql: &'static str,
}

pub const SQLITE: &[Migration] = &[Migration {
    version: 1,
    description: "users",
    sql: include_str!("../../migrations/sqlite/0001_init.sql"),
}];

pub const POSTGRES: &[Migration] = &[Migration {
    version: 1,
    description: "users",
    sql: include_str!("../../migrations/postgres/0001_init.sql"),
}];
