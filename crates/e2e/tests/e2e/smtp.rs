//! A real SMTP server: aiosmtpd writing every message it accepts into a Maildir.

use std::{
    fs::File,
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use tokio::time::Instant;

use crate::helpers::eventually;

pub struct SmtpSink {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

/// One received message, headers unfolded.
#[derive(Debug, Clone)]
pub struct Email {
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Email {
    fn parse(raw: &str) -> Email {
        let raw = raw.replace("\r\n", "\n");
        let (head, body) = raw.split_once("\n\n").unwrap_or((raw.as_str(), ""));
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in head.lines() {
            if line.starts_with([' ', '\t']) {
                if let Some((_, value)) = headers.last_mut() {
                    value.push(' ');
                    value.push_str(line.trim());
                }
            } else if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_owned(), value.trim().to_owned()));
            }
        }
        Email {
            headers,
            body: body.to_owned(),
        }
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    }

    pub fn subject(&self) -> &str {
        self.header("Subject")
    }

    pub fn message_id(&self) -> &str {
        self.header("Message-ID")
    }

    /// Whether the `To` header names this address (case-insensitive).
    pub fn is_to(&self, address: &str) -> bool {
        self.header("To")
            .to_lowercase()
            .contains(&address.to_lowercase())
    }
}

impl SmtpSink {
    /// Starts `python3 -m aiosmtpd` on a free loopback port and waits until it
    /// accepts connections. Fails (never skips) when python3 or aiosmtpd is missing.
    pub async fn start() -> SmtpSink {
        let dir = tempfile::Builder::new()
            .prefix("clairon-smtp-")
            .tempdir()
            .expect("a temporary directory");
        let maildir = dir.path().join("maildir");
        // A Maildir needs its three folders: an empty directory makes DATA fail.
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir_all(maildir.join(sub)).expect("the maildir");
        }
        // The port is picked before aiosmtpd binds it, so another process may take
        // it in between: then try another one.
        for _ in 0..3 {
            let port = free_port();
            match launch(&maildir, dir.path(), port).await {
                Ok(child) => return SmtpSink { child, dir, port },
                Err(log) if log.contains("Address already in use") => continue,
                Err(log) => panic!(
                    "the SMTP sink (python3 -m aiosmtpd) exited: is aiosmtpd installed? \
                     (`python3 -m pip install aiosmtpd`; scripts/test.sh installs it)\n{log}"
                ),
            }
        }
        panic!("the SMTP sink found no free port in three tries");
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    fn new_dir(&self) -> PathBuf {
        self.dir.path().join("maildir").join("new")
    }

    /// Every message received so far.
    pub fn messages(&self) -> Vec<Email> {
        let Ok(entries) = std::fs::read_dir(self.new_dir()) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| std::fs::read(e.path()).ok())
            .map(|bytes| Email::parse(&String::from_utf8_lossy(&bytes)))
            .collect()
    }

    pub fn count(&self, pred: impl Fn(&Email) -> bool) -> usize {
        self.messages().iter().filter(|m| pred(m)).count()
    }

    /// Waits for a message matching `pred`.
    pub async fn wait_for(
        &self,
        what: &str,
        pred: impl Fn(&Email) -> bool,
        timeout: Duration,
    ) -> Email {
        eventually(what, timeout, async || {
            let all = self.messages();
            let summary = format!(
                "{} message(s) received: {:?}",
                all.len(),
                all.iter()
                    .map(|m| (
                        m.header("To").to_owned(),
                        m.subject().to_owned(),
                        m.message_id().to_owned()
                    ))
                    .collect::<Vec<_>>()
            );
            all.into_iter().find(|m| pred(m)).ok_or(summary)
        })
        .await
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts aiosmtpd on `port` and waits until it accepts connections; `Err`
/// carries its output when it exits instead.
async fn launch(maildir: &Path, dir: &Path, port: u16) -> Result<Child, String> {
    let log_path = dir.join(format!("aiosmtpd-{port}.log"));
    let log = File::create(&log_path).expect("the aiosmtpd log");
    let mut child = Command::new("python3")
        .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
        .args(["-c", "aiosmtpd.handlers.Mailbox"])
        .arg(maildir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("the aiosmtpd log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run python3 ({e}): the SMTP sink needs python3 with aiosmtpd \
                 (`python3 -m pip install aiosmtpd`; scripts/test.sh installs it)"
            )
        });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("waiting for aiosmtpd") {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!("{status}\n{log}"));
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the SMTP sink did not listen on 127.0.0.1:{port} within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

#[test]
fn emails_parse_with_folded_headers() {
    let m = Email::parse(
        "Subject: Welcome\r\n to Clairon\r\nTo: \"Ada\" <ada@example.com>\r\nMessage-ID: <abc@x>\r\n\r\nHello\r\n",
    );
    assert_eq!(m.subject(), "Welcome to Clairon");
    assert!(m.is_to("ADA@example.com"));
    assert_eq!(m.message_id(), "<abc@x>");
    assert_eq!(m.body.trim(), "Hello");
}
