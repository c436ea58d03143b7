//! The PostgreSQL pool under concurrency and failure: calls share few
//! pipelined connections and each gets its own answer, a killed connection
//! fails only its calls and is replaced, the timeout bounds calls queued
//! behind a blocked query and the connection stays usable afterwards.

use crate::support::{fresh_postgres_database, require_postgres, wait_until};
use hello_birthday::domain::{DateOfBirth, Username};
use hello_birthday::store::StoreError;
use hello_birthday::store::postgres::{PgStore, READ_DEPTH, WRITE_DEPTH};
use std::time::{Duration, Instant};
use time::{Date, Month};

fn pg_config(url: &str) -> tokio_postgres::Config {
    url.parse().expect("a test URL")
}

fn pool(size: usize) -> std::num::NonZeroUsize {
    std::num::NonZeroUsize::new(size).expect("a pool of at least one")
}

fn user(i: usize) -> Username {
    let letters: String = format!("{i:03}")
        .bytes()
        .map(|d| char::from(b'a' + (d - b'0')))
        .collect();
    Username::parse(&format!("user{letters}")).unwrap()
}

/// A different date per user, so a mixed-up answer shows.
fn dob(i: usize) -> DateOfBirth {
    let base = Date::from_calendar_date(1950, Month::January, 1).unwrap();
    DateOfBirth::from_stored(base + time::Duration::days(i as i64))
}

/// A read, as the date it found.
async fn get(store: &PgStore, i: usize) -> Result<Option<Date>, StoreError> {
    Ok(store.get(&user(i)).await?.map(DateOfBirth::date))
}

/// An admin connection to the same server, on its `postgres` database.
async fn admin(url: &str) -> tokio_postgres::Client {
    let (base, _) = url.rsplit_once('/').unwrap();
    let (client, conn) =
        tokio_postgres::connect(&format!("{base}/postgres"), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(conn);
    client
}

/// Backend pids of the connections to `url`'s database, other than ours.
async fn backends(admin: &tokio_postgres::Client, url: &str) -> Vec<i32> {
    let db = url.rsplit_once('/').unwrap().1;
    admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() \
             ORDER BY pid",
            &[&db],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn assert_unavailable<T: std::fmt::Debug>(result: &Result<T, StoreError>) {
    assert!(
        matches!(result, Err(StoreError::Unavailable(_))),
        "expected unavailable, got {result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(hb_skip_postgres, ignore = "HB_SKIP_POSTGRES=1")]
async fn concurrent_calls_share_few_connections_and_each_gets_its_answer() {
    if !require_postgres() {
        return;
    }
    let url = fresh_postgres_database().await;
    let admin = admin(&url).await;
    let size = 16;
    let n = 32;
    let store = PgStore::connect(&pg_config(&url), None, pool(size), Duration::from_secs(10))
        .await
        .unwrap();
    let puts = (0..n).map(|i| {
        let store = store.clone();
        async move { store.upsert(&user(i), dob(i)).await }
    });
    for r in futures_util::future::join_all(puts).await {
        r.unwrap();
    }
    // Writes spread over one connection per WRITE_DEPTH calls in flight,
    // not one per call (which would take all 16).
    let open = backends(&admin, &url).await.len();
    assert!(
        (2..=n / WRITE_DEPTH).contains(&open),
        "{open} connections for {n} concurrent writes"
    );
    store.close();
    assert_unavailable(&get(&store, 0).await);
    assert_eq!(store.pool_status().idle, 0);
    wait_until(
        "the closed pool's connections to end",
        Duration::from_secs(10),
        || async { backends(&admin, &url).await.is_empty() },
    )
    .await;

    // Reads pipeline on one connection up to READ_DEPTH calls in flight,
    // and every call gets its own row back.
    assert!(n <= READ_DEPTH);
    let store = PgStore::connect(&pg_config(&url), None, pool(size), Duration::from_secs(10))
        .await
        .unwrap();
    let gets = (0..n).map(|i| {
        let store = store.clone();
        async move { (i, get(&store, i).await) }
    });
    for (i, r) in futures_util::future::join_all(gets).await {
        assert_eq!(r.unwrap(), Some(dob(i).date()), "user {i}");
    }
    assert_eq!(backends(&admin, &url).await.len(), 1);
    let status = store.pool_status();
    assert_eq!(
        (status.idle, status.in_use, status.max),
        (1, 0, size),
        "pool status {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(hb_skip_postgres, ignore = "HB_SKIP_POSTGRES=1")]
async fn a_killed_connection_fails_as_unavailable_and_is_replaced() {
    if !require_postgres() {
        return;
    }
    let url = fresh_postgres_database().await;
    let store = PgStore::connect(&pg_config(&url), None, pool(1), Duration::from_secs(5))
        .await
        .unwrap();
    store.upsert(&user(1), dob(1)).await.unwrap();
    let admin = admin(&url).await;
    let before = backends(&admin, &url).await;
    assert_eq!(before.len(), 1, "{before:?}");
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&before[0]])
        .await
        .unwrap();

    // Calls may fail while the pool learns the connection is gone, but only
    // as unavailable (503), and a later call gets a new connection.
    wait_until(
        "a call on a new connection",
        Duration::from_secs(10),
        || async {
            let r = get(&store, 1).await;
            if r.is_err() {
                assert_unavailable(&r);
            }
            r.ok() == Some(Some(dob(1).date()))
        },
    )
    .await;
    let after = backends(&admin, &url).await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(after, before);
    store.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(hb_skip_postgres, ignore = "HB_SKIP_POSTGRES=1")]
async fn the_timeout_bounds_calls_queued_behind_a_blocked_query() {
    if !require_postgres() {
        return;
    }
    let url = fresh_postgres_database().await;
    let timeout = Duration::from_millis(300);
    let store = PgStore::connect(&pg_config(&url), None, pool(1), timeout)
        .await
        .unwrap();
    for i in 0..4 {
        store.upsert(&user(i), dob(i)).await.unwrap();
    }

    // A lock held by another session blocks the first query; the others
    // wait behind it on the same connection.
    let db = url.rsplit_once('/').unwrap().1;
    let (base, _) = url.rsplit_once('/').unwrap();
    let (mut locker, conn) =
        tokio_postgres::connect(&format!("{base}/{db}"), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(conn);
    let tx = locker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let started = Instant::now();
    let calls = (0..8).map(|i| {
        let store = store.clone();
        async move {
            if i % 2 == 0 {
                get(&store, i % 4).await.map(|_| ())
            } else {
                store.upsert(&user(i % 4), dob(100 + i)).await
            }
        }
    });
    for r in futures_util::future::join_all(calls).await {
        assert_unavailable(&r);
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "calls took {took:?}");
    tx.rollback().await.unwrap();

    // The answers to the abandoned queries arrive later on the same
    // connection; they must not be taken for the answers to new calls.
    wait_until("the lock to go", Duration::from_secs(10), || async {
        get(&store, 0).await.is_ok()
    })
    .await;
    for round in 0..3 {
        let gets = (0..4).map(|i| {
            let store = store.clone();
            async move { (i, get(&store, i).await) }
        });
        for (i, r) in futures_util::future::join_all(gets).await {
            let got = r.unwrap().expect("the user is there");
            // An abandoned upsert may or may not have committed after the
            // lock went; either way the answer is one this user was given.
            let own = (0..8)
                .filter(|j| j % 2 == 1 && j % 4 == i)
                .map(|j| dob(100 + j).date());
            assert!(
                got == dob(i).date() || own.clone().any(|d| d == got),
                "round {round}, user {i}: {got:?}"
            );
        }
    }
}
