//! Audit noise (limit trips, failed logins) against real databases: coalesced into one row plus
//! a summary per key and window (SQLite file, local PostgreSQL), and a flood of it during an
//! outage never evicts the events that record what users did (issue 12, item 4).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::pg_ctl;
use serde_json::json;
use sfu::audit::{self, AuditBackend, AuditConfig, AuditEvent, AuditKind, AuditLog};
use sqlx::Connection;

fn pg_url() -> String {
    std::env::var("AUDIT_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sfu-noise-{name}-{}", uuid::Uuid::new_v4()));
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

async fn wait_for(what: &str, within: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn trip(room: &str, client: &str, i: u64) -> AuditEvent {
    AuditEvent::new(AuditKind::LimitTripped)
        .room(room)
        .detail(json!({ "limit": "messages", "client": client, "i": i }))
}

fn with_key<'a>(rows: &'a [AuditEvent], client: &str) -> Vec<&'a AuditEvent> {
    let mut rows: Vec<&AuditEvent> = rows
        .iter()
        .filter(|e| e.detail["client"] == client)
        .collect();
    rows.sort_by_key(|e| (e.at_unix_ms, e.detail.get("count").is_some()));
    rows
}

/// The window ends by itself (no flush): the summary appears, then a new window opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_limit_trips_are_one_row_and_a_summary_per_window() {
    let dir = temp_dir("sqlite");
    let backend = AuditBackend::Sqlite(dir.join("audit.db"));
    audit::migrate(&backend).await.unwrap();
    let log = AuditLog::start(
        backend,
        AuditConfig {
            coalesce_window: Duration::from_millis(600),
            ..config(&dir)
        },
    )
    .await
    .unwrap();
    let room = "noise-room";
    for i in 0..500 {
        log.record_coalesced(trip(room, "10.0.0.1", i), "messages:10.0.0.1");
    }
    for i in 0..3 {
        log.record_coalesced(trip(room, "10.0.0.2", i), "messages:10.0.0.2");
    }
    log.record_coalesced(trip(room, "10.0.0.3", 0), "messages:10.0.0.3");
    log.record(AuditEvent::new(AuditKind::ParticipantJoined).room(room));
    assert_eq!(log.stats().coalesced, 499 + 2);

    // Summaries are written when the window ends, without a flush.
    wait_for("the summaries", Duration::from_secs(10), async || {
        let rows = log.query(Some(room), 100).await.unwrap_or_default();
        rows.iter()
            .filter(|e| e.detail.get("count").is_some())
            .count()
            == 2
    })
    .await;
    let rows = log.query(Some(room), 100).await.unwrap();
    assert_eq!(rows.len(), 3 + 2 + 1, "{rows:#?}");
    let one = with_key(&rows, "10.0.0.1");
    assert_eq!(one.len(), 2);
    assert_eq!(one[0].detail["i"], 0, "the first trip, recorded at once");
    assert!(one[0].detail.get("count").is_none());
    assert_eq!(one[1].detail["count"], 500);
    assert_eq!(one[1].detail["windowSecs"], 0.6);
    assert_eq!(one[1].detail["firstAtMs"], one[0].at_unix_ms);
    assert_eq!(one[1].kind, AuditKind::LimitTripped);
    assert_eq!(with_key(&rows, "10.0.0.2")[1].detail["count"], 3);
    assert_eq!(
        with_key(&rows, "10.0.0.3").len(),
        1,
        "one event: no summary"
    );

    // A new window: recorded at once again; flush ends the open window.
    log.record_coalesced(trip(room, "10.0.0.1", 900), "messages:10.0.0.1");
    log.record_coalesced(trip(room, "10.0.0.1", 901), "messages:10.0.0.1");
    assert!(log.flush(Duration::from_secs(10)).await);
    let rows = log.query(Some(room), 100).await.unwrap();
    let one = with_key(&rows, "10.0.0.1");
    assert_eq!(one.len(), 4, "{one:#?}");
    assert_eq!(one[2].detail["i"], 900);
    assert_eq!(one[3].detail["count"], 2);
    let stats = log.stats();
    assert_eq!((stats.dropped, stats.written), (0, 8), "{stats:?}");
    drop(log);
    let _ = std::fs::remove_dir_all(dir);
}

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

/// Failed logins from one connection in PostgreSQL: 1 row + 1 summary, and an event whose
/// window is still open when the last handle goes away is summarised on the way out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_failed_logins_are_coalesced() {
    if !pg_reachable().await {
        tokio::task::spawn_blocking(|| pg_ctl("start"))
            .await
            .unwrap();
    }
    let backend = AuditBackend::Postgres(pg_url());
    audit::migrate(&backend).await.unwrap();
    let dir = temp_dir("pg");
    let run = uuid::Uuid::new_v4().simple().to_string();
    let room = format!("noise-{run}");
    let log = AuditLog::start(backend.clone(), config(&dir))
        .await
        .unwrap();
    let failed = |i: u64, client: &str| {
        AuditEvent::new(AuditKind::AuthFailed)
            .room(&room)
            .detail(json!({ "code": "INVALID_TOKEN", "client": client, "i": i }))
    };
    for i in 0..1000 {
        log.record_coalesced(failed(i, "c1"), "auth:c1");
    }
    assert!(log.flush(Duration::from_secs(10)).await);
    let rows = log.query(Some(&room), 100).await.unwrap();
    let c1 = with_key(&rows, "c1");
    assert_eq!(rows.len(), 2, "{rows:#?}");
    assert_eq!(c1[1].detail["count"], 1000);
    assert_eq!(c1[1].detail["windowSecs"], 10);
    assert_eq!(c1[1].detail["code"], "INVALID_TOKEN");

    for i in 0..5 {
        log.record_coalesced(failed(i, "c2"), "auth:c2");
    }
    drop(log);
    let reader = AuditLog::start(backend, config(&temp_dir("pg-read")))
        .await
        .unwrap();
    wait_for(
        "the summary written at drop",
        Duration::from_secs(10),
        async || {
            let rows = reader.query(Some(&room), 100).await.unwrap_or_default();
            with_key(&rows, "c2").len() == 2
        },
    )
    .await;
    let rows = reader.query(Some(&room), 100).await.unwrap();
    assert_eq!(with_key(&rows, "c2")[1].detail["count"], 5);
    let _ = std::fs::remove_dir_all(dir);
}

/// A PostgreSQL URL on a port nothing listens on: the database is down for the whole test.
fn unreachable_backend() -> AuditBackend {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    AuditBackend::Postgres(format!("postgres://postgres@127.0.0.1:{port}/test"))
}

fn spill_kinds(path: &Path) -> (usize, usize, u64) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let (mut real, mut noise, mut noise_bytes) = (0, 0, 0);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let event: AuditEvent = serde_json::from_str(line).unwrap();
        if event.kind.is_noise() {
            noise += 1;
            noise_bytes += line.len() as u64 + 1;
        } else {
            real += 1;
        }
    }
    (real, noise, noise_bytes)
}

/// The reproduction of issue 12 item 4, scaled down: with the database down, an uncoalesced
/// flood of limit trips fills the spill file, and every join and leave recorded in between
/// must still reach the database when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noise_flood_during_an_outage_never_evicts_real_events() {
    let dir = temp_dir("flood");
    let spill_path = dir.join("spill.jsonl");
    let max = 60_000u64;
    let cfg = AuditConfig {
        queue_capacity: 50,
        batch_size: 10,
        spill_max_bytes: max,
        ..config(&dir)
    };
    let log = AuditLog::start(unreachable_backend(), cfg.clone())
        .await
        .unwrap();
    let mut real = Vec::new();
    for i in 0..6000u64 {
        log.record(trip("flood", "10.9.9.9", i));
        if i % 60 == 0 {
            let kind = if i % 120 == 0 {
                AuditKind::ParticipantJoined
            } else {
                AuditKind::ParticipantLeft
            };
            let e = AuditEvent::new(kind)
                .room("flood")
                .participant(format!("p{i}"));
            real.push(e.clone());
            log.record(e);
        }
        if i % 500 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    drop(log);
    wait_for(
        "every real event in the spill file",
        Duration::from_secs(20),
        async || spill_kinds(&spill_path).0 == real.len(),
    )
    .await;
    let (real_lines, noise_lines, noise_bytes) = spill_kinds(&spill_path);
    assert_eq!(real_lines, 100);
    assert!(noise_lines > 0, "noise is kept while it has room");
    assert!(
        noise_bytes <= max / 4,
        "noise over its share: {noise_bytes}"
    );
    assert!(std::fs::metadata(&spill_path).unwrap().len() <= max);

    // The database is back (an SQLite file here): every real event is written.
    let backend = AuditBackend::Sqlite(dir.join("audit.db"));
    audit::migrate(&backend).await.unwrap();
    let log = AuditLog::start(backend, cfg).await.unwrap();
    assert!(log.flush(Duration::from_secs(20)).await);
    let rows = log.query(Some("flood"), 1000).await.unwrap();
    let stored: Vec<&AuditEvent> = rows.iter().filter(|e| !e.kind.is_noise()).collect();
    assert_eq!(stored.len(), real.len());
    for e in &real {
        assert!(stored.iter().any(|s| s.id == e.id), "lost {e:?}");
    }
    drop(log);
    let _ = std::fs::remove_dir_all(dir);
}
