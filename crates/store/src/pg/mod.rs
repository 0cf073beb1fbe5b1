//! The store on PostgreSQL: the same records and the same guarantees as
//! the embedded store, in a database several masters share (DESIGN.md,
//! "beyond one master").
//!
//! - Every write that stores events first locks the `next_event` row and
//!   takes its ids from it: writes of events are serialised across
//!   masters, so ids are given in commit order and the reactor and live
//!   tails, which read by id, never pass over a commit that came late.
//! - A minion event is stored once whichever master got it: the
//!   contiguous seq per minion is read under that lock, as the embedded
//!   store does, and a unique index on `(minion, seq)` stands behind it.
//! - The schema is versioned; missing versions are applied at start, under
//!   an advisory lock, so masters starting together apply each once.
//!
//! Calls block (the client is `postgres`, which runs its own small
//! runtime per connection): the master makes them on blocking threads, as
//! with the embedded store.

mod ops;

pub(crate) use ops::{insert_events, set_meta, write_job};

use std::sync::Mutex;
use std::time::Duration;

use r2d2_postgres::PostgresConnectionManager;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::StoreError;

/// The schema's versions, in order: (version, SQL).
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("schema_1.sql")),
    (2, include_str!("schema_2.sql")),
    (3, include_str!("schema_3.sql")),
    (4, include_str!("schema_4.sql")),
    (5, include_str!("schema_5.sql")),
];

/// An arbitrary constant: the advisory lock masters take to migrate.
const MIGRATE_LOCK: i64 = 0x7465_6e64_0001;

/// Connections each master keeps: ingest, the reactor, the control
/// requests and retention each use one at a time.
const POOL_SIZE: u32 = 8;

/// How long a call waits for a connection (the database down) before it
/// fails: the master then says the store fails and tries again.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// A `postgres://` URL or a `key=value` connection string.
    pub url: String,
    /// The password, when not in the URL (read from a file or the
    /// environment by the caller).
    pub password: Option<String>,
    /// This master's name among those sharing the database: its own
    /// events are numbered in its own space.
    pub owner: String,
    /// Certificates (PEM) to trust for the server's TLS, beside Mozilla's
    /// roots: a private CA.
    pub ca_file: Option<std::path::PathBuf>,
}

type Pool = r2d2::Pool<PostgresConnectionManager<MakeRustlsConnect>>;

/// TLS for a URL that asks for it (`sslmode=require`, or `prefer`: tried,
/// and the clear when the server has none), the server's certificate
/// checked against Mozilla's roots (unlike libpq's `require`, which
/// checks nothing).
/// With `ca_file`, its certificates are trusted too (a private CA).
fn tls(ca_file: Option<&std::path::Path>) -> Result<MakeRustlsConnect, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots =
        rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let shown = path.display();
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("[store] ca_file {shown}: {e}"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("[store] ca_file {shown}: {e}"))?;
        if certs.is_empty() {
            return Err(format!("[store] ca_file {shown} holds no certificate"));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("[store] ca_file {shown}: {e}"))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// The store in PostgreSQL; safe to share between threads.
pub struct PgStore {
    pool: Pool,
    /// The URL without its password, for messages.
    pub(crate) shown: String,
    pub(crate) owner: String,
    /// Job ids left in the block this master took: (next, end).
    job_ids: Mutex<(u64, u64)>,
    /// The connection holding (or trying for) the reactor's lease, an
    /// advisory lock held for the session: when this master dies its
    /// connection closes and the database gives the lock to the next. The
    /// reactor commits on this connection, so a master that lost the lock
    /// (its connection cut) cannot commit a step.
    pub(crate) lease: Mutex<Option<Lease>>,
    /// Whether the reactor ever asked for the lease: from then on its
    /// steps go through the lease's connection only.
    pub(crate) lease_taken: std::sync::atomic::AtomicBool,
    /// The connection listening for events stored by any master.
    pub(crate) listener: Mutex<Option<postgres::Client>>,
    config: postgres::Config,
    tls: MakeRustlsConnect,
}

/// The reactor lease's connection, and whether it holds the lock.
pub(crate) struct Lease {
    pub(crate) client: postgres::Client,
    pub(crate) held: bool,
}

/// The advisory lock that is the reactor's lease.
pub(crate) const REACTOR_LOCK: i64 = 0x7465_6e64_0002;

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("url", &self.shown).finish()
    }
}

/// `url` with any password replaced, for logs and errors.
pub fn redact(url: &str) -> String {
    // postgres://user:secret@host/db
    if let Some(rest) = url.split_once("://")
        && let Some((creds, host)) = rest.1.split_once('@')
        && let Some((user, _)) = creds.split_once(':')
    {
        return format!("{}://{user}:***@{host}", rest.0);
    }
    // key=value form: drop password=...
    url.split_whitespace()
        .map(|kv| {
            if kv.starts_with("password=") {
                "password=***"
            } else {
                kv
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl PgStore {
    /// Connects, and applies the schema versions the database lacks.
    pub fn open(opts: &PgOptions) -> Result<Self, StoreError> {
        let shown = redact(&opts.url);
        let mut config: postgres::Config =
            opts.url
                .parse()
                .map_err(|e: postgres::Error| StoreError::PgUrl {
                    url: shown.clone(),
                    error: e.to_string(),
                })?;
        if let Some(p) = &opts.password {
            config.password(p);
        }
        // TLS only when the URL asks for it (the client's own default,
        // `prefer`, would try it and fail on a server's self-signed
        // certificate). When asked, the certificate is always checked.
        if !opts.url.contains("sslmode") {
            config.ssl_mode(postgres::config::SslMode::Disable);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("tend-master");
        let tls = tls(opts.ca_file.as_deref()).map_err(|error| StoreError::PgConnect {
            url: shown.clone(),
            error,
        })?;
        // One connection first, for its whole error (the pool's says only
        // that it timed out, and the first cause).
        if let Err(e) = config.connect(tls.clone()) {
            let mut error = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                error = format!("{error}: {s}");
                source = s.source();
            }
            return Err(StoreError::PgConnect { url: shown, error });
        }
        let manager = PostgresConnectionManager::new(config.clone(), tls.clone());
        let pool = r2d2::Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(1))
            .connection_timeout(CONNECT_TIMEOUT)
            // The pool's own log of failed connects would repeat what the
            // master says once.
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build(manager)
            .map_err(|e| StoreError::PgConnect {
                url: shown.clone(),
                error: e.to_string(),
            })?;
        let store = Self {
            pool,
            shown,
            owner: opts.owner.clone(),
            job_ids: Mutex::new((0, 0)),
            lease: Mutex::new(None),
            lease_taken: std::sync::atomic::AtomicBool::new(false),
            listener: Mutex::new(None),
            config,
            tls,
        };
        store.migrate()?;
        Ok(store)
    }

    /// The database, as shown in messages (no password).
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// A connection from the pool.
    pub(crate) fn conn(
        &self,
    ) -> Result<r2d2::PooledConnection<PostgresConnectionManager<MakeRustlsConnect>>, StoreError>
    {
        self.pool.get().map_err(|e| StoreError::PgConnect {
            url: self.shown.clone(),
            error: e.to_string(),
        })
    }

    /// A connection of its own (not the pool's): for the lease and the
    /// listener, which hold theirs for as long as they work.
    pub(crate) fn dedicated(&self) -> Result<postgres::Client, StoreError> {
        self.config
            .connect(self.tls.clone())
            .map_err(|e| StoreError::PgConnect {
                url: self.shown.clone(),
                error: e.to_string(),
            })
    }

    /// Applies the schema versions the database lacks, each in its own
    /// transaction, under an advisory lock.
    fn migrate(&self) -> Result<(), StoreError> {
        let mut c = self.conn()?;
        c.execute("SELECT pg_advisory_lock($1)", &[&MIGRATE_LOCK])?;
        let applied = (|| -> Result<(), StoreError> {
            c.batch_execute(
                "CREATE TABLE IF NOT EXISTS tend_schema (
                    version    integer PRIMARY KEY,
                    applied_us bigint  NOT NULL
                )",
            )?;
            let have: i32 = c
                .query_one("SELECT coalesce(max(version), 0) FROM tend_schema", &[])?
                .get(0);
            let newest = MIGRATIONS.last().map_or(0, |m| m.0);
            if have > newest {
                return Err(StoreError::PgSchema {
                    url: self.shown.clone(),
                    have,
                    newest,
                });
            }
            for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > have) {
                let mut tx = c.transaction()?;
                tx.batch_execute(sql)?;
                tx.execute(
                    "INSERT INTO tend_schema (version, applied_us) VALUES ($1, $2)",
                    &[version, &tend_proto::now_us()],
                )?;
                tx.commit()?;
                tracing::info!(version, "store schema migrated");
            }
            Ok(())
        })();
        let unlocked = c.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATE_LOCK]);
        applied?;
        unlocked?;
        Ok(())
    }
}
