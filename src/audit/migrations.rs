//! The SQL files under `migrations/`, compiled into the binary so `sfu migrate` needs no
//! checkout. Register every new file here (a test below checks the directory against the lists).

use std::borrow::Cow;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AssertSqlSafe, SqlSafeStr};

/// (version, description, SQL), in version order.
type Embedded = (i64, &'static str, &'static str);

pub(crate) const POSTGRES: &[Embedded] = &[(
    1,
    "audit events",
    include_str!("../../migrations/postgres/0001_audit_events.sql"),
)];

pub(crate) const SQLITE: &[Embedded] = &[(
    1,
    "audit events",
    include_str!("../../migrations/sqlite/0001_audit_events.sql"),
)];

/// A migrator equivalent to `Migrator::new("migrations/<backend>")` (same versions,
/// descriptions and checksums), built from the embedded sources.
pub(crate) fn migrator(embedded: &[Embedded]) -> Migrator {
    Migrator::with_migrations(
        embedded
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    AssertSqlSafe(sql).into_sql_str(),
                    sql.starts_with("-- no-transaction"),
                )
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `.sql` file in `migrations/<dir>` is registered, with the same version, the same
    /// description sqlx derives from the file name, and the same text.
    fn check(dir: &str, embedded: &[Embedded]) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(dir);
        let mut files: Vec<(i64, String, String)> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "sql"))
            .map(|p| {
                let name = p.file_stem().unwrap().to_string_lossy().to_string();
                let (version, description) = name.split_once('_').unwrap();
                (
                    version.parse().unwrap(),
                    description.replace('_', " "),
                    std::fs::read_to_string(&p).unwrap(),
                )
            })
            .collect();
        files.sort();
        let embedded: Vec<(i64, String, String)> = embedded
            .iter()
            .map(|&(v, d, s)| (v, d.to_string(), s.to_string()))
            .collect();
        assert_eq!(
            files, embedded,
            "migrations/{dir} and src/audit/migrations.rs disagree"
        );
    }

    /// Same versions, descriptions, checksums and flags as sqlx's own directory resolution
    /// (what `Migrator::new("migrations/…")` or sqlx-cli would apply).
    #[test]
    fn embedded_migrator_equals_sqlx_resolution() {
        for (dir, embedded) in [("postgres", POSTGRES), ("sqlite", SQLITE)] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(dir);
            let mut resolved: Vec<Migration> = sqlx::migrate::resolve_blocking(&path)
                .unwrap()
                .into_iter()
                .map(|(m, _)| m)
                .collect();
            resolved.sort();
            let ours = migrator(embedded);
            assert_eq!(ours.migrations.len(), resolved.len(), "{dir}");
            for (a, b) in ours.migrations.iter().zip(&resolved) {
                assert_eq!(
                    (
                        a.version,
                        &a.description,
                        &a.checksum,
                        a.no_tx,
                        a.migration_type
                    ),
                    (
                        b.version,
                        &b.description,
                        &b.checksum,
                        b.no_tx,
                        b.migration_type
                    ),
                    "{dir}"
                );
            }
        }
    }

    #[test]
    fn embedded_migrations_match_the_directory() {
        check("postgres", POSTGRES);
        check("sqlite", SQLITE);
        let versions = |e: &[Embedded]| e.iter().map(|m| m.0).collect::<Vec<_>>();
        assert_eq!(versions(POSTGRES), versions(SQLITE));
    }
}
