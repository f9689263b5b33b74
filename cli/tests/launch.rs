//! `zcluster launch ssh` and `zcluster map --hosts` against real sshd
//! servers each test starts itself on 127.0.0.2 and 127.0.0.3 (loopback
//! addresses on Linux with no set-up), with key-only auth and a key in a
//! temp dir. Where sshd is not installed or cannot start (not root, say),
//! a test prints `SKIP: why` and returns; `.ci/run` installs it.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::common::*;

const SSHD: &str = "/usr/sbin/sshd";

/// Two (or more) sshd servers on loopback addresses, killed on drop.
struct Lab {
    dir: TempDir,
    /// `127.0.0.N:PORT` of each server, as a host file names it.
    hosts: Vec<String>,
    servers: Vec<ChildGuard>,
}

impl Lab {
    /// sshd on each of `addresses`, or `None` after printing why not.
    fn start(addresses: &[&str]) -> Option<Lab> {
        if !Path::new(SSHD).exists() {
            println!("SKIP: {SSHD} is not installed (apt-get install openssh-server)");
            return None;
        }
        if !nix::unistd::geteuid().is_root() {
            println!("SKIP: sshd needs root to log a user in");
            return None;
        }
        let dir = TempDir::new().expect("temp dir");
        let d = dir.path();
        if let Err(e) = fs::create_dir_all("/run/sshd") {
            println!("SKIP: cannot create sshd's privilege separation directory: {e}");
            return None;
        }
        for key in ["host_ed25519", "id_ed25519", "stranger_ed25519"] {
            let made = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", ""])
                .arg("-f")
                .arg(d.join(key))
                .status();
            if !made.is_ok_and(|s| s.success()) {
                println!("SKIP: ssh-keygen cannot make keys");
                return None;
            }
        }
        fs::copy(d.join("id_ed25519.pub"), d.join("authorized_keys")).expect("authorize key");
        let mut lab = Lab {
            dir,
            hosts: Vec::new(),
            servers: Vec::new(),
        };
        for (n, address) in addresses.iter().enumerate() {
            let port = free_port(address);
            let d = lab.dir.path();
            let config = d.join(format!("sshd-{n}.conf"));
            fs::write(
                &config,
                format!(
                    "ListenAddress {address}:{port}\n\
                     HostKey {host_key}\n\
                     PidFile {pid}\n\
                     AuthorizedKeysFile {keys}\n\
                     PermitRootLogin prohibit-password\n\
                     PubkeyAuthentication yes\n\
                     PasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\n\
                     UsePAM no\n\
                     StrictModes no\n",
                    host_key = d.join("host_ed25519").display(),
                    pid = d.join(format!("sshd-{n}.pid")).display(),
                    keys = d.join("authorized_keys").display(),
                ),
            )
            .expect("write sshd config");
            let log = d.join(format!("sshd-{n}.log"));
            let server = ChildGuard::spawn(
                Command::new(SSHD)
                    .arg("-D")
                    .arg("-f")
                    .arg(&config)
                    .arg("-E")
                    .arg(&log)
                    .stdin(Stdio::null()),
            );
            lab.servers.push(server);
            let deadline = Instant::now() + FAIL_AFTER;
            while TcpStream::connect((*address, port)).is_err() {
                let exited = lab
                    .servers
                    .last_mut()
                    .and_then(|s| s.0.as_mut())
                    .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
                if exited || Instant::now() > deadline {
                    let why = fs::read_to_string(&log).unwrap_or_default();
                    println!(
                        "SKIP: sshd did not start on {address}:{port}: {}",
                        tail(&why, 3)
                    );
                    return None;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            lab.hosts.push(format!("{address}:{port}"));
        }
        Some(lab)
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `--ssh` with the lab's key (or the one it does not accept).
    fn ssh(&self, key: &str) -> String {
        format!(
            "ssh -i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
            self.path().join(key).display()
        )
    }

    /// A host file of these lines.
    fn host_file(&self, lines: &[String]) -> PathBuf {
        let path = self.path().join("hosts");
        fs::write(&path, lines.join("\n") + "\n").expect("write host file");
        path
    }

    /// Where the hosts keep the copied connection file: inside the lab, so
    /// a process table scan for the lab's path finds every worker.
    fn remote_dir(&self) -> String {
        self.path().join("remote").display().to_string()
    }

    /// The flags every launch in these tests passes.
    fn flags(&self, key: &str) -> Vec<String> {
        vec![
            "--ssh".into(),
            self.ssh(key),
            "--remote-command".into(),
            zcluster_path().display().to_string(),
            "--remote-dir".into(),
            self.remote_dir(),
        ]
    }

    /// Pids of processes (not the sshd servers) whose command line names
    /// the lab's directory: ssh clients, wrappers and workers.
    fn processes(&self) -> Vec<i32> {
        let needle = self.path().display().to_string();
        let servers: Vec<i32> = self.servers.iter().map(ChildGuard::pid).collect();
        let mut found = Vec::new();
        for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if !servers.contains(&pid)
                && String::from_utf8_lossy(&cmdline).contains(&needle)
                && alive(pid)
            {
                found.push(pid);
            }
        }
        found
    }
}

fn free_port(address: &str) -> u16 {
    TcpListener::bind((address, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A launcher whose stdout lines arrive on a channel.
struct Launch {
    guard: ChildGuard,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    unread: Vec<String>,
}

impl Launch {
    fn spawn(hub: &Hub, hosts: &Path, flags: &[String]) -> Launch {
        let mut guard = ChildGuard::spawn(
            Command::new(zcluster_path())
                .args(["launch", "ssh"])
                .arg(hosts)
                .arg("--hub")
                .arg(&hub.file)
                .args(flags)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        );
        let stdout = guard
            .0
            .as_mut()
            .and_then(|c| c.stdout.take())
            .expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Launch {
            guard,
            lines,
            seen: Vec::new(),
            unread: Vec::new(),
        }
    }

    /// The first line not yet taken that contains `text` (hosts report in
    /// any order), failing after [`FAIL_AFTER`].
    fn expect(&mut self, text: &str) -> String {
        if let Some(i) = self.unread.iter().position(|l| l.contains(text)) {
            return self.unread.remove(i);
        }
        let deadline = Instant::now() + FAIL_AFTER;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                    self.unread.push(line);
                }
                Err(_) => panic!("no line with {text:?}; saw {:?}", self.seen),
            }
        }
    }
}

/// `(engine, pid)` from a `HOST: started (engine N, pid P)` line.
fn engine_and_pid(line: &str) -> (u64, i32) {
    let inside = line
        .rsplit_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not a started line: {line}"));
    let numbers: Vec<&str> = inside.split(", ").collect();
    let engine = numbers[0].strip_prefix("engine ").expect("engine").parse();
    let pid = numbers[1].strip_prefix("pid ").expect("pid").parse();
    (engine.expect("engine id"), pid.expect("pid"))
}

/// The pids that ran the results of a `--results` file.
fn result_pids(path: &Path) -> std::collections::BTreeSet<i64> {
    json_lines(path)
        .iter()
        .filter_map(|r| r["pid"].as_i64())
        .collect()
}

fn inputs(dir: &Path, count: usize) -> PathBuf {
    let lines: Vec<String> = (1..=count).map(|n| n.to_string()).collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    input_file(dir, "inputs", &lines)
}

#[test]
fn launch_ssh_starts_a_worker_per_host_and_a_map_runs_on_both() {
    let Some(lab) = Lab::start(&["127.0.0.2", "127.0.0.3"]) else {
        return;
    };
    let hub = Hub::start();
    let hosts = lab.host_file(&[format!("2/{}", lab.hosts[0]), format!("2/{}", lab.hosts[1])]);
    let mut launch = Launch::spawn(&hub, &hosts, &lab.flags("id_ed25519"));
    let mut pids = std::collections::BTreeMap::new();
    for host in &lab.hosts {
        let line = launch.expect(&format!("{host}: started"));
        pids.insert(engine_and_pid(&line).1, host.clone());
    }
    // The hub lists both, each with the pid the launcher reported.
    let engines: Vec<i64> = hub
        .engines()
        .iter()
        .filter_map(|e| e["pid"].as_i64())
        .collect();
    for pid in pids.keys() {
        assert!(engines.contains(&i64::from(*pid)), "{engines:?} {pids:?}");
    }
    // The copied connection file is private.
    let copied = fs::read_dir(lab.remote_dir())
        .expect("remote dir")
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .expect("a copied connection file");
    use std::os::unix::fs::PermissionsExt;
    let mode = copied.metadata().expect("metadata").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let input = inputs(hub.dir(), 100);
    let results = hub.dir().join("results.jsonl");
    let output = hub.map_ok(
        &input,
        &[
            "--results",
            results.to_str().expect("utf-8 path"),
            "--",
            "sh",
            "-c",
            "sleep 0.01; echo {}",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).lines().count(), 100);
    let used = result_pids(&results);
    for (pid, host) in &pids {
        assert!(
            used.contains(&i64::from(*pid)),
            "no result from {host}: {used:?}"
        );
    }
}

#[test]
fn ctrl_c_on_the_launcher_leaves_no_worker_behind() {
    let Some(lab) = Lab::start(&["127.0.0.2", "127.0.0.3"]) else {
        return;
    };
    let hub = Hub::start();
    let hosts = lab.host_file(&lab.hosts.clone());
    let mut launch = Launch::spawn(&hub, &hosts, &lab.flags("id_ed25519"));
    let workers: Vec<i32> = lab
        .hosts
        .iter()
        .map(|host| engine_and_pid(&launch.expect(&format!("{host}: started"))).1)
        .collect();
    assert!(workers.iter().all(|&pid| alive(pid)));
    kill(Pid::from_raw(launch.guard.pid()), Signal::SIGINT).expect("SIGINT");
    let status = launch.guard.wait();
    assert!(status.success(), "{status:?}");
    for host in &lab.hosts {
        launch.expect(&format!("{host}: stopped"));
    }
    wait_until("the workers, wrappers and ssh clients to exit", || {
        lab.processes().is_empty()
    });
    assert!(workers.iter().all(|&pid| !alive(pid)));
    wait_until("the hub to see both engines leave", || {
        hub.engines().is_empty()
    });
}

#[test]
fn a_launcher_killed_outright_takes_its_workers_along() {
    let Some(lab) = Lab::start(&["127.0.0.2"]) else {
        return;
    };
    let hub = Hub::start();
    let hosts = lab.host_file(&lab.hosts.clone());
    let mut launch = Launch::spawn(&hub, &hosts, &lab.flags("id_ed25519"));
    let (_, worker) = engine_and_pid(&launch.expect("started"));
    // No chance to clean up: the ssh session must end with it, and the
    // remote wrapper stop the worker when its stdin closes.
    kill(Pid::from_raw(launch.guard.pid()), Signal::SIGKILL).expect("SIGKILL");
    launch.guard.wait();
    wait_until("the worker to exit", || !alive(worker));
    wait_until("every launched process to exit", || {
        lab.processes().is_empty()
    });
}

#[test]
fn a_killed_worker_is_started_again() {
    let Some(lab) = Lab::start(&["127.0.0.2"]) else {
        return;
    };
    let hub = Hub::start();
    let hosts = lab.host_file(&lab.hosts.clone());
    let mut launch = Launch::spawn(&hub, &hosts, &lab.flags("id_ed25519"));
    let (engine, worker) = engine_and_pid(&launch.expect("started"));
    kill(Pid::from_raw(worker), Signal::SIGKILL).expect("kill the worker");
    launch.expect("worker was killed by signal 9; starting it again");
    let (again, replacement) = engine_and_pid(&launch.expect("restarted"));
    assert_ne!(replacement, worker);
    assert!(again > engine, "engine ids are never reused");
    assert!(alive(replacement));
    // A restart asked through the hub starts it again at once.
    hub.cmd("kill").arg("--restart").assert().success();
    launch.expect("asked for a restart (status 75)");
    let (_, third) = engine_and_pid(&launch.expect("restarted"));
    assert_ne!(third, replacement);
}

#[test]
fn detached_workers_outlive_the_launcher_until_zcluster_kill() {
    let Some(lab) = Lab::start(&["127.0.0.2", "127.0.0.3"]) else {
        return;
    };
    let hub = Hub::start();
    let hosts = lab.host_file(&lab.hosts.clone());
    let mut flags = lab.flags("id_ed25519");
    flags.push("--detach".into());
    let mut launch = Launch::spawn(&hub, &hosts, &flags);
    let workers: Vec<i32> = lab
        .hosts
        .iter()
        .map(|host| engine_and_pid(&launch.expect(&format!("{host}: started"))).1)
        .collect();
    assert!(launch.guard.wait().success());
    assert!(workers.iter().all(|&pid| alive(pid)));
    assert_eq!(hub.engines().len(), 2);
    // Each says which host file it came from (`lab.host_file` writes `hosts`).
    for engine in hub.engines() {
        assert_eq!(engine["origin"], "ssh:hosts", "{engine}");
    }
    hub.cmd("kill").assert().success();
    wait_until("the detached workers to exit", || {
        workers.iter().all(|&pid| !alive(pid))
    });
}

#[test]
fn a_host_that_refuses_the_key_or_lacks_the_binary_is_one_line_without_hanging() {
    let Some(lab) = Lab::start(&["127.0.0.2"]) else {
        return;
    };
    let hub = Hub::start();
    let hosts = lab.host_file(&lab.hosts.clone());
    let host = &lab.hosts[0];
    let cases = [
        (lab.flags("stranger_ed25519"), "auth refused: "),
        (
            {
                let mut flags = lab.flags("id_ed25519");
                flags[3] = "/nonexistent/zcluster".into();
                flags
            },
            "binary missing: ",
        ),
        (
            {
                let mut flags = lab.flags("id_ed25519");
                flags[3] = "echo zcluster 0.0.1; :".into();
                flags
            },
            "version differs: zcluster 0.0.1 there",
        ),
    ];
    for (flags, why) in cases {
        let mut launch = Launch::spawn(&hub, &hosts, &flags);
        // ChildGuard::wait bounds it: BatchMode never lets ssh ask.
        let status = launch.guard.wait();
        assert_eq!(status.code(), Some(1), "{why}");
        let line = launch.expect(why);
        assert!(line.starts_with(&format!("{host}: {why}")), "{line}");
        assert!(hub.engines().is_empty());
    }
}

#[test]
fn map_hosts_completes_on_the_hosts_that_answer() {
    let Some(lab) = Lab::start(&["127.0.0.2", "127.0.0.3"]) else {
        return;
    };
    // Nothing listens on 127.0.0.4.
    let down = format!("127.0.0.4:{}", free_port("127.0.0.4"));
    let hosts = lab.host_file(&[lab.hosts[0].clone(), lab.hosts[1].clone(), down.clone()]);
    let input = inputs(lab.path(), 100);
    let results = lab.path().join("results.jsonl");
    let output = zcluster()
        .arg("map")
        .arg(&input)
        .arg("--hosts")
        .arg(&hosts)
        .args(lab.flags("id_ed25519"))
        .arg("--results")
        .arg(&results)
        .args(["--", "sh", "-c", "sleep 0.01; echo {}"])
        .timeout(FAIL_AFTER * 2)
        .output()
        .expect("map runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).lines().count(), 100);
    let unreachable: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(&format!("{down}: unreachable: ")))
        .collect();
    assert_eq!(unreachable.len(), 1, "{stderr}");
    let used = result_pids(&results);
    for host in &lab.hosts {
        let started = stderr
            .lines()
            .find(|l| l.contains(&format!("{host}: started")))
            .unwrap_or_else(|| panic!("{host} did not start: {stderr}"));
        let (_, pid) = engine_and_pid(started);
        assert!(used.contains(&i64::from(pid)), "no result from {host}");
    }
    // The workers lived for the length of the map only.
    wait_until("the map's workers to exit", || lab.processes().is_empty());
}
