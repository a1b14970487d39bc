//! A PostgreSQL server of the test's own: its own cluster in a fresh temporary directory, on a
//! free port, started from the installed server binaries, so that a test may crash and restart
//! it without touching the machine's main server.
//!
//! The server keeps `fsync` and `synchronous_commit` on: what a crash test sees surviving is
//! what a real server would keep. `OWN_POSTGRES_BIN` names the directory of `initdb`, `pg_ctl`
//! and `postgres` where they are not under `/usr/lib/postgresql/<version>/bin`.

use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long starting, stopping or one SQL command may take before the test fails.
const TIMEOUT: Duration = Duration::from_secs(90);

pub struct OwnPostgres {
    /// Removed, with the cluster in it, when the server is dropped.
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    data: PathBuf,
    log: PathBuf,
    bin: PathBuf,
    port: u16,
    running: bool,
}

impl OwnPostgres {
    /// Creates a cluster (trust authentication for `postgres` on 127.0.0.1), starts it, waits
    /// until it accepts connections and creates the database `panopticon`.
    pub fn start() -> OwnPostgres {
        let bin = server_bin();
        let dir = tempfile::Builder::new()
            .prefix("own-postgres-")
            .tempdir()
            .expect("temporary directory for PostgreSQL");
        let root = dir.path().to_path_buf();
        // initdb and postgres refuse to run as root: the cluster belongs to `postgres`.
        give_to_postgres(&root);
        let data = root.join("data");
        let log = root.join("server.log");
        let mut pg = OwnPostgres {
            dir: Some(dir),
            data: data.clone(),
            log,
            bin,
            port: 0,
            running: false,
            root,
        };
        pg.watch_parent();

        let mut initdb = pg.command("initdb");
        initdb.arg("-D").arg(&data).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        pg.run(initdb, "initdb");

        let settings = format!(
            "\n# Written by the test harness (tests/common/pg.rs)\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\n\
             fsync = on\n\
             synchronous_commit = on\n\
             full_page_writes = on\n\
             shared_buffers = 16MB\n\
             max_connections = 50\n\
             logging_collector = off\n",
            pg.data.display()
        );
        let conf = pg.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf)
            .unwrap_or_else(|e| panic!("read {}: {e}", conf.display()));
        text.push_str(&settings);
        std::fs::write(&conf, text).unwrap_or_else(|e| panic!("write {}: {e}", conf.display()));

        // The port is free when picked, but another process may take it before the server
        // binds it; then a fresh port is tried.
        let mut attempt = 0;
        loop {
            attempt += 1;
            pg.port = super::free_port();
            match pg.try_start() {
                Ok(()) => break,
                Err(why) if attempt < 3 => {
                    eprintln!(
                        "own PostgreSQL: start on port {} failed, retrying: {why}",
                        pg.port
                    )
                }
                Err(why) => panic!("{why}"),
            }
        }
        pg.psql("postgres", "CREATE DATABASE panopticon");
        pg
    }

    /// `postgres://postgres@127.0.0.1:PORT/panopticon`
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/panopticon", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log file (pg_ctl's `-l`), kept across restarts.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Stops the server the way a crash does: every process quits at once, without a
    /// checkpoint; the next start replays the WAL.
    pub fn crash(&mut self) {
        self.pg_ctl_stop("immediate")
            .unwrap_or_else(|why| panic!("crash (immediate stop) failed: {why}"));
        self.running = false;
    }

    /// Starts the server again on the same port and data directory and waits until it accepts
    /// connections, crash recovery included.
    pub fn restart(&mut self) {
        if self.running {
            self.stop();
        }
        self.try_start()
            .unwrap_or_else(|why| panic!("restart failed: {why}"));
    }

    /// Stops the server cleanly: sessions are ended, a checkpoint is written.
    pub fn stop(&mut self) {
        self.pg_ctl_stop("fast")
            .unwrap_or_else(|why| panic!("stop failed: {why}"));
        self.running = false;
    }

    /// Puts a file into the data directory, readable by the server only (as it wants its
    /// key), and returns its path.
    pub fn install_file(&self, name: &str, contents: &[u8]) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.data.join(name);
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
        give_to_postgres(&path);
        path
    }

    /// Appends settings to `postgresql.conf`; they apply from the next [`OwnPostgres::restart`].
    pub fn configure(&self, settings: &str) {
        let conf = self.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf)
            .unwrap_or_else(|e| panic!("read {}: {e}", conf.display()));
        text.push('\n');
        text.push_str(settings);
        text.push('\n');
        std::fs::write(&conf, text).unwrap_or_else(|e| panic!("write {}: {e}", conf.display()));
    }

    /// Adds TimescaleDB to `shared_preload_libraries` and restarts, so that the service finds
    /// it usable.
    pub fn preload_timescaledb(&mut self) {
        self.configure(
            "shared_preload_libraries = 'timescaledb'\ntimescaledb.telemetry_level = off",
        );
        self.restart();
    }

    /// Replaces `pg_hba.conf`; it applies from the next [`OwnPostgres::restart`].
    pub fn set_hba(&self, rules: &str) {
        let hba = self.data.join("pg_hba.conf");
        std::fs::write(&hba, rules).unwrap_or_else(|e| panic!("write {}: {e}", hba.display()));
    }

    /// Runs SQL with psql against `database` and returns its unaligned, tuples-only output.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let mut psql = self.command("psql");
        psql.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-U", "postgres"])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-d")
            .arg(database)
            .arg("-c")
            .arg(sql)
            .env("PGCONNECT_TIMEOUT", "10");
        self.run(psql, &format!("psql {sql:?}"))
    }

    fn try_start(&mut self) -> Result<(), String> {
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl
            .arg("start")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .arg("-w")
            .arg("-t")
            .arg(TIMEOUT.as_secs().to_string())
            .arg("-o")
            .arg(format!("-p {}", self.port));
        self.try_run(pg_ctl, "pg_ctl start")?;
        self.running = true;
        // pg_ctl -w waits on the socket; wait for TCP on 127.0.0.1 as the clients use it.
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let mut ready = self.command("pg_isready");
            ready
                .args(["-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"])
                .arg("-p")
                .arg(self.port.to_string());
            if self.try_run(ready, "pg_isready").is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "PostgreSQL on port {} did not accept connections within {TIMEOUT:?}; server log {}:\n{}",
                    self.port,
                    self.log.display(),
                    tail(&self.log)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn pg_ctl_stop(&self, mode: &str) -> Result<(), String> {
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl
            .arg("stop")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", mode, "-w", "-t"])
            .arg(TIMEOUT.as_secs().to_string());
        self.try_run(pg_ctl, &format!("pg_ctl stop -m {mode}"))
            .map(|_| ())
    }

    /// A command for one of the server's programs, run as `postgres` when the test runs as
    /// root, in the temporary directory, with no `PG*` variable of the caller's environment.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut command = if as_root() {
            let mut runuser = Command::new("runuser");
            runuser.args(["-u", "postgres", "--"]).arg(path);
            runuser
        } else {
            Command::new(path)
        };
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PG") {
                command.env_remove(key);
            }
        }
        command.current_dir(&self.root).stdin(Stdio::null());
        command
    }

    fn run(&self, command: Command, what: &str) -> String {
        self.try_run(command, what)
            .unwrap_or_else(|why| panic!("{why}"))
    }

    /// Runs a command to its end, or kills it after [`TIMEOUT`]; its output goes through a
    /// file, not a pipe, so a server it leaves running cannot hold the output open.
    fn try_run(&self, mut command: Command, what: &str) -> Result<String, String> {
        let out_path = self.root.join(format!("command-{}.out", unique_suffix()));
        let out = File::create(&out_path)
            .unwrap_or_else(|e| panic!("create {}: {e}", out_path.display()));
        let err = out.try_clone().expect("clone output file");
        command.stdout(out).stderr(err);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {what} ({command:?}): {e}"));
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for command") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                let output = std::fs::read_to_string(&out_path).unwrap_or_default();
                let _ = std::fs::remove_file(&out_path);
                return Err(format!(
                    "{what} did not finish within {TIMEOUT:?}; its output:\n{output}\nserver log {}:\n{}",
                    self.log.display(),
                    tail(&self.log)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let output = std::fs::read_to_string(&out_path).unwrap_or_default();
        let _ = std::fs::remove_file(&out_path);
        if status.success() {
            Ok(output)
        } else {
            Err(format!(
                "{what} failed ({status}); its output:\n{output}\nserver log {}:\n{}",
                self.log.display(),
                tail(&self.log)
            ))
        }
    }

    /// Should the test process die without dropping the server (killed, aborted), a watchdog
    /// stops the server and removes its directory.
    fn watch_parent(&self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let stop = if as_root() {
            format!("runuser -u postgres -- '{}'", pg_ctl.display())
        } else {
            format!("'{}'", pg_ctl.display())
        };
        let script = format!(
            "while kill -0 {parent} 2>/dev/null && [ -d '{root}' ]; do sleep 1; done; \
             if [ -f '{data}/postmaster.pid' ]; then {stop} stop -D '{data}' -m immediate -w >/dev/null 2>&1; fi; \
             rm -rf '{root}'",
            parent = std::process::id(),
            root = self.root.display(),
            data = self.data.display(),
        );
        super::spawn_watchdog(&script);
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        if self.running || self.data.join("postmaster.pid").exists() {
            if let Err(why) = self.pg_ctl_stop("immediate") {
                eprintln!("own PostgreSQL: stopping on drop failed: {why}");
            }
            self.running = false;
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` holding `initdb`, or `OWN_POSTGRES_BIN`.
fn server_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("OWN_POSTGRES_BIN") {
        return PathBuf::from(bin);
    }
    let base = Path::new("/usr/lib/postgresql");
    let entries = std::fs::read_dir(base).unwrap_or_else(|e| {
        panic!(
            "no PostgreSQL server installed ({}: {e}); install the `postgresql` package or set OWN_POSTGRES_BIN",
            base.display()
        )
    });
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let version: Vec<u32> = name.split('.').map(|p| p.parse().ok()).collect::<Option<_>>()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .max()
        .map(|(_, bin)| bin)
        .unwrap_or_else(|| {
            panic!(
                "no {}/<version>/bin/initdb found; install the `postgresql` package or set OWN_POSTGRES_BIN",
                base.display()
            )
        })
}

fn as_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn unique_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The last lines of a log file, for panic messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("(unreadable: {e})"));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Whether the server binaries the harness uses have the TimescaleDB extension installed (its
/// control file in their share directory), so that a server of the test's own can preload it.
/// The share directory lies where PostgreSQL looks for it, relative to the binaries:
/// `<root>/lib/postgresql/<version>/bin` has `<root>/share/postgresql/<version>`.
pub fn timescaledb_installed() -> bool {
    let bin = server_bin();
    let Some(version_dir) = bin.parent() else {
        return false;
    };
    let (Some(version), Some(root)) = (
        version_dir.file_name(),
        version_dir
            .parent()
            .and_then(Path::parent)
            .and_then(Path::parent),
    ) else {
        return false;
    };
    root.join("share/postgresql")
        .join(version)
        .join("extension/timescaledb.control")
        .exists()
}

/// Whether a test must skip what needs TimescaleDB (`what`, e.g. "the hypertable case"), because
/// the server binaries lack it. A skip is said at once on the terminal, and again, counted, when
/// the test process ends, so that a green run that covered no hypertable shows it. Both go
/// straight to stderr: libtest captures only the output of the `print` macros, and shows even
/// that only for tests that fail.
pub fn skip_without_timescaledb(what: &str) -> bool {
    if timescaledb_installed() {
        return false;
    }
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    let line = format!("{test}: {what} skipped");
    let _ = writeln!(std::io::stderr(), "TimescaleDB is not installed: {line}");
    let mut skipped = SKIPPED.lock().unwrap_or_else(PoisonError::into_inner);
    if skipped.is_empty() {
        // SAFETY: `report_skips` is a plain function that lives as long as the process.
        unsafe { atexit(report_skips) };
    }
    skipped.push(line);
    true
}

/// What [`skip_without_timescaledb`] skipped in this process.
static SKIPPED: Mutex<Vec<String>> = Mutex::new(Vec::new());

unsafe extern "C" {
    /// The C library's: runs a function when the process exits, after libtest's summary.
    fn atexit(function: extern "C" fn()) -> std::ffi::c_int;
}

extern "C" fn report_skips() {
    let skipped = SKIPPED.lock().unwrap_or_else(PoisonError::into_inner);
    let mut report = format!(
        "TimescaleDB is not installed: {} test(s) skipped what needs it:\n",
        skipped.len()
    );
    for line in skipped.iter() {
        report.push_str(&format!("  {line}\n"));
    }
    let _ = std::io::stderr().write_all(report.as_bytes());
}

/// Makes `path` belong to `postgres` where the tests run as root, as the server wants its files.
fn give_to_postgres(path: &Path) {
    if !as_root() {
        return;
    }
    let status = Command::new("chown")
        .arg("postgres:postgres")
        .arg(path)
        .status()
        .expect("run chown");
    assert!(status.success(), "chown postgres {} failed", path.display());
}
