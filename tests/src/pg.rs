//! A real PostgreSQL for the tests: a fresh database per test.
//!
//! The server is the one on 127.0.0.1:5432 when one answers (trust auth,
//! as on the CI machines; `TEND_TEST_PG` names another, as a connection
//! string to its maintenance database). Where none answers, a throwaway
//! server is started once per test process from the machine's PostgreSQL
//! binaries, in a temp dir, on a free port; Debian's `postgresql` package
//! is installed first when the binaries are missing (as the demo installs
//! g++), so `cargo test --workspace` passes on a fresh machine. The
//! throwaway server dies with the test process.
//! `TEND_TEST_PG_THROWAWAY=1` starts one even where a server answers, to
//! try that path.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};

/// A database of its own for one test; dropped with it.
pub struct PgDb {
    /// Connection string for the test's database.
    pub url: String,
    /// The database's name.
    pub name: String,
    admin: String,
}

impl PgDb {
    /// master.toml's `[store]` section for this database.
    pub fn store_section(&self) -> String {
        format!("[store]\npostgres = {:?}\n", self.url)
    }

    /// A master laid out in `dir` on this database, started.
    pub fn master(&self, dir: &std::path::Path) -> crate::Master {
        let mut m = crate::Master::new(dir, &self.store_section());
        m.start();
        m
    }

    /// A client on the test's database.
    pub fn client(&self) -> Client {
        Client::connect(&self.url, NoTls).expect("connect to the test database")
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        if let Ok(mut c) = Client::connect(&self.admin, NoTls) {
            let _ = c.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// The server's maintenance connection string, or why there is none.
fn server() -> &'static Result<String, String> {
    static SERVER: OnceLock<Result<String, String>> = OnceLock::new();
    SERVER.get_or_init(|| {
        // As on a fresh machine: no server is looked for.
        if std::env::var_os("TEND_TEST_PG_THROWAWAY").is_some() {
            return throwaway();
        }
        let given = std::env::var("TEND_TEST_PG").ok();
        let local = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=2";
        let admin = given.clone().unwrap_or_else(|| local.to_string());
        match Client::connect(&admin, NoTls) {
            Ok(_) => return Ok(admin),
            Err(e) if given.is_some() => return Err(format!("TEND_TEST_PG ({admin}): {e}")),
            Err(_) => {}
        }
        throwaway()
    })
}

/// A fresh database on the test server. Panics (the test fails) when no
/// server can be had: the tests that need one are the checks.
pub fn database() -> PgDb {
    match server() {
        Ok(admin) => create_database(admin),
        Err(why) => panic!("no PostgreSQL for the test: {why}"),
    }
}

fn create_database(admin: &str) -> PgDb {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "tend_t{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_micros())
    );
    let mut c = Client::connect(admin, NoTls).expect("connect to the test server");
    c.batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("create the test database");
    let url = replace_dbname(admin, &name);
    PgDb {
        url,
        name,
        admin: admin.to_string(),
    }
}

/// `conn` (key=value form) with its dbname set to `name`.
fn replace_dbname(conn: &str, name: &str) -> String {
    let mut parts: Vec<String> = conn
        .split_whitespace()
        .filter(|kv| !kv.starts_with("dbname="))
        .map(str::to_string)
        .collect();
    parts.push(format!("dbname={name}"));
    parts.join(" ")
}

/// PostgreSQL's programs: pg_config's bindir, Debian's versioned dirs,
/// or the PATH.
fn bindir() -> Option<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("postgres").exists() {
            return Some(dir);
        }
    }
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|d| d.join("postgres").exists() && d.join("initdb").exists())
        .collect();
    debian.sort();
    debian.pop()
}

fn install() -> Result<(), String> {
    eprintln!("PostgreSQL is not installed: installing Debian's postgresql package for the tests");
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("apt-get: {e}"))
    };
    apt(&["update", "-q"])?;
    let st = apt(&[
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "postgresql",
    ])?;
    if !st.success() {
        return Err(format!("apt-get install postgresql: {st}"));
    }
    Ok(())
}

/// Starts a server in a temp dir on a free port, for the whole test
/// process; its maintenance connection string.
fn throwaway() -> Result<String, String> {
    // Started from a thread that lives as long as the process: the
    // server's parent-death signal fires when its spawning thread ends.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let server = Server::new();
        let admin = server.as_ref().map(|s| s.admin()).map_err(Clone::clone);
        let _ = tx.send(admin);
        let _keep = server;
        loop {
            std::thread::park();
        }
    });
    let admin = rx.recv().map_err(|e| e.to_string())??;
    eprintln!("no PostgreSQL on 127.0.0.1:5432 answered: started a throwaway server ({admin})");
    Ok(admin)
}

/// A PostgreSQL server of the test's own, in a temp dir on a free port,
/// that the test can stop and start again (the database going away). It
/// dies with the thread that started it, and its dir goes when dropped.
pub struct Server {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    user: Option<(u32, u32)>,
    child: Option<std::process::Child>,
}

impl Server {
    /// initdb and start; Debian's postgresql is installed first when the
    /// machine has no PostgreSQL programs.
    pub fn new() -> Result<Self, String> {
        Self::build(false)
    }

    /// The same, serving TLS with a self-signed certificate for 127.0.0.1
    /// (`cert()`), and taking the role `tend` only over TLS (`postgres`,
    /// the harness's own, still in the clear).
    pub fn new_tls() -> Result<Self, String> {
        Self::build(true)
    }

    /// The CA certificate (PEM) the server's TLS certificate is signed
    /// by, when it serves TLS.
    pub fn cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    fn build(tls: bool) -> Result<Self, String> {
        static N: AtomicU32 = AtomicU32::new(0);
        let bin = match bindir() {
            Some(b) => b,
            None => {
                install()?;
                bindir().ok_or("postgresql installed but its programs were not found")?
            }
        };
        // Earlier test processes' servers died with them; their dirs go.
        for old in std::fs::read_dir(std::env::temp_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = old.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name
                .strip_prefix("tend-test-pg-")
                .and_then(|rest| rest.split('-').next())
                && !Path::new("/proc").join(pid).exists()
            {
                let _ = std::fs::remove_dir_all(old.path());
            }
        }
        let dir = std::env::temp_dir().join(format!(
            "tend-test-pg-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // initdb and postgres refuse to run as root: as the postgres user.
        let user = as_user();
        if let Some((uid, gid)) = user {
            chown(&dir, uid, gid)?;
        }
        let st = run_as(user, Command::new(bin.join("initdb")))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(dir.join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        if !st.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&st.stderr)
            ));
        }
        if tls {
            let data = dir.join("data");
            // A CA, and the server's certificate for 127.0.0.1 signed by it:
            // the test trusts the CA (`cert()`).
            let openssl = |args: &[&str]| -> Result<(), String> {
                let st = Command::new("openssl")
                    .args(args)
                    .current_dir(&dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .output()
                    .map_err(|e| format!("openssl: {e}"))?;
                if !st.status.success() {
                    return Err(format!(
                        "openssl {args:?}: {}",
                        String::from_utf8_lossy(&st.stderr)
                    ));
                }
                Ok(())
            };
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=tend test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
            ])?;
            openssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ])?;
            std::fs::write(
                dir.join("ext.cnf"),
                "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
            )
            .map_err(|e| format!("ext.cnf: {e}"))?;
            openssl(&[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
                "-out",
                "server.crt",
            ])?;
            std::fs::copy(dir.join("server.key"), data.join("server.key"))
                .map_err(|e| format!("copy the key: {e}"))?;
            std::fs::copy(dir.join("server.crt"), data.join("server.crt"))
                .map_err(|e| format!("copy the certificate: {e}"))?;
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhost all postgres 127.0.0.1/32 trust\nhostssl all tend 127.0.0.1/32 trust\n",
            )
            .map_err(|e| format!("pg_hba.conf: {e}"))?;
            let mut conf = std::fs::OpenOptions::new()
                .append(true)
                .open(data.join("postgresql.conf"))
                .map_err(|e| format!("postgresql.conf: {e}"))?;
            std::io::Write::write_all(&mut conf, b"ssl = on\n")
                .map_err(|e| format!("postgresql.conf: {e}"))?;
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(
                data.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            );
            if let Some((uid, gid)) = user {
                for f in ["server.key", "server.crt", "pg_hba.conf"] {
                    chown(&data.join(f), uid, gid)?;
                }
            }
        }
        let mut server = Self {
            bin,
            dir,
            port: crate::free_port(),
            user,
            child: None,
        };
        server.start()?;
        Ok(server)
    }

    /// The maintenance connection string.
    pub fn admin(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres connect_timeout=2",
            self.port
        )
    }

    /// A fresh database on this server.
    pub fn database(&self) -> PgDb {
        create_database(&self.admin())
    }

    /// Starts the server (again) and waits until it answers.
    pub fn start(&mut self) -> Result<(), String> {
        use std::os::unix::process::CommandExt;
        let mut cmd = run_as(self.user, Command::new(self.bin.join("postgres")));
        cmd.arg("-D")
            .arg(self.dir.join("data"))
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
            ])
            .args(["-c", "fsync=off", "-c", "max_connections=300"])
            .arg("-k")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().map_err(|e| format!("postgres: {e}"))?);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match Client::connect(&self.admin(), NoTls) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("the test's PostgreSQL never answered: {e}"));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Stops the server at once (SIGQUIT: connections cut, no checkpoint,
    /// as a crash of the database host looks to its clients).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe {
                libc::kill(child.id() as i32, libc::SIGQUIT);
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The postgres user's ids when running as root.
fn as_user() -> Option<(u32, u32)> {
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let pw = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
    if pw.is_null() {
        return None;
    }
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

fn run_as(user: Option<(u32, u32)>, mut cmd: Command) -> Command {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), String> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| format!("chown: {e}"))
}

/// Every job record in a database of tend's.
pub fn stored_jobs(c: &mut Client) -> Vec<tend_proto::v1::Job> {
    c.query("SELECT job FROM tend_jobs", &[])
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    <tend_proto::v1::Job as prost::Message>::decode(r.get::<_, &[u8]>(0)).unwrap()
                })
                .collect()
        })
        .unwrap_or_default()
}
