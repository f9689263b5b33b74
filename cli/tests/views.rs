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

/// A program on a real pseudo-terminal, its screen read by a terminal
/// emulator as the bytes arrive.
struct OnPty {
    child: ChildGuard,
    master: std::fs::File,
    parser: std::sync::Arc<std::sync::Mutex<vt100::Parser>>,
}

impl OnPty {
    /// Starts `zcluster ARGS` with the pty's slave as its controlling
    /// terminal (a session of its own, so resizing sends it SIGWINCH).
    fn spawn(args: &[&std::ffi::OsStr], rows: u16, cols: u16) -> Self {
        use std::os::unix::process::CommandExt;
        let size = nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&size), None).expect("openpty");
        let slave = pty.slave;
        let mut command = std::process::Command::new(zcluster_path());
        command
            .args(args)
            .env("TERM", "xterm-256color")
            .stdin(std::process::Stdio::from(slave.try_clone().unwrap()))
            .stdout(std::process::Stdio::from(slave.try_clone().unwrap()))
            .stderr(std::process::Stdio::from(slave));
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(|| {
                nix::unistd::setsid()?;
                if nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = ChildGuard::spawn(&mut command);
        let master = std::fs::File::from(pty.master);
        let parser = std::sync::Arc::new(std::sync::Mutex::new(vt100::Parser::new(rows, cols, 0)));
        let mut reader = master.try_clone().unwrap();
        let screen = parser.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 8192];
            // EIO once the child's side is closed: the end.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    return;
                }
                screen.lock().unwrap().process(&buf[..n]);
            }
        });
        OnPty {
            child,
            master,
            parser,
        }
    }

    fn screen(&self) -> String {
        self.parser.lock().unwrap().screen().contents()
    }

    /// Waits until the screen shows `text`.
    fn wait_for(&self, text: &str) {
        wait_until(&format!("{text:?} on the screen"), || {
            self.screen().contains(text)
        });
        let _ = self.screen();
    }

    /// Whether some row ends with a box's top-right corner at column `col`
    /// (a view drawn for that width).
    fn drawn_to(&self, col: u16) -> bool {
        let parser = self.parser.lock().unwrap();
        let (rows, _) = parser.screen().size();
        (0..rows).any(|row| {
            parser
                .screen()
                .cell(row, col)
                .is_some_and(|cell| cell.contents() == "┐")
        })
    }

    fn resize(&self, rows: u16, cols: u16) {
        use std::os::fd::AsRawFd;
        let size = nix::libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: a plain ioctl on a pty master this test owns.
        let set =
            unsafe { nix::libc::ioctl(self.master.as_raw_fd(), nix::libc::TIOCSWINSZ, &size) };
        assert_eq!(set, 0, "TIOCSWINSZ");
        self.parser.lock().unwrap().set_size(rows, cols);
    }

    fn type_keys(&mut self, keys: &[u8]) {
        use std::io::Write;
        self.master.write_all(keys).unwrap();
        self.master.flush().unwrap();
    }
}

#[test]
fn status_watch_draws_the_cluster_live_on_a_real_terminal() {
    let hub = Hub::start();
    let _workers = hub.workers(1, 2);
    let mut watch = OnPty::spawn(
        &[
            "status".as_ref(),
            "--watch".as_ref(),
            "--interval".as_ref(),
            "200ms".as_ref(),
            "--hub".as_ref(),
            hub.file.as_os_str(),
        ],
        30,
        100,
    );
    watch.wait_for("connected");
    watch.wait_for("0/2 slots busy");
    assert!(watch.drawn_to(99), "{}", watch.screen());

    // A job runs to its end, one task failing with its reason.
    let inputs = input_file(hub.dir(), "mixed.txt", &["0", "0", "0", "7"]);
    let output = hub
        .cmd("map")
        .arg(&inputs)
        .args(["--no-progress", "--", "sh", "-c", "exit $0", "{}"])
        .timeout(FAIL_AFTER)
        .output()
        .unwrap();
    let job = job_of(&output);
    watch.wait_for("100%");
    watch.wait_for(&format!("{job}/"));
    watch.wait_for("status 7");

    // A larger terminal: redrawn to its new width.
    watch.resize(40, 140);
    wait_until("a redraw at 140 columns", || watch.drawn_to(139));

    // The hub goes: said, and asked again; it comes back: said.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(hub.proc.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    watch.wait_for("hub gone");
    let _again = Hub::spawn_hub(hub.dir(), &hub.file, &hub.store, &[]);
    watch.wait_for("hub restarted");

    // q leaves, the terminal given back.
    watch.type_keys(b"q");
    let status = exit_within(&mut watch.child, Duration::from_secs(5)).expect("the view ends");
    assert!(status.success());
}

/// The job's `client_attached` as `status --json` shows it.
fn client_attached(hub: &Hub, job: u64) -> serde_json::Value {
    hub.job(job).expect("the job is in status")["client_attached"].clone()
}

#[test]
fn a_job_shows_its_client_attached_while_it_follows_and_gone_once_killed() {
    let hub = Hub::start();
    let _workers = hub.workers(1, 2);

    // Results stream in for seven seconds after the client sent its last
    // task: it hears from the hub all the time, and still speaks up.
    let inputs = input_file(hub.dir(), "stream.txt", &["x"; 28]);
    let mut args = vec![inputs.to_str().unwrap().to_string()];
    args.extend(slow_echo("0.5"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut map = hub.spawn_map("stream", &args);
    wait_until("the job to start", || map.job().is_some());
    let job = map.job().unwrap();
    let started = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(6));
    let shown = hub.job(job).unwrap();
    if shown["pending"].as_u64().unwrap() + shown["running"].as_u64().unwrap() > 0 {
        assert_eq!(shown["client_attached"], true, "{shown}");
    } else {
        panic!(
            "the job ended within {:?}: too fast to tell",
            started.elapsed()
        );
    }
    assert!(map.wait().success(), "{}", map.stderr());

    let inputs = input_file(hub.dir(), "slow.txt", &["a", "b"]);
    let mut args = vec![inputs.to_str().unwrap().to_string()];
    args.extend(slow_echo("120"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut map = hub.spawn_map("slow", &args);
    wait_until("the job to start", || map.job().is_some());
    let job = map.job().unwrap();
    wait_until("both tasks to run", || {
        hub.job(job).is_some_and(|j| j["running"] == 2)
    });

    // Both tasks run for minutes: no result comes and the client has
    // nothing left to send. Past the hub's limit of five silent seconds it
    // still counts as attached, because a following client checks in.
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(client_attached(&hub, job), true, "{}", hub.status());
    let table = hub.cmd("status").output().unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("CLIENT"), "{table}");
    assert!(table.contains("attached"), "{table}");

    // Killed: the job runs on, and shows its client gone.
    let killed = std::time::Instant::now();
    map.guard.0.as_mut().unwrap().kill().unwrap();
    map.wait();
    wait_until("the client to show as gone", || {
        client_attached(&hub, job) == false
    });
    let after = killed.elapsed();
    assert!(
        after >= Duration::from_secs(3),
        "gone after {after:?}: too soon for a 5 s limit"
    );
    assert_eq!(
        hub.job(job).unwrap()["running"],
        2,
        "the job stopped with its client"
    );
    let table = hub.cmd("status").output().unwrap();
    assert!(String::from_utf8_lossy(&table.stdout).contains("gone"));

    // Another client takes it over: attached again.
    let mut attach = vec!["--attach".to_string(), job.to_string()];
    attach.extend(args.iter().map(|a| a.to_string()));
    let attach: Vec<&str> = attach.iter().map(String::as_str).collect();
    let _again = hub.spawn_map("again", &attach);
    wait_until("the new client to show as attached", || {
        client_attached(&hub, job) == true
    });
}
