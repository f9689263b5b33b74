//! The hub's task store on disk, with a real `zcluster hub`: a disk that
//! fills up mid-job, files only their owner may read, and store paths that
//! hold something else or a store that lost its `-wal` file.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::common::*;

/// A small file system mounted for one test: a tmpfs or, where tmpfs
/// cannot be mounted, an ext2 image on a loop device. Unmounted (lazily,
/// so a process still in it cannot stop that) when dropped.
struct SmallFs {
    dir: PathBuf,
    tmpfs: bool,
}

impl SmallFs {
    /// Mounts `bytes` of file system at `dir`, or says why it cannot.
    fn mount(dir: &Path, bytes: u64) -> Result<Self, String> {
        fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let tmpfs = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if tmpfs.status.success() {
            return Ok(SmallFs {
                dir: dir.to_path_buf(),
                tmpfs: true,
            });
        }
        let image = dir.with_extension("img");
        fs::File::create(&image)
            .and_then(|f| f.set_len(bytes))
            .map_err(|e| e.to_string())?;
        let mkfs = Command::new("mkfs.ext2")
            .args(["-q", "-F", "-m", "0"])
            .arg(&image)
            .output()
            .map_err(|e| format!("cannot run mkfs.ext2: {e}"))?;
        let loop_mount = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if mkfs.status.success() && loop_mount.status.success() {
            return Ok(SmallFs {
                dir: dir.to_path_buf(),
                tmpfs: false,
            });
        }
        Err(format!(
            "neither a tmpfs ({}) nor a loop-mounted image ({}) can be mounted here",
            String::from_utf8_lossy(&tmpfs.stderr).trim(),
            String::from_utf8_lossy(&loop_mount.stderr).trim()
        ))
    }

    /// Gives a tmpfs `bytes` of room (an image keeps its size).
    fn grow(&self, bytes: u64) {
        if self.tmpfs {
            let status = Command::new("mount")
                .args(["-o", &format!("remount,size={bytes}")])
                .arg(&self.dir)
                .status()
                .expect("run mount");
            assert!(status.success(), "cannot remount {}", self.dir.display());
        }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// A hub on `store` (any path), its connection file and logs in `dir`.
fn hub_on(dir: TempDir, store: PathBuf, extra: &[&str]) -> Hub {
    let file = dir.path().join("hub.json");
    let proc = Hub::spawn_hub(dir.path(), &file, &store, extra);
    let hub = Hub {
        proc,
        file,
        store,
        dir,
    };
    hub.wait_ready();
    hub
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// Bytes of output per task: enough for a few hundred results to fill what
/// the small file system leaves.
const OUTPUT_BYTES: usize = 3000;

/// The input at the end of each line a task of [`full_disk_task`] prints.
fn printed_inputs(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| l.rsplit_once(' ').map(|(_, input)| input.to_string()))
        .collect()
}

/// `sh -c` that notes each run of its input in `runs` (outside the small
/// file system) and prints OUTPUT_BYTES of `x` and then the input.
fn full_disk_task(runs: &Path) -> Vec<String> {
    [
        "--".to_string(),
        "sh".to_string(),
        "-c".to_string(),
        format!(
            "echo \"$0\" >> '{}'; head -c {OUTPUT_BYTES} /dev/zero | tr '\\0' x; echo \" $0\"",
            runs.display()
        ),
        "{}".to_string(),
    ]
    .to_vec()
}

/// With the store on a small file system that fills up mid-map, the map
/// exits non-zero saying the store cannot write (never "all ok"); after
/// room is made and the hub restarted on the same connection file, it
/// carries the job on, and no task whose result the map printed runs
/// again: every printed result is in the store.
#[test]
fn a_full_disk_stops_the_map_loudly_and_nothing_printed_runs_again() {
    const STORE_FS_BYTES: u64 = 2 << 20;
    const FILLER_BYTES: usize = 1 << 20;
    const INPUTS: usize = 400;
    let dir = TempDir::new().unwrap();
    let small = match SmallFs::mount(&dir.path().join("small"), STORE_FS_BYTES) {
        Ok(small) => small,
        Err(why) => {
            println!("SKIP: {why}");
            return;
        }
    };
    // Written first and deleted later: the room made after the failure.
    let filler = small.dir.join("filler");
    fs::write(&filler, vec![0u8; FILLER_BYTES]).unwrap();
    let store = small.dir.join("tasks.sqlite");
    let runs = dir.path().join("runs.log");
    let mut hub = hub_on(dir, store, &[]);
    let _workers = hub.workers(2, 2);
    let (inputs, _) = numbered_inputs(hub.dir(), "full", "f", INPUTS);
    let mut args = vec![inputs.to_str().unwrap().to_string()];
    args.extend(full_disk_task(&runs));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = Instant::now();
    let mut map = hub.spawn_map("full", &args);
    let status = map.wait();
    let took = started.elapsed();
    let (stdout, stderr) = (map.stdout(), map.stderr());
    let printed = printed_inputs(&stdout);
    assert!(
        !status.success(),
        "the map exited {status} on a full disk, printing {} of {INPUTS} results:\n{}\nhub:\n{}",
        printed.len(),
        tail(&stderr, 5),
        tail(&hub.proc.log(), 20)
    );
    assert!(
        stderr.contains("task store cannot write") && stderr.contains("database or disk is full"),
        "the map says why:\n{}",
        tail(&stderr, 5)
    );
    assert!(
        !printed.is_empty() && printed.len() < INPUTS,
        "{} results printed before the disk filled up",
        printed.len()
    );
    let job = map.job().expect("the map printed its job");
    let log = hub.proc.log();
    assert!(log.contains("the task store cannot write"), "{log}");

    // Make room, restart the hub on the same connection file and store.
    kill(Pid::from_raw(hub.proc.pid()), Signal::SIGTERM).unwrap();
    hub.proc.wait();
    fs::remove_file(&filler).unwrap();
    small.grow(64 << 20);
    hub.proc = Hub::spawn_hub(hub.dir.path(), &hub.file, &hub.store, &[]);
    hub.wait_ready();
    let restarted = hub.proc.log();
    assert!(
        restarted.contains("carried on 1 unfinished job")
            && restarted.contains(&format!("job {job}: ")),
        "{restarted}"
    );
    // The workers come back by themselves and the job's tasks left run.
    let deadline = Instant::now() + FAIL_AFTER;
    loop {
        let status = hub.job(job).expect("the job is in the store");
        if field_u64(&status, "pending") + field_u64(&status, "running") == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the job never drained: {status}");
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut runs_of: BTreeMap<String, usize> = BTreeMap::new();
    for input in fs::read_to_string(&runs).unwrap().lines() {
        *runs_of.entry(input.to_string()).or_default() += 1;
    }
    let again: Vec<(&String, usize)> = printed
        .iter()
        .map(|input| (input, runs_of.get(input).copied().unwrap_or(0)))
        .filter(|(_, runs)| *runs != 1)
        .collect();
    assert!(
        again.is_empty(),
        "printed tasks that ran other than once: {again:?}"
    );
    let (_, records) = hub.results(job);
    let stored: BTreeMap<String, &serde_json::Value> = records
        .iter()
        .map(|r| (r["input"].as_str().unwrap_or_default().to_string(), r))
        .collect();
    for input in &printed {
        let record = stored
            .get(input)
            .unwrap_or_else(|| panic!("printed {input}, not in the store"));
        assert_eq!(record["status"], "ok", "{record}");
        let expected = format!("{} {input}\n", "x".repeat(OUTPUT_BYTES));
        assert_eq!(record["stdout"], expected, "{input}");
    }
    println!(
        "full disk: {} of {INPUTS} results printed before the map failed after {took:?}; \
         {} runs in all; the map said: {}",
        printed.len(),
        runs_of.values().sum::<usize>(),
        tail(&stderr, 1)
    );
}

/// The store, its -wal, -shm and commit record are 0600 and the
/// directories made for it 0700, even under a umask of 000.
#[test]
fn store_files_are_private_whatever_the_umask() {
    let dir = TempDir::new().unwrap();
    let store = dir
        .path()
        .join("private")
        .join("deeper")
        .join("tasks.sqlite");
    let file = dir.path().join("hub.json");
    let log = dir.path().join("hub.log");
    let proc = Proc::spawn(
        Command::new("sh")
            .arg("-c")
            .arg("umask 000; exec \"$0\" \"$@\"")
            .arg(zcluster_path())
            .arg("hub")
            .arg("--connection-file")
            .arg(&file)
            .arg("--store")
            .arg(&store)
            .args(["--ip", "127.0.0.1"]),
        log,
    );
    let hub = Hub {
        proc,
        file,
        store: store.clone(),
        dir,
    };
    hub.wait_ready();
    let _workers = hub.workers(1, 1);
    let inputs = input_file(hub.dir(), "few", &["a", "b"]);
    hub.map_ok(&inputs, &["--", "echo", "{}"]);
    for path in [
        store.clone(),
        beside(&store, "-wal"),
        beside(&store, "-shm"),
        beside(&store, "-commits"),
    ] {
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
    assert_eq!(mode(store.parent().unwrap()), 0o700);
    assert_eq!(mode(&hub.dir().join("private")), 0o700);
}

/// Starts `zcluster hub` on `store` and expects it to refuse to start;
/// its stderr.
fn refused_start(dir: &Path, store: &Path, extra: &[&str]) -> String {
    let output = zcluster()
        .arg("hub")
        .arg("--connection-file")
        .arg(dir.join("refused.json"))
        .arg("--store")
        .arg(store)
        .args(["--ip", "127.0.0.1"])
        .args(extra)
        .timeout(Duration::from_secs(10))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success() && output.status.code().is_some(),
        "the hub did not refuse {}: {:?}\n{stderr}",
        store.display(),
        output.status
    );
    stderr
}

/// A store path that holds an empty file, or a file that is not a SQLite
/// database, is refused with its name and what was found, and left as it
/// was: not taken as a new, empty store.
#[test]
fn a_store_path_that_holds_no_store_is_refused_and_left_alone() {
    let dir = TempDir::new().unwrap();
    let empty = dir.path().join("empty.sqlite");
    fs::write(&empty, b"").unwrap();
    let stderr = refused_start(dir.path(), &empty, &[]);
    assert!(
        stderr.contains(&empty.display().to_string()) && stderr.contains("empty file (0 bytes)"),
        "{stderr}"
    );
    assert_eq!(fs::metadata(&empty).unwrap().len(), 0);

    let text = dir.path().join("text.sqlite");
    fs::write(&text, "job list\n").unwrap();
    let stderr = refused_start(dir.path(), &text, &[]);
    assert!(stderr.contains("not a SQLite database"), "{stderr}");
    assert_eq!(fs::read_to_string(&text).unwrap(), "job list\n");
}

/// A hub killed mid-life whose store then loses its -wal file refuses to
/// start on the rolled-back store, saying so, instead of running finished
/// tasks again; told to accept the rollback, it starts and says what it
/// carries on.
#[test]
fn a_store_that_lost_its_wal_is_refused_unless_the_rollback_is_accepted() {
    let mut hub = Hub::start();
    let _workers = hub.workers(1, 2);
    let (inputs, lines) = numbered_inputs(hub.dir(), "done", "d", 20);
    let output = hub.map_ok(&inputs, &["--", "echo", "{}"]);
    assert_eq!(String::from_utf8_lossy(&output.stdout), lines_text(&lines));
    kill(Pid::from_raw(hub.proc.pid()), Signal::SIGKILL).unwrap();
    hub.proc.wait();
    let wal = beside(&hub.store, "-wal");
    assert!(wal.exists(), "a killed hub leaves its -wal");
    fs::remove_file(&wal).unwrap();
    let _ = fs::remove_file(beside(&hub.store, "-shm"));

    let stderr = refused_start(hub.dir(), &hub.store, &[]);
    assert!(
        stderr.contains(&hub.store.display().to_string())
            && stderr.contains("is behind what was committed")
            && stderr.contains("--accept-rollback"),
        "{stderr}"
    );
    hub.proc = Hub::spawn_hub(
        hub.dir.path(),
        &hub.file,
        &hub.store,
        &["--accept-rollback"],
    );
    hub.wait_ready();
    let log = hub.proc.log();
    assert!(log.contains("is behind what was committed"), "{log}");
}
