//! The platform under test: spawned by the bench (`--start`: one process with
//! every service, or with `--split` one process per service) or already
//! running (`--web-url`). Only loopback addresses are accepted.

use std::{
    collections::{BTreeMap, VecDeque},
    net::{IpAddr, Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context};
use reqwest::Url;
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::{Child, Command},
    sync::mpsc,
    task::JoinHandle,
    time::Instant,
};
use uuid::Uuid;

use crate::{progress, Args};

/// Services the `clairon` binary announces, each with a `CLAIRON_<NAME>_ADDR`.
/// Split mode starts them in this order: users first, as it creates the admin.
const SERVICES: [&str; 5] = ["users", "notifications", "events", "logs", "web"];

/// How long to wait for the other services once the key service is announced.
const ANNOUNCE_GRACE: Duration = Duration::from_secs(2);

/// Lines of a split-mode process's stderr kept for error messages.
const STDERR_TAIL_LINES: usize = 40;

/// Prefix of the database split mode creates. The account `scripts/infra.sh`
/// provisions may only create `clairon_test_%` databases, and a name of the
/// form `clairon_test_<unix secs>_…` is dropped by a later test run once it is
/// an hour old, should the bench be killed before it drops it itself.
const DATABASE_PREFIX: &str = "clairon_test_";

pub struct Target {
    /// Web gateway base URL, e.g. `http://127.0.0.1:8085/`.
    pub web: Url,
    pub admin_email: String,
    pub admin_password: String,
    spawned: Option<Spawned>,
}

/// Spawned `clairon` processes, their temporary folder and, in split mode,
/// their database; dropping it kills the processes and removes the folder and
/// the database, so an error or Ctrl-C cleans up too.
struct Spawned {
    procs: Vec<Proc>,
    root: PathBuf,
    database: Option<FreshDatabase>,
    /// Kafka topic prefix the bench made up and the brokers, for the clean-up hint.
    topic_prefix: Option<(String, String)>,
}

impl Spawned {
    fn new(root: PathBuf) -> Spawned {
        Spawned {
            procs: Vec::new(),
            root,
            database: None,
            topic_prefix: None,
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.child.start_kill();
        }
        if let Some(db) = self.database.take() {
            // Dropping a database waits for the locks of its open sessions:
            // let the killed processes go first.
            let until = std::time::Instant::now() + Duration::from_secs(5);
            for p in &mut self.procs {
                while matches!(p.child.try_wait(), Ok(None)) && std::time::Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            match db.drop_database() {
                Ok(()) => progress!("dropped the database {}", db.name),
                Err(e) => progress!("warning: {e:#}"),
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
        // A broker keeps every partition it is given: the run's topics go with it.
        if let Some((prefix, brokers)) = &self.topic_prefix {
            clairon_bus::kafka::testing::delete_prefix(brokers, prefix);
            progress!("deleted the Kafka topics and consumer groups prefixed {prefix}");
        }
    }
}

impl Target {
    pub async fn open(args: &Args) -> anyhow::Result<Target> {
        let mut target = if args.start {
            Self::spawn(args).await?
        } else {
            let raw = args
                .web_url
                .as_deref()
                .context("--web-url or --start is required")?;
            let web = loopback_url(raw)?;
            let (Some(email), Some(password)) = (&args.admin_email, &args.admin_password) else {
                bail!("--web-url needs --admin-email and --admin-password");
            };
            progress!("target: {web}");
            Target {
                web,
                admin_email: email.clone(),
                admin_password: password.clone(),
                spawned: None,
            }
        };
        let timeout = Duration::from_secs(args.startup_timeout_secs);
        let procs = match target.spawned.as_mut() {
            Some(s) => s.procs.as_mut_slice(),
            None => &mut [],
        };
        wait_ready(&target.web, Instant::now() + timeout, procs).await?;
        Ok(target)
    }

    async fn spawn(args: &Args) -> anyhow::Result<Target> {
        let bin = match &args.clairon_bin {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .context("locating the bench executable")?
                .with_file_name(format!("clairon{}", std::env::consts::EXE_SUFFIX)),
        };
        if !bin.is_file() {
            bail!(
                "clairon binary not found at {} (build it with `cargo build --release -p clairon` \
                 or pass --clairon-bin)",
                bin.display()
            );
        }
        let admin_email = args
            .admin_email
            .clone()
            .unwrap_or_else(|| "bench-admin@bench.clairon.test".to_string());
        let admin_password = args
            .admin_password
            .clone()
            .unwrap_or_else(|| format!("Admin-{}", Uuid::new_v4().simple()));
        let root = std::env::temp_dir().join(format!("clairon-bench-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        // Owns the folder from here on, so every error below removes it.
        let spawned = Spawned::new(root);
        let (web, spawned) = if args.split {
            spawn_split(args, &bin, &admin_email, &admin_password, spawned).await?
        } else {
            spawn_single(args, &bin, &admin_email, &admin_password, spawned).await?
        };
        Ok(Target {
            web,
            admin_email,
            admin_password,
            spawned: Some(spawned),
        })
    }

    /// Stops the spawned platform (kill, reap, remove the temporary folder
    /// and, in split mode, the database).
    pub async fn shutdown(mut self) {
        if let Some(mut s) = self.spawned.take() {
            for p in &mut s.procs {
                // A process that died mid-run explains a run's errors.
                if let Some(report) = p.exit_report().await {
                    progress!("warning: {report}");
                }
                let _ = p.child.start_kill();
            }
            for p in &mut s.procs {
                match tokio::time::timeout(Duration::from_secs(10), p.child.wait()).await {
                    Ok(Ok(status)) => progress!("stopped {} ({status})", p.label),
                    Ok(Err(e)) => progress!("warning: waiting for {}: {e}", p.label),
                    Err(_) => progress!("warning: {} did not exit within 10 s of SIGKILL", p.label),
                }
            }
            drop(s);
        }
    }
}

/// A `clairon` command configured only by what the bench and `--env` say: a
/// `CLAIRON_*` variable exported in the caller's shell (`scripts/infra.sh up`
/// exports the brokers) must not quietly move a run onto other engines.
fn clairon_command(bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CLAIRON_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// One `clairon` process with every service, each on an ephemeral port it
/// announces on stdout.
async fn spawn_single(
    args: &Args,
    bin: &Path,
    admin_email: &str,
    admin_password: &str,
    mut spawned: Spawned,
) -> anyhow::Result<(Url, Spawned)> {
    let mut cmd = clairon_command(bin);
    cmd.env("CLAIRON_DATA_DIR", &spawned.root);
    for svc in SERVICES {
        cmd.env(addr_var(svc), "127.0.0.1:0");
    }
    cmd.env("CLAIRON_ADMIN_EMAIL", admin_email)
        .env("CLAIRON_ADMIN_PASSWORD", admin_password)
        .env("CLAIRON_LOG", "warn");
    for (k, v) in &args.envs {
        cmd.env(k, v);
    }
    let proc = Proc::spawn(cmd, bin, "clairon", "clairon", false)?;
    progress!(
        "started {} (pid {}, data dir {})",
        bin.display(),
        proc.child.id().unwrap_or(0),
        spawned.root.display()
    );
    spawned.procs.push(proc);
    let deadline = Instant::now() + Duration::from_secs(args.startup_timeout_secs);
    let mut services = spawned.procs[0]
        .announcements(&SERVICES, "web", deadline)
        .await?;
    let web = services.remove("web").context("web gateway announcement")?;
    Ok((web, spawned))
}

/// One `clairon serve --services <svc>` process per service, as a real
/// deployment runs them: users first (it creates the admin the others'
/// callers log in as), then the other four together.
async fn spawn_split(
    args: &Args,
    bin: &Path,
    admin_email: &str,
    admin_password: &str,
    mut spawned: Spawned,
) -> anyhow::Result<(Url, Spawned)> {
    let engines = Engines::from_envs(&args.envs)?;
    let database = FreshDatabase::create(&engines.database_url)?;
    let database_url = database.url.clone();
    progress!("created the database {}", database.name);
    spawned.database = Some(database);

    // The others need every URL before they start, so the ports are chosen
    // here; all five are held at once so they differ.
    let held = SERVICES
        .iter()
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("picking a free port"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut ports = BTreeMap::new();
    for (svc, l) in SERVICES.iter().zip(&held) {
        let port = l.local_addr().context("reading a free port")?.port();
        ports.insert(*svc, port);
    }
    drop(held);
    let url_of = |svc: &str| format!("http://127.0.0.1:{}", ports[svc]);

    let mut common: Vec<(String, String)> = vec![
        (
            "CLAIRON_JWT_SECRET".into(),
            format!(
                "bench-{}{}",
                Uuid::new_v4().simple(),
                Uuid::new_v4().simple()
            ),
        ),
        ("CLAIRON_ADMIN_EMAIL".into(), admin_email.into()),
        ("CLAIRON_ADMIN_PASSWORD".into(), admin_password.into()),
        ("CLAIRON_LOG".into(), "warn".into()),
    ];
    if !engines.has_topic_prefix {
        let prefix = format!("bench-{}-{}-", unix_secs(), &random_hex()[..8]);
        progress!("Kafka topic prefix {prefix}");
        common.push(("CLAIRON_KAFKA_TOPIC_PREFIX".into(), prefix.clone()));
        spawned.topic_prefix = Some((prefix, engines.brokers.clone()));
    }
    common.extend(args.envs.iter().cloned());
    // The topology and the database are the bench's: set after the caller's pairs.
    common.push(("CLAIRON_DATABASE_URL".into(), database_url));

    let root = spawned.root.clone();
    let command = |svc: &str| -> anyhow::Result<Command> {
        let data_dir = root.join(svc);
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let mut cmd = clairon_command(bin);
        cmd.args(["serve", "--services", svc])
            .envs(common.iter().map(|(k, v)| (k, v)))
            .env("CLAIRON_DATA_DIR", &data_dir)
            // `serve --services` binds only the services it runs, so the other
            // four addresses (defaults included) are never bound.
            .env(addr_var(svc), format!("127.0.0.1:{}", ports[svc]));
        match svc {
            "notifications" => {
                cmd.env("CLAIRON_USERS_URL", url_of("users"));
            }
            "web" => {
                for upstream in ["users", "notifications", "events", "logs"] {
                    cmd.env(
                        format!("CLAIRON_{}_URL", upstream.to_ascii_uppercase()),
                        url_of(upstream),
                    );
                }
            }
            _ => {}
        }
        Ok(cmd)
    };

    let timeout = Duration::from_secs(args.startup_timeout_secs);
    let mut urls = BTreeMap::new();
    for batch in [&SERVICES[..1], &SERVICES[1..]] {
        for svc in batch {
            let proc = Proc::spawn(
                command(svc)?,
                bin,
                &format!("the {svc} process"),
                &format!("clairon {svc}"),
                true,
            )?;
            progress!(
                "started {} serve --services {svc} (pid {}, port {})",
                bin.display(),
                proc.child.id().unwrap_or(0),
                ports[svc]
            );
            spawned.procs.push(proc);
        }
        let deadline = Instant::now() + timeout;
        let first = spawned.procs.len() - batch.len();
        for (i, svc) in batch.iter().enumerate() {
            let mut announced = spawned.procs[first + i]
                .announcements(&[svc], svc, deadline)
                .await?;
            let url = announced
                .remove(*svc)
                .with_context(|| format!("the {svc} announcement"))?;
            if url.port() != Some(ports[svc]) {
                bail!(
                    "the {svc} process listens on {url}, not on the port {} the others were given",
                    ports[svc]
                );
            }
            wait_ready(&url, deadline, &mut spawned.procs).await?;
            urls.insert(*svc, url);
        }
    }
    let web = urls.remove("web").context("the web gateway URL")?;
    Ok((web, spawned))
}

/// One spawned `clairon`; its stdout (and in split mode its stderr) is read
/// for its whole life, so it never blocks on a full pipe.
struct Proc {
    /// For messages: `clairon`, `the users process`.
    label: String,
    child: Child,
    /// `(service, url)` of each `clairon: <service> listening on <url>` line.
    announced: mpsc::UnboundedReceiver<(String, String)>,
    stderr: Option<StderrTail>,
}

/// The last lines of a captured stderr, and the task reading it.
struct StderrTail {
    lines: Arc<Mutex<VecDeque<String>>>,
    reader: JoinHandle<()>,
}

impl Proc {
    /// Spawns `cmd`; other stdout lines and captured stderr lines go to the
    /// bench's stderr prefixed `[tag]`.
    fn spawn(
        mut cmd: Command,
        bin: &Path,
        label: &str,
        tag: &str,
        capture_stderr: bool,
    ) -> anyhow::Result<Proc> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(if capture_stderr {
                Stdio::piped()
            } else {
                Stdio::inherit()
            })
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, announced) = mpsc::unbounded_channel();
        let out_tag = tag.to_string();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match parse_announce(&line) {
                    Some(found) => {
                        let _ = tx.send(found);
                    }
                    None => eprintln!("[{out_tag}] {line}"),
                }
            }
        });
        let stderr = child
            .stderr
            .take()
            .map(|err| forward_stderr(err, tag.to_string()));
        Ok(Proc {
            label: label.to_string(),
            child,
            announced,
            stderr,
        })
    }

    /// Waits for the announcements of `wanted` until `deadline`. Once `key`
    /// is announced the others get [`ANNOUNCE_GRACE`], and a missing one is
    /// only a warning.
    async fn announcements(
        &mut self,
        wanted: &[&str],
        key: &str,
        deadline: Instant,
    ) -> anyhow::Result<BTreeMap<String, Url>> {
        let started = Instant::now();
        let mut services: BTreeMap<String, Url> = BTreeMap::new();
        let mut key_seen: Option<Instant> = None;
        while !wanted.iter().all(|s| services.contains_key(*s)) {
            let until = match key_seen {
                Some(t) => deadline.min(t + ANNOUNCE_GRACE),
                None => deadline,
            };
            tokio::select! {
                found = self.announced.recv() => match found {
                    Some((svc, url)) => {
                        let url = loopback_url(&url)
                            .with_context(|| format!("{svc} announced {url}"))?;
                        progress!("{svc} listening on {url}");
                        if svc == key {
                            key_seen = Some(Instant::now());
                        }
                        services.insert(svc, url);
                    }
                    None => {
                        if key_seen.is_some() {
                            break;
                        }
                        let status =
                            tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
                        let tail = self.stderr_tail().await;
                        bail!(
                            "{} exited before announcing the {key} listener ({}){tail}",
                            self.label,
                            match status {
                                Ok(Ok(s)) => s.to_string(),
                                Ok(Err(e)) => e.to_string(),
                                Err(_) => "stdout closed".to_string(),
                            }
                        );
                    }
                },
                _ = tokio::time::sleep_until(until) => {
                    if key_seen.is_some() {
                        break;
                    }
                    bail!(
                        "{} did not announce `clairon: {key} listening on http://…` within {:.0} s",
                        self.label,
                        deadline.saturating_duration_since(started).as_secs_f64()
                    );
                }
            }
        }
        let missing: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|s| !services.contains_key(*s))
            .collect();
        if !missing.is_empty() {
            progress!("warning: no announcement for {}", missing.join(", "));
        }
        Ok(services)
    }

    /// `Some(description)` when the process has exited.
    async fn exit_report(&mut self) -> Option<String> {
        let status = match self.child.try_wait() {
            Ok(Some(status)) => status.to_string(),
            Ok(None) => return None,
            Err(e) => format!("status unknown: {e}"),
        };
        let tail = self.stderr_tail().await;
        Some(format!("{} exited ({status}){tail}", self.label))
    }

    /// The last captured stderr lines as a message suffix, or nothing.
    async fn stderr_tail(&mut self) -> String {
        let Some(tail) = &mut self.stderr else {
            return String::new();
        };
        // The reader may not have reached the last lines yet (a finished
        // handle must not be polled again).
        if !tail.reader.is_finished() {
            let _ = tokio::time::timeout(Duration::from_secs(1), &mut tail.reader).await;
        }
        let lines = tail.lines.lock().unwrap_or_else(|e| e.into_inner());
        if lines.is_empty() {
            return "; no stderr output".to_string();
        }
        let text: Vec<&str> = lines.iter().map(String::as_str).collect();
        format!("; last stderr lines:\n{}", text.join("\n"))
    }
}

/// Copies a process's stderr to the bench's, prefixed `[tag]`, keeping the
/// last [`STDERR_TAIL_LINES`] lines for error messages.
fn forward_stderr(stderr: impl AsyncRead + Unpin + Send + 'static, tag: String) -> StderrTail {
    let lines = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL_LINES)));
    let keep = lines.clone();
    let reader = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("[{tag}] {line}");
            let mut t = keep.lock().unwrap_or_else(|e| e.into_inner());
            if t.len() == STDERR_TAIL_LINES {
                t.pop_front();
            }
            t.push_back(line);
        }
    });
    StderrTail { lines, reader }
}

/// `CLAIRON_<SVC>_ADDR`, the listen address of a service.
fn addr_var(svc: &str) -> String {
    format!("CLAIRON_{}_ADDR", svc.to_ascii_uppercase())
}

/// The engines split mode needs, from the `--env` pairs (the last of a key wins).
#[derive(Debug)]
struct Engines {
    brokers: String,
    database_url: String,
    has_topic_prefix: bool,
}

impl Engines {
    fn from_envs(envs: &[(String, String)]) -> anyhow::Result<Engines> {
        let last = |key: &str| {
            envs.iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.trim())
        };
        let brokers = last("CLAIRON_KAFKA_BROKERS").filter(|v| !v.is_empty());
        let database_url = last("CLAIRON_DATABASE_URL")
            .filter(|v| v.starts_with("mysql://") || v.starts_with("mariadb://"));
        let (Some(brokers), Some(database_url)) = (brokers, database_url) else {
            bail!(
                "--split runs one process per service, and separate processes share their \
                 events and data only through the real engines: pass \
                 --env CLAIRON_KAFKA_BROKERS=<host:port> and \
                 --env CLAIRON_DATABASE_URL=mysql://<user>:<password>@<host>:<port>/<database> \
                 (`eval \"$(scripts/infra.sh up)\"` starts Kafka and MariaDB locally and prints \
                 both; its account is mysql://clairon:clairon@127.0.0.1:3306/clairon)"
            );
        };
        Ok(Engines {
            brokers: brokers.to_string(),
            database_url: database_url.to_string(),
            has_topic_prefix: last("CLAIRON_KAFKA_TOPIC_PREFIX").is_some(),
        })
    }
}

/// A database created for one split run on the server of the caller's URL,
/// with the `mariadb` (or `mysql`) command-line client, and dropped at the end.
struct FreshDatabase {
    name: String,
    /// The caller's URL with this database instead of its own.
    url: String,
    client: SqlClient,
}

impl FreshDatabase {
    fn create(server_url: &str) -> anyhow::Result<FreshDatabase> {
        let mut url = Url::parse(server_url).context("invalid CLAIRON_DATABASE_URL")?;
        let client = SqlClient::for_url(&url)?;
        let name = format!(
            "{DATABASE_PREFIX}{}_bench_{}",
            unix_secs(),
            &random_hex()[..12]
        );
        client
            .run(&format!("CREATE DATABASE `{name}`"))
            .with_context(|| {
                format!(
                    "creating the database {name} (the account must be allowed to create \
                     databases named {DATABASE_PREFIX}%)"
                )
            })?;
        url.set_path(&format!("/{name}"));
        Ok(FreshDatabase {
            name,
            url: url.to_string(),
            client,
        })
    }

    fn drop_database(&self) -> anyhow::Result<()> {
        self.client
            .run(&format!(
                "SET SESSION lock_wait_timeout = 10; DROP DATABASE IF EXISTS `{}`",
                self.name
            ))
            .with_context(|| format!("dropping the database {}", self.name))
    }
}

/// How to reach a MySQL/MariaDB server with its command-line client.
struct SqlClient {
    program: &'static str,
    host: String,
    port: u16,
    user: String,
    password: Option<String>,
}

impl SqlClient {
    fn for_url(url: &Url) -> anyhow::Result<SqlClient> {
        let host = url
            .host_str()
            .context("CLAIRON_DATABASE_URL has no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let mut client = SqlClient {
            program: "mariadb",
            host,
            port: url.port().unwrap_or(3306),
            user: percent_decode(url.username()),
            password: url.password().map(percent_decode),
        };
        // Debian's MariaDB client is `mariadb`, MySQL's is `mysql`.
        for program in ["mariadb", "mysql"] {
            client.program = program;
            match client.command().arg("--version").output() {
                Ok(out) if out.status.success() => return Ok(client),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("running {program} --version")),
            }
        }
        bail!(
            "--split creates a fresh database with the `mariadb` or `mysql` command-line \
             client, and neither runs here (Debian: apt-get install mariadb-client)"
        )
    }

    fn command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(self.program);
        cmd.arg("--protocol=TCP")
            .arg(format!("--host={}", self.host))
            .arg(format!("--port={}", self.port))
            .arg(format!("--user={}", self.user))
            .arg("--connect-timeout=10")
            .arg("--batch")
            .stdin(Stdio::null());
        // Through the environment, so the password is not on a command line.
        match &self.password {
            Some(p) => cmd.env("MYSQL_PWD", p),
            None => cmd.env_remove("MYSQL_PWD"),
        };
        cmd
    }

    /// Runs `sql`; blocking, as it also runs while the bench is dropped.
    fn run(&self, sql: &str) -> anyhow::Result<()> {
        let out = self
            .command()
            .arg("--execute")
            .arg(sql)
            .output()
            .with_context(|| format!("running {}", self.program))?;
        if !out.status.success() {
            bail!(
                "{} {}@{}:{} answered {}: {}",
                self.program,
                self.user,
                self.host,
                self.port,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

/// Decodes `%XX` escapes of a URL's user name or password.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn random_hex() -> String {
    Uuid::new_v4().simple().to_string()
}

/// `clairon: <service> listening on http://<ip>:<port>` → (service, url).
fn parse_announce(line: &str) -> Option<(String, String)> {
    let rest = line.trim().strip_prefix("clairon: ")?;
    let (svc, url) = rest.split_once(" listening on ")?;
    let url = url.split_whitespace().next()?;
    let svc = svc.trim();
    (!svc.is_empty() && !svc.contains(' ')).then(|| (svc.to_string(), url.to_string()))
}

/// Parses `raw` and insists on a loopback host; an unspecified address
/// (`0.0.0.0`, `[::]`) is reached through 127.0.0.1.
fn loopback_url(raw: &str) -> anyhow::Result<Url> {
    let mut url = Url::parse(raw).with_context(|| format!("invalid URL `{raw}`"))?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!("`{raw}`: expected an http:// URL");
    }
    let host = url.host_str().context("URL without a host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(ip) if ip.is_loopback() => {}
        Ok(ip) if ip.is_unspecified() => {
            url.set_ip_host(IpAddr::V4(Ipv4Addr::LOCALHOST))
                .map_err(|()| anyhow::anyhow!("cannot rewrite the host of `{raw}`"))?;
        }
        Err(_) if host.eq_ignore_ascii_case("localhost") => {}
        _ => bail!("`{raw}` is not a loopback address; the bench only drives loopback targets"),
    }
    url.set_path("/");
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

/// Polls `GET /health/ready` at `base` until it answers 200; fails at once
/// when one of the spawned `procs` has exited.
async fn wait_ready(base: &Url, deadline: Instant, procs: &mut [Proc]) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()?;
    let url = base.join("health/ready")?;
    let started = Instant::now();
    let mut last;
    loop {
        for p in procs.iter_mut() {
            if let Some(report) = p.exit_report().await {
                bail!("{report}");
            }
        }
        match client.get(url.clone()).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => {
                progress!("warning: {url} answers 404; assuming ready");
                return Ok(());
            }
            Ok(r) => last = format!("status {}", r.status()),
            Err(e) => last = crate::api::error_chain(&e),
        }
        if Instant::now() >= deadline {
            bail!(
                "{url} not ready within {:.0} s: {last}",
                deadline.saturating_duration_since(started).as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announce_lines() {
        assert_eq!(
            parse_announce("clairon: web listening on http://127.0.0.1:40123"),
            Some(("web".into(), "http://127.0.0.1:40123".into()))
        );
        assert_eq!(parse_announce("something else"), None);
    }

    #[test]
    fn loopback_only() {
        assert!(loopback_url("http://127.0.0.1:8085").is_ok());
        assert!(loopback_url("http://localhost:8085/x").is_ok());
        assert!(loopback_url("http://[::1]:8085").is_ok());
        assert_eq!(
            loopback_url("http://0.0.0.0:9").unwrap().as_str(),
            "http://127.0.0.1:9/"
        );
        assert!(loopback_url("http://10.0.0.1:8085").is_err());
        assert!(loopback_url("http://example.com").is_err());
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn split_needs_kafka_and_mysql() {
        let kafka = ("CLAIRON_KAFKA_BROKERS", "127.0.0.1:9092");
        let mysql = ("CLAIRON_DATABASE_URL", "mysql://u:p@127.0.0.1:3306/db");
        let err = Engines::from_envs(&pairs(&[kafka])).unwrap_err();
        assert!(err.to_string().contains("scripts/infra.sh up"), "{err}");
        assert!(Engines::from_envs(&pairs(&[mysql])).is_err());
        assert!(Engines::from_envs(&pairs(&[
            kafka,
            ("CLAIRON_DATABASE_URL", "sqlite:///tmp/x.db")
        ]))
        .is_err());
        let e = Engines::from_envs(&pairs(&[kafka, mysql])).unwrap();
        assert_eq!(e.database_url, mysql.1);
        assert!(!e.has_topic_prefix);
        let e = Engines::from_envs(&pairs(&[
            kafka,
            mysql,
            ("CLAIRON_KAFKA_TOPIC_PREFIX", "mine-"),
        ]))
        .unwrap();
        assert!(e.has_topic_prefix);
    }

    #[test]
    fn database_url_credentials() {
        let url =
            Url::parse("mysql://us%40er:p%3Ass%25@[::1]:3307/clairon?ssl-mode=disabled").unwrap();
        assert_eq!(percent_decode(url.username()), "us@er");
        assert_eq!(url.password().map(percent_decode).as_deref(), Some("p:ss%"));
        assert_eq!(percent_decode("100%"), "100%");
        let mut renamed = url.clone();
        renamed.set_path("/clairon_test_1_bench_x");
        assert_eq!(
            renamed.as_str(),
            "mysql://us%40er:p%3Ass%25@[::1]:3307/clairon_test_1_bench_x?ssl-mode=disabled"
        );
    }
}
