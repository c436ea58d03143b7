//! PostgreSQL batching, on a real server: requests that wait together are
//! one statement, and each keeps the guarantees it had alone. To gather a
//! known set of requests into one batch, a lock held by another session
//! blocks the batches already running, so the next requests queue up and
//! run together once it goes.

use crate::support::{fresh_postgres_database, require_postgres, wait_until};
use hello_birthday::domain::{DateOfBirth, Username};
use hello_birthday::store::StoreError;
use hello_birthday::store::postgres::{PgStore, READ_BATCHES, WRITE_BATCHES};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use time::{Date, Month};

fn name(s: &str) -> Username {
    Username::parse(s).unwrap()
}

fn dob(day: u8) -> DateOfBirth {
    DateOfBirth::from_stored(Date::from_calendar_date(1980, Month::March, day).unwrap())
}

async fn session(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// The row as another session sees it: committed, or not there.
async fn stored(db: &tokio_postgres::Client, user: &str) -> Option<Date> {
    db.query_opt(
        "SELECT date_of_birth FROM users WHERE username = $1",
        &[&user],
    )
    .await
    .unwrap()
    .map(|r| r.get(0))
}

type Call = Pin<Box<dyn Future<Output = Result<bool, StoreError>> + Send>>;

fn put(store: &PgStore, user: &str, day: u8) -> Call {
    let (store, user) = (store.clone(), name(user));
    Box::pin(async move { store.upsert(&user, dob(day)).await.map(|()| true) })
}

fn delete(store: &PgStore, user: &str) -> Call {
    let (store, user) = (store.clone(), name(user));
    Box::pin(async move { store.delete(&user).await })
}

/// Takes `mode` on the users table in a transaction of its own, starts one
/// blocked write batch per runner, and returns once they run: requests
/// made next wait together for one batch.
async fn hold_runners(
    url: &str,
    store: &PgStore,
    mode: &str,
) -> (tokio_postgres::Client, Vec<tokio::task::JoinHandle<()>>) {
    let locker = session(url).await;
    locker.batch_execute("BEGIN").await.unwrap();
    locker
        .batch_execute(&format!("LOCK TABLE users IN {mode} MODE"))
        .await
        .unwrap();
    // One at a time: two queued together would be one batch.
    let mut blocked = Vec::new();
    for i in 0..WRITE_BATCHES {
        let before = store.batch_stats().write_batches;
        let call = put(
            store,
            &format!("blocker{}", "abcdefgh".as_bytes()[i] as char),
            1,
        );
        blocked.push(tokio::spawn(async move {
            call.await.unwrap();
        }));
        wait_until(
            "a write runner to be blocked",
            Duration::from_secs(10),
            || async { store.batch_stats().write_batches == before + 1 },
        )
        .await;
    }
    (locker, blocked)
}

async fn queued(store: &PgStore, n: usize) {
    wait_until("the writes to queue", Duration::from_secs(10), || async {
        store.batch_stats().writes_waiting == n
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(hb_skip_postgres, ignore = "HB_SKIP_POSTGRES=1")]
async fn writes_in_one_batch_apply_in_arrival_order_and_answer_after_the_commit() {
    if !require_postgres() {
        return;
    }
    let url = fresh_postgres_database().await;
    let store = PgStore::connect(
        &url.parse().expect("a test URL"),
        None,
        std::num::NonZeroUsize::new(4).unwrap(),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let db = session(&url).await;
    store.upsert(&name("zed"), dob(1)).await.unwrap();
    let (locker, blocked) = hold_runners(&url, &store, "EXCLUSIVE").await;
    let batches = store.batch_stats().write_batches;

    // Queued in this order (join_all polls them in order, and each queues
    // on its first poll).
    let calls = vec![
        put(&store, "xavier", 2),
        put(&store, "xavier", 3),
        delete(&store, "xavier"), // after two PUTs in the batch: true
        put(&store, "xavier", 4),
        put(&store, "yvonne", 5),
        delete(&store, "yvonne"), // true
        delete(&store, "yvonne"), // false: the one before deleted it
        delete(&store, "zed"),    // true: there before the batch
        put(&store, "zed", 6),
        delete(&store, "walter"), // false: never there
    ];
    let expected = [true, true, true, true, true, true, false, true, true, false];
    let all = tokio::spawn(futures_util::future::join_all(calls));
    queued(&store, expected.len()).await;
    // Not one answer while the batch cannot commit.
    tokio::time::sleep(Duration::from_millis(300)).await; // a bounded look for an early answer
    assert!(!all.is_finished(), "a write was answered before its commit");
    locker.batch_execute("ROLLBACK").await.unwrap();
    let results: Vec<bool> = all.await.unwrap().into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(results, expected);
    for b in blocked {
        b.await.unwrap();
    }
    // The queued writes were one batch, not ten.
    assert_eq!(store.batch_stats().write_batches, batches + 1);
    // Answered, so committed: another session sees each user's last write.
    assert_eq!(stored(&db, "xavier").await, Some(dob(4).date()));
    assert_eq!(stored(&db, "yvonne").await, None);
    assert_eq!(stored(&db, "zed").await, Some(dob(6).date()));
    assert_eq!(stored(&db, "walter").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(hb_skip_postgres, ignore = "HB_SKIP_POSTGRES=1")]
async fn a_data_error_fails_only_its_own_request() {
    if !require_postgres() {
        return;
    }
    let url = fresh_postgres_database().await;
    let store = PgStore::connect(
        &url.parse().expect("a test URL"),
        None,
        std::num::NonZeroUsize::new(4).unwrap(),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let db = session(&url).await;
    // A rule the service does not know: only the database refuses it.
    db.batch_execute("ALTER TABLE users ADD CONSTRAINT no_mallory CHECK (username <> 'mallory')")
        .await
        .unwrap();
    store.upsert(&name("carol"), dob(1)).await.unwrap();
    let (locker, blocked) = hold_runners(&url, &store, "EXCLUSIVE").await;
    let calls = vec![
        put(&store, "alice", 2),
        put(&store, "mallory", 3),
        put(&store, "bob", 4),
        delete(&store, "carol"),
        put(&store, "alice", 5),
    ];
    let all = tokio::spawn(futures_util::future::join_all(calls));
    queued(&store, 5).await;
    locker.batch_execute("ROLLBACK").await.unwrap();
    let results = all.await.unwrap();
    for b in blocked {
        b.await.unwrap();
    }
    assert!(
        matches!(results[1], Err(StoreError::Internal(_))),
        "{:?}",
        results[1]
    );
    let others: Vec<bool> = [0, 2, 3, 4]
        .iter()
        .map(|&i| results[i].clone().unwrap())
        .collect();
    assert_eq!(others, [true, true, true, true]);
    assert_eq!(stored(&db, "alice").await, Some(dob(5).date()));
    assert_eq!(stored(&db, "bob").await, Some(dob(4).date()));
    assert_eq!(stored(&db, "carol").await, None);
    assert_eq!(stored(&db, "mallory").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(hb_skip_postgres, ignore = "HB_SKIP_POSTGRES=1")]
async fn concurrent_reads_are_one_query_and_each_gets_its_own_row() {
    if !require_postgres() {
        return;
    }
    let url = fresh_postgres_database().await;
    let store = PgStore::connect(
        &url.parse().expect("a test URL"),
        None,
        std::num::NonZeroUsize::new(4).unwrap(),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    for (i, user) in ["ann", "ben", "cat"].iter().enumerate() {
        store.upsert(&name(user), dob(i as u8 + 1)).await.unwrap();
    }
    // ACCESS EXCLUSIVE blocks reads too: hold every read runner.
    let locker = session(&url).await;
    locker
        .batch_execute("BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..READ_BATCHES {
        let before = store.batch_stats().read_batches;
        let reader = store.clone();
        held.push(tokio::spawn(async move { reader.get(&name("ann")).await }));
        wait_until(
            "a read runner to be blocked",
            Duration::from_secs(10),
            || async { store.batch_stats().read_batches == before + 1 },
        )
        .await;
    }
    let before = store.batch_stats().read_batches;
    // Duplicates and a missing user in one batch.
    let users = ["cat", "ann", "nobody", "cat", "ben", "ann"];
    let reads = users.map(|u| {
        let store = store.clone();
        async move { store.get(&name(u)).await.map(|d| d.map(DateOfBirth::date)) }
    });
    let all = tokio::spawn(futures_util::future::join_all(reads));
    wait_until("the reads to queue", Duration::from_secs(10), || async {
        store.batch_stats().reads_waiting == users.len()
    })
    .await;
    locker.batch_execute("ROLLBACK").await.unwrap();
    let got: Vec<Option<Date>> = all.await.unwrap().into_iter().map(|r| r.unwrap()).collect();
    let want: Vec<Option<Date>> = [Some(3), Some(1), None, Some(3), Some(2), Some(1)]
        .iter()
        .map(|d| d.map(|d| dob(d).date()))
        .collect();
    assert_eq!(got, want);
    for h in held {
        assert_eq!(h.await.unwrap().unwrap(), Some(dob(1)));
    }
    assert_eq!(store.batch_stats().read_batches, before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(hb_skip_postgres, ignore = "HB_SKIP_POSTGRES=1")]
async fn the_timeout_bounds_a_request_waiting_for_a_batch() {
    if !require_postgres() {
        return;
    }
    let url = fresh_postgres_database().await;
    let timeout = Duration::from_millis(400);
    let store = PgStore::connect(
        &url.parse().expect("a test URL"),
        None,
        std::num::NonZeroUsize::new(4).unwrap(),
        timeout,
    )
    .await
    .unwrap();
    let locker = session(&url).await;
    locker
        .batch_execute("BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    // The runners' batches block; the later requests wait for a runner and
    // fail at their own deadline, not at a batch's.
    let calls: Vec<Call> = (0..3 * WRITE_BATCHES)
        .map(|i| {
            put(
                &store,
                &format!("late{}", "abcdefgh".as_bytes()[i] as char),
                1,
            )
        })
        .collect();
    let started = std::time::Instant::now();
    for r in futures_util::future::join_all(calls).await {
        assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    }
    let took = started.elapsed();
    assert!(
        took >= timeout && took < timeout * 3,
        "requests failed after {took:?} (timeout {timeout:?})"
    );
    locker.batch_execute("ROLLBACK").await.unwrap();
    // And the store serves again once the lock is gone.
    wait_until("a write to succeed", Duration::from_secs(10), || async {
        store.upsert(&name("after"), dob(2)).await.is_ok()
    })
    .await;
}
