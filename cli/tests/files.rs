//! What zcluster writes and reads on disk, with real processes: the
//! hub's directory, and connection files that are not what they seem (a
//! FIFO, a link). The attacks on the file itself (planted temp names,
//! links, another user's file) are unit tests in `src/hub/connection.rs`.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::common::*;

/// The hub's default directory (`~/.zcluster`) holds its key and its
/// store, so it is created 0700 whatever the umask lets through.
#[test]
fn the_hub_creates_its_directory_0700() {
    let home = TempDir::new().unwrap();
    let dir = home.path().join(".zcluster");
    let file = dir.join("hub.json");
    let log = home.path().join("hub.log");
    let hub = Proc::spawn(
        Command::new(zcluster_path())
            .arg("hub")
            .args(["--ip", "127.0.0.1"])
            .env("HOME", home.path())
            .env_remove("ZCLUSTER_HUB"),
        log,
    );
    wait_until("the hub to write its connection file", || {
        zcluster()
            .arg("status")
            .arg("--hub")
            .arg(&file)
            .ok()
            .is_ok()
    });
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode,
        0o700,
        "{} is {mode:o}; hub log:\n{}",
        dir.display(),
        hub.log()
    );
    assert!(home.path().join(".zcluster/hub.sqlite").exists());
}

/// A FIFO where the connection file should be: every command that reads
/// it says so and exits, instead of waiting for a writer for ever.
#[test]
fn a_fifo_as_the_connection_file_is_refused_not_waited_on() {
    let dir = TempDir::new().unwrap();
    let fifo = dir.path().join("hub.json");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let store = dir.path().join("tasks.sqlite");
    let runs: [Vec<String>; 2] = [
        vec!["status".into(), "--hub".into(), fifo.display().to_string()],
        vec![
            "hub".into(),
            "--ip=127.0.0.1".into(),
            "--connection-file".into(),
            fifo.display().to_string(),
            "--store".into(),
            store.display().to_string(),
        ],
    ];
    for args in runs {
        let err = dir.path().join(format!("{}.err", args[0]));
        let mut child = ChildGuard::spawn(
            Command::new(zcluster_path())
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&err).unwrap()),
        );
        let status = exit_within(&mut child, Duration::from_secs(10));
        if status.is_none() {
            // Release a reader stuck in open(2), so the guard can reap it.
            let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
        }
        let status = status.unwrap_or_else(|| panic!("`zcluster {}` waited on a FIFO", args[0]));
        let said = std::fs::read_to_string(&err).unwrap();
        assert_eq!(status.code(), Some(2), "zcluster {}: {said}", args[0]);
        assert!(said.contains("is a FIFO, not a regular file"), "{said}");
    }
}
