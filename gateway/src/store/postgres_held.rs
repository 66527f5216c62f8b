//! The PostgreSQL connections for statements planned once (`Sql::generic`: point reads, one
//! patient's pages) and the audit append: held open by the store itself instead of an sqlx pool.
//!
//! Why not a pool: sqlx's pool pings a connection when it hands it out (`test_before_acquire`)
//! and always again when it takes it back, so every statement cost three round trips. A lab page
//! is one statement of about half a millisecond, and on 2 cores the two pings were CPU that the
//! next request waited for.
//!
//! What the pings were for is done here instead:
//! - a connection goes back only after what ran on it finished without error. A request that
//!   timed out (its future dropped mid-statement), or any error, closes it, so no later
//!   statement reads what an earlier one left on the wire;
//! - a statement that fails because its connection was lost (a PostgreSQL restart, a dropped
//!   socket) runs once more on a new connection, after every idle connection is closed (a
//!   restart kills them all). Reads are safe to repeat. So is the audit append: a retry after a
//!   commit that did land fails on the events' unique ids, and the request fails closed.

use crate::error::{Error, Result};
use futures::future::BoxFuture;
use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// A connection is closed once it is this old (sqlx's pool default), so that PostgreSQL frees
/// what a long-lived backend gathers and a moved server address is followed.
const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);

pub struct Held {
    options: PgConnectOptions,
    /// Idle connections, with when each was opened.
    idle: Mutex<Vec<(PgConnection, Instant)>>,
    /// At most this many connections open at once.
    slots: Semaphore,
    timeout: Duration,
    /// [`MAX_LIFETIME`] (shorter in tests).
    lifetime: Duration,
}

impl Held {
    /// Connections are opened when first needed, at most `size` at once; waiting for one or
    /// opening one gives up after `timeout`.
    pub fn new(options: PgConnectOptions, size: u32, timeout: Duration) -> Held {
        Held {
            options,
            idle: Mutex::new(Vec::new()),
            slots: Semaphore::new(size.max(1) as usize),
            timeout,
            lifetime: MAX_LIFETIME,
        }
    }

    /// Runs `work` on a connection, which it hands back with its result; once more on a new
    /// connection if the first was lost. The connection is moved into the work so that a
    /// request dropped mid-statement drops (closes) it too.
    pub async fn run<'a, T, F>(&self, work: F) -> Result<T>
    where
        F: Fn(PgConnection) -> BoxFuture<'a, (PgConnection, std::result::Result<T, sqlx::Error>)>,
    {
        let _slot = tokio::time::timeout(self.timeout, self.slots.acquire())
            .await
            .map_err(|_| Error::store("no database connection free in time", true))?
            .map_err(|_| Error::store("the store is closed", true))?;
        let (conn, opened) = match self.take_idle() {
            Some(c) => c,
            None => (self.connect().await?, Instant::now()),
        };
        match work(conn).await {
            (conn, Ok(v)) => {
                self.give_back(conn, opened);
                Ok(v)
            }
            (conn, Err(e)) if lost(&e) => {
                tracing::info!(error = %e, "a database connection was lost: reconnecting");
                drop(conn);
                // A restarted server closed every connection: drop the idle ones too.
                self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
                let opened = Instant::now();
                let fresh = self.connect().await?;
                let (fresh, r) = work(fresh).await;
                let v = r?;
                self.give_back(fresh, opened);
                Ok(v)
            }
            // Closed, not given back: an error may leave the connection mid-transaction.
            (_, Err(e)) => Err(e.into()),
        }
    }

    fn take_idle(&self) -> Option<(PgConnection, Instant)> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    fn give_back(&self, conn: PgConnection, opened: Instant) {
        if opened.elapsed() < self.lifetime {
            self.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((conn, opened));
        } else {
            // Said goodbye to, so the server logs no lost client.
            tokio::spawn(sqlx::Connection::close(conn));
        }
    }

    async fn connect(&self) -> Result<PgConnection> {
        match tokio::time::timeout(self.timeout, self.options.connect()).await {
            Ok(c) => Ok(c?),
            Err(_) => Err(Error::store("the database did not answer in time", true)),
        }
    }
}

/// Whether an error says the connection itself is gone (not the statement that failed).
fn lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| {
            // 08: connection exception; 57P01-57P03: the server is shutting down or restarting.
            c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_connection_is_told_from_a_failed_statement() {
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(lost(&io));
        assert!(lost(&sqlx::Error::Protocol("unexpected message".into())));
        assert!(!lost(&sqlx::Error::RowNotFound));
        assert!(!lost(&sqlx::Error::ColumnNotFound("x".into())));
    }

    fn url() -> String {
        std::env::var("GATEWAY_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
    }

    /// `SELECT $1` on a held connection, and the backend that ran it.
    async fn backend(held: &Held, n: i64) -> Result<(i64, i32)> {
        held.run(|mut c| {
            Box::pin(async move {
                let r = sqlx::query_as::<_, (i64, i32)>("SELECT $1::bigint, pg_backend_pid()")
                    .bind(n)
                    .fetch_one(&mut c)
                    .await;
                (c, r)
            })
        })
        .await
    }

    /// Against the real PostgreSQL: a connection killed between statements (as a server
    /// restart does) is replaced and the statement answered; a failed statement's connection is
    /// closed, not reused; a held connection is reused without a new one.
    #[tokio::test]
    async fn lost_and_failed_connections_are_replaced() {
        use sqlx::Connection;
        use std::str::FromStr;
        let name = format!("held-test-{}", uuid::Uuid::new_v4().simple());
        let options = PgConnectOptions::from_str(&url())
            .unwrap()
            .application_name(&name);
        let held = Held::new(options, 2, Duration::from_secs(5));
        let (v, first) = backend(&held, 1).await.unwrap();
        assert_eq!(v, 1);
        assert_eq!(backend(&held, 2).await.unwrap().1, first, "reused");

        let mut admin = PgConnection::connect(&url()).await.unwrap();
        let killed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = $1) t",
        )
        .bind(&name)
        .fetch_one(&mut admin)
        .await
        .unwrap();
        assert_eq!(killed, 1);
        let (v, second) = backend(&held, 3).await.unwrap();
        assert_eq!(v, 3, "answered on a new connection");
        assert_ne!(second, first);

        let failed = held
            .run(|mut c| {
                Box::pin(async move {
                    let r = sqlx::query("SELECT 1/0").execute(&mut c).await;
                    (c, r)
                })
            })
            .await;
        assert!(failed.is_err());
        let (_, third) = backend(&held, 4).await.unwrap();
        assert_ne!(
            third, second,
            "the failed statement's connection was closed"
        );
    }

    /// A connection past its lifetime is closed when it comes back, not reused.
    #[tokio::test]
    async fn old_connections_are_closed() {
        use std::str::FromStr;
        let options = PgConnectOptions::from_str(&url()).unwrap();
        let mut held = Held::new(options, 1, Duration::from_secs(5));
        held.lifetime = Duration::ZERO;
        let (_, first) = backend(&held, 1).await.unwrap();
        let (_, second) = backend(&held, 2).await.unwrap();
        assert_ne!(first, second);
        assert!(held.take_idle().is_none());
    }
}
