//! A broker binary run for a test: output appended to a log file, killed when dropped, and a
//! wait for its readiness endpoint. Every broker's black-box tests start binaries this way.

use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A free TCP port on 127.0.0.1 (free when asked; bind it soon).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

pub struct BrokerProcess {
    child: Child,
    pub port: u16,
}

impl BrokerProcess {
    /// Spawns `command`, which must make the broker listen on 127.0.0.1:`port`; its stdout and
    /// stderr are appended to `log`.
    pub fn spawn(mut command: Command, port: u16, log: &Path) -> anyhow::Result<Self> {
        let open = || OpenOptions::new().create(true).append(true).open(log);
        let child = command
            .stdin(Stdio::null())
            .stdout(open().context("opening the broker log")?)
            .stderr(open().context("opening the broker log")?)
            .spawn()
            .context("starting the broker binary")?;
        Ok(Self { child, port })
    }

    /// Polls `http://127.0.0.1:PORT{path}` until it answers 200.
    pub async fn wait_for(&mut self, path: &str, timeout: Duration) -> anyhow::Result<()> {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(r) = reqwest::get(&url).await
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
