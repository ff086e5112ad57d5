//! Starting the real `clairon` binary and talking to it over HTTP.
//!
//! A [`TestApp`] is one `clairon serve` process with a fresh data directory, every
//! listener on port 0 (the ports are read from the process's stdout) and its stderr
//! kept in a file that is printed when the test fails.

use std::{
    fs::OpenOptions,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::Mutex,
    time::Duration,
};

use reqwest::{header, Response, StatusCode};
use serde_json::{json, Value};
use tokio::time::Instant;
use uuid::Uuid;

use crate::{sms::SmsSink, smtp::SmtpSink};

/// How long a test waits for something asynchronous (a delivery, a status).
pub const TIMEOUT: Duration = Duration::from_secs(20);
/// How long the process may take to print its five listening lines, and then to be ready.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long SIGTERM may take to stop the process.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);

pub const ADMIN_EMAIL: &str = "admin@clairon.test";

/// The five listeners, in the order the tests iterate them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Svc {
    Users,
    Notifications,
    Events,
    Logs,
    Web,
}

impl Svc {
    pub const ALL: [Svc; 5] = [
        Svc::Users,
        Svc::Notifications,
        Svc::Events,
        Svc::Logs,
        Svc::Web,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Svc::Users => "users",
            Svc::Notifications => "notifications",
            Svc::Events => "events",
            Svc::Logs => "logs",
            Svc::Web => "web",
        }
    }

    fn index(self) -> usize {
        Svc::ALL.iter().position(|s| *s == self).unwrap_or_default()
    }
}

/// Where the binary under test is: `$CLAIRON_BIN`, else `clairon` in the target
/// directory this test binary was built into (`target/debug/deps/e2e-…` →
/// `target/debug/clairon`).
pub fn clairon_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("CLAIRON_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test binary knows its own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in <target>/<profile>/deps");
    profile_dir.join(format!("clairon{}", std::env::consts::EXE_SUFFIX))
}

/// Settings a test may change; everything else gets a test-friendly default.
#[derive(Debug, Clone)]
pub struct Options {
    smtp_url: Option<String>,
    sms_url: Option<String>,
    sms_token: Option<String>,
    retry_max_attempts: u32,
    retry_initial_backoff_ms: u64,
    retry_max_backoff_ms: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            smtp_url: None,
            sms_url: None,
            sms_token: None,
            retry_max_attempts: 4,
            // Short backoffs keep retry tests quick.
            retry_initial_backoff_ms: 100,
            retry_max_backoff_ms: 1_000,
        }
    }
}

impl Options {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn smtp(mut self, sink: &SmtpSink) -> Self {
        self.smtp_url = Some(sink.url());
        self
    }

    pub fn sms(mut self, sink: &SmsSink) -> Self {
        self.sms_url = Some(sink.url());
        self
    }

    /// `CLAIRON_SMS_TOKEN`: sent to the SMS provider as a bearer token.
    pub fn sms_token(mut self, token: &str) -> Self {
        self.sms_token = Some(token.to_owned());
        self
    }

    pub fn retries(
        mut self,
        max_attempts: u32,
        initial_backoff_ms: u64,
        max_backoff_ms: u64,
    ) -> Self {
        self.retry_max_attempts = max_attempts;
        self.retry_initial_backoff_ms = initial_backoff_ms;
        self.retry_max_backoff_ms = max_backoff_ms;
        self
    }
}

/// A registered user with a live token.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: Uuid,
    pub email: String,
    pub password: String,
    pub phone: Option<String>,
    pub token: String,
}

/// The base URL (`http://ip:port`) of each listener.
#[derive(Debug, Clone, Default)]
pub struct Urls([String; 5]);

impl Urls {
    pub fn get(&self, svc: Svc) -> &str {
        &self.0[svc.index()]
    }
}

pub struct TestApp {
    root: tempfile::TempDir,
    env: Vec<(String, String)>,
    child: Option<Child>,
    starts: u32,
    urls: Urls,
    client: reqwest::Client,
    admin_password: String,
    admin_token: Mutex<Option<String>>,
}

impl TestApp {
    /// Starts `clairon serve` with a fresh data directory and waits until every
    /// listener answers `/health/ready`.
    pub async fn spawn(opts: Options) -> TestApp {
        let root = tempfile::Builder::new()
            .prefix("clairon-e2e-")
            .tempdir()
            .expect("a temporary directory");
        let data_dir = root.path().join("data");
        std::fs::create_dir_all(&data_dir).expect("the data directory");
        let admin_password = format!("Adm1n-{}", Uuid::new_v4().simple());
        let jwt_secret = format!(
            "e2e-secret-{}-{}",
            Uuid::new_v4().simple(),
            Uuid::new_v4().simple()
        );

        let mut env: Vec<(String, String)> = vec![
            ("CLAIRON_DATA_DIR".into(), data_dir.display().to_string()),
            ("CLAIRON_USERS_ADDR".into(), "127.0.0.1:0".into()),
            ("CLAIRON_NOTIFICATIONS_ADDR".into(), "127.0.0.1:0".into()),
            ("CLAIRON_EVENTS_ADDR".into(), "127.0.0.1:0".into()),
            ("CLAIRON_LOGS_ADDR".into(), "127.0.0.1:0".into()),
            ("CLAIRON_WEB_ADDR".into(), "127.0.0.1:0".into()),
            ("CLAIRON_ADMIN_EMAIL".into(), ADMIN_EMAIL.into()),
            ("CLAIRON_ADMIN_PASSWORD".into(), admin_password.clone()),
            ("CLAIRON_JWT_SECRET".into(), jwt_secret),
            ("CLAIRON_SMTP_FROM".into(), "noreply@clairon.test".into()),
            (
                "CLAIRON_RETRY_MAX_ATTEMPTS".into(),
                opts.retry_max_attempts.to_string(),
            ),
            (
                "CLAIRON_RETRY_INITIAL_BACKOFF_MS".into(),
                opts.retry_initial_backoff_ms.to_string(),
            ),
            (
                "CLAIRON_RETRY_MAX_BACKOFF_MS".into(),
                opts.retry_max_backoff_ms.to_string(),
            ),
            ("NO_COLOR".into(), "1".into()),
            // Well inside SHUTDOWN_TIMEOUT, so a slow drain shows as a failure here.
            ("CLAIRON_SHUTDOWN_GRACE_SECS".into(), "10".into()),
            (
                "CLAIRON_LOG".into(),
                std::env::var("E2E_CLAIRON_LOG").unwrap_or_else(|_| "info".into()),
            ),
        ];
        if let Some(url) = opts.smtp_url {
            env.push(("CLAIRON_SMTP_URL".into(), url));
        }
        if let Some(url) = opts.sms_url {
            env.push(("CLAIRON_SMS_URL".into(), url));
        }
        if let Some(token) = opts.sms_token {
            env.push(("CLAIRON_SMS_TOKEN".into(), token));
        }

        let mut app = TestApp {
            root,
            env,
            child: None,
            starts: 0,
            urls: Urls::default(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("an HTTP client"),
            admin_password,
            admin_token: Mutex::new(None),
        };
        app.start().await;
        app
    }

    /// The data folder of the running app (its SQLite files and event log).
    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    fn stderr_log(&self) -> PathBuf {
        self.root.path().join("clairon.stderr.log")
    }

    /// A `clairon` command with this app's environment and nothing inherited
    /// from the caller's `CLAIRON_*` variables.
    pub fn command(&self) -> Command {
        self.command_with_env(&self.env)
    }

    fn command_with_env(&self, env: &[(String, String)]) -> Command {
        let mut cmd = Command::new(clairon_bin());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CLAIRON_") {
                cmd.env_remove(key);
            }
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    async fn start(&mut self) {
        assert!(self.child.is_none(), "the app is already running");
        self.starts += 1;
        let bin = clairon_bin();
        assert!(
            bin.exists(),
            "the binary under test is missing at {}: build it with `cargo build -p clairon` \
             (scripts/test.sh does) or set CLAIRON_BIN",
            bin.display()
        );
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.stderr_log())
            .expect("the stderr log file");
        writeln!(log, "===== clairon serve, start #{} =====", self.starts)
            .expect("writing the stderr log");

        let mut cmd = self.command();
        cmd.arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log.try_clone().expect("the stderr log file")));
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stdout = child.stdout.take().expect("a piped stdout");
        self.child = Some(child);

        // A thread reads stdout for as long as the process lives (so it never blocks
        // on a full pipe), copies it into the log and forwards each line.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log, "[stdout] {line}");
                let _ = tx.send(line);
            }
        });

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut urls: [Option<String>; 5] = Default::default();
        while urls.iter().any(Option::is_none) {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(line)) => {
                    if let Some((svc, url)) = parse_listening_line(&line) {
                        urls[svc.index()] = Some(url);
                    }
                }
                Ok(None) => {
                    let status = self.child.as_mut().and_then(|c| c.wait().ok());
                    panic!(
                        "clairon exited ({status:?}) before announcing its five listeners; \
                         seen: {urls:?}"
                    );
                }
                Err(_) => panic!(
                    "clairon did not print its five `clairon: <service> listening on http://…` \
                     lines within {STARTUP_TIMEOUT:?}; seen: {urls:?}"
                ),
            }
        }
        self.urls = Urls(urls.map(Option::unwrap_or_default));

        for svc in Svc::ALL {
            let url = format!("{}/health/ready", self.urls.get(svc));
            loop {
                if let Some(status) = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                {
                    panic!("clairon exited ({status}) while waiting for {url}");
                }
                let last = match self
                    .client
                    .get(&url)
                    .timeout(Duration::from_secs(3))
                    .send()
                    .await
                {
                    Ok(r) if r.status() == StatusCode::OK => break,
                    Ok(r) => format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
                    Err(e) => e.to_string(),
                };
                assert!(
                    Instant::now() < deadline,
                    "{url} did not answer 200 within {STARTUP_TIMEOUT:?}; last answer: {last}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// SIGTERM, then waits for the process to exit on its own.
    pub async fn stop(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("the app is running");
        let pid = child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("running `kill -TERM`");
        assert!(sent.success(), "`kill -TERM {pid}` failed");
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("waiting for clairon") {
                self.child = None;
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                panic!("clairon did not exit within {SHUTDOWN_TIMEOUT:?} of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no chance to flush or finish anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL clairon");
            child.wait().expect("reaping clairon");
        }
    }

    /// Stops the process (gracefully, if it still runs) and starts it again on
    /// the same data directory. Ports change: use [`TestApp::url`] afterwards.
    pub async fn restart(&mut self) {
        if self.child.is_some() {
            let status = self.stop().await;
            assert!(status.success(), "clairon exited with {status} on SIGTERM");
        }
        self.start().await;
    }

    pub fn url(&self, svc: Svc, path: &str) -> String {
        format!("{}{}", self.urls.get(svc), path)
    }

    /// `host:port` of a listener, for WebSocket URLs.
    pub fn host(&self, svc: Svc) -> &str {
        self.urls.get(svc).trim_start_matches("http://")
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Runs `clairon token …` with this app's signing secret and returns the token.
    pub fn mint_token(&self, role: &str, subject: &str, ttl_secs: u64) -> String {
        self.mint_token_with_secret(role, subject, ttl_secs, None)
    }

    /// Like [`TestApp::mint_token`], optionally signed with another secret.
    pub fn mint_token_with_secret(
        &self,
        role: &str,
        subject: &str,
        ttl_secs: u64,
        secret: Option<&str>,
    ) -> String {
        let mut env = self.env.clone();
        if let Some(secret) = secret {
            env.retain(|(k, _)| k != "CLAIRON_JWT_SECRET");
            env.push(("CLAIRON_JWT_SECRET".into(), secret.into()));
        }
        let out = self
            .command_with_env(&env)
            .args([
                "token",
                "--role",
                role,
                "--subject",
                subject,
                "--ttl-secs",
                &ttl_secs.to_string(),
            ])
            .stdin(Stdio::null())
            .output()
            .expect("running `clairon token`");
        assert!(
            out.status.success(),
            "`clairon token` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .expect("`clairon token` printed a token")
            .to_owned()
    }

    // ----- users -----

    pub async fn register(&self, body: &Value) -> Response {
        self.client
            .post(self.url(Svc::Users, "/api/users/register"))
            .json(body)
            .send()
            .await
            .expect("POST /api/users/register")
    }

    /// Registers a new user with a unique email and a phone number, and logs in.
    pub async fn register_user(&self) -> TestUser {
        let phone = format!("+1555{:07}", Uuid::new_v4().as_u128() % 10_000_000);
        self.register_user_with(Some(&phone)).await
    }

    pub async fn register_user_with(&self, phone: Option<&str>) -> TestUser {
        let email = unique_email();
        let password = "correct horse battery".to_owned();
        let mut body = json!({
            "email": email,
            "password": password,
            "firstName": "Ada",
            "lastName": "Lovelace",
        });
        if let Some(phone) = phone {
            body["phoneNumber"] = json!(phone);
        }
        let (status, user) = json_of(self.register(&body).await).await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "registration answered {status}: {user}"
        );
        let id = uuid_field(&user, "userId");
        let token = self.login(&email, &password).await;
        TestUser {
            id,
            email,
            password,
            phone: phone.map(str::to_owned),
            token,
        }
    }

    pub async fn login_response(&self, email: &str, password: &str) -> Response {
        self.client
            .post(self.url(Svc::Users, "/api/users/login"))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .expect("POST /api/users/login")
    }

    /// Logs in and returns the access token.
    pub async fn login(&self, email: &str, password: &str) -> String {
        let (status, body) = json_of(self.login_response(email, password).await).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "login of {email} answered {status}: {body}"
        );
        assert_eq!(body["tokenType"], "Bearer", "login answer: {body}");
        body["accessToken"]
            .as_str()
            .unwrap_or_else(|| panic!("no accessToken in {body}"))
            .to_owned()
    }

    pub async fn admin_token(&self) -> String {
        if let Some(token) = self.admin_token.lock().expect("admin token lock").clone() {
            return token;
        }
        let token = self.login(ADMIN_EMAIL, &self.admin_password).await;
        *self.admin_token.lock().expect("admin token lock") = Some(token.clone());
        token
    }

    // ----- events -----

    /// `POST /api/events/notifications` with the given token and optional Idempotency-Key.
    pub async fn trigger(
        &self,
        token: &str,
        body: &Value,
        idempotency_key: Option<&str>,
    ) -> Response {
        let mut req = self
            .client
            .post(self.url(Svc::Events, "/api/events/notifications"))
            .bearer_auth(token)
            .json(body);
        if let Some(key) = idempotency_key {
            req = req.header("Idempotency-Key", key);
        }
        req.send().await.expect("POST /api/events/notifications")
    }

    /// Triggers a notification as admin; asserts 202 and returns its id.
    pub async fn trigger_notification(&self, body: &Value) -> Uuid {
        let token = self.admin_token().await;
        let (status, answer) = json_of(self.trigger(&token, body, None).await).await;
        assert_eq!(
            status,
            StatusCode::ACCEPTED,
            "triggering {body} answered {status}: {answer}"
        );
        uuid_field(&answer, "notificationId")
    }

    // ----- notifications -----

    pub async fn get_notification(&self, token: &str, id: Uuid) -> Response {
        self.client
            .get(self.url(Svc::Notifications, &format!("/api/notifications/{id}")))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET /api/notifications/{id}")
    }

    pub async fn list_notifications(&self, token: &str, query: &str) -> Value {
        let resp = self
            .client
            .get(self.url(Svc::Notifications, &format!("/api/notifications?{query}")))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET /api/notifications");
        let (status, body) = json_of(resp).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "listing notifications answered {status}: {body}"
        );
        body
    }

    /// Polls the notification (as admin) until `pred(status)` holds; returns it.
    pub async fn wait_for_status(
        &self,
        id: Uuid,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Value {
        let what = "reach the expected status";
        self.wait_for_notification(
            id,
            what,
            |n| n["status"].as_str().is_some_and(&pred),
            timeout,
        )
        .await
    }

    /// Polls the notification (as admin) until `pred` holds for it; returns it.
    pub async fn wait_for_notification(
        &self,
        id: Uuid,
        what: &str,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Value {
        let token = self.admin_token().await;
        eventually(
            &format!("notification {id} to {what}"),
            timeout,
            async || {
                let (status, body) = json_of(self.get_notification(&token, id).await).await;
                if status == StatusCode::OK && pred(&body) {
                    Ok(body)
                } else {
                    Err(format!("{status}: {body}"))
                }
            },
        )
        .await
    }

    pub async fn wait_until_sent(&self, id: Uuid) -> Value {
        self.wait_for_status(id, |s| s == "SENT", TIMEOUT).await
    }

    pub async fn get_as_admin(&self, svc: Svc, path_and_query: &str) -> (StatusCode, Value) {
        let token = self.admin_token().await;
        let resp = self
            .client
            .get(self.url(svc, path_and_query))
            .bearer_auth(token)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path_and_query}: {e}"));
        json_of(resp).await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.stderr_log()).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(400)..];
            eprintln!(
                "----- clairon output ({} lines, last {} shown; data dir {}) -----\n{}\n----- end of clairon output -----",
                lines.len(),
                tail.len(),
                self.root.path().join("data").display(),
                tail.join("\n")
            );
        }
    }
}

/// `clairon: <service> listening on http://<ip>:<port>` → (service, base URL).
fn parse_listening_line(line: &str) -> Option<(Svc, String)> {
    let rest = line.trim().strip_prefix("clairon: ")?;
    let (name, url) = rest.split_once(" listening on ")?;
    let svc = Svc::ALL.into_iter().find(|s| s.name() == name.trim())?;
    let url = url.trim().trim_end_matches('/');
    url.starts_with("http://").then(|| (svc, url.to_owned()))
}

pub fn unique_email() -> String {
    format!("user-{}@example.com", Uuid::new_v4().simple())
}

/// A recipient phone number nobody else uses.
pub fn unique_phone() -> String {
    format!("+1666{:07}", Uuid::new_v4().as_u128() % 10_000_000)
}

/// The status and JSON body of a response (`Null` for an empty or non-JSON body).
pub async fn json_of(resp: Response) -> (StatusCode, Value) {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let body = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(_) if text.is_empty() => Value::Null,
        Err(_) => Value::String(text),
    };
    (status, body)
}

pub fn content_type(resp: &Response) -> String {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Asserts the answer is a problem+json with the given status; returns its body.
pub async fn expect_problem(resp: Response, expected: StatusCode, what: &str) -> Value {
    let ct = content_type(&resp);
    let (status, body) = json_of(resp).await;
    assert_eq!(
        status, expected,
        "{what}: expected {expected}, got {status}: {body}"
    );
    assert!(
        ct.starts_with("application/problem+json"),
        "{what}: expected content-type application/problem+json, got {ct:?} ({body})"
    );
    assert_eq!(
        body["status"],
        expected.as_u16(),
        "{what}: problem body {body}"
    );
    body
}

pub fn uuid_field(body: &Value, field: &str) -> Uuid {
    body[field]
        .as_str()
        .and_then(|s| Uuid::parse_str(s).ok())
        .unwrap_or_else(|| panic!("no UUID `{field}` in {body}"))
}

/// The `items` of a page.
pub fn items(page: &Value) -> &Vec<Value> {
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("not a page (no `items` array): {page}"))
}

/// Calls `check` until it returns `Ok`, at most `timeout`; panics with the last error.
pub async fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(v) => return v,
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn listening_lines_parse() {
    assert_eq!(
        parse_listening_line("clairon: notifications listening on http://127.0.0.1:4321"),
        Some((Svc::Notifications, "http://127.0.0.1:4321".into()))
    );
    assert_eq!(
        parse_listening_line("clairon: bogus listening on http://127.0.0.1:1"),
        None
    );
    assert_eq!(parse_listening_line("2024 INFO users listening"), None);
}
