use std::{
    collections::BTreeMap,
    fs::OpenOptions,
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use clairon_bus::kafka::testing::TestTopics;
use clairon_store::{
    testing::{fresh_database_with, TestDatabase},
    Backend,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{clairon_bin, eventually, json_of, unique_email, unique_phone, TestUser};

pub const ADMIN_EMAIL: &str = "admin@clairon.test";

/// Tests that stop Kafka or MariaDB must not run beside the others: they take
/// this lock exclusively, every other cluster shares it.
static INFRA: std::sync::LazyLock<std::sync::Arc<tokio::sync::RwLock<()>>> =
    std::sync::LazyLock::new(Default::default);

#[allow(dead_code)]
enum InfraGuard {
    Shared(tokio::sync::OwnedRwLockReadGuard<()>),
    Exclusive(tokio::sync::OwnedRwLockWriteGuard<()>),
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root")
}

/// Runs `scripts/infra.sh <cmd>` (e.g. `kafka-stop`), asserting it succeeds.
pub fn infra_sh(cmd: &str) {
    let status = Command::new(repo_root().join("scripts/infra.sh"))
        .arg(cmd)
        .stdout(Stdio::null())
        .status()
        .expect("running scripts/infra.sh");
    assert!(status.success(), "scripts/infra.sh {cmd} failed");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Proc {
    services: &'static str,
    addr_var: &'static str,
    port: u16,
    extra: Vec<(String, String)>,
    child: Option<Child>,
}

/// Five (or more) `clairon` processes sharing one Kafka prefix and one database.
pub struct Cluster {
    root: tempfile::TempDir,
    env: Vec<(String, String)>,
    procs: std::sync::Mutex<BTreeMap<String, Proc>>,
    client: reqwest::Client,
    admin_password: String,
    admin_token: std::sync::Mutex<Option<String>>,
    pub prefix: String,
    pub brokers: String,
    // Dropped after the processes are killed: the topics, groups and
    // database go with the cluster.
    _topics: TestTopics,
    _db: TestDatabase,
    _infra: InfraGuard,
}

pub struct ClusterOptions {
    pub sms_url: Option<String>,
    pub smtp_url: Option<String>,
    pub notification_replicas: usize,
    /// Replicas of every other service too (users, events, logs, web).
    pub replicas: usize,
    pub max_attempts: u32,
    /// The test stops shared infrastructure: run it alone.
    pub exclusive: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            sms_url: None,
            smtp_url: None,
            notification_replicas: 1,
            replicas: 1,
            max_attempts: 3,
            exclusive: false,
        }
    }
}

impl Cluster {
    pub async fn start(opts: ClusterOptions) -> Cluster {
        let guard = if opts.exclusive {
            InfraGuard::Exclusive(INFRA.clone().write_owned().await)
        } else {
            InfraGuard::Shared(INFRA.clone().read_owned().await)
        };
        let topics = TestTopics::new();
        let (brokers, prefix) = (topics.brokers.clone(), topics.prefix.clone());
        let db = fresh_database_with(Backend::MySql, 1).await;
        // The processes open their own pools; this one is not needed.
        db.db.pool.close().await;
        let db_url = db.url.clone();
        let admin_password = format!("Adm1n-{}", Uuid::new_v4().simple());
        let mut env: Vec<(String, String)> = vec![
            ("CLAIRON_KAFKA_BROKERS".into(), brokers.clone()),
            ("CLAIRON_KAFKA_TOPIC_PREFIX".into(), prefix.clone()),
            ("CLAIRON_KAFKA_PARTITIONS".into(), "4".into()),
            ("CLAIRON_DATABASE_URL".into(), db_url),
            (
                "CLAIRON_JWT_SECRET".into(),
                format!(
                    "e2e-{}-{}",
                    Uuid::new_v4().simple(),
                    Uuid::new_v4().simple()
                ),
            ),
            ("CLAIRON_ADMIN_EMAIL".into(), ADMIN_EMAIL.into()),
            ("CLAIRON_ADMIN_PASSWORD".into(), admin_password.clone()),
            (
                "CLAIRON_RETRY_MAX_ATTEMPTS".into(),
                opts.max_attempts.to_string(),
            ),
            ("CLAIRON_RETRY_INITIAL_BACKOFF_MS".into(), "200".into()),
            ("CLAIRON_RETRY_MAX_BACKOFF_MS".into(), "2000".into()),
            ("CLAIRON_SHUTDOWN_GRACE_SECS".into(), "10".into()),
            (
                "CLAIRON_LOG".into(),
                std::env::var("E2E_CLAIRON_LOG").unwrap_or_else(|_| "info,librdkafka=warn".into()),
            ),
            ("NO_COLOR".into(), "1".into()),
        ];
        if let Some(u) = opts.sms_url {
            env.push(("CLAIRON_SMS_URL".into(), u));
        }
        if let Some(u) = opts.smtp_url {
            env.push(("CLAIRON_SMTP_URL".into(), u));
            env.push(("CLAIRON_SMTP_FROM".into(), "noreply@clairon.test".into()));
        }
        let mut procs = BTreeMap::new();
        let add = |procs: &mut BTreeMap<String, Proc>,
                   name: &str,
                   services: &'static str,
                   addr_var: &'static str,
                   extra: Vec<(String, String)>| {
            procs.insert(
                name.to_owned(),
                Proc {
                    services,
                    addr_var,
                    port: free_port(),
                    extra,
                    child: None,
                },
            );
        };
        let r = opts.replicas.max(1);
        for i in 1..=r {
            let sfx = if i == 1 {
                String::new()
            } else {
                format!("-{i}")
            };
            add(
                &mut procs,
                &format!("users{sfx}"),
                "users",
                "CLAIRON_USERS_ADDR",
                vec![],
            );
            add(
                &mut procs,
                &format!("events{sfx}"),
                "events",
                "CLAIRON_EVENTS_ADDR",
                vec![],
            );
            add(
                &mut procs,
                &format!("logs{sfx}"),
                "logs",
                "CLAIRON_LOGS_ADDR",
                vec![],
            );
        }
        let users_url = format!("http://127.0.0.1:{}", procs["users"].port);
        for i in 1..=opts.notification_replicas.max(r) {
            add(
                &mut procs,
                &format!("notifications-{i}"),
                "notifications",
                "CLAIRON_NOTIFICATIONS_ADDR",
                vec![("CLAIRON_USERS_URL".into(), users_url.clone())],
            );
        }
        let url_of =
            |p: &BTreeMap<String, Proc>, n: &str| format!("http://127.0.0.1:{}", p[n].port);
        for i in 1..=r {
            let name = if i == 1 {
                "web".to_owned()
            } else {
                format!("web-{i}")
            };
            let web_extra = vec![
                ("CLAIRON_USERS_URL".into(), url_of(&procs, "users")),
                (
                    "CLAIRON_NOTIFICATIONS_URL".into(),
                    url_of(&procs, "notifications-1"),
                ),
                ("CLAIRON_EVENTS_URL".into(), url_of(&procs, "events")),
                ("CLAIRON_LOGS_URL".into(), url_of(&procs, "logs")),
                ("CLAIRON_WEB_GROUP".into(), format!("web-{i}")),
            ];
            procs.insert(
                name,
                Proc {
                    services: "web",
                    addr_var: "CLAIRON_WEB_ADDR",
                    port: free_port(),
                    extra: web_extra,
                    child: None,
                },
            );
        }
        let cluster = Cluster {
            root: tempfile::Builder::new()
                .prefix("clairon-dist-")
                .tempdir()
                .expect("a temp dir"),
            env,
            procs: std::sync::Mutex::new(procs),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("a client"),
            admin_password,
            admin_token: Default::default(),
            prefix,
            brokers,
            _topics: topics,
            _db: db,
            _infra: guard,
        };
        // Users first: it creates the administrator the others' tests log in as.
        cluster.start_proc("users").await;
        let names: Vec<String> = cluster
            .names()
            .into_iter()
            .filter(|n| n != "users")
            .collect();
        for n in &names {
            cluster.spawn_proc(n);
        }
        for n in &names {
            cluster.wait_ready(n).await;
        }
        cluster
    }

    pub fn names(&self) -> Vec<String> {
        self.procs.lock().expect("lock").keys().cloned().collect()
    }

    fn spawn_proc(&self, name: &str) {
        let log_path = self.root.path().join(format!("{name}.log"));
        let data_dir = self.root.path().join(name);
        std::fs::create_dir_all(&data_dir).expect("a data dir");
        let mut procs = self.procs.lock().expect("lock");
        let p = procs.get_mut(name).expect("a known process");
        assert!(p.child.is_none(), "{name} already runs");
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("a log file");
        writeln!(log, "===== start =====").expect("writing the log");
        let mut cmd = Command::new(clairon_bin());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("CLAIRON_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(p.extra.iter().map(|(k, v)| (k, v)))
            .env("CLAIRON_DATA_DIR", &data_dir)
            .env(p.addr_var, format!("127.0.0.1:{}", p.port))
            .env(
                "CLAIRON_KAFKA_INSTANCE_ID",
                format!("{}{name}", self.prefix),
            )
            .args(["serve", "--services", p.services])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log.try_clone().expect("the log")));
        let mut child = cmd.spawn().expect("starting clairon");
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log, "[stdout] {line}");
            }
        });
        p.child = Some(child);
    }

    fn exited(&self, name: &str) -> Option<std::process::ExitStatus> {
        self.procs
            .lock()
            .expect("lock")
            .get_mut(name)
            .and_then(|p| p.child.as_mut())
            .and_then(|c| c.try_wait().ok().flatten())
    }

    async fn wait_ready(&self, name: &str) {
        let url = self.url(name, "/health/ready");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.exited(name) {
                panic!(
                    "{name} exited ({status}) while starting; log:\n{}",
                    self.log_tail(name)
                );
            }
            if let Ok(r) = self
                .client
                .get(&url)
                .timeout(Duration::from_secs(3))
                .send()
                .await
            {
                if r.status() == StatusCode::OK {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{url} not ready within 60 s; log:\n{}",
                self.log_tail(name)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn start_proc(&self, name: &str) {
        self.spawn_proc(name);
        self.wait_ready(name).await;
    }

    pub fn log_tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.root.path().join(format!("{name}.log")))
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn kill9(&self, name: &str) {
        let child = self
            .procs
            .lock()
            .expect("lock")
            .get_mut(name)
            .and_then(|p| p.child.take());
        if let Some(mut c) = child {
            c.kill().expect("SIGKILL");
            c.wait().expect("reaping");
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub async fn stop(&self, name: &str) {
        let child = self
            .procs
            .lock()
            .expect("lock")
            .get_mut(name)
            .and_then(|p| p.child.take());
        let Some(mut c) = child else { return };
        let pid = c.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.try_wait().expect("waiting") {
                assert!(
                    status.success(),
                    "{name} exited with {status} on SIGTERM; log:\n{}",
                    self.log_tail(name)
                );
                return;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("{name} did not exit within 30 s of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, name: &str, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}{path}",
            self.procs.lock().expect("lock")[name].port
        )
    }

    pub fn web(&self, path: &str) -> String {
        self.url("web", path)
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub async fn admin_token(&self) -> String {
        if let Some(t) = self.admin_token.lock().expect("lock").clone() {
            return t;
        }
        let t = self.login(ADMIN_EMAIL, &self.admin_password).await;
        *self.admin_token.lock().expect("lock") = Some(t.clone());
        t
    }

    pub async fn login(&self, email: &str, password: &str) -> String {
        let r = self
            .client
            .post(self.web("/api/users/login"))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .expect("login");
        let (s, b) = json_of(r).await;
        assert_eq!(s, StatusCode::OK, "login answered {s}: {b}");
        b["accessToken"].as_str().expect("a token").to_owned()
    }

    pub async fn register_user(&self) -> TestUser {
        let email = unique_email();
        let password = "correct-horse-battery".to_owned();
        let phone = unique_phone();
        let r = self
            .client
            .post(self.web("/api/users/register"))
            .json(&json!({"email": email, "password": password, "firstName": "Dist", "lastName": "Ributed", "phoneNumber": phone}))
            .send()
            .await
            .expect("register");
        let (s, b) = json_of(r).await;
        assert_eq!(s, StatusCode::CREATED, "register answered {s}: {b}");
        let id = Uuid::parse_str(b["userId"].as_str().expect("userId")).expect("a uuid");
        let token = self.login(&email, &password).await;
        TestUser {
            id,
            email,
            password,
            phone: Some(phone),
            token,
        }
    }

    /// POSTs a notification through the event publisher's own port; `None` when
    /// the request was not accepted (so callers can count only accepted ones).
    pub async fn try_trigger(&self, body: &Value) -> Option<Uuid> {
        self.try_trigger_via("events", body).await
    }

    /// Like [`Cluster::try_trigger`], through the named event publisher process.
    pub async fn try_trigger_via(&self, name: &str, body: &Value) -> Option<Uuid> {
        let token = self.admin_token().await;
        let r = self
            .client
            .post(self.url(name, "/api/events/notifications"))
            .bearer_auth(token)
            .json(body)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .ok()?;
        if r.status() != StatusCode::ACCEPTED {
            return None;
        }
        let b: Value = r.json().await.ok()?;
        b["notificationId"]
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
    }

    pub async fn status_of(&self, id: Uuid) -> Option<String> {
        let token = self.admin_token().await;
        let r = self
            .client
            .get(self.url("notifications-1", &format!("/api/notifications/{id}")))
            .bearer_auth(token)
            .send()
            .await
            .ok()?;
        if r.status() != StatusCode::OK {
            return None;
        }
        let b: Value = r.json().await.ok()?;
        b["status"].as_str().map(str::to_owned)
    }

    /// Waits until every id has a final status, and asserts that each is SENT.
    pub async fn wait_all_sent(&self, ids: &[Uuid], timeout: Duration) {
        let by = self.wait_all_final(ids, timeout).await;
        assert_eq!(
            by.get("SENT").map(Vec::len),
            Some(ids.len()),
            "{:?}",
            by.keys()
        );
    }

    /// Waits until every id has a final status; returns the ids per status.
    async fn wait_all_final(&self, ids: &[Uuid], timeout: Duration) -> BTreeMap<String, Vec<Uuid>> {
        eventually(
            &format!("{} notifications to end SENT or DEAD", ids.len()),
            timeout,
            async || {
                let mut by: BTreeMap<String, Vec<Uuid>> = BTreeMap::new();
                for id in ids {
                    let s = self
                        .status_of(*id)
                        .await
                        .unwrap_or_else(|| "MISSING".into());
                    by.entry(s).or_default().push(*id);
                }
                let pending: usize = by
                    .iter()
                    .filter(|(s, _)| *s != "SENT" && *s != "DEAD")
                    .map(|(_, v)| v.len())
                    .sum();
                if pending == 0 {
                    Ok(by)
                } else {
                    Err(format!(
                        "not final yet: {:?}",
                        by.iter()
                            .map(|(s, v)| (s.clone(), v.len()))
                            .collect::<Vec<_>>()
                    ))
                }
            },
        )
        .await
    }
}

/// Sends PUSH notifications titled `title` until one arrives live on `socket`
/// (a web replica reads pushes from the end of the log once it has joined its
/// group; before that they wait in the inbox for the next connection).
/// Returns the frame that arrived.
pub async fn push_until_live(
    c: &Cluster,
    socket: &mut crate::ws::Socket,
    user: Uuid,
    title: &str,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        assert!(Instant::now() < deadline, "no live push within 90 s");
        let push = c
            .try_trigger(&json!({"userId": user, "type": "PUSH", "title": title, "message": "m"}))
            .await
            .expect("the push was accepted");
        let until = tokio::time::Instant::now() + Duration::from_secs(5);
        while let Some(frame) = crate::ws::next_json(
            socket,
            until.saturating_duration_since(tokio::time::Instant::now()),
        )
        .await
        {
            if frame["notificationId"] == push.to_string() {
                return frame;
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let names = self.names();
        for n in &names {
            self.kill9(n);
        }
        if std::thread::panicking() {
            for n in &names {
                eprintln!("----- {n} -----\n{}", self.log_tail(n));
            }
        }
    }
}
