//! Resource requests through the library: a typed pool call's requests
//! run only where all they ask for is free, one no engine can meet fails
//! the call, and the store keeps what each task was given.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use std::collections::BTreeMap;
use std::sync::Arc;

use zcluster::hub::client::{JobHandle, JobOptions};
use zcluster::hub::embedded::EmbeddedCluster;
use zcluster::hub::engine::{HandlerFn, HANDLER_KEY};
use zcluster::hub::protocol::{ClientCall, JobKind, Reply};
use zcluster::message::{decode_value, ClusterRequest, ClusterResult};
use zcluster::pool::{Pool, Registry};
use zcluster::resources::{ResourceRequest, TaskGrant, GRANT_KEY};

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

#[test]
fn the_store_keeps_what_each_task_was_given() {
    let echo: HandlerFn = Arc::new(|_: &ClusterRequest| Ok(Vec::new()));
    let handlers = BTreeMap::from([("echo".to_string(), echo)]);
    let cluster = EmbeddedCluster::with(4, ":memory:", handlers).expect("cluster");
    let mut client = cluster.client().expect("client");
    let request = ResourceRequest::parse(Some("2"), None, None, &[]).expect("request");
    let options = JobOptions {
        request: Some(request),
        ..JobOptions::default()
    };
    let mut handle = JobHandle::open(
        &mut client,
        JobKind::Handler("echo".into()),
        "granted".into(),
        options,
    )
    .expect("opened");
    for id in 0..4u64 {
        let task = ClusterRequest::new(id, Vec::new()).with_metadata(HANDLER_KEY, "echo");
        handle.send(&mut client, task).expect("sent");
    }
    let mut done = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while done < 4 && std::time::Instant::now() < deadline {
        if handle
            .next_result(&mut client, Duration::from_millis(50))
            .expect("result")
            .is_some()
        {
            done += 1;
        }
    }
    assert_eq!(done, 4);
    let reply = client
        .call(&ClientCall::Results {
            job: handle.job(),
            ids: None,
            status_only: false,
        })
        .expect("results");
    let Reply::Results(reports) = reply else {
        panic!("not results: {reply:?}");
    };
    assert_eq!(reports.len(), 4);
    for report in reports {
        let body = report.result.expect("a recorded result");
        let result: ClusterResult = decode_value(&body, "result").expect("decoded");
        let given = result
            .request_metadata
            .get(GRANT_KEY)
            .expect("the grant is recorded");
        let grant = TaskGrant::from_metadata(given).expect("a grant");
        assert_eq!(grant.cpus.len(), 2, "{given}");
    }
}
