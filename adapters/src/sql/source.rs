//! The connection to the backend's database: a bounded pool of read-only sessions with a
//! statement time-out, MariaDB/MySQL or PostgreSQL, and the two calls the adapter makes (what
//! columns a table or query has, and rows for a statement with bound values).

use super::config::Config;
use crate::{AdapterError, ConfigError, Failure};
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::{Column, Executor, Row, SqlSafeStr, Statement, TypeInfo};
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    MySql,
    Postgres,
    /// An embedded database file (a small institution's export, the demo region's care home).
    Sqlite,
}

impl Dialect {
    /// `name` quoted as an identifier (the schema allows only `[A-Za-z0-9_]`, so no escaping
    /// is needed; the quotes keep reserved words and case as written).
    pub fn quote(self, name: &str) -> String {
        name.split('.')
            .map(|part| match self {
                Dialect::MySql => format!("`{part}`"),
                Dialect::Postgres | Dialect::Sqlite => format!("\"{part}\""),
            })
            .collect::<Vec<_>>()
            .join(".")
    }

    /// The n-th (1-based) bound value's placeholder.
    pub fn placeholder(self, n: usize) -> String {
        match self {
            Dialect::MySql | Dialect::Sqlite => "?".to_owned(),
            Dialect::Postgres => format!("${n}"),
        }
    }

    /// An expression as text (what every selected column is read as).
    pub fn as_text(self, expr: &str) -> String {
        match self {
            Dialect::MySql => format!("CAST({expr} AS CHAR)"),
            Dialect::Postgres | Dialect::Sqlite => format!("CAST({expr} AS TEXT)"),
        }
    }

    /// Case- and accent-sensitive equality (MariaDB's default collations ignore case).
    pub fn exact(self, expr: &str, placeholder: &str) -> String {
        match self {
            Dialect::MySql => format!("CAST({expr} AS BINARY) = CAST({placeholder} AS BINARY)"),
            Dialect::Postgres | Dialect::Sqlite => format!("{expr} = {placeholder}"),
        }
    }

    /// A bound `YYYY-MM-DD HH:MM:SS` as a timestamp.
    pub fn timestamp(self, placeholder: &str) -> String {
        match self {
            Dialect::MySql => format!("CAST({placeholder} AS DATETIME)"),
            Dialect::Postgres => format!("CAST({placeholder} AS TIMESTAMP)"),
            // SQLite keeps dates as text; datetime() writes them one way, so they compare.
            Dialect::Sqlite => format!("datetime({placeholder})"),
        }
    }

    /// The last second of the day that starts at `expr` (a DATE column's inclusive end).
    pub fn end_of_day(self, expr: &str) -> String {
        match self {
            Dialect::MySql => format!("({expr} + INTERVAL 86399 SECOND)"),
            Dialect::Postgres => format!("({expr} + INTERVAL '86399 seconds')"),
            Dialect::Sqlite => format!("datetime({expr}, '+86399 seconds')"),
        }
    }

    /// A date or date-time column as the statements compare it.
    pub fn moment(self, expr: &str) -> String {
        match self {
            Dialect::Sqlite => format!("datetime({expr})"),
            _ => expr.to_owned(),
        }
    }
}

/// What a column holds, as far as binding a search value to it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    Integer,
    Date,
    DateTime,
    Text,
}

impl ColumnKind {
    /// From the database's own type name (MariaDB `INT`, `BIGINT UNSIGNED`, `DATETIME`;
    /// PostgreSQL `INT4`, `TIMESTAMPTZ`, ...).
    pub fn of(type_name: &str) -> ColumnKind {
        let t = type_name.to_ascii_uppercase();
        if t == "DATE" {
            ColumnKind::Date
        } else if t.starts_with("DATETIME") || t.starts_with("TIMESTAMP") {
            ColumnKind::DateTime
        } else if t.contains("INT") && !t.contains("INTERVAL") || t == "SERIAL" {
            ColumnKind::Integer
        } else {
            ColumnKind::Text
        }
    }
}

/// A value bound to a placeholder.
#[derive(Debug, Clone, PartialEq)]
pub enum Bind {
    Int(i64),
    Text(String),
}

enum Pool {
    MySql(MySqlPool),
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

pub struct Source {
    name: String,
    pool: Pool,
    /// How long the gateway waits for a statement: the database's own limit and a margin.
    wait: Duration,
}

impl Source {
    /// A lazily connecting pool: the adapter builds even when the database is down (its
    /// health says so, and searches fail over to a partial result).
    pub fn new(config: &Config) -> Result<Source, ConfigError> {
        let error = |m: String| ConfigError {
            name: Some(config.name.clone()),
            message: m,
        };
        let password = match &config.password_env {
            Some(var) => Some(
                std::env::var(var)
                    .map_err(|_| error(format!("environment variable {var} is not set")))?,
            ),
            None => None,
        };
        let timeout_ms = config.statement_timeout_ms;
        let read_only = config.read_only;
        let acquire = Duration::from_millis(config.acquire_timeout_ms);
        let url = config
            .url
            .strip_prefix("mariadb://")
            .map(|rest| format!("mysql://{rest}"))
            .unwrap_or_else(|| config.url.clone());
        let pool = if url.starts_with("mysql://") {
            let mut options = MySqlConnectOptions::from_str(&url)
                .map_err(|e| error(format!("url: {e}")))?
                .charset("utf8mb4");
            if let Some(p) = &password {
                options = options.password(p);
            }
            Pool::MySql(
                MySqlPoolOptions::new()
                    .max_connections(config.pool_size)
                    .acquire_timeout(acquire)
                    .after_connect(move |conn, _| {
                        Box::pin(async move {
                            // MariaDB counts seconds (max_statement_time), MySQL milliseconds
                            // (max_execution_time, SELECTs only); one of the two exists.
                            let secs = timeout_ms as f64 / 1000.0;
                            if conn
                                .execute(sqlx::AssertSqlSafe(format!(
                                    "SET SESSION max_statement_time = {secs}"
                                )))
                                .await
                                .is_err()
                            {
                                conn.execute(sqlx::AssertSqlSafe(format!(
                                    "SET SESSION max_execution_time = {timeout_ms}"
                                )))
                                .await?;
                            }
                            if read_only {
                                conn.execute("SET SESSION TRANSACTION READ ONLY").await?;
                            }
                            Ok(())
                        })
                    })
                    .connect_lazy_with(options),
            )
        } else if url.starts_with("sqlite:") {
            // No statement time-out in SQLite: the gateway's own wait below bounds a call.
            let options = SqliteConnectOptions::from_str(&url)
                .map_err(|e| error(format!("url: {e}")))?
                .read_only(read_only)
                .busy_timeout(Duration::from_millis(timeout_ms));
            Pool::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(config.pool_size)
                    .acquire_timeout(acquire)
                    .connect_lazy_with(options),
            )
        } else {
            let mut options =
                PgConnectOptions::from_str(&url).map_err(|e| error(format!("url: {e}")))?;
            if let Some(p) = &password {
                options = options.password(p);
            }
            options = options.options([
                ("statement_timeout", timeout_ms.to_string()),
                (
                    "default_transaction_read_only",
                    if read_only { "on" } else { "off" }.to_owned(),
                ),
            ]);
            Pool::Postgres(
                PgPoolOptions::new()
                    .max_connections(config.pool_size)
                    .acquire_timeout(acquire)
                    .connect_lazy_with(options),
            )
        };
        Ok(Source {
            name: config.name.clone(),
            pool,
            wait: Duration::from_millis(timeout_ms) + Duration::from_millis(500),
        })
    }

    pub fn dialect(&self) -> Dialect {
        match self.pool {
            Pool::MySql(_) => Dialect::MySql,
            Pool::Postgres(_) => Dialect::Postgres,
            Pool::Sqlite(_) => Dialect::Sqlite,
        }
    }

    /// The columns (name and kind) a statement returns, from the database's own description
    /// of it (a prepare; nothing runs).
    pub async fn columns(&self, sql: &str) -> Result<Vec<(String, ColumnKind)>, AdapterError> {
        macro_rules! prepare {
            ($pool:expr) => {
                describe(
                    $pool
                        .prepare(sqlx::AssertSqlSafe(sql.to_owned()).into_sql_str())
                        .await?
                        .columns(),
                )
            };
        }
        let described = async {
            Ok::<_, sqlx::Error>(match &self.pool {
                Pool::MySql(p) => prepare!(p),
                Pool::Postgres(p) => prepare!(p),
                Pool::Sqlite(p) => prepare!(p),
            })
        };
        self.within(described).await
    }

    /// The rows of `sql` with `binds`, every column read as text (the statement casts them).
    pub async fn rows(
        &self,
        sql: &str,
        binds: &[Bind],
    ) -> Result<Vec<Vec<Option<String>>>, AdapterError> {
        // The statement is built by the mapping from quoted identifiers, fixed fragments and
        // placeholders only; every search value is bound. One body for the three drivers (their
        // query types differ, so a macro rather than a function).
        macro_rules! fetch {
            ($pool:expr) => {{
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()));
                for b in binds {
                    q = match b {
                        Bind::Int(i) => q.bind(*i),
                        Bind::Text(s) => q.bind(s.as_str()),
                    };
                }
                q.fetch_all($pool).await?.iter().map(texts).collect()
            }};
        }
        let fetched = async {
            Ok::<_, sqlx::Error>(match &self.pool {
                Pool::MySql(p) => fetch!(p),
                Pool::Postgres(p) => fetch!(p),
                Pool::Sqlite(p) => fetch!(p),
            })
        };
        self.within(fetched).await
    }

    /// `SELECT 1` within the time-out.
    pub async fn ping(&self) -> Result<(), AdapterError> {
        self.rows("SELECT 1", &[]).await.map(|_| ())
    }

    async fn within<T>(
        &self,
        call: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, AdapterError> {
        match tokio::time::timeout(self.wait, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.failure(e)),
            Err(_) => Err(AdapterError::new(
                &self.name,
                Failure::Timeout,
                format!("no answer within {:?}", self.wait),
            )),
        }
    }

    /// A database error as a backend failure: what the database said goes to the log only.
    fn failure(&self, e: sqlx::Error) -> AdapterError {
        let kind = match &e {
            sqlx::Error::Database(d) => {
                let code = d.code().unwrap_or_default();
                // MariaDB 1969 / MySQL 3024: the statement time-out; PostgreSQL 57014:
                // canceled (statement_timeout).
                if matches!(code.as_ref(), "57014" | "70100")
                    || d.message().contains("max_statement_time")
                    || d.message().contains("maximum statement execution time")
                {
                    Failure::Timeout
                } else {
                    Failure::Protocol
                }
            }
            sqlx::Error::PoolTimedOut => Failure::Unavailable,
            sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolClosed => {
                Failure::Unavailable
            }
            _ => Failure::Protocol,
        };
        AdapterError::new(&self.name, kind, e.to_string())
    }
}

fn describe<C: Column>(columns: &[C]) -> Vec<(String, ColumnKind)> {
    columns
        .iter()
        .map(|c| (c.name().to_owned(), ColumnKind::of(c.type_info().name())))
        .collect()
}

fn texts<R: Row>(row: &R) -> Vec<Option<String>>
where
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    usize: sqlx::ColumnIndex<R>,
{
    (0..row.len())
        .map(|i| row.try_get::<Option<String>, _>(i).ok().flatten())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_kinds_from_type_names() {
        for (t, k) in [
            ("INT", ColumnKind::Integer),
            ("BIGINT UNSIGNED", ColumnKind::Integer),
            ("INT4", ColumnKind::Integer),
            ("DATE", ColumnKind::Date),
            ("DATETIME", ColumnKind::DateTime),
            ("TIMESTAMPTZ", ColumnKind::DateTime),
            ("VARCHAR", ColumnKind::Text),
            ("DECIMAL", ColumnKind::Text),
            ("INTERVAL", ColumnKind::Text),
        ] {
            assert_eq!(ColumnKind::of(t), k, "{t}");
        }
    }

    #[test]
    fn identifiers_are_quoted_per_dialect() {
        assert_eq!(Dialect::MySql.quote("zorg.clienten"), "`zorg`.`clienten`");
        assert_eq!(Dialect::Postgres.quote("client_id"), "\"client_id\"");
        assert_eq!(Dialect::Postgres.placeholder(3), "$3");
        assert_eq!(Dialect::MySql.placeholder(3), "?");
    }
}
