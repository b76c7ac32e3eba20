//! What glusterfs-broker's tests share: this host's name (the volume's bricks are made with
//! it), a guard that unmounts, and writes that find where the quota stops them.
// Each test binary uses part of it.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Unmounts a mount point when dropped, a failed test included.
pub struct Mounted(pub PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .stderr(Stdio::null())
            .status();
    }
}

pub fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned()
}

/// Writes into `path` in 1 MiB steps, synced, until the file system refuses or `most` bytes
/// are in: how much went in and the refusal. GlusterFS accounts usage a little behind the
/// writes, so the refusal comes at the quota or shortly after it, never exactly at it.
pub fn fill(path: &Path, most: usize) -> (usize, Option<std::io::Error>) {
    let mut file = std::fs::File::create(path).unwrap();
    let mut written = 0;
    while written < most {
        let step = file
            .write_all(&vec![0u8; 1 << 20])
            .and_then(|()| file.sync_all());
        if let Err(e) = step {
            return (written, Some(e));
        }
        written += 1 << 20;
    }
    (written, None)
}

/// Writes `bytes` zeros to `path`, synced: the error the file system gives, if any.
pub fn write(path: &Path, bytes: usize) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    for _ in 0..bytes / 65536 {
        file.write_all(&[0u8; 65536])?;
    }
    file.sync_all()
}
