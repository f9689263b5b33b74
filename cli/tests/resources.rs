//! Resources end to end: workers declaring cores, GPUs by index, memory
//! and named resources (no GPU is needed: the bookkeeping is what is
//! tested), the hub's status showing them.

use std::process::Command;

use crate::common::*;

/// Starts `zcluster worker --hub FILE ARGS` (not waiting for it).
fn worker(hub: &Hub, name: &str, args: &[&str]) -> Proc {
    Proc::spawn(
        Command::new(zcluster_path())
            .arg("worker")
            .arg("--hub")
            .arg(&hub.file)
            .args(args),
        hub.dir().join(format!("worker-{name}.log")),
    )
}

#[test]
fn a_worker_refuses_a_malformed_offer_naming_the_word() {
    for (args, named) in [
        (&["--gpus", "x"][..], "--gpus \"x\""),
        (&["--mem", "4Q"][..], "--mem \"4Q\""),
        (&["--resource", "licences"][..], "--resource \"licences\""),
        (&["--cpus", "0"][..], "--cpus 0"),
    ] {
        let output = zcluster()
            .args(["worker", "--hub", "/nonexistent/hub.json"])
            .args(args)
            .output()
            .expect("ran");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(named), "{args:?}: {stderr}");
    }
}

#[test]
fn workers_offer_what_they_declare_and_status_shows_it() {
    let hub = Hub::start();
    let _w = worker(
        &hub,
        "a",
        &[
            "--cpus",
            "8",
            "--gpus",
            "0,1,2,3",
            "--mem",
            "16G",
            "--resource",
            "licences=a,b",
        ],
    );
    let _j = worker(&hub, "b", &["-j", "3", "--gpus", "none", "--mem", "1G"]);
    wait_until("both workers to register", || hub.engines().len() == 2);
    let mut offers: Vec<(u64, String, String)> = hub
        .engines()
        .iter()
        .map(|e| {
            (
                e["slots"].as_u64().unwrap_or_default(),
                e["offer"].as_str().unwrap_or_default().to_string(),
                e["in_use"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    offers.sort();
    assert_eq!(
        offers,
        [
            (3, "3 cpus, mem 1G".to_string(), "0/3 cpus".to_string()),
            (
                8,
                "8 cpus, gpus 0,1,2,3, mem 16G, licences a,b".to_string(),
                "0/8 cpus, 0/4 gpus".to_string()
            ),
        ]
    );
    let text = hub.cmd("status").output().expect("status");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(
            "offers: 8 cpus, gpus 0,1,2,3, mem 16G, licences a,b; in use: 0/8 cpus, 0/4 gpus"
        ),
        "{text}"
    );
}
