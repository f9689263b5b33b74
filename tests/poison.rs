//! A poison input among short tasks, with real engine processes that it
//! aborts: tasks this short travel in batches and queue on each engine, so
//! others die with every engine it kills.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use zcluster::hub::server::{Endpoints, Hub, HubOptions, DEFAULT_POISON_LIMIT};
use zcluster::pool::{Pool, PoolError};

use crate::common::{example_binary, join_within, Processes};

/// What `examples/pool_client.rs`'s `poison` handler dies on.
const POISON_INPUT: u64 = 777;
const INPUTS: u64 = 3000;
const ENGINES: usize = 4;

/// Only the poison input is failed as poison, after it took down
/// `--poison-limit` engines, and every input queued behind it on those
/// engines runs again and succeeds. An engine that aborts closes its
/// connection at once, so the hub often learns of the death from a send
/// that fails rather than from missed heartbeats; it used to take that for
/// a clean leave and count no death, and the poison input then took down
/// every engine in turn.
#[test]
fn only_the_poison_input_among_short_tasks_is_failed_as_poison() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hub.json");
    let ctx = zmq::Context::new();
    let hub = Hub::bind(
        &ctx,
        HubOptions {
            endpoints: Endpoints::Tcp {
                ip: "127.0.0.1".into(),
                port_base: None,
            },
            connection_file: Some(file.clone()),
            heartbeat: Duration::from_millis(200),
            ..HubOptions::default()
        },
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let hub = {
        let stop = stop.clone();
        thread::spawn(move || hub.run(&stop))
    };
    let mut engines = Processes::new();
    for i in 0..ENGINES {
        let mut command = Command::new(example_binary("pool_client"));
        command.arg("serve").arg(&file).arg("1");
        engines.spawn(&format!("engine-{i}"), command);
    }
    // On a thread: were the poison input to take down every engine, the
    // map would wait for one for ever.
    let map = {
        let file = file.clone();
        thread::spawn(move || {
            let mut pool = Pool::connect(&file).unwrap().chunksize(1);
            let waited = Instant::now();
            loop {
                // Refused until an engine offering the handler registered.
                match pool.map_all::<u64, u64>("poison", 0..INPUTS) {
                    Err(PoolError::Hub(_)) if waited.elapsed() < Duration::from_secs(30) => {
                        thread::sleep(Duration::from_millis(50));
                    }
                    other => break other.expect("the map runs"),
                }
            }
        })
    };
    let outputs = join_within(map, Duration::from_secs(60));
    assert_eq!(outputs.len() as u64, INPUTS);
    let mut failed = Vec::new();
    for (index, output) in outputs.into_iter().enumerate() {
        match output {
            Ok(n) => assert_eq!(n, index as u64),
            Err(e) => failed.push((index as u64, e.message)),
        }
    }
    let (poison, innocent): (Vec<_>, Vec<_>) =
        failed.into_iter().partition(|(i, _)| *i == POISON_INPUT);
    assert!(
        innocent.is_empty(),
        "{} innocent inputs failed, e.g. {:?}",
        innocent.len(),
        &innocent[..innocent.len().min(3)]
    );
    let [(_, reason)] = &poison[..] else {
        panic!("the poison input did not fail: {poison:?}");
    };
    assert!(
        reason.contains(&format!("{DEFAULT_POISON_LIMIT} engines died")),
        "{reason}"
    );
    stop.store(true, Ordering::SeqCst);
    join_within(hub, Duration::from_secs(20)).unwrap();
}
