//! The map engine through the library API, on the embedded backend: what the
//! command line cannot show directly, such as how far ahead it reads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use zcluster::hub::client::HubBackend;
use zcluster::hub::embedded::EmbeddedCluster;
use zcluster::map::{run_map, MapOptions, TaskStatus};
use zcluster::template::CommandTemplate;

fn template(args: &[&str]) -> CommandTemplate {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    CommandTemplate::parse(&args, false).unwrap()
}

/// Ten million inputs, a slow first task holding the head of the order: the
/// engine must not read more than the window ahead of what it handed out.
#[test]
fn reads_at_most_a_window_ahead_of_the_oldest_unfinished_task() {
    let window = 64;
    let options = MapOptions {
        jobs: 2,
        window,
        ..MapOptions::default()
    };
    let pulled = Arc::new(AtomicU64::new(0));
    let inputs = {
        let pulled = pulled.clone();
        (1..=10_000_000u64).map(move |i| {
            pulled.store(i, Ordering::SeqCst);
            Ok(if i == 1 {
                b"0.5".to_vec()
            } else {
                b"0".to_vec()
            })
        })
    };
    let cluster = EmbeddedCluster::start(options.jobs).unwrap();
    let mut backend =
        HubBackend::open(cluster.client().unwrap(), "sleep".into(), 0, None, None).unwrap();
    let mut emitted = 0u64;
    let mut widest = 0u64;
    let stop = options.stop.clone();
    let summary = run_map(
        inputs,
        &template(&["sleep"]),
        &options,
        &mut backend,
        |record| {
            emitted += 1;
            if emitted <= 500 {
                // After the stop, cancelled tasks and gaps are handed out too.
                assert_eq!(record.seq, emitted, "records come in input order");
                assert_eq!(record.status(), TaskStatus::Ok);
                widest = widest.max(pulled.load(Ordering::SeqCst) - emitted);
            }
            if emitted == 500 {
                stop.store(true, Ordering::SeqCst);
            }
            Ok(())
        },
    )
    .unwrap();
    assert!(summary.interrupted);
    // Before the first (slow) task finished, reading stopped at the window.
    assert!(
        widest <= window as u64 + 1,
        "read {widest} inputs ahead of the output with a window of {window}"
    );
    assert!(
        pulled.load(Ordering::SeqCst) < 10_000,
        "read {} of 10 million inputs",
        pulled.load(Ordering::SeqCst)
    );
}

/// Every input gives exactly one record, in order, across many chunks.
#[test]
fn every_input_once_in_order_with_chunks() {
    for chunksize in [1, 7] {
        let options = MapOptions {
            jobs: 3,
            chunksize,
            ..MapOptions::default()
        };
        let inputs = (1..=300u64).map(|i| Ok(i.to_string().into_bytes()));
        let cluster = EmbeddedCluster::start(options.jobs).unwrap();
        let mut backend =
            HubBackend::open(cluster.client().unwrap(), "echo".into(), 0, None, None).unwrap();
        let mut seen = Vec::new();
        let summary = run_map(
            inputs,
            &template(&["echo", "{#}:{}"]),
            &options,
            &mut backend,
            |record| {
                assert_eq!(
                    String::from_utf8_lossy(&record.outcome.stdout),
                    format!("{0}:{0}\n", record.seq)
                );
                seen.push(record.seq);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(seen, (1..=300).collect::<Vec<_>>());
        assert_eq!(summary.ok, 300);
        assert!(summary.success());
    }
}
