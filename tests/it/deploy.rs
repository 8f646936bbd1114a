//! The binary as a deployment runs it: several instances racing to migrate one empty
//! database, a release beside migrations newer than itself, `flashsale migrate`, and a
//! SIGTERM drain under purchase load. Real processes, real Postgres, real HTTP.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::support::{ADMIN_KEY, empty_database, fresh_database};

/// One `flashsale` process on a port of its own, killed when dropped.
pub(crate) struct Instance {
    child: Child,
    pub(crate) base: String,
    log: PathBuf,
}

impl Instance {
    pub(crate) fn start(database_url: &str, settings: &[(&str, &str)]) -> Instance {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let log = std::env::temp_dir().join(format!("flashsale-deploy-{}.log", Uuid::new_v4()));
        let file = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_flashsale"));
        command
            .env_clear()
            .env("DATABASE_URL", database_url)
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("ADMIN_API_KEY", ADMIN_KEY)
            .env("RUST_LOG", "info")
            .envs(settings.iter().copied())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .kill_on_drop(true);
        Instance {
            child: command.spawn().expect("start flashsale"),
            base: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    /// The process id (to read its memory from `/proc`).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `/health` answers 200; panics with the instance's log otherwise.
    pub(crate) async fn wait_healthy(&mut self, client: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the instance exited ({status}):\n{}", self.log());
            }
            let health = client.get(format!("{}/health", self.base)).send().await;
            if health.is_ok_and(|response| response.status() == 200) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the instance never became healthy:\n{}", self.log());
    }

    /// Waits until the process exits (panics past `wait`): its exit status.
    pub(crate) async fn wait_exit(&mut self, wait: Duration) -> std::process::ExitStatus {
        match tokio::time::timeout(wait, self.child.wait()).await {
            Ok(status) => status.unwrap_or_else(|err| panic!("wait: {err}\n{}", self.log())),
            Err(_) => panic!("the instance did not exit:\n{}", self.log()),
        }
    }

    fn terminate(&self) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A fresh database migrated by `flashsale::store::migrate`, with a pool on it and its URL.
pub(crate) async fn migrated_database() -> (sqlx::PgPool, String) {
    let url = empty_database().await;
    flashsale::store::migrate(&url).await.expect("migrate");
    (sqlx::PgPool::connect(&url).await.expect("connect"), url)
}

pub(crate) fn client() -> reqwest::Client {
    // A fresh connection per request, as requests from many buyers arrive: no request
    // rides a kept-alive connection the drain closes.
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

pub(crate) async fn create_sale(client: &reqwest::Client, base: &str, body: Value) -> Value {
    let response = client
        .post(format!("{base}/api/v1/admin/sales"))
        .bearer_auth(ADMIN_KEY)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("create sale");
    assert_eq!(response.status(), 201);
    serde_json::from_slice(&response.bytes().await.expect("sale")).expect("sale json")
}

/// Creates a sale on a running instance and opens its public stream (answered 200).
pub(crate) async fn sale_with_stream(
    client: &reqwest::Client,
    base: &str,
    sale: Value,
) -> reqwest::Response {
    let sku = sale["sku"].as_str().expect("sku").to_string();
    create_sale(client, base, sale).await;
    let stream = client
        .get(format!("{base}/api/v1/sales/{sku}/events"))
        .send()
        .await
        .expect("stream");
    assert_eq!(stream.status(), 200);
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_started_together_on_an_empty_database_all_become_healthy() {
    let url = empty_database().await;
    let client = client();
    let mut instances: Vec<Instance> = (0..4).map(|_| Instance::start(&url, &[])).collect();
    for instance in &mut instances {
        instance.wait_healthy(&client).await;
    }
    // Each migration applied once, and every instance serves on the migrated schema.
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    let (applied, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT version) FROM _sqlx_migrations")
            .fetch_one(&pool)
            .await
            .expect("migrations");
    assert_eq!(applied, distinct);
    assert_eq!(applied as usize, flashsale::store::MIGRATOR.iter().count());
    for (i, instance) in instances.iter().enumerate() {
        let sku = format!("race-{i}-{}", Uuid::new_v4().simple());
        create_sale(
            &client,
            &instance.base,
            json!({"sku": sku, "name": "Race", "stock": 1}),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_serves_beside_a_newer_releases_migration_and_migrate_is_a_step_of_its_own() {
    let client = client();
    // An instance told not to migrate refuses an unmigrated database, saying what to run.
    let url = empty_database().await;
    let mut unmigrated = Instance::start(&url, &[("MIGRATE_ON_START", "false")]);
    let status = tokio::time::timeout(Duration::from_secs(30), unmigrated.child.wait())
        .await
        .expect("exits")
        .expect("status");
    assert!(!status.success());
    assert!(
        unmigrated.log().contains("flashsale migrate"),
        "{}",
        unmigrated.log()
    );
    // `flashsale migrate` is the deploy step: it migrates and exits.
    let migrated = Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .arg("migrate")
        .env_clear()
        .env("DATABASE_URL", &url)
        .output()
        .await
        .expect("run migrate");
    assert!(migrated.status.success(), "{migrated:?}");
    let mut after_step = Instance::start(&url, &[("MIGRATE_ON_START", "false")]);
    after_step.wait_healthy(&client).await;

    // The next release has run an (additive) migration this binary does not know.
    let (pool, url) = migrated_database().await;
    for statement in [
        "ALTER TABLE sales ADD COLUMN next_release_note text",
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (29991231000001, 'next release', true, '\\x00', 1)",
    ] {
        sqlx::query(statement)
            .execute(&pool)
            .await
            .expect("next release");
    }
    let mut previous = Instance::start(&url, &[]);
    previous.wait_healthy(&client).await;
    let sku = format!("beside-{}", Uuid::new_v4().simple());
    create_sale(
        &client,
        &previous.base,
        json!({"sku": sku, "name": "Beside", "stock": 1}),
    )
    .await;
    let bought = client
        .post(format!("{}/api/v1/sales/{sku}/purchases", previous.base))
        .header("content-type", "application/json")
        .body(json!({"userId": "buyer-1"}).to_string())
        .send()
        .await
        .expect("purchase");
    assert_eq!(bought.status(), 201);
}

/// What a buyer got from one request.
enum Outcome {
    /// A whole answer; for a 201, the buyer.
    Answered(Option<String>),
    /// Refused before being accepted (connection refused): never started.
    Refused,
    /// Cut off after the connection was accepted: what must never happen.
    Cut(String),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_purchase_load_loses_no_acknowledged_purchase_and_cuts_no_request() {
    let (pool, url) = migrated_database().await;
    let mut instance = Instance::start(
        &url,
        &[("SHUTDOWN_DELAY_MS", "1500"), ("SHUTDOWN_DRAIN_MS", "5000")],
    );
    let client = client();
    instance.wait_healthy(&client).await;
    let base = instance.base.clone();
    let sku = format!("drain-{}", Uuid::new_v4().simple());
    // A stream open through the shutdown gets a last message and ends.
    let sale = json!({"sku": sku, "name": "Drain", "stock": 1_000_000});
    let mut stream = sale_with_stream(&client, &base, sale).await;

    // The load balancer: takes the instance out as soon as /health says 503.
    let out = Arc::new(AtomicBool::new(false));
    let balancer = {
        let (client, base, out) = (client.clone(), base.clone(), out.clone());
        tokio::spawn(async move {
            loop {
                match client.get(format!("{base}/health")).send().await {
                    Ok(response) if response.status() == 503 => break,
                    Ok(_) => {}
                    Err(err) => panic!("/health failed before it said 503: {err}"),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            out.store(true, Ordering::SeqCst);
        })
    };
    let buyers: Vec<_> = (0..16)
        .map(|worker| {
            let (client, base, sku, out) = (client.clone(), base.clone(), sku.clone(), out.clone());
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                let mut n = 0;
                while !out.load(Ordering::SeqCst) {
                    n += 1;
                    let user = format!("w{worker}-{n}");
                    let sent = client
                        .post(format!("{base}/api/v1/sales/{sku}/purchases"))
                        .header("content-type", "application/json")
                        .body(json!({"userId": user}).to_string())
                        .send()
                        .await;
                    outcomes.push(match sent {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            match response.bytes().await {
                                Ok(_) => Outcome::Answered((status == 201).then_some(user)),
                                Err(err) => Outcome::Cut(format!("{user}: {err}")),
                            }
                        }
                        Err(err) if err.is_connect() => Outcome::Refused,
                        Err(err) => Outcome::Cut(format!("{user}: {err}")),
                    });
                }
                outcomes
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    instance.terminate();

    let mut last = String::new();
    while let Ok(Some(chunk)) = stream.chunk().await {
        last.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        last.contains("event: closing"),
        "the stream's last message: {last}"
    );

    balancer.await.expect("balancer");
    let mut acknowledged = Vec::new();
    let (mut answered, mut cut) = (0, Vec::new());
    for buyer in buyers {
        for outcome in buyer.await.expect("buyer") {
            match outcome {
                Outcome::Answered(user) => {
                    answered += 1;
                    acknowledged.extend(user);
                }
                Outcome::Refused => {}
                Outcome::Cut(err) => cut.push(err),
            }
        }
    }
    assert!(
        cut.is_empty(),
        "requests cut off: {cut:?}\n{}",
        instance.log()
    );
    assert!(answered > 0 && !acknowledged.is_empty());

    let status = tokio::time::timeout(Duration::from_secs(15), instance.child.wait())
        .await
        .expect("exits within its grace period")
        .expect("status");
    assert!(status.success(), "{status}\n{}", instance.log());

    let committed: Vec<String> = sqlx::query_scalar(
        "SELECT p.user_id FROM purchases p JOIN sales s ON s.id = p.sale_id
          WHERE s.sku = $1 AND p.user_id = ANY($2)",
    )
    .bind(&sku)
    .bind(&acknowledged)
    .fetch_all(&pool)
    .await
    .expect("purchases");
    assert_eq!(
        committed.len(),
        acknowledged.len(),
        "every acknowledged purchase is committed"
    );
    let log = instance.log();
    assert!(log.contains("draining"), "{log}");
}

#[tokio::test]
async fn metrics_want_the_token_when_one_is_set_and_health_fails_from_the_drains_start() {
    let store = flashsale::store::Store::new(fresh_database(2).await);
    let mut state = flashsale::api::ApiState::unlimited(
        store,
        flashsale::api::auth::AdminKey::new(ADMIN_KEY.into()),
    )
    .expect("state");
    let (switch, drain) = flashsale::api::drain::Drain::new();
    state.drain = drain;
    state.metrics_token = Some(flashsale::api::auth::AdminKey::new("scrape-token".into()));
    use poem::EndpointExt;
    let client = poem::test::TestClient::new(flashsale::api::app(state).boxed());

    for (token, expected) in [
        (None, 401),
        (Some("Bearer wrong-token"), 401),
        (Some("Bearer scrape-token"), 200),
    ] {
        let mut request = client.get("/metrics");
        if let Some(token) = token {
            request = request.header("Authorization", token);
        }
        let response = request.send().await;
        assert_eq!(response.0.status().as_u16(), expected, "{token:?}");
    }

    // Readiness answers 503 once the drain starts, liveness stays 200.
    assert_eq!(client.get("/health").send().await.0.status().as_u16(), 200);
    switch.start();
    let (status, body) = crate::support::status_and_json(client.get("/health").send().await).await;
    assert_eq!(
        (status.as_u16(), body["code"].as_str()),
        (503, Some("UNAVAILABLE"))
    );
    assert_eq!(
        client.get("/health/live").send().await.0.status().as_u16(),
        200
    );
}
