//! glusterd stopped under a running broker. A test binary of its own: cargo runs test
//! binaries one after another, so no other test needs glusterd while this one has it down.
//! The bricks (`glusterfsd`) keep running; only management is gone.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use osb_testkit::{Client as Osb, check_backend_down, fresh_id, start_broker};
use support::{Mounted, deploy_config};

const SERVICE: &str = "642e1a24-21c8-450d-b658-88089f34fa0c";
const SMALL: &str = "b777040f-0d08-4ad4-a50a-614cf1d4b985";

fn gluster_answers() -> bool {
    Command::new("gluster")
        .args(["--mode=script", "volume", "info", "kpaas-shared"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether glusterd answers and reports every process of the volume (brick, quota daemon)
/// online: what the tests that come after need.
fn volume_online() -> bool {
    Command::new("gluster")
        .args(["--mode=script", "--xml", "volume", "status", "kpaas-shared"])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|out| {
            let xml = String::from_utf8_lossy(&out.stdout);
            out.status.success()
                && xml.contains("<opRet>0</opRet>")
                && xml.contains("<status>1</status>")
                && !xml.contains("<status>0</status>")
        })
}

/// glusterd stopped; started again (as scripts/backends.sh starts it) when dropped, a failed
/// test included.
struct Stopped;

impl Stopped {
    fn glusterd() -> Self {
        let status = Command::new("pkill")
            .args(["-x", "glusterd"])
            .status()
            .unwrap();
        assert!(status.success(), "no glusterd to stop");
        let deadline = Instant::now() + Duration::from_secs(20);
        while gluster_answers() {
            assert!(Instant::now() < deadline, "glusterd did not stop");
            std::thread::sleep(Duration::from_millis(100));
        }
        Stopped
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = Command::new("glusterd")
            .args(["-p", "/run/glusterd.pid"])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !volume_online() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        // Panicking again while a failed test unwinds would abort the run.
        if !std::thread::panicking() {
            assert!(
                volume_online(),
                "glusterd or the volume's processes did not come back within 60 s"
            );
        }
    }
}

/// With glusterd stopped, `/ready`, a provision and a bind answer 503 naming glusterd, nothing
/// is recorded, the store still serves the instance; started again, the broker carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_glusterd_is_a_503_and_nothing_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let text = deploy_config("kpaas-shared", &dir.path().join("admin"));
    let config = dir.path().join("glusterfs-broker.toml");
    std::fs::write(&config, text).unwrap();
    let binary = Path::new(env!("CARGO_BIN_EXE_glusterfs-broker"));
    let broker = start_broker(binary, &config, dir.path(), &[], "/ready")
        .await
        .unwrap();
    let _admin = Mounted(dir.path().join("admin"));
    let target = broker.target(SERVICE, SMALL);
    let c = Osb::new(target.clone());
    let id = fresh_id();
    c.provision_ready(&id, SMALL).await.unwrap();

    {
        let _down = Stopped::glusterd();
        check_backend_down(&target, &id, &fresh_id(), "glusterd", osb_testkit::PASSWORD)
            .await
            .unwrap();
    }
    let bid = fresh_id();
    c.bind_ready(&id, &bid, SMALL).await.unwrap();
    c.unbind_done(&id, &bid, SMALL).await.unwrap();
    c.deprovision_done(&id, SMALL).await.unwrap();
}
