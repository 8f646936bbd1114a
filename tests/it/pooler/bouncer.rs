//! A real PgBouncer for the pooler tests: `deploy/pgbouncer/pgbouncer.ini` with its lines
//! marked "local:" made local, in front of one test database.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use uuid::Uuid;

/// Where Debian puts the binary (`apt-get install pgbouncer`), or `PGBOUNCER`.
pub(super) fn pgbouncer_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PGBOUNCER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/pgbouncer"));
    path.exists().then_some(path)
}

/// A PgBouncer process in transaction mode in front of one database, stopped when dropped.
pub(super) struct Bouncer {
    child: Child,
    port: u16,
    /// The user clients sign in as (the test server's).
    user: String,
    dir: PathBuf,
}

impl Bouncer {
    /// Starts `binary` with the project's configuration, its lines marked "local:" made
    /// local (address, port, trust auth), and `server_connections` server connections: fewer
    /// than the service's, so its transactions change server connection all the time.
    pub(super) fn start(binary: &Path, database_url: &str, server_connections: u32) -> Bouncer {
        let target: PgConnectOptions = database_url.parse().expect("database url");
        let dir = std::env::temp_dir().join(format!("flashsale-pgbouncer-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("pgbouncer folder");
        let port = free_port();
        let userlist = dir.join("userlist.txt");
        std::fs::write(&userlist, format!("\"{}\" \"\"\n", target.get_username()))
            .expect("userlist");
        let template = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/pgbouncer/pgbouncer.ini"
        );
        let config: String = std::fs::read_to_string(template)
            .expect("deploy/pgbouncer/pgbouncer.ini")
            .lines()
            .map(|line| {
                let key = line.split(" = ").next().unwrap_or_default();
                let local = match key {
                    "flashsale" => format!(
                        "flashsale = host={} port={} dbname={}",
                        target.get_host(),
                        target.get_port(),
                        target.get_database().expect("a database")
                    ),
                    "listen_port" => format!("listen_port = {port}"),
                    "auth_type" => "auth_type = trust".to_string(),
                    "auth_file" => format!("auth_file = {}", userlist.display()),
                    "default_pool_size" => format!("default_pool_size = {server_connections}"),
                    _ => line.to_string(),
                };
                local + "\n"
            })
            .collect();
        let ini = dir.join("pgbouncer.ini");
        std::fs::write(&ini, config).expect("pgbouncer.ini");
        // PgBouncer refuses to run as root: as root, run it as the cluster's user.
        let as_root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| out.stdout.starts_with(b"0\n"));
        let mut command = if as_root {
            let mut runuser = Command::new("runuser");
            runuser.args(["-u", "postgres", "--"]).arg(binary);
            runuser
        } else {
            Command::new(binary)
        };
        let log = dir.join("pgbouncer.log");
        let mut child = command
            .arg(&ini)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("pgbouncer log"))
            .spawn()
            .expect("start pgbouncer");
        let user = target.get_username().to_string();
        // Listening, and still running: a pgbouncer that lost its port to another process
        // exits at once (and the answer came from that process).
        let deadline = Instant::now() + Duration::from_secs(10);
        let failed = |exited: Option<std::process::ExitStatus>| {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("pgbouncer did not start ({exited:?}): {log}")
        };
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                std::thread::sleep(Duration::from_millis(200));
                match child.try_wait() {
                    Ok(None) => break,
                    exited => failed(exited.ok().flatten()),
                }
            }
            if let Ok(Some(exited)) = child.try_wait() {
                failed(Some(exited));
            }
            if Instant::now() > deadline {
                failed(None);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Bouncer {
            child,
            port,
            user,
            dir,
        }
    }

    /// The URL of the pooled database, as a client of the pooler.
    pub(super) fn url(&self) -> String {
        format!("postgres://{}@127.0.0.1:{}/flashsale", self.user, self.port)
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        // runuser passes the signal on to pgbouncer.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}
