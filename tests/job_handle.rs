//! `JobHandle`, the client's view of one hub job, taking over a job whose
//! client died (`zcluster map --attach` uses it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use zcluster::hub::client::{HubClient, JobHandle};
use zcluster::hub::embedded::EmbeddedCluster;
use zcluster::hub::engine::{HandlerFn, HANDLER_KEY};
use zcluster::hub::protocol::{ClientCall, JobKind};
use zcluster::message::ClusterRequest;
use zcluster::worker::HandlerError;

/// Sleeps the number of milliseconds it is given.
fn nap() -> HandlerFn {
    Arc::new(|request: &ClusterRequest| {
        let ms: u64 = request.decode().map_err(HandlerError::new)?;
        std::thread::sleep(Duration::from_millis(ms));
        Ok(Vec::new())
    })
}

fn nap_request(id: u64, ms: u64) -> ClusterRequest {
    ClusterRequest::encode(id, &ms)
        .unwrap()
        .with_metadata(HANDLER_KEY, "nap")
}

/// An embedded cluster with `slots` slots running `nap`, a client, and a
/// job of `nap` tasks opened by it.
fn nap_job(slots: usize, description: &str) -> (EmbeddedCluster, HubClient, JobHandle) {
    let handlers = BTreeMap::from([("nap".to_string(), nap())]);
    let cluster = EmbeddedCluster::with(slots, ":memory:", handlers).unwrap();
    let mut client = cluster.client().unwrap();
    let open = ClientCall::OpenJob {
        kind: JobKind::Handler("nap".into()),
        description: description.into(),
        retries: 0,
        halt: None,
        cap: None,
        request: None,
    };
    let handle = JobHandle::open(&mut client, open).unwrap();
    (cluster, client, handle)
}

/// Results until `until` says stop or `limit` passes.
fn collect(
    handle: &mut JobHandle,
    client: &mut HubClient,
    limit: Duration,
    mut until: impl FnMut(&[u64]) -> bool,
) -> Vec<u64> {
    let mut ids = Vec::new();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline && !until(&ids) {
        if let Some(result) = handle
            .next_result(client, Duration::from_millis(50))
            .unwrap()
        {
            ids.push(result.id);
        }
    }
    ids
}

/// A client attaches to a job whose client died while a straggler holds
/// its window: results of stored tasks it has not taken on yet arrive live
/// (the store said "running" when their page was fetched) and must still be
/// handed out when it takes them on. (A review found them dropped, leaving
/// the attached map waiting for ever.)
#[test]
fn an_attached_client_gets_results_that_arrive_before_it_expects_them() {
    let (cluster, mut first, mut handle) = nap_job(4, "attach");
    let job = handle.job();
    let naps = [1500, 0, 0, 0, 0, 0, 0, 0, 0, 0, 400, 400];
    for (id, ms) in naps.into_iter().enumerate() {
        handle.send(&mut first, nap_request(id as u64, ms)).unwrap();
    }
    let got = collect(&mut handle, &mut first, Duration::from_secs(10), |ids| {
        ids.len() == 9
    });
    assert_eq!(got.len(), 9, "{got:?}");
    // The first client dies without closing the job.
    drop(handle);
    drop(first);

    let mut second = cluster.client().unwrap();
    let (mut attached, info) = JobHandle::attach(&mut second, job).unwrap();
    assert_eq!((info.known, info.live), (12, true));
    // As run_map does while the straggler (0) holds its window: take on the
    // chunks up to where the window stops.
    for id in 0..10 {
        attached.expect(&mut second, id).unwrap();
    }
    let mut delivered = collect(&mut attached, &mut second, Duration::from_secs(5), |ids| {
        ids.contains(&0)
    });
    // The window moves on.
    attached.expect(&mut second, 10).unwrap();
    attached.expect(&mut second, 11).unwrap();
    delivered.extend(collect(
        &mut attached,
        &mut second,
        Duration::from_secs(5),
        |ids| ids.contains(&10) && ids.contains(&11),
    ));
    delivered.sort_unstable();
    assert_eq!(delivered, (0..12).collect::<Vec<u64>>());
    assert_eq!(attached.outstanding(), 0);
}

/// A result the hub finished but that never reached the job's handle (here
/// taken off the socket before the handle sees it, as a connection that was
/// down when the hub sent it would lose it) is fetched from the store once
/// the job has made no progress for a while: the job ends with every result
/// once, instead of waiting for ever on a hub that stays up.
#[test]
fn a_result_lost_on_the_way_is_taken_from_the_store() {
    let (_cluster, mut client, mut handle) = nap_job(2, "lost result");
    handle.send(&mut client, nap_request(0, 0)).unwrap();
    let lost = client
        .next_result(Duration::from_secs(10))
        .unwrap()
        .expect("the first result");
    assert_eq!(lost.header.id, 0);
    handle.send(&mut client, nap_request(1, 0)).unwrap();
    handle.send(&mut client, nap_request(2, 0)).unwrap();
    let started = Instant::now();
    let mut got = collect(&mut handle, &mut client, Duration::from_secs(30), |ids| {
        ids.len() >= 3
    });
    got.sort_unstable();
    assert_eq!(got, [0, 1, 2], "every result once");
    assert_eq!(handle.outstanding(), 0);
    eprintln!(
        "the lost result came from the store after {:?}",
        started.elapsed()
    );
    // Nothing more comes.
    assert!(handle
        .next_result(&mut client, Duration::from_millis(300))
        .unwrap()
        .is_none());
}

/// Two jobs on one client, read in turn by their handles: each handle gets
/// every result of its own job as it arrives, none taken by the other. (A
/// handle used to drop the other job's results it received, which then came
/// only from the store, after `RECONCILE_AFTER` of silence.)
#[test]
fn two_jobs_on_one_client_each_get_their_own_results_live() {
    let (_cluster, mut client, mut first) = nap_job(2, "first of two");
    let open = ClientCall::OpenJob {
        kind: JobKind::Handler("nap".into()),
        description: "second of two".into(),
        retries: 0,
        halt: None,
        cap: None,
        request: None,
    };
    let mut second = JobHandle::open(&mut client, open).unwrap();
    for id in 0..10 {
        first.send(&mut client, nap_request(id, 5)).unwrap();
        second.send(&mut client, nap_request(id, 5)).unwrap();
    }
    // Read the first job's results while both jobs' results arrive...
    let mut got_first = collect(&mut first, &mut client, Duration::from_secs(5), |ids| {
        ids.len() == 10
    });
    // ...then the second's: all of them already came, none may be lost.
    let mut got_second = collect(&mut second, &mut client, Duration::from_secs(5), |ids| {
        ids.len() == 10
    });
    got_first.sort_unstable();
    got_second.sort_unstable();
    let all: Vec<u64> = (0..10).collect();
    assert_eq!(got_first, all);
    assert_eq!(got_second, all, "well within the store fallback's 10 s");
    first.close(&mut client, 10).unwrap();
    second.close(&mut client, 10).unwrap();
    client.forget(first.job());
    client.forget(second.job());
}
