//! The fleet's shared log on a real PostgreSQL ([fleet-log], its storage half): appends from
//! several nodes, reads, the horizon tail that never skips a late commit (with a naive id tailer
//! beside it that does, so the test has teeth), ambiguous commits, conflicts, node leases, and
//! the append-only triggers.
//!
//! The server: `BREAKERBOX_TEST_PG` or `DATABASE_URL` when set, else 127.0.0.1:5432 if one
//! answers (`scripts/test` starts a throwaway cluster when none does). Each test makes a
//! database of its own and drops it. With `CI=true` and no server the tests fail; elsewhere they
//! say they were skipped.

#[path = "support/webdriver.rs"]
mod webdriver;

use breakerbox::journal::pg::{LeaseError, PgCursor, PgLog};
use breakerbox::journal::{Row, StoreError};
use sqlx::Connection;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The server's URL, or `None` (skip) outside CI.
async fn server() -> Option<String> {
    for var in ["BREAKERBOX_TEST_PG", "DATABASE_URL"] {
        if let Ok(url) = std::env::var(var)
            && url.starts_with("postgres")
        {
            return Some(url);
        }
    }
    let url = "postgres://postgres@127.0.0.1:5432/postgres".to_owned();
    let answered = tokio::time::timeout(Duration::from_secs(3), sqlx::PgConnection::connect(&url)).await;
    if matches!(answered, Ok(Ok(_))) {
        return Some(url);
    }
    assert!(
        std::env::var("CI").is_err(),
        "CI=true and no PostgreSQL: set BREAKERBOX_TEST_PG (scripts/test starts a server when none answers on 127.0.0.1:5432)"
    );
    eprintln!("skipped: no PostgreSQL (BREAKERBOX_TEST_PG unset, nothing on 127.0.0.1:5432)");
    None
}

/// A database of the test's own, dropped when this is.
struct Db {
    admin: String,
    name: String,
    url: String,
}

impl Db {
    async fn create(tag: &str) -> Option<Db> {
        let admin = server().await?;
        let name = format!("bb_{tag}_{}", std::process::id());
        let mut c = sqlx::PgConnection::connect(&admin).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut c)
        .await
        .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {name} TEMPLATE template0"
        )))
        .execute(&mut c)
        .await
        .unwrap();
        let (base, _) = admin.rsplit_once('/').unwrap();
        let url = format!("{base}/{name}");
        Some(Db { admin, name, url })
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // A runtime of its own: the test's may be gone.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut c)
                    .await;
                }
            });
        })
        .join();
    }
}

fn row(node: &str, stream: &str, seq: u64) -> Row {
    Row {
        node: node.into(),
        stream: stream.into(),
        seq,
        event_type: "call_batch",
        event_version: 2,
        recorded_at: 1_700_000_000_000 + seq,
        payload: format!("{node}/{stream}/{seq}").into_bytes(),
    }
}

/// Tails from `at` in pages of 4 until `want` events came (within 20 s: the horizon waits for
/// transactions running anywhere in the cluster).
async fn read_all(
    log: &PgLog,
    mut at: PgCursor,
    want: usize,
) -> (Vec<(PgCursor, breakerbox::journal::StoredEvent)>, PgCursor) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    while out.len() < want {
        assert!(
            Instant::now() < deadline,
            "only {} of {want} events below the horizon after 20 s",
            out.len()
        );
        let (page, next) = log.tail(&at, 4).await.unwrap();
        if page.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        out.extend(page);
        at = next;
    }
    (out, at)
}

/// Runs `delete` on `conn` with retention's setting set for its transaction: the triggers must
/// still refuse it.
async fn refused_with_the_setting(conn: &mut sqlx::PgConnection, delete: &'static str) {
    sqlx::query("BEGIN").execute(&mut *conn).await.unwrap();
    sqlx::query("SET LOCAL breakerbox.compacting = 'on'")
        .execute(&mut *conn)
        .await
        .unwrap();
    let e = sqlx::query(delete).execute(&mut *conn).await.unwrap_err();
    assert!(e.to_string().contains("append-only"), "{delete}: {e}");
    sqlx::query("ROLLBACK").execute(&mut *conn).await.unwrap();
}

async fn connect(db: &Db) -> PgLog {
    PgLog::connect(&db.url, Duration::from_secs(5), 8).await.unwrap()
}

#[tokio::test]
async fn nodes_append_their_own_streams_and_a_tail_reads_each_event_once_in_a_stable_order() {
    let Some(db) = Db::create("append").await else { return };
    let log = connect(&db).await;
    // Two nodes, one breaker key each: their streams are apart.
    for node in ["app-1", "app-2"] {
        let rows: Vec<Row> = (1..=3).map(|s| row(node, "stripe", s)).collect();
        log.append(&[node.as_bytes()[4]; 16], &rows).await.unwrap();
    }
    assert_eq!(log.last_seq("app-1", "stripe").await.unwrap(), 3);
    assert_eq!(log.last_seq("app-3", "stripe").await.unwrap(), 0);
    let app2 = log.read_stream("app-2", "stripe", 1, 10).await.unwrap();
    assert_eq!(app2.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 3]);
    assert!(
        app2.iter()
            .all(|e| e.node == "app-2" && e.payload.starts_with(b"app-2/"))
    );
    // The tail: all six, once each, in the same order on a second read from the start. (A
    // transaction running elsewhere in the cluster, another test's, may hold the horizon back a
    // moment: the reads wait for it, in pages of 4.)
    let (first, cursor) = read_all(&log, PgCursor::default(), 6).await;
    assert_eq!(first.len(), 6);
    let (again, again_at) = read_all(&log, PgCursor::default(), 6).await;
    assert_eq!((&first, cursor), (&again, again_at), "a stable order");
    let (none, same) = log.tail(&cursor, 100).await.unwrap();
    assert!(none.is_empty() && same == cursor);
    // What comes later follows.
    log.append(&[9; 16], &[row("app-1", "stripe", 4)]).await.unwrap();
    let (next, _) = read_all(&log, cursor, 1).await;
    assert_eq!(next.len(), 1);
    assert_eq!((next[0].1.node.as_str(), next[0].1.seq), ("app-1", 4));
    log.close().await;
}

#[tokio::test]
async fn a_retried_batch_is_never_written_twice_and_another_writers_seq_is_a_conflict() {
    let Some(db) = Db::create("ambiguous").await else {
        return;
    };
    let log = connect(&db).await;
    let batch = [7u8; 16];
    let rows: Vec<Row> = (1..=3).map(|s| row("app-1", "stripe", s)).collect();
    let last = log.append(&batch, &rows).await.unwrap();
    // The connection died during COMMIT and the writer does not know it committed: it retries
    // the same batch, which is recognised as its own.
    assert_eq!(log.append(&batch, &rows).await.unwrap(), last);
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM events")
        .fetch_one(log.pool())
        .await
        .unwrap();
    assert_eq!(n, 3, "no duplicates");
    // A batch id used before cannot pass for another batch: seqs 3..=5 under the same id, where 3
    // is that batch's and 4 and 5 were never written, is not reported as written.
    let reused: Vec<Row> = (3..=5).map(|s| row("app-1", "stripe", s)).collect();
    let e = log.append(&batch, &reused).await.unwrap_err();
    assert!(e.to_string().contains("partly in the log (1 of 3 rows)"), "{e}");
    assert_eq!(log.last_seq("app-1", "stripe").await.unwrap(), 3);
    // Another process writing app-1's stream: its batch collides, and is named.
    let other = log.append(&[8; 16], &[row("app-1", "stripe", 3)]).await.unwrap_err();
    assert_eq!(
        other,
        StoreError::Conflict {
            stream: "app-1/stripe".into(),
            seq: 3
        }
    );
    log.close().await;
}

#[tokio::test]
async fn one_process_per_node_and_a_lapsed_lease_is_taken_over() {
    let Some(db) = Db::create("lease").await else { return };
    let log = connect(&db).await;
    let ttl = Duration::from_secs(30);
    log.acquire_node("app-1", "serve pid 1 on a", ttl).await.unwrap();
    // A second live process with the same node name is refused, naming the holder.
    match log.acquire_node("app-1", "serve pid 2 on a", ttl).await {
        Err(e @ LeaseError::Held(..)) => assert!(e.to_string().contains("serve pid 1 on a"), "{e}"),
        other => panic!("{other:?}"),
    }
    // Renewals by the holder go on; another node is free.
    log.acquire_node("app-1", "serve pid 1 on a", ttl).await.unwrap();
    log.acquire_node("app-2", "serve pid 2 on a", ttl).await.unwrap();
    // Not renewed within its ttl (by the database's clock; the lapse made by hand, 31 s ago):
    // the next process takes it.
    sqlx::query("UPDATE nodes SET renewed_at = renewed_at - 31000 WHERE node = 'app-1'")
        .execute(log.pool())
        .await
        .unwrap();
    let taken = log.acquire_node("app-1", "serve pid 3 on b", ttl).await.unwrap();
    assert_eq!(taken.holder, "serve pid 3 on b");
    log.release_node("app-1", "serve pid 3 on b").await.unwrap();
    log.acquire_node("app-1", "serve pid 4 on b", ttl).await.unwrap();
    // A take-over from a holder that released as it was judged gone leaves a live lease: a
    // third process is refused until it lapses.
    log.release_node("app-1", "serve pid 4 on b").await.unwrap();
    let taken = log
        .take_over_node("app-1", "serve pid 5 on b", ttl, "serve pid 4 on b")
        .await
        .unwrap();
    assert!(taken.is_some());
    match log.acquire_node("app-1", "serve pid 6 on c", ttl).await {
        Err(e @ LeaseError::Held(..)) => assert!(e.to_string().contains("serve pid 5 on b"), "{e}"),
        other => panic!("a second live holder: {other:?}"),
    }
    log.close().await;
}

#[tokio::test]
async fn the_database_refuses_changes_to_the_log_but_retentions_narrow_delete() {
    let Some(db) = Db::create("appendonly").await else {
        return;
    };
    let log = connect(&db).await;
    let mut rows: Vec<Row> = (1..=4).map(|s| row("app-1", "stripe", s)).collect();
    rows[3].event_type = "transition";
    log.append(&[1; 16], &rows).await.unwrap();
    let mut outsider = sqlx::PgConnection::connect(&db.url).await.unwrap();
    for statement in [
        "UPDATE events SET payload = '\\x00' WHERE seq = 1",
        "DELETE FROM events WHERE seq = 1",
        "TRUNCATE events",
    ] {
        let e = sqlx::query(statement).execute(&mut outsider).await.unwrap_err();
        assert!(e.to_string().contains("append-only"), "{statement}: {e}");
    }
    // Even with the setting retention uses, nothing but a call batch goes.
    refused_with_the_setting(&mut outsider, "DELETE FROM events WHERE seq = 4").await;
    // Retention's function: the call batches up to seq 3, nothing else.
    assert_eq!(log.compact_calls("app-1", "stripe", 10).await.unwrap(), 3);
    let left = log.read_stream("app-1", "stripe", 0, 10).await.unwrap();
    assert_eq!(
        left.iter().map(|e| (e.seq, e.event_type.as_str())).collect::<Vec<_>>(),
        vec![(4, "transition")]
    );
    // A client role — even one granted DELETE — deletes nothing by setting the setting itself,
    // and may not run retention's function unless granted it.
    let role = format!("bb_app_{}", std::process::id());
    for statement in [
        format!("DROP ROLE IF EXISTS {role}"),
        format!("CREATE ROLE {role} LOGIN"),
        format!("GRANT SELECT, INSERT, DELETE ON events TO {role}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut outsider)
            .await
            .unwrap();
    }
    log.append(&[2; 16], &[row("app-1", "stripe", 5)]).await.unwrap();
    let (base, _) = db.url.split_once("://").unwrap();
    let host_db = db.url.rsplit_once('@').map_or(db.url.as_str(), |(_, h)| h);
    let as_app = format!("{base}://{role}@{host_db}");
    let mut app = sqlx::PgConnection::connect(&as_app).await.unwrap();
    refused_with_the_setting(&mut app, "DELETE FROM events WHERE event_type = 'call_batch'").await;
    let e = sqlx::query("SELECT breakerbox_compact_calls('app-1', 'stripe', 10)")
        .execute(&mut app)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("permission denied"), "{e}");
    drop(app);
    // Granted it, that role compacts through it, and only through it.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "GRANT EXECUTE ON FUNCTION breakerbox_compact_calls(text, text, bigint) TO {role}"
    )))
    .execute(&mut outsider)
    .await
    .unwrap();
    let mut app = sqlx::PgConnection::connect(&as_app).await.unwrap();
    let (n,): (i64,) = sqlx::query_as("SELECT breakerbox_compact_calls('app-1', 'stripe', 10)")
        .fetch_one(&mut app)
        .await
        .unwrap();
    assert_eq!(n, 1);
    drop(app);
    for statement in [format!("DROP OWNED BY {role}"), format!("DROP ROLE {role}")] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut outsider)
            .await
            .unwrap();
    }
    log.close().await;
}

/// 32 writer connections commit rows in transactions of random length — some take their
/// transaction id early, then insert late; one in ten rolls back — while two tailers read: the
/// horizon tail (`PgLog::tail`) and a naive one by `id`. The horizon tail sees every committed
/// row exactly once and no rolled-back one; the naive tailer misses rows that committed after a
/// higher id was read (so this test can fail); a rolled-back transaction never stalls the tail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_horizon_tail_never_skips_a_late_commit_where_an_id_tail_does() {
    let Some(db) = Db::create("skipped").await else { return };
    let log = connect(&db).await;
    // Transaction ids cross a power of ten during the run when one is within a million (burnt
    // at ~200k/s): their text order then differs from their order ('10014' < '9999'), so a tail
    // that sorted by the text shows here (it did once). A fresh cluster is always within one.
    let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let (now,): (String,) = sqlx::query_as("SELECT pg_current_xact_id()::text")
        .fetch_one(&mut c)
        .await
        .unwrap();
    let now: u64 = now.parse().unwrap();
    let boundary = 10u64.pow(now.to_string().len() as u32);
    if boundary - now < 1_000_000 {
        let burn = (boundary - now).saturating_sub(300);
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DO $$ BEGIN FOR i IN 1..{burn} LOOP PERFORM pg_current_xact_id(); COMMIT; END LOOP; END $$"
        )))
        .execute(&mut c)
        .await
        .unwrap();
    }
    drop(c);
    const WRITERS: usize = 32;
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let (url, stop) = (db.url.clone(), stop.clone());
        writers.spawn(async move {
            let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
            let node = format!("w{w:02}");
            let (mut committed, mut seq) = (Vec::new(), 0u64);
            let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (w as u64 + 1);
            let mut next = move |n: u64| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % n
            };
            while !stop.load(Ordering::Relaxed) {
                let early = next(3) == 0;
                let hold_before = next(20);
                let hold_after = next(40);
                let rollback = next(10) == 0;
                let mut tx = c.begin().await.unwrap();
                if early {
                    // An xid now, the insert later: the dba.SE case.
                    sqlx::query("SELECT pg_current_xact_id()")
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                }
                tokio::time::sleep(Duration::from_millis(hold_before)).await;
                seq += 1;
                sqlx::query(
                    "INSERT INTO events (node, stream, seq, event_type, event_version, recorded_at, batch_id, payload) \
                     VALUES ($1, 's', $2, 'call_batch', 2, 0, '\\x00', '\\x00')",
                )
                .bind(&node)
                .bind(seq as i64)
                .execute(&mut *tx)
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(hold_after)).await;
                if rollback {
                    tx.rollback().await.unwrap();
                    seq -= 1;
                } else {
                    tx.commit().await.unwrap();
                    committed.push((node.clone(), seq as i64));
                }
            }
            committed
        });
    }
    let tailers_stop = Arc::new(AtomicBool::new(false));
    let want = Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX));
    // The horizon tail.
    let horizon = {
        let (log, stop, want) = (log.clone(), tailers_stop.clone(), want.clone());
        tokio::spawn(async move {
            let (mut seen, mut at) = (Vec::new(), PgCursor::default());
            loop {
                let done = stop.load(Ordering::Acquire);
                let (page, next) = log.tail(&at, 500).await.unwrap();
                let empty = page.is_empty();
                for (c, _) in &page {
                    assert!(*c > at, "the tail went back: {c:?} after {at:?}");
                    at = *c;
                }
                assert_eq!(at, next);
                seen.extend(page.into_iter().map(|(_, e)| (e.node, e.seq)));
                // Past the end only when every committed row is in: another transaction in the
                // cluster may still hold the horizon (the test's deadline bounds the wait).
                if done && empty && seen.len() >= want.load(Ordering::Acquire) {
                    return seen;
                }
                if empty {
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            }
        })
    };
    // The naive tail: by id alone.
    let naive = {
        let (pool, stop) = (log.pool().clone(), tailers_stop.clone());
        tokio::spawn(async move {
            let (mut seen, mut at) = (Vec::new(), 0i64);
            loop {
                let done = stop.load(Ordering::Acquire);
                let page: Vec<(i64, String, i64)> =
                    sqlx::query_as("SELECT id, node, seq FROM events WHERE id > $1 ORDER BY id LIMIT 500")
                        .bind(at)
                        .fetch_all(&pool)
                        .await
                        .unwrap();
                let empty = page.is_empty();
                for (id, node, seq) in page {
                    at = at.max(id);
                    seen.push((node, seq));
                }
                if done && empty {
                    return seen;
                }
                if empty {
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    let mut committed = BTreeSet::new();
    while let Some(w) = writers.join_next().await {
        committed.extend(w.unwrap());
    }
    // Every writer has finished: the tailers read on until they have read every committed row,
    // or (the naive one, which never will) until nothing more comes.
    want.store(committed.len(), Ordering::Release);
    tailers_stop.store(true, Ordering::Release);
    let started = Instant::now();
    let horizon = tokio::time::timeout(Duration::from_secs(10), horizon)
        .await
        .expect("the horizon tail read every committed row within 10 s (a rolled-back transaction never stalls it)")
        .unwrap();
    let naive = naive.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(committed.len() > 1_000, "enough commits to tell: {}", committed.len());
    // Exactly once each.
    let mut counts: BTreeMap<(String, i64), u32> = BTreeMap::new();
    for k in &horizon {
        *counts.entry(k.clone()).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "seen more than once: {twice:?}");
    let seen: BTreeSet<(String, i64)> = counts.into_keys().collect();
    assert_eq!(seen, committed, "the horizon tail saw exactly the committed rows");
    // Per node, in seq order (a node's own commits are in order).
    let mut last: BTreeMap<&str, i64> = BTreeMap::new();
    for (node, seq) in &horizon {
        let prev = last.insert(node, *seq).unwrap_or(0);
        assert!(*seq > prev, "{node}: {seq} after {prev}");
    }
    let naive: BTreeSet<(String, i64)> = naive.into_iter().collect();
    let missed = committed.difference(&naive).count();
    assert!(
        missed > 0,
        "the naive id tailer missed nothing: this test would not catch a skip"
    );
    eprintln!(
        "{} commits by {WRITERS} writers; the horizon tail saw all once; an id tail missed {missed}",
        committed.len()
    );
    log.close().await;
}

/// Writers append while two sequencers run rounds side by side: every event gets exactly one
/// position, the positions are 1..N with no gap, in the tail's `(epoch, tx, id)` order; and
/// positions cannot be changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sequencers_number_every_event_once_densely_in_log_order() {
    let Some(db) = Db::create("sequencer").await else {
        return;
    };
    let log = PgLog::connect(&db.url, Duration::from_secs(5), 16).await.unwrap();
    const WRITERS: u64 = 8;
    const EACH: u64 = 150;
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let log = log.clone();
        writers.spawn(async move {
            for s in 1..=EACH {
                let mut batch = [0u8; 16];
                batch[..8].copy_from_slice(&w.to_le_bytes());
                batch[8..].copy_from_slice(&s.to_le_bytes());
                log.append(&batch, &[row(&format!("n{w}"), "stripe", s)]).await.unwrap();
                tokio::time::sleep(Duration::from_millis((w * 7 + s) % 4)).await;
            }
        });
    }
    let total = (WRITERS * EACH) as i64;
    let mut sequencers = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let log = log.clone();
        sequencers.spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut rounds = 0u64;
            while log.last_position().await.unwrap() < total {
                assert!(
                    Instant::now() < deadline,
                    "the sequencers did not number every event in 30 s"
                );
                if log.sequence(64).await.unwrap() > 0 {
                    rounds += 1;
                } else {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            rounds
        });
    }
    while let Some(w) = writers.join_next().await {
        w.unwrap();
    }
    let mut rounds = Vec::new();
    while let Some(s) = sequencers.join_next().await {
        rounds.push(s.unwrap());
    }
    assert!(rounds.iter().sum::<u64>() >= (total as u64).div_ceil(64));
    let by_position = log.read_positions(0, 100_000).await.unwrap();
    assert_eq!(
        by_position.iter().map(|e| e.position).collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>(),
        "dense, from 1"
    );
    let (tailed, _) = read_all(&log, PgCursor::default(), total as usize).await;
    let key = |e: &breakerbox::journal::StoredEvent| (e.node.clone(), e.seq);
    assert_eq!(
        by_position.iter().map(key).collect::<Vec<_>>(),
        tailed.iter().map(|(_, e)| key(e)).collect::<Vec<_>>(),
        "in the tail's order, each event once"
    );
    assert_eq!(log.sequence(64).await.unwrap(), 0, "nothing left to number");
    let e = sqlx::query("UPDATE event_order SET position = position + 1000000")
        .execute(log.pool())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("append-only"), "{e}");
    log.close().await;
}

/// A TCP relay in front of the server that, when armed, cuts the connection just after passing
/// a `COMMIT` on (the server commits; the client never hears so).
async fn cutting_relay(server: std::net::SocketAddr, armed: Arc<AtomicBool>) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let armed = armed.clone();
            tokio::spawn(async move {
                let Ok(upstream) = tokio::net::TcpStream::connect(server).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut ur, mut uw) = upstream.into_split();
                let back = tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = ur.read(&mut buf).await {
                        if n == 0 || cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 || uw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    let commit = buf[..n].windows(6).any(|w| w == b"COMMIT");
                    if commit && armed.swap(false, Ordering::AcqRel) {
                        // Let the server commit, then cut both ways before its answer gets back.
                        back.abort();
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        return;
                    }
                }
                back.abort();
            });
        }
    });
    addr
}

/// The connection drops during COMMIT (the server committed; the writer only sees an error).
/// Retrying the same batch finds its own rows: the append succeeds and no row is written twice.
#[tokio::test]
async fn a_commit_whose_answer_was_lost_is_retried_without_a_duplicate() {
    let Some(db) = Db::create("cutcommit").await else {
        return;
    };
    // Migrate directly, then write through the relay.
    connect(&db).await.close().await;
    let (prefix, rest) = db.url.split_once('@').unwrap();
    let (hostport, dbname) = rest.split_once('/').unwrap();
    let server: std::net::SocketAddr = tokio::net::lookup_host(hostport).await.unwrap().next().unwrap();
    let armed = Arc::new(AtomicBool::new(false));
    let relay = cutting_relay(server, armed.clone()).await;
    let through = format!("{prefix}@{relay}/{dbname}");
    let log = PgLog::connect(&through, Duration::from_secs(5), 2).await.unwrap();
    let rows: Vec<Row> = (1..=5).map(|s| row("app-1", "stripe", s)).collect();
    let batch = [42u8; 16];
    armed.store(true, Ordering::Release);
    let first = log.append(&batch, &rows).await;
    assert!(first.is_err(), "the answer to COMMIT never came: {first:?}");
    assert!(!armed.load(Ordering::Acquire), "the relay cut at a COMMIT");
    // The server did commit it (the ambiguous case)…
    let direct = connect(&db).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while direct.last_seq("app-1", "stripe").await.unwrap() < 5 {
        assert!(Instant::now() < deadline, "the server never committed the cut batch");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // …and the writer, not knowing, retries the batch: recognised as its own.
    let last = log.append(&batch, &rows).await.unwrap();
    let (n, max): (i64, Option<i64>) = sqlx::query_as("SELECT count(*), max(id) FROM events")
        .fetch_one(direct.pool())
        .await
        .unwrap();
    assert_eq!((n, max), (5, Some(last)), "every row once");
    // The writer's pool goes on through the relay after the cut.
    let more: Vec<Row> = (6..=7).map(|s| row("app-1", "stripe", s)).collect();
    log.append(&[43; 16], &more).await.unwrap();
    assert_eq!(direct.last_seq("app-1", "stripe").await.unwrap(), 7);
    direct.close().await;
    log.close().await;
}

/// A cluster of the test's own (never the machine's shared server): initdb as the `postgres`
/// user, loopback only. `None` (skip) without PostgreSQL's binaries or root, outside CI.
struct OwnCluster {
    bin: std::path::PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl OwnCluster {
    fn pg(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join(args[0]))
            .args(&args[1..])
            .output()
            .unwrap()
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn start(&self) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={}",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        let out = self.pg(&["pg_ctl", "-D", &self.data(), "-l", &log, "-w", "-o", &options, "start"]);
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn stop(&self, mode: &str) {
        let out = self.pg(&["pg_ctl", "-D", &self.data(), "-m", mode, "-w", "stop"]);
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn create() -> Option<OwnCluster> {
        let bin = std::fs::read_dir("/usr/lib/postgresql").ok().and_then(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .filter(|b| b.join("initdb").exists())
                .max()
        });
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0"));
        let Some(bin) = bin.filter(|_| root) else {
            assert!(
                std::env::var("CI").is_err(),
                "CI=true: this test needs PostgreSQL's binaries and root (scripts/test installs them)"
            );
            eprintln!("skipped: no PostgreSQL binaries, or not root (initdb runs as the postgres user)");
            return None;
        };
        let dir = tempfile::Builder::new().prefix("breakerbox-crash").tempdir().unwrap();
        let _ = std::process::Command::new("chown")
            .args(["postgres:", &dir.path().display().to_string()])
            .status();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = OwnCluster { bin, dir, port };
        let out = c.pg(&["initdb", "-D", &c.data(), "-A", "trust", "-U", "postgres"]);
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        c.start();
        Some(c)
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = self.pg(&["pg_ctl", "-D", &self.data(), "-m", "immediate", "stop"]);
    }
}

/// `pg_ctl stop -m immediate` (the server dies, as in a crash) in the middle of a writer's
/// appends, then a restart: every append that was acknowledged is there, none twice, and the
/// stream's seqs are contiguous (the writer retries an unanswered batch until it lands).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_crash_mid_load_loses_no_acknowledged_append() {
    let Some(cluster) = OwnCluster::create() else { return };
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", cluster.port);
    let log = PgLog::connect(&url, Duration::from_secs(2), 4).await.unwrap();
    let acked = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let writer = {
        let (log, acked) = (log.clone(), acked.clone());
        tokio::spawn(async move {
            let mut failures = 0u32;
            for seq in 1..=600u64 {
                let mut batch = [0u8; 16];
                batch[..8].copy_from_slice(&seq.to_le_bytes());
                let rows = [row("app-1", "stripe", seq)];
                // Until it lands: an error may be a commit whose answer was lost.
                loop {
                    match log.append(&batch, &rows).await {
                        Ok(_) => break,
                        Err(_) => {
                            failures += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                acked.lock().unwrap().push(seq);
            }
            failures
        })
    };
    // Mid-load: the server dies, and comes back three seconds later: longer than the pool's
    // two-second acquire timeout, so the writer, which never stops appending, must see an error
    // (a shorter outage can fall between two queries and be hidden by the pool's reconnect).
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() < 200 {
        assert!(Instant::now() < deadline, "the writer made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cluster.stop("immediate");
    let at_crash = acked.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.start();
    let failures = tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("the writer finished after the restart")
        .unwrap();
    assert!(failures > 0, "the crash was felt ({at_crash} acknowledged before it)");
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked, (1..=600).collect::<Vec<_>>());
    let stored = log.read_stream("app-1", "stripe", 0, 10_000).await.unwrap();
    assert_eq!(
        stored.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=600).collect::<Vec<i64>>(),
        "every acknowledged append once, seqs contiguous"
    );
    log.close().await;
    cluster.stop("fast");
}

/// `f`, or a failure after 30 s (a regression fails the test rather than hanging it).
async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("done within 30 s")
}

/// Runs the binary; its stdout, or a panic with its stderr.
fn breakerbox(args: &[&str], dir: &std::path::Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_breakerbox"))
        .args(args)
        .current_dir(dir)
        .env_remove("BREAKERBOX_DB")
        .env_remove("BREAKERBOX_NODE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "breakerbox {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs the binary, which must refuse `args` as bad input (exit code 2); its stderr.
fn refused(args: &[&str], dir: &std::path::Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_breakerbox"))
        .args(args)
        .current_dir(dir)
        .env_remove("BREAKERBOX_DB")
        .env_remove("BREAKERBOX_NODE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    err
}

/// A document without what depends on the instant it was made (`as_of_ms`, and how long an
/// OPEN breaker has left), wherever they are.
fn timeless(text: &str) -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.remove("as_of_ms");
                m.remove("open_remaining_ms");
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v: serde_json::Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    strip(&mut v);
    v
}

/// `demo --db postgres://…` ships the node's log as it runs; afterwards every command that reads
/// history answers from the fleet's log (`--db URL --node NAME`) exactly as from the node's own
/// file, the chain verifies there, and a command that cannot tell which node to read says so.
#[test]
fn a_node_ships_its_log_and_the_commands_answer_from_the_fleet_log_as_from_its_file() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(db) = rt.block_on(Db::create("ship")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("app-1.db");
    let spool_s = spool.display().to_string();
    breakerbox(
        &[
            "demo",
            "--duration",
            "6s",
            "--bind",
            "127.0.0.1:0",
            "--db",
            &db.url,
            "--node",
            "app-1",
            "--spool",
            &spool_s,
        ],
        dir.path(),
    );
    let config = dir.path().join("app-1.demo.toml").display().to_string();
    let fleet = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["--json", "--db", &db.url, "--node", "app-1"]);
        breakerbox(&a, dir.path())
    };
    let own = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["--json", "--db", &spool_s]);
        breakerbox(&a, dir.path())
    };
    let (from, to) = ("2000-01-01T00:00:00Z", "2100-01-01T00:00:00Z");
    let commands: Vec<Vec<&str>> = vec![
        vec!["status", "--config", &config],
        vec!["audit", "--kind", "transition"],
        vec!["audit"],
        vec![
            "replay",
            "--service",
            "stripe",
            "--from",
            from,
            "--to",
            to,
            "--config",
            &config,
        ],
        vec!["export", "--service", "stripe", "--config", &config],
        vec![
            "what-if",
            "--service",
            "stripe",
            "--from",
            from,
            "--to",
            to,
            "--failure-threshold",
            "20",
            "--config",
            &config,
        ],
        vec!["verify"],
    ];
    for c in &commands {
        let (a, b) = (own(c), fleet(c));
        if c[0] == "export" {
            assert_eq!(a, b, "{c:?}");
            assert!(a.lines().count() > 10, "{c:?} exported little: {a}");
        } else {
            assert_eq!(timeless(&a), timeless(&b), "{c:?}");
        }
    }
    let audit = timeless(&own(&["audit", "--kind", "transition"]));
    assert!(
        audit.to_string().contains("\"open\""),
        "the demo opened a breaker: {audit}"
    );
    let verified = timeless(&fleet(&["verify"]));
    assert_eq!(verified["findings"], serde_json::json!([]), "{verified}");
    assert!(verified["events"].as_u64().unwrap() > 10, "{verified}");

    // A second node in the log (shipping app-1's first event as its own): a command must be
    // told which one. Rows appended by anything but a node's shipper are no node's.
    let log = rt.block_on(PgLog::connect(&db.url, Duration::from_secs(5), 2)).unwrap();
    rt.block_on(log.append(&[9; 16], &[row("direct", "stripe", 1)]))
        .unwrap();
    let journal = rt
        .block_on(breakerbox::journal::Journal::open(
            &spool,
            breakerbox::journal::JournalOptions::default(),
        ))
        .unwrap();
    let first = rt.block_on(journal.read_shippable(0, 1)).unwrap();
    rt.block_on(journal.close());
    rt.block_on(log.ship("app-2", &first)).unwrap();
    assert_eq!(rt.block_on(log.nodes()).unwrap(), ["app-1", "app-2"]);
    rt.block_on(log.close());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_breakerbox"))
        .args(["audit", "--db", &db.url])
        .env_remove("BREAKERBOX_NODE")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--node") && err.contains("app-1, app-2"),
        "{err}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_breakerbox"))
        .args(["compact", "--db", &db.url, "--horizon", "7d"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("own log file"), "{err}");

    // Every node's trail at once, merged in time order, each entry naming its node.
    let every_kind = ["transition", "command", "policy", "gap", "alert", "stats"]
        .iter()
        .flat_map(|k| ["--kind", k])
        .collect::<Vec<&str>>();
    let entries = |out: &str| timeless(out)["entries"].as_array().unwrap().clone();
    let all = entries(&breakerbox(
        &[&["audit", "--all-nodes", "--json", "--db", &db.url][..], &every_kind].concat(),
        dir.path(),
    ));
    let mut each = Vec::new();
    for node in ["app-1", "app-2"] {
        each.extend(entries(&breakerbox(
            &[&["audit", "--json", "--db", &db.url, "--node", node][..], &every_kind].concat(),
            dir.path(),
        )));
    }
    assert_eq!(all.len(), each.len());
    assert!(all.len() > 10, "{all:?}");
    let key = |e: &serde_json::Value| {
        (
            e["at_ms"].as_i64().unwrap(),
            e["node"].as_str().unwrap().to_owned(),
            e["position"].as_i64().unwrap(),
        )
    };
    assert!(all.windows(2).all(|w| key(&w[0]) <= key(&w[1])), "in time order");
    each.sort_by_key(key);
    assert_eq!(all, each);
    let table = breakerbox(
        &["audit", "--all-nodes", "--db", &db.url, "--order", "oldest"],
        dir.path(),
    );
    assert!(table.lines().next().unwrap().starts_with("node "), "{table}");
    for (args, says) in [
        (
            vec!["audit", "--all-nodes", "--db", spool_s.as_str()],
            "one node's file",
        ),
        (
            vec!["audit", "--all-nodes", "--db", db.url.as_str(), "--after", "5"],
            "--after 5",
        ),
        (
            vec!["audit", "--all-nodes", "--db", db.url.as_str(), "--node", "app-1"],
            "leave --node out",
        ),
    ] {
        let err = refused(&args, dir.path());
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// Submits `n` transitions' worth of a breaker's events to `journal` and waits until they are
/// committed; the last position.
async fn write_events(journal: &breakerbox::journal::Journal, stream: &str, n: u64, t0: u64) -> i64 {
    use breakerbox::breaker::{Breaker, Decision, Outcome, Policy};
    use breakerbox::journal::Body;
    let stream: Arc<str> = Arc::from(stream);
    let mut breaker = Breaker::new(Policy::consecutive(2, 10)).unwrap();
    let mut events = Vec::new();
    let mut last = None;
    for i in 0..n {
        let t = t0 + i * 100;
        if let Decision::Permit(p) = breaker.acquire(t, &mut events) {
            breaker.complete(t + 1, p, Outcome::Failure, &mut events);
        }
        for e in events.drain(..) {
            last = journal.submit(&stream, Body::Breaker(e));
        }
    }
    journal.durable(last.unwrap()).await.unwrap();
    journal.last_position().await.unwrap()
}

/// The fleet's log down (`pg_ctl stop -m immediate` on a cluster of the test's own): the node
/// keeps writing its own log, says since when the fleet's view is stale, and ships every event,
/// once, in order, when the server is back. A node that starts while it is down runs or refuses
/// as `offline_start` says, within the connect timeout. A second live process as the same node
/// is refused, naming the holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_log_down_loses_nothing_and_a_node_name_has_one_live_process() {
    use breakerbox::journal::Journal;
    use breakerbox::journal::fleet::{FleetError, FleetOptions, OfflineStart, Shipper};
    let Some(cluster) = OwnCluster::create() else { return };
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", cluster.port);
    let options = || FleetOptions {
        connect_timeout: Duration::from_secs(1),
        ..FleetOptions::new(url.clone())
    };
    let dir = tempfile::tempdir().unwrap();
    let open = |name: &str| {
        let path = dir.path().join(format!("{name}.db"));
        let node: Arc<str> = Arc::from(name);
        async move {
            let options = breakerbox::journal::JournalOptions {
                node,
                ..Default::default()
            };
            Arc::new(Journal::open(&path, options).await.unwrap())
        }
    };
    let journal = open("app-1").await;
    let shipper = Shipper::start(journal.clone(), "app-1", "test pid 1", options())
        .await
        .unwrap();
    let first = write_events(&journal, "stripe", 20, 1_000).await;
    within(shipper.wait_for(|s| s.shipped == Some(first))).await;

    // Another process as app-1: refused, naming the holder.
    let other = open("app-2").await;
    match Shipper::start(other.clone(), "app-1", "test pid 2", options()).await {
        Err(FleetError::Held(e)) => assert!(e.to_string().contains("test pid 1"), "{e}"),
        Err(e) => panic!("refused for the wrong reason: {e}"),
        Ok(_) => panic!("a second live process as app-1 was let in"),
    }

    cluster.stop("immediate");
    let second = write_events(&journal, "stripe", 20, 10_000).await;
    assert!(
        second > first,
        "the node's own log keeps taking events while the fleet's is down"
    );
    let stale = within(shipper.wait_for(|s| s.failing_since_ms.is_some())).await;
    assert_eq!(stale.shipped, Some(first), "{stale:?}");
    // Starting while it is down: refused within the connect timeout, or run as asked.
    let started = Instant::now();
    let refused = Shipper::start(
        other.clone(),
        "app-2",
        "test pid 3",
        FleetOptions {
            offline_start: OfflineStart::Refuse,
            ..options()
        },
    )
    .await;
    assert!(
        matches!(refused, Err(FleetError::Unreachable { .. })),
        "{:?}",
        refused.err()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "start-up waited {:?}",
        started.elapsed()
    );
    let offline = Shipper::start(other.clone(), "app-2", "test pid 3", options())
        .await
        .unwrap();
    let other_last = write_events(&other, "calcom", 5, 1_000).await;

    cluster.start();
    let back = within(shipper.wait_for(|s| s.shipped == Some(second) && s.failing.is_none())).await;
    assert_eq!(back.failing_since_ms, None);
    within(offline.wait_for(|s| s.shipped == Some(other_last))).await;
    let log = PgLog::connect(&url, Duration::from_secs(5), 2).await.unwrap();
    let shipped = log.read_node("app-1", 0, 10_000).await.unwrap();
    let own = journal.read_shippable(0, 10_000).await.unwrap();
    assert_eq!(
        shipped, own,
        "every event once, in the node's order, with its position and link"
    );
    assert_eq!(
        log.read_node("app-2", 0, 10_000).await.unwrap().len() as i64,
        other_last
    );
    shipper.stop(Duration::from_secs(5)).await;
    offline.stop(Duration::from_secs(5)).await;
    // The lease is given up on stop: a new process as app-1 may ship now.
    let again = Shipper::start(journal.clone(), "app-1", "test pid 4", options())
        .await
        .unwrap();
    again.stop(Duration::from_secs(5)).await;
    log.close().await;
    journal.close().await;
    other.close().await;
    cluster.stop("fast");
}

/// SIGKILL of a node mid-run (a `demo` shipping as it goes), then the same node started again
/// on the same file: it takes its lease back at once (the holder is gone), resumes where the
/// fleet's log ends, and the fleet's copy equals the node's log event for event — none lost,
/// none twice, positions contiguous.
#[test]
fn a_node_killed_mid_shipment_resumes_without_a_loss_or_a_duplicate() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(db) = rt.block_on(Db::create("kill")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("app-1.db");
    let spool_s = spool.display().to_string();
    let args = |secs: &'static str| {
        vec![
            "demo".to_owned(),
            "--duration".into(),
            secs.into(),
            "--bind".into(),
            "127.0.0.1:0".into(),
            "--db".into(),
            db.url.clone(),
            "--node".into(),
            "app-1".into(),
            "--spool".into(),
            spool_s.clone(),
        ]
    };
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_breakerbox"))
        .args(args("60s"))
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let log = rt.block_on(PgLog::connect(&db.url, Duration::from_secs(5), 2)).unwrap();
    // Killed once the fleet's log has taken a few shipments.
    let deadline = Instant::now() + Duration::from_secs(30);
    while rt.block_on(log.shipped_position("app-1")).unwrap() < 30 {
        assert!(Instant::now() < deadline, "the node shipped nothing");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let at_kill = rt.block_on(log.shipped_position("app-1")).unwrap();
    breakerbox(&args("5s").iter().map(String::as_str).collect::<Vec<_>>(), dir.path());
    let journal = rt
        .block_on(breakerbox::journal::Journal::open(
            &spool,
            breakerbox::journal::JournalOptions::default(),
        ))
        .unwrap();
    let own = rt.block_on(journal.read_shippable(0, 1_000_000)).unwrap();
    let shipped = rt.block_on(log.read_node("app-1", 0, 1_000_000)).unwrap();
    assert!(own.len() as i64 > at_kill, "the second run wrote more");
    assert_eq!(shipped.len(), own.len(), "every event once");
    assert_eq!(shipped, own, "the fleet's copy is the node's log, in its order");
    rt.block_on(journal.close());
    rt.block_on(log.close());
}

/// What a role that runs nodes is granted (docs/fleet.md, "Running as a role that owns nothing").
const NODE_GRANTS: [&str; 10] = [
    "GRANT SELECT, INSERT ON events, event_order TO {role}",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON fleet_episodes TO {role}",
    "GRANT SELECT, INSERT ON fleet_commands, fleet_acks TO {role}",
    "GRANT SELECT, INSERT, UPDATE ON node_health TO {role}",
    "GRANT SELECT, INSERT, UPDATE ON nodes TO {role}",
    "GRANT SELECT, INSERT, UPDATE ON shipped TO {role}",
    "GRANT SELECT, UPDATE ON sequencer TO {role}",
    "GRANT SELECT ON _sqlx_migrations TO {role}",
    "GRANT EXECUTE ON FUNCTION breakerbox_compact_calls(text, text, bigint) TO {role}",
    "GRANT EXECUTE ON FUNCTION breakerbox_compact_shipped(text, text, bigint[]) TO {role}",
];

/// A snapshot of `stream` at 100 s after the epoch, then the node's own retention over
/// everything before now: the call batches written before it become summaries. The report.
async fn snapshot_and_compact(
    journal: &breakerbox::journal::Journal,
    stream: &str,
) -> breakerbox::journal::CompactReport {
    use breakerbox::breaker::{Breaker, Policy};
    use breakerbox::journal::Body;
    let snapshot = journal.submit(
        &Arc::from(stream),
        Body::Snapshot {
            at_ms: 100_000,
            breaker: Box::new(Breaker::new(Policy::consecutive(2, 10)).unwrap()),
        },
    );
    journal.durable(snapshot.unwrap()).await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    journal.compact(0, now).await.unwrap()
}

/// The schema's owner migrates once (`breakerbox migrate`); nodes then run as a role that owns
/// nothing and holds only the documented grants: it ships, runs the sequencer and reads a node
/// back. Before the owner migrated, such a role is told to have it done, by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_run_as_a_role_that_owns_nothing_once_the_owner_migrated() {
    use breakerbox::journal::fleet::{FleetOptions, Shipper, node_copy};
    let Some(db) = Db::create("owner").await else { return };
    let role = format!("bb_node_{}", std::process::id());
    let mut owner = sqlx::PgConnection::connect(&db.url).await.unwrap();
    for statement in [
        format!("DROP ROLE IF EXISTS {role}"),
        format!("CREATE ROLE {role} LOGIN"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut owner)
            .await
            .unwrap();
    }
    let (scheme, _) = db.url.split_once("://").unwrap();
    let host_db = db.url.rsplit_once('@').map_or(db.url.as_str(), |(_, h)| h);
    let as_node = format!("{scheme}://{role}@{host_db}");
    let e = PgLog::connect(&as_node, Duration::from_secs(5), 1)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("breakerbox migrate --db URL"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let options = breakerbox::journal::JournalOptions {
        node: Arc::from("app-1"),
        ..Default::default()
    };
    let journal = Arc::new(
        breakerbox::journal::Journal::open(&dir.path().join("app-1.db"), options)
            .await
            .unwrap(),
    );
    write_events(&journal, "stripe", 20, 1_000).await;
    // A summary among what it ships: its replaced batches go through breakerbox_compact_shipped.
    assert!(snapshot_and_compact(&journal, "stripe").await.summaries > 0);
    let last = journal.last_position().await.unwrap();
    // Before the owner migrated: the node starts (offline_start = "run") and says why it cannot
    // ship; a command that reads says to migrate, and changes nothing.
    let shipper = Shipper::start(journal.clone(), "app-1", "test", FleetOptions::new(as_node.clone()))
        .await
        .unwrap();
    let waiting = within(shipper.wait_for(|s| s.failing.is_some())).await;
    assert!(
        waiting
            .failing
            .as_deref()
            .unwrap()
            .contains("breakerbox migrate --db URL"),
        "{waiting:?}"
    );
    let e = node_copy(&as_node, None, Duration::from_secs(5))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("run breakerbox migrate --db URL"), "{e}");

    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
        .unwrap()
        .count();
    let out = breakerbox(&["migrate", "--db", &db.url], dir.path());
    assert!(out.contains(&format!("{migrations} migrations applied")), "{out}");
    let out = breakerbox(&["migrate", "--db", &db.url], dir.path());
    assert!(out.contains("0 migrations applied"), "{out}");
    for grant in NODE_GRANTS {
        sqlx::query(sqlx::AssertSqlSafe(grant.replace("{role}", &role)))
            .execute(&mut owner)
            .await
            .unwrap();
    }

    // Migrated and granted: it ships what waited (its retries back off to 5 s at most).
    let shipped = within(shipper.wait_for(|s| s.shipped == Some(last) && s.failing.is_none())).await;
    // And publishes its health for fleet views, with the one grant on node_health.
    shipper.health().put(1, "{}".into());
    within(async {
        loop {
            let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM node_health WHERE node = 'app-1'")
                .fetch_one(&mut owner)
                .await
                .unwrap();
            if n == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(shipped.failing_since_ms, None);
    let (copy, node) = node_copy(&as_node, None, Duration::from_secs(5)).await.unwrap();
    assert_eq!(node, "app-1");
    assert_eq!(
        copy.read_shippable(0, 1_000).await.unwrap(),
        journal.read_shippable(0, 1_000).await.unwrap()
    );
    let log = PgLog::connect(&as_node, Duration::from_secs(5), 1).await.unwrap();
    // The sequencer runs as the node's role. Its rounds number only what passed below the
    // cluster-wide horizon (other tests' transactions hold it back), so it goes round until it
    // has numbered every event shipped.
    let shipped_events = journal.read_shippable(0, 1_000).await.unwrap().len() as i64;
    within(async {
        while log.last_position().await.unwrap() < shipped_events {
            log.sequence(1_000).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        log.last_position().await.unwrap(),
        shipped_events,
        "each event numbered once"
    );
    log.close().await;
    copy.close().await;
    shipper.stop(Duration::from_secs(5)).await;
    journal.close().await;
    for statement in [format!("DROP OWNED BY {role}"), format!("DROP ROLE {role}")] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut owner)
            .await
            .unwrap();
    }
}

/// `serve`'s parts with a fleet log: the health document and `/metrics` say how far the node's
/// log is shipped.
#[test]
fn the_health_api_and_the_metrics_say_how_far_the_node_is_shipped() {
    use breakerbox::app::{App, AppOptions, HttpOptions};
    use breakerbox::config::{Config, Secret};
    use breakerbox::http::auth::Token;
    use breakerbox::journal::fleet::FleetOptions;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(db) = rt.block_on(Db::create("health")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let token = "t".repeat(40);
    actix_web::rt::System::new().block_on(async {
        let config = Config::from_toml(
            std::path::Path::new("t.toml"),
            "[services.stripe]\n",
            &Default::default(),
        )
        .unwrap();
        let options = AppOptions {
            journal: breakerbox::journal::JournalOptions {
                node: Arc::from("app-1"),
                ..Default::default()
            },
            fleet: Some(FleetOptions::new(db.url.clone())),
            http: Some(HttpOptions {
                bind: "127.0.0.1:0".parse().unwrap(),
                tokens: vec![Token::new("t", &Secret::new(token.clone()))],
                any_port_if_taken: false,
            }),
            alerts: false,
            ..AppOptions::default()
        };
        let app = App::start(&dir.path().join("app-1.db"), &config, options)
            .await
            .unwrap();
        let stripe = app.registry().get("stripe").unwrap().clone();
        for _ in 0..5 {
            let _ = stripe.call("", async { Err::<(), _>("down") }).await;
        }
        stripe.inspect().await;
        let position = app.journal().flush().await.unwrap().position;
        within(app.shipped(position)).await.unwrap();
        let base = format!("http://{}", app.http_addrs()[0]);
        let client = reqwest::Client::new();
        let get = |path: &str| {
            client
                .get(format!("{base}{path}"))
                .header("Authorization", format!("Bearer {token}"))
                .send()
        };
        let health: serde_json::Value =
            serde_json::from_str(&get("/api/health/circuit-breakers").await.unwrap().text().await.unwrap()).unwrap();
        assert_eq!(health["fleet"]["node"], "app-1", "{health}");
        assert!(health["fleet"]["shipped"].as_i64().unwrap() >= position, "{health}");
        assert_eq!(health["fleet"]["failing"], serde_json::Value::Null, "{health}");
        let metrics = get("/metrics").await.unwrap().text().await.unwrap();
        assert!(
            metrics.contains("\ncircuit_breaker_fleet_log_stale_seconds 0\n"),
            "{metrics}"
        );
        assert!(metrics.contains("\ncircuit_breaker_fleet_log_unshipped "), "{metrics}");
        app.shutdown().await.unwrap();
    });
}

/// A shipment whose COMMIT answer was lost (a relay cuts the connection just after passing it
/// on: the rows are in) while the node writes on: the next shipment is larger than the lost one,
/// and starts after it, from the checkpoint the database holds. Nothing is written twice, and
/// shipping goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shipment_whose_answer_was_lost_is_not_shipped_again_when_more_came_meanwhile() {
    use breakerbox::journal::fleet::{FleetOptions, Shipper};
    let Some(db) = Db::create("shiplost").await else { return };
    connect(&db).await.close().await;
    let (prefix, rest) = db.url.split_once('@').unwrap();
    let (hostport, dbname) = rest.split_once('/').unwrap();
    let server: std::net::SocketAddr = tokio::net::lookup_host(hostport).await.unwrap().next().unwrap();
    let armed = Arc::new(AtomicBool::new(false));
    let relay = cutting_relay(server, armed.clone()).await;
    let through = format!("{prefix}@{relay}/{dbname}");
    let dir = tempfile::tempdir().unwrap();
    let options = breakerbox::journal::JournalOptions {
        node: Arc::from("app-1"),
        ..Default::default()
    };
    let journal = Arc::new(
        breakerbox::journal::Journal::open(&dir.path().join("app-1.db"), options)
            .await
            .unwrap(),
    );
    let shipper = Shipper::start(journal.clone(), "app-1", "test", FleetOptions::new(through))
        .await
        .unwrap();
    let first = write_events(&journal, "stripe", 10, 1_000).await;
    within(shipper.wait_for(|s| s.shipped == Some(first))).await;
    armed.store(true, Ordering::Release);
    let second = write_events(&journal, "stripe", 10, 10_000).await;
    // The cut happened (the server committed the shipment, the shipper heard nothing)…
    within(async {
        while armed.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    // …and more came before its retry.
    let third = write_events(&journal, "calcom", 10, 20_000).await;
    assert!(third > second && second > first);
    let done = within(shipper.wait_for(|s| s.shipped == Some(third) && s.failing.is_none())).await;
    assert_eq!(done.failing_since_ms, None);
    let direct = connect(&db).await;
    assert_eq!(
        direct.read_node("app-1", 0, 10_000).await.unwrap(),
        journal.read_shippable(0, 10_000).await.unwrap(),
        "every event once, in order"
    );
    direct.close().await;
    shipper.stop(Duration::from_secs(5)).await;
    journal.close().await;
}

/// Rows keep the node they were written as: a log written before nodes were recorded (node '')
/// and then under an older name ships under the node that ships it, two such nodes do not
/// collide, and each node's copy verifies and equals its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_keep_the_node_they_were_written_as_and_still_verify_in_the_fleet_log() {
    use breakerbox::journal::fleet::{FleetOptions, Shipper, node_copy};
    use breakerbox::journal::{Journal, JournalOptions};
    let Some(db) = Db::create("renamed").await else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut logs = Vec::new();
    for node in ["app-1", "app-2"] {
        let path = dir.path().join(format!("{node}.db"));
        // Written as '' (before nodes were recorded), then as the host's old name, then as the node.
        for (name, t0) in [("", 1_000), ("old-host", 10_000), (node, 20_000)] {
            let options = JournalOptions {
                node: Arc::from(name),
                ..Default::default()
            };
            let journal = Journal::open(&path, options).await.unwrap();
            write_events(&journal, "stripe", 6, t0).await;
            journal.close().await;
        }
        let options = JournalOptions {
            node: Arc::from(node),
            ..Default::default()
        };
        let journal = Arc::new(Journal::open(&path, options).await.unwrap());
        let last = journal.last_position().await.unwrap();
        let shipper = Shipper::start(journal.clone(), node, node, FleetOptions::new(db.url.clone()))
            .await
            .unwrap();
        let status = within(shipper.wait_for(|s| s.shipped == Some(last) || s.failing.is_some())).await;
        assert_eq!((status.shipped, status.failing), (Some(last), None), "{node}");
        shipper.stop(Duration::from_secs(5)).await;
        logs.push((node, journal));
    }
    for (node, journal) in logs {
        let (copy, _) = node_copy(&db.url, Some(node), Duration::from_secs(5)).await.unwrap();
        let own = journal.read_shippable(0, 10_000).await.unwrap();
        assert_eq!(copy.read_shippable(0, 10_000).await.unwrap(), own, "{node}");
        let names: BTreeSet<&str> = own.iter().map(|s| s.event.node.as_str()).collect();
        assert_eq!(names, BTreeSet::from(["", "old-host", node]), "{node}");
        let report = copy.verify().await.unwrap();
        assert!(report.findings.is_empty(), "{node}: {:?}", report.findings);
        assert!(report.events > 10, "{node}: {report:?}");
        copy.close().await;
        journal.close().await;
    }
}

/// The node's own retention replaces call batches by per-minute summaries and deletes them.
/// Shipping the summaries deletes the batches they replaced from the fleet's log too (through
/// its one narrow path), the node's copy equals its file again (no compacted minute counted
/// twice), and the chain verifies across the summaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nodes_retention_is_followed_in_the_fleet_log_and_its_copy() {
    use breakerbox::journal::fleet::{FleetOptions, Shipper, node_copy};
    use breakerbox::journal::{Journal, JournalOptions};
    let Some(db) = Db::create("retention").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let options = JournalOptions {
        node: Arc::from("app-1"),
        ..Default::default()
    };
    let journal = Arc::new(Journal::open(&dir.path().join("app-1.db"), options).await.unwrap());
    write_events(&journal, "stripe", 30, 1_000).await;
    let shipper = Shipper::start(journal.clone(), "app-1", "test", FleetOptions::new(db.url.clone()))
        .await
        .unwrap();
    let before = journal.last_position().await.unwrap();
    within(shipper.wait_for(|s| s.shipped == Some(before))).await;
    let log = connect(&db).await;
    let batches = |log: PgLog| async move {
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM events WHERE event_type = 'call_batch'")
            .fetch_one(log.pool())
            .await
            .unwrap();
        n
    };
    assert!(batches(log.clone()).await > 0, "the batches were shipped");
    let report = snapshot_and_compact(&journal, "stripe").await;
    assert!(report.batches > 0 && report.summaries > 0, "{report:?}");
    let after = journal.last_position().await.unwrap();
    within(shipper.wait_for(|s| s.shipped == Some(after))).await;
    assert_eq!(
        batches(log.clone()).await,
        0,
        "shipping the summaries removed what they replaced"
    );
    let (copy, _) = node_copy(&db.url, Some("app-1"), Duration::from_secs(5)).await.unwrap();
    let own = journal.read_shippable(0, 10_000).await.unwrap();
    assert_eq!(copy.read_shippable(0, 10_000).await.unwrap(), own);
    assert!(
        own.iter().all(|s| s.event.event_type != "call_batch"),
        "every batch was compacted"
    );
    let report = copy.verify().await.unwrap();
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    copy.close().await;
    log.close().await;
    shipper.stop(Duration::from_secs(5)).await;
    journal.close().await
}

/// Golden: a demo's log in the format of the tree before the fleet log (schema 7: nodes, every
/// row chained), never rewritten. It opens as it is, ships as it is, and its copy in the fleet's
/// log equals it and verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_written_before_the_fleet_log_opens_and_ships_unchanged() {
    use breakerbox::journal::fleet::{FleetOptions, Shipper, node_copy};
    use breakerbox::journal::{Journal, JournalOptions};
    let Some(db) = Db::create("golden").await else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app-7.db");
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/logs/schema7.db"),
        &path,
    )
    .unwrap();
    let options = JournalOptions {
        node: Arc::from("app-7"),
        ..Default::default()
    };
    let journal = Arc::new(Journal::open(&path, options).await.unwrap());
    assert!(
        journal.restored_triggers().is_empty(),
        "{:?}",
        journal.restored_triggers()
    );
    let own = journal.read_shippable(0, 10_000).await.unwrap();
    assert_eq!(own.len(), 40);
    assert!(own.iter().all(|s| s.event.node == "app-7" && s.hash.is_some()));
    let last = own.last().unwrap().event.position;
    let shipper = Shipper::start(journal.clone(), "app-7", "test", FleetOptions::new(db.url.clone()))
        .await
        .unwrap();
    within(shipper.wait_for(|s| s.shipped == Some(last))).await;
    let (copy, node) = node_copy(&db.url, None, Duration::from_secs(5)).await.unwrap();
    assert_eq!(node, "app-7");
    assert_eq!(copy.read_shippable(0, 10_000).await.unwrap(), own);
    let report = copy.verify().await.unwrap();
    assert!(report.ok() && report.events == 40, "{report:?}");
    copy.close().await;
    shipper.stop(Duration::from_secs(5)).await;
    journal.close().await;
}

/// `breakerbox nodes`: live, stopped (a clean stop gives the lease up and is kept as last seen),
/// lapsed (died or cut off) and gone (longer ago than --gone-after, or never held a lease here),
/// gone ones left out unless --all; their history stays.
#[test]
fn nodes_lists_the_fleet_and_leaves_gone_nodes_out() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(db) = rt.block_on(Db::create("nodes")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let log = connect(&db).await;
        let ttl = Duration::from_secs(30);
        for node in ["app-1", "app-2", "app-3", "app-4"] {
            log.acquire_node(node, &format!("serve {node}"), ttl).await.unwrap();
        }
        log.release_node("app-2", "serve app-2").await.unwrap();
        log.release_node("app-4", "serve app-4").await.unwrap();
        for statement in [
            "UPDATE nodes SET renewed_at = renewed_at - 31000 WHERE node = 'app-3'",
            "UPDATE nodes SET released_at = released_at - 1200000 WHERE node = 'app-4'",
        ] {
            sqlx::query(statement).execute(log.pool()).await.unwrap();
        }
        // Shipped, but never held a lease here.
        let event = breakerbox::journal::StoredEvent {
            position: 1,
            node: "app-5".into(),
            stream: "stripe".into(),
            seq: 1,
            event_type: "transition".into(),
            event_version: 1,
            recorded_at: 1,
            payload: vec![1],
        };
        let shipped = breakerbox::journal::Shippable { event, hash: None };
        log.ship("app-5", &[shipped]).await.unwrap();
        // A stopped node's name is free for the next process at once.
        log.acquire_node("app-2", "serve app-2 again", ttl).await.unwrap();
        log.release_node("app-2", "serve app-2 again").await.unwrap();
        log.close().await;
    });
    let states = |out: &str| -> Vec<(String, String)> {
        let doc: serde_json::Value = serde_json::from_str(out).unwrap();
        doc["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["node"].as_str().unwrap().to_owned(),
                    n["state"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let out = breakerbox(&["nodes", "--db", &db.url, "--json"], dir.path());
    assert_eq!(
        states(&out),
        [("app-1", "live"), ("app-2", "stopped"), ("app-3", "lapsed")].map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    assert!(out.contains("\"gone_hidden\":2"), "{out}");
    let out = breakerbox(&["nodes", "--db", &db.url, "--json", "--all"], dir.path());
    assert_eq!(states(&out).len(), 5);
    assert!(states(&out).contains(&("app-4".into(), "gone".into())), "{out}");
    assert!(states(&out).contains(&("app-5".into(), "gone".into())), "{out}");
    // A longer gone-after keeps app-4 (stopped 20 minutes ago) in view.
    let out = breakerbox(&["nodes", "--db", &db.url, "--json", "--gone-after", "1h"], dir.path());
    assert!(states(&out).contains(&("app-4".into(), "stopped".into())), "{out}");
    let table = breakerbox(&["nodes", "--db", &db.url], dir.path());
    assert!(
        table.contains("app-3") && table.contains("lapsed") && table.contains("2 gone nodes left out"),
        "{table}"
    );
    for (args, says) in [
        (vec!["nodes", "--db", &db.url, "--gone-after", "soon"], "soon"),
        (vec!["nodes", "--db", "breakerbox.db"], "a log file has one node"),
    ] {
        let err = refused(&args, dir.path());
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// The read side of the storage layer, one suite over both backends: a node's own SQLite log and
/// its history read back from the fleet's PostgreSQL log answer every read alike — streams, the
/// log in order (paged, and tailed by cursor), ranges by type and time, latest look-ups,
/// recovery, the metrics projection rebuilt from each, and the chain. The log holds
/// transitions, call batches, snapshots, an operation's stream, and summaries from the node's
/// own retention, shipped in several shipments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_answers_alike_from_a_nodes_file_and_from_the_fleet_log() {
    use breakerbox::breaker::Policy;
    use breakerbox::journal::fleet::{FleetOptions, Shipper, node_copy};
    use breakerbox::journal::{Journal, JournalOptions};
    let Some(db) = Db::create("conform").await else { return };
    let dir = tempfile::tempdir().unwrap();
    let options = JournalOptions {
        node: Arc::from("app-1"),
        ..Default::default()
    };
    let journal = Arc::new(Journal::open(&dir.path().join("app-1.db"), options).await.unwrap());
    let shipper = Shipper::start(journal.clone(), "app-1", "test", FleetOptions::new(db.url.clone()))
        .await
        .unwrap();
    let streams = ["stripe", "calcom", "stripe/customers.create"];
    for (i, stream) in streams.iter().enumerate() {
        write_events(&journal, stream, 40, 1_000 + i as u64 * 50).await;
        let last = journal.last_position().await.unwrap();
        within(shipper.wait_for(|s| s.shipped == Some(last))).await;
    }
    assert!(snapshot_and_compact(&journal, "stripe").await.summaries > 0);
    write_events(&journal, "stripe", 20, 200_000).await;
    write_events(&journal, "calcom", 20, 200_000).await;
    let last = journal.last_position().await.unwrap();
    within(shipper.wait_for(|s| s.shipped == Some(last))).await;
    shipper.stop(Duration::from_secs(5)).await;
    let (copy, _) = node_copy(&db.url, Some("app-1"), Duration::from_secs(5)).await.unwrap();

    let both = [journal.as_ref(), &copy];
    macro_rules! alike {
        ($what:expr, |$j:ident| $read:expr) => {{
            let mut answers = Vec::new();
            for $j in both {
                answers.push($read);
            }
            assert_eq!(answers[0], answers[1], "{}", $what);
            answers.pop().unwrap()
        }};
    }
    let everything = alike!("read_after", |j| j.read_after(0, 100_000).await.unwrap());
    assert!(everything.len() > 50, "{}", everything.len());
    alike!("last_position", |j| j.last_position().await.unwrap());
    alike!("tail, by pages of 7", |j| {
        let mut cursor = j.cursor_at(0).await.unwrap();
        let mut read = Vec::new();
        loop {
            let (page, next) = j.tail(&cursor, 7).await.unwrap();
            if page.is_empty() {
                break read;
            }
            read.extend(page);
            cursor = next;
        }
    });
    let mid = everything[everything.len() / 2].recorded_at;
    alike!("read_range, all types, from the middle", |j| {
        j.read_range(&[], mid, i64::MAX, 0, 100_000).await.unwrap()
    });
    alike!("read_range, transitions and summaries", |j| {
        j.read_range(&["transition", "call_summary"], 0, i64::MAX, 0, 100_000)
            .await
            .unwrap()
    });
    for stream in streams.iter().chain(&["_journal", "nothing-here"]) {
        alike!(stream, |j| j.read_stream(stream, 0, 100_000).await.unwrap());
        alike!(stream, |j| j.read_stream(stream, 5, 3).await.unwrap());
        alike!(stream, |j| j.first_of_types(stream, 0, &["transition"]).await.unwrap());
        for kind in ["transition", "snapshot", "call_summary"] {
            alike!(kind, |j| j.has_event_type(stream, kind).await.unwrap());
            alike!(kind, |j| j.latest(stream, kind).await.unwrap());
            alike!(kind, |j| j.latest_at_or_before(stream, kind, mid as u64).await.unwrap());
            alike!(kind, |j| j
                .read_stream_range(stream, kind, 0, u64::MAX, 3)
                .await
                .unwrap());
        }
        alike!(stream, |j| {
            let r = j.recover(stream, Policy::consecutive(2, 10)).await.unwrap();
            (r.breaker, r.last_seq, r.folded, r.snapshot_seq, r.damaged)
        });
    }
    let minutes = alike!("the metrics projection, rebuilt from each", |j| {
        let mut projection = breakerbox::replay::Projection::open(j);
        projection.rebuild(j, 500).await.unwrap();
        let mut all = Vec::new();
        for stream in streams {
            all.push(projection.minutes(stream, 0, 10_000_000).await.unwrap());
        }
        all
    });
    assert!(minutes.iter().all(|m| !m.is_empty()), "{minutes:?}");
    let report = alike!("verify", |j| {
        let r = j.verify().await.unwrap();
        (r.ok(), r.events, r.compacted, r.heads)
    });
    assert!(report.0 && report.2 > 0, "{report:?}");
    copy.close().await;
    journal.close().await;
}

/// After a logical restore (pg_dump, then restore: transaction ids start again), restored rows
/// carry the old cluster's ids, which may be far above this one's horizon: the tail would wait
/// for them for ever. `migrate --new-epoch` starts a new epoch: the restored rows are final and
/// read once, in their order, and new rows follow them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_epoch_after_a_restore_makes_restored_rows_final_and_new_ones_follow() {
    let Some(db) = Db::create("epoch").await else { return };
    let log = connect(&db).await;
    let (now,): (String,) = sqlx::query_as("SELECT pg_current_xact_id()::text")
        .fetch_one(log.pool())
        .await
        .unwrap();
    let old_cluster = now.parse::<u64>().unwrap() + 1_000_000_000;
    for seq in 1..=3i64 {
        sqlx::query(
            "INSERT INTO events (tx, epoch, node, stream, seq, event_type, event_version, recorded_at, batch_id, payload) \
             VALUES ($1::text::xid8, 0, 'restored', 'stripe', $2, 'transition', 1, $2, '\\x00', '\\x01')",
        )
        .bind((old_cluster + seq as u64).to_string())
        .bind(seq)
        .execute(log.pool())
        .await
        .unwrap();
    }
    let (before, _) = log.tail(&PgCursor::default(), 100).await.unwrap();
    assert!(before.is_empty(), "above the horizon, before the new epoch: {before:?}");
    let dir = tempfile::tempdir().unwrap();
    let out = breakerbox(&["migrate", "--db", &db.url, "--new-epoch"], dir.path());
    assert!(out.contains("epoch 1 begins"), "{out}");
    log.append(&[1; 16], &[row("new", "stripe", 1)]).await.unwrap();
    let (read, _) = within(read_all(&log, PgCursor::default(), 4)).await;
    let seen: Vec<(&str, i64, i32)> = read.iter().map(|(c, e)| (e.node.as_str(), e.seq, c.epoch)).collect();
    assert_eq!(
        seen,
        [
            ("restored", 1, 0),
            ("restored", 2, 0),
            ("restored", 3, 0),
            ("new", 1, 1)
        ]
    );
    // The sequencer numbers them the same way.
    assert_eq!(log.sequence(100).await.unwrap(), 4);
    log.close().await;
    refused(&["migrate", "--db", "x.db", "--new-epoch"], dir.path());
}

// ---------------------------------------------------------------------------------------------
// The write side's conformance suite: one scenario, run against both backends as their writers
// use them (a node's SQLite file through its `Journal`; the fleet's log through `PgLog`).

/// One backend's write side: writers (processes as the node `app-1`) that append to streams at
/// the seqs after the last they know of, and the lease that says which of them is the writer.
trait WriteSide {
    type Writer;
    /// A new writer process.
    async fn writer(&self) -> Self::Writer;
    /// Appends `n` events to `stream`, each payload naming `label` and its index; an error says
    /// why they were refused (then none of them is in the log).
    async fn append(&self, w: &mut Self::Writer, stream: &str, label: &str, n: u64) -> Result<(), String>;
    /// A stream as stored: (seq, payload).
    async fn stream(&self, stream: &str) -> Vec<(u64, Vec<u8>)>;
    /// Takes or renews the lease for `holder`; else the holder that has it.
    async fn lease(&self, w: &Self::Writer, holder: &str) -> Result<(), String>;
    /// The lease left unrenewed for longer than its ttl (made by hand).
    async fn lapse(&self);
    /// Takes the lease from `dead`, a holder judged gone, if `dead` still has it.
    async fn take_over(&self, w: &Self::Writer, holder: &str, dead: &str) -> bool;
    /// A clean stop: the lease given up, the writer closed.
    async fn stop(&self, w: Self::Writer, holder: &str);
    /// Runs `sql` on the log's events as a client would; its error, if the store refused it.
    async fn tamper(&self, sql: &'static str) -> Result<(), String>;
}

const LEASE_TTL: Duration = Duration::from_secs(30);

fn payload(label: &str, i: u64) -> Vec<u8> {
    rmp_serde::to_vec_named(&BTreeMap::from([(label.to_owned(), i)])).unwrap()
}

/// The node's own file.
struct SqliteSide(std::path::PathBuf);

impl WriteSide for SqliteSide {
    type Writer = breakerbox::journal::Journal;
    async fn writer(&self) -> Self::Writer {
        let options = breakerbox::journal::JournalOptions {
            node: Arc::from("app-1"),
            ..breakerbox::journal::JournalOptions::default()
        };
        breakerbox::journal::Journal::open(&self.0, options).await.unwrap()
    }
    async fn append(&self, w: &mut Self::Writer, stream: &str, label: &str, n: u64) -> Result<(), String> {
        let bodies = (0..n)
            .map(|i| breakerbox::journal::Body::Other {
                event_type: breakerbox::journal::OPERATOR_COMMAND,
                event_version: 1,
                at_ms: 1_700_000_000_000 + i,
                payload: payload(label, i),
            })
            .collect();
        let tracked = w.submit_all(&Arc::from(stream), bodies).map_err(|e| e.to_string())?;
        w.durable_position(tracked).await.map(|_| ()).map_err(|e| e.to_string())
    }
    async fn stream(&self, stream: &str) -> Vec<(u64, Vec<u8>)> {
        let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", self.0.display()))
            .await
            .unwrap();
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as("SELECT seq, payload FROM events WHERE stream = ? ORDER BY seq")
            .bind(stream)
            .fetch_all(&mut c)
            .await
            .unwrap();
        rows.into_iter().map(|(s, p)| (s as u64, p)).collect()
    }
    async fn lease(&self, w: &Self::Writer, holder: &str) -> Result<(), String> {
        let lease = w.acquire_lease(holder, LEASE_TTL).await.unwrap();
        if lease.holder == holder {
            Ok(())
        } else {
            Err(lease.holder)
        }
    }
    async fn lapse(&self) {
        let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", self.0.display()))
            .await
            .unwrap();
        sqlx::query("UPDATE writer_lease SET renewed_at = renewed_at - 31000")
            .execute(&mut c)
            .await
            .unwrap();
    }
    async fn take_over(&self, w: &Self::Writer, holder: &str, dead: &str) -> bool {
        let Some(seen) = w.lease().await.unwrap() else {
            return false;
        };
        if seen.holder != dead {
            return false;
        }
        w.take_over_lease(holder, LEASE_TTL, &seen).await.unwrap().holder == holder
    }
    async fn stop(&self, w: Self::Writer, _holder: &str) {
        w.close().await;
    }
    async fn tamper(&self, sql: &'static str) -> Result<(), String> {
        let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", self.0.display()))
            .await
            .unwrap();
        sqlx::query(sql)
            .execute(&mut c)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// The fleet's log: a writer keeps each stream's last seq as the journal's writer does (read
/// when it first writes the stream), and appends a batch of its own id per call.
struct PgSide(PgLog);

struct PgWriter {
    seqs: BTreeMap<String, u64>,
    batches: u8,
    id: u8,
}

impl WriteSide for PgSide {
    type Writer = PgWriter;
    async fn writer(&self) -> Self::Writer {
        static WRITERS: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
        PgWriter {
            seqs: BTreeMap::new(),
            batches: 0,
            id: WRITERS.fetch_add(1, Ordering::Relaxed),
        }
    }
    async fn append(&self, w: &mut Self::Writer, stream: &str, label: &str, n: u64) -> Result<(), String> {
        let last = match w.seqs.get(stream) {
            Some(&s) => s,
            None => self.0.last_seq("app-1", stream).await.unwrap(),
        };
        let rows: Vec<Row> = (0..n)
            .map(|i| Row {
                payload: payload(label, i),
                event_type: breakerbox::journal::OPERATOR_COMMAND,
                event_version: 1,
                recorded_at: 1_700_000_000_000 + i,
                ..row("app-1", stream, last + 1 + i)
            })
            .collect();
        w.batches += 1;
        let mut batch = [w.id; 16];
        batch[15] = w.batches;
        self.0.append(&batch, &rows).await.map_err(|e| e.to_string())?;
        w.seqs.insert(stream.to_owned(), last + n);
        Ok(())
    }
    async fn stream(&self, stream: &str) -> Vec<(u64, Vec<u8>)> {
        let rows: Vec<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT seq, payload FROM events WHERE node = 'app-1' AND stream = $1 ORDER BY seq")
                .bind(stream)
                .fetch_all(self.0.pool())
                .await
                .unwrap();
        rows.into_iter().map(|(s, p)| (s as u64, p)).collect()
    }
    async fn lease(&self, _: &Self::Writer, holder: &str) -> Result<(), String> {
        match self.0.acquire_node("app-1", holder, LEASE_TTL).await {
            Ok(_) => Ok(()),
            Err(LeaseError::Held(lease, _)) => Err(lease.holder),
            Err(e) => panic!("{e}"),
        }
    }
    async fn lapse(&self) {
        sqlx::query("UPDATE nodes SET renewed_at = renewed_at - 31000")
            .execute(self.0.pool())
            .await
            .unwrap();
    }
    async fn take_over(&self, _: &Self::Writer, holder: &str, dead: &str) -> bool {
        let taken = self.0.take_over_node("app-1", holder, LEASE_TTL, dead).await.unwrap();
        taken.is_some()
    }
    async fn stop(&self, _: Self::Writer, holder: &str) {
        self.0.release_node("app-1", holder).await.unwrap();
    }
    async fn tamper(&self, sql: &'static str) -> Result<(), String> {
        sqlx::query(sql)
            .execute(self.0.pool())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// The scenario; returns both streams as stored, to compare across backends.
async fn write_side_scenario<B: WriteSide>(b: &B) -> [Vec<(u64, Vec<u8>)>; 2] {
    let mut a = b.writer().await;
    let mut other = b.writer().await;
    // Leases: one holder; a second is refused, naming the first; the holder renews.
    assert_eq!(b.lease(&a, "a").await, Ok(()));
    assert_eq!(b.lease(&other, "b").await, Err("a".to_owned()));
    assert_eq!(b.lease(&a, "a").await, Ok(()));
    // Appends: each stream's seqs from 1, contiguous, in order.
    b.append(&mut a, "stripe", "a", 3).await.unwrap();
    b.append(&mut a, "calcom", "a", 2).await.unwrap();
    // A writer that ignores the lease: its append comes after what it read, and the holder's
    // next append, at a seq now taken, is refused whole and overwrites nothing.
    b.append(&mut other, "stripe", "b", 1).await.unwrap();
    let before = b.stream("stripe").await;
    let refused = b.append(&mut a, "stripe", "a-late", 2).await;
    assert!(refused.is_err(), "a taken seq was not refused");
    assert_eq!(b.stream("stripe").await, before, "a refused append changed the stream");
    // A lapsed lease is taken by the next; the old holder is then refused.
    b.lapse().await;
    assert_eq!(b.lease(&other, "b").await, Ok(()));
    assert_eq!(b.lease(&a, "a").await, Err("b".to_owned()));
    // A take-over from a holder judged gone happens only while that holder still has it.
    assert!(b.take_over(&a, "c", "b").await);
    assert!(
        !b.take_over(&a, "d", "b").await,
        "taken from a holder that no longer had it"
    );
    assert_eq!(b.lease(&other, "b").await, Err("c".to_owned()));
    // A clean stop frees the lease at once; a restarted writer continues each stream after its
    // last seq.
    b.stop(a, "c").await;
    b.stop(other, "b").await;
    let mut next = b.writer().await;
    assert_eq!(b.lease(&next, "e").await, Ok(()));
    b.append(&mut next, "stripe", "e", 2).await.unwrap();
    b.append(&mut next, "calcom", "e", 1).await.unwrap();
    b.stop(next, "e").await;
    // Append-only, enforced by the store whoever asks: no event is changed or deleted.
    let stored = b.stream("stripe").await;
    for sql in [
        "UPDATE events SET payload = payload WHERE stream = 'stripe' AND seq = 1",
        "DELETE FROM events WHERE stream = 'stripe' AND seq = 1",
    ] {
        let e = b.tamper(sql).await.expect_err(sql);
        assert!(e.contains("append-only"), "{sql}: {e}");
    }
    assert_eq!(b.stream("stripe").await, stored);
    let streams = [b.stream("stripe").await, b.stream("calcom").await];
    for s in &streams {
        let seqs: Vec<u64> = s.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(
            seqs,
            (1..=s.len() as u64).collect::<Vec<_>>(),
            "seqs not contiguous from 1"
        );
    }
    streams
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_behaves_alike_on_a_nodes_file_and_on_the_fleet_log() {
    let Some(db) = Db::create("writes").await else { return };
    let dir = tempfile::tempdir().unwrap();
    let sqlite = write_side_scenario(&SqliteSide(dir.path().join("app-1.db"))).await;
    let pg = PgSide(connect(&db).await);
    let fleet = write_side_scenario(&pg).await;
    pg.0.close().await;
    let labels = |s: &[(u64, Vec<u8>)]| -> Vec<(u64, BTreeMap<String, u64>)> {
        s.iter()
            .map(|(seq, p)| (*seq, rmp_serde::from_slice(p).unwrap()))
            .collect()
    };
    let want_stripe: Vec<(u64, BTreeMap<String, u64>)> = [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("e", 0), ("e", 1)]
        .iter()
        .enumerate()
        .map(|(i, (l, k))| (i as u64 + 1, BTreeMap::from([(l.to_string(), *k)])))
        .collect();
    assert_eq!(labels(&sqlite[0]), want_stripe, "sqlite");
    assert_eq!(sqlite, fleet, "the backends stored different streams");
}

/// An in-process node `node` of the fleet log at `url`: its own file in `dir`, shipping there;
/// the HTTP API on 127.0.0.1 with `token` (named `name`) when one is given; alerts as asked.
async fn fleet_app(
    dir: &std::path::Path,
    url: &str,
    node: &str,
    config: &breakerbox::config::Config,
    api: Option<(&str, &str)>,
    alerts: bool,
) -> breakerbox::app::App {
    use breakerbox::app::{App, AppOptions, HttpOptions};
    let options = AppOptions {
        journal: breakerbox::journal::JournalOptions {
            node: Arc::from(node),
            ..Default::default()
        },
        fleet: Some(breakerbox::journal::fleet::FleetOptions::new(url)),
        http: api.map(|(name, token)| HttpOptions {
            bind: "127.0.0.1:0".parse().unwrap(),
            tokens: vec![breakerbox::http::auth::Token::new(
                name,
                &breakerbox::config::Secret::new(token.to_owned()),
            )],
            any_port_if_taken: false,
        }),
        alerts,
        ..AppOptions::default()
    };
    App::start(&dir.join(format!("{node}.db")), config, options)
        .await
        .unwrap()
}

/// Fleet health ([fleet-ops]): four nodes publish their own health reports; `GET
/// /api/fleet/health/{service}` on one of them and `status --fleet` merge them alike. One node's
/// stripe failing is that node's trouble, named as an outlier; stripe failing on every node is
/// the service's.
#[test]
fn fleet_health_tells_one_nodes_trouble_from_the_services() {
    use breakerbox::app::App;
    use breakerbox::config::Config;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(db) = rt.block_on(Db::create("fleethealth")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let token = "t".repeat(40);
    actix_web::rt::System::new().block_on(async {
        let config = Config::from_toml(
            std::path::Path::new("t.toml"),
            "[services.stripe]\nfailure_threshold = 5\ntimeout = \"60s\"\n\n[services.calcom]\n",
            &Default::default(),
        )
        .unwrap();
        let mut apps = Vec::new();
        for n in 1..=4 {
            let api = (n == 1).then_some(("t", token.as_str()));
            apps.push(fleet_app(dir.path(), &db.url, &format!("app-{n}"), &config, api, false).await);
        }
        let calls = |app: &App, fail: bool| {
            let stripe = app.registry().get("stripe").unwrap().clone();
            async move {
                for _ in 0..20 {
                    let _ = stripe
                        .call("", async move { if fail { Err("down") } else { Ok(()) } })
                        .await;
                }
                stripe.inspect().await;
            }
        };
        for (i, app) in apps.iter().enumerate() {
            calls(app, i == 3).await;
        }
        let base = format!("http://{}", apps[0].http_addrs()[0]);
        let client = reqwest::Client::new();
        // Until every node's published report has its 20 attempts (each publishes every second).
        let settled = |want_state: &'static str| {
            let (client, base, token) = (client.clone(), base.clone(), token.clone());
            async move {
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    let body = client
                        .get(format!("{base}/api/fleet/health/stripe"))
                        .header("Authorization", format!("Bearer {token}"))
                        .send()
                        .await
                        .unwrap()
                        .text()
                        .await
                        .unwrap();
                    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
                    let rows = doc["breakers"][0]["nodes"].as_array().cloned().unwrap_or_default();
                    let attempts: Vec<u64> = rows.iter().map(|r| r["attempts_5m"].as_u64().unwrap()).collect();
                    if attempts == [20, 20, 20, 20] && rows[3]["state"] == want_state {
                        return doc;
                    }
                    if Instant::now() >= deadline {
                        let all = client
                            .get(format!("{base}/api/fleet/health"))
                            .header("Authorization", format!("Bearer {token}"))
                            .send()
                            .await
                            .unwrap()
                            .text()
                            .await
                            .unwrap();
                        panic!("fleet health did not settle: {doc:#}\n{all}");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let doc = settled("open").await;
        let stripe = &doc["breakers"][0];
        assert_eq!(stripe["service"], "stripe");
        assert_eq!(stripe["states"], serde_json::json!({"closed": 3, "open": 1}), "{doc:#}");
        assert_eq!(stripe["trouble"], "nodes", "{doc:#}");
        let outliers: Vec<&str> = stripe["outliers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["node"].as_str().unwrap())
            .collect();
        assert_eq!(outliers, ["app-4"], "{doc:#}");
        // Counters add: 60 successes, and app-4's 20 failed or rejected.
        let m = &stripe["metrics_5m"];
        let count = |k: &str| m[k].as_u64().unwrap();
        assert_eq!(
            (count("successes"), count("failures") + count("rejected")),
            (60, 20),
            "{doc:#}"
        );
        let spread = &stripe["spread"];
        assert!(spread["min"].as_u64() < spread["max"].as_u64(), "{doc:#}");
        for n in doc["nodes"].as_array().unwrap() {
            assert_eq!(n["state"], "live", "{doc:#}");
            assert_eq!(n["merged"], true, "{doc:#}");
            assert!(n["clock_skew_ms"].as_i64().unwrap().abs() < 1_000, "{doc:#}");
        }
        // The CLI answers with the same function: the same breakers.
        let cli = breakerbox(
            &["status", "--fleet", "--service", "stripe", "--json", "--db", &db.url],
            dir.path(),
        );
        let cli: serde_json::Value = serde_json::from_str(&cli).unwrap();
        assert_eq!(
            timeless(&cli["breakers"].to_string()),
            timeless(&doc["breakers"].to_string())
        );
        // Stripe failing on every node: the service's trouble, and no node stands out.
        for app in &apps[..3] {
            let stripe = app.registry().get("stripe").unwrap().clone();
            for _ in 0..5 {
                let _ = stripe.call("", async { Err::<(), _>("down") }).await;
            }
            stripe.inspect().await;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let doc = loop {
            let out = breakerbox(&["status", "--fleet", "--json", "--db", &db.url], dir.path());
            let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
            let stripe = doc["breakers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["service"] == "stripe")
                .cloned()
                .unwrap();
            if stripe["states"] == serde_json::json!({"open": 4}) {
                break doc;
            }
            assert!(Instant::now() < deadline, "not every node's stripe open: {doc:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let first = &doc["breakers"][0];
        assert_eq!(
            (first["service"].as_str(), first["trouble"].as_str()),
            (Some("stripe"), Some("service")),
            "in trouble first: {doc:#}"
        );
        assert_eq!(first["outliers"], serde_json::json!([]), "{doc:#}");
        let calcom = &doc["breakers"][1];
        assert_eq!(
            (calcom["service"].as_str(), calcom["trouble"].as_str()),
            (Some("calcom"), Some("none"))
        );
        // A node that stopped leaves the merge and says why.
        let last = apps.pop().unwrap();
        last.shutdown().await.unwrap();
        let out = breakerbox(&["status", "--fleet", "--json", "--db", &db.url], dir.path());
        let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
        let app4 = doc["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == "app-4")
            .cloned()
            .unwrap();
        assert_eq!(
            (app4["state"].as_str(), app4["merged"].as_bool()),
            (Some("stopped"), Some(false)),
            "{doc:#}"
        );
        assert_eq!(doc["breakers"][0]["nodes"].as_array().unwrap().len(), 3, "{doc:#}");
        // Without --db postgres://…, --fleet is refused by name.
        let err = refused(&["status", "--fleet", "--db", "x.db"], dir.path());
        assert!(err.contains("--fleet reads the fleet's log"), "{err}");
        for app in apps {
            app.shutdown().await.unwrap();
        }
    });
}

/// A relay in front of the server that a test can cut (every connection dropped, new ones
/// refused) and restore: a node cut off from the database.
struct Cuttable {
    addr: std::net::SocketAddr,
    open: Arc<AtomicBool>,
    generation: Arc<std::sync::atomic::AtomicU64>,
}

fn cuttable_relay(rt: &tokio::runtime::Runtime, server: std::net::SocketAddr) -> Cuttable {
    use std::sync::atomic::AtomicU64;
    use tokio::io::AsyncWriteExt;
    let open = Arc::new(AtomicBool::new(true));
    let generation = Arc::new(AtomicU64::new(0));
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let (o, g) = (open.clone(), generation.clone());
    rt.spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            if !o.load(Ordering::Acquire) {
                let _ = client.shutdown().await;
                continue;
            }
            let born = g.load(Ordering::Acquire);
            let g = g.clone();
            tokio::spawn(async move {
                let Ok(mut upstream) = tokio::net::TcpStream::connect(server).await else {
                    return;
                };
                let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
                let cut = async {
                    while g.load(Ordering::Acquire) == born {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                };
                tokio::select! {
                    _ = copy => {}
                    _ = cut => {}
                }
            });
        }
    });
    Cuttable { addr, open, generation }
}

impl Cuttable {
    fn cut(&self) {
        self.open.store(false, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
    fn restore(&self) {
        self.open.store(true, Ordering::Release);
    }
}

/// A `serve` node process, killed when dropped.
struct NodeProcess {
    child: std::process::Child,
    api: String,
    /// The sidecar proxy's address, when the node runs one.
    proxy: Option<String>,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const FLEET_TOKEN: &str = "fleet-test-token-0123456789abcdef0123456789";

/// Starts `serve` as `node` on the fleet log at `url`, and waits until it listens (it applied the
/// fleet's standing overrides before).
fn serve_node(dir: &std::path::Path, url: &str, node: &str) -> NodeProcess {
    serve_node_with(dir, url, node, "fleet.toml")
}

/// [`serve_node`] with a configuration file of its own.
fn serve_node_with(dir: &std::path::Path, url: &str, node: &str, config: &str) -> NodeProcess {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_breakerbox"))
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--config",
            config,
            "--db",
            url,
            "--node",
            node,
        ])
        .args(["--spool", &format!("{node}.db")])
        .current_dir(dir)
        .env("CIRCUIT_BREAKER_API_TOKEN", FLEET_TOKEN)
        .env_remove("BREAKERBOX_DB")
        .env_remove("BREAKERBOX_NODE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let address = |rest: &str| {
        rest.split_whitespace()
            .next()
            .unwrap()
            .trim_start_matches("http://")
            .to_owned()
    };
    let mut proxy = None;
    let api = loop {
        let line = lines.next().expect("serve ended before it listened").unwrap();
        if let Some(rest) = line.strip_prefix("proxy listening on ") {
            proxy = Some(address(rest));
        }
        if let Some(rest) = line.strip_prefix("listening on ") {
            break address(rest);
        }
    };
    // Keep reading its stdout so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    NodeProcess { child, api, proxy }
}

fn fleet_cli(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_breakerbox"))
        .args(args)
        .current_dir(dir)
        .env_remove("BREAKERBOX_DB")
        .env_remove("BREAKERBOX_NODE")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [fleet-ops]: 8 real node processes on one fleet log. A fleet force-open reaches every node,
/// each acknowledging it with the position of its own record; a node-local reset is refused
/// while it stands, naming it; a node started after the command applies it before it serves; a
/// node cut off from the database is reported silent, then catches up when it returns; an
/// override with a ttl lapses on every node.
#[test]
fn a_fleet_command_reaches_every_node_and_late_or_cut_off_nodes_catch_up() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(db) = rt.block_on(Db::create("fleetcmd")) else {
        return;
    };
    rt.block_on(async { connect(&db).await.close().await });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("fleet.toml"),
        "[services.stripe]\n\n[services.calcom]\n",
    )
    .unwrap();
    // app-8 reaches the database through a relay the test can cut.
    let (prefix, rest) = db.url.split_once('@').unwrap();
    let (hostport, path) = rest.split_once('/').unwrap();
    let server: std::net::SocketAddr =
        std::net::ToSocketAddrs::to_socket_addrs(&hostport.replace("localhost", "127.0.0.1"))
            .unwrap()
            .next()
            .unwrap();
    let relay = cuttable_relay(&rt, server);
    let relayed = format!("{prefix}@{}/{path}", relay.addr);
    let mut nodes: Vec<NodeProcess> = (1..=8)
        .map(|n| serve_node(dir.path(), if n == 8 { &relayed } else { &db.url }, &format!("app-{n}")))
        .collect();
    breakerbox::tls::init();
    let http = reqwest::Client::new();
    let state_on = |node: &NodeProcess, service: &str| -> String {
        let url = format!("http://{}/api/health/circuit-breakers/{service}", node.api);
        let body = rt.block_on(async {
            http.get(url)
                .header("Authorization", format!("Bearer {FLEET_TOKEN}"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        });
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        doc["breakers"][0]["state"].as_str().unwrap().to_owned()
    };

    // A transaction left open elsewhere in the cluster holds the log's horizon back; nodes read
    // fleet commands by the fleet stream's own seq, so it delays none of them.
    let mut long = rt.block_on(sqlx::PgConnection::connect(&db.url)).unwrap();
    rt.block_on(async {
        sqlx::query("BEGIN").execute(&mut long).await.unwrap();
        sqlx::query("SELECT pg_current_xact_id()")
            .execute(&mut long)
            .await
            .unwrap();
    });
    // A fleet force-open: every one of the 8 live nodes applies and acknowledges it.
    let (code, out, err) = fleet_cli(
        dir.path(),
        &[
            "force-open",
            "stripe",
            "--fleet",
            "--reason",
            "INC-7: stripe down",
            "--db",
            &db.url,
            "--json",
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let issued: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(issued["live"].as_array().unwrap().len(), 8, "{issued:#}");
    let acks = issued["acks"].as_array().unwrap();
    assert_eq!(acks.len(), 8, "{issued:#}");
    for a in acks {
        assert_eq!(a["outcome"], "applied", "{issued:#}");
        assert_eq!(a["to_state"], "forced_open", "{issued:#}");
        assert!(
            a["position"].as_i64().is_some(),
            "acknowledged before its record was durable: {issued:#}"
        );
    }
    eprintln!("fleet force-open acknowledged by 8 nodes in {} ms", issued["took_ms"]);
    rt.block_on(async {
        sqlx::query("ROLLBACK").execute(&mut long).await.unwrap();
    });
    for node in &nodes {
        assert_eq!(state_on(node, "stripe"), "forced_open");
    }
    // While it stands, a node's own reset is refused, naming it.
    let (status, why) = rt.block_on(async {
        let r = http
            .post(format!("http://{}/api/circuit-breakers/stripe/reset", nodes[0].api))
            .header("Authorization", format!("Bearer {FLEET_TOKEN}"))
            .header("Content-Type", "application/json")
            .body(r#"{"reason": "local try"}"#)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    });
    assert_eq!(status, 409, "{why}");
    assert!(why.contains("fleet command 1") && why.contains("INC-7"), "{why}");
    // And from the CLI on the node's own file (a request its owner refuses, saying why).
    let (code, _, err) = fleet_cli(
        dir.path(),
        &[
            "reset",
            "stripe",
            "--reason",
            "local try",
            "--config",
            "fleet.toml",
            "--db",
            "app-1.db",
        ],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("refused by the log's owner") && err.contains("fleet command 1"),
        "{err}"
    );
    assert_eq!(state_on(&nodes[0], "stripe"), "forced_open");

    // A node started after the command applies it before it serves.
    let late = serve_node(dir.path(), &db.url, "app-9");
    assert_eq!(state_on(&late, "stripe"), "forced_open");
    nodes.push(late);

    // app-8 cut off from the database: the reset is acknowledged by the others, and app-8 is
    // named silent; when the database is back, it catches up and acknowledges.
    // app-2 stops cleanly (SIGTERM) before the reset, and misses it.
    let pid = nodes[1].child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let _ = nodes[1].child.wait();
    relay.cut();
    let (code, out, err) = fleet_cli(
        dir.path(),
        &[
            "reset",
            "stripe",
            "--fleet",
            "--reason",
            "INC-7 resolved",
            "--wait",
            "2s",
            "--db",
            &db.url,
        ],
    );
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains("acknowledged by 7/8 live nodes") && out.contains("node app-8 silent (last seen"),
        "{out}"
    );
    assert_eq!(
        state_on(&nodes[7], "stripe"),
        "forced_open",
        "cut off, it has not read the reset"
    );
    relay.restore();
    let deadline = Instant::now() + Duration::from_secs(30);
    while state_on(&nodes[7], "stripe") != "closed" {
        assert!(
            Instant::now() < deadline,
            "app-8 did not catch up with the fleet's reset"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = rt.block_on(connect(&db));
    let acked: Vec<String> = rt
        .block_on(log.acks_of(2))
        .unwrap()
        .into_iter()
        .map(|a| a.node)
        .collect();
    assert!(acked.contains(&"app-8".to_owned()), "{acked:?}");
    // app-2 starts again: its own file says FORCED_OPEN by the fleet, and the fleet reset it
    // since: it is reset before it serves.
    nodes[1] = serve_node(dir.path(), &db.url, "app-2");
    assert_eq!(
        state_on(&nodes[1], "stripe"),
        "closed",
        "a fleet reset missed while stopped"
    );

    // An override with a ttl lapses on every node, by itself.
    let (code, out, err) = fleet_cli(
        dir.path(),
        &[
            "disable",
            "calcom",
            "--fleet",
            "--ttl",
            "1s",
            "--reason",
            "maintenance window",
            "--db",
            &db.url,
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let deadline = Instant::now() + Duration::from_secs(30);
    for node in &nodes {
        while state_on(node, "calcom") != "closed" {
            assert!(Instant::now() < deadline, "the override did not lapse on {}", node.api);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // A node that starts while the database is unreachable (offline_start = "run") serves
    // without the fleet's overrides, and applies them as soon as it can read them.
    let (code, out, err) = fleet_cli(
        dir.path(),
        &["disable", "stripe", "--fleet", "--reason", "standing", "--db", &db.url],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let offline = cuttable_relay(&rt, server);
    offline.cut();
    let offline_url = format!("{prefix}@{}/{path}", offline.addr);
    let late = serve_node(dir.path(), &offline_url, "app-10");
    assert_eq!(
        state_on(&late, "stripe"),
        "closed",
        "it could not read the override yet"
    );
    offline.restore();
    let deadline = Instant::now() + Duration::from_secs(30);
    while state_on(&late, "stripe") != "disabled" {
        assert!(
            Instant::now() < deadline,
            "the late node never applied the standing override"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    nodes.push(late);
    let (code, out, err) = fleet_cli(
        dir.path(),
        &["reset", "stripe", "--fleet", "--reason", "done", "--db", &db.url],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    // The HTTP action takes the same scope: every node, through any node's API.
    let post = |body: &'static str| {
        rt.block_on(async {
            let r = http
                .post(format!(
                    "http://{}/api/circuit-breakers/calcom/force-open",
                    nodes[2].api
                ))
                .header("Authorization", format!("Bearer {FLEET_TOKEN}"))
                .header("Content-Type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };
    let (status, body) = post(r#"{"reason": "from the API", "scope": "fleet", "ttl": "1s"}"#);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("acknowledged by 10/10 live nodes"), "{body}");
    let (status, body) = post(r#"{"reason": "x", "scope": "galaxy"}"#);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("scope"), "{body}");
    // Bad input is refused by name.
    let (code, _, err) = fleet_cli(
        dir.path(),
        &["force-open", "stripe", "--fleet", "--reason", "x", "--db", "x.db"],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--fleet issues the command to the fleet's log"), "{err}");
    let (code, _, err) = fleet_cli(
        dir.path(),
        &[
            "force-open",
            "stripe",
            "--fleet",
            "--ttl",
            "soon",
            "--reason",
            "x",
            "--db",
            &db.url,
        ],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--ttl"), "{err}");
    rt.block_on(log.close());
    drop(nodes);
}

/// A tool the test command installs (scripts/test): missing under CI is a failure; by hand, the
/// check is skipped with a note.
fn installed_tool(path: &str) -> bool {
    if std::path::Path::new(path).exists() {
        return true;
    }
    assert!(
        std::env::var("CI").is_err(),
        "{path} is missing: scripts/test installs it (Debian package)"
    );
    eprintln!("note: {path} not installed, check skipped (scripts/test installs it)");
    false
}

/// [fleet-ops]: the dashboard's fleet view in a real browser: 50 breakers × 4 nodes on one screen
/// at 1400 px, the breakers in trouble first (the service's, then some nodes'), a breaker's row
/// per node with its outlier named, and a fleet force-open from the dialog, which states its
/// scope. Screenshots at 1400 and 390 px.
#[test]
fn the_dashboard_shows_the_fleet_trouble_first_and_forces_open_on_every_node() {
    use breakerbox::config::Config;
    if !installed_tool(webdriver::CHROMEDRIVER) || !installed_tool(webdriver::CHROMIUM) {
        return;
    }
    const T: Duration = Duration::from_secs(20);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(db) = rt.block_on(Db::create("fleetdash")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let token = "d".repeat(40);
    let mut toml = String::new();
    for i in 0..50 {
        toml.push_str(&format!(
            "[services.svc{i:02}]\nfailure_threshold = 3\ntimeout = \"1h\"\n"
        ));
    }
    actix_web::rt::System::new().block_on(async {
        let config = Config::from_toml(std::path::Path::new("t.toml"), &toml, &Default::default()).unwrap();
        let mut apps = Vec::new();
        for n in 1..=4 {
            let api = (n == 1).then_some(("oncall", token.as_str()));
            apps.push(fleet_app(dir.path(), &db.url, &format!("app-{n}"), &config, api, false).await);
        }
        // svc23 fails everywhere (the service's trouble); svc05 only on app-4 (that node's).
        for (i, app) in apps.iter().enumerate() {
            for key in ["svc05", "svc23", "svc40"] {
                let h = app.registry().get(key).unwrap().clone();
                let fail = key == "svc23" || (key == "svc05" && i == 3);
                for _ in 0..12 {
                    let _ = h.call("", async move { if fail { Err("502") } else { Ok(()) } }).await;
                }
                h.inspect().await;
            }
        }
        let addr = apps[0].http_addrs()[0];
        let browser = webdriver::Driver::start().await.unwrap();
        browser.set_window_size(1400, 1000).await.unwrap();
        browser.goto(&format!("http://{addr}/#token={token}")).await.unwrap();
        browser
            .wait_text_containing("[data-testid=fleet-summary]", "4 of 4 nodes reporting", T)
            .await
            .unwrap();
        // Until every node's report has the failures in it.
        let deadline = Instant::now() + T;
        let order = loop {
            let order = browser
                .execute(
                    "return [...document.querySelectorAll('[data-testid=fleet-tile]')].map(e => e.dataset.key + ':' + e.dataset.trouble)",
                    vec![],
                )
                .await
                .unwrap();
            let order: Vec<String> = serde_json::from_value(order).unwrap();
            if order.len() == 50 && order[0] == "svc23:service" && order[1] == "svc05:nodes" {
                break order;
            }
            assert!(Instant::now() < deadline, "the fleet view never put the trouble first: {order:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(order[2..].iter().all(|k| k.ends_with(":none")), "{order:?}");
        // 50 tiles on one screen at 1400 x 1000.
        let bottom = browser
            .execute(
                "const t = [...document.querySelectorAll('[data-testid=fleet-tile]')]; return Math.max(...t.map(e => e.getBoundingClientRect().bottom))",
                vec![],
            )
            .await
            .unwrap();
        assert!(bottom.as_f64().unwrap() <= 1000.0, "the fleet's tiles end at {bottom} px");
        // svc05: a row per node, app-4 the outlier.
        let tile = browser.find("[data-testid=fleet-tile][data-key=svc05]").await.unwrap();
        browser.click(&tile).await.unwrap();
        browser
            .wait_text_containing("[data-testid=fleet-row][data-node=app-4]", "outlier", T)
            .await
            .unwrap();
        let rows = browser.find_all("[data-testid=fleet-row]").await.unwrap();
        assert_eq!(rows.len(), 4);
        let tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
        let wide = tmp.join("dashboard-fleet-1400.png");
        browser.screenshot(&wide).await.unwrap();
        // Force open on the fleet: the dialog states the scope; every node applies it.
        let force = browser.find("[data-testid=fleet-force-open]").await.unwrap();
        browser.click(&force).await.unwrap();
        browser
            .wait_text_containing("#dlg-title", "on every node of the fleet (4 live)", T)
            .await
            .unwrap();
        let input = browser.find("[data-testid=reason-input]").await.unwrap();
        browser.send_keys(&input, "app-4's network, and then some").await.unwrap();
        let confirm = browser.find("[data-testid=confirm]").await.unwrap();
        browser.click(&confirm).await.unwrap();
        browser
            .wait_text_containing("[data-testid=flash]", "acknowledged by 4/4 live nodes", T)
            .await
            .unwrap();
        for app in &apps {
            assert_eq!(
                app.registry().get("svc05").unwrap().state(),
                breakerbox::breaker::State::ForcedOpen
            );
        }
        // On a phone: nothing wider than the screen.
        browser.set_window_size(390, 844).await.unwrap();
        let overflow = browser
            .execute("return document.documentElement.scrollWidth - window.innerWidth", vec![])
            .await
            .unwrap();
        assert!(overflow.as_i64().unwrap() <= 0, "the page scrolls sideways by {overflow} px");
        let phone = tmp.join("dashboard-fleet-390.png");
        browser.screenshot(&phone).await.unwrap();
        eprintln!("screenshots: {} {}", wide.display(), phone.display());
        drop(browser);
        for app in apps {
            app.shutdown().await.unwrap();
        }
    });
}

/// A webhook receiver on 127.0.0.1 that keeps every body it is sent.
async fn webhook_receiver() -> (std::net::SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = got.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let keep = keep.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // One request: its head, then Content-Length bytes of body.
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        let mut chunk = [0u8; 4096];
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned();
                    buf.drain(..head_end + len);
                    keep.lock().unwrap().push(body);
                    if conn
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, got)
}

/// [fleet-ops]: fleet alerts. Three nodes, each with the same webhook sink: stripe opening on two
/// of them is one episode, announced once ("OPEN on 2/3 nodes"), not once per node; it resolves
/// once every node has had stripe closed for the quiet period, again once.
#[test]
fn a_fleet_pages_once_per_episode_not_once_per_node() {
    use breakerbox::config::Config;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(db) = rt.block_on(Db::create("fleetalerts")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    actix_web::rt::System::new().block_on(async {
        let (hook, got) = webhook_receiver().await;
        let toml = format!(
            "[services.stripe]\nfailure_threshold = 3\ntimeout = \"1h\"\n\n[services.calcom]\n\n\
             [alerts]\nquiet_period = \"1s\"\n\n[[alerts.webhooks]]\nname = \"oncall\"\nurl = \"http://{hook}/hook\"\n"
        );
        let config = Config::from_toml(std::path::Path::new("t.toml"), &toml, &Default::default()).unwrap();
        let mut apps = Vec::new();
        for n in 1..=3 {
            apps.push(fleet_app(dir.path(), &db.url, &format!("app-{n}"), &config, None, true).await);
        }
        for app in &apps[..2] {
            let h = app.registry().get("stripe").unwrap().clone();
            for _ in 0..5 {
                let _ = h.call("", async { Err::<(), _>("502") }).await;
            }
            h.inspect().await;
            assert_eq!(h.state(), breakerbox::breaker::State::Open);
        }
        let bodies = |status: &str| -> Vec<serde_json::Value> {
            got.lock()
                .unwrap()
                .iter()
                .map(|b| serde_json::from_str::<serde_json::Value>(b).unwrap())
                .filter(|v| v["status"] == status)
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while bodies("firing").is_empty() {
            assert!(Instant::now() < deadline, "no firing message");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Long enough for every node's report to show both opens, and for any second page.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let firing = bodies("firing");
        assert_eq!(firing.len(), 1, "{firing:#?}");
        let summary = firing[0]["commonAnnotations"]["summary"].as_str().unwrap().to_owned();
        assert!(
            summary.contains("Circuit breaker stripe is OPEN on") && summary.ends_with("/3 nodes"),
            "{summary}"
        );
        assert_eq!(firing[0]["commonLabels"]["scope"], "fleet", "{:#}", firing[0]);
        // Closed on every node: resolved once the quiet period passed, once.
        for app in &apps[..2] {
            app.registry()
                .get("stripe")
                .unwrap()
                .reset(breakerbox::journal::Operator {
                    who: "test".into(),
                    from: "library".into(),
                    why: "fixed".into(),
                })
                .await
                .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while bodies("resolved").is_empty() {
            assert!(Instant::now() < deadline, "no resolved message");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let resolved = bodies("resolved");
        assert_eq!(resolved.len(), 1, "{resolved:#?}");
        assert_eq!(bodies("firing").len(), 1);
        let text = resolved[0]["commonAnnotations"]["summary"].as_str().unwrap();
        assert_eq!(text, "Circuit breaker stripe closed again on every node");
        for app in apps {
            app.shutdown().await.unwrap();
        }
    });
}

/// [fleet-ops] quorum hints, with a real PostgreSQL: nine nodes, eight with `mode = "on"` and one
/// in shadow mode. One node's own fault opens no other node. A fault on five opens the other
/// three "on" nodes through `fleet_quorum`, naming the five, and the shadow node records that it
/// would have opened, and stays CLOSED. Every node's breaker replayed from its log equals its
/// live one.
#[test]
fn a_quorum_of_nodes_opens_the_rest_and_one_nodes_fault_opens_none() {
    use breakerbox::app::App;
    use breakerbox::breaker::{Reason, State};
    use breakerbox::config::Config;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(db) = rt.block_on(Db::create("quorum")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    actix_web::rt::System::new().block_on(async {
        let toml = |mode: &str| {
            format!(
                "[services.stripe]\nfailure_threshold = 3\ntimeout = \"1h\"\n\n[services.calcom]\n\n\
                 [fleet.quorum]\nnodes = 3\nfraction = 0.5\nwithin = \"30s\"\nmode = \"{mode}\"\n"
            )
        };
        let on = Config::from_toml(std::path::Path::new("t.toml"), &toml("on"), &Default::default()).unwrap();
        let shadow = Config::from_toml(std::path::Path::new("t.toml"), &toml("shadow"), &Default::default()).unwrap();
        let mut apps = Vec::new();
        for n in 1..=9 {
            let config = if n == 9 { &shadow } else { &on };
            apps.push(fleet_app(dir.path(), &db.url, &format!("app-{n}"), config, None, false).await);
        }
        let fault = |app: &App| {
            let h = app.registry().get("stripe").unwrap().clone();
            async move {
                for _ in 0..4 {
                    let _ = h.call("", async { Err::<(), _>("502") }).await;
                }
                h.inspect().await;
                assert_eq!(h.state(), State::Open);
            }
        };
        let log = connect(&db).await;
        // Until every one of `nodes` has published its own trip of stripe.
        let published = |nodes: Vec<String>| {
            let pool = log.pool().clone();
            async move {
                within(async {
                    loop {
                        let rows: Vec<(String, String)> = sqlx::query_as("SELECT node, doc FROM node_health")
                            .fetch_all(&pool)
                            .await
                            .unwrap();
                        let tripped = |n: &String| {
                            rows.iter().any(|(node, doc)| {
                                node == n && {
                                    let d: serde_json::Value = serde_json::from_str(doc).unwrap();
                                    d["breakers"]
                                        .as_array()
                                        .unwrap()
                                        .iter()
                                        .any(|b| b["service"] == "stripe" && b["tripped_at_ms"].is_u64())
                                }
                            })
                        };
                        if nodes.iter().all(tripped) {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                })
                .await
            }
        };
        // One node's own fault: the others look at the quorum (twice a second) and open nothing.
        fault(&apps[0]).await;
        published(vec!["app-1".into()]).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        for app in &apps[1..] {
            assert_eq!(app.registry().get("stripe").unwrap().state(), State::Closed);
        }
        // A fault on five of the nodes: the other three "on" nodes open through the quorum.
        for app in &apps[1..5] {
            fault(app).await;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for app in &apps[5..8] {
            let h = app.registry().get("stripe").unwrap();
            while h.state() != State::Open {
                assert!(Instant::now() < deadline, "a node did not open through the quorum");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // The gate flips as the transition is applied; its record is durable once flushed.
            app.journal().flush().await.unwrap();
            let entries = breakerbox::replay::history(app.journal(), "stripe").await.unwrap();
            let last = breakerbox::replay::transitions(&entries, 0, u64::MAX).pop().unwrap();
            assert_eq!(last.reason, Reason::FleetQuorum);
            let q = last.evidence.quorum.unwrap();
            assert!(q.nodes.len() >= 5 && q.live == 9, "{q:?}");
            assert!(
                q.nodes
                    .iter()
                    .all(|n| ["app-1", "app-2", "app-3", "app-4", "app-5"].contains(&n.as_str())),
                "{q:?}"
            );
        }
        // The shadow node records what it would have done, and stays CLOSED.
        let shadow_node = &apps[8];
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            shadow_node.journal().flush().await.unwrap();
            let page = shadow_node.journal().read_stream("stripe", 0, 10_000).await.unwrap();
            if page.iter().any(|e| e.event_type == breakerbox::journal::QUORUM_HINT) {
                break;
            }
            assert!(Instant::now() < deadline, "the shadow node recorded no quorum hint");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(shadow_node.registry().get("stripe").unwrap().state(), State::Closed);
        // Every node's breaker, replayed from its own log, is its live breaker.
        for (i, app) in apps.iter().enumerate() {
            let h = app.registry().get("stripe").unwrap();
            let live = h.inspect().await.unwrap();
            app.journal().flush().await.unwrap();
            let entries = breakerbox::replay::history(app.journal(), "stripe").await.unwrap();
            let replayed = breakerbox::replay::fold(&entries, None, live.policy());
            assert_eq!(
                (replayed.state(), replayed.episode()),
                (live.state(), live.episode()),
                "app-{}",
                i + 1
            );
        }
        // The fleet what-if over the nodes' shipped histories: one shared breaker and a quorum
        // against what happened, nine nodes.
        for app in &apps {
            let position = app.journal().flush().await.unwrap().position;
            within(app.shipped(position)).await.unwrap();
        }
        let out = breakerbox(
            &[
                "what-if",
                "--all-nodes",
                "--service",
                "stripe",
                "--quorum-nodes",
                "3",
                "--json",
                "--db",
                &db.url,
            ],
            dir.path(),
        );
        let r: serde_json::Value = serde_json::from_str(&out).unwrap();
        let w = &r["fleet_what_if"];
        assert_eq!(w["nodes"].as_array().unwrap().len(), 9, "{r:#}");
        assert_eq!(w["actual"]["by_quorum"], 3, "three nodes opened by the quorum: {r:#}");
        assert_eq!(w["shared"]["breakers"], 1, "{r:#}");
        let err = refused(
            &[
                "what-if",
                "--all-nodes",
                "--service",
                "stripe",
                "--quorum-fraction",
                "2",
                "--db",
                &db.url,
            ],
            dir.path(),
        );
        assert!(err.contains("--quorum-fraction 2"), "{err}");
        log.close().await;
        for app in apps {
            app.shutdown().await.unwrap();
        }
    });
}

/// [fleet-ops] the fleet demo: `demo --nodes 3 --db postgres://…` runs three node processes on
/// the stand-ins. demo-1's own network to stripe goes bad first (an outlier, those nodes'
/// trouble), then stripe fails for all (the service's); the end weighs a shared breaker and a
/// quorum against what happened.
#[test]
fn the_fleet_demo_tells_one_nodes_trouble_then_the_services() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(db) = rt.block_on(Db::create("fleetdemo")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = breakerbox(
        &["demo", "--nodes", "3", "--duration", "24s", "--db", &db.url],
        dir.path(),
    );
    let first_open = out
        .lines()
        .find(|l| l.contains("stripe  closed → open"))
        .unwrap_or_else(|| panic!("no stripe opening: {out}"));
    assert!(first_open.contains("[demo-1]"), "demo-1's network first: {out}");
    assert!(
        out.lines().any(|l| l.contains("[fleet ]")
            && l.contains("stripe")
            && l.contains("on 1/3 nodes (demo-1)")
            && l.contains("those nodes' trouble")),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.contains("[fleet ]")
            && l.contains("stripe")
            && l.contains("on 3/3 nodes")
            && l.contains("the service's trouble")),
        "{out}"
    );
    assert!(
        out.contains("one shared breaker") && out.contains("3 breakers + quorum"),
        "{out}"
    );
    // Each node's history is in the fleet's log.
    let nodes = breakerbox(&["nodes", "--db", &db.url, "--json"], dir.path());
    for n in ["demo-1", "demo-2", "demo-3"] {
        assert!(nodes.contains(n), "{nodes}");
    }
    let err = refused(&["demo", "--nodes", "3", "--db", "x.db"], dir.path());
    assert!(err.contains("--nodes 3: a fleet needs a fleet log"), "{err}");
}

/// [fleet-ops] quorum hints with 8 real `serve` processes. Each node calls stripe through its own
/// sidecar proxy; a node whose upstream is dead trips its own breaker. One such node opens no
/// other; five open the other three through `fleet_quorum`, naming the five. Every node's
/// breaker as the fleet's log replays it equals its live one.
#[test]
fn with_8_node_processes_one_fault_opens_none_and_five_open_the_other_three() {
    breakerbox::tls::init();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(db) = rt.block_on(Db::create("quorumproc")) else {
        return;
    };
    rt.block_on(async { connect(&db).await.close().await });
    let dir = tempfile::tempdir().unwrap();
    // A healthy upstream, and a dead one (its port closed).
    let (healthy, _) = rt.block_on(webhook_receiver());
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    for (name, upstream) in [("healthy.toml", healthy), ("dead.toml", dead)] {
        std::fs::write(
            dir.path().join(name),
            format!(
                "[services.stripe]\nfailure_threshold = 3\ntimeout = \"1h\"\nupstream = \"http://{upstream}\"\n\n\
                 [proxy]\nenabled = true\nbind = \"127.0.0.1:0\"\nconnect_timeout = \"200ms\"\n\n\
                 [fleet.quorum]\nnodes = 3\nfraction = 0.5\nwithin = \"30s\"\n"
            ),
        )
        .unwrap();
    }
    // app-1 … app-5 reach a dead stripe; app-6 … app-8 a healthy one.
    let nodes: Vec<NodeProcess> = (1..=8)
        .map(|n| {
            let config = if n <= 5 { "dead.toml" } else { "healthy.toml" };
            serve_node_with(dir.path(), &db.url, &format!("app-{n}"), config)
        })
        .collect();
    let http = reqwest::Client::new();
    let get = |url: String| {
        rt.block_on(async {
            let r = http
                .get(url)
                .header("Authorization", format!("Bearer {FLEET_TOKEN}"))
                .send()
                .await
                .unwrap();
            r.text().await.unwrap()
        })
    };
    let breaker = |node: &NodeProcess| -> serde_json::Value {
        let doc: serde_json::Value =
            serde_json::from_str(&get(format!("http://{}/api/health/circuit-breakers/stripe", node.api))).unwrap();
        doc["breakers"][0].clone()
    };
    // Calls through a node's proxy until its stripe is open.
    let fault = |node: &NodeProcess| {
        let proxy = node.proxy.clone().expect("the node runs the proxy");
        for _ in 0..6 {
            let _ = get(format!("http://{proxy}/stripe/v1/charges"));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while breaker(node)["state"] != "open" {
            assert!(
                Instant::now() < deadline,
                "{} did not open: {}",
                node.api,
                breaker(node)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let tripped_published = |n: usize| {
        let log = rt.block_on(PgLog::connect(&db.url, Duration::from_secs(5), 1)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let docs: Vec<(String,)> = rt
                .block_on(sqlx::query_as("SELECT doc FROM node_health").fetch_all(log.pool()))
                .unwrap();
            let tripped = docs.iter().filter(|(d,)| d.contains("tripped_at_ms")).count();
            if tripped >= n {
                break;
            }
            assert!(Instant::now() < deadline, "{tripped} of {n} trips published");
            std::thread::sleep(Duration::from_millis(50));
        }
        rt.block_on(log.close());
    };
    // One node's own fault: it is published, the others look twice a second, and open nothing.
    fault(&nodes[0]);
    tripped_published(1);
    std::thread::sleep(Duration::from_secs(2));
    for node in &nodes[1..] {
        assert_eq!(breaker(node)["state"], "closed", "{}", node.api);
    }
    // A fault on five: the other three open through the quorum, naming the faulted nodes.
    for node in &nodes[1..5] {
        fault(node);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for node in &nodes[5..] {
        loop {
            let b = breaker(node);
            // Open as the gate says; its trip from the log once written (the report reads it).
            if b["state"] == "open" && !b["current_trip"].is_null() {
                assert_eq!(b["current_trip"]["reason"], "fleet_quorum", "{b:#}");
                let named: Vec<&str> = b["current_trip"]["evidence"]["quorum"]["nodes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap())
                    .collect();
                assert!(
                    named.len() >= 4
                        && named
                            .iter()
                            .all(|n| ["app-1", "app-2", "app-3", "app-4", "app-5"].contains(n)),
                    "{b:#}"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "a healthy node did not open through the quorum: {b:#}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Every node's breaker, replayed from its history in the fleet's log, is its live one.
    for (i, node) in nodes.iter().enumerate() {
        let live = breaker(node);
        let name = format!("app-{}", i + 1);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = breakerbox(
                &[
                    "status",
                    "--db",
                    &db.url,
                    "--node",
                    &name,
                    "--config",
                    "healthy.toml",
                    "--service",
                    "stripe",
                    "--json",
                ],
                dir.path(),
            );
            let replayed: serde_json::Value = serde_json::from_str(&out).unwrap();
            let r = &replayed["breakers"][0];
            if r["state"] == live["state"] && r["last_transition"]["episode"] == live["last_transition"]["episode"] {
                break;
            }
            assert!(Instant::now() < deadline, "{name}: replayed {r:#} live {live:#}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    drop(nodes);
}
