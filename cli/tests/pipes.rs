//! A closed standard output (`zcluster status | head -0`): every command
//! ends quietly, without a panic (exit 101) or an error about the pipe.
//! Query commands exit 0, as ripgrep does; `zcluster map` stops as after
//! Ctrl-C and exits 141, as shells report a process a closed pipe killed.
//! Each command gets a stdout pipe whose read end is closed before it
//! starts, so its first write fails whatever the timing.

use std::fs::File;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// Runs `zcluster ARGS` with its stdout a pipe nobody reads; its exit
/// status, its stderr and how long it took.
fn with_closed_stdout(dir: &Path, args: &[&str]) -> (ExitStatus, String, Duration) {
    let (read, write) = nix::unistd::pipe().expect("a pipe");
    drop(read);
    let err = dir.join(format!(
        "closed-stdout-{}.err",
        args.join("_").replace('/', "_")
    ));
    let started = Instant::now();
    let mut child = ChildGuard::spawn(
        Command::new(zcluster_path())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(write))
            .stderr(File::create(&err).expect("create stderr file")),
    );
    let status = child.wait();
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    (status, stderr, started.elapsed())
}

fn assert_quiet(args: &[&str], status: ExitStatus, stderr: &str, code: i32) {
    let shown = args.join(" ");
    assert!(!stderr.contains("panicked"), "`{shown}` panicked: {stderr}");
    assert!(
        !stderr.to_lowercase().contains("broken pipe"),
        "`{shown}` complained about the pipe: {stderr}"
    );
    assert_eq!(status.code(), Some(code), "`{shown}`: {stderr}");
}

#[test]
fn query_commands_end_quietly_on_a_closed_stdout() {
    let hub = Hub::start();
    let _workers = hub.workers(1, 2);
    let inputs = input_file(hub.dir(), "words", &["a", "b", "c"]);
    let job = job_of(&hub.map_ok(&inputs, &["--", "echo"])).to_string();
    let file = hub.file.to_str().unwrap();
    let runs: [&[&str]; 6] = [
        &["status", "--hub", file],
        &["status", "--hub", file, "--json"],
        &["results", &job, "--hub", file],
        &["results", &job, "--hub", file, "--json"],
        &["results", &job, "--hub", file, "--status-only"],
        &["ping", "--hub", file],
    ];
    for args in runs {
        let (status, stderr, _) = with_closed_stdout(hub.dir(), args);
        assert_quiet(args, status, &stderr, 0);
    }
}

/// A map whose reader went away stops (nothing new starts, running tasks
/// are killed) instead of running every input for nobody, and says so.
#[test]
fn map_stops_quietly_on_a_closed_stdout() {
    const INPUTS: usize = 400;
    let hub = Hub::start();
    let _workers = hub.workers(1, 2);
    let (inputs, _) = numbered_inputs(hub.dir(), "inputs", "", INPUTS);
    let inputs = inputs.to_str().unwrap();
    let file = hub.file.to_str().unwrap();
    let results = hub.dir().join("results.jsonl");
    let results = results.to_str().unwrap();
    // 400 tasks of 0.1 s on 2 slots would take 20 s.
    let script = "sleep 0.1; echo {}";
    for args in [
        vec!["map", "--no-progress", inputs, "--", "sh", "-c", script],
        vec![
            "map",
            "--hub",
            file,
            "--no-progress",
            "--results",
            results,
            inputs,
            "--",
            "sh",
            "-c",
            script,
        ],
    ] {
        let (status, stderr, took) = with_closed_stdout(hub.dir(), &args);
        assert_quiet(&args, status, &stderr, 141);
        assert!(
            stderr.contains("stopped: standard output closed") && stderr.contains("not run"),
            "{stderr}"
        );
        assert!(
            took < Duration::from_secs(10),
            "the map ran on for {took:?}"
        );
    }
    // What finished still went to the results file.
    let written = json_lines(Path::new(results));
    assert!(
        !written.is_empty() && written.len() < INPUTS,
        "{}",
        written.len()
    );
}
