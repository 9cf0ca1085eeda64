//! Where audit events are stored: the backend choice, migrations, batched inserts, queries.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{PgPool, SqlitePool};
use uuid::Uuid;

use super::event::{AuditEvent, AuditKind};
use super::migrations;

/// How long a write or query waits for a pooled connection (and so for the database to
/// answer a connect) before it counts as failed.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest page `AuditLog::query` returns.
pub const MAX_QUERY_LIMIT: u32 = 10_000;

/// Where the audit log lives.
#[derive(Clone, PartialEq, Eq)]
pub enum AuditBackend {
    /// An SQLite file (created if missing, WAL mode). Not `:memory:`: the log must survive
    /// restarts.
    Sqlite(PathBuf),
    /// A PostgreSQL URL (`postgres://…` or `postgresql://…`).
    Postgres(String),
}

impl AuditBackend {
    /// `DATABASE_URL` → backend: unset or empty → SQLite at `default_sqlite_path`;
    /// `sqlite://path` (or `sqlite:path`) → that SQLite file; `postgres://` / `postgresql://` →
    /// PostgreSQL; anything else is an error.
    pub fn from_database_url(
        url: Option<&str>,
        default_sqlite_path: &Path,
    ) -> Result<Self, String> {
        let url = url.map(str::trim).filter(|u| !u.is_empty());
        let Some(url) = url else {
            return sqlite_path(default_sqlite_path.to_path_buf());
        };
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            PgConnectOptions::from_str(url)
                .map_err(|e| format!("DATABASE_URL is not a valid PostgreSQL URL: {e}"))?;
            return Ok(AuditBackend::Postgres(url.to_string()));
        }
        if let Some(rest) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            let (path, params) = rest.split_once('?').unwrap_or((rest, ""));
            if params.split('&').any(|p| p == "mode=memory") {
                return Err("DATABASE_URL: an in-memory SQLite database cannot keep an audit log across restarts".into());
            }
            return sqlite_path(PathBuf::from(path));
        }
        let scheme = url.split_once(':').map_or(url, |(s, _)| s);
        Err(format!(
            "DATABASE_URL scheme {scheme:?} is not supported for the audit log (use postgres://, postgresql:// or sqlite://)"
        ))
    }

    /// For logs: the PostgreSQL URL without its password.
    pub fn describe(&self) -> String {
        match self {
            AuditBackend::Sqlite(path) => format!("sqlite:{}", path.display()),
            AuditBackend::Postgres(url) => redact_password(url),
        }
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<unparsable url>".into();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

impl fmt::Debug for AuditBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

fn sqlite_path(path: PathBuf) -> Result<AuditBackend, String> {
    let s = path.to_string_lossy();
    if s.is_empty() || s == ":memory:" || s.starts_with(":memory:") {
        return Err(
            "the audit log needs an SQLite file; an in-memory database would lose it on restart"
                .into(),
        );
    }
    Ok(AuditBackend::Sqlite(path))
}

/// A connection pool to either backend. Cheap to clone.
#[derive(Clone)]
pub(crate) enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Outcome of [`Db::insert`] when the database accepted the batch.
pub(crate) struct Inserted {
    /// Indexes of events the database refused as data (kept out so they cannot block the
    /// queue forever); everything else is stored.
    pub rejected: Vec<(usize, String)>,
}

impl Db {
    /// A pool that connects on first use, so this succeeds while the database is down.
    pub fn connect_lazy(backend: &AuditBackend) -> anyhow::Result<Db> {
        match backend {
            AuditBackend::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("cannot create {}", dir.display()))?;
                }
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .busy_timeout(Duration::from_secs(5));
                Ok(Db::Sqlite(
                    SqlitePoolOptions::new()
                        .max_connections(2)
                        .acquire_timeout(ACQUIRE_TIMEOUT)
                        .connect_lazy_with(options),
                ))
            }
            AuditBackend::Postgres(url) => {
                let options = PgConnectOptions::from_str(url)
                    .context("DATABASE_URL is not a valid PostgreSQL URL")?
                    .application_name("sfu-audit");
                Ok(Db::Postgres(
                    PgPoolOptions::new()
                        .max_connections(2)
                        .acquire_timeout(ACQUIRE_TIMEOUT)
                        .connect_lazy_with(options),
                ))
            }
        }
    }

    /// Apply pending migrations (idempotent).
    pub async fn migrate(&self) -> anyhow::Result<()> {
        match self {
            Db::Sqlite(pool) => migrations::migrator(migrations::SQLITE)
                .run(pool)
                .await
                .context("SQLite audit migrations failed"),
            Db::Postgres(pool) => migrations::migrator(migrations::POSTGRES)
                .run(pool)
                .await
                .context("PostgreSQL audit migrations failed"),
        }
    }

    pub async fn close(&self) {
        match self {
            Db::Sqlite(pool) => pool.close().await,
            Db::Postgres(pool) => pool.close().await,
        }
    }

    /// Store `events` as one batch (one statement or one transaction). Already stored ids are
    /// skipped (`ON CONFLICT DO NOTHING`), so a batch can be retried safely. If the database
    /// refuses the batch's *data* (not the connection), the events are retried one by one and
    /// those still refused are reported in [`Inserted::rejected`].
    pub async fn insert(&self, events: &[AuditEvent]) -> Result<Inserted, sqlx::Error> {
        match self.insert_batch(events).await {
            Ok(()) => Ok(Inserted {
                rejected: Vec::new(),
            }),
            Err(e) if self.is_data_error(&e) => {
                let mut rejected = Vec::new();
                for (i, event) in events.iter().enumerate() {
                    match self.insert_batch(std::slice::from_ref(event)).await {
                        Ok(()) => {}
                        Err(e) if self.is_data_error(&e) => rejected.push((i, e.to_string())),
                        Err(e) => return Err(e),
                    }
                }
                Ok(Inserted { rejected })
            }
            Err(e) => Err(e),
        }
    }

    async fn insert_batch(&self, events: &[AuditEvent]) -> Result<(), sqlx::Error> {
        if events.is_empty() {
            return Ok(());
        }
        match self {
            Db::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                for e in events {
                    sqlx::query(
                        "INSERT INTO audit_events \
                         (id, at_ms, kind, room_id, participant_id, user_id, detail) \
                         VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                    )
                    .bind(e.id.to_string())
                    .bind(e.at_unix_ms)
                    .bind(e.kind.as_str())
                    .bind(e.room_id.as_deref())
                    .bind(e.participant_id.as_deref())
                    .bind(e.user_id.as_deref())
                    .bind(e.detail.to_string())
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await
            }
            Db::Postgres(pool) => {
                // One statement for the whole batch, whatever its size: arrays, unnested in
                // order (so `seq` follows the order events were recorded).
                let ids: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
                let at: Vec<i64> = events.iter().map(|e| e.at_unix_ms).collect();
                let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
                let rooms: Vec<Option<&str>> =
                    events.iter().map(|e| e.room_id.as_deref()).collect();
                let participants: Vec<Option<&str>> =
                    events.iter().map(|e| e.participant_id.as_deref()).collect();
                let users: Vec<Option<&str>> =
                    events.iter().map(|e| e.user_id.as_deref()).collect();
                let details: Vec<String> = events.iter().map(|e| e.detail.to_string()).collect();
                sqlx::query(
                    "INSERT INTO audit_events \
                     (id, at_ms, kind, room_id, participant_id, user_id, detail) \
                     SELECT t.id::uuid, t.at_ms, t.kind, t.room_id, t.participant_id, t.user_id, \
                            t.detail::jsonb \
                     FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], \
                                 $6::text[], $7::text[]) \
                          WITH ORDINALITY AS t(id, at_ms, kind, room_id, participant_id, \
                                               user_id, detail, ord) \
                     ORDER BY t.ord \
                     ON CONFLICT (id) DO NOTHING",
                )
                .bind(ids)
                .bind(at)
                .bind(kinds)
                .bind(rooms)
                .bind(participants)
                .bind(users)
                .bind(details)
                .execute(pool)
                .await
                .map(|_| ())
            }
        }
    }

    /// Errors caused by a row's content, which retrying cannot fix.
    fn is_data_error(&self, e: &sqlx::Error) -> bool {
        match e {
            sqlx::Error::Encode(_) => true,
            sqlx::Error::Database(db) => {
                let Some(code) = db.code() else { return false };
                match self {
                    // SQLSTATE classes 22 (data exception), 23 (integrity constraint),
                    // 54 (program limit exceeded, e.g. a row too large).
                    Db::Postgres(_) => ["22", "23", "54"].iter().any(|c| code.starts_with(c)),
                    // Primary result codes (low byte of the extended code): TOOBIG,
                    // CONSTRAINT, MISMATCH, RANGE.
                    Db::Sqlite(_) => code
                        .parse::<i64>()
                        .is_ok_and(|c| matches!(c & 0xff, 18 | 19 | 20 | 25)),
                }
            }
            _ => false,
        }
    }

    /// Newest first (ties in the same millisecond: last written first).
    pub async fn query(
        &self,
        room_id: Option<&str>,
        limit: u32,
    ) -> anyhow::Result<Vec<AuditEvent>> {
        let limit = i64::from(limit.min(MAX_QUERY_LIMIT));
        let rows = match self {
            Db::Sqlite(pool) => {
                let columns = "SELECT id, at_ms, kind, room_id, participant_id, user_id, detail \
                               FROM audit_events";
                match room_id {
                    Some(room) => {
                        sqlx::query(sqlx::AssertSqlSafe(format!(
                            "{columns} WHERE room_id = ? ORDER BY at_ms DESC, seq DESC LIMIT ?"
                        )))
                        .bind(room)
                        .bind(limit)
                        .fetch_all(pool)
                        .await?
                    }
                    None => {
                        sqlx::query(sqlx::AssertSqlSafe(format!(
                            "{columns} ORDER BY at_ms DESC, seq DESC LIMIT ?"
                        )))
                        .bind(limit)
                        .fetch_all(pool)
                        .await?
                    }
                }
                .iter()
                .map(raw_row)
                .collect::<Result<Vec<_>, sqlx::Error>>()?
            }
            Db::Postgres(pool) => {
                let columns = "SELECT id::text, at_ms, kind, room_id, participant_id, user_id, \
                               detail::text FROM audit_events";
                match room_id {
                    Some(room) => {
                        sqlx::query(sqlx::AssertSqlSafe(format!(
                            "{columns} WHERE room_id = $1 ORDER BY at_ms DESC, seq DESC LIMIT $2"
                        )))
                        .bind(room)
                        .bind(limit)
                        .fetch_all(pool)
                        .await?
                    }
                    None => {
                        sqlx::query(sqlx::AssertSqlSafe(format!(
                            "{columns} ORDER BY at_ms DESC, seq DESC LIMIT $1"
                        )))
                        .bind(limit)
                        .fetch_all(pool)
                        .await?
                    }
                }
                .iter()
                .map(raw_row)
                .collect::<Result<Vec<_>, sqlx::Error>>()?
            }
        };
        Ok(rows.into_iter().filter_map(RawRow::into_event).collect())
    }
}

/// Read the query's seven columns, in order, from a row of either database.
fn raw_row<R: sqlx::Row>(r: &R) -> Result<RawRow, sqlx::Error>
where
    usize: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(RawRow {
        id: r.try_get(0)?,
        at_ms: r.try_get(1)?,
        kind: r.try_get(2)?,
        room_id: r.try_get(3)?,
        participant_id: r.try_get(4)?,
        user_id: r.try_get(5)?,
        detail: r.try_get(6)?,
    })
}

struct RawRow {
    id: String,
    at_ms: i64,
    kind: String,
    room_id: Option<String>,
    participant_id: Option<String>,
    user_id: Option<String>,
    detail: String,
}

impl RawRow {
    /// Rows this version cannot read (a kind added by a newer release) are left out with a
    /// warning rather than failing the whole page.
    fn into_event(self) -> Option<AuditEvent> {
        let id = match Uuid::parse_str(&self.id) {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(id = %self.id, error = %e, "audit row with an invalid id skipped");
                return None;
            }
        };
        let kind = match self.kind.parse::<AuditKind>() {
            Ok(kind) => kind,
            Err(e) => {
                tracing::warn!(%id, error = %e, "audit row skipped");
                return None;
            }
        };
        let detail =
            serde_json::from_str(&self.detail).unwrap_or(serde_json::Value::String(self.detail));
        Some(AuditEvent {
            id,
            at_unix_ms: self.at_ms,
            kind,
            room_id: self.room_id,
            participant_id: self.participant_id,
            user_id: self.user_id,
            detail,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_from_database_url() {
        let default = Path::new("./data/audit.db");
        assert_eq!(
            AuditBackend::from_database_url(None, default),
            Ok(AuditBackend::Sqlite(default.into()))
        );
        assert_eq!(
            AuditBackend::from_database_url(Some("  "), default),
            Ok(AuditBackend::Sqlite(default.into()))
        );
        assert_eq!(
            AuditBackend::from_database_url(Some("sqlite:///var/lib/sfu/a.db?mode=rwc"), default),
            Ok(AuditBackend::Sqlite("/var/lib/sfu/a.db".into()))
        );
        assert_eq!(
            AuditBackend::from_database_url(Some("sqlite:rel.db"), default),
            Ok(AuditBackend::Sqlite("rel.db".into()))
        );
        for url in [
            "postgres://u:p@db:5432/sfu",
            "postgresql://db/sfu?sslmode=require",
        ] {
            assert_eq!(
                AuditBackend::from_database_url(Some(url), default),
                Ok(AuditBackend::Postgres(url.into()))
            );
        }
        for bad in [
            "sqlite::memory:",
            "sqlite://:memory:",
            "sqlite://a.db?mode=memory",
            "sqlite://",
            "mysql://db/sfu",
            "nonsense",
        ] {
            assert!(
                AuditBackend::from_database_url(Some(bad), default).is_err(),
                "{bad}"
            );
        }
        assert!(AuditBackend::from_database_url(None, Path::new(":memory:")).is_err());
    }

    #[test]
    fn describe_hides_the_password() {
        let b = AuditBackend::Postgres("postgres://sfu:hunter2@db:5432/sfu".into());
        let d = format!("{b:?}");
        assert!(!d.contains("hunter2"), "{d}");
        assert_eq!(d, "postgres://sfu:***@db:5432/sfu");
        assert_eq!(
            redact_password("postgresql://db/x?password=a"),
            "postgresql://db/x?password=a"
        );
    }
}
