//! Opening the database: the backend named by the URL, the pool, the embedded migrations (on
//! Postgres under sqlx's advisory lock, so nodes starting at once end with one schema), and the
//! checks that refuse a database this binary must not touch.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::{AnyPool, Connection, Executor};

use crate::config::{redact, StoreConfig};

static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");

/// Why a store could not be opened. Each message names the database (password hidden) and what
/// to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The URL names no backend this store has.
    #[error(
        "unsupported database URL {url}: use sqlite://<path> or postgres://user:password@host/db"
    )]
    UnsupportedUrl {
        /// The URL, password hidden.
        url: String,
    },
    /// The database could not be reached or opened.
    #[error("cannot open the database {url}: {cause}")]
    Unreachable {
        /// The URL, password hidden.
        url: String,
        /// What the driver said.
        cause: String,
    },
    /// The SQLite file is not a database, or is corrupt.
    #[error("{path} is not a usable SQLite database ({cause}); move it away or point --database-url elsewhere")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What SQLite said.
        cause: String,
    },
    /// The SQLite file holds another application's tables.
    #[error("{path} is a SQLite database of another application (tables: {tables}); refusing to add this store's tables to it")]
    Foreign {
        /// The file.
        path: PathBuf,
        /// Some of its tables.
        tables: String,
    },
    /// Another process (or another store of this process) has the SQLite file open: an SQLite
    /// file belongs to one process, whose start ends the runs an earlier one left.
    #[error("{path} is in use by another process (its lock file {lock} is held); stop it or use another --data-dir")]
    InUse {
        /// The database file.
        path: PathBuf,
        /// The lock file beside it.
        lock: PathBuf,
    },
    /// The database was migrated by a newer binary.
    #[error("the database {url} has schema version {version}, newer than this binary knows (up to {known}); upgrade the binary")]
    NewerSchema {
        /// The URL, password hidden.
        url: String,
        /// The database's newest applied migration.
        version: i64,
        /// This binary's newest migration.
        known: i64,
    },
    /// A migration failed.
    #[error("cannot migrate the database {url}: {cause}")]
    Migration {
        /// The URL, password hidden.
        url: String,
        /// What went wrong.
        cause: String,
    },
}

/// The database behind a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }

    /// The database's clock, in microseconds since the Unix epoch (node heartbeats are compared
    /// on one clock, whatever the nodes' clocks say).
    pub(crate) fn now_us(self) -> &'static str {
        match self {
            Self::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)",
            Self::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS BIGINT)",
        }
    }
}

/// An open, migrated database.
pub(crate) struct Opened {
    pub(crate) pool: AnyPool,
    pub(crate) backend: Backend,
    /// The SQLite file's lock, held while the store lives (one process per file).
    pub(crate) lock: Option<std::fs::File>,
}

/// Takes `<file>.lock` beside the SQLite file, exclusively (an advisory lock the OS releases
/// when the process dies, `kill -9` included).
fn lock_sqlite(path: &std::path::Path, url: &str) -> Result<std::fs::File, OpenError> {
    let mut lock = path.as_os_str().to_owned();
    lock.push(".lock");
    let lock = PathBuf::from(lock);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .map_err(|e| OpenError::Unreachable {
            url: redact(url),
            cause: format!("cannot open the lock file {}: {e}", lock.display()),
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(OpenError::InUse {
            path: path.to_owned(),
            lock,
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(OpenError::Unreachable {
            url: redact(url),
            cause: format!("cannot lock {}: {e}", lock.display()),
        }),
    }
}

/// The SQLite file a `sqlite:` URL names (`None` for an in-memory database).
fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

/// Opens and migrates the database of `config`.
pub(crate) async fn open(config: &StoreConfig) -> Result<Opened, OpenError> {
    sqlx::any::install_default_drivers();
    let url = config.url.as_str();
    let shown = redact(url);
    let backend = if url.starts_with("sqlite:") {
        Backend::Sqlite
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Backend::Postgres
    } else {
        return Err(OpenError::UnsupportedUrl { url: shown });
    };
    let unreachable = |e: sqlx::Error| OpenError::Unreachable {
        url: shown.clone(),
        cause: cause_of(&e),
    };
    let mut lock = None;
    let pool = match backend {
        Backend::Sqlite => {
            let path = sqlite_path(url);
            if let Some(parent) = path.as_ref().and_then(|p| p.parent()) {
                if !parent.as_os_str().is_empty() {
                    std::fs::create_dir_all(parent).map_err(|e| OpenError::Unreachable {
                        url: shown.clone(),
                        cause: format!("cannot create {}: {e}", parent.display()),
                    })?;
                }
            }
            if let Some(path) = &path {
                lock = Some(lock_sqlite(path, url)?);
            }
            // `mode=rwc`: created on first start. Options sqlx reads from the URL are kept.
            let url = if url.contains("mode=") {
                url.to_owned()
            } else if url.contains('?') {
                format!("{url}&mode=rwc")
            } else {
                format!("{url}?mode=rwc")
            };
            // One connection first, with the SQLite driver itself: a file that is not a
            // database fails here with SQLite's own words (a pool would only time out).
            let options =
                sqlx::sqlite::SqliteConnectOptions::from_str(&url).map_err(unreachable)?;
            let probe = async {
                let mut conn = sqlx::SqliteConnection::connect_with(&options).await?;
                conn.execute("PRAGMA journal_mode = WAL").await?;
                conn.close().await
            };
            if let Err(e) = probe.await {
                return Err(match path {
                    Some(path) if is_not_a_database(&e) => OpenError::Corrupt {
                        path,
                        cause: cause_of(&e),
                    },
                    _ => unreachable(e),
                });
            }
            // An in-memory database is one per connection: keep one connection.
            let connections = if path.is_some() {
                config.max_connections
            } else {
                1
            };
            let pool = AnyPoolOptions::new()
                .max_connections(connections)
                .acquire_timeout(Duration::from_secs(5))
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        // WAL: readers never wait for the writer; NORMAL: a committed
                        // transaction survives the process (not a power cut) without an fsync
                        // per commit.
                        conn.execute("PRAGMA busy_timeout = 5000").await?;
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                        Ok(())
                    })
                })
                .connect(&url)
                .await;
            match pool {
                Ok(pool) => pool,
                Err(e) => {
                    return Err(match path {
                        Some(path) if is_not_a_database(&e) => OpenError::Corrupt {
                            path,
                            cause: cause_of(&e),
                        },
                        _ => unreachable(e),
                    })
                }
            }
        }
        Backend::Postgres => AnyPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(unreachable)?,
    };
    if backend == Backend::Sqlite {
        check_sqlite_is_ours(&pool, url).await?;
    }
    let migrator = match backend {
        Backend::Sqlite => &SQLITE,
        Backend::Postgres => &POSTGRES,
    };
    migrator.run(&pool).await.map_err(|e| match e {
        MigrateError::VersionMissing(version) => OpenError::NewerSchema {
            url: shown.clone(),
            version,
            known: migrator.iter().map(|m| m.version).max().unwrap_or(0),
        },
        MigrateError::Execute(ref inner) if is_not_a_database(inner) => match sqlite_path(url) {
            Some(path) => OpenError::Corrupt {
                path,
                cause: cause_of(inner),
            },
            None => OpenError::Migration {
                url: shown.clone(),
                cause: e.to_string(),
            },
        },
        other => OpenError::Migration {
            url: shown.clone(),
            cause: other.to_string(),
        },
    })?;
    Ok(Opened {
        pool,
        backend,
        lock,
    })
}

/// Refuses a SQLite file that holds tables but none of this store's migrations (another
/// application's database), and one SQLite cannot read.
async fn check_sqlite_is_ours(pool: &AnyPool, url: &str) -> Result<(), OpenError> {
    let path = sqlite_path(url).unwrap_or_default();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )
    .fetch_all(pool)
    .await
    .map_err(|e| OpenError::Corrupt {
        path: path.clone(),
        cause: cause_of(&e),
    })?;
    if !tables.is_empty() && !tables.iter().any(|t| t == "_sqlx_migrations") {
        let shown: Vec<&str> = tables.iter().take(5).map(String::as_str).collect();
        return Err(OpenError::Foreign {
            path,
            tables: shown.join(", "),
        });
    }
    Ok(())
}

fn is_not_a_database(e: &sqlx::Error) -> bool {
    let text = e.to_string();
    text.contains("not a database") || text.contains("malformed") || text.contains("code: 26")
}

/// One line for a driver error (a database error's message, or the error itself).
pub(crate) fn cause_of(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => db.message().to_owned(),
        other => other.to_string(),
    }
}

/// Whether `e` means the database could not be reached (retry), as opposed to a statement it
/// refused (do not retry the same statement forever).
pub(crate) fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            match code.parse::<u32>() {
                // SQLite reports extended codes: the primary code is the low byte. BUSY,
                // LOCKED, READONLY, IOERR, FULL, CANTOPEN (a disk or lock fault, not the
                // statement).
                Ok(sqlite) => matches!(sqlite & 0xff, 5 | 6 | 8 | 10 | 13 | 14),
                // Postgres SQLSTATE: connection exceptions (08...), serialization failure,
                // deadlock, insufficient resources, shutdown, read-only after a failover,
                // statement timeout.
                Err(_) => {
                    code.starts_with("08")
                        || code.starts_with("53")
                        || code.starts_with("57P")
                        || matches!(code.as_str(), "40001" | "40P01" | "25006" | "57014")
                }
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// A database call that did not answer within `limit`, as a (transient) I/O error.
pub(crate) fn timed_out(limit: Duration) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("the database did not answer within {limit:?}"),
    ))
}

/// Runs `call` within `limit`; a call that does not answer in time is a transient error.
pub(crate) async fn within<T>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    tokio::time::timeout(limit, call)
        .await
        .unwrap_or_else(|_| Err(timed_out(limit)))
}

#[cfg(test)]
mod tests {
    use super::sqlite_path;

    #[test]
    fn sqlite_urls_name_their_file() {
        assert_eq!(
            sqlite_path("sqlite:///tmp/x/g.db?mode=rwc").unwrap(),
            std::path::Path::new("/tmp/x/g.db")
        );
        assert_eq!(
            sqlite_path("sqlite://data/g.db").unwrap(),
            std::path::Path::new("data/g.db")
        );
        assert!(sqlite_path("sqlite::memory:").is_none());
        assert!(sqlite_path("postgres://h/db").is_none());
    }
}
