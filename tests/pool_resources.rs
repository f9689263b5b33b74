//! The typed pool with resource requests: a call's requests run only where
//! all they ask for is free, and one no engine can meet fails the call.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use zcluster::pool::{Pool, Registry};
use zcluster::resources::ResourceRequest;

/// Handler calls running now, and the most at once.
static RUNNING: AtomicUsize = AtomicUsize::new(0);
static MOST: AtomicUsize = AtomicUsize::new(0);

fn registry() -> Registry {
    Registry::new().handler("hold", |n: u64| {
        let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
        MOST.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
        RUNNING.fetch_sub(1, Ordering::SeqCst);
        Ok::<_, String>(n)
    })
}

#[test]
fn a_pool_call_with_a_request_runs_only_as_many_as_fit() {
    let request = ResourceRequest::parse(Some("2"), None, None, &[]).expect("request");
    // Four one-core slots: requests of two cores run two at a time.
    let mut pool = Pool::local(4, registry())
        .expect("pool")
        .chunksize(1)
        .resources(Some(request));
    let out: Vec<u64> = pool.map("hold", 0..12u64).expect("mapped");
    assert_eq!(out, (0..12).collect::<Vec<_>>());
    assert_eq!(
        MOST.load(Ordering::SeqCst),
        2,
        "two requests of 2 cores in 4"
    );
    // Without the request, the same pool runs four at once.
    MOST.store(0, Ordering::SeqCst);
    pool.set_resources(None);
    let _: Vec<u64> = pool.map("hold", 0..12u64).expect("mapped");
    assert_eq!(MOST.load(Ordering::SeqCst), 4);
    // A request no engine can ever meet fails the call at once.
    let gpu = ResourceRequest::parse(None, Some("1"), None, &[]).expect("request");
    pool.set_resources(Some(gpu));
    let e = pool.map::<u64, u64>("hold", 0..2u64).expect_err("refused");
    assert!(
        e.to_string()
            .contains("no engine can ever run a task asking for 1 cpus, 1 gpus"),
        "{e}"
    );
}
