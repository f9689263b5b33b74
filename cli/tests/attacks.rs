//! The promises of "only key holders get in", attacked with real processes
//! on loopback: a peer without the key that connects under a running map's
//! or engine's routing identity (read, as an attacker on the wire would,
//! from what the victim says), and signed messages captured before a hub
//! restart and played to the new hub. Each attack worked before the hub
//! stopped handing identities over and bound signatures to its start.
//!
//! And below the messages, CURVE: a peer without the connection file's
//! keys (plain ZeroMQ, or a client key of its own) fails the handshake at
//! every port, a never-ending message from it is cut off at its greeting,
//! and a tap on the wire sees no task's input.

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use zcluster::auth::{Channel, Signer};
use zcluster::hub::connection::ConnectionInfo;
use zcluster::hub::curve::CurveKeys;
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
    let member = raw_dealer(&ctx, &info.clients, &info.curve, b"member");
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
    let replayer = raw_dealer(&ctx, &info.clients, &info.curve, b"replayer");
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
    let replayer = raw_dealer(&ctx, &info.clients, &info.curve, b"replayer");
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

/// A connection file whose keys are not the hub's (another cluster's, or
/// one from before `--fresh`): the hub answers nothing, and the client says
/// that the key is the likely cause rather than only that the hub did not
/// answer (the hub's port took the connection and failed the CURVE
/// handshake, so something listens there).
#[test]
fn a_wrong_key_is_named_as_the_likely_cause() {
    let hub = Hub::start();
    let mut info = read_connection(&hub.file);
    info.key = ConnectionInfo::new_key().unwrap();
    info.curve = CurveKeys::derive(&info.key).unwrap();
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
    // Its keys are another cluster's: the handshake fails, so nothing it
    // sent reached the hub's code to be refused there.
    let log = hub.proc.log();
    assert!(!log.contains("bad signature"), "{log}");
}

/// Waits for `hub`'s status to answer, then returns its log.
fn settled_log(hub: &Hub) -> String {
    hub.cmd("status").assert().success();
    hub.proc.log()
}

/// A peer without the connection file (plain ZeroMQ, the NULL mechanism)
/// at each of the hub's ports fails the handshake, so none of its frames,
/// garbage or a well-formed but unsigned call, reach the hub's code: the
/// hub logs no bad message and its state is unchanged. Before CURVE the
/// handshake succeeded and the hub read, hashed and dropped each message.
#[test]
fn a_peer_without_the_keys_fails_the_handshake_at_every_port() {
    let mut hub = Hub::start();
    let ctx = zmq::Context::new();
    for (port, kind) in [
        ("engines", zmq::DEALER),
        ("clients", zmq::DEALER),
        ("notifications", zmq::SUB),
    ] {
        let socket = ctx.socket(kind).unwrap();
        socket.set_linger(0).unwrap();
        let monitor = monitored(&ctx, &socket, port);
        socket.connect(&hub_url(&hub.file, port)).unwrap();
        if kind == zmq::SUB {
            socket.set_subscribe(b"").unwrap();
        } else {
            let call = call_frames(None, 5, &ClientCall::Shutdown { workers: true });
            socket.send_multipart(&call, zmq::DONTWAIT).unwrap();
            socket.send(&b"\x00garbage"[..], zmq::DONTWAIT).unwrap();
        }
        let outcome = handshake_outcome(&monitor, FAIL_AFTER);
        drop(socket);
        drop(monitor);
        match outcome {
            Some((zmq::SocketEvent::HANDSHAKE_SUCCEEDED, _)) => {
                panic!("a peer without the keys completed a handshake at the {port} port")
            }
            Some(_) => {}
            None => panic!("no handshake outcome at the {port} port within {FAIL_AFTER:?}"),
        }
    }
    let log = settled_log(&hub);
    assert!(!log.contains("bad message"), "{log}");
    assert!(hub.proc.running(), "{log}");
    assert!(hub.engines().is_empty());
}

/// A peer that knows the hub's public key (it is no secret to CURVE) but
/// presents a client key of its own is refused by the hub's ZAP handler
/// (status 400) at the engine and client ports, and the hub says so once
/// in its log; nothing it sent reaches the hub's code.
#[test]
fn a_client_key_the_hub_does_not_know_is_refused_with_400() {
    let hub = Hub::start();
    let info = read_connection(&hub.file);
    let ctx = zmq::Context::new();
    let stranger = zmq::CurveKeyPair::new().unwrap();
    for port in ["engines", "clients"] {
        // The client's monitor reports the refusal as 400; under load
        // libzmq's monitor was seen to report no handshake event at all
        // for such attempts, several in a row (the hub's log below still
        // says it refused). Either way the handshake must never succeed.
        let mut outcomes = Vec::new();
        for _ in 0..3 {
            let socket = ctx.socket(zmq::DEALER).unwrap();
            socket.set_linger(0).unwrap();
            socket
                .set_curve_serverkey(&zmq::z85_decode(&info.curve.server_public).unwrap())
                .unwrap();
            socket.set_curve_publickey(&stranger.public_key).unwrap();
            socket.set_curve_secretkey(&stranger.secret_key).unwrap();
            let monitor = monitored(&ctx, &socket, port);
            socket.connect(&hub_url(&hub.file, port)).unwrap();
            socket.send(&b"\x00garbage"[..], zmq::DONTWAIT).unwrap();
            let outcome = handshake_outcome(&monitor, FAIL_AFTER / 4);
            drop(socket);
            drop(monitor);
            outcomes.push(outcome);
            if outcome.is_some() {
                break;
            }
        }
        let refused = Some((zmq::SocketEvent::HANDSHAKE_FAILED_AUTH, 400));
        assert!(
            outcomes.iter().all(|o| o.is_none() || *o == refused),
            "at the {port} port: {outcomes:?}"
        );
    }
    let log = settled_log(&hub);
    assert!(
        log.contains("refusing a connection without the cluster's CURVE key"),
        "{log}"
    );
    assert!(!log.contains("bad message"), "{log}");
}

/// A TCP relay between a client and the hub that keeps every byte it
/// carries, both ways: a tap on the wire.
struct Tap {
    url: String,
    seen: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    accepting: Option<thread::JoinHandle<()>>,
}

impl Tap {
    fn to(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("tcp://{}", listener.local_addr().unwrap());
        let target = target.trim_start_matches("tcp://").to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let accepting = {
            let (seen, stop) = (seen.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok((client, _)) = listener.accept() else {
                        thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    client.set_nonblocking(false).unwrap();
                    let Ok(server) = TcpStream::connect(&target) else {
                        continue;
                    };
                    for (from, to) in [
                        (client.try_clone().unwrap(), server.try_clone().unwrap()),
                        (server, client),
                    ] {
                        let seen = seen.clone();
                        thread::spawn(move || relay(from, to, &seen));
                    }
                }
            })
        };
        Tap {
            url,
            seen,
            stop,
            accepting: Some(accepting),
        }
    }

    fn saw(&self, needle: &[u8]) -> bool {
        let seen = self.seen.lock().unwrap();
        seen.windows(needle.len()).any(|w| w == needle)
    }

    fn bytes(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(accepting) = self.accepting.take() {
            let _ = accepting.join();
        }
    }
}

/// Copies `from` to `to`, keeping a copy, until either side closes.
fn relay(mut from: TcpStream, mut to: TcpStream, seen: &Mutex<Vec<u8>>) {
    let mut buffer = [0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buffer) {
        if n == 0 {
            break;
        }
        seen.lock().unwrap().extend_from_slice(&buffer[..n]);
        if to.write_all(&buffer[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}

/// A tap on the wire between `zcluster map` and the hub carries the whole
/// job (the map succeeds through it) but none of a task's input or output
/// in clear. Before CURVE every input crossed in plaintext.
#[test]
fn a_tap_on_the_wire_sees_no_task_input() {
    const SECRET: &str = "tap-secret-input-4f1c2a9e";
    let hub = Hub::start();
    let _workers = hub.workers(1, 1);
    let tap = Tap::to(&hub_url(&hub.file, "clients"));
    let text = fs::read_to_string(&hub.file).unwrap();
    let mut info: serde_json::Value = serde_json::from_str(&text).unwrap();
    info["clients"] = serde_json::Value::String(tap.url.clone());
    let tapped = hub.dir().join("tapped.json");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tapped)
        .unwrap();
    writeln!(file, "{info}").unwrap();
    drop(file);
    let inputs = input_file(hub.dir(), "secret.txt", &[SECRET]);
    let output = zcluster()
        .args(["map", "--no-progress", "--hub"])
        .arg(&tapped)
        .arg(&inputs)
        .args(["--", "echo"])
        .timeout(FAIL_AFTER)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("{SECRET}\n")
    );
    assert!(tap.bytes() > 0, "the map's traffic went through the tap");
    assert!(
        !tap.saw(SECRET.as_bytes()),
        "the task's input crossed the wire in clear ({} bytes seen)",
        tap.bytes()
    );
}

/// A peer without the keys that opens a connection and then sends one
/// message that never ends (frame after frame, each with MORE set) gets
/// no further than its greeting: the hub hangs up, so its writes fail
/// after no more than the sockets' buffers hold, and the hub's memory
/// does not grow. Before CURVE the hub took every frame, buffering the
/// unfinished message (64 MiB went in unrefused).
#[test]
fn a_never_ending_message_without_the_keys_is_cut_off_at_the_greeting() {
    const FRAME_BYTES: usize = 64 << 10;
    const GIVE_UP_BYTES: usize = 64 << 20;
    const BUFFERS_BYTES: usize = 16 << 20;
    let hub = Hub::start();
    let url = hub_url(&hub.file, "clients");
    let mut stream = TcpStream::connect(url.trim_start_matches("tcp://")).unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let frame = zmtp_more_frame(&vec![0x5a; FRAME_BYTES]);
    let started = Instant::now();
    let mut written = 0;
    let mut refused = stream.write_all(&zmtp_null_opening("DEALER")).is_err();
    while !refused && written < GIVE_UP_BYTES && started.elapsed() < FAIL_AFTER {
        match stream.write_all(&frame) {
            Ok(()) => written += frame.len(),
            Err(_) => refused = true,
        }
    }
    eprintln!(
        "{} KiB of one unfinished message written in {:?} before the hub {}",
        written >> 10,
        started.elapsed(),
        if refused { "hung up" } else { "was left" }
    );
    assert!(
        refused && written < BUFFERS_BYTES,
        "the hub took {} KiB of a never-ending message from a peer without the keys",
        written >> 10
    );
    let log = settled_log(&hub);
    assert!(!log.contains("bad message"), "{log}");
}
