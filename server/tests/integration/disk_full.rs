//! A full disk: puts answer `507 storage_full` and store nothing (no version is skipped or
//! half-written), reads keep working, and writes resume once there is room again. The test
//! needs a small filesystem of its own, a tmpfs it mounts, which takes root (CAP_SYS_ADMIN);
//! without it the test prints that it was skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

use axum::http::StatusCode;

use crate::support::test_app_with;

/// A tmpfs of a given size, unmounted (lazily: the server may still hold files) on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, kib: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| Tmpfs(path.to_owned()))
    }

    fn resize(&self, kib: u64) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={kib}k")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success(), "remount {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_refuses_puts_with_507_keeps_reads_and_recovers() {
    let scratch = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&scratch.path().join("disk"), 2048) else {
        println!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let app = test_app_with(|c| c.data_dir = disk.0.join("data"));
    let value = format!("\"{}\"", "v".repeat(100 << 10));

    let mut stored = 0;
    let refused = loop {
        let answer = app.put(&format!("k{stored}"), &value).await;
        if answer.status != StatusCode::OK {
            break answer;
        }
        stored += 1;
        assert!(stored < 100, "2 MiB took 100 values of 100 KiB");
    };
    assert!(stored > 0, "nothing fit");
    let body = refused.assert_error(StatusCode::INSUFFICIENT_STORAGE, "storage_full");
    assert!(body["detail"].as_str().unwrap().contains("disk"), "{body}");
    // Still full: refused again, the same way.
    app.put(&format!("k{stored}"), &value)
        .await
        .assert_error(StatusCode::INSUFFICIENT_STORAGE, "storage_full");

    // Every acknowledged write reads back; the refused key does not exist.
    for i in 0..stored {
        let got = app.get(&format!("/get/k{i}")).await;
        assert_eq!(got.status, StatusCode::OK, "k{i}: {}", got.text);
        assert_eq!(got.json()["version"], 1);
    }
    app.get(&format!("/get/k{stored}"))
        .await
        .assert_error(StatusCode::NOT_FOUND, "key_not_found");

    // Room again: writes resume where they were, with no version skipped.
    disk.resize(16 << 10);
    let answer = app.put(&format!("k{stored}"), &value).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_eq!(answer.json()["version"], 1);
    let answer = app.put("k0", &value).await;
    assert_eq!(answer.json()["version"], 2, "{}", answer.text);
    drop(app);
}
