//! The service units in contrib/systemd: systemd itself finds nothing wrong
//! with them, and their command lines, with the environment file's values,
//! run a hub and a worker that exit as the units' restart rules expect.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::common::*;

const UNITS: [&str; 2] = ["zcluster-hub.service", "zcluster-worker.service"];

fn contrib() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/systemd")
}

/// `KEY=VALUE` lines of a unit's `[Service]` section or of the environment
/// file (comments and blank lines apart), in order.
fn settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn setting(unit: &str, key: &str) -> String {
    let text = std::fs::read_to_string(contrib().join(unit)).unwrap();
    settings(&text)
        .into_iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("{unit} has no {key}"))
        .1
}

/// A unit's ExecStart as words, `/usr/local/bin/zcluster` replaced by the
/// binary under test and each `${VAR}` by `env[VAR]`.
fn exec_start(unit: &str, env: &HashMap<String, String>) -> Vec<String> {
    setting(unit, "ExecStart")
        .split_whitespace()
        .map(|word| {
            if word == "/usr/local/bin/zcluster" {
                return zcluster_path().display().to_string();
            }
            match word.strip_prefix("${").and_then(|w| w.strip_suffix('}')) {
                Some(var) => env
                    .get(var)
                    .unwrap_or_else(|| {
                        panic!("{unit} uses ${{{var}}}, which zcluster.env does not set")
                    })
                    .clone(),
                None => word.to_string(),
            }
        })
        .collect()
}

#[test]
fn systemd_finds_nothing_wrong_with_the_units() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("SKIP: no systemd-analyze on this machine (.ci/run installs systemd)");
        return;
    }
    let dir = TempDir::new().unwrap();
    for unit in UNITS {
        // As installed: the binary where the unit looks for it.
        let text = std::fs::read_to_string(contrib().join(unit))
            .unwrap()
            .replace(
                "/usr/local/bin/zcluster",
                &zcluster_path().display().to_string(),
            );
        let path = dir.path().join(unit);
        std::fs::write(&path, text).unwrap();
        let output = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path)
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "{unit}: {said}");
        assert!(said.trim().is_empty(), "{unit}: {said}");
    }
}

#[test]
fn the_units_command_lines_run_a_hub_and_a_worker_that_exit_as_restart_expects() {
    let dir = TempDir::new().unwrap();
    // The environment file's values, with its paths moved into `dir`.
    let file = std::fs::read_to_string(contrib().join("zcluster.env")).unwrap();
    let mut env: HashMap<String, String> = settings(&file)
        .into_iter()
        .map(|(k, v)| {
            let v = v.replace("/var/lib/zcluster", &dir.path().display().to_string());
            (k, v)
        })
        .collect();
    env.insert("ZCLUSTER_IP".into(), "127.0.0.1".into());
    let hub_file = env["ZCLUSTER_HUB"].clone();
    let hub_words = exec_start("zcluster-hub.service", &env);
    let mut hub = ChildGuard::spawn(Command::new(&hub_words[0]).args(&hub_words[1..]));
    let status = || {
        zcluster()
            .args(["status", "--json", "--hub", &hub_file])
            .output()
            .unwrap()
    };
    wait_until("the hub to answer", || status().status.success());
    assert!(Path::new(&env["ZCLUSTER_STORE"]).exists());

    // The worker takes the hub and its slots from the environment alone.
    let worker_words = exec_start("zcluster-worker.service", &env);
    let restart_status: i32 = setting("zcluster-worker.service", "RestartForceExitStatus")
        .parse()
        .unwrap();
    let worker = |env: &HashMap<String, String>| {
        let mut command = Command::new(&worker_words[0]);
        command
            .args(&worker_words[1..])
            .env_remove("ZCLUSTER_HUB")
            .env_remove("ZCLUSTER_JOBS")
            .env("ZCLUSTER_HUB", &env["ZCLUSTER_HUB"])
            .env("ZCLUSTER_JOBS", "3");
        ChildGuard::spawn(&mut command)
    };
    let slots = || {
        let out: serde_json::Value = serde_json::from_slice(&status().stdout).unwrap();
        out["engines"].as_array().map_or(0, |e| {
            e.iter().filter_map(|e| e["slots"].as_u64()).sum::<u64>()
        })
    };
    // `zcluster kill --restart` exits with the status the unit restarts on
    // at once; `zcluster kill` exits 0, which Restart=on-failure leaves down.
    for (args, expected) in [(&["--restart"][..], restart_status), (&[][..], 0)] {
        let mut w = worker(&env);
        wait_until("the worker's 3 slots to register", || slots() == 3);
        zcluster()
            .args(["kill", "--hub", &hub_file])
            .args(args)
            .timeout(FAIL_AFTER)
            .assert()
            .success();
        assert_eq!(w.wait().code(), Some(expected), "kill {args:?}");
        wait_until("the engine to leave", || slots() == 0);
    }
    zcluster()
        .args(["shutdown", "--hub", &hub_file])
        .timeout(FAIL_AFTER)
        .assert()
        .success();
    assert!(hub.wait().success());
}
