//! The `gluster` command line, the only management interface glusterd 10 has. Every call is
//! `gluster --mode=script --xml <args>`, the arguments as an argv (never through a local
//! shell; over SSH each one is quoted for the remote shell), one change at a time per node
//! (glusterd takes a cluster-wide lock and refuses a second transaction: such a refusal is
//! retried with backoff; queries go beside them), and the XML reply parsed into typed results. `opRet`, `opErrno` and
//! `opErrstr` become a [`GlusterError`] that says what Gluster said.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use osb_core::BrokerError;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;

/// Where the `gluster` command runs.
#[derive(Debug, Clone)]
pub enum Node {
    /// On the broker's own host.
    Local { binary: PathBuf },
    /// On a server node, over SSH (key-based, no prompts).
    Ssh {
        /// `user@host` or a host name from the SSH config.
        destination: String,
        identity: Option<PathBuf>,
    },
}

impl Node {
    /// Removes directory `path` and everything in it on brick host `host`: here, or over
    /// SSH as the same user the CLI node is reached as. Gone already is fine.
    pub async fn remove_tree(&self, host: &str, path: &str) -> Result<(), BrokerError> {
        let argv = ["rm", "-rf", "--", path];
        let mut command = match self {
            Node::Local { .. } => {
                let mut command = tokio::process::Command::new(argv[0]);
                command.args(&argv[1..]);
                command
            }
            Node::Ssh {
                destination,
                identity,
            } => {
                let at = match destination.split_once('@') {
                    Some((user, _)) => format!("{user}@{host}"),
                    None => host.to_owned(),
                };
                ssh(&at, identity.as_deref(), &argv)
            }
        };
        command.kill_on_drop(true);
        let out = tokio::time::timeout(CALL_TIMEOUT, command.output())
            .await
            .map_err(|_| BrokerError::Failed(format!("removing {host}:{path}: no answer")))?
            .map_err(|e| BrokerError::Failed(format!("removing {host}:{path}: {e}")))?;
        if !out.status.success() {
            return Err(BrokerError::Failed(format!(
                "removing {host}:{path}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }
}

/// `ssh <destination> -- <argv>`, each word quoted for the remote shell.
fn ssh(
    destination: &str,
    identity: Option<&std::path::Path>,
    argv: &[&str],
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new("ssh");
    command.args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]);
    if let Some(key) = identity {
        command.arg("-i").arg(key);
    }
    let line: Vec<String> = argv.iter().copied().map(shell_quote).collect();
    command.arg(destination).arg("--").arg(line.join(" "));
    command
}

#[derive(Debug, thiserror::Error)]
pub enum GlusterError {
    /// The command could not be started, or glusterd did not answer: nothing was done.
    #[error("glusterd of {node} unreachable: {why}")]
    Unreachable { node: String, why: String },
    /// Gluster refused or failed the operation, in its own words.
    #[error("Gluster refused {op}: {message} (errno {errno})")]
    Refused {
        op: String,
        errno: i64,
        message: String,
    },
    /// A change got no answer in time: glusterd may have made it or not.
    #[error("gluster {op} on {node} gave no answer within {secs} s; it may have been made")]
    NoAnswer { op: String, node: String, secs: u64 },
    /// Another transaction held the cluster lock through every retry.
    #[error("Gluster stayed busy with another transaction during {op}")]
    Busy { op: String },
    /// glusterd's own mount of the volume, which a quota change goes through, stayed
    /// disconnected through every retry; nothing was changed.
    #[error("glusterd's mount of the volume stayed disconnected during {op}")]
    MountDown { op: String },
    /// An answer that is not the XML `gluster --xml` writes.
    #[error("gluster {op} answered what the broker cannot read: {why}")]
    Unreadable { op: String, why: String },
}

impl From<GlusterError> for BrokerError {
    fn from(e: GlusterError) -> Self {
        match e {
            GlusterError::Unreachable { .. } => BrokerError::Unavailable(e.to_string()),
            // A busy cluster or a disconnected quota mount did nothing for this call: a retry
            // later can work.
            GlusterError::Busy { .. } | GlusterError::MountDown { .. } => {
                BrokerError::Unavailable(e.to_string())
            }
            GlusterError::Refused { .. }
            | GlusterError::Unreadable { .. }
            | GlusterError::NoAnswer { .. } => BrokerError::Failed(e.to_string()),
        }
    }
}

/// The body of a `gluster --xml` reply (the children of `<cliOutput>` after the status), for a
/// call whose body the caller does not read.
#[derive(Debug, Default, Deserialize)]
pub struct Nothing {}

/// `volume list`.
#[derive(Debug, Deserialize)]
pub struct VolumeList {
    #[serde(rename = "volList")]
    pub list: VolumeNames,
}

#[derive(Debug, Default, Deserialize)]
pub struct VolumeNames {
    #[serde(rename = "volume", default)]
    pub names: Vec<String>,
}

/// `volume info <volume>`.
#[derive(Debug, Deserialize)]
pub struct VolumeInfo {
    #[serde(rename = "volInfo")]
    pub info: Volumes,
}

#[derive(Debug, Deserialize)]
pub struct Volumes {
    pub volumes: VolumeEntries,
}

#[derive(Debug, Default, Deserialize)]
pub struct VolumeEntries {
    #[serde(rename = "volume", default)]
    pub volumes: Vec<Volume>,
}

#[derive(Debug, Deserialize)]
pub struct Volume {
    pub name: String,
    #[serde(rename = "statusStr")]
    pub status: String,
    #[serde(rename = "replicaCount")]
    pub replica_count: u32,
    pub bricks: Bricks,
    #[serde(default)]
    pub options: Options,
}

#[derive(Debug, Default, Deserialize)]
pub struct Bricks {
    #[serde(rename = "brick", default)]
    pub bricks: Vec<Brick>,
}

#[derive(Debug, Deserialize)]
pub struct Brick {
    /// `host:/path`.
    pub name: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct Options {
    #[serde(rename = "option", default)]
    pub options: Vec<VolumeOption>,
}

#[derive(Debug, Deserialize)]
pub struct VolumeOption {
    pub name: String,
    pub value: String,
}

impl Volume {
    /// The value of option `name`, when the volume sets it.
    pub fn option(&self, name: &str) -> Option<&str> {
        self.options
            .options
            .iter()
            .find(|o| o.name == name)
            .map(|o| o.value.as_str())
    }
}

/// `volume quota <volume> list <path>`.
#[derive(Debug, Deserialize)]
pub struct QuotaList {
    #[serde(rename = "volQuota")]
    pub quota: QuotaLimits,
}

#[derive(Debug, Default, Deserialize)]
pub struct QuotaLimits {
    #[serde(rename = "limit", default)]
    pub limits: Vec<QuotaLimit>,
}

#[derive(Debug, Deserialize)]
pub struct QuotaLimit {
    pub path: String,
    pub hard_limit: u64,
    pub used_space: u64,
}

/// How long a call glusterd refuses for a [`passing`] reason is tried again: a cluster lock
/// another transaction holds (a quota change, another replica's provision) lasts seconds, and
/// this stays well under a platform's 60 s request timeout. The waits start short and double
/// up to a cap, so a lock let go is seen within that much.
const PASSING_BUDGET: Duration = Duration::from_secs(30);
const FIRST_WAIT: Duration = Duration::from_millis(100);
const LONGEST_WAIT: Duration = Duration::from_secs(2);
/// How long one `gluster` (or `ssh`) command may run: glusterd's own transaction timeout.
/// A query past it is an unreachable node; a change past it may still have been made.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// One node's `gluster`, one call at a time.
pub struct Gluster {
    node: Node,
    serial: Mutex<()>,
}

impl Gluster {
    pub fn node(&self) -> &Node {
        &self.node
    }

    pub fn new(node: Node) -> Self {
        Self {
            node,
            serial: Mutex::new(()),
        }
    }

    fn label(&self) -> String {
        match &self.node {
            Node::Local { .. } => "this host".into(),
            Node::Ssh { destination, .. } => destination.clone(),
        }
    }

    /// Runs a change, `gluster --mode=script --xml <args>`, after the node's changes before
    /// it (glusterd runs one transaction at a time), and reads the reply's body as `T`.
    pub async fn run<T: DeserializeOwned>(&self, args: &[&str]) -> Result<T, GlusterError> {
        let _turn = self.serial.lock().await;
        self.call(args, true).await
    }

    /// Runs a query (`volume list`, `volume info`, `volume quota <v> list`): glusterd answers
    /// those without its cluster lock, so they need not wait for the node's changes.
    pub async fn read<T: DeserializeOwned>(&self, args: &[&str]) -> Result<T, GlusterError> {
        self.call(args, false).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        args: &[&str],
        change: bool,
    ) -> Result<T, GlusterError> {
        let op = args.iter().take(2).copied().collect::<Vec<_>>().join(" ");
        let mut wait = FIRST_WAIT;
        let mut attempt = 0;
        let retry_until = Instant::now() + PASSING_BUDGET;
        loop {
            attempt += 1;
            let unreachable = |why: String| GlusterError::Unreachable {
                node: self.label(),
                why,
            };
            let mut command = self.command(args);
            command.kill_on_drop(true);
            let output = match tokio::time::timeout(CALL_TIMEOUT, command.output()).await {
                Ok(output) => output.map_err(|e| unreachable(e.to_string()))?,
                Err(_) if change => {
                    return Err(GlusterError::NoAnswer {
                        op,
                        node: self.label(),
                        secs: CALL_TIMEOUT.as_secs(),
                    });
                }
                Err(_) => {
                    let secs = CALL_TIMEOUT.as_secs();
                    return Err(unreachable(format!("no answer within {secs} s")));
                }
            };
            // ssh's own failures (refused, timed out, host key) exit 255 before the remote
            // command wrote anything: the node was not reached, nothing was done.
            if matches!(self.node, Node::Ssh { .. })
                && output.status.code() == Some(255)
                && output.stdout.is_empty()
            {
                let said = String::from_utf8_lossy(&output.stderr);
                return Err(unreachable(format!("ssh: {}", said.trim())));
            }
            let stdout = String::from_utf8_lossy(&output.stdout);
            match parse::<T>(&op, &stdout) {
                Err(GlusterError::Refused { ref message, .. })
                    if passing(args, message) && Instant::now() + wait < retry_until =>
                {
                    tracing::debug!(%op, attempt, %message, "glusterd did nothing this time; again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(LONGEST_WAIT);
                }
                Err(GlusterError::Refused { message, .. }) if busy(&message) => {
                    return Err(GlusterError::Busy { op });
                }
                Err(GlusterError::Refused { message, .. }) if passing(args, &message) => {
                    return Err(GlusterError::MountDown { op });
                }
                Err(GlusterError::Unreadable { why, .. }) if !output.status.success() => {
                    // Not XML and a failure: the CLI's own complaint, e.g. no glusterd.
                    let stderr = String::from_utf8_lossy(&output.stderr);
                    let said = format!("{} {}", stdout.trim(), stderr.trim());
                    return Err(if said.contains("Connection failed") {
                        GlusterError::Unreachable {
                            node: self.label(),
                            why: said.trim().to_owned(),
                        }
                    } else {
                        GlusterError::Unreadable {
                            op,
                            why: format!("{why}; {}", said.trim()),
                        }
                    });
                }
                other => return other,
            }
        }
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let fixed = ["--mode=script", "--xml"];
        match &self.node {
            Node::Local { binary } => {
                let mut command = tokio::process::Command::new(binary);
                command.args(fixed).args(args);
                command
            }
            Node::Ssh {
                destination,
                identity,
            } => {
                let argv: Vec<&str> = std::iter::once("gluster")
                    .chain(fixed)
                    .chain(args.iter().copied())
                    .collect();
                ssh(destination, identity.as_deref(), &argv)
            }
        }
    }
}

/// Whether glusterd refused because another transaction held the cluster lock.
fn busy(message: &str) -> bool {
    message.contains("Another transaction is in progress") || message.contains("Locking failed")
}

/// Whether a refusal of the call `args` says glusterd did nothing this time and a later try
/// can work: the cluster lock was [`busy`], or a quota limit or removal found its FUSE mount
/// not connected (refused before any change). glusterd mounts the volume for each such change
/// and stops that mount after it; a change right after another can take the previous change's
/// mount, still shutting down, for its own (seen with two replicas provisioning at once on a
/// loaded host).
fn passing(args: &[&str], message: &str) -> bool {
    let quota_change = matches!(args, ["volume", "quota", _, "limit-usage" | "remove", ..]);
    busy(message) || (quota_change && message.contains("Transport endpoint is not connected"))
}

/// `s` as one word for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Reads a `gluster --xml` reply: its body as `T` when `opRet` is 0, else what Gluster said.
fn parse<T: DeserializeOwned>(op: &str, xml: &str) -> Result<T, GlusterError> {
    let unreadable = |why: String| GlusterError::Unreadable {
        op: op.to_owned(),
        why,
    };
    #[derive(Deserialize)]
    #[serde(rename = "cliOutput")]
    struct Status {
        #[serde(rename = "opRet")]
        op_ret: i64,
        #[serde(rename = "opErrno")]
        op_errno: i64,
        #[serde(rename = "opErrstr", default)]
        op_errstr: Option<String>,
    }
    let status: Status = quick_xml::de::from_str(xml).map_err(|e| unreadable(e.to_string()))?;
    if status.op_ret != 0 {
        return Err(GlusterError::Refused {
            op: op.to_owned(),
            errno: status.op_errno,
            message: status
                .op_errstr
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| "no reason given".into()),
        });
    }
    // The body types name the root's children they read and ignore the status ones.
    quick_xml::de::from_str(xml).map_err(|e| unreadable(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<cliOutput>
  <opRet>0</opRet>
  <opErrno>0</opErrno>
  <opErrstr/>
  <volInfo>
    <volumes>
      <volume>
        <name>kpaas-shared</name>
        <id>fa1c7c73-31a9-4900-a31c-7cb6d968b056</id>
        <status>1</status>
        <statusStr>Started</statusStr>
        <brickCount>1</brickCount>
        <replicaCount>1</replicaCount>
        <bricks>
          <brick uuid="cb2c">vm:/var/lib/b<name>vm:/var/lib/b</name><hostUuid>cb2c</hostUuid><isArbiter>0</isArbiter></brick>
        </bricks>
        <optCount>2</optCount>
        <options>
          <option><name>features.quota</name><value>on</value></option>
          <option><name>auth.allow</name><value>/a(10.0.0.1)</value></option>
        </options>
      </volume>
      <count>1</count>
    </volumes>
  </volInfo>
</cliOutput>"#;

    #[test]
    fn volume_info_reads_status_bricks_and_options() {
        let info: VolumeInfo = parse("volume info", INFO).unwrap();
        let volume = &info.info.volumes.volumes[0];
        assert_eq!(volume.name, "kpaas-shared");
        assert_eq!(volume.status, "Started");
        assert_eq!(volume.replica_count, 1);
        assert_eq!(volume.bricks.bricks[0].name, "vm:/var/lib/b");
        assert_eq!(volume.option("features.quota"), Some("on"));
        assert_eq!(volume.option("auth.allow"), Some("/a(10.0.0.1)"));
        assert_eq!(volume.option("nfs.disable"), None);
    }

    #[test]
    fn a_refusal_carries_what_gluster_said() {
        let xml = r#"<?xml version="1.0"?><cliOutput><opRet>-1</opRet><opErrno>30806</opErrno><opErrstr>Volume does not exist</opErrstr><volInfo><volumes><count>0</count></volumes></volInfo></cliOutput>"#;
        let err = parse::<VolumeInfo>("volume info", xml).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Gluster refused volume info: Volume does not exist (errno 30806)"
        );
        assert!(matches!(BrokerError::from(err), BrokerError::Failed(_)));
    }

    #[test]
    fn quota_list_reads_limit_and_use() {
        let xml = r#"<cliOutput><opRet>0</opRet><opErrno>0</opErrno><opErrstr/><volQuota><limit><path>/q2</path><hard_limit>5242880</hard_limit><soft_limit_percent>80%</soft_limit_percent><soft_limit_value>4194304</soft_limit_value><used_space>102400</used_space><avail_space>5140480</avail_space><sl_exceeded>No</sl_exceeded><hl_exceeded>No</hl_exceeded></limit></volQuota></cliOutput>"#;
        let list: QuotaList = parse("volume quota", xml).unwrap();
        let limit = &list.quota.limits[0];
        assert_eq!(
            (limit.path.as_str(), limit.hard_limit, limit.used_space),
            ("/q2", 5242880, 102400)
        );
    }

    #[test]
    fn text_that_is_no_xml_is_unreadable() {
        let err = parse::<Nothing>(
            "volume list",
            "Connection failed. Please check if gluster daemon is operational.\n",
        )
        .unwrap_err();
        assert!(matches!(err, GlusterError::Unreadable { .. }), "{err}");
    }

    #[test]
    fn words_sent_over_ssh_stay_words() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("x'; rm -rf /; '"), r"'x'\''; rm -rf /; '\'''");
    }

    /// A `gluster` in `dir` that refuses its first `refusals` calls with `message`, then
    /// succeeds; each call's arguments are a line of the file returned second.
    fn stub_gluster(dir: &std::path::Path, refusals: usize, message: &str) -> (Gluster, PathBuf) {
        let (script, calls) = (dir.join("gluster"), dir.join("calls"));
        // Written by a child process: a file this process held open for writing may be
        // inherited by another test's fork at that moment, and running it then fails with
        // "Text file busy" (seen in CI).
        let mut writer = std::process::Command::new("sh")
            .args(["-c", r#"cat > "$0" && chmod 755 "$0""#])
            .arg(&script)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(
            &mut writer.stdin.take().unwrap(),
            format!(
                r#"#!/bin/sh
echo "$@" >> {calls}
if [ "$(wc -l < {calls})" -le {refusals} ]; then
  echo '<cliOutput><opRet>-1</opRet><opErrno>30800</opErrno><opErrstr>{message}</opErrstr></cliOutput>'
  exit 1
fi
echo '<cliOutput><opRet>0</opRet><opErrno>0</opErrno><opErrstr/></cliOutput>'
"#,
                calls = calls.display()
            )
            .as_bytes(),
        )
        .unwrap();
        assert!(writer.wait().unwrap().success(), "stub gluster not written");
        (Gluster::new(Node::Local { binary: script }), calls)
    }

    /// A `gluster` whose first answer is the refusal glusterd gave a quota limit that took the
    /// previous change's dying mount (from a CI run), and whose second is a success: the call
    /// tries again and succeeds, having asked twice.
    #[tokio::test]
    async fn a_quota_change_that_found_its_mount_not_connected_is_tried_again() {
        let dir = tempfile::tempdir().unwrap();
        let down = "Failed to find the directory /var/run/gluster/v_quota_limit/op_a. Reason : Transport endpoint is not connected";
        let (gluster, calls) = stub_gluster(dir.path(), 1, down);
        let args = ["volume", "quota", "v", "limit-usage", "/op_a", "5242880"];
        gluster.run::<Nothing>(&args).await.unwrap();
        let asked = std::fs::read_to_string(&calls).unwrap();
        let line = "--mode=script --xml volume quota v limit-usage /op_a 5242880";
        assert_eq!(asked, format!("{line}\n{line}\n"));
    }

    /// A cluster lock held through more tries than a fixed count allowed (eight) is waited
    /// out, within the time budget.
    #[tokio::test]
    async fn a_change_waits_out_a_cluster_lock_held_through_many_tries() {
        let dir = tempfile::tempdir().unwrap();
        let busy = "Another transaction is in progress for v. Please try again after some time.";
        let (gluster, calls) = stub_gluster(dir.path(), 8, busy);
        let done = gluster
            .run::<Nothing>(&["volume", "set", "v", "auth.allow", "*"])
            .await;
        assert!(done.is_ok(), "{done:?}");
        assert_eq!(std::fs::read_to_string(&calls).unwrap().lines().count(), 9);
    }

    #[test]
    fn only_a_quota_change_is_tried_again_when_glusterd_s_mount_is_down() {
        let down = "Failed to find the directory /var/run/gluster/v_quota_limit/op_a. Reason : Transport endpoint is not connected";
        assert!(passing(
            &["volume", "quota", "v", "limit-usage", "/op_a", "1"],
            down
        ));
        assert!(passing(&["volume", "quota", "v", "remove", "/op_a"], down));
        assert!(!passing(&["volume", "set", "v", "auth.allow", "*"], down));
        assert!(!passing(&["volume", "quota", "v", "list", "/op_a"], down));
        let busy = "Another transaction is in progress for v. Please try again after some time.";
        assert!(passing(&["volume", "set", "v", "auth.allow", "*"], busy));
    }

    /// The real `gluster` on this machine (scripts/backends.sh sets it up): the shared test
    /// volume is listed; a volume that does not exist is Gluster's refusal.
    #[tokio::test]
    async fn the_local_gluster_answers() {
        let gluster = Gluster::new(Node::Local {
            binary: "gluster".into(),
        });
        let list: VolumeList = gluster.run(&["volume", "list"]).await.unwrap();
        assert!(
            list.list.names.iter().any(|n| n == "kpaas-shared"),
            "{list:?}"
        );
        let err = gluster
            .run::<VolumeInfo>(&["volume", "info", "kpaas-no-such-volume"])
            .await
            .unwrap_err();
        assert!(matches!(err, GlusterError::Refused { .. }), "{err}");
    }
}
