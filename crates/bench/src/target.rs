//! The platform under test: either spawned by the bench (`--start`) or
//! already running (`--web-url`). Only loopback addresses are accepted.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    process::Stdio,
    time::Duration,
};

use anyhow::{bail, Context};
use reqwest::Url;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
    time::Instant,
};
use uuid::Uuid;

use crate::{progress, Args};

/// Services the `clairon` binary announces, each with a `CLAIRON_<NAME>_ADDR`.
const SERVICES: [&str; 5] = ["users", "notifications", "events", "logs", "web"];

/// How long to wait for the other services once the web gateway is announced.
const ANNOUNCE_GRACE: Duration = Duration::from_secs(2);

pub struct Target {
    /// Web gateway base URL, e.g. `http://127.0.0.1:8085/`.
    pub web: Url,
    pub admin_email: String,
    pub admin_password: String,
    spawned: Option<Spawned>,
}

/// A spawned `clairon` and its data directory; dropping it kills the process
/// and removes the directory, so an error or Ctrl-C cleans up too.
struct Spawned {
    child: Child,
    data_dir: PathBuf,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

impl Target {
    pub async fn open(args: &Args) -> anyhow::Result<Target> {
        let target = if args.start {
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
        wait_ready(&target.web, Duration::from_secs(args.startup_timeout_secs)).await?;
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
        let data_dir =
            std::env::temp_dir().join(format!("clairon-bench-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;

        let mut cmd = Command::new(&bin);
        cmd.env("CLAIRON_DATA_DIR", &data_dir);
        for svc in SERVICES {
            cmd.env(
                format!("CLAIRON_{}_ADDR", svc.to_ascii_uppercase()),
                "127.0.0.1:0",
            );
        }
        cmd.env("CLAIRON_ADMIN_EMAIL", &admin_email)
            .env("CLAIRON_ADMIN_PASSWORD", &admin_password)
            .env("CLAIRON_LOG", "warn");
        for (k, v) in &args.envs {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&data_dir);
                return Err(e).with_context(|| format!("spawning {}", bin.display()));
            }
        };
        let mut spawned = Spawned { child, data_dir };
        progress!(
            "started {} (pid {}, data dir {})",
            bin.display(),
            spawned.child.id().unwrap_or(0),
            spawned.data_dir.display()
        );

        // Read stdout for the whole life of the process (so it never blocks on
        // a full pipe): announcements go to the channel, anything else to stderr.
        let stdout = spawned.child.stdout.take().context("child stdout")?;
        let (tx, mut rx) = mpsc::unbounded_channel::<(String, String)>();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match parse_announce(&line) {
                    Some(found) => {
                        let _ = tx.send(found);
                    }
                    None => eprintln!("[clairon] {line}"),
                }
            }
        });

        let deadline = Instant::now() + Duration::from_secs(args.startup_timeout_secs);
        let mut services: BTreeMap<String, Url> = BTreeMap::new();
        let mut web_seen: Option<Instant> = None;
        while !SERVICES.iter().all(|s| services.contains_key(*s)) {
            let until = match web_seen {
                Some(t) => deadline.min(t + ANNOUNCE_GRACE),
                None => deadline,
            };
            tokio::select! {
                found = rx.recv() => match found {
                    Some((svc, url)) => {
                        let url = loopback_url(&url)
                            .with_context(|| format!("{svc} announced {url}"))?;
                        progress!("{svc} listening on {url}");
                        if svc == "web" {
                            web_seen = Some(Instant::now());
                        }
                        services.insert(svc, url);
                    }
                    None => {
                        if web_seen.is_some() {
                            break;
                        }
                        let status =
                            tokio::time::timeout(Duration::from_secs(5), spawned.child.wait()).await;
                        bail!(
                            "clairon exited before announcing the web gateway ({})",
                            match status {
                                Ok(Ok(s)) => s.to_string(),
                                Ok(Err(e)) => e.to_string(),
                                Err(_) => "stdout closed".to_string(),
                            }
                        );
                    }
                },
                _ = tokio::time::sleep_until(until) => {
                    if web_seen.is_some() {
                        break;
                    }
                    bail!(
                        "clairon did not announce `clairon: web listening on http://…` within {} s",
                        args.startup_timeout_secs
                    );
                }
            }
        }
        let missing: Vec<&str> = SERVICES
            .iter()
            .copied()
            .filter(|s| !services.contains_key(*s))
            .collect();
        if !missing.is_empty() {
            progress!("warning: no announcement for {}", missing.join(", "));
        }
        let web = services.remove("web").context("web gateway announcement")?;
        Ok(Target {
            web,
            admin_email,
            admin_password,
            spawned: Some(spawned),
        })
    }

    /// Stops a spawned platform (kill, reap, remove its data directory).
    pub async fn shutdown(mut self) {
        if let Some(mut s) = self.spawned.take() {
            let _ = s.child.start_kill();
            match tokio::time::timeout(Duration::from_secs(10), s.child.wait()).await {
                Ok(Ok(status)) => progress!("stopped clairon ({status})"),
                Ok(Err(e)) => progress!("warning: waiting for clairon: {e}"),
                Err(_) => progress!("warning: clairon did not exit within 10 s of SIGKILL"),
            }
            drop(s);
        }
    }
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

/// Polls `GET /health/ready` on the gateway until it answers 200.
async fn wait_ready(web: &Url, timeout: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()?;
    let url = web.join("health/ready")?;
    let deadline = Instant::now() + timeout;
    let mut last;
    loop {
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
            bail!("{url} not ready within {} s: {last}", timeout.as_secs());
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
}
