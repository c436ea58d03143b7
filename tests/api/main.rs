//! Black-box HTTP tests of the real server. Every contract test runs on both
//! backends: SQLite always, PostgreSQL on a throwaway cluster.

mod contract;
mod database_url;
mod internal_error;
mod lifecycle;
mod openapi;
mod outage;
mod pg_pool;
mod support;
mod tls;
