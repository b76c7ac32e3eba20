//! `local` plans: a `redis-server` process per instance on the broker's own host, with its own
//! port (claimed in the store), config file, data directory and pid file. The processes
//! outlive the broker (under systemd with `KillMode=process`), so a broker restart finds them
//! again by pid file and port; upkeep starts one that died again, on its data (the
//! append-only file of plans that keep one).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use osb_core::BrokerError;
use osb_core::config::Secret;
use osb_core::credentials::{PasswordLength, generate_password};
use secrecy::ExposeSecret;

use crate::config::{LocalConfig, Persistence, PlanConfig, Server};
use crate::names::KeyPrefix;
use crate::server::Admin;

/// Why a process did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Something else holds the port now: it was free when claimed, but an outgoing
    /// connection (the kernel gives those ports from a range an operator's may overlap) or
    /// another program took it since. A new instance can move to another port; a made one
    /// cannot, its bindings name the port.
    #[error("port {0} is held by another program: redis-server could not listen on it")]
    PortTaken(u16),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl From<StartError> for BrokerError {
    fn from(err: StartError) -> Self {
        match err {
            StartError::PortTaken(_) => BrokerError::Failed(err.to_string()),
            StartError::Broker(err) => err,
        }
    }
}

/// The longest `data_dir` in which every instance has its admin socket, whatever its id and
/// platform: a Unix socket's path holds 107 bytes.
pub const DATA_DIR_FOR_SOCKETS: usize = 107 - "//redis.sock".len() - KeyPrefix::MAX_LEN;

/// Where an instance's process lives: its directory (named like a shared instance's prefix,
/// from the instance id) and its port.
pub struct Process {
    pub dir: PathBuf,
    pub port: u16,
}

impl Process {
    pub fn new(config: &LocalConfig, name: &KeyPrefix, port: u16) -> Self {
        Self {
            dir: config.data_dir.join(name.as_str()),
            port,
        }
    }

    fn conf(&self) -> PathBuf {
        self.dir.join("redis.conf")
    }

    /// Whether the process has its config: written by provision, removed first by
    /// deprovision (so that nothing starts it again meanwhile).
    pub fn configured(&self) -> bool {
        self.conf().exists()
    }

    fn pidfile(&self) -> PathBuf {
        self.dir.join("redis.pid")
    }

    /// The socket the broker logs in through: in the instance's own 0700 directory, where no
    /// other user can listen first (as one could on the TCP port before the server does).
    fn socket(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    /// Whether the socket's path fits a Unix socket address (107 bytes and a NUL); when it
    /// does not, the broker logs in over TCP (docs/redis-broker.md).
    fn socket_fits(&self) -> bool {
        self.socket().as_os_str().len() <= 107
    }

    /// The directory holds the config (the admin password) and the socket: it must be the
    /// broker's own and closed to everyone else. One that existed already (made by another user
    /// in a `data_dir` others can write to, with an id known ahead) is refused.
    fn check_dir_is_own(&self) -> Result<(), BrokerError> {
        let dir = std::fs::symlink_metadata(&self.dir).map_err(|e| self.io(e))?;
        // /proc/self belongs to the process's effective user.
        let me = std::fs::metadata("/proc/self")
            .map_err(|e| self.io(e))?
            .uid();
        if !dir.is_dir() || dir.uid() != me || dir.mode() & 0o077 != 0 {
            return Err(BrokerError::Failed(format!(
                "{} is not a directory of the broker's own, closed to other users (mode 0700)",
                self.dir.display()
            )));
        }
        Ok(())
    }

    /// An I/O error in the instance's directory.
    fn io(&self, e: std::io::Error) -> BrokerError {
        BrokerError::Failed(format!("{}: {e}", self.dir.display()))
    }

    fn conf_text(&self) -> Result<String, BrokerError> {
        std::fs::read_to_string(self.conf())
            .map_err(|e| BrokerError::Failed(format!("reading {}: {e}", self.conf().display())))
    }

    /// The admin password the process was made with, in its config file's `text` (0600).
    fn password_in(&self, text: &str) -> Result<String, BrokerError> {
        text.lines()
            .find_map(|l| l.strip_prefix("requirepass "))
            .map(|p| p.trim_matches('"').to_owned())
            .ok_or_else(|| {
                BrokerError::Failed(format!("{} has no requirepass", self.conf().display()))
            })
    }

    /// Whether the config file has the process listen on [`Process::socket`]. One written
    /// before the broker did so has not, and its running process has no socket: it gets one
    /// at its next start.
    #[cfg(test)]
    fn conf_names_socket(&self) -> bool {
        self.conf_text().is_ok_and(|text| names_socket(&text))
    }

    fn socket_lines(&self) -> String {
        format!(
            "unixsocket {}\nunixsocketperm 700\n",
            self.socket().display()
        )
    }

    /// An admin client for the process: over its socket when its config names one, else over
    /// TCP.
    pub fn admin(&self, config: &LocalConfig) -> Result<Admin, BrokerError> {
        let text = self.conf_text()?;
        let socket = names_socket(&text).then(|| self.socket());
        let server = Server {
            name: self
                .dir
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            host: config.bind.clone(),
            port: self.port,
            admin_user: None,
            admin_password: Some(Secret(self.password_in(&text)?.into())),
            public_host: config.public_host.clone(),
            tls_port: None,
        };
        match socket {
            Some(path) => Admin::over_socket(&server, path),
            None => Admin::new(&server),
        }
        .map_err(BrokerError::Failed)
    }

    /// Writes the process's config (the first time with a new admin password; later keeping
    /// it) for `plan`.
    pub fn write_conf(&self, config: &LocalConfig, plan: &PlanConfig) -> Result<(), BrokerError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| self.io(e))?;
        self.check_dir_is_own()?;
        let existing = self.conf_text().ok();
        // A config without the socket stays so: the process it runs (if any) has none.
        let socket = existing
            .as_deref()
            .map_or_else(|| self.socket_fits(), names_socket);
        if !socket && !self.socket_fits() {
            tracing::warn!(dir = %self.dir.display(), "no room for the admin socket in the instance's path: the broker logs in over TCP");
        }
        let password = match existing.as_deref().map(|text| self.password_in(text)) {
            Some(Ok(p)) => p,
            // Only the broker ever logs in with it: the longest the generator makes.
            _ => generate_password(PasswordLength::try_from(64).expect("64 is a valid length"))
                .expose_secret()
                .to_owned(),
        };
        let (appendonly, save) = match plan.persistence {
            Persistence::None => ("no", "\"\""),
            Persistence::Rdb => ("no", "3600 1 300 100 60 10000"),
            Persistence::Aof => ("yes", "3600 1 300 100 60 10000"),
        };
        let maxmemory = plan.maxmemory_mb.map_or(0, |mb| mb * 1024 * 1024);
        let text = format!(
            "# Made by redis-broker; rewritten on plan changes.\n\
             port {port}\nbind {bind}\nprotected-mode yes\n\
             pidfile {pid}\ndir {dir}\nlogfile {log}\n\
             requirepass \"{password}\"\n\
             maxmemory {maxmemory}\nmaxmemory-policy {policy}\n\
             appendonly {appendonly}\nappendfsync everysec\nsave {save}\n{socket}",
            port = self.port,
            bind = config.bind,
            pid = self.pidfile().display(),
            dir = self.dir.display(),
            log = self.log().display(),
            policy = plan.maxmemory_policy.as_str(),
            socket = if socket {
                self.socket_lines()
            } else {
                String::new()
            },
        );
        self.replace_conf(&text)
    }

    /// The config file replaced by `text` at once (a process starting meanwhile reads either).
    fn replace_conf(&self, text: &str) -> Result<(), BrokerError> {
        let io = |e| self.io(e);
        let tmp = self.dir.join("redis.conf.new");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, self.conf()).map_err(io)
    }

    /// The pid in the pid file, when that process is alive and is this instance's server: a
    /// pid file outlives a crash, and its number may belong to another process by now. Redis
    /// works in its `dir`, so the process's working directory says whose it is.
    fn running_pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.pidfile())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
        let dir = std::fs::canonicalize(&self.dir).ok()?;
        (cwd == dir).then_some(pid)
    }

    /// Starts the process unless its pid file names a live one, and waits until it answers
    /// its admin login.
    pub async fn ensure_running(&self, config: &LocalConfig) -> Result<(), StartError> {
        let mut admin = self.admin(config)?;
        let running = self.running_pid().is_some();
        if running && admin.conn().await.is_ok() {
            return Ok(());
        }
        // A live one that does not answer yet (loading its data) is waited for, not started
        // twice.
        let mut child = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Whether it ended comes before each login: once it has, a login over TCP (a
            // process whose config predates its socket) would send the admin password to
            // whatever holds the port now.
            match child.as_mut() {
                None if self.running_pid().is_none() => {
                    child = Some(self.start(config)?);
                    // The start may have given it its socket.
                    admin = self.admin(config)?;
                }
                None => {}
                Some(child) => {
                    let exited = child.try_wait().map_err(|e| {
                        BrokerError::Failed(format!("waiting for redis-server: {e}"))
                    })?;
                    if let Some(status) = exited {
                        return Err(self.exited(config, status));
                    }
                }
            }
            // Loading a large append-only file takes a while; LOADING answers until it is read.
            if let Ok(mut conn) = admin.conn().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BrokerError::Failed(format!(
                    "redis-server on port {} did not answer within 30 s; see {}",
                    self.port,
                    self.log().display()
                ))
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Why the server this broker started ended before it answered: its port taken (it
    /// failed, and something else holds the port now), or whatever its logs say.
    fn exited(&self, config: &LocalConfig, status: std::process::ExitStatus) -> StartError {
        if !status.success() && !port_free(&config.bind, self.port) {
            return StartError::PortTaken(self.port);
        }
        BrokerError::Failed(format!(
            "{} exited with {status}; see {} and {}",
            config.redis_server.display(),
            self.log().display(),
            self.stderr().display()
        ))
        .into()
    }

    /// Starts `redis-server` on the config file. In the foreground (whatever an older config
    /// file says), so that one that cannot start is seen exiting at once; in a process group
    /// of its own, so that a Ctrl-C to the broker does not reach it. Once it answers, the
    /// handle is let go: the server keeps running, and tokio reaps it when it ends. What it
    /// says before its log is open (a config file it refuses) goes to a file beside the log.
    /// None of the broker's environment (its keys and passwords) for the server. A config
    /// file from before the admin socket gets it now, while no process runs on it.
    fn start(&self, config: &LocalConfig) -> Result<tokio::process::Child, BrokerError> {
        if !self.configured() {
            return Err(BrokerError::Failed(format!(
                "{} is being removed",
                self.dir.display()
            )));
        }
        if self.socket_fits() {
            let text = self.conf_text()?;
            if !names_socket(&text) {
                self.replace_conf(&(text + &self.socket_lines()))?;
            }
        }
        let stderr = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(self.stderr())
            .map_err(|e| BrokerError::Failed(format!("{}: {e}", self.stderr().display())))?;
        tokio::process::Command::new(&config.redis_server)
            .env_clear()
            .arg(self.conf())
            .args(["--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .map_err(|e| {
                BrokerError::Failed(format!("starting {}: {e}", config.redis_server.display()))
            })
    }

    fn stderr(&self) -> PathBuf {
        self.dir.join("redis.stderr")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// Stops the process (without saving) and removes its directory, whatever is left. The
    /// config goes first, so that no upkeep starts the process again meanwhile.
    pub async fn remove(&self) -> Result<(), BrokerError> {
        match std::fs::remove_file(self.conf()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(BrokerError::Failed(format!(
                    "removing {}: {e}",
                    self.conf().display()
                )));
            }
        }
        if let Some(pid) = self.running_pid() {
            // Its data goes with the directory: nothing to save.
            let killed = tokio::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status()
                .await
                .map_err(|e| BrokerError::Failed(format!("kill: {e}")))?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.running_pid().is_some() {
                if Instant::now() > deadline {
                    return Err(BrokerError::Failed(format!(
                        "redis-server {pid} on port {} did not stop ({killed})",
                        self.port
                    )));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BrokerError::Failed(format!(
                "removing {}: {e}",
                self.dir.display()
            ))),
        }
    }
}

/// Whether a config file's `text` has the process listen on a Unix socket.
fn names_socket(text: &str) -> bool {
    text.lines().any(|l| l.starts_with("unixsocket "))
}

/// Whether nothing listens on `port` of `bind` (a port in the range some other program took
/// is skipped, not fought over).
pub fn port_free(bind: &str, port: u16) -> bool {
    std::net::TcpListener::bind((bind, port)).is_ok()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// The processes whose working directory is `dir`: every redis-server of that instance.
    fn processes_in(dir: &std::path::Path) -> Vec<u32> {
        let Ok(dir) = std::fs::canonicalize(dir) else {
            return Vec::new();
        };
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).ok() == Some(dir.clone()))
            .collect()
    }

    /// Kills what runs in the directory when the test ends, a failed one included.
    struct Reaper(PathBuf);

    impl Drop for Reaper {
        fn drop(&mut self) {
            for pid in processes_in(&self.0) {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
            }
        }
    }

    /// An outgoing connection, and the listener it reaches. Its local port is one found free
    /// and bound before connecting: a port the kernel picks for a connection may still have a
    /// TIME_WAIT of an earlier connection on it (a run of tests leaves thousands), and that
    /// would keep the port from the server after this connection is gone. It is reset when
    /// dropped (linger 0), so it leaves no TIME_WAIT of its own.
    async fn outgoing_connection_from_a_free_port() -> (std::net::TcpListener, tokio::net::TcpStream)
    {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        for _ in 0..20 {
            let port = osb_testkit::free_port();
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            if socket.bind(([127, 0, 0, 1], port).into()).is_err() {
                continue;
            }
            socket.set_zero_linger().unwrap();
            let held = socket
                .connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            return (listener, held);
        }
        panic!("no free port to connect from in 20 tries");
    }

    /// The race a claimed port can lose: found free, then given to an outgoing connection
    /// before the server listens. The server's exit is seen and named as such (a new instance
    /// moves on) though its config file asks it to daemonize, nothing of it keeps running,
    /// and it starts once the port is free again.
    #[tokio::test]
    async fn a_port_taken_after_it_was_found_free_is_named() {
        let (listener, held) = outgoing_connection_from_a_free_port().await;
        let port = held.local_addr().unwrap().port();
        let (_data, config, plan, process) = instance("op_taken", port);
        process.write_conf(&config, &plan).unwrap();
        // What the broker's earlier releases wrote.
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(process.conf())
            .unwrap();
        conf.write_all(b"daemonize yes\n").unwrap();
        let _reaper = Reaper(process.dir.clone());
        let err = process.ensure_running(&config).await.unwrap_err();
        assert!(
            matches!(err, StartError::PortTaken(p) if p == port),
            "{err:?}"
        );
        assert_eq!(processes_in(&process.dir), Vec::<u32>::new());
        drop(held);
        drop(listener);
        process.ensure_running(&config).await.unwrap();
        let pid = process.running_pid().expect("a pid file naming the server");
        assert_eq!(processes_in(&process.dir), vec![pid as u32]);
        process.remove().await.unwrap();
        assert!(!std::path::Path::new(&format!("/proc/{pid}/cwd")).exists());
    }

    /// A fresh data directory, a local config whose one port is `port`, the default plan, and
    /// instance `name`'s process there (nothing made yet).
    fn instance(name: &str, port: u16) -> (tempfile::TempDir, LocalConfig, PlanConfig, Process) {
        let data = tempfile::tempdir().unwrap();
        let config = serde_json::from_value(serde_json::json!({
            "data_dir": data.path(),
            "ports": [port, port],
        }))
        .unwrap();
        let plan = serde_json::from_value(serde_json::json!({"kind": "local"})).unwrap();
        let process = Process {
            dir: data.path().join(name),
            port,
        };
        (data, config, plan, process)
    }

    /// A program that listens on the port before the server does gets no login: the broker
    /// logs in through the socket in the instance's directory, which no one else can hold.
    #[tokio::test]
    async fn a_program_on_the_port_never_gets_the_admin_login() {
        let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = squatter.local_addr().unwrap().port();
        let (_data, config, plan, process) = instance("op_squatted", port);
        process.write_conf(&config, &plan).unwrap();
        let _reaper = Reaper(process.dir.clone());
        let err = process.ensure_running(&config).await.unwrap_err();
        assert!(
            matches!(err, StartError::PortTaken(p) if p == port),
            "{err:?}"
        );
        // A connection the broker made would wait in the listener's queue.
        squatter.set_nonblocking(true).unwrap();
        match squatter.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
            Ok((mut conn, _)) => {
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                let mut sent = Vec::new();
                let _ = std::io::Read::read_to_end(&mut conn, &mut sent);
                let login = String::from_utf8_lossy(&sent).contains("AUTH");
                panic!("the broker connected to the program on its port (an AUTH sent: {login})");
            }
        }
    }

    /// An instance whose config file predates the socket gets it at its next start, and the
    /// broker's logins go through it from then on.
    #[tokio::test]
    async fn a_config_without_the_socket_gets_it_at_the_next_start() {
        let (_data, config, plan, process) = instance("op_older", osb_testkit::free_port());
        process.write_conf(&config, &plan).unwrap();
        let older: String = process
            .conf_text()
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("unixsocket"))
            .map(|l| format!("{l}\n"))
            .collect();
        process.replace_conf(&older).unwrap();
        // A plan change keeps it so: a process started from it would have no socket.
        process.write_conf(&config, &plan).unwrap();
        assert!(!process.conf_names_socket());
        let _reaper = Reaper(process.dir.clone());
        process.ensure_running(&config).await.unwrap();
        assert!(process.conf_names_socket());
        let mut conn = process.admin(&config).unwrap().conn().await.unwrap();
        let info: String = redis::cmd("CLIENT")
            .arg("INFO")
            .query_async(&mut conn)
            .await
            .unwrap();
        let socket = process.socket();
        assert!(info.contains(&socket.display().to_string()), "{info}");
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        process.remove().await.unwrap();
    }

    /// Up to the `data_dir` the broker warns beyond, an instance of the longest name still has
    /// its socket.
    #[test]
    fn the_longest_name_has_its_socket_up_to_the_data_dir_the_broker_warns_beyond() {
        let id = osb_core::ids::InstanceId::parse(&"Long-Id".repeat(18)).unwrap();
        let name = KeyPrefix::for_instance("platform-b", &id);
        assert_eq!(name.as_str().len(), KeyPrefix::MAX_LEN);
        let fits = |len: usize| {
            let (_data, mut config, _, _) = instance("op_unused", 1);
            config.data_dir = PathBuf::from(format!("/{}", "d".repeat(len - 1)));
            Process::new(&config, &name, 1).socket_fits()
        };
        assert!(fits(DATA_DIR_FOR_SOCKETS));
        assert!(!fits(DATA_DIR_FOR_SOCKETS + 1));
    }

    /// An instance directory someone else made first (or left open) is not written to: it
    /// would hold the admin password and socket where others reach them.
    #[test]
    fn a_directory_open_to_others_is_refused() {
        let (_data, config, plan, process) = instance("op_made_before", 1);
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&process.dir)
            .unwrap();
        let err = process.write_conf(&config, &plan).unwrap_err();
        assert!(err.to_string().contains("closed to other users"), "{err}");
        assert!(!process.configured());
    }
}
