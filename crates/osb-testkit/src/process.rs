//! A broker binary run for a test: output appended to a log file, killed when dropped, and a
//! wait for its readiness endpoint. Every broker's black-box tests start binaries this way.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::Target;

/// A TCP port that was free on 127.0.0.1 when asked: for an address where nothing listens.
/// A broker under test binds port 0 instead (see [`BrokerProcess::spawn`]), so that no other
/// process can take its port between the asking and the binding.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// The credentials [`start_broker`] gives a broker (its `[broker]` username and password).
pub const USERNAME: &str = "broker";
pub const PASSWORD: &str = "broker-secret";
/// A fixed test encryption key (32 bytes, base64).
pub const ENCRYPTION_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// The SQLite state store [`start_broker`] gives a broker in `dir`: where a test's commands
/// (`orphans`, `check-config`) and its own reads find that broker's state.
pub fn sqlite_store(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("state.db").display())
}

/// Starts a broker binary as every broker's black-box tests do: `--config config`, a SQLite
/// state store and the log (`broker.log`) in `dir`, port 0, [`USERNAME`] / [`PASSWORD`] and
/// [`ENCRYPTION_KEY`], then `env` (which wins); waits until `ready` (a path) answers 200.
pub async fn start_broker(
    binary: &Path,
    config: &Path,
    dir: &Path,
    env: &[(&str, &str)],
    ready: &str,
) -> anyhow::Result<BrokerProcess> {
    let mut command = broker_command(binary, config, &sqlite_store(dir));
    command
        .env("KPAAS_BROKER__LISTEN", "127.0.0.1:0")
        .env("KPAAS_BROKER__USERNAME", USERNAME)
        // The listening line (info, osb_core::server) tells the port the system chose.
        .env("RUST_LOG", "info")
        .envs(env.iter().copied());
    let mut broker = BrokerProcess::spawn(command, 0, &dir.join("broker.log"))?;
    broker
        .wait_for(ready, Duration::from_secs(30))
        .await
        .with_context(|| {
            format!(
                "{} did not start; are its backends up? run scripts/backends.sh",
                binary.display()
            )
        })?;
    Ok(broker)
}

/// A broker binary with `--config config`, [`PASSWORD`], [`ENCRYPTION_KEY`] and the state
/// store at `store`: how [`start_broker`] runs it, and how tests run its commands
/// (`check-config`, `orphans`).
pub fn broker_command(binary: &Path, config: &Path, store: &str) -> Command {
    let mut command = Command::new(binary);
    command
        .arg("--config")
        .arg(config)
        .env("KPAAS_BROKER__PASSWORD", PASSWORD)
        .env("KPAAS_BROKER__ENCRYPTION_KEY", ENCRYPTION_KEY)
        .env("KPAAS_BROKER__STORE__URL", store);
    command
}

/// The rows `orphans --json` printed; panics with what the broker said when it failed.
pub fn orphan_rows(output: &std::process::Output) -> Vec<serde_json::Value> {
    assert!(
        output.status.success(),
        "orphans failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("orphans --json prints a JSON array")
}

pub struct BrokerProcess {
    child: Child,
    /// The port it listens on; known once [`BrokerProcess::wait_for`] returned.
    pub port: u16,
    log: PathBuf,
    /// Where this process's output begins in the log (earlier runs may share the file).
    log_start: u64,
}

impl BrokerProcess {
    /// Spawns `command`, which must make the broker listen on 127.0.0.1:`port`; port 0 lets
    /// the broker choose, and [`BrokerProcess::wait_for`] reads the port from the broker's
    /// "broker listening" log line. Its stdout and stderr are appended to `log`.
    pub fn spawn(mut command: Command, port: u16, log: &Path) -> anyhow::Result<Self> {
        let open = || OpenOptions::new().create(true).append(true).open(log);
        let log_start = open()
            .and_then(|f| f.metadata())
            .context("opening the broker log")?
            .len();
        let child = command
            .stdin(Stdio::null())
            .stdout(open().context("opening the broker log")?)
            .stderr(open().context("opening the broker log")?)
            .spawn()
            .context("starting the broker binary")?;
        Ok(Self {
            child,
            port,
            log: log.to_owned(),
            log_start,
        })
    }

    /// Polls `http://127.0.0.1:PORT{path}` until it answers 200.
    pub async fn wait_for(&mut self, path: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.port == 0 {
                self.port = self.announced_port()?.unwrap_or(0);
            }
            let url = format!("http://127.0.0.1:{}{path}", self.port);
            if self.port != 0
                && let Ok(r) = reqwest::get(&url).await
                && r.status() == 200
            {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("the broker exited ({status}) before {url} answered");
            }
            if Instant::now() > deadline {
                bail!("{url} did not answer 200 within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The port of this process's "broker listening" line (JSON or plain text), if written.
    fn announced_port(&self) -> anyhow::Result<Option<u16>> {
        let mut text = String::new();
        let mut file = std::fs::File::open(&self.log).context("reading the broker log")?;
        file.seek(SeekFrom::Start(self.log_start))?;
        file.read_to_string(&mut text)?;
        let line = text.lines().find(|l| l.contains("broker listening"));
        let Some(line) = line else { return Ok(None) };
        let addr = match serde_json::from_str::<serde_json::Value>(line) {
            Ok(json) => json["addr"].as_str().map(str::to_owned),
            // A terminal-style line: `... broker listening addr=127.0.0.1:PORT tls=false`,
            // perhaps with colour codes around the field names.
            Err(_) => strip_escapes(line)
                .split_whitespace()
                .find_map(|w| w.strip_prefix("addr=").map(str::to_owned)),
        };
        let port = addr
            .as_deref()
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(_, p)| p.parse().ok())
            .with_context(|| format!("no port in the broker's line {line:?}"))?;
        Ok(Some(port))
    }

    /// The testkit's [`Target`] for this broker's `service` and `plan`.
    pub fn target(&self, service: &str, plan: &str) -> Target {
        Target::new(
            format!("http://127.0.0.1:{}", self.port),
            USERNAME,
            PASSWORD,
            service,
            plan,
        )
    }

    /// The value of the unlabelled metric `name` on the broker's `/metrics`, with the whole
    /// text (for a failure message); `None` when the broker does not export it.
    pub async fn metric(&self, name: &str) -> anyhow::Result<(Option<f64>, String)> {
        let url = format!("http://127.0.0.1:{}/metrics", self.port);
        let text = reqwest::get(&url).await?.text().await?;
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok());
        Ok((value, text))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process, to signal it or wait for its exit.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A line without its ANSI colour codes (`ESC [ ... m`).
fn strip_escapes(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::strip_escapes;

    #[test]
    fn colour_codes_are_removed() {
        let line = "INFO broker listening \x1b[3maddr\x1b[0m\x1b[2m=\x1b[0m127.0.0.1:4242";
        assert_eq!(
            strip_escapes(line),
            "INFO broker listening addr=127.0.0.1:4242"
        );
    }
}
