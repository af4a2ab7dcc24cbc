//! The event log: append-only, group commit, recovery, faults, and a SIGKILL crash test.

use breakerbox::breaker::{Breaker, Command, Decision, Event, Outcome, Policy, State};
use breakerbox::journal::{
    Body, Decoded, Durability, GAP, Journal, JournalOptions, StoreError, StoredEvent, connect_options, decode,
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
async fn a_corrupt_file_is_refused_never_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.db");
    {
        let journal = Journal::open(&good, opts()).await.unwrap();
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
    }
    let bytes = std::fs::read(&good).unwrap();
    assert!(
        bytes.len() > 64 * 1024,
        "a file of several pages ({} bytes)",
        bytes.len()
    );
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated to half", bytes[..bytes.len() / 2].to_vec()),
        ("zeroed header", {
            let mut b = bytes.clone();
            b[..100].fill(0);
            b
        }),
    ];
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
            Err(StoreError::Corrupt { .. }) => {}
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
