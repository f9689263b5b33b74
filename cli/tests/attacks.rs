//! The promises of "only key holders get in", attacked with real processes
//! on loopback: a peer without the key that connects under a running map's
//! or engine's routing identity (read, as an attacker on the wire would,
//! from what the victim says), and signed messages captured before a hub
//! restart and played to the new hub. Each attack worked before the hub
//! stopped handing identities over and bound signatures to its start.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use zcluster::auth::{Channel, Signer};
use zcluster::hub::connection::ConnectionInfo;
use zcluster::hub::protocol::ClientCall;

use crate::common::*;

/// The routing identity a process logged (at debug level) when it
/// connected to `url`'s hub: `identity=...` on its "connecting to the hub"
/// line. The last one, when there are several.
fn logged_identity(log: &str) -> Option<String> {
    strip_colours(log)
        .lines()
        .rev()
        .filter(|l| l.contains("connecting to the hub"))
        .filter_map(|l| l.split("identity=").nth(1))
        .find_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
}

/// `text` without terminal colour sequences (`ESC [ ... m`).
fn strip_colours(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// A keyless peer under `identity` on `url` for `stay`: it sends `garbage`
/// (if any) and reads whatever comes. Returns the messages it received.
fn squat(url: &str, identity: &[u8], stay: Duration, garbage: Option<&[u8]>) -> usize {
    let ctx = zmq::Context::new();
    let socket = ctx.socket(zmq::DEALER).unwrap();
    socket.set_identity(identity).unwrap();
    socket.set_linger(0).unwrap();
    socket.connect(url).unwrap();
    if let Some(garbage) = garbage {
        socket.send(garbage, zmq::DONTWAIT).unwrap();
    }
    let mut received = 0;
    let until = Instant::now() + stay;
    while Instant::now() < until {
        if socket.poll(zmq::POLLIN, 50).unwrap() > 0 {
            while socket.recv_multipart(zmq::DONTWAIT).is_ok() {
                received += 1;
            }
        }
    }
    received
}

/// `zcluster map --hub` with its link logged at debug level, so the test
/// can read its routing identity, as an attacker reads it off the wire.
fn spawn_logged_map(hub: &Hub, name: &str, args: &[&str]) -> MapRun {
    let stdout = hub.dir().join(format!("{name}.out"));
    let stderr = hub.dir().join(format!("{name}.err"));
    let guard = ChildGuard::spawn(
        Command::new(zcluster_path())
            .env("RUST_LOG", "warn,zcluster::hub::link=debug")
            .arg("map")
            .arg("--hub")
            .arg(&hub.file)
            .arg("--no-progress")
            .args(args)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).unwrap())
            .stderr(fs::File::create(&stderr).unwrap()),
    );
    MapRun {
        guard,
        stdout,
        stderr,
    }
}

/// A worker with its link logged at debug level.
fn logged_worker(hub: &Hub, slots: usize) -> Proc {
    let n = fs::read_dir(hub.dir()).map_or(0, |d| d.count());
    Proc::spawn(
        Command::new(zcluster_path())
            .env("RUST_LOG", "warn,zcluster::hub::link=debug")
            .arg("worker")
            .arg("--hub")
            .arg(&hub.file)
            .arg(format!("-j{slots}")),
        hub.dir().join(format!("worker-{n}.log")),
    )
}

fn read_connection(file: &Path) -> ConnectionInfo {
    ConnectionInfo::read(file).unwrap()
}

/// A keyless peer that connects under a running map's routing identity,
/// silent or sending garbage, three times over, gets none of its results,
/// and the map prints every line once, in order, exit 0. (Before, with
/// `ROUTER_HANDOVER`, 0.3 s under the identity took 12 of 300 results and
/// the map failed after 71 s.)
#[test]
fn a_keyless_peer_under_a_clients_identity_gets_nothing_and_stops_nothing() {
    const INPUTS: usize = 300;
    let hub = Hub::start();
    let _workers = hub.workers(2, 2);
    let (inputs, lines) = numbered_inputs(hub.dir(), "in.txt", "r", INPUTS);
    let inputs = inputs.to_str().unwrap().to_string();
    let mut map = spawn_logged_map(
        &hub,
        "map",
        &[&inputs, "--", "sh", "-c", "sleep 0.02; echo \"$0\"", "{}"],
    );
    let mut identity = None;
    wait_until("the map to connect and print", || {
        identity = logged_identity(&map.stderr());
        identity.is_some() && map.stdout().lines().count() >= 10
    });
    let identity = identity.unwrap();
    let url = read_connection(&hub.file).clients;
    let mut stolen = 0;
    for garbage in [None, Some(&b"\x00garbage"[..]), None] {
        stolen += squat(
            &url,
            identity.as_bytes(),
            Duration::from_millis(600),
            garbage,
        );
    }
    let status = map.wait();
    assert_eq!(stolen, 0, "the keyless peer received the map's messages");
    assert!(status.success(), "{}", map.stderr());
    assert_eq!(
        map.stdout(),
        lines_text(&lines),
        "every line once, in order"
    );
}

/// A keyless peer that connects under a running engine's routing identity
/// three times, while the engine runs two tasks, gets nothing, costs the
/// engine nothing (never declared dead, still registered, same id) and the
/// tasks nothing (each run once, attempt 1). Before, each time got the
/// engine declared dead, and its tasks failed after three "deaths".
#[test]
fn a_keyless_peer_under_an_engines_identity_costs_it_nothing() {
    let hub = Hub::start();
    let mut worker = logged_worker(&hub, 2);
    wait_until("the worker to register", || hub.engines().len() == 1);
    let engine = field_u64(&hub.engines()[0], "id");
    let identity = logged_identity(&worker.log()).expect("the worker logs its identity");
    let (inputs, lines) = numbered_inputs(hub.dir(), "in.txt", "t", 2);
    let inputs = inputs.to_str().unwrap().to_string();
    let mut map = hub.spawn_map(
        "map",
        &[&inputs, "--", "sh", "-c", "sleep 3; echo \"$0\"", "{}"],
    );
    wait_until("both tasks to run", || {
        hub.engines()
            .first()
            .is_some_and(|e| field_u64(e, "running") == 2)
    });
    let url = read_connection(&hub.file).engines;
    let mut stolen = 0;
    for garbage in [None, Some(&b"junk"[..]), None] {
        stolen += squat(
            &url,
            identity.as_bytes(),
            Duration::from_millis(500),
            garbage,
        );
    }
    assert!(map.wait().success(), "{}", map.stderr());
    assert_eq!(stolen, 0, "the keyless peer received the engine's messages");
    assert_eq!(map.stdout(), lines_text(&lines));
    let job = map.job().expect("the map names its job");
    let (_, records) = hub.results(job);
    assert_eq!(records.len(), 2, "{records:?}");
    for record in &records {
        assert_eq!(record["attempts"], 1, "run once: {record}");
    }
    let engines = hub.engines();
    assert_eq!(engines.len(), 1, "{engines:?}");
    assert_eq!(
        field_u64(&engines[0], "id"),
        engine,
        "the same registration"
    );
    let log = hub.proc.log();
    assert!(!log.contains("declared dead"), "{log}");
    assert!(worker.running());
}

/// Signs `call` as a key holder of the hub at `file` would (after its
/// hello), without sending it: what an attacker on the wire captures.
fn captured_call(file: &Path, call: &ClientCall) -> (zmq::Context, zmq::Socket, Vec<Vec<u8>>) {
    let info = read_connection(file);
    let ctx = zmq::Context::new();
    let member = raw_dealer(&ctx, &info.clients, b"member");
    member.set_rcvtimeo(5000).unwrap();
    let mut signer = Signer::new(info.signing_key().unwrap(), Channel::ClientToHub);
    learn_epoch(&member, &mut signer);
    let frames = call_frames(Some(&signer), 9, call);
    (ctx, member, frames)
}

/// Starts the hub again on `hub`'s connection file and store (same ports,
/// same key), as a supervisor would, and waits until it answers.
fn restart(hub: &mut Hub) {
    hub.proc = Hub::spawn_hub(hub.dir.path(), &hub.file, &hub.store, &[]);
    hub.wait_ready();
}

/// A `shutdown` a key holder sent to one hub, captured and played to the
/// hub restarted on the same file at once (well within the two seconds
/// that used to let a message signed before a start through), is not
/// obeyed: the new hub answers nothing to it and keeps serving.
#[test]
fn a_shutdown_captured_before_a_restart_is_not_obeyed_after_it() {
    let mut hub = Hub::start();
    let (_ctx, member, shutdown) =
        captured_call(&hub.file, &ClientCall::Shutdown { workers: false });
    member.send_multipart(&shutdown, 0).unwrap();
    assert!(answered(&member, 9), "the genuine shutdown is answered");
    assert!(
        exit_within(&mut hub.proc.guard, FAIL_AFTER).is_some(),
        "the first hub shut down"
    );
    restart(&mut hub);
    let info = read_connection(&hub.file);
    let ctx = zmq::Context::new();
    let replayer = raw_dealer(&ctx, &info.clients, b"replayer");
    replayer.send_multipart(&shutdown, 0).unwrap();
    assert!(
        !answered(&replayer, 9),
        "the replayed shutdown was answered"
    );
    assert!(
        hub.proc.running(),
        "the restarted hub obeyed a replayed shutdown"
    );
    hub.cmd("status").assert().success();
    let log = hub.proc.log();
    assert!(
        log.contains("another hub start"),
        "the replay is logged:\n{log}"
    );
}

/// A `kill` signed for one hub, captured (in flight when the hub was
/// SIGKILLed), and played to the hub restarted under the same workers,
/// kills none of them.
#[test]
fn a_kill_captured_before_a_restart_kills_no_worker_after_it() {
    let mut hub = Hub::start();
    let mut workers = hub.workers(2, 1);
    let kill_call = ClientCall::Kill {
        engines: None,
        restart: false,
    };
    let (_ctx, _member, captured) = captured_call(&hub.file, &kill_call);
    kill(Pid::from_raw(hub.proc.pid()), Signal::SIGKILL).unwrap();
    hub.proc.wait();
    restart(&mut hub);
    wait_until("both workers to register again", || {
        hub.engines().len() == 2
    });
    let info = read_connection(&hub.file);
    let ctx = zmq::Context::new();
    let replayer = raw_dealer(&ctx, &info.clients, b"replayer");
    replayer.send_multipart(&captured, 0).unwrap();
    assert!(!answered(&replayer, 9), "the replayed kill was answered");
    // Give a kill every chance to arrive: an engine acknowledges at once.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        for worker in &mut workers {
            assert!(worker.running(), "a replayed kill killed a worker");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(hub.engines().len(), 2);
}

/// A connection file whose key is not the hub's: the hub answers nothing,
/// and the client says that the key is the likely cause rather than only
/// that the hub did not answer (the hub's port did complete the ZeroMQ
/// handshake, so something listens there); the hub logs a bad signature.
#[test]
fn a_wrong_key_is_named_as_the_likely_cause() {
    let hub = Hub::start();
    let mut info = read_connection(&hub.file);
    info.key = ConnectionInfo::new_key().unwrap();
    let wrong = hub.dir().join("wrong-key.json");
    info.write(&wrong).unwrap();
    let output = zcluster()
        .args(["status", "--hub"])
        .arg(&wrong)
        .timeout(Duration::from_secs(30))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("did not answer a signed hello")
            && stderr.contains("key is probably not this hub's"),
        "{stderr}"
    );
    let log = hub.proc.log();
    assert!(log.contains("bad signature"), "{log}");
}
