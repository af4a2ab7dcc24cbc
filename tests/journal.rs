//! The event log: append-only, group commit, recovery, faults, and a SIGKILL crash test.

#[path = "support/tamper.rs"]
mod tamper;

use breakerbox::breaker::{Breaker, Command, Decision, Event, Outcome, Policy, State};
use breakerbox::journal::{
    BackgroundCheck, Body, Decoded, Durability, GAP, Integrity, Journal, JournalError, JournalOptions, SNAPSHOT,
    StoreError, StoredEvent, Unclean, connect_options, decode,
};
use sqlx::{ConnectOptions, Connection, SqliteConnection};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn opts() -> JournalOptions {
    JournalOptions {
        busy_timeout: Duration::from_millis(50),
        max_backoff: Duration::from_millis(50),
        ..JournalOptions::default()
    }
}

async fn admin(path: &Path) -> SqliteConnection {
    connect_options(path, Durability::Full, Duration::from_millis(50))
        .connect()
        .await
        .unwrap()
}

/// Drives a breaker and submits every event it emits; returns the events.
fn drive(journal: &Journal, stream: &Arc<str>, b: &mut Breaker, t: u64, outcome: Outcome) -> (Vec<Event>, Option<u64>) {
    let mut events = Vec::new();
    if let Decision::Permit(p) = b.acquire(t, &mut events) {
        b.complete(t + 1, p, outcome, &mut events);
    }
    let mut ticket = None;
    for e in &events {
        ticket = journal.submit(stream, Body::Breaker(e.clone())).or(ticket);
    }
    (events, ticket)
}

async fn all_events(journal: &Journal) -> Vec<StoredEvent> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = journal.read_after(after, 10_000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.position;
        out.extend(page);
    }
    out
}

fn core_events(stored: &[StoredEvent], stream: &str) -> Vec<Event> {
    stored
        .iter()
        .filter(|e| e.stream == stream)
        .flat_map(|e| match decode(e).unwrap() {
            Decoded::Breaker(events) => events,
            _ => Vec::new(),
        })
        .collect()
}

#[tokio::test]
async fn group_commit_keeps_each_streams_order_and_packs_calls() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&dir.path().join("log.db"), opts()).await.unwrap();
    let streams: Vec<Arc<str>> = ["calcom", "retell", "stripe"].iter().map(|s| Arc::from(*s)).collect();
    let mut breakers: Vec<Breaker> = (0..3)
        .map(|_| Breaker::new(Policy::consecutive(3, 50)).unwrap())
        .collect();
    let mut expected: Vec<Vec<Event>> = vec![Vec::new(); 3];
    for t in 0..10_000u64 {
        let i = (t % 3) as usize;
        let outcome = if t % 7 < 3 { Outcome::Failure } else { Outcome::Success };
        let (events, _) = drive(&journal, &streams[i], &mut breakers[i], t * 10, outcome);
        expected[i].extend(events);
    }
    journal.flush().await.unwrap();
    let stored = all_events(&journal).await;
    assert!(stored.windows(2).all(|w| w[0].position < w[1].position));
    for (i, s) in streams.iter().enumerate() {
        let rows: Vec<&StoredEvent> = stored.iter().filter(|e| e.stream == **s).collect();
        let seqs: Vec<i64> = rows.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (1..=rows.len() as i64).collect::<Vec<_>>(),
            "{s}: seqs are 1..n without holes"
        );
        assert_eq!(core_events(&stored, s), expected[i], "{s}: every event, in order");
        let calls = expected[i]
            .iter()
            .filter(|e| matches!(e, Event::CallRecorded(_)))
            .count();
        assert!(
            rows.len() < calls / 2,
            "{s}: {calls} calls packed into {} rows",
            rows.len()
        );
    }
    journal.close().await;
}

#[tokio::test]
async fn a_breaker_comes_back_from_the_log_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let policy = Policy::consecutive(2, 60_000);
    let (open, half, forced): (Arc<str>, Arc<str>, Arc<str>) =
        (Arc::from("open"), Arc::from("half"), Arc::from("forced"));
    let mut live = [
        Breaker::new(policy.clone()).unwrap(),
        Breaker::new(policy.clone()).unwrap(),
        Breaker::new(policy.clone()).unwrap(),
    ];
    {
        let journal = Journal::open(&path, opts()).await.unwrap();
        for s in 0..3 {
            let stream = [&open, &half, &forced][s];
            for t in 0..2 {
                drive(&journal, stream, &mut live[s], 1_000 + t, Outcome::Failure);
            }
        }
        // HALF_OPEN with one of its two successes and a trial still out.
        let mut events = Vec::new();
        let Decision::Permit(t1) = live[1].acquire(61_002, &mut events) else {
            panic!()
        };
        let Decision::Permit(_t2) = live[1].acquire(61_002, &mut events) else {
            panic!()
        };
        live[1].complete(61_003, t1, Outcome::Success, &mut events);
        live[2].command(61_004, Command::ForceOpen, &mut events);
        for e in events {
            let stream = if matches!(&e, Event::Transitioned(t) if t.to == State::ForcedOpen) {
                &forced
            } else {
                &half
            };
            journal.submit(stream, Body::Breaker(e));
        }
        journal.flush().await.unwrap();
        journal.close().await;
    }
    let journal = Journal::open(&path, opts()).await.unwrap();
    for (s, stream) in [&open, &half, &forced].iter().enumerate() {
        let r = journal.recover(stream, policy.clone()).await.unwrap();
        assert_eq!(r.breaker, live[s], "{stream}");
    }
    let open_b = journal.recover("open", policy.clone()).await.unwrap().breaker;
    assert_eq!(open_b.state(), State::Open);
    // The OPEN period is absolute: after a restart only the remaining time is left.
    let mut ev = Vec::new();
    let mut b = open_b.clone();
    assert!(matches!(b.acquire(40_000, &mut ev), Decision::Reject(r) if r.retry_after_ms == Some(21_002)));
    let half_b = journal.recover("half", policy.clone()).await.unwrap().breaker;
    assert_eq!((half_b.view(0).trial_successes, half_b.view(0).trials_issued), (1, 2));
    let mut forced_b = journal.recover("forced", policy.clone()).await.unwrap().breaker;
    forced_b.tick(u64::MAX, &mut ev);
    assert_eq!(forced_b.state(), State::ForcedOpen, "forced open stays forced");
    // A stream never written gives a fresh breaker.
    let fresh = journal.recover("nobody", policy.clone()).await.unwrap();
    assert_eq!((fresh.breaker.state(), fresh.last_seq), (State::Closed, 0));
    journal.close().await;
}

#[tokio::test]
async fn recovery_starts_from_the_latest_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&dir.path().join("log.db"), opts()).await.unwrap();
    let stream: Arc<str> = Arc::from("stripe");
    let policy = Policy::consecutive(5, 100);
    let mut b = Breaker::new(policy.clone()).unwrap();
    for t in 0..3_000u64 {
        let outcome = if t % 11 < 6 { Outcome::Failure } else { Outcome::Success };
        drive(&journal, &stream, &mut b, t * 20, outcome);
        if t == 2_000 {
            journal.submit(
                &stream,
                Body::Snapshot {
                    at_ms: t * 20,
                    breaker: Box::new(b.clone()),
                },
            );
        }
    }
    journal.flush().await.unwrap();
    let r = journal.recover("stripe", policy).await.unwrap();
    assert_eq!(r.breaker, b);
    assert!(r.snapshot_seq.is_some());
    assert!(
        r.folded < 2_500,
        "only the events after the snapshot were folded ({})",
        r.folded
    );
    journal.close().await;
}

#[tokio::test]
async fn recovery_skips_an_undecodable_event_and_names_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let stream: Arc<str> = Arc::from("stripe");
    let policy = Policy::consecutive(2, 60_000);
    let mut live = Breaker::new(policy.clone()).unwrap();
    // Given stripe's stream: a snapshot, a failed call, then a second failed call that trips it
    // (each a commit of its own)
    let journal = Journal::open(&path, opts()).await.unwrap();
    let snapshot = live.clone();
    journal.submit(
        &stream,
        Body::Snapshot {
            at_ms: 0,
            breaker: Box::new(snapshot.clone()),
        },
    );
    drive(&journal, &stream, &mut live, 1_000, Outcome::Failure);
    journal.flush().await.unwrap();
    let (tripped, _) = drive(&journal, &stream, &mut live, 2_000, Outcome::Failure);
    journal.flush().await.unwrap();
    assert_eq!(live.state(), State::Open);
    // and the first call's batch damaged on disk
    let damaged = all_events(&journal)
        .await
        .iter()
        .find(|e| e.event_type == "call_batch")
        .expect("the first call's batch")
        .position;
    journal.close().await;
    tamper::garble(&path, damaged).await;
    // When the breaker is recovered
    let journal = Journal::open(&path, opts()).await.unwrap();
    let r = journal
        .recover("stripe", policy)
        .await
        .expect("one damaged event does not fail recovery");
    // Then it is folded from the other events (OPEN, as its transition says) and the skipped
    // one is named by its position
    let mut expected = snapshot;
    for e in &tripped {
        expected.apply(e);
    }
    assert_eq!(r.breaker, expected);
    assert_eq!(r.breaker.state(), State::Open);
    assert_eq!(r.damaged, [damaged]);
    let said = r.skipped("stripe").unwrap();
    assert!(said.contains(&format!("position {damaged} ")), "{said}");
    journal.close().await;
}

#[tokio::test]
async fn a_snapshot_that_does_not_decode_is_passed_over_for_an_earlier_one_or_the_stream_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let stream: Arc<str> = Arc::from("stripe");
    let policy = Policy::consecutive(3, 50);
    let mut live = Breaker::new(policy.clone()).unwrap();
    // Given stripe's stream with two snapshots among calls that trip and close it again
    let journal = Journal::open(&path, opts()).await.unwrap();
    for t in 0..300u64 {
        let outcome = if t % 7 < 3 { Outcome::Failure } else { Outcome::Success };
        drive(&journal, &stream, &mut live, t * 10, outcome);
        if t == 100 || t == 200 {
            journal.submit(
                &stream,
                Body::Snapshot {
                    at_ms: t * 10,
                    breaker: Box::new(live.clone()),
                },
            );
        }
    }
    journal.flush().await.unwrap();
    let snapshots: Vec<StoredEvent> = all_events(&journal)
        .await
        .into_iter()
        .filter(|e| e.event_type == SNAPSHOT)
        .collect();
    let [earlier, latest] = &snapshots[..] else {
        panic!("two snapshots: {snapshots:?}")
    };
    journal.close().await;
    // When the latest snapshot is damaged on disk
    tamper::garble(&path, latest.position).await;
    let journal = Journal::open(&path, opts()).await.unwrap();
    let r = journal.recover("stripe", policy.clone()).await.unwrap();
    // Then recovery starts from the earlier one and folds everything after it: the breaker as
    // it was, and the damaged snapshot named
    assert_eq!(r.snapshot_seq, Some(earlier.seq));
    assert_eq!(r.breaker, live);
    assert_eq!(r.damaged, [latest.position]);
    journal.close().await;
    // When the earlier one is damaged too
    tamper::garble(&path, earlier.position).await;
    let journal = Journal::open(&path, opts()).await.unwrap();
    let r = journal.recover("stripe", policy).await.unwrap();
    // Then it folds the stream from its start: the same breaker, both snapshots named
    assert_eq!(r.snapshot_seq, None);
    assert_eq!(r.breaker, live);
    assert_eq!(r.damaged, [earlier.position, latest.position]);
    journal.close().await;
}

// ---------------------------------------------------------------------------------------------
// The long reads (`read_after`, `read_stream`, `read_stream_range`) go through the bulk reader
// (rusqlite, at most 10,000 rows or 8 MiB of payload per read transaction). They must return
// exactly what the reads through sqlx returned, across those bounds and while the writer appends.

type RowTuple = (i64, String, i64, String, i64, i64, Vec<u8>, String);

fn stored_row((position, stream, seq, event_type, event_version, recorded_at, payload, node): RowTuple) -> StoredEvent {
    StoredEvent {
        position,
        node,
        stream,
        seq,
        event_type,
        event_version: event_version.clamp(0, i64::from(u32::MAX)) as u32,
        recorded_at,
        payload,
    }
}

/// A query's rows through sqlx (the journal's sqlx reader pool): the reference.
async fn through_sqlx(
    journal: &Journal,
    query: sqlx::query::QueryAs<'_, sqlx::Sqlite, RowTuple, sqlx::sqlite::SqliteArguments>,
) -> Vec<StoredEvent> {
    let rows = query.fetch_all(journal.pool()).await.unwrap();
    rows.into_iter().map(stored_row).collect()
}

/// `read_after` as it was through sqlx (same SQL).
async fn sqlx_after(journal: &Journal, after: i64, limit: u32) -> Vec<StoredEvent> {
    let q = sqlx::query_as(
        "SELECT position, stream, seq, event_type, event_version, recorded_at, payload, node FROM events
         WHERE position > ? ORDER BY position LIMIT ?",
    );
    through_sqlx(journal, q.bind(after).bind(i64::from(limit))).await
}

/// `read_stream` as it was through sqlx.
async fn sqlx_stream(journal: &Journal, stream: &str, after_seq: i64, limit: u32) -> Vec<StoredEvent> {
    let q = sqlx::query_as(
        "SELECT position, stream, seq, event_type, event_version, recorded_at, payload, node FROM events
         WHERE stream = ? AND seq > ? ORDER BY seq LIMIT ?",
    );
    through_sqlx(
        journal,
        q.bind(stream.to_owned()).bind(after_seq).bind(i64::from(limit)),
    )
    .await
}

/// A stream's transitions recorded in `[from_ms, to_ms]`, in log order, through sqlx.
async fn sqlx_transitions(journal: &Journal, stream: &str, from_ms: i64, to_ms: i64) -> Vec<StoredEvent> {
    let q = sqlx::query_as(
        "SELECT position, stream, seq, event_type, event_version, recorded_at, payload, node FROM events
         WHERE stream = ? AND event_type = 'transition' AND recorded_at >= ? AND recorded_at <= ? ORDER BY seq",
    );
    through_sqlx(journal, q.bind(stream.to_owned()).bind(from_ms).bind(to_ms)).await
}

/// A one-row event of `bytes` bytes.
fn note(event_type: &'static str, at_ms: u64, bytes: usize) -> Body {
    Body::Other {
        event_type,
        event_version: 1,
        at_ms,
        payload: vec![(at_ms % 251) as u8; bytes],
    }
}

/// Every row after `after`, read `page` rows at a time.
async fn paged(journal: &Journal, mut after: i64, page: u32) -> Vec<StoredEvent> {
    let mut out = Vec::new();
    loop {
        let events = journal.read_after(after, page).await.unwrap();
        let Some(last) = events.last() else { break };
        after = last.position;
        out.extend(events);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bulk_reader_returns_exactly_what_sqlx_returns_across_its_bounds_and_while_the_writer_appends() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&dir.path().join("log.db"), opts()).await.unwrap();
    let (stripe, calcom, ranges): (Arc<str>, Arc<str>, Arc<str>) =
        (Arc::from("stripe"), Arc::from("calcom"), Arc::from("ranges"));
    // Given a log of every kind of row: call batches, transitions and snapshots of a real
    // breaker; ~25,000 one-row events (more than two transactions' worth of rows); 160 rows of
    // 64 KiB (more than one transaction's worth of bytes); and 12,000 rows of the time-indexed
    // `transition` type, four to a millisecond (ties between pages of the time range).
    let policy = Policy::consecutive(3, 50);
    let mut b = Breaker::new(policy.clone()).unwrap();
    for t in 0..3_000u64 {
        let outcome = if t % 9 < 3 { Outcome::Failure } else { Outcome::Success };
        drive(&journal, &stripe, &mut b, 1_000 + t * 20, outcome);
        if t % 500 == 0 {
            let breaker = Box::new(b.clone());
            journal.submit(
                &stripe,
                Body::Snapshot {
                    at_ms: 1_000 + t * 20,
                    breaker,
                },
            );
        }
    }
    for i in 0..25_000u64 {
        let stream = [&stripe, &calcom, &ranges][(i % 3) as usize];
        journal.submit(stream, note("note", 1_000 + i, (i % 97) as usize));
        if i % 150 == 0 {
            journal.submit(&calcom, note("note", 1_000 + i, 64 << 10));
        }
    }
    for i in 0..12_000u64 {
        journal.submit(
            &ranges,
            note(breakerbox::breaker::codec::types::TRANSITION, 5_000 + i / 4, 8),
        );
    }
    journal.flush().await.unwrap();

    // Then every read gives what sqlx gives: whole, in pages around the bounds, from anywhere.
    let all = sqlx_after(&journal, 0, u32::MAX).await;
    assert!(all.len() > 35_000, "{} rows", all.len());
    for (after, limit) in [
        (0, u32::MAX),
        (0, 1),
        (0, 7),
        (123, 9_999),
        (123, 10_000),
        (123, 10_001),
        (5_000, 25_000),
    ] {
        let bulk = journal.read_after(after, limit).await.unwrap();
        assert!(
            bulk == sqlx_after(&journal, after, limit).await,
            "read_after({after}, {limit})"
        );
    }
    assert!(paged(&journal, 0, 10_001).await == all, "read_after in pages of 10,001");
    let last = all.last().unwrap().position;
    assert!(
        journal.read_after(last, u32::MAX).await.unwrap().is_empty(),
        "nothing after the end"
    );
    for stream in ["stripe", "calcom", "ranges", "nobody"] {
        for (after, limit) in [(0, u32::MAX), (0, 1), (17, 10_001), (0, 25_000), (i64::MAX, 5)] {
            let bulk = journal.read_stream(stream, after, limit).await.unwrap();
            let reference = sqlx_stream(&journal, stream, after, limit).await;
            assert!(bulk == reference, "read_stream({stream}, {after}, {limit})");
        }
    }
    for (from_ms, to_ms, page) in [
        (0, u64::MAX, 10_000),
        (0, u64::MAX, 25_000),
        (5_100, 5_600, 1),
        (5_100, 6_900, 7),
    ] {
        let bulk = journal
            .read_stream_range(
                "ranges",
                breakerbox::breaker::codec::types::TRANSITION,
                from_ms,
                to_ms,
                page,
            )
            .await
            .unwrap();
        let to = to_ms.min(i64::MAX as u64) as i64;
        let reference = sqlx_transitions(&journal, "ranges", from_ms as i64, to).await;
        assert!(!reference.is_empty());
        assert!(
            bulk == reference,
            "read_stream_range(ranges, {from_ms}, {to_ms}, {page})"
        );
    }
    let transitions = journal
        .read_stream_range("stripe", breakerbox::breaker::codec::types::TRANSITION, 0, u64::MAX, 3)
        .await
        .unwrap();
    assert!(transitions.len() > 100, "{} real transitions", transitions.len());
    assert!(transitions == sqlx_transitions(&journal, "stripe", 0, i64::MAX).await);
    let snapshots = journal
        .read_stream_range("stripe", SNAPSHOT, 0, u64::MAX, 2)
        .await
        .unwrap();
    assert_eq!(snapshots.len(), 6);
    // And recovery, which reads its stream through it, still gives the breaker back.
    assert_eq!(journal.recover("stripe", policy.clone()).await.unwrap().breaker, b);

    // While the writer appends (small commits, one every few ms, on its own thread), each read
    // is a consistent part of the log: in order, none twice, none skipped, nothing torn. Reads of
    // everything span several transactions, so commits land between them.
    let start = last;
    let (mut seen, mut reads, mut i) = (Vec::new(), Vec::new(), 0u64);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while i < 30_000 {
        for _ in 0..1_000 {
            journal.submit(
                [&stripe, &calcom][(i % 2) as usize],
                note("note", 100_000 + i, (i % 50) as usize),
            );
            i += 1;
        }
        let whole = journal.read_after(start, u32::MAX).await.unwrap();
        let page = journal
            .read_after(seen.last().map_or(start, |e: &StoredEvent| e.position), 10_001)
            .await
            .unwrap();
        let stream = journal.read_stream("calcom", 0, u32::MAX).await.unwrap();
        seen.extend(page);
        reads.push((whole, stream));
        assert!(tokio::time::Instant::now() < deadline);
    }
    journal.flush().await.unwrap();
    let after_start = sqlx_after(&journal, start, u32::MAX).await;
    assert_eq!(after_start.len(), 30_000);
    seen.extend(paged(&journal, seen.last().map_or(start, |e| e.position), 10_001).await);
    assert!(
        seen == after_start,
        "read while appending, in pages: everything once, in order"
    );
    let calcom_now = sqlx_stream(&journal, "calcom", 0, u32::MAX).await;
    for (whole, stream) in &reads {
        assert!(
            after_start.starts_with(whole),
            "a whole read is a prefix of the log ({} rows)",
            whole.len()
        );
        assert!(
            calcom_now.starts_with(stream),
            "a stream read is a prefix of the stream ({} rows)",
            stream.len()
        );
    }
    journal.close().await;
}

#[tokio::test]
async fn the_database_rejects_every_way_to_change_or_remove_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let journal = Journal::open(&path, opts()).await.unwrap();
    let stream: Arc<str> = Arc::from("stripe");
    let mut b = Breaker::new(Policy::consecutive(2, 100)).unwrap();
    for t in 0..5 {
        drive(&journal, &stream, &mut b, t, Outcome::Failure);
    }
    journal.flush().await.unwrap();
    let before = all_events(&journal).await;
    let mut conn = admin(&path).await;
    let (rt,): (i64,) = sqlx::query_as("PRAGMA recursive_triggers")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(rt, 1, "recursive_triggers on the project's write connections");
    let (rt,): (i64,) = sqlx::query_as("PRAGMA recursive_triggers")
        .fetch_one(journal.pool())
        .await
        .unwrap();
    assert_eq!(rt, 1, "and on its readers");
    let first = &before[0];
    for sql in [
        "UPDATE events SET payload = x'00' WHERE position = 1".to_owned(),
        "DELETE FROM events WHERE position = 1".to_owned(),
        "REPLACE INTO events (position, stream, seq, event_type, event_version, recorded_at, payload) VALUES (1, 'x', 99, 't', 1, 0, x'00')".to_owned(),
        "INSERT OR REPLACE INTO events (position, stream, seq, event_type, event_version, recorded_at, payload) VALUES (1, 'x', 99, 't', 1, 0, x'00')".to_owned(),
        format!(
            "INSERT OR REPLACE INTO events (stream, seq, event_type, event_version, recorded_at, payload) VALUES ('{}', {}, 't', 1, 0, x'00')",
            first.stream, first.seq
        ),
        format!(
            "INSERT INTO events (stream, seq, event_type, event_version, recorded_at, payload) VALUES ('{}', {}, 't', 1, 0, x'00') ON CONFLICT (stream, seq) DO UPDATE SET payload = x'00'",
            first.stream, first.seq
        ),
        "DELETE FROM events".to_owned(),
        "UPDATE retention SET compacted_before = -1".to_owned(),
    ] {
        let err = sqlx::query(sqlx::AssertSqlSafe(sql.clone())).execute(&mut conn).await;
        assert!(err.is_err(), "{sql} must be rejected");
    }
    // Readers cannot write at all.
    assert!(sqlx::query("DELETE FROM events").execute(journal.pool()).await.is_err());
    assert_eq!(all_events(&journal).await, before, "row count and contents unchanged");
    conn.close().await.unwrap();
    journal.close().await;
}

#[tokio::test]
async fn a_second_writer_of_a_stream_is_a_conflict_not_an_interleave() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let journal = Journal::open(&path, opts()).await.unwrap();
    let stream: Arc<str> = Arc::from("stripe");
    let other: Arc<str> = Arc::from("calcom");
    let mut b = Breaker::new(Policy::consecutive(2, 100)).unwrap();
    drive(&journal, &stream, &mut b, 0, Outcome::Success);
    journal.flush().await.unwrap();
    // Another process writes seq 2 of the same stream behind this journal's back.
    let mut conn = admin(&path).await;
    sqlx::query("INSERT INTO events (stream, seq, event_type, event_version, recorded_at, payload) VALUES ('stripe', 2, 'x', 1, 0, x'80')")
        .execute(&mut conn)
        .await
        .unwrap();
    drive(&journal, &stream, &mut b, 10, Outcome::Success);
    drive(
        &journal,
        &other,
        &mut Breaker::new(Policy::consecutive(2, 100)).unwrap(),
        10,
        Outcome::Success,
    );
    journal.flush().await.unwrap();
    let stored = all_events(&journal).await;
    let stripe: Vec<&StoredEvent> = stored.iter().filter(|e| e.stream == "stripe").collect();
    assert_eq!(stripe.len(), 2, "ours (seq 1) and theirs (seq 2); nothing interleaved");
    assert!(
        stored.iter().any(|e| e.stream == "calcom"),
        "other streams are still written"
    );
    let gap = stored
        .iter()
        .find(|e| e.event_type == GAP)
        .expect("the dropped event is recorded as a gap");
    let Decoded::Gap(g) = decode(gap).unwrap() else {
        panic!()
    };
    assert_eq!(g.dropped["stripe"]["call_batch"], 1);
    assert_eq!(journal.stats().errors[4].load(std::sync::atomic::Ordering::Relaxed), 1);
    conn.close().await.unwrap();
    journal.close().await;
}

/// A flush with a deadline: a dropped record's ticket must settle too, or it would wait forever.
async fn flush(journal: &Journal) {
    tokio::time::timeout(Duration::from_secs(10), journal.flush())
        .await
        .expect("the flush returns")
        .unwrap();
}

#[tokio::test]
async fn a_conflict_fences_the_stream_that_collided_not_the_first_of_the_group_commit() {
    // Given a log where another process has written seq 2 of "stripe" behind this journal's
    // back,
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let journal = Journal::open(&path, opts()).await.unwrap();
    let (innocent, stripe): (Arc<str>, Arc<str>) = (Arc::from("calcom"), Arc::from("stripe"));
    let mut ours = Breaker::new(Policy::consecutive(2, 100)).unwrap();
    let mut theirs = Breaker::new(Policy::consecutive(2, 100)).unwrap();
    drive(&journal, &stripe, &mut theirs, 0, Outcome::Success);
    flush(&journal).await;
    let mut conn = admin(&path).await;
    sqlx::query("INSERT INTO events (stream, seq, event_type, event_version, recorded_at, payload) VALUES ('stripe', 2, 'x', 1, 0, x'80')")
        .execute(&mut conn)
        .await
        .unwrap();
    // when one group commit holds an innocent stream's events first and the conflicting
    // stream's after them,
    let mut expected = Vec::new();
    for t in 10..20 {
        expected.extend(drive(&journal, &innocent, &mut ours, t, Outcome::Success).0);
    }
    drive(&journal, &stripe, &mut theirs, 10, Outcome::Success);
    flush(&journal).await;
    // and both streams go on after it,
    for t in 30..35 {
        expected.extend(drive(&journal, &innocent, &mut ours, t, Outcome::Success).0);
    }
    drive(&journal, &stripe, &mut theirs, 30, Outcome::Success);
    flush(&journal).await;
    // then every event of the innocent stream is durable, in order: it is not fenced;
    let stored = all_events(&journal).await;
    assert_eq!(
        core_events(&stored, "calcom"),
        expected,
        "the innocent stream is written whole"
    );
    // the conflicting stream is fenced: only ours (seq 1) and theirs (seq 2), nothing interleaved;
    let stripe_rows: Vec<i64> = stored.iter().filter(|e| e.stream == "stripe").map(|e| e.seq).collect();
    assert_eq!(stripe_rows, [1, 2]);
    // and its losses, only its, are recorded as gaps, the later record's too.
    let mut dropped: std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>> =
        std::collections::BTreeMap::new();
    for e in stored.iter().filter(|e| e.event_type == GAP) {
        let Decoded::Gap(g) = decode(e).unwrap() else {
            panic!("a gap decodes as a gap")
        };
        assert!(g.from_ms > 0 && g.from_ms <= g.to_ms, "{g:?}");
        for (stream, kinds) in g.dropped {
            for (kind, n) in kinds {
                *dropped.entry(stream.clone()).or_default().entry(kind).or_default() += n;
            }
        }
    }
    assert_eq!(
        dropped,
        std::collections::BTreeMap::from([(
            "stripe".to_owned(),
            std::collections::BTreeMap::from([("call_batch".to_owned(), 2)])
        )])
    );
    assert_eq!(journal.stats().dropped.load(std::sync::atomic::Ordering::Relaxed), 2);
    // `/metrics` counts the gap events written: as many as the log holds.
    assert_eq!(
        journal.stats().gaps.load(std::sync::atomic::Ordering::Relaxed),
        stored.iter().filter(|e| e.event_type == GAP).count() as u64
    );
    assert_eq!(journal.stats().errors[4].load(std::sync::atomic::Ordering::Relaxed), 1);
    conn.close().await.unwrap();
    journal.close().await;
}

#[test]
fn call_batches_of_version_1_still_decode_and_version_2_holds_cancelled_calls() {
    use breakerbox::breaker::CallRecorded;
    use breakerbox::journal::decode_batch;
    // Golden bytes of a `call_batch` as version 1 wrote it (written by the tree before
    // `cancelled` existed, never rewritten): its outcome code has 2 bits, slow bit 2, stale bit 3.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/events/call_batch.v1.msgpack");
    let stored = |event_version: u32, payload: Vec<u8>| StoredEvent {
        position: 7,
        node: "app-1".into(),
        stream: "stripe".into(),
        seq: 2,
        event_type: "call_batch".into(),
        event_version,
        recorded_at: 1_764_000_000_000,
        payload,
    };
    let call = |dt: u64, outcome, latency_ms, slow, stale| CallRecorded {
        at_ms: 1_764_000_000_000 + dt,
        outcome,
        latency_ms,
        slow,
        stale,
    };
    let v1 = stored(1, std::fs::read(&path).unwrap());
    let Decoded::Breaker(events) = decode(&v1).unwrap() else {
        panic!("a call batch decodes as calls")
    };
    let expected = [
        call(0, Outcome::Success, 12, false, false),
        call(5, Outcome::Failure, 3_000, true, false),
        call(9, Outcome::Timeout, 10_000, true, false),
        call(9, Outcome::Ignored, 1, false, true),
    ];
    assert_eq!(
        events,
        expected.iter().copied().map(Event::CallRecorded).collect::<Vec<_>>()
    );
    // Version 2 (written now) adds `cancelled`, and reads back exactly.
    let mut batch = breakerbox::journal::CallBatch::new(1_764_000_000_000);
    let written = [
        call(0, Outcome::Cancelled, 40, false, false),
        call(1, Outcome::Ignored, 2, false, true),
        call(2, Outcome::Failure, 9, true, false),
    ];
    for c in &written {
        assert!(batch.push(c));
    }
    let v2 = stored(
        breakerbox::journal::CALL_BATCH_VERSION,
        rmp_serde::to_vec_named(&batch).unwrap(),
    );
    assert_eq!(breakerbox::journal::CALL_BATCH_VERSION, 2);
    let back: Vec<CallRecorded> = decode_batch(&v2).unwrap().iter().collect();
    assert_eq!(back, written);
    // The same bytes read as version 1 are refused (bit 4 is not a v1 bit), never misread.
    assert!(decode_batch(&stored(1, v2.payload.clone())).is_err());
    // A version this build does not know is named, not guessed.
    let e = decode(&stored(3, v2.payload)).unwrap_err().to_string();
    assert!(e.contains("version 3"), "{e}");
}

#[test]
fn call_summaries_written_before_they_named_their_tailers_still_decode() {
    // Golden bytes of a `call_summary` as compaction first wrote it: minutes only.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/events/call_summary.v1.msgpack");
    let golden = std::fs::read(&path).unwrap();
    let stored = StoredEvent {
        position: 9,
        node: "app-1".into(),
        stream: "stripe".into(),
        seq: 3,
        event_type: breakerbox::journal::CALL_SUMMARY.into(),
        event_version: 1,
        recorded_at: 1_764_000_000_000,
        payload: golden,
    };
    let Decoded::Summary(s) = decode(&stored).unwrap() else {
        panic!("a call summary decodes as one")
    };
    // Which rows it replaced and who folded them were not recorded: nobody skips it.
    assert_eq!((s.through_position, s.folded_by.len()), (0, 0));
    let calls: Vec<(u64, u64)> = s.minutes.iter().map(|m| (m.minute_ms, m.calls())).collect();
    assert_eq!(calls, [(1_764_000_000_000, 4), (1_764_000_060_000, 1)]);
    let m = &s.minutes[0];
    assert_eq!(
        (m.successes, m.failures, m.timeouts, m.ignored, m.slow, m.stale),
        (1, 1, 1, 1, 1, 1)
    );
    assert_eq!((m.latency_total_ms, m.latency_max_ms), (3_263, 3_000));
    assert_eq!(
        s.minutes[1].latency_buckets.last(),
        Some(&1),
        "40 s is past the last bound"
    );
}

#[tokio::test]
async fn a_full_disk_buffers_events_and_nothing_acknowledged_is_lost_when_it_clears() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&dir.path().join("log.db"), opts()).await.unwrap();
    let stream: Arc<str> = Arc::from("stripe");
    let mut b = Breaker::new(Policy::consecutive(1_000_000, 100)).unwrap();
    let mut submitted = Vec::new();
    for t in 0..100 {
        submitted.extend(drive(&journal, &stream, &mut b, t, Outcome::Success).0);
    }
    journal.flush().await.unwrap();
    // The disk fills up: the cap is below the file's size, so every append fails as "full".
    journal.set_max_size(Some(1));
    let started = std::time::Instant::now();
    let mut last = None;
    for t in 100..20_100 {
        let (events, ticket) = drive(&journal, &stream, &mut b, t, Outcome::Success);
        submitted.extend(events);
        last = ticket.or(last);
    }
    // Protected calls never wait on the disk: 20,000 submits took no I/O.
    assert!(started.elapsed() < Duration::from_secs(2));
    let mut rx = journal.subscribe();
    tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|p| p.failing == Some("full")))
        .await
        .expect("the failure is visible")
        .unwrap();
    assert!(journal.stats().errors[1].load(std::sync::atomic::Ordering::Relaxed) > 0);
    // Space comes back: everything buffered is written.
    journal.set_max_size(None);
    tokio::time::timeout(Duration::from_secs(10), journal.durable(last.unwrap()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(journal.progress().failing, None);
    let stored = all_events(&journal).await;
    assert_eq!(core_events(&stored, "stripe"), submitted);
    journal.close().await;
}

#[tokio::test]
async fn a_lock_held_elsewhere_is_waited_out_and_overflow_is_recorded_as_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let journal = Journal::open(
        &path,
        JournalOptions {
            capacity: 100,
            ..opts()
        },
    )
    .await
    .unwrap();
    let stream: Arc<str> = Arc::from("stripe");
    let mut b = Breaker::new(Policy::consecutive(1_000_000, 100)).unwrap();
    // A first event, so this is a log in use rather than a fresh file.
    let (mut accepted, _) = drive(&journal, &stream, &mut b, 0, Outcome::Success);
    journal.flush().await.unwrap();
    // Another process holds the write lock.
    let mut other = admin(&path).await;
    sqlx::query("BEGIN IMMEDIATE").execute(&mut other).await.unwrap();
    let mut dropped = 0;
    for t in 1..301 {
        let mut events = Vec::new();
        let Decision::Permit(p) = b.acquire(t, &mut events) else {
            panic!()
        };
        b.complete(t, p, Outcome::Success, &mut events);
        for e in events {
            match journal.submit(&stream, Body::Breaker(e.clone())) {
                Some(_) => accepted.push(e),
                None => dropped += 1,
            }
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let mut rx = journal.subscribe();
    tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|p| p.failing == Some("busy")))
        .await
        .unwrap()
        .unwrap();
    assert!(dropped > 0, "the buffer of 100 overflowed");
    sqlx::query("COMMIT").execute(&mut other).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), journal.flush())
        .await
        .unwrap()
        .unwrap();
    let stored = all_events(&journal).await;
    assert_eq!(
        core_events(&stored, "stripe"),
        accepted,
        "every accepted event, in order"
    );
    let gap = stored.iter().find(|e| e.event_type == GAP).expect("a gap event");
    let Decoded::Gap(g) = decode(gap).unwrap() else {
        panic!()
    };
    assert_eq!(
        g.dropped["stripe"]["call_batch"], dropped,
        "the loss is counted exactly"
    );
    assert!(g.from_ms <= g.to_ms);
    other.close().await.unwrap();
    journal.close().await;
}

#[tokio::test]
async fn a_file_that_turns_read_only_buffers_events_until_it_is_writable_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let wal = dir.path().join("log.db-wal");
    let journal = Journal::open(&path, opts()).await.unwrap();
    let stream: Arc<str> = Arc::from("stripe");
    let mut b = Breaker::new(Policy::consecutive(3, 100)).unwrap();
    let mut submitted = drive(&journal, &stream, &mut b, 0, Outcome::Success).0;
    journal.flush().await.unwrap();
    // The immutable flag makes the file read-only even for root (the -shm file is left alone:
    // it is memory-mapped, and SQLite cannot run without it).
    let chattr = |flag: &str| {
        let ok = std::process::Command::new("chattr")
            .arg(flag)
            .arg(&path)
            .arg(&wal)
            .status()
            .unwrap()
            .success();
        assert!(ok, "chattr {flag} must work here (root on ext4) for this fault test");
    };
    chattr("+i");
    let mut last = None;
    for t in 1..1_000 {
        let (events, ticket) = drive(
            &journal,
            &stream,
            &mut b,
            t,
            if t % 4 == 0 { Outcome::Failure } else { Outcome::Success },
        );
        submitted.extend(events);
        last = ticket.or(last);
    }
    let mut rx = journal.subscribe();
    let failing = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|p| p.failing.is_some())).await;
    chattr("-i");
    assert!(failing.is_ok(), "the write failure is visible");
    tokio::time::timeout(Duration::from_secs(10), journal.durable(last.unwrap()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        core_events(&all_events(&journal).await, "stripe"),
        submitted,
        "nothing accepted is missing"
    );
    assert_eq!(
        journal
            .recover("stripe", Policy::consecutive(3, 100))
            .await
            .unwrap()
            .breaker,
        b
    );
    journal.close().await;
}

/// A log of 20,000 calls on one stream with a snapshot every 100 calls, closed cleanly (so a
/// clean-shutdown marker lies beside it). Returns the breaker as it ended.
async fn write_log(path: &Path) -> Breaker {
    let journal = Journal::open(path, opts()).await.unwrap();
    let stream: Arc<str> = Arc::from("stripe");
    let mut b = Breaker::new(Policy::consecutive(3, 100)).unwrap();
    for t in 0..20_000u64 {
        drive(
            &journal,
            &stream,
            &mut b,
            t,
            if t % 5 == 0 { Outcome::Failure } else { Outcome::Success },
        );
        if t % 100 == 0 {
            journal.submit(
                &stream,
                Body::Snapshot {
                    at_ms: t,
                    breaker: Box::new(b.clone()),
                },
            );
        }
    }
    journal.flush().await.unwrap();
    journal.close().await;
    b
}

#[tokio::test]
async fn a_corrupt_file_is_refused_never_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.db");
    write_log(&good).await;
    let bytes = std::fs::read(&good).unwrap();
    assert!(
        bytes.len() > 64 * 1024,
        "a file of several pages ({} bytes)",
        bytes.len()
    );
    // The header checks of every open name what is wrong.
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated to half", bytes[..bytes.len() / 2].to_vec()),
        ("zeroed header", {
            let mut b = bytes.clone();
            b[..100].fill(0);
            b
        }),
    ];
    let named = [("truncated to half", "truncated"), ("zeroed header", "SQLite format 3")];
    // Flipped bytes inside pages, at seeded places.
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..6 {
        let mut b = bytes.clone();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let page = 4096 * (1 + seed as usize % (b.len() / 4096 - 1));
        for i in 0..64 {
            b[page + 8 + i * 13 % 4000] ^= 0xA5;
        }
        cases.push(("flipped page bytes", b));
    }
    for (i, (what, content)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("bad-{i}.db"));
        std::fs::write(&path, &content).unwrap();
        match Journal::open(&path, opts()).await {
            Err(StoreError::Corrupt { detail, .. }) => {
                if let Some((_, word)) = named.iter().find(|(case, _)| *case == what) {
                    assert!(detail.contains(word), "{what}: the error says so: {detail}");
                }
            }
            Err(other) => panic!("{what}: expected Corrupt, got {other}"),
            Ok(j) => {
                // quick_check may miss damage confined to free pages; then reading must still
                // never panic and never silently drop what it cannot decode.
                let read = j.read_after(0, 100_000).await;
                if let Ok(events) = read {
                    for e in &events {
                        let _ = decode(e);
                    }
                }
                j.close().await;
            }
        }
        assert_eq!(
            std::fs::read(&path).unwrap(),
            content,
            "{what}: the file was not modified"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Integrity at open: the full check after an unclean shutdown, in the background after a clean one.

fn sidecar(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    p.into()
}

/// The options of these tests: the background check starts at once.
fn checked_at_once() -> JournalOptions {
    JournalOptions {
        background_check: BackgroundCheck {
            delay: Duration::ZERO,
            ..BackgroundCheck::default()
        },
        ..opts()
    }
}

/// Waits (bounded) until the background check has an answer.
async fn checked(journal: &Journal) -> Integrity {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = journal.integrity();
        if now != Integrity::Checking || std::time::Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_clean_close_lets_the_next_open_skip_the_full_check_and_a_drop_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let marker = sidecar(&path, "-clean");
    // Given a log closed cleanly
    let mut b = write_log(&path).await;
    assert!(marker.exists(), "close leaves a clean-shutdown marker");
    // When it is opened again
    let journal = Journal::open(&path, checked_at_once()).await.unwrap();
    // Then the full check is skipped at open, the marker is gone while the file is open (a crash
    // now leaves none), and the check runs in the background and passes
    assert!(matches!(journal.integrity(), Integrity::Checking | Integrity::Verified));
    assert!(!marker.exists(), "an open writer takes the marker away");
    assert_eq!(checked(&journal).await, Integrity::Verified);
    let policy = Policy::consecutive(3, 100);
    assert_eq!(journal.recover("stripe", policy.clone()).await.unwrap().breaker, b);
    journal.close().await;
    assert!(marker.exists());
    // When a journal is written and dropped without `close` (as a crash or a panicking host
    // leaves it)
    let journal = Journal::open(&path, checked_at_once()).await.unwrap();
    drive(&journal, &Arc::from("stripe"), &mut b, 30_000, Outcome::Success);
    journal.flush().await.unwrap();
    drop(journal);
    // Then the next open runs the full check first
    let journal = Journal::open(&path, checked_at_once()).await.unwrap();
    assert_eq!(journal.integrity(), Integrity::CheckedAtOpen(Unclean::NoMarker));
    assert_eq!(journal.recover("stripe", policy).await.unwrap().breaker, b);
    journal.close().await;
}

#[tokio::test]
async fn damage_at_rest_after_a_clean_close_is_found_in_the_background_and_nothing_more_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let wal = sidecar(&path, "-wal");
    // Given a log closed cleanly, whose bits then rot at rest (its metadata unchanged)
    let mut b = write_log(&path).await;
    let damaged = tamper::damage_a_page(&path, true);
    // When it is opened (the check starts after 1 s: what is submitted first is committed)
    let journal = Journal::open(
        &path,
        JournalOptions {
            background_check: BackgroundCheck {
                delay: Duration::from_secs(1),
                ..BackgroundCheck::default()
            },
            ..opts()
        },
    )
    .await
    .expect("a clean shutdown's marker matches: the file opens without the full check");
    assert_eq!(journal.integrity(), Integrity::Checking);
    let stream: Arc<str> = Arc::from("stripe");
    drive(&journal, &stream, &mut b, 20_000, Outcome::Success);
    tokio::time::timeout(Duration::from_secs(5), journal.flush())
        .await
        .expect("committed before the check starts")
        .unwrap();
    // Then, within a bounded wait, the background check finds the damage and says so
    let mut rx = journal.subscribe();
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|p| p.failing == Some("corrupt")))
        .await
        .expect("the corruption is visible as a failing store")
        .unwrap();
    match journal.integrity() {
        Integrity::Corrupt(StoreError::Corrupt { path: p, detail }) => {
            assert_eq!(p, path.display().to_string());
            assert!(!detail.is_empty());
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(
        journal.stats().errors[5].load(std::sync::atomic::Ordering::Relaxed) >= 1,
        "counted as `corrupt`"
    );
    let wal_when_found = std::fs::read(&wal).unwrap();
    // and protected calls are still served: submits return at once and stay buffered, unwritten
    let started = std::time::Instant::now();
    let mut last = None;
    for t in 20_001..25_001 {
        last = drive(&journal, &stream, &mut b, t, Outcome::Success).1.or(last);
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), journal.durable(last.unwrap()))
            .await
            .is_err(),
        "nothing is committed to a damaged file"
    );
    assert_eq!(journal.progress().failing, Some("corrupt"));
    assert!(matches!(
        journal.compact(0, u64::MAX / 2).await,
        Err(JournalError::Store(StoreError::Corrupt { .. }))
    ));
    journal.close().await;
    // and nothing was written to the file: not repaired, not checkpointed; the WAL keeps what was
    // committed before the damage was found; no clean-shutdown marker
    assert!(
        std::fs::read(&path).unwrap() == damaged,
        "the file is as the damage left it"
    );
    assert!(
        std::fs::read(&wal).unwrap() == wal_when_found,
        "nothing appended after the finding"
    );
    assert!(!sidecar(&path, "-clean").exists());
    // and the next open runs the full check and refuses it, still without touching it
    match Journal::open(&path, opts()).await {
        Err(StoreError::Corrupt { .. }) => {}
        Err(other) => panic!("expected Corrupt, got {other}"),
        Ok(_) => panic!("a damaged file must be refused at open"),
    }
    assert!(
        std::fs::read(&path).unwrap() == damaged,
        "a refused file is left as it is"
    );
    assert!(std::fs::read(&wal).unwrap() == wal_when_found, "its WAL too");
}

#[tokio::test]
async fn a_clean_shutdown_marker_that_does_not_match_the_file_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    // Given a log closed cleanly, then written by another program (an SQLite connection that is
    // not a journal, and so does not take the marker away)
    write_log(&path).await;
    let mut conn = admin(&path).await;
    sqlx::query("INSERT INTO events (stream, seq, event_type, event_version, recorded_at, payload) VALUES ('other', 1, 'x', 1, 0, x'80')")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    assert!(sidecar(&path, "-clean").exists());
    // When it is opened
    let journal = Journal::open(&path, checked_at_once()).await.unwrap();
    // Then the marker is ignored: the full check ran at open
    assert_eq!(journal.integrity(), Integrity::CheckedAtOpen(Unclean::MarkerMismatch));
    journal.close().await;
    // Given a clean close again, then a page damaged by something that wrote the file (its mtime
    // moved, even within the clock tick of the close)
    let damaged = tamper::damage_a_page(&path, false);
    // When it is opened
    let refused = Journal::open(&path, checked_at_once()).await;
    // Then the full check runs at open and refuses it, leaving it as it was
    assert!(
        matches!(refused, Err(StoreError::Corrupt { .. })),
        "{:?}",
        refused.err()
    );
    assert!(
        std::fs::read(&path).unwrap() == damaged,
        "a refused file is left as it is"
    );
}

#[tokio::test]
async fn compaction_folds_old_calls_into_minute_summaries_and_keeps_everything_else() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let journal = Journal::open(&path, opts()).await.unwrap();
    let (stripe, calcom): (Arc<str>, Arc<str>) = (Arc::from("stripe"), Arc::from("calcom"));
    let policy = Policy::consecutive(4, 30_000);
    let mut b = Breaker::new(policy.clone()).unwrap();
    let mut other = Breaker::new(policy.clone()).unwrap();
    let base: u64 = 1_764_000_000_000 / 60_000 * 60_000;
    let mut calls_before_snapshot = 0u64;
    // 20 minutes of calls, some failures that open the breaker now and then.
    for i in 0..2_000u64 {
        let t = base + i * 600;
        let outcome = if i % 9 < 4 { Outcome::Failure } else { Outcome::Success };
        let (events, _) = drive(&journal, &stripe, &mut b, t, outcome);
        drive(&journal, &calcom, &mut other, t, outcome);
        if t < base + 12 * 60_000 {
            calls_before_snapshot += events.iter().filter(|e| matches!(e, Event::CallRecorded(_))).count() as u64;
        }
        if i == 1_200 {
            // The owner writes a snapshot at minute 12 (calcom never gets one).
            journal.submit(
                &stripe,
                Body::Snapshot {
                    at_ms: t,
                    breaker: Box::new(b.clone()),
                },
            );
        }
    }
    journal.flush().await.unwrap();
    let before = all_events(&journal).await;
    // Keep 8 minutes: compact everything recorded before minute 12 (now = minute 20).
    let report = journal.compact(8 * 60_000, base + 20 * 60_000).await.unwrap();
    assert_eq!(report.compacted_before_ms, (base + 12 * 60_000) as i64);
    assert_eq!(
        report.streams_without_snapshot,
        ["calcom"],
        "no snapshot: recovery still needs its calls"
    );
    assert!(report.batches > 0 && report.summaries > 0);
    assert_eq!(
        report.calls, calls_before_snapshot,
        "every compacted call is in a summary"
    );
    let after = all_events(&journal).await;
    // Everything that is not a compacted call batch is still there, untouched.
    let kept: Vec<&StoredEvent> = before
        .iter()
        .filter(|e| {
            !(e.stream == "stripe" && e.event_type == "call_batch" && (e.recorded_at as u64) < base + 12 * 60_000)
        })
        .collect();
    for e in &kept {
        assert!(
            after.contains(e),
            "{} {} at {} was removed",
            e.stream,
            e.event_type,
            e.position
        );
    }
    assert!(after.len() < before.len());
    // The summaries account for each minute exactly.
    let mut summarized = 0u64;
    for e in after.iter().filter(|e| e.event_type == "call_summary") {
        let Decoded::Summary(s) = decode(e).unwrap() else {
            panic!()
        };
        for m in &s.minutes {
            assert_eq!(m.latency_buckets.iter().map(|&c| u64::from(c)).sum::<u64>(), m.calls());
            summarized += m.calls();
        }
    }
    assert_eq!(summarized, calls_before_snapshot);
    // The breakers still recover exactly, and the log's seqs stay contiguous.
    assert_eq!(journal.recover("stripe", policy.clone()).await.unwrap().breaker, b);
    assert_eq!(journal.recover("calcom", policy.clone()).await.unwrap().breaker, other);
    drive(&journal, &stripe, &mut b, base + 21 * 60_000, Outcome::Success);
    journal.flush().await.unwrap();
    assert_eq!(journal.recover("stripe", policy).await.unwrap().breaker, b);
    // Running it again changes nothing; the watermark never moves back.
    let again = journal.compact(8 * 60_000, base + 20 * 60_000).await.unwrap();
    assert_eq!((again.batches, again.summaries), (0, 0));
    let mut conn = admin(&path).await;
    assert!(
        sqlx::query("UPDATE retention SET compacted_before = 0")
            .execute(&mut conn)
            .await
            .is_err()
    );
    // A batch after the snapshot, or newer than the watermark, can't be deleted by hand either.
    assert!(
        sqlx::query("DELETE FROM events WHERE event_type = 'call_batch'")
            .execute(&mut conn)
            .await
            .is_err()
    );
    conn.close().await.unwrap();
    journal.close().await;
}

#[tokio::test]
async fn one_process_holds_the_writer_lease_and_keeps_it_while_alive() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let serve = Journal::open(&path, opts()).await.unwrap();
    let cli = Journal::open(&path, opts()).await.unwrap();
    let ttl = Duration::from_millis(300);
    assert_eq!(serve.lease().await.unwrap(), None);
    assert_eq!(serve.acquire_lease("serve", ttl).await.unwrap().holder, "serve");
    assert_eq!(
        cli.acquire_lease("cli", ttl).await.unwrap().holder,
        "serve",
        "held: not taken"
    );
    // An idle holder keeps renewing: well past the ttl it still holds it.
    tokio::time::sleep(ttl * 3).await;
    let lease = cli.acquire_lease("cli", ttl).await.unwrap();
    assert_eq!(lease.holder, "serve");
    // A clean shutdown gives it up.
    serve.close().await;
    assert_eq!(cli.lease().await.unwrap(), None);
    assert_eq!(cli.acquire_lease("cli", ttl).await.unwrap().holder, "cli");
    cli.close().await;
    // A holder that died without releasing is taken over once its lease has expired.
    let mut conn = admin(&path).await;
    sqlx::query("INSERT INTO writer_lease (id, holder, renewed_at) VALUES (1, 'dead', 0)")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let next = Journal::open(&path, opts()).await.unwrap();
    assert_eq!(next.acquire_lease("next", ttl).await.unwrap().holder, "next");
    next.close().await;
}

#[tokio::test]
async fn a_lease_lapses_by_its_holders_own_ttl_and_is_taken_from_a_dead_holder_only_as_judged() {
    use breakerbox::journal::{Claim, Holder, Standing};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let cli = Journal::open(&path, opts()).await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let set = |holder: String, renewed_at: i64, ttl_ms: i64| {
        let path = path.clone();
        async move {
            let mut conn = admin(&path).await;
            sqlx::query("INSERT OR REPLACE INTO writer_lease (id, holder, renewed_at, ttl_ms) VALUES (1, ?, ?, ?)")
                .bind(holder)
                .bind(renewed_at)
                .bind(ttl_ms)
                .execute(&mut conn)
                .await
                .unwrap();
            conn.close().await.unwrap();
        }
    };
    // A holder with a 10 s ttl, renewed 3.5 s ago: alive by its own promise, though older than
    // the 3 s a caller would assume.
    set("serve pid 4242 on db-2 as ops".into(), now - 3_500, 10_000).await;
    let ttl = Duration::from_secs(3);
    assert_eq!(
        cli.acquire_lease("cli", ttl).await.unwrap().holder,
        "serve pid 4242 on db-2 as ops"
    );
    let Claim::Held { lease, standing } = cli.claim_lease("cli", ttl).await.unwrap() else {
        panic!("taken from a live holder")
    };
    assert_eq!((lease.ttl_ms, standing), (Some(10_000), Standing::Unchecked));
    // A holder of this host whose process is gone (this process's identity, with a start time
    // that no process of its pid has), renewed just now: taken at once, but only as judged.
    let mut gone = Holder::this_process("serve");
    match &mut gone.mark {
        Some(m) => m.start += 1,
        None => return, // not Linux: only the ttl tells (tested above)
    }
    set(gone.to_string(), now, 10_000).await;
    let seen = cli.lease().await.unwrap().unwrap();
    let stale = breakerbox::journal::Lease {
        renewed_at_ms: now - 1,
        ..seen.clone()
    };
    assert_eq!(
        cli.take_over_lease("cli", ttl, &stale).await.unwrap().holder,
        gone.to_string(),
        "renewed since it was judged: not taken"
    );
    let Claim::Taken { replaced } = cli.claim_lease("cli", ttl).await.unwrap() else {
        panic!("a gone holder's lease was not taken")
    };
    assert_eq!(replaced, Some((seen, Standing::Gone)));
    let mine = cli.lease().await.unwrap().unwrap();
    assert_eq!((mine.holder.as_str(), mine.ttl_ms), ("cli", Some(3_000)));
    cli.close().await;
}

// ---------------------------------------------------------------------------------------------
// Crash test: SIGKILL a writer at a random instant, then check what the file holds.

const CHILD_ENV: &str = "BREAKERBOX_CRASH_CHILD_DB";
const STREAMS: [&str; 3] = ["calcom", "retell", "stripe"];

fn crash_policy() -> Policy {
    Policy::consecutive(3, 20)
}

/// Not a test on its own: the crash test runs this test binary again with `CHILD_ENV` set, and
/// this entry becomes the child that writes until it is killed. Without the variable it returns.
#[test]
fn crash_child_process_entry() {
    let Ok(path) = std::env::var(CHILD_ENV) else { return };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let journal = Journal::open(
            Path::new(&path),
            JournalOptions {
                flush_interval: Duration::from_millis(1),
                ..JournalOptions::default()
            },
        )
        .await
        .unwrap();
        let streams: Vec<Arc<str>> = STREAMS.iter().map(|s| Arc::from(*s)).collect();
        let mut breakers = Vec::new();
        let mut counts = Vec::new();
        for s in STREAMS {
            // A restart, as the real process does it: state comes back from the log.
            let r = journal.recover(s, crash_policy()).await.unwrap();
            breakers.push(r.breaker);
            counts.push(r.folded);
        }
        let mut t: u64 = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let mut x = t ^ u64::from(std::process::id());
        loop {
            let mut last = None;
            for _ in 0..200 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x % 3) as usize;
                let outcome = if x % 5 < 2 { Outcome::Failure } else { Outcome::Success };
                t += 1;
                let (events, ticket) = drive(&journal, &streams[i], &mut breakers[i], t, outcome);
                counts[i] += events.len() as u64;
                last = ticket.or(last);
            }
            // The previous child's clock ran ahead of the wall clock (1 ms per call), so a
            // recovered breaker may still be OPEN for a while of this one's: rejections write
            // nothing, and the clock moves on.
            let Some(last) = last else { continue };
            journal.durable(last).await.unwrap();
            // Acknowledged: the state after exactly `count` events of the stream is durable.
            for i in 0..3 {
                println!(
                    "ACK {} {} {}",
                    STREAMS[i],
                    counts[i],
                    serde_json::to_string(&breakers[i]).unwrap()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
}

#[test]
fn no_acknowledged_event_is_lost_or_torn_when_the_writer_is_killed() {
    use std::io::BufRead;
    use std::process::{Command as Process, Stdio};
    let cycles: usize = std::env::var("BREAKERBOX_CRASH_CYCLES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(100);
    let seed: u64 = std::env::var("BREAKERBOX_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash test: {cycles} cycles, BREAKERBOX_CRASH_SEED={seed}");
    let mut rng = seed | 1;
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for cycle in 0..cycles {
        // A new file every 10 cycles; in between, each child continues the log the last one left.
        let path = dir.path().join(format!("crash-{}.db", cycle / 10));
        let mut child = Process::new(std::env::current_exe().unwrap())
            .args([
                "crash_child_process_entry",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait for the first acknowledgement, then kill at a random instant within 200 ms.
        // (The child's first line is the test harness's own "running 1 test", not an ACK.)
        let first = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(20))
                .expect("the child acknowledges writes");
            if line.starts_with("ACK ") {
                break line;
            }
        };
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_micros(rng % 200_000));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        let mut acked: std::collections::HashMap<String, (u64, String)> = std::collections::HashMap::new();
        for line in std::iter::once(first).chain(rx.try_iter()) {
            let mut parts = line.splitn(4, ' ');
            if parts.next() != Some("ACK") {
                continue;
            }
            let (Some(stream), Some(count), Some(state)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            acked.insert(stream.to_owned(), (count.parse().unwrap(), state.to_owned()));
        }
        let context = format!("cycle {cycle}, BREAKERBOX_CRASH_SEED={seed}");
        rt.block_on(async {
            let journal = Journal::open(&path, opts())
                .await
                .unwrap_or_else(|e| panic!("{context}: reopen: {e}"));
            assert_eq!(
                journal.integrity(),
                Integrity::CheckedAtOpen(Unclean::NoMarker),
                "{context}: a killed writer leaves no clean-shutdown marker: the full check ran at open"
            );
            let stored = all_events(&journal).await;
            assert!(
                stored.windows(2).all(|w| w[0].position < w[1].position),
                "{context}: positions increase"
            );
            for e in &stored {
                decode(e).unwrap_or_else(|err| panic!("{context}: event {} does not decode: {err}", e.position));
            }
            let mut conn = admin(&path).await;
            let (check,): (String,) = sqlx::query_as("PRAGMA integrity_check")
                .fetch_one(&mut conn)
                .await
                .unwrap();
            assert_eq!(check, "ok", "{context}");
            conn.close().await.unwrap();
            for (stream, (count, state)) in &acked {
                let events = core_events(&stored, stream);
                assert!(
                    events.len() as u64 >= *count,
                    "{context}: {stream}: {count} acknowledged, {} stored",
                    events.len()
                );
                let mut folded = Breaker::new(crash_policy()).unwrap();
                for e in &events[..*count as usize] {
                    folded.apply(e);
                }
                assert_eq!(
                    &serde_json::to_string(&folded).unwrap(),
                    state,
                    "{context}: {stream} at its last ack"
                );
                let recovered = journal.recover(stream, crash_policy()).await.unwrap().breaker;
                let mut all = Breaker::new(crash_policy()).unwrap();
                events.iter().for_each(|e| all.apply(e));
                assert_eq!(recovered, all, "{context}: {stream}: recovery folds everything stored");
            }
            journal.close().await;
        });
    }
}

/// Golden bytes of every record kind the journal and the layers above store (the core's events
/// have theirs in `tests/core/fixtures.rs`): decoded by every later build, the version checked.
/// Never rewritten; `BREAKERBOX_WRITE_FIXTURES=1` creates missing files only.
#[test]
fn every_stored_record_kind_decodes_from_its_golden_bytes_and_refuses_an_unknown_version() {
    use breakerbox::breaker::{Breaker, Command, State};
    use breakerbox::journal::{
        AlertDelivery, AlertStatus, CallStats, CommandRequest, DeliveryOutcome, Gap, Operator, OperatorCommand,
        Recorded,
    };
    let operator = Operator {
        who: "carol@ops".into(),
        from: "cli".into(),
        why: "provider incident INC-12".into(),
    };
    let mut breaker = Breaker::new(Policy::consecutive(3, 30_000)).unwrap();
    let mut events = Vec::new();
    breaker.command(1_764_000_000_000, Command::ForceOpen, &mut events);
    fn bytes<R: Recorded>(r: &R) -> Vec<u8> {
        rmp_serde::to_vec_named(r).unwrap()
    }
    let gap = Gap {
        from_ms: 1_764_000_000_000,
        to_ms: 1_764_000_004_000,
        dropped: [("stripe".to_owned(), [("call_batch".to_owned(), 12u64)].into())].into(),
    };
    let command = OperatorCommand {
        at_ms: 1_764_000_000_000,
        command: Command::ForceOpen,
        operator: operator.clone(),
        from_state: State::Closed,
        to_state: State::ForcedOpen,
        request_position: Some(41),
        fleet_command: None,
    };
    let request = CommandRequest {
        at_ms: 1_764_000_000_000,
        target: "stripe/customers.create".into(),
        command: Command::Reset,
        operator,
    };
    let stats = CallStats {
        at_ms: 1_764_000_001_000,
        rejected: 17,
        fallbacks: 9,
        dropped: 2,
    };
    let delivery = AlertDelivery {
        at_ms: 1_764_000_002_000,
        breaker: "stripe".into(),
        status: AlertStatus::Firing,
        sink: "oncall".into(),
        // The sample of tests/alerts.rs, which wrote this fixture.
        fingerprint: "d7adf68bc26f56b7".into(),
        episode_start_ms: 1_764_000_000_000,
        attempt: 2,
        outcome: DeliveryOutcome::Retrying,
        status_code: Some(503),
        error: None,
        next_attempt_ms: Some(1_764_000_004_000),
    };
    let anchor = breakerbox::journal::ChainAnchor {
        at_ms: 1_764_000_005_000,
        heads: vec![breakerbox::journal::Head {
            stream: "stripe".into(),
            seq: 42,
            hash: Some("9f".repeat(32)),
        }],
    };
    let cases: Vec<(&str, &str, Vec<u8>, Decoded)> = vec![
        (
            "gap",
            "gap.v1.msgpack",
            rmp_serde::to_vec_named(&gap).unwrap(),
            Decoded::Gap(gap),
        ),
        (
            "snapshot",
            "snapshot.v1.msgpack",
            rmp_serde::to_vec_named(&breaker).unwrap(),
            Decoded::Snapshot(Box::new(breaker)),
        ),
        (
            "operator_command",
            "operator_command.v1.msgpack",
            bytes(&command),
            Decoded::Command(command),
        ),
        (
            "command_request",
            "command_request.v1.msgpack",
            bytes(&request),
            Decoded::Request(request),
        ),
        (
            "call_stats",
            "call_stats.v1.msgpack",
            bytes(&stats),
            Decoded::Stats(stats),
        ),
        (
            "alert_delivery",
            "alert_delivery.v1.msgpack",
            bytes(&delivery),
            Decoded::Delivery(delivery),
        ),
        (
            "chain_anchor",
            "chain_anchor.v1.msgpack",
            bytes(&anchor),
            Decoded::Anchor(anchor),
        ),
    ];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/events");
    let write = std::env::var_os("BREAKERBOX_WRITE_FIXTURES").is_some();
    for (event_type, file, encoded, expected) in cases {
        let path = dir.join(file);
        if write && !path.exists() {
            std::fs::write(&path, &encoded).unwrap();
        }
        let golden = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let stored = |event_version: u32, payload: Vec<u8>| StoredEvent {
            position: 7,
            node: "app-1".into(),
            stream: "stripe".into(),
            seq: 2,
            event_type: event_type.into(),
            event_version,
            recorded_at: 1_764_000_000_000,
            payload,
        };
        assert_eq!(decode(&stored(1, golden.clone())).unwrap(), expected, "{file}");
        assert_eq!(
            encoded, golden,
            "{file}: the current encoding changed; bump the version"
        );
        let e = decode(&stored(2, golden)).unwrap_err().to_string();
        assert!(e.contains("version 2"), "{file}: {e}");
    }
}

/// A closed log of two breakers' traffic: its path and its events.
async fn chained_log(dir: &Path, name: &str) -> (std::path::PathBuf, Vec<StoredEvent>) {
    let path = dir.join(name);
    let journal = Journal::open(&path, opts()).await.unwrap();
    let mut b = Breaker::new(Policy::consecutive(3, 100)).unwrap();
    let mut c = Breaker::new(Policy::consecutive(3, 100)).unwrap();
    let (stripe, calcom): (Arc<str>, Arc<str>) = (Arc::from("stripe"), Arc::from("calcom"));
    for t in 0..40u64 {
        let outcome = if t % 5 < 3 { Outcome::Failure } else { Outcome::Success };
        drive(&journal, &stripe, &mut b, t * 50, outcome);
        journal.flush().await.unwrap();
        drive(&journal, &calcom, &mut c, t * 50, Outcome::Success);
    }
    journal.flush().await.unwrap();
    let events = all_events(&journal).await;
    journal.close().await;
    (path, events)
}

async fn verified(path: &Path) -> breakerbox::journal::VerifyReport {
    let journal = Journal::open(path, opts()).await.unwrap();
    let report = journal.verify().await.unwrap();
    journal.close().await;
    report
}

#[tokio::test]
async fn verify_passes_a_clean_log_and_names_each_form_of_tampering() {
    use breakerbox::journal::Finding;
    let dir = tempfile::tempdir().unwrap();
    let (clean, events) = chained_log(dir.path(), "clean.db").await;
    let report = verified(&clean).await;
    assert!(report.ok(), "{:?}", report.findings);
    assert_eq!(report.events, events.len() as u64);
    assert_eq!((report.unchained, report.heads.len()), (0, 2));
    assert!(report.heads.iter().all(|h| h.hash.is_some()));
    let stripe: Vec<&StoredEvent> = events.iter().filter(|e| e.stream == "stripe").collect();
    let (middle, next) = (stripe[stripe.len() / 2], stripe[stripe.len() / 2 + 1]);

    // REPLACE and INSERT OR REPLACE are refused by the schema, even where recursive_triggers is off.
    let mut conn = tamper::outsider(&clean).await;
    for sql in [
        format!(
            "REPLACE INTO events (position, stream, seq, event_type, event_version, recorded_at, payload) VALUES ({}, 'stripe', {}, 'transition', 1, 0, x'00')",
            middle.position, middle.seq
        ),
        format!(
            "INSERT OR REPLACE INTO events (stream, seq, event_type, event_version, recorded_at, payload) VALUES ('stripe', {}, 'transition', 1, 0, x'00')",
            middle.seq
        ),
    ] {
        let refused = sqlx::query(sqlx::AssertSqlSafe(sql.clone())).execute(&mut conn).await;
        let message = refused.expect_err(&sql).to_string();
        assert!(message.contains("append-only"), "{sql}: {message}");
    }
    conn.close().await.unwrap();
    assert!(verified(&clean).await.ok());

    // Each form of tampering, on its own copy, with the trigger in its way dropped first.
    let cases: Vec<(&str, String, Finding)> = vec![
        (
            "update",
            format!(
                "DROP TRIGGER events_no_update; UPDATE events SET payload = x'c0' WHERE position = {}",
                middle.position
            ),
            Finding::Rewritten {
                position: middle.position,
                stream: "stripe".into(),
                seq: middle.seq as u64,
            },
        ),
        (
            "delete",
            format!(
                "DROP TRIGGER events_no_delete; DELETE FROM events WHERE position = {}",
                middle.position
            ),
            Finding::Removed {
                stream: "stripe".into(),
                from_seq: middle.seq as u64,
                to_seq: middle.seq as u64,
            },
        ),
        (
            "reorder",
            format!(
                "DROP TRIGGER events_no_update; UPDATE events SET seq = -1 WHERE position = {a};
                 UPDATE events SET seq = {sa} WHERE position = {b}; UPDATE events SET seq = {sb} WHERE position = {a}",
                a = middle.position,
                b = next.position,
                sa = middle.seq,
                sb = next.seq
            ),
            Finding::Rewritten {
                position: next.position,
                stream: "stripe".into(),
                seq: middle.seq as u64,
            },
        ),
        (
            "node rewritten",
            format!(
                "DROP TRIGGER events_no_update; UPDATE events SET node = 'elsewhere' WHERE position = {}",
                middle.position
            ),
            Finding::Rewritten {
                position: middle.position,
                stream: "stripe".into(),
                seq: middle.seq as u64,
            },
        ),
        (
            "forged, no hash",
            format!(
                "INSERT INTO events (stream, seq, event_type, event_version, recorded_at, payload) VALUES ('stripe', {}, 'transition', 1, 0, x'80')",
                stripe.last().unwrap().seq + 1
            ),
            Finding::Unchained {
                position: events.last().unwrap().position + 1,
                stream: "stripe".into(),
                seq: stripe.last().unwrap().seq as u64 + 1,
            },
        ),
        (
            "forged, a made-up hash",
            format!(
                "INSERT INTO events (stream, seq, event_type, event_version, recorded_at, payload, hash) VALUES ('stripe', {}, 'transition', 1, 0, x'80', randomblob(32))",
                stripe.last().unwrap().seq + 1
            ),
            Finding::Rewritten {
                position: events.last().unwrap().position + 1,
                stream: "stripe".into(),
                seq: stripe.last().unwrap().seq as u64 + 1,
            },
        ),
    ];
    for (name, sql, want) in cases {
        let copy = dir.path().join(format!("{}.db", name.replace([' ', ','], "_")));
        std::fs::copy(&clean, &copy).unwrap();
        let mut conn = tamper::outsider(&copy).await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        let report = verified(&copy).await;
        assert!(report.findings.contains(&want), "{name}: {:?}", report.findings);
        assert!(!report.ok());
        let dropped = report.findings.iter().any(|f| matches!(f, Finding::Trigger { .. }));
        assert_eq!(
            dropped,
            name != "forged, no hash" && name != "forged, a made-up hash",
            "{name}: {:?}",
            report.findings
        );
        // The open put the dropped trigger back: the next tampering is refused again.
        let mut conn = tamper::outsider(&copy).await;
        let again = sqlx::query("UPDATE events SET payload = x'00' WHERE position = 1")
            .execute(&mut conn)
            .await;
        assert!(again.is_err(), "{name}: the trigger is back");
        conn.close().await.unwrap();
    }
}

#[tokio::test]
async fn every_event_names_the_node_that_wrote_it_and_the_chain_covers_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let stripe: Arc<str> = Arc::from("stripe");
    let mut b = Breaker::new(Policy::consecutive(3, 100)).unwrap();
    // The same stream, written by one node, then (after a restart under another name) another.
    for (node, from) in [("app-1", 0u64), ("app-2", 1_000)] {
        let options = JournalOptions {
            node: Arc::from(node),
            ..opts()
        };
        let journal = Journal::open(&path, options).await.unwrap();
        for t in 0..5 {
            drive(&journal, &stripe, &mut b, from + t * 10, Outcome::Failure);
        }
        journal.flush().await.unwrap();
        journal.close().await;
    }
    let journal = Journal::open(&path, opts()).await.unwrap();
    let events = journal.read_stream("stripe", 0, 1_000).await.unwrap();
    let nodes: Vec<&str> = events.iter().map(|e| e.node.as_str()).collect();
    let switch = nodes.iter().position(|n| *n == "app-2").expect("app-2 wrote some");
    assert!(switch > 0, "{nodes:?}");
    assert!(nodes[..switch].iter().all(|n| *n == "app-1"), "{nodes:?}");
    assert!(nodes[switch..].iter().all(|n| *n == "app-2"), "{nodes:?}");
    // Every read says it the same way: the paged reads (bulk) and the look-ups (sqlx).
    let latest = journal.latest("stripe", "transition").await.unwrap().unwrap();
    assert_eq!(latest.node, "app-2");
    assert_eq!(journal.read_after(0, 1_000).await.unwrap()[0].node, "app-1");
    // The audit names it.
    let query = breakerbox::replay::AuditQuery {
        stream: None,
        kinds: Vec::new(),
        since_ms: 0,
        until_ms: u64::MAX,
        after_position: 0,
        limit: 1_000,
    };
    let page = breakerbox::replay::audit(&journal, &query).await.unwrap();
    assert!(!page.entries.is_empty());
    assert!(
        page.entries.iter().all(|e| e.node == "app-1" || e.node == "app-2"),
        "{:?}",
        page.entries
    );
    let report = journal.verify().await.unwrap();
    assert!(report.ok(), "{:?}", report.findings);
    journal.close().await;
}

#[tokio::test]
async fn a_tailing_read_continues_from_its_cursor_and_waits_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let (path, events) = chained_log(dir.path(), "log.db").await;
    let journal = Journal::open(&path, opts()).await.unwrap();
    // Pages of 7 from the start give every event once, in log order.
    let mut cursor = journal.cursor_at(0).await.unwrap();
    let mut tailed = Vec::new();
    loop {
        let (page, next) = journal.tail(&cursor, 7).await.unwrap();
        if page.is_empty() {
            assert_eq!(next, cursor, "nothing new: the cursor stays");
            break;
        }
        assert!(next > cursor);
        cursor = next;
        tailed.extend(page);
    }
    assert_eq!(tailed, events);
    // A consumer that kept a position continues from the cursor at it.
    let middle = &events[events.len() / 2];
    let (rest, _) = journal
        .tail(&journal.cursor_at(middle.position).await.unwrap(), 10_000)
        .await
        .unwrap();
    assert_eq!(rest, events[events.len() / 2 + 1..]);
    // What is appended later is found from the cursor at the end.
    let stripe: Arc<str> = Arc::from("stripe");
    let mut b = Breaker::new(Policy::consecutive(3, 100)).unwrap();
    drive(&journal, &stripe, &mut b, 10_000, Outcome::Failure);
    journal.flush().await.unwrap();
    let (new, _) = journal.tail(&cursor, 10).await.unwrap();
    assert!(!new.is_empty() && new[0].position > events.last().unwrap().position);
    journal.close().await;
}

#[tokio::test]
async fn a_log_from_before_nodes_opens_verifies_and_goes_on() {
    // Golden: a demo's log as the tree before nodes wrote it (schema 6, every row chained, v1
    // links), never rewritten.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/logs/schema6.db"),
        &path,
    )
    .unwrap();
    let options = JournalOptions {
        node: Arc::from("app-9"),
        ..opts()
    };
    let journal = Journal::open(&path, options).await.unwrap();
    assert!(
        journal.restored_triggers().is_empty(),
        "{:?}",
        journal.restored_triggers()
    );
    let before = journal.read_after(0, 10_000).await.unwrap();
    assert_eq!(before.len(), 104);
    assert!(before.iter().all(|e| e.node.is_empty()), "no node was recorded then");
    let report = journal.verify().await.unwrap();
    assert!(report.ok(), "{:?}", report.findings);
    assert_eq!((report.events, report.unchained), (104, 0));
    // Its breakers come back, and what is appended now is the new node's, chained on top.
    let recovered = journal.recover("stripe", Policy::consecutive(5, 3_000)).await.unwrap();
    assert!(recovered.last_seq > 0);
    let stripe: Arc<str> = Arc::from("stripe");
    let mut b = recovered.breaker;
    let at = before.last().unwrap().recorded_at as u64 + 1_000;
    drive(&journal, &stripe, &mut b, at, Outcome::Failure);
    journal.flush().await.unwrap();
    let after = journal.read_after(before.last().unwrap().position, 100).await.unwrap();
    assert!(
        !after.is_empty() && after.iter().all(|e| e.node == "app-9"),
        "{after:?}"
    );
    let report = journal.verify().await.unwrap();
    assert!(report.ok(), "{:?}", report.findings);
    journal.close().await;
}

#[tokio::test]
async fn verify_follows_the_chain_across_compaction_and_through_a_log_from_before_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let journal = Journal::open(&path, opts()).await.unwrap();
    let stripe: Arc<str> = Arc::from("stripe");
    let mut b = Breaker::new(Policy::consecutive(1_000, 100)).unwrap();
    let base: u64 = 1_764_000_000_000 / 60_000 * 60_000;
    for i in 0..600u64 {
        let t = base + i * 1_000;
        drive(&journal, &stripe, &mut b, t, Outcome::Success);
        if i % 50 == 49 {
            journal.flush().await.unwrap();
        }
        if i == 400 {
            journal.submit(
                &stripe,
                Body::Snapshot {
                    at_ms: t,
                    breaker: Box::new(b.clone()),
                },
            );
        }
    }
    journal.flush().await.unwrap();
    // A copy to play a log from before the chain with, below.
    let old = dir.path().join("old.db");
    sqlx::query("VACUUM INTO ?")
        .bind(old.to_str().unwrap())
        .execute(journal.pool())
        .await
        .unwrap();
    let report = journal.compact(2 * 60_000, base + 10 * 60_000).await.unwrap();
    assert!(report.batches > 0, "{report:?}");
    let verified_now = journal.verify().await.unwrap();
    assert!(verified_now.ok(), "{:?}", verified_now.findings);
    assert!(verified_now.compacted > 0);
    journal.close().await;

    // A log written before the chain: no hashes (the triggers as the migrations made them).
    let mut conn = tamper::outsider(&old).await;
    sqlx::raw_sql(
        "DROP TRIGGER events_no_update; UPDATE events SET hash = NULL;
         CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only: UPDATE is not allowed');
END;",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    let journal = Journal::open(&old, opts()).await.unwrap();
    assert!(
        journal.restored_triggers().is_empty(),
        "{:?}",
        journal.restored_triggers()
    );
    let last_old = journal.last_position().await.unwrap();
    // It still opens, and what is appended now is chained on top.
    drive(&journal, &stripe, &mut b, base + 700_000, Outcome::Failure);
    journal.flush().await.unwrap();
    let report = journal.verify().await.unwrap();
    assert!(report.ok(), "{:?}", report.findings);
    assert_eq!(
        report.unchained_through,
        Some(last_old),
        "unchained up to position {last_old}"
    );
    assert!(report.heads[0].hash.is_some());
    journal.close().await;
}

#[tokio::test]
async fn the_logs_own_anchors_catch_a_stream_cut_short_before_them() {
    use breakerbox::journal::Finding;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let journal = Journal::open(&path, opts()).await.unwrap();
    let stripe: Arc<str> = Arc::from("stripe");
    let mut b = Breaker::new(Policy::consecutive(3, 100)).unwrap();
    for t in 0..20u64 {
        drive(&journal, &stripe, &mut b, t * 10, Outcome::Failure);
    }
    journal.flush().await.unwrap();
    assert!(journal.anchor().await.unwrap().is_some(), "heads moved: an anchor");
    assert_eq!(journal.anchor().await.unwrap(), None, "nothing moved since");
    let report = journal.verify().await.unwrap();
    assert!(report.ok(), "{:?}", report.findings);
    assert_eq!(report.anchors_checked, 1);
    let (last_seq,): (i64,) = sqlx::query_as("SELECT MAX(seq) FROM events WHERE stream = 'stripe'")
        .fetch_one(journal.pool())
        .await
        .unwrap();
    journal.close().await;
    // Stripe's newest event cut off, the trigger put back as it was: the chain alone cannot
    // tell, the anchor written after it can.
    tamper::cut_newest(&path, "stripe").await;
    let report = verified(&path).await;
    assert_eq!(
        report.findings,
        [Finding::Anchor {
            stream: "stripe".into(),
            seq: last_seq as u64,
            found: None
        }]
    );
}

/// A node's record of a fleet command names it; records from before fleet commands (the golden
/// `operator_command.v1.msgpack` above) read as naming none, and one naming none is written
/// byte for byte as before.
#[test]
fn an_operator_command_names_the_fleet_command_it_applies() {
    use breakerbox::breaker::{Command, State};
    use breakerbox::journal::{Operator, OperatorCommand};
    let mut command = OperatorCommand {
        at_ms: 1_764_000_000_000,
        command: Command::ForceOpen,
        operator: Operator {
            who: "carol@ops".into(),
            from: "fleet".into(),
            why: "INC-12".into(),
        },
        from_state: State::Closed,
        to_state: State::ForcedOpen,
        request_position: None,
        fleet_command: Some(12),
    };
    let bytes = rmp_serde::to_vec_named(&command).unwrap();
    let back: OperatorCommand = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(back, command);
    command.fleet_command = None;
    let plain = rmp_serde::to_vec_named(&command).unwrap();
    assert!(
        !plain.windows(13).any(|w| w == b"fleet_command"),
        "a field naming none is not written"
    );
}
