//! A real PostgreSQL server for tests (feature `testing`): `initdb` into a temporary directory
//! and `postgres` on a free loopback port, run as an unprivileged user (`postgres`, when the
//! tests run as root: PostgreSQL refuses to run as root), stopped on drop (also when the test
//! panics: the drop runs while unwinding).
//!
//! Every wait is bounded: `initdb`, `createdb` and the other helpers are killed past their
//! deadline, the server must accept connections within 30 s, and a stop that SIGQUIT does not
//! finish in 10 s ends with SIGKILL. The server is started through `setpriv --pdeathsig`, so it
//! also ends if the test process is killed outright; as Linux ties the parent-death signal to
//! the *thread* that started the server, start it on the thread that owns it (the test's
//! thread, not a `spawn_blocking` thread that may be retired first).
//!
//! Where PostgreSQL is not installed, [`PostgresServer::start`] returns `None` outside CI (the
//! test should say it is skipped and return) and panics under `CI=true`, where a missing server
//! is a broken set-up (`.ci/run` installs Debian's `postgresql`).
//!
//! ```no_run
//! use engine_store::testing::PostgresServer;
//! let Some(server) = PostgresServer::start() else {
//!     eprintln!("PostgreSQL not installed: skipped");
//!     return;
//! };
//! let url = server.create_database("one_test");
//! # let _ = url;
//! ```

use std::io::{Read, Seek};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Longest `initdb` may take.
const INITDB_DEADLINE: Duration = Duration::from_secs(120);
/// Longest a helper (`createdb`, `pg_isready`, `chown`, `kill`) may take.
const HELPER_DEADLINE: Duration = Duration::from_secs(30);
/// Longest the server may take to accept connections.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// Longest a SIGQUIT may take to stop the server before SIGKILL.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// Ports tried when the one picked is taken before the server binds it.
const PORT_ATTEMPTS: usize = 5;

/// Why the test server could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// PostgreSQL is not installed, under `CI=true`.
    #[error("PostgreSQL is not installed (no initdb on PATH, from pg_config or in /usr/lib/postgresql/*/bin); .ci/run installs Debian's postgresql")]
    Missing,
    /// Running as root needs an unprivileged user to run the server as.
    #[error("running as root, but there is no `postgres` user to run the server as (Debian's postgresql package creates it)")]
    NoUser,
    /// A program could not be started or waited for.
    #[error("cannot run {what}: {source}")]
    Io {
        /// The program.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// A program failed.
    #[error("{what} failed ({status}): {output}")]
    Failed {
        /// The program.
        what: String,
        /// Its exit status.
        status: String,
        /// What it printed.
        output: String,
    },
    /// A program or the server did not finish in time.
    #[error("{what} did not finish within {after:?}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// The deadline.
        after: Duration,
    },
    /// The server exited while starting.
    #[error("postgres exited at start ({status}); its log: {log}")]
    Exited {
        /// Its exit status.
        status: String,
        /// The end of its log.
        log: String,
    },
}

/// A running PostgreSQL server on `127.0.0.1`, superuser `postgres`, no password (trust).
#[derive(Debug)]
pub struct PostgresServer {
    bin: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    /// The user the server runs as when the tests run as root.
    run_as: Option<String>,
    child: Option<Child>,
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> HarnessError + '_ {
    move |source| HarnessError::Io {
        what: what.to_owned(),
        source,
    }
}

fn free_port() -> Result<u16, HarnessError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(io("a free loopback port"))
}

/// Runs `cmd` to its end, killing it past `limit`; its stdout and stderr, together.
fn run(mut cmd: Command, what: &str, limit: Duration) -> Result<String, HarnessError> {
    // Output goes to an unnamed file, not a pipe: a chatty program cannot block on a full pipe
    // while this polls for its end.
    let mut out = tempfile::tempfile().map_err(io(what))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().map_err(io(what))?)
        .stderr(out.try_clone().map_err(io(what))?)
        .spawn()
        .map_err(io(what))?;
    let status = wait_for(child, what, limit)?;
    let mut text = String::new();
    let _ = out.rewind();
    let _ = out.read_to_string(&mut text);
    if status.success() {
        Ok(text)
    } else {
        Err(HarnessError::Failed {
            what: what.to_owned(),
            status: status.to_string(),
            output: text.trim().to_owned(),
        })
    }
}

/// Waits for `child` up to `limit`, then kills it.
fn wait_for(mut child: Child, what: &str, limit: Duration) -> Result<ExitStatus, HarnessError> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().map_err(io(what))? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(HarnessError::Timeout {
                what: what.to_owned(),
                after: limit,
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The directory of `initdb` and `postgres`: `pg_config --bindir`, `initdb` on `PATH`, or
/// Debian's `/usr/lib/postgresql/<version>/bin` (newest first).
fn find_bin() -> Option<PathBuf> {
    let mut pg_config = Command::new("pg_config");
    pg_config.arg("--bindir");
    if let Ok(out) = run(pg_config, "pg_config", HELPER_DEADLINE) {
        let dir = PathBuf::from(out.trim());
        if dir.join("initdb").exists() && dir.join("postgres").exists() {
            return Some(dir);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let initdb = dir.join("initdb");
            if initdb.exists() {
                // Debian links only some programs into PATH: use the real directory.
                let real = std::fs::canonicalize(&initdb).unwrap_or(initdb);
                if let Some(bin) = real.parent() {
                    if bin.join("postgres").exists() {
                        return Some(bin.to_path_buf());
                    }
                }
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").exists() && bin.join("postgres").exists()).then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(program).exists()))
}

fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

impl PostgresServer {
    /// Starts a server, or `None` (with a note on stderr) when PostgreSQL is missing and `CI`
    /// is not `true`.
    ///
    /// # Panics
    /// When the server cannot start, or is missing under `CI=true` (see [`Self::try_start`]).
    pub fn start() -> Option<Self> {
        match Self::try_start() {
            Ok(server) => server,
            Err(e) => panic!("cannot start a PostgreSQL server for the tests: {e}"),
        }
    }

    /// Starts a server: `Ok(None)` (with a note on stderr) when PostgreSQL is missing and `CI`
    /// is not `true`.
    ///
    /// # Errors
    /// [`HarnessError`]: PostgreSQL missing under `CI=true`, no `postgres` user when running
    /// as root, `initdb` or the server failing or not ready within its deadline.
    pub fn try_start() -> Result<Option<Self>, HarnessError> {
        let Some(bin) = find_bin() else {
            if in_ci() {
                return Err(HarnessError::Missing);
            }
            eprintln!("PostgreSQL not installed: skipping this Postgres test");
            return Ok(None);
        };
        let dir = tempfile::Builder::new()
            .prefix("engine-store-pg-")
            .tempdir()
            .map_err(io("a temporary directory"))?;
        let run_as = if is_root() {
            let mut id = Command::new("id");
            id.args(["-u", "postgres"]);
            run(id, "id -u postgres", HELPER_DEADLINE).map_err(|_| HarnessError::NoUser)?;
            let mut chown = Command::new("chown");
            chown.args(["-R", "postgres:postgres"]).arg(dir.path());
            run(chown, "chown", HELPER_DEADLINE)?;
            Some("postgres".to_owned())
        } else {
            None
        };
        let mut server = Self {
            bin,
            port: 0,
            dir,
            run_as,
            child: None,
        };
        let mut initdb = server.command("initdb");
        initdb
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .arg("-D")
            .arg(server.data_dir());
        run(initdb, "initdb", INITDB_DEADLINE)?;
        // The port is free when picked; another process may take it before the server binds
        // it, so a few are tried.
        let mut attempt = 0;
        loop {
            attempt += 1;
            server.port = free_port()?;
            match server.launch() {
                Ok(()) => return Ok(Some(server)),
                Err(HarnessError::Exited { log, .. })
                    if attempt < PORT_ATTEMPTS && log.contains("could not bind") =>
                {
                    continue
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// `program` of the server's bin directory, run as the server's user, in the server's
    /// directory (the server's user may not be allowed into the test's working directory).
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.run_as.is_none() && !on_path("setpriv") {
            let mut c = Command::new(path);
            c.current_dir(self.dir.path());
            return c;
        }
        // setpriv execs the program itself: its pid is the server's. `--pdeathsig` is applied
        // after the user change (which would clear it).
        let mut c = Command::new("setpriv");
        if let Some(user) = &self.run_as {
            c.arg(format!("--reuid={user}"))
                .arg(format!("--regid={user}"))
                .arg("--init-groups");
        }
        c.args(["--pdeathsig", "SIGQUIT", "--"]).arg(path);
        c.current_dir(self.dir.path());
        c
    }

    /// Starts `postgres` on the data directory and waits until it accepts connections.
    fn launch(&mut self) -> Result<(), HarnessError> {
        let log = std::fs::File::create(self.log_path()).map_err(io("the server log"))?;
        let mut postgres = self.command("postgres");
        postgres
            .arg("-D")
            .arg(self.data_dir())
            .args(["-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path())
            .args([
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
                "-c",
                "shared_buffers=32MB",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = postgres.spawn().map_err(io("postgres"))?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            let mut ready = Command::new(self.bin.join("pg_isready"));
            ready
                .args(["-t", "2", "-h", "127.0.0.1", "-p"])
                .arg(self.port.to_string());
            if run(ready, "pg_isready", HELPER_DEADLINE).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(HarnessError::Exited {
                        status: status.to_string(),
                        log: self.log_tail(),
                    });
                }
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(HarnessError::Timeout {
                    what: format!("postgres accepting connections (log: {})", self.log_tail()),
                    after: READY_DEADLINE,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the server is running (not stopped by [`Self::stop`]).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates database `name` and returns its URL.
    ///
    /// # Panics
    /// When `createdb` fails (see [`Self::try_create_database`]).
    pub fn create_database(&self, name: &str) -> String {
        match self.try_create_database(name) {
            Ok(url) => url,
            Err(e) => panic!("cannot create the database {name}: {e}"),
        }
    }

    /// Creates database `name` and returns its URL.
    ///
    /// # Errors
    /// [`HarnessError`] when `createdb` fails or does not finish within 30 s.
    pub fn try_create_database(&self, name: &str) -> Result<String, HarnessError> {
        let mut createdb = Command::new(self.bin.join("createdb"));
        createdb
            .args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(self.port.to_string())
            .arg(name);
        run(createdb, &format!("createdb {name}"), HELPER_DEADLINE)?;
        Ok(self.url(name))
    }

    /// Stops the server at once (SIGQUIT: immediate shutdown, as a crash of the database: no
    /// checkpoint, every connection cut). Waits up to 10 s, then kills it. Does nothing if it
    /// is stopped already.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let mut kill = Command::new("kill");
        kill.args(["-QUIT", &child.id().to_string()]);
        let _ = run(kill, "kill -QUIT", HELPER_DEADLINE);
        let deadline = Instant::now() + STOP_DEADLINE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts the server again (stopping it first if it runs), on the same port and data.
    ///
    /// # Panics
    /// When it cannot start (see [`Self::try_restart`]).
    pub fn restart(&mut self) {
        if let Err(e) = self.try_restart() {
            panic!("cannot restart the PostgreSQL server: {e}");
        }
    }

    /// Starts the server again (stopping it first if it runs), on the same port and data; it
    /// recovers from the immediate stop before accepting connections.
    ///
    /// # Errors
    /// [`HarnessError`] when it exits at start or is not ready within 30 s.
    pub fn try_restart(&mut self) -> Result<(), HarnessError> {
        self.stop();
        // An immediate stop leaves the pid file behind when the postmaster was killed.
        let _ = std::fs::remove_file(self.data_dir().join("postmaster.pid"));
        self.launch()
    }

    /// The server's directory: its data in `data/`, its log in `server.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}
