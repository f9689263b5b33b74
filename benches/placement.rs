//! Micro benchmark of the hub's placement decision by resources: 1,000
//! engines of 64 cores and 8 GPUs each, and jobs asking for one GPU, half
//! a GPU, or (beside a one-GPU job) nothing but a core. Each run places
//! tasks until the cluster is full; the figure per item is the cost of one
//! placed task (target: under 5 µs, so the hub's task rate does not fall).
//!
//! ```sh
//! cargo bench --bench placement
//! ```

use divan::counter::ItemsCount;
use divan::Bencher;
use zcluster::hub::server::placement::PlacementCluster;
use zcluster::resources::ResourceRequest;

fn main() {
    divan::main();
}

/// Engines in the cluster, and what each offers.
const ENGINES: u64 = 1_000;
const CPUS: u32 = 64;
const GPUS: u32 = 8;

fn request(gpus: &str) -> Option<ResourceRequest> {
    ResourceRequest::parse(None, Some(gpus), None, &[]).ok()
}

fn bench(bencher: Bencher, jobs: Vec<Option<ResourceRequest>>, placed: usize) {
    bencher
        .counter(ItemsCount::new(placed))
        .with_inputs(|| PlacementCluster::new(ENGINES, CPUS, GPUS, &jobs, 100_000))
        .bench_local_values(|mut cluster| {
            let n = cluster.place_all();
            assert_eq!(n, placed);
            cluster
        });
}

/// 8,000 tasks of one GPU each.
#[divan::bench(sample_count = 10)]
fn one_gpu_per_task(bencher: Bencher) {
    bench(bencher, vec![request("1")], 8_000);
}

/// 16,000 tasks of half a GPU each.
#[divan::bench(sample_count = 10)]
fn half_a_gpu_per_task(bencher: Bencher) {
    bench(bencher, vec![request("0.5")], 16_000);
}

/// A one-GPU job beside a job of one-core tasks: 64,000 placed in all.
#[divan::bench(sample_count = 10)]
fn gpu_job_beside_cpu_job(bencher: Bencher) {
    bench(bencher, vec![request("1"), None], 64_000);
}

/// The steady state: the cluster full of one-GPU tasks, one ends and the
/// scheduler runs once and places the next (what each result costs the
/// hub).
#[divan::bench(sample_count = 200)]
fn one_gpu_task_freed_and_replaced(bencher: Bencher) {
    steady(bencher, request("1"));
}

/// The same for a job without a request (one core per task, prefetched
/// two deep): the scheduler's cost before resources, for comparison.
#[divan::bench(sample_count = 200)]
fn one_core_task_freed_and_replaced(bencher: Bencher) {
    steady(bencher, None);
}

fn steady(bencher: Bencher, request: Option<ResourceRequest>) {
    let mut cluster = PlacementCluster::new(ENGINES, CPUS, GPUS, &[request], 1_000_000);
    assert!(cluster.place_all() > 0);
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        let placed = cluster.replace_one();
        assert_eq!(placed, 1);
    });
}
