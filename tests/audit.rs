//! Audit log against real databases: an SQLite file, the local PostgreSQL (an outage is made by
//! stopping it), and a PostgreSQL URL nobody listens on.
//!
//! PostgreSQL: `AUDIT_TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`,
//! controlled with `pg_ctlcluster` (the outage test stops and restarts the local cluster).

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{pg_ctl, RestartPostgres};
use serde_json::json;
use sfu::audit::{self, AuditBackend, AuditConfig, AuditEvent, AuditKind, AuditLog, AuditStats};
use sqlx::{Connection, Row};

/// PostgreSQL tests take this: the outage test stops the server under everyone else.
static PG_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn pg_url() -> String {
    std::env::var("AUDIT_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// `RUST_LOG=sfu=debug cargo test --test audit -- --nocapture` shows what the writer does.
fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn temp_dir(name: &str) -> PathBuf {
    init_tracing();
    let dir = std::env::temp_dir().join(format!("sfu-audit-{name}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config(dir: &Path) -> AuditConfig {
    AuditConfig {
        flush_interval: Duration::from_millis(50),
        retry_interval: Duration::from_millis(300),
        ..AuditConfig::with_spill_path(dir.join("spill.jsonl"))
    }
}

/// A short session in `room`, plus events that belong elsewhere (no room, another room).
fn script(room: &str, other_room: &str) -> Vec<AuditEvent> {
    use AuditKind::*;
    vec![
        AuditEvent::new(AuthSucceeded)
            .user("u1")
            .detail(json!({"alg": "HS256"})),
        AuditEvent::new(RoomCreated).room(room).user("u1"),
        AuditEvent::new(ParticipantJoined)
            .room(room)
            .participant("p1")
            .user("u1"),
        AuditEvent::new(ProducerCreated)
            .room(room)
            .participant("p1")
            .detail(json!({"producerId": "prod-1", "kind": "audio"})),
        AuditEvent::new(AuthFailed).detail(json!({"reason": "expired", "ip": "10.0.0.9"})),
        AuditEvent::new(ParticipantJoined)
            .room(room)
            .participant("p2")
            .user("u2"),
        AuditEvent::new(ConsumerCreated)
            .room(room)
            .participant("p2")
            .detail(json!({"consumerId": "cons-1", "producerId": "prod-1"})),
        AuditEvent::new(RoomCreated).room(other_room).user("u3"),
        AuditEvent::new(LimitTripped)
            .room(room)
            .participant("p2")
            .detail(json!({"limit": "messages_per_second", "nested": {"a": [1, 2, null]}})),
        AuditEvent::new(AdminAction)
            .room(room)
            .user("u1")
            .detail(json!({"action": "kick", "target": "p2", "reason": "spam\u{0}"})),
        AuditEvent::new(ConsumerClosed)
            .room(room)
            .participant("p2")
            .detail(json!({"consumerId": "cons-1"})),
        AuditEvent::new(ParticipantLeft)
            .room(room)
            .participant("p2")
            .user("u2")
            .detail(json!({"duration_ms": 1234})),
        AuditEvent::new(ProducerClosed)
            .room(room)
            .participant("p1")
            .detail(json!({"producerId": "prod-1"})),
        AuditEvent::new(ParticipantLeft)
            .room(room)
            .participant("p1")
            .user("u1")
            .detail(json!({"duration_ms": 98765})),
        AuditEvent::new(RoomClosed)
            .room(room)
            .detail(json!({"reason": "empty"})),
    ]
}

/// What reading `room` back must give: its events, newest (last recorded) first, as stored
/// (NUL characters replaced).
fn expected(script: &[AuditEvent], room: &str) -> Vec<AuditEvent> {
    script
        .iter()
        .filter(|e| e.room_id.as_deref() == Some(room))
        .rev()
        .cloned()
        .map(|mut e| {
            if e.kind == AuditKind::AdminAction {
                e.detail["reason"] = json!("spam\u{FFFD}");
            }
            e
        })
        .collect()
}

fn assert_same_events(actual: &[AuditEvent], expected: &[AuditEvent]) {
    let kinds = |v: &[AuditEvent]| v.iter().map(|e| e.kind).collect::<Vec<_>>();
    assert_eq!(kinds(actual), kinds(expected), "kinds, newest first");
    assert_eq!(actual, expected);
}

async fn sqlite_journal_mode(path: &Path) -> String {
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let row = sqlx::query("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    row.get::<String, _>(0)
}

#[tokio::test]
async fn sqlite_file_keeps_the_log_across_restarts() {
    let dir = temp_dir("sqlite");
    let db_path = dir.join("nested/audit.db");
    let backend = AuditBackend::from_database_url(None, &db_path).unwrap();
    assert_eq!(backend, AuditBackend::Sqlite(db_path.clone()));
    audit::migrate(&backend).await.unwrap();
    audit::migrate(&backend).await.unwrap(); // idempotent
    assert!(db_path.exists(), "created if missing");
    assert_eq!(sqlite_journal_mode(&db_path).await, "wal");

    let room = "room-a";
    let events = script(room, "room-b");
    let log = AuditLog::start(backend.clone(), config(&dir))
        .await
        .unwrap();
    for e in &events {
        log.record(e.clone());
    }
    assert!(log.flush(Duration::from_secs(10)).await, "flush");
    let stats = log.stats();
    assert_eq!(
        stats,
        AuditStats {
            written: events.len() as u64,
            ..Default::default()
        }
    );

    let want = expected(&events, room);
    assert_same_events(&log.query(Some(room), 100).await.unwrap(), &want);
    assert_same_events(&log.query(Some(room), 3).await.unwrap(), &want[..3]);
    let other = log.query(Some("room-b"), 100).await.unwrap();
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].kind, AuditKind::RoomCreated);
    assert_eq!(log.query(None, 1000).await.unwrap().len(), events.len());
    assert!(log.query(Some("nobody"), 100).await.unwrap().is_empty());

    // The read API body.
    let response = audit::http::list(
        &log,
        audit::http::AuditQuery {
            room: Some(room.into()),
            limit: Some(2),
        },
    )
    .await;
    assert_eq!(response.status(), 200);
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["events"].as_array().unwrap().len(), 2);
    assert_eq!(body["events"][0]["kind"], "room_closed");
    assert_eq!(body["events"][0]["id"], json!(want[0].id.to_string()));
    assert_eq!(body["events"][1]["detail"]["duration_ms"], 98765);
    drop(log);

    // A new process on the same file: everything is still there.
    let log = AuditLog::start(backend.clone(), config(&dir))
        .await
        .unwrap();
    assert_same_events(&log.query(Some(room), 100).await.unwrap(), &want);
    let late = AuditEvent::new(AuditKind::AdminAction)
        .room(room)
        .detail(json!({"action": "close"}));
    log.record(late.clone());
    assert!(log.flush(Duration::from_secs(10)).await);
    let rows = log.query(Some(room), 100).await.unwrap();
    assert_eq!(rows.len(), want.len() + 1);
    assert_eq!(rows[0], late);
    drop(log);

    // migrate_on_start on a fresh file, without `migrate` first.
    let fresh = AuditBackend::Sqlite(dir.join("fresh.db"));
    let log = AuditLog::start(
        fresh,
        AuditConfig {
            migrate_on_start: true,
            ..config(&dir.join("fresh"))
        },
    )
    .await
    .unwrap();
    for e in &events {
        log.record(e.clone());
    }
    assert!(log.flush(Duration::from_secs(10)).await);
    assert_same_events(&log.query(Some(room), 100).await.unwrap(), &want);
    drop(log);
    let _ = std::fs::remove_dir_all(dir);
}

// --- PostgreSQL -------------------------------------------------------------------------

async fn pg_reachable() -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_secs(2),
            sqlx::PgConnection::connect(&pg_url())
        )
        .await,
        Ok(Ok(_))
    )
}

/// Start the local cluster if a previous run left it stopped, and wait until it answers.
async fn pg_up() {
    if pg_reachable().await {
        return;
    }
    tokio::task::spawn_blocking(|| pg_ctl("start"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pg_reachable().await {
        assert!(Instant::now() < deadline, "PostgreSQL did not come up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn pg_count(room: &str) -> (i64, i64) {
    let mut conn = sqlx::PgConnection::connect(&pg_url()).await.unwrap();
    let row =
        sqlx::query("SELECT count(*), count(DISTINCT id) FROM audit_events WHERE room_id = $1")
            .bind(room)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stores_the_scripted_session() {
    let _serial = PG_LOCK.lock().await;
    pg_up().await;
    let backend = AuditBackend::from_database_url(Some(&pg_url()), Path::new("unused.db")).unwrap();
    assert!(matches!(backend, AuditBackend::Postgres(_)));
    audit::migrate(&backend).await.unwrap();
    audit::migrate(&backend).await.unwrap(); // idempotent

    let run = uuid::Uuid::new_v4().simple().to_string();
    let (room, other) = (format!("room-{run}"), format!("other-{run}"));
    let events = script(&room, &other);
    let dir = temp_dir("pg");
    let log = AuditLog::start(backend, config(&dir)).await.unwrap();
    for e in &events {
        log.record(e.clone());
    }
    assert!(log.flush(Duration::from_secs(10)).await, "flush");
    let stats = log.stats();
    assert_eq!(stats.written, events.len() as u64, "{stats:?}");
    assert_eq!((stats.dropped, stats.spilled, stats.queued), (0, 0, 0));

    let want = expected(&events, &room);
    assert_same_events(&log.query(Some(&room), 100).await.unwrap(), &want);
    let other_rows = log.query(Some(&other), 100).await.unwrap();
    assert_eq!(other_rows.len(), 1);
    assert_eq!(other_rows[0].user_id.as_deref(), Some("u3"));
    // Recording the same events again (a replay) stores nothing twice.
    for e in &events {
        log.record(e.clone());
    }
    assert!(log.flush(Duration::from_secs(10)).await);
    assert_eq!(
        pg_count(&room).await,
        (want.len() as i64, want.len() as i64)
    );
    assert_same_events(&log.query(Some(&room), 100).await.unwrap(), &want);
    drop(log);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_loses_nothing_and_duplicates_nothing() {
    let _serial = PG_LOCK.lock().await;
    pg_up().await;
    let backend = AuditBackend::Postgres(pg_url());
    audit::migrate(&backend).await.unwrap();
    let room = format!("outage-{}", uuid::Uuid::new_v4().simple());
    let dir = temp_dir("outage");
    let spill_path = dir.join("spill.jsonl");
    let log = AuditLog::start(
        backend,
        AuditConfig {
            queue_capacity: 5,
            batch_size: 4,
            ..config(&dir)
        },
    )
    .await
    .unwrap();
    let mut ids = Vec::new();
    let mut record = |n: usize, phase: &str| {
        for i in 0..n {
            let e = AuditEvent::new(AuditKind::AdminAction)
                .room(&room)
                .detail(json!({"phase": phase, "i": i}));
            ids.push(e.id);
            let started = Instant::now();
            log.record(e);
            assert!(
                started.elapsed() < Duration::from_millis(20),
                "record() must not wait ({:?})",
                started.elapsed()
            );
        }
    };

    record(10, "before");
    assert!(log.flush(Duration::from_secs(10)).await);
    assert_eq!(log.stats().written, 10);

    let restart = RestartPostgres;
    tokio::task::spawn_blocking(|| pg_ctl("stop"))
        .await
        .unwrap();
    record(15, "down-1");
    tokio::time::sleep(Duration::from_millis(800)).await;
    record(15, "down-2");
    // A write attempt gives up once the pool cannot connect within its acquire timeout (3 s).
    wait_for("a failed write", || log.stats().write_failures > 0).await;
    record(10, "down-3"); // while waiting to retry
    wait_for("a failed retry", || log.stats().write_failures > 1).await;
    let during = log.stats();
    assert_eq!(during.written, 10, "{during:?}");
    assert!(during.write_failures > 0, "{during:?}");
    assert!(during.spilled > 0, "a queue of 5 must spill: {during:?}");
    assert!(during.queued <= 5 + 4, "memory stays bounded: {during:?}");
    assert_eq!(during.dropped, 0, "{during:?}");
    assert!(std::fs::metadata(&spill_path).unwrap().len() > 0);

    drop(restart); // starts PostgreSQL
    record(10, "after");
    assert!(
        log.flush(Duration::from_secs(20)).await,
        "flush after the outage: {:?}",
        log.stats()
    );
    let stats = log.stats();
    assert_eq!(stats.written, ids.len() as u64, "{stats:?}");
    assert_eq!(stats.spill_replayed, stats.spilled, "{stats:?}");
    assert_eq!(
        (stats.dropped, stats.queued, stats.spill_backlog),
        (0, 0, 0),
        "{stats:?}"
    );
    assert_eq!(
        std::fs::metadata(&spill_path).unwrap().len(),
        0,
        "truncated"
    );

    assert_eq!(pg_count(&room).await, (ids.len() as i64, ids.len() as i64));
    let rows = log.query(Some(&room), 1000).await.unwrap();
    let stored: HashSet<_> = rows.iter().map(|e| e.id).collect();
    assert_eq!(rows.len(), ids.len());
    assert_eq!(stored, ids.iter().copied().collect::<HashSet<_>>());
    drop(log);
    let _ = std::fs::remove_dir_all(dir);
}

// --- No database at all -----------------------------------------------------------------

/// A PostgreSQL URL on a port nothing listens on.
fn unreachable_backend() -> AuditBackend {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    AuditBackend::Postgres(format!("postgres://postgres@127.0.0.1:{port}/test"))
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_spill_file_drops_and_counts() {
    let dir = temp_dir("overflow");
    let spill_path = dir.join("spill.jsonl");
    let max = 1500;
    let log = AuditLog::start(
        unreachable_backend(),
        AuditConfig {
            queue_capacity: 2,
            batch_size: 2,
            spill_max_bytes: max,
            ..config(&dir)
        },
    )
    .await
    .unwrap();
    let n = 40u64;
    for i in 0..n {
        let started = Instant::now();
        log.record(
            AuditEvent::new(AuditKind::LimitTripped)
                .room("r")
                .detail(json!({"i": i})),
        );
        assert!(started.elapsed() < Duration::from_millis(20));
    }
    wait_for("events to leave memory", || {
        let s = log.stats();
        s.dropped > 0 && s.spilled + s.dropped + s.queued == n && s.queued <= 2 + 2
    })
    .await;
    let stats = log.stats();
    assert_eq!(stats.written, 0);
    assert!(stats.spilled > 0, "{stats:?}");
    assert!(stats.dropped >= n - stats.spilled - 4, "{stats:?}");
    assert!(std::fs::metadata(&spill_path).unwrap().len() <= max);
    assert_eq!(stats.spill_backlog, stats.spilled);
    assert!(
        !log.flush(Duration::from_millis(300)).await,
        "nothing can be written"
    );
    assert!(log.query(None, 10).await.is_err(), "no database to read");
    drop(log);
    let _ = std::fs::remove_dir_all(dir);
}

/// Events spilled while the database was down are written by the next process (here into an
/// SQLite file: the spill file does not care which database it came from).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spill_file_is_replayed_at_the_next_start() {
    let dir = temp_dir("replay");
    let spill_path = dir.join("spill.jsonl");
    let cfg = AuditConfig {
        queue_capacity: 3,
        batch_size: 2,
        ..config(&dir)
    };
    let log = AuditLog::start(unreachable_backend(), cfg.clone())
        .await
        .unwrap();
    let events: Vec<AuditEvent> = (0..12)
        .map(|i| {
            AuditEvent::new(AuditKind::ParticipantLeft)
                .room("replayed")
                .participant(format!("p{i}"))
                .detail(json!({"duration_ms": i * 1000}))
        })
        .collect();
    for e in &events {
        log.record(e.clone());
    }
    // Dropping the last handle while the database is down puts the rest in the file.
    drop(log);
    let lines = || {
        std::fs::read_to_string(&spill_path)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    wait_for("everything in the spill file", || lines() == events.len()).await;

    let backend = AuditBackend::Sqlite(dir.join("audit.db"));
    audit::migrate(&backend).await.unwrap();
    let log = AuditLog::start(backend, cfg).await.unwrap();
    assert!(log.flush(Duration::from_secs(10)).await);
    let stats = log.stats();
    assert_eq!(stats.written, events.len() as u64, "{stats:?}");
    assert_eq!(stats.spill_replayed, events.len() as u64, "{stats:?}");
    assert_eq!(lines(), 0, "truncated after the replay");
    let want: Vec<AuditEvent> = events.iter().rev().cloned().collect();
    assert_eq!(log.query(Some("replayed"), 100).await.unwrap(), want);
    drop(log);
    let _ = std::fs::remove_dir_all(dir);
}

/// Many events at once from plain threads (record() is synchronous): batched, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_from_threads_is_written_in_batches() {
    let dir = temp_dir("burst");
    let backend = AuditBackend::Sqlite(dir.join("audit.db"));
    audit::migrate(&backend).await.unwrap();
    let log = AuditLog::start(backend, config(&dir)).await.unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..1500 {
                    log.record(
                        AuditEvent::new(AuditKind::ConsumerCreated)
                            .room(format!("burst-{t}"))
                            .detail(json!({"i": i})),
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(log.flush(Duration::from_secs(20)).await);
    let stats = log.stats();
    assert_eq!(stats.written, 6000, "{stats:?}");
    assert_eq!(stats.dropped, 0, "{stats:?}");
    for t in 0..4 {
        let rows = log.query(Some(&format!("burst-{t}")), 5000).await.unwrap();
        assert_eq!(rows.len(), 1500);
        // Newest first: each thread's own events come back in reverse order.
        let order: Vec<i64> = rows
            .iter()
            .map(|e| e.detail["i"].as_i64().unwrap())
            .collect();
        assert_eq!(order, (0..1500).rev().collect::<Vec<_>>());
    }
    drop(log);
    let _ = std::fs::remove_dir_all(dir);
}
