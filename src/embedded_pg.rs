//! A private PostgreSQL cluster started from the machine's installed binaries.
//!
//! Used when `DATABASE_URL` is unset (the service keeps its data under `.data/`) and by the
//! test suite (a throwaway cluster in a temporary folder). Postgres refuses to run as root,
//! so as root the data folder is given to the `postgres` user and every server command runs
//! through `runuser`. A small watchdog process stops the cluster when the process that
//! started it exits, however it exits, so no server is left behind.

use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// The unprivileged account that runs the server when we are root.
const SERVER_USER: &str = "postgres";

/// How to set up the cluster.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// The cluster's data folder; created and initialised when it holds no cluster yet.
    pub data_dir: PathBuf,
    /// Durable (`fsync` on) for data that is kept; off for throwaway test clusters.
    pub durable: bool,
    /// Delete the data folder when the cluster stops (test clusters).
    pub remove_on_stop: bool,
}

/// A running cluster listening on 127.0.0.1.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    port: u16,
    /// False when we found a server already running on this data folder (another instance of
    /// the service started it); we use it but leave it running.
    owned: bool,
    remove_on_stop: bool,
}

impl EmbeddedPostgres {
    /// Starts (initialising if needed) the cluster, or joins the one already running there.
    pub fn start(options: &EmbeddedOptions) -> anyhow::Result<Self> {
        let bin_dir = find_bin_dir()?;
        let data_dir = absolute(&options.data_dir)?;
        let mut cluster = Self {
            bin_dir,
            data_dir,
            port: 0,
            owned: true,
            remove_on_stop: options.remove_on_stop,
        };
        if let Some(port) = cluster.running_port() {
            match cluster.live_owner() {
                Some(owner) => {
                    tracing::warn!(
                        port,
                        owner,
                        data_dir = %cluster.data_dir.display(),
                        "using the embedded Postgres that flashsale process {owner} started; \
                         it stops when that process exits"
                    );
                    cluster.port = port;
                    cluster.owned = false;
                    return Ok(cluster);
                }
                // Its owner is gone (it may be shutting down right now): let it finish
                // stopping, then start our own.
                None => cluster.stop_server(),
            }
        }
        cluster.init_if_needed()?;
        cluster.port = free_port()?;
        cluster.start_server(options.durable)?;
        cluster.record_owner();
        cluster.spawn_watchdog()?;
        tracing::info!(port = cluster.port, data_dir = %cluster.data_dir.display(), "embedded Postgres started");
        Ok(cluster)
    }

    /// A connection URL for `database` as the superuser.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{SERVER_USER}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the cluster if we started it (fast shutdown: committed data is kept).
    pub fn stop(&self) {
        if !self.owned {
            return;
        }
        self.stop_server();
        let _ = std::fs::remove_file(self.owner_file());
        if self.remove_on_stop {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }

    /// Copies this running cluster into `data_dir` (new or empty) as its hot standby:
    /// `pg_basebackup -R`, streaming from this one. [`start`](Self::start) on that folder
    /// then runs the standby (failover tests).
    pub fn base_backup(&self, data_dir: &Path) -> anyhow::Result<()> {
        let data_dir = absolute(data_dir)?;
        prepare_data_dir(&data_dir)?;
        let output = self
            .server_command("pg_basebackup")
            .arg("-D")
            .arg(&data_dir)
            .args(["-h", "127.0.0.1", "-U", SERVER_USER, "-p"])
            .arg(self.port.to_string())
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"])
            .output()
            .context("Failed to run pg_basebackup")?;
        if !output.status.success() {
            bail!(
                "pg_basebackup failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    /// `pg_ctl stop -m fast`, waiting until the server is down.
    fn stop_server(&self) {
        let status = self
            .server_command("pg_ctl")
            .arg("stop")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "fast", "-w"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            tracing::warn!("embedded Postgres did not stop cleanly");
        }
    }

    /// Beside the data folder: the pid of the flashsale process that started the cluster.
    fn owner_file(&self) -> PathBuf {
        self.data_dir.with_extension("owner")
    }

    fn record_owner(&self) {
        if let Err(err) = std::fs::write(self.owner_file(), std::process::id().to_string()) {
            tracing::warn!(error = %err, "could not record the embedded Postgres owner");
        }
    }

    /// The pid of the process that started the running cluster, if it is still alive.
    fn live_owner(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.owner_file())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
    }

    fn init_if_needed(&self) -> anyhow::Result<()> {
        if self.data_dir.join("PG_VERSION").exists() {
            return Ok(());
        }
        prepare_data_dir(&self.data_dir)?;
        let output = self
            .server_command("initdb")
            .arg("-D")
            .arg(&self.data_dir)
            .args([
                "-U",
                SERVER_USER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ])
            .output()
            .context("Failed to run initdb")?;
        if !output.status.success() {
            bail!(
                "initdb failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    fn start_server(&self, durable: bool) -> anyhow::Result<()> {
        let fsync = if durable { "on" } else { "off" };
        let server_options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync={fsync} -c max_connections=200",
            self.port,
            self.data_dir.display()
        );
        let log = self.data_dir.join("server.log");
        let output = self
            .server_command("pg_ctl")
            .arg("start")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-w", "-t", "60", "-o", &server_options, "-l"])
            .arg(&log)
            .output()
            .context("Failed to run pg_ctl start")?;
        if !output.status.success() {
            let server_log = std::fs::read_to_string(&log).unwrap_or_default();
            bail!(
                "pg_ctl start failed: {}\n{}",
                String::from_utf8_lossy(&output.stderr).trim(),
                server_log
                    .lines()
                    .rev()
                    .take(10)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        Ok(())
    }

    /// A detached shell that waits for this process to exit, then stops the cluster (and
    /// removes a throwaway data folder). Harmless when [`stop`](Self::stop) already ran.
    fn spawn_watchdog(&self) -> anyhow::Result<()> {
        let pg_ctl = self.bin_dir.join("pg_ctl");
        let data = self.data_dir.display().to_string();
        let as_server = if running_as_root() {
            format!("runuser -u {SERVER_USER} -- ")
        } else {
            String::new()
        };
        let remove = if self.remove_on_stop {
            format!("rm -rf '{data}'")
        } else {
            String::from(":")
        };
        // Only the server this process started: if another instance has since started its
        // own on the same folder, the postmaster pid differs and the watchdog leaves it be.
        let postmaster = std::fs::read_to_string(self.data_dir.join("postmaster.pid"))
            .ok()
            .and_then(|pid_file| pid_file.lines().next().map(str::trim).map(str::to_string))
            .unwrap_or_default();
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             if [ \"$(head -n 1 '{data}/postmaster.pid' 2>/dev/null)\" = '{postmaster}' ]; then \
             {as_server}'{pg_ctl}' stop -D '{data}' -m fast -w >/dev/null 2>&1; {remove}; fi",
            pid = std::process::id(),
            pg_ctl = pg_ctl.display(),
        );
        Command::new("setsid")
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("Failed to start the embedded Postgres watchdog")?;
        Ok(())
    }

    /// The port of a server already running on this data folder, from `postmaster.pid`.
    fn running_port(&self) -> Option<u16> {
        let status = self
            .server_command("pg_ctl")
            .arg("status")
            .arg("-D")
            .arg(&self.data_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()?;
        if !status.success() {
            return None;
        }
        let pid_file = std::fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        pid_file.lines().nth(3)?.trim().parse().ok()
    }

    /// A command for one of the server binaries, run as the server user when we are root.
    fn server_command(&self, program: &str) -> Command {
        let path = self.bin_dir.join(program);
        if running_as_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", SERVER_USER, "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }
}

/// Creates a data folder the server user owns (when we are root) and can reach, private
/// to it as the server demands (0700).
fn prepare_data_dir(data_dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("Failed to create {}", data_dir.display()))?;
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("Failed to make {} private", data_dir.display()))?;
    if !running_as_root() {
        return Ok(());
    }
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{SERVER_USER}:"))
        .arg(data_dir)
        .status()
        .context("Failed to run chown")?;
    if !status.success() {
        bail!("chown of {} to {SERVER_USER} failed", data_dir.display());
    }
    let reachable = Command::new("runuser")
        .args(["-u", SERVER_USER, "--", "test", "-w"])
        .arg(data_dir)
        .status()
        .is_ok_and(|s| s.success());
    if !reachable {
        bail!(
            "the {SERVER_USER} user cannot reach {}: every parent folder must be searchable \
             by others (chmod o+x), or set DATA_DIR elsewhere",
            data_dir.display()
        );
    }
    Ok(())
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    Ok(std::env::current_dir()
        .context("Failed to read the current directory")?
        .join(path))
}

/// A port nobody listens on now. Another process could take it before Postgres binds it;
/// then `pg_ctl start` fails loudly rather than joining the wrong server.
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("Failed to find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Where `initdb`, `pg_ctl` and `postgres` live: `PG_BIN_DIR`, `pg_config --bindir`, the
/// PATH, or the newest `/usr/lib/postgresql/*/bin`.
fn find_bin_dir() -> anyhow::Result<PathBuf> {
    let has_server = |dir: &Path| dir.join("pg_ctl").is_file() && dir.join("initdb").is_file();
    if let Some(dir) = std::env::var_os("PG_BIN_DIR").map(PathBuf::from)
        && has_server(&dir)
    {
        return Ok(dir);
    }
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output()
        && output.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if has_server(&dir) {
            return Ok(dir);
        }
    }
    if let Some(path) = std::env::var_os("PATH")
        && let Some(dir) = std::env::split_paths(&path).find(|dir| has_server(dir))
    {
        return Ok(dir);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions
        .into_iter()
        .rev()
        .find(|dir| has_server(dir))
        .context(
            "No PostgreSQL server binaries found (initdb, pg_ctl). Install PostgreSQL, set \
             PG_BIN_DIR, or set DATABASE_URL to use an existing database.",
        )
}
