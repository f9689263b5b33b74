//! `zcluster device`, `kill` and `ping` against real workers.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use zcluster::message::ClusterRequest;
use zcluster::sink::Sink;
use zcluster::socket::{FutureSocket, SocketKind};
use zcluster::ventilator::Ventilator;
use zcluster::worker::{typed, Worker, WorkerExit};

use crate::common::*;

/// A loopback port that was free a moment ago (the CLI binds it itself).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn_worker(
    ctx: &zmq::Context,
    requests: &str,
    results: &str,
    commands: &str,
    replies: &str,
    name: &str,
) -> thread::JoinHandle<WorkerExit> {
    let mut worker = Worker::builder(
        FutureSocket::connect(requests, SocketKind::Pull),
        FutureSocket::connect(results, SocketKind::Push),
    )
    .commands(FutureSocket::connect(commands, SocketKind::Sub))
    .responses(FutureSocket::connect(replies, SocketKind::Push))
    .name(name)
    .receive_timeout(FAIL_AFTER)
    .build(ctx, typed(|n: u64| Ok::<_, String>(n + 1)))
    .unwrap();
    thread::spawn(move || worker.run().unwrap())
}

#[test]
fn streamer_device_relays_requests_until_sigterm() {
    let (front, back) = (free_port(), free_port());
    let mut device = ChildGuard::spawn(
        Command::new(zcluster_path())
            .args(["device", "streamer"])
            .args(["--frontend", &format!("bind:tcp://127.0.0.1:{front}")])
            .args(["--backend", &format!("bind:tcp://127.0.0.1:{back}")])
            .stderr(Stdio::null()),
    );
    let ctx = zmq::Context::new();
    let mut sink = Sink::new(
        &ctx,
        FutureSocket::bind("tcp://127.0.0.1:*", SocketKind::Pull),
    )
    .unwrap();
    let results = zcluster::socket::last_endpoint(sink.socket()).unwrap();
    let (commands, replies) = (format!("inproc://c-{front}"), format!("inproc://r-{front}"));
    let sender = zcluster::commands::CommandSender::new(
        &ctx,
        FutureSocket::bind(&commands, SocketKind::Pub),
        Some(FutureSocket::bind(&replies, SocketKind::Pull).into()),
    )
    .unwrap();
    let worker = spawn_worker(
        &ctx,
        &format!("tcp://127.0.0.1:{back}"),
        &results,
        &commands,
        &replies,
        "w",
    );
    let mut ventilator = Ventilator::new(
        &ctx,
        FutureSocket::connect(format!("tcp://127.0.0.1:{front}"), SocketKind::Push),
    )
    .unwrap();
    ventilator
        .send((0..100u64).map(|n| ClusterRequest::encode(n, &n).unwrap()))
        .unwrap();
    let mut sum = 0;
    for result in sink.receive_typed::<u64>(Some(100), Some(FAIL_AFTER)) {
        sum += result.unwrap().1;
    }
    assert_eq!(sum, (1..=100).sum::<u64>());
    let acks = sender
        .send_kill(zcluster::commands::Delivery::expecting(1, FAIL_AFTER))
        .unwrap();
    assert_eq!(acks.len(), 1);
    assert_eq!(worker.join().unwrap(), WorkerExit::Killed);
    kill(Pid::from_raw(device.pid()), Signal::SIGTERM).unwrap();
    assert!(device.wait().success(), "the device exits 0 on SIGTERM");
}

#[test]
fn kill_and_ping_reach_every_worker_through_a_forwarder() {
    let (front, back, replies_port) = (free_port(), free_port(), free_port());
    let mut forwarder = ChildGuard::spawn(
        Command::new(zcluster_path())
            .args(["device", "forwarder"])
            .args(["--frontend", &format!("bind:tcp://127.0.0.1:{front}")])
            .args(["--backend", &format!("bind:tcp://127.0.0.1:{back}")])
            .stderr(Stdio::null()),
    );
    let ctx = zmq::Context::new();
    let commands = format!("tcp://127.0.0.1:{back}");
    let replies = format!("tcp://127.0.0.1:{replies_port}");
    let workers: Vec<_> = (0..3)
        .map(|i| {
            spawn_worker(
                &ctx,
                &format!("inproc://idle-{i}-{front}"),
                "inproc://nowhere",
                &commands,
                &replies,
                &format!("w{i}"),
            )
        })
        .collect();
    let ping = zcluster()
        .args(["ping", "--command", &format!("tcp://127.0.0.1:{front}")])
        .args(["--responses", &format!("bind:{replies}")])
        .args(["--expect", "3", "--wait", "15s"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let ping = String::from_utf8(ping).unwrap();
    assert_eq!(
        ping.lines().count(),
        4,
        "header and one line per worker:\n{ping}"
    );
    for i in 0..3 {
        assert!(
            ping.lines()
                .any(|l| l.split_whitespace().nth(2) == Some(&format!("w{i}"))),
            "{ping}"
        );
    }
    let killed = zcluster()
        .args(["kill", "--command", &format!("tcp://127.0.0.1:{front}")])
        .args(["--responses", &format!("bind:{replies}")])
        .args(["--expect", "3", "--wait", "15s"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert_eq!(String::from_utf8(killed).unwrap().lines().count(), 3);
    for worker in workers {
        assert_eq!(worker.join().unwrap(), WorkerExit::Killed);
    }
    kill(Pid::from_raw(forwarder.pid()), Signal::SIGINT).unwrap();
    assert!(forwarder.wait().success());
}

#[test]
fn restart_makes_workers_exit_with_the_restart_status() {
    let (port, replies_port) = (free_port(), free_port());
    let ctx = zmq::Context::new();
    let worker = spawn_worker(
        &ctx,
        "inproc://idle-restart",
        "inproc://nowhere-restart",
        &format!("tcp://127.0.0.1:{port}"),
        &format!("tcp://127.0.0.1:{replies_port}"),
        "r",
    );
    zcluster()
        .args([
            "kill",
            "--restart",
            "--command",
            &format!("bind:tcp://127.0.0.1:{port}"),
        ])
        .args([
            "--responses",
            &format!("bind:tcp://127.0.0.1:{replies_port}"),
        ])
        .args(["--expect", "1", "--wait", "15s"])
        .timeout(Duration::from_secs(30))
        .assert()
        .success();
    let exit = worker.join().unwrap();
    assert_eq!(exit, WorkerExit::Restart);
    assert_eq!(exit.exit_code(), zcluster::worker::RESTART_EXIT_CODE);
}
