//! The live views of a cluster as a person meets them: `zcluster job
//! progress` following a job started elsewhere, and `zcluster status
//! --watch` on a real pseudo-terminal. Real hub, workers and maps.

use std::time::Duration;

use crate::common::*;

/// `zcluster job progress JOB` run to its end: exit code and stderr.
fn progress(hub: &Hub, job: u64) -> (Option<i32>, String) {
    let output = zcluster()
        .args([
            "job",
            "progress",
            &job.to_string(),
            "--interval",
            "50ms",
            "--hub",
        ])
        .arg(&hub.file)
        .timeout(FAIL_AFTER)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn job_progress_follows_a_job_started_elsewhere_and_exits_as_it_did() {
    let hub = Hub::start();
    let _workers = hub.workers(1, 2);

    // Running when followed: it waits for the end, and says how it went.
    let inputs = input_file(hub.dir(), "ok.txt", &["0.2"; 6]);
    let mut map = hub.spawn_map("ok", &[inputs.to_str().unwrap(), "--", "sleep", "{}"]);
    wait_until("the job to start", || map.job().is_some());
    let job = map.job().unwrap();
    let (code, stderr) = progress(&hub, job);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!("job {job} finished: 6 ok, 0 failed, of 6")),
        "{stderr}"
    );
    assert!(map.wait().success());

    // A job with a failed task: status 1, as its map's.
    let inputs = input_file(hub.dir(), "bad.txt", &["0", "1", "0"]);
    let mut map = hub.spawn_map(
        "bad",
        &[
            inputs.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "sleep 0.3; exit $0",
            "{}",
        ],
    );
    wait_until("the job to start", || map.job().is_some());
    let job = map.job().unwrap();
    let (code, stderr) = progress(&hub, job);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("1 failed, of 3"), "{stderr}");
    assert_eq!(map.wait().code(), Some(1));

    // Over already: the same answer at once.
    let (code, _) = progress(&hub, job);
    assert_eq!(code, Some(1));

    // Cancelled by Ctrl-C at its client: not a success.
    let inputs = input_file(hub.dir(), "long.txt", &["30"; 4]);
    let mut map = hub.spawn_map("long", &[inputs.to_str().unwrap(), "--", "sleep", "{}"]);
    wait_until("the long job to run", || {
        map.job()
            .and_then(|job| hub.job(job))
            .is_some_and(|j| j["running"].as_u64() > Some(0))
    });
    let job = map.job().unwrap();
    let mut follower = ChildGuard::spawn(
        std::process::Command::new(zcluster_path())
            .args(["job", "progress", &job.to_string(), "--hub"])
            .arg(&hub.file)
            .stderr(std::process::Stdio::piped()),
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(map.guard.pid()),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    map.wait();
    let status = exit_within(&mut follower, Duration::from_secs(10)).expect("progress ends");
    assert_eq!(status.code(), Some(1));

    // A job the hub never had: a mistake in what was asked.
    let (code, stderr) = progress(&hub, 999);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("no job 999"), "{stderr}");
}
