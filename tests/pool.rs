//! The typed pool (`zcluster::pool`) over real sockets and threads: a hub
//! and an engine inside this process ([`Pool::local`]), a TCP hub with
//! [`Registry::serve`] on a thread, and the `image_features` example as a
//! process.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use zcluster::hub::client::{ClientError, HubClient};
use zcluster::hub::connection::ConnectionInfo;
use zcluster::hub::protocol::{ClientCall, Reply};
use zcluster::hub::server::{Endpoints, Hub, HubOptions, DEFAULT_CREDIT};
use zcluster::pool::{Pool, PoolError, Registry, TaskError};
use zcluster::worker::WorkerExit;

use crate::common::{example_binary, init_tracing, join_within, Processes, FAIL_AFTER};

/// Polls `done` (every millisecond) until it holds or `limit` passes;
/// whether it held. For handlers that must wait for the test, not for time.
fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(1));
    }
    true
}

fn square_registry() -> Registry {
    Registry::new()
        .handler("square", |n: u64| Ok::<_, String>(n * n))
        .reducer("sum", |a: u64, b: u64| a + b)
}

// ---------------------------------------------------------------- types

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    name: String,
    values: Vec<f32>,
    note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Shape {
    Circle(f64),
    Rect { w: u32, h: u32 },
    Polygon(Vec<(i32, i32)>),
    Empty,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Marker;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Done;

/// Structs, enums with data, tuples, maps and unit-like types survive the
/// trip client → hub → engine → handler and back, and empty input is an
/// empty output.
#[test]
fn typed_round_trips_of_serde_types() {
    init_tracing();
    let registry = Registry::new()
        .handler("record", |r: Record| {
            Ok::<_, String>(Record {
                name: r.name.to_uppercase(),
                values: r.values.iter().map(|v| v * 2.0).collect(),
                note: r.note.map(|n| format!("{n}!")),
            })
        })
        .handler("shape", |s: Shape| {
            Ok::<_, String>(match s {
                Shape::Circle(r) => Shape::Circle(r * 2.0),
                Shape::Rect { w, h } => Shape::Rect { w: h, h: w },
                Shape::Polygon(points) => Shape::Polygon(points.into_iter().rev().collect()),
                Shape::Empty => Shape::Empty,
            })
        })
        .handler("swap", |(n, s): (u64, String)| Ok::<_, String>((s, n)))
        .handler("counts", |m: HashMap<String, u32>| {
            Ok::<_, String>(
                m.into_iter()
                    .map(|(k, v)| (format!("{k}{k}"), v + 1))
                    .collect::<HashMap<_, _>>(),
            )
        })
        .handler("unit", |(): ()| Ok::<_, String>(Marker))
        .handler("marker", |_: Marker| Ok::<_, String>(Done));
    let mut pool = Pool::local(2, registry).unwrap().chunksize(3);

    let records: Vec<Record> = (0..10)
        .map(|i| Record {
            name: format!("item {i}"),
            values: (0..i).map(|v| v as f32 * 0.5).collect(),
            note: (i % 2 == 0).then(|| format!("note {i}")),
        })
        .collect();
    let got: Vec<Record> = pool.map("record", records.clone()).unwrap();
    let want: Vec<Record> = records
        .iter()
        .map(|r| Record {
            name: r.name.to_uppercase(),
            values: r.values.iter().map(|v| v * 2.0).collect(),
            note: r.note.as_ref().map(|n| format!("{n}!")),
        })
        .collect();
    assert_eq!(got, want);

    let shapes = vec![
        Shape::Circle(1.5),
        Shape::Rect { w: 3, h: 4 },
        Shape::Polygon(vec![(0, 0), (1, -1), (2, 5)]),
        Shape::Empty,
        Shape::Polygon(Vec::new()),
    ];
    let got: Vec<Shape> = pool.map("shape", shapes).unwrap();
    assert_eq!(
        got,
        [
            Shape::Circle(3.0),
            Shape::Rect { w: 4, h: 3 },
            Shape::Polygon(vec![(2, 5), (1, -1), (0, 0)]),
            Shape::Empty,
            Shape::Polygon(Vec::new()),
        ]
    );

    let pairs: Vec<(u64, String)> = (0..20).map(|i| (i * 1000, format!("s{i}"))).collect();
    let got: Vec<(String, u64)> = pool.map("swap", pairs.clone()).unwrap();
    let want: Vec<(String, u64)> = pairs.into_iter().map(|(n, s)| (s, n)).collect();
    assert_eq!(got, want);

    let maps: Vec<HashMap<String, u32>> = (0..5u32)
        .map(|i| (0..i).map(|k| (format!("k{k}"), k * 10)).collect())
        .collect();
    let got: Vec<HashMap<String, u32>> = pool.map("counts", maps.clone()).unwrap();
    for (map, out) in maps.iter().zip(&got) {
        assert_eq!(out.len(), map.len());
        for (k, v) in map {
            assert_eq!(out.get(&format!("{k}{k}")), Some(&(v + 1)), "{out:?}");
        }
    }

    let got: Vec<Marker> = pool.map("unit", vec![(); 7]).unwrap();
    assert_eq!(got, vec![Marker; 7]);
    let got: Vec<Done> = pool.map("marker", vec![Marker; 4]).unwrap();
    assert_eq!(got, vec![Done; 4]);

    let none: Vec<u64> = pool.map("swap", Vec::<(u64, String)>::new()).unwrap();
    assert!(none.is_empty());
}

// ---------------------------------------------------------------- order

/// Earlier inputs take longer, so they finish after later ones: `map` and
/// `imap` still give the outputs in input order, with chunks of 1 and 3.
#[test]
fn map_and_imap_keep_input_order_with_uneven_handler_times() {
    init_tracing();
    const N: u64 = 24;
    let registry = Registry::new().handler("slow_first", |i: u64| {
        thread::sleep(Duration::from_millis(2 * (N - i)));
        Ok::<_, String>(format!("out-{i}"))
    });
    let mut pool = Pool::local(3, registry).unwrap();
    let want: Vec<String> = (0..N).map(|i| format!("out-{i}")).collect();
    for chunksize in [1, 3] {
        pool = pool.chunksize(chunksize);
        let got: Vec<String> = pool.map("slow_first", 0..N).unwrap();
        assert_eq!(got, want, "map with chunksize {chunksize}");
        let got: Vec<String> = pool
            .imap("slow_first", 0..N)
            .unwrap()
            .map(|r| r.unwrap().unwrap())
            .collect();
        assert_eq!(got, want, "imap with chunksize {chunksize}");
    }
}

/// `imap_unordered` hands out what is finished: input 0 is held until ten
/// later outputs have come out (an ordered iterator would wait for it
/// forever), and every index comes exactly once with its own value.
#[test]
fn imap_unordered_yields_every_index_once_as_they_finish() {
    init_tracing();
    let released = Arc::new(AtomicBool::new(false));
    let registry = {
        let released = released.clone();
        Registry::new().handler("triple", move |i: u64| {
            if i == 0 && !wait_until(FAIL_AFTER, || released.load(Ordering::SeqCst)) {
                return Err("input 0 was never released".to_string());
            }
            Ok(i * 3)
        })
    };
    let mut pool = Pool::local(3, registry).unwrap().chunksize(1);
    let mut seen: Vec<u64> = Vec::new();
    for item in pool
        .imap_unordered::<u64, u64, _>("triple", 0..300u64)
        .unwrap()
    {
        let (index, value) = item.unwrap();
        assert_eq!(value.unwrap(), index * 3, "output of input {index}");
        seen.push(index);
        if seen.len() == 10 {
            assert!(!seen.contains(&0), "input 0 finished first: {seen:?}");
            released.store(true, Ordering::SeqCst);
        }
    }
    assert_ne!(seen.first(), Some(&0));
    seen.sort_unstable();
    assert_eq!(seen, (0..300).collect::<Vec<_>>());

    // Chunks of several inputs: still each once.
    pool = pool.chunksize(7);
    let mut seen: Vec<u64> = pool
        .imap_unordered::<u64, u64, _>("triple", 0..500u64)
        .unwrap()
        .map(|item| {
            let (index, value) = item.unwrap();
            assert_eq!(value.unwrap(), index * 3);
            index
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..500).collect::<Vec<_>>());
}

// ----------------------------------------------------------- map_reduce

/// `map_reduce` equals the local fold, for no inputs, one chunk and many.
#[test]
fn map_reduce_equals_a_local_fold() {
    init_tracing();
    let mut pool = Pool::local(2, square_registry()).unwrap().chunksize(100);
    let n = 10_000u64;
    let total: Option<u64> = pool.map_reduce("square", "sum", 1..=n).unwrap();
    let local: u64 = (1..=n).map(|i| i * i).sum();
    assert_eq!(local, n * (n + 1) * (2 * n + 1) / 6);
    assert_eq!(total, Some(local));

    let one: Option<u64> = pool.map_reduce("square", "sum", [7u64]).unwrap();
    assert_eq!(one, Some(49));
    let few: Option<u64> = pool.map_reduce("square", "sum", 1..=10u64).unwrap();
    assert_eq!(few, Some(385));
    let none: Option<u64> = pool.map_reduce("square", "sum", 0..0u64).unwrap();
    assert_eq!(none, None);
}

/// The reducer need only be associative (so the docs say): string
/// concatenation is, but is not commutative, so the partial results must
/// be folded in input order. Earlier chunks are made slower so they finish
/// last.
#[test]
fn map_reduce_folds_an_associative_reducer_in_input_order() {
    init_tracing();
    const N: u64 = 60;
    let registry = Registry::new()
        .handler("show", |i: u64| {
            thread::sleep(Duration::from_millis(N - i));
            Ok::<_, String>(format!("{i},"))
        })
        .reducer("concat", |a: String, b: String| a + &b);
    let mut pool = Pool::local(3, registry).unwrap().chunksize(4);
    let got: Option<String> = pool.map_reduce("show", "concat", 0..N).unwrap();
    let want: String = (0..N).map(|i| format!("{i},")).collect();
    assert_eq!(got.as_deref(), Some(want.as_str()));
}

/// A reducer no engine has fails the call with an error naming it.
#[test]
fn map_reduce_with_an_unknown_reducer_names_it() {
    init_tracing();
    let mut pool = Pool::local(1, square_registry()).unwrap();
    let err = pool
        .map_reduce::<u64, u64>("square", "no_such_reducer", 1..=10u64)
        .unwrap_err();
    assert!(
        err.to_string().contains("no_such_reducer"),
        "error does not name the reducer: {err}"
    );
    // The pool goes on.
    let total: Option<u64> = pool.map_reduce("square", "sum", 1..=3u64).unwrap();
    assert_eq!(total, Some(14));
}

// --------------------------------------------------------------- errors

fn fragile_registry() -> Registry {
    Registry::new()
        .handler("fragile", |i: u64| {
            if i == 4 {
                panic!("boom at {i}");
            }
            if i == 7 {
                return Err(format!("refused {i}"));
            }
            Ok(i * 10)
        })
        .handler("negate", |b: bool| Ok::<_, String>(!b))
}

fn assert_task_error(error: &TaskError, index: u64, message: &str) {
    assert_eq!(error.index, index, "{error}");
    assert!(error.message.contains(message), "{error}");
    assert_eq!(error.host, zcluster::host_name(), "{error}");
    assert_eq!(error.pid, std::process::id(), "{error}");
    assert!(error.worker.starts_with("slot-"), "{error}");
    let shown = error.to_string();
    for part in [
        format!("input {index}"),
        error.host.clone(),
        error.pid.to_string(),
        error.worker.clone(),
        message.to_string(),
    ] {
        assert!(shown.contains(&part), "`{shown}` lacks `{part}`");
    }
}

/// A panic and an `Err` each fail their own input only, as a `TaskError`
/// saying which input, where and why; `map` stops at the first.
#[test]
fn handler_panics_and_errors_become_typed_task_errors() {
    init_tracing();
    // Chunks [0..5) and [5..10): one failure in each.
    let mut pool = Pool::local(2, fragile_registry()).unwrap().chunksize(5);
    let results: Vec<Result<u64, TaskError>> = pool.map_all("fragile", 0..10u64).unwrap();
    assert_eq!(results.len(), 10, "{results:?}");
    for (i, result) in results.iter().enumerate() {
        let i = i as u64;
        match i {
            4 => assert_task_error(
                result.as_ref().unwrap_err(),
                4,
                "handler panicked: boom at 4",
            ),
            7 => assert_task_error(result.as_ref().unwrap_err(), 7, "refused 7"),
            _ => assert_eq!(result.as_ref().ok(), Some(&(i * 10)), "input {i}"),
        }
    }

    match pool.map::<u64, u64>("fragile", 0..10u64) {
        Err(PoolError::Task(error)) => assert_task_error(&error, 4, "boom at 4"),
        other => panic!("map should stop at input 4: {other:?}"),
    }
    match pool.map::<u64, u64>("fragile", 5..10u64) {
        // Index 2 of these inputs is the 7.
        Err(PoolError::Task(error)) => assert_task_error(&error, 2, "refused 7"),
        other => panic!("map should stop at input 7: {other:?}"),
    }

    // imap_unordered: every index once, failures included.
    let mut seen: Vec<(u64, bool)> = pool
        .imap_unordered::<u64, u64, _>("fragile", 0..10u64)
        .unwrap()
        .map(|item| {
            let (index, result) = item.unwrap();
            (index, result.is_ok())
        })
        .collect();
    seen.sort_unstable();
    let want: Vec<(u64, bool)> = (0..10).map(|i| (i, i != 4 && i != 7)).collect();
    assert_eq!(seen, want);

    // The pool is still good.
    let ok: Vec<u64> = pool.map("fragile", [1u64, 2, 3]).unwrap();
    assert_eq!(ok, [10, 20, 30]);
}

/// When a whole chunk fails before the handler sees it (here the worker
/// cannot decode the inputs as the handler's type), every input of the
/// chunk gets its error: none is lost from `map_all` or `imap_unordered`.
#[test]
fn a_chunk_that_cannot_be_decoded_fails_every_input_of_it() {
    init_tracing();
    let mut pool = Pool::local(2, fragile_registry()).unwrap().chunksize(3);
    // `negate` takes a bool; 7..12 are not bools.
    let results: Vec<Result<bool, TaskError>> = pool.map_all("negate", 7..12u64).unwrap();
    assert_eq!(results.len(), 5, "an input went missing: {results:?}");
    for (i, result) in results.iter().enumerate() {
        let error = result.as_ref().unwrap_err();
        assert_eq!(error.index, i as u64, "{error}");
        assert!(!error.message.is_empty());
    }
    let mut seen: Vec<u64> = pool
        .imap_unordered::<u64, bool, _>("negate", 7..12u64)
        .unwrap()
        .map(|item| {
            let (index, result) = item.unwrap();
            assert!(result.is_err());
            index
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, [0, 1, 2, 3, 4]);
}

/// A handler no engine offers is refused when the call opens its job, with
/// an error naming it (and what is offered).
#[test]
fn an_unknown_handler_is_refused_at_submit() {
    init_tracing();
    let mut pool = Pool::local(1, square_registry()).unwrap();
    match pool.map::<u64, u64>("no_such_handler", 0..3u64) {
        Err(PoolError::Hub(ClientError::Refused(message))) => {
            assert!(message.contains("`no_such_handler`"), "{message}");
            assert!(message.contains("square"), "{message}");
        }
        other => panic!("expected a refusal: {other:?}"),
    }
    let err = pool
        .imap::<u64, u64, _>("no_such_handler", 0..)
        .err()
        .expect("imap refused at submit");
    assert!(err.to_string().contains("no_such_handler"), "{err}");
    let squares: Vec<u64> = pool.map("square", 1..=3u64).unwrap();
    assert_eq!(squares, [1, 4, 9]);
}

// --------------------------------------------------------------- memory

/// Ten million lazy inputs: taking a few thousand outputs pulls only those
/// plus the hub's credit of chunks, and dropping the iterator leaves the
/// pool ready for the next call.
#[test]
fn imap_over_a_long_iterator_pulls_a_bounded_number_of_inputs() {
    init_tracing();
    let chunksize = 8u64;
    let credit = u64::from(DEFAULT_CREDIT);
    let mut pool = Pool::local(2, square_registry())
        .unwrap()
        .chunksize(chunksize as usize);
    let pulled = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let inputs = {
        let pulled = pulled.clone();
        (0..10_000_000u64).inspect(move |_| pulled.set(pulled.get() + 1))
    };
    let consumed = 3_000u64;
    {
        let outputs = pool.imap::<u64, u64, _>("square", inputs).unwrap();
        for (i, output) in outputs.take(consumed as usize).enumerate() {
            let i = i as u64;
            assert_eq!(output.unwrap().unwrap(), i * i);
        }
    }
    assert!(pulled.get() >= consumed);
    // Read ahead of what was handed out: at most the credit of chunks, plus
    // the chunk the last output came from.
    let ahead = pulled.get() - consumed;
    let bound = credit * chunksize + chunksize;
    assert!(
        ahead <= bound,
        "pulled {} inputs for {consumed} outputs: {ahead} ahead, more than the credit of \
         {credit} chunks of {chunksize} allows ({bound})",
        pulled.get()
    );
    let squares: Vec<u64> = pool.map("square", 0..100u64).unwrap();
    assert_eq!(squares, (0..100u64).map(|i| i * i).collect::<Vec<_>>());
    drop_within(pool, "after an abandoned imap");
}

/// While the first input is still running, an ordered `imap` must not go
/// on pulling and holding outputs behind it: at most the credit of chunks
/// is read past the oldest output not yet handed out. Input 0 finishes
/// once every other input the pool sent has run.
#[test]
fn imap_reads_at_most_the_credit_past_a_slow_first_input() {
    init_tracing();
    let chunksize = 2u64;
    let credit = u64::from(DEFAULT_CREDIT);
    let bound = credit * chunksize;
    let pulled = Arc::new(AtomicU64::new(0));
    let others_done = Arc::new(AtomicU64::new(0));
    let pulled_while_first_ran = Arc::new(AtomicU64::new(0));
    let registry = {
        let (pulled, others_done, seen) = (
            pulled.clone(),
            others_done.clone(),
            pulled_while_first_ran.clone(),
        );
        Registry::new().handler("first_slow", move |i: u64| {
            if i == 0 {
                // Every other input of the first `credit` chunks has run
                // (or the pool pulled past them).
                wait_until(FAIL_AFTER, || {
                    others_done.load(Ordering::SeqCst) >= bound - chunksize
                        || pulled.load(Ordering::SeqCst) > bound
                });
                // A moment for a pool that reads too far to show it (a
                // correct one waits it out).
                wait_until(Duration::from_millis(200), || {
                    pulled.load(Ordering::SeqCst) > bound
                });
                seen.store(pulled.load(Ordering::SeqCst), Ordering::SeqCst);
            } else {
                others_done.fetch_add(1, Ordering::SeqCst);
            }
            Ok::<_, String>(i)
        })
    };
    let mut pool = Pool::local(2, registry)
        .unwrap()
        .chunksize(chunksize as usize);
    let inputs = {
        let pulled = pulled.clone();
        (0..10_000_000u64).inspect(move |_| {
            pulled.fetch_add(1, Ordering::SeqCst);
        })
    };
    {
        let mut outputs = pool.imap::<u64, u64, _>("first_slow", inputs).unwrap();
        for i in 0..10 {
            assert_eq!(outputs.next().unwrap().unwrap().unwrap(), i);
        }
    }
    let seen = pulled_while_first_ran.load(Ordering::SeqCst);
    assert!(
        seen <= bound,
        "pulled {seen} inputs while input 0 ran (credit {credit} chunks of {chunksize}: at most {bound})"
    );
    drop_within(pool, "after an abandoned imap");
}

// ---------------------------------------------------------------- stats

/// After a call, per (host, pid) counts add up to the inputs and a handler
/// that sleeps has a positive mean time.
#[test]
fn stats_count_every_input_of_the_last_call() {
    init_tracing();
    let registry = Registry::new()
        .handler("nap", |i: u64| {
            thread::sleep(Duration::from_millis(2));
            Ok::<_, String>(i)
        })
        .reducer("sum", |a: u64, b: u64| a + b);
    let mut pool = Pool::local(2, registry).unwrap().chunksize(4);
    assert!(pool.stats().is_empty());
    let _: Vec<u64> = pool.map("nap", 0..30u64).unwrap();
    let stats = pool.stats();
    assert_eq!(stats.iter().map(|s| s.count).sum::<u64>(), 30, "{stats:?}");
    for s in &stats {
        assert_eq!(s.host, zcluster::host_name());
        assert_eq!(s.pid, std::process::id());
        assert!(s.mean_time >= Duration::from_millis(1), "{s:?}");
    }
    // The next call replaces them.
    let _: Vec<u64> = pool.map("nap", 0..5u64).unwrap();
    assert_eq!(pool.stats().iter().map(|s| s.count).sum::<u64>(), 5);
    // map_reduce counts the mapped inputs too.
    let total: Option<u64> = pool.map_reduce("nap", "sum", 0..20u64).unwrap();
    assert_eq!(total, Some(190));
    let stats = pool.stats();
    assert_eq!(stats.iter().map(|s| s.count).sum::<u64>(), 20, "{stats:?}");
}

// ------------------------------------------------------------- TCP hub

/// A hub on TCP with a connection file, on a thread of this process.
struct TcpHub {
    file: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<Result<(), zcluster::hub::server::HubError>>>,
    _dir: tempfile::TempDir,
}

impl TcpHub {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hub.json");
        let hub = Hub::bind(
            &zmq::Context::new(),
            HubOptions {
                endpoints: Endpoints::Tcp {
                    ip: "127.0.0.1".into(),
                    port_base: None,
                },
                connection_file: Some(file.clone()),
                ..HubOptions::default()
            },
        )
        .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            thread::Builder::new()
                .name("tcp-hub".into())
                .spawn(move || hub.run(&stop))
                .unwrap()
        };
        TcpHub {
            file,
            stop,
            thread: Some(thread),
            _dir: dir,
        }
    }

    fn client(&self) -> HubClient {
        let connection = ConnectionInfo::read(&self.file).unwrap();
        HubClient::connect(&zmq::Context::new(), &connection).unwrap()
    }

    /// Waits until engines with `slots` slots in all have registered.
    fn wait_for_slots(&self, slots: u32) {
        let mut client = self.client();
        let registered = wait_until(
            FAIL_AFTER,
            || matches!(client.call(&ClientCall::Hello), Ok(Reply::Hello(info)) if info.slots >= slots),
        );
        assert!(
            registered,
            "no {slots} slots registered within {FAIL_AFTER:?}"
        );
    }

    /// Kills the engines and stops the hub.
    fn shutdown(mut self) {
        let reply = self
            .client()
            .call_waiting(&ClientCall::Shutdown { workers: true }, FAIL_AFTER);
        assert!(reply.is_ok(), "shutdown: {reply:?}");
        let hub = self.thread.take().unwrap();
        join_within(hub, FAIL_AFTER).unwrap();
    }
}

impl Drop for TcpHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(hub) = self.thread.take() {
            let _ = hub.join();
        }
    }
}

/// `Registry::serve` as an engine of a TCP hub (the body of a worker
/// binary), `Pool::connect` through the connection file, and a shutdown
/// that ends both.
#[test]
fn registry_serves_a_tcp_hub_for_a_connected_pool() {
    init_tracing();
    let hub = TcpHub::start();
    let engine = {
        let file = hub.file.clone();
        thread::Builder::new()
            .name("serve".into())
            .spawn(move || fragile_registry().serve(&file, 2))
            .unwrap()
    };
    hub.wait_for_slots(2);
    let mut pool = Pool::connect(&hub.file).unwrap().chunksize(3);
    let got: Vec<u64> = pool.map("fragile", [1u64, 2, 3, 5, 6, 8, 9]).unwrap();
    assert_eq!(got, [10, 20, 30, 50, 60, 80, 90]);
    let results: Vec<Result<u64, TaskError>> = pool.map_all("fragile", 0..10u64).unwrap();
    assert_task_error(results[4].as_ref().unwrap_err(), 4, "boom at 4");
    assert_task_error(results[7].as_ref().unwrap_err(), 7, "refused 7");
    let stats = pool.stats();
    assert_eq!(stats.iter().map(|s| s.count).sum::<u64>(), 10, "{stats:?}");
    match pool.map::<u64, u64>("square", 0..3u64) {
        Err(PoolError::Hub(ClientError::Refused(message))) => {
            assert!(message.contains("`square`"), "{message}")
        }
        other => panic!("expected a refusal: {other:?}"),
    }
    drop(pool);
    hub.shutdown();
    let exit = join_within(engine, FAIL_AFTER).unwrap();
    assert_eq!(exit, WorkerExit::Killed);
}

// ------------------------------------------------ image_features example

const HISTOGRAM_BINS: usize = 24;

/// One parsed CSV row of the example.
#[derive(Debug, PartialEq)]
struct FeatureRow {
    path: String,
    width: f64,
    height: f64,
    histogram: Vec<f64>,
    edge_mean: f64,
    edge_std: f64,
}

fn run_example(args: &[&OsStr]) -> Output {
    let output = Command::new(example_binary("image_features"))
        .args(args)
        .output()
        .expect("run image_features");
    assert!(
        output.status.success(),
        "image_features {args:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn parse_features(stdout: &[u8]) -> (String, Vec<FeatureRow>) {
    let text = String::from_utf8(stdout.to_vec()).expect("utf-8 output");
    let mut lines = text.lines();
    let header = lines.next().expect("a header line").to_string();
    let rows = lines
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            assert_eq!(fields.len(), 3 + HISTOGRAM_BINS + 2, "row `{line}`");
            let numbers: Vec<f64> = fields[1..]
                .iter()
                .map(|f| {
                    f.parse::<f64>()
                        .unwrap_or_else(|e| panic!("`{f}` in `{line}`: {e}"))
                })
                .collect();
            assert!(numbers.iter().all(|n| n.is_finite()), "row `{line}`");
            FeatureRow {
                path: fields[0].to_string(),
                width: numbers[0],
                height: numbers[1],
                histogram: numbers[2..2 + HISTOGRAM_BINS].to_vec(),
                edge_mean: numbers[2 + HISTOGRAM_BINS],
                edge_std: numbers[3 + HISTOGRAM_BINS],
            }
        })
        .collect();
    (header, rows)
}

fn expected_header() -> String {
    let mut fields = vec!["path".to_string(), "width".into(), "height".into()];
    for channel in ["r", "g", "b"] {
        fields.extend((0..8).map(|bin| format!("h_{channel}{bin}")));
    }
    fields.extend(["edge_mean".into(), "edge_std".into()]);
    fields.join(",")
}

fn check_rows(rows: &[FeatureRow]) {
    assert_eq!(rows.len(), 48, "one row per generated image");
    for row in rows {
        assert!(
            row.path.ends_with(".png") && !row.path.contains('/'),
            "{row:?}"
        );
        assert_eq!((row.width, row.height), (64.0, 64.0), "{row:?}");
        for channel in row.histogram.chunks(8) {
            let sum: f64 = channel.iter().sum();
            assert!((sum - 1.0).abs() < 1e-3, "channel sums to {sum}: {row:?}");
            assert!(channel.iter().all(|h| (0.0..=1.0).contains(h)), "{row:?}");
        }
        assert!(row.edge_mean >= 0.0 && row.edge_std >= 0.0, "{row:?}");
    }
    let mut paths: Vec<&str> = rows.iter().map(|r| r.path.as_str()).collect();
    assert!(paths.is_sorted(), "rows in input (file name) order");
    paths.dedup();
    assert_eq!(paths.len(), rows.len(), "file names are distinct");
}

fn row<'a>(rows: &'a [FeatureRow], kind: &str) -> &'a FeatureRow {
    rows.iter()
        .find(|r| r.path.contains(kind))
        .unwrap_or_else(|| panic!("no `{kind}` image in {:?}", rows.iter().map(|r| &r.path)))
}

/// The example with no arguments: 48 generated images on a local pool, one
/// CSV row each in input order, the same on every run, and features that
/// tell a flat image from a checkerboard.
#[test]
fn image_features_example_runs_locally_and_deterministically() {
    let first = run_example(&[]);
    let (header, rows) = parse_features(&first.stdout);
    assert_eq!(header, expected_header());
    check_rows(&rows);
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(stderr.contains("48 images"), "summary: {stderr}");

    let flat = row(&rows, "flat");
    let checker = row(&rows, "checker");
    assert_eq!(flat.edge_mean, 0.0, "{flat:?}");
    assert_eq!(flat.edge_std, 0.0, "{flat:?}");
    assert!(
        checker.edge_mean > 0.1,
        "a checkerboard has edges: {checker:?}"
    );
    // A flat image's colour falls into one bin per channel.
    for channel in flat.histogram.chunks(8) {
        assert!(channel.iter().any(|h| (h - 1.0).abs() < 1e-6), "{flat:?}");
    }

    let second = run_example(&[]);
    assert_eq!(
        String::from_utf8_lossy(&first.stdout),
        String::from_utf8_lossy(&second.stdout),
        "the output is deterministic"
    );
}

/// The example as a lab runs it: `generate` the images, a `worker` process
/// serving a TCP hub, and a `client` mapping over the directory, which
/// prints exactly what the local run prints.
#[test]
fn image_features_example_worker_and_client_over_a_tcp_hub() {
    init_tracing();
    let images = tempfile::tempdir().unwrap();
    run_example(&[OsStr::new("generate"), images.path().as_os_str()]);
    let pngs = std::fs::read_dir(images.path()).unwrap().count();
    assert_eq!(pngs, 48);

    let hub = TcpHub::start();
    let mut processes = Processes::new();
    let mut worker = Command::new(example_binary("image_features"));
    worker.arg("worker").arg(&hub.file).args(["-j", "2"]);
    let worker = processes.spawn("image_features worker", worker);
    hub.wait_for_slots(2);

    let client = run_example(&[
        OsStr::new("client"),
        hub.file.as_os_str(),
        images.path().as_os_str(),
    ]);
    let local = run_example(&[]);
    assert_eq!(
        String::from_utf8_lossy(&client.stdout),
        String::from_utf8_lossy(&local.stdout),
        "client over the hub and local run agree"
    );
    let (_, rows) = parse_features(&client.stdout);
    check_rows(&rows);

    hub.shutdown();
    let status = processes.wait_exit(worker, FAIL_AFTER);
    assert!(
        status.success(),
        "worker exit {status}: {}",
        processes.stderr(worker)
    );
}

// ------------------------------------------------------------ dropping

/// Drops `pool` on a thread, failing (instead of hanging) when that takes
/// longer than [`FAIL_AFTER`].
fn drop_within(pool: Pool, what: &str) {
    let started = Instant::now();
    let dropper = thread::Builder::new()
        .name("drop-pool".into())
        .spawn(move || drop(pool))
        .unwrap();
    let deadline = started + FAIL_AFTER;
    while !dropper.is_finished() {
        assert!(
            Instant::now() < deadline,
            "dropping the local pool ({what}) hung for {FAIL_AFTER:?} (seen when the \
             embedded engine is blocked sending a result to its stopped hub)"
        );
        thread::sleep(Duration::from_millis(5));
    }
    dropper.join().unwrap();
}

/// A local pool dropped while its handlers are still running (an `imap`
/// abandoned after two outputs, with three slots busy) shuts down promptly:
/// the tasks that finish after the hub has stopped must not hold up the
/// engine.
#[test]
fn dropping_a_local_pool_with_tasks_running_returns() {
    init_tracing();
    let registry = Registry::new().handler("nap", |i: u64| {
        thread::sleep(Duration::from_millis(30));
        Ok::<_, String>(i)
    });
    for round in 0..3 {
        let mut pool = Pool::local(3, registry.clone()).unwrap().chunksize(1);
        {
            let mut outputs = pool.imap::<u64, u64, _>("nap", 0..).unwrap();
            for i in 0..2 {
                assert_eq!(outputs.next().unwrap().unwrap().unwrap(), i);
            }
        }
        drop_within(pool, &format!("round {round}"));
    }
}
