//! A real PostgreSQL server for tests (feature `testing`): `initdb` into a temporary directory
//! and `postgres` on a free loopback port, run as an unprivileged user (`postgres`, when the
//! tests run as root: PostgreSQL refuses to run as root), stopped on drop.
//!
//! Where PostgreSQL is not installed, [`PostgresServer::start`] returns `None` outside CI (the
//! test should say it is skipped and return) and panics under `CI=true`, where a missing server
//! is a broken set-up (`.ci/run` installs Debian's `postgresql`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The directory of `initdb` and `postgres`: on `PATH`, or Debian's
/// `/usr/lib/postgresql/<version>/bin` (newest first).
fn find_bin() -> Option<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl PostgresServer {
    /// Starts a server, or `None` (with a note on stderr) when PostgreSQL is missing and `CI`
    /// is not `true`.
    ///
    /// # Panics
    /// When the server cannot start, or is missing under `CI=true`.
    pub fn start() -> Option<Self> {
        let Some(bin) = find_bin() else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "PostgreSQL is not installed; .ci/run installs Debian's postgresql"
            );
            eprintln!("PostgreSQL not installed: skipping this Postgres test");
            return None;
        };
        let dir = tempfile::tempdir().expect("a temporary directory");
        let run_as = is_root().then(|| "postgres".to_owned());
        if let Some(user) = &run_as {
            let status = Command::new("chown")
                .args(["-R", &format!("{user}:{user}")])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "cannot give {user} the data directory");
        }
        let mut server = Self {
            bin,
            port: free_port(),
            dir,
            run_as,
            child: None,
        };
        let data = server.data_dir();
        let out = server
            .command("initdb")
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .stdout(Stdio::null())
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        server.launch();
        Some(server)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `program` of the server's bin directory, run as the server's user.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match &self.run_as {
            None => Command::new(path),
            Some(user) => {
                // setpriv execs the program itself: its pid is the server's.
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={user}"))
                    .arg(format!("--regid={user}"))
                    .arg("--init-groups")
                    .arg("--")
                    .arg(path);
                c
            }
        }
    }

    fn launch(&mut self) {
        let data = self.data_dir();
        let socket_dir = self.dir.path();
        let log = std::fs::File::create(self.dir.path().join("server.log")).expect("a log file");
        if let Some(user) = &self.run_as {
            let _ = Command::new("chown")
                .arg(format!("{user}:{user}"))
                .arg(self.dir.path().join("server.log"))
                .status();
        }
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(&data)
            .args(["-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-k")
            .arg(socket_dir)
            .args(["-c", "fsync=off", "-c", "max_connections=200"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("postgres starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p"])
                .arg(self.port.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "postgres exited at start ({status}): {}",
                        std::fs::read_to_string(self.dir.path().join("server.log"))
                            .unwrap_or_default()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not start within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates database `name` and returns its URL.
    ///
    /// # Panics
    /// When `createdb` fails.
    pub fn create_database(&self, name: &str) -> String {
        let out = Command::new(self.bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(self.port.to_string())
            .arg(name)
            .output()
            .expect("createdb runs");
        assert!(
            out.status.success(),
            "createdb {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url(name)
    }

    /// Stops the server at once (SIGQUIT: immediate shutdown, as a crash of the database).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-QUIT", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the stopped server again, on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        // The postmaster's pid file may outlive an immediate stop for a moment.
        let _ = std::fs::remove_file(self.data_dir().join("postmaster.pid"));
        self.launch();
    }

    /// The server's data directory (its log is beside it, `server.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}
