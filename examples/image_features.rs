//! Batch image features: the use glimpse's cluster pool was built for. One
//! handler, `features`, loads an image and returns a small feature vector
//! (a normalised 8-bin histogram per RGB channel, the mean and standard
//! deviation of the Sobel gradient magnitude of the grey image, and the
//! size); a pool maps it over many images and prints one CSV row each, in
//! input order.
//!
//! ```text
//! # all in this process, on 48 generated 64x64 test images:
//! cargo run --release --example image_features
//!
//! # over a lab's hub (the paths must be readable by every worker):
//! zcluster hub --ip 0.0.0.0 --connection-file hub.json &
//! cargo run --release --example image_features -- worker hub.json -j 8   # on each machine
//! cargo run --release --example image_features -- generate imgs          # or any PNGs
//! cargo run --release --example image_features -- client hub.json imgs
//! ```
//!
//! Rows go to stdout (`path,width,height,h_r0..h_b7,edge_mean,edge_std`,
//! the path as a file name), a summary with per-worker counts to stderr.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use image::{Rgb, RgbImage};
use serde::{Deserialize, Serialize};
use zcluster::pool::{Pool, Registry, TaskError};

/// Bins per colour channel.
const BINS: usize = 8;

/// Side of the generated images.
const SIDE: u32 = 64;

/// How many images `generate` (and the local run) makes.
const GENERATED: usize = 48;

#[derive(Parser)]
#[command(about = "Colour histograms and edge energy of images, over a zcluster pool")]
struct Args {
    #[command(subcommand)]
    mode: Option<Mode>,
    /// Slots of the local pool (with no subcommand); all cores by default.
    #[arg(short, long)]
    jobs: Option<usize>,
}

#[derive(Subcommand)]
enum Mode {
    /// Serve a hub as an engine running `features`, until killed.
    Worker {
        /// The hub's connection file.
        hub_file: PathBuf,
        /// Slots; all cores by default.
        #[arg(short, long)]
        jobs: Option<usize>,
    },
    /// Map `features` over the PNG files of DIR (sorted) through a hub.
    Client {
        /// The hub's connection file.
        hub_file: PathBuf,
        /// Where the images are.
        dir: PathBuf,
    },
    /// Write the generated test images into DIR.
    Generate {
        /// Where to write them (created if missing).
        dir: PathBuf,
    },
}

/// What `features` returns for one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Features {
    width: u32,
    height: u32,
    /// `BINS` bins for red, then green, then blue; each channel sums to 1.
    histogram: Vec<f32>,
    /// Mean Sobel gradient magnitude of the grey image (grey in 0..1).
    edge_mean: f32,
    /// Its standard deviation.
    edge_std: f32,
}

/// The handler: loads the image at `path` and measures it.
fn features(path: String) -> Result<Features, String> {
    let image = image::open(&path).map_err(|e| format!("cannot load {path}: {e}"))?;
    let rgb = image.to_rgb8();
    let (width, height) = rgb.dimensions();
    let mut histogram = vec![0f32; 3 * BINS];
    for pixel in rgb.pixels() {
        for (channel, value) in pixel.0.iter().enumerate() {
            histogram[channel * BINS + usize::from(*value) * BINS / 256] += 1.0;
        }
    }
    let pixels = (width as f32 * height as f32).max(1.0);
    for h in &mut histogram {
        *h /= pixels;
    }
    let (edge_mean, edge_std) = edge_energy(&image.to_luma8());
    Ok(Features {
        width,
        height,
        histogram,
        edge_mean,
        edge_std,
    })
}

/// Mean and standard deviation of the Sobel gradient magnitude over the
/// interior pixels (grey scaled to 0..1); zero for images under 3x3.
fn edge_energy(grey: &image::GrayImage) -> (f32, f32) {
    let (w, h) = grey.dimensions();
    if w < 3 || h < 3 {
        return (0.0, 0.0);
    }
    let at = |x: u32, y: u32| f64::from(grey.get_pixel(x, y).0[0]) / 255.0;
    let (mut sum, mut sum_sq, mut n) = (0f64, 0f64, 0f64);
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            let gx = at(x + 1, y - 1) + 2.0 * at(x + 1, y) + at(x + 1, y + 1)
                - at(x - 1, y - 1)
                - 2.0 * at(x - 1, y)
                - at(x - 1, y + 1);
            let gy = at(x - 1, y + 1) + 2.0 * at(x, y + 1) + at(x + 1, y + 1)
                - at(x - 1, y - 1)
                - 2.0 * at(x, y - 1)
                - at(x + 1, y - 1);
            let magnitude = gx.hypot(gy);
            sum += magnitude;
            sum_sq += magnitude * magnitude;
            n += 1.0;
        }
    }
    let mean = sum / n;
    let variance = (sum_sq / n - mean * mean).max(0.0);
    (mean as f32, variance.sqrt() as f32)
}

/// The handlers a worker binary compiles in.
fn registry() -> Registry {
    Registry::new().handler("features", features)
}

/// A fixed-seed linear congruential generator (Knuth's MMIX constants).
struct Lcg(u64);

impl Lcg {
    fn byte(&mut self) -> u8 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 56) as u8
    }
}

const KINDS: [&str; 6] = ["flat", "hgrad", "vgrad", "stripes", "checker", "noise"];

/// Test image `i`: kinds take turns, each in `GENERATED / 6` variants.
fn generated_image(i: usize) -> (String, RgbImage) {
    let kind = KINDS[i % KINDS.len()];
    let v = (i / KINDS.len()) as u32;
    let mut lcg = Lcg(0x5eed + u64::from(v));
    let image = RgbImage::from_fn(SIDE, SIDE, |x, y| match kind {
        "flat" => Rgb([(10 + 30 * v) as u8, (200 - 20 * v) as u8, 128]),
        "hgrad" => Rgb([(x * 4) as u8, (v * 30) as u8, (255 - x * 4) as u8]),
        "vgrad" => Rgb([
            (v * 30) as u8,
            (y * 4) as u8,
            ((y * 2 + v * 16) % 256) as u8,
        ]),
        "stripes" => {
            let period = 2 + v;
            let along = if v % 2 == 0 { x } else { x + y };
            if (along / period) % 2 == 0 {
                Rgb([220, 40, 40])
            } else {
                Rgb([20, 20, 200])
            }
        }
        "checker" => {
            let cell = 2 + v;
            if (x / cell + y / cell) % 2 == 0 {
                Rgb([240, 240, 240])
            } else {
                Rgb([15, 15, 15])
            }
        }
        _ => Rgb([lcg.byte(), lcg.byte(), lcg.byte()]),
    });
    (format!("img{i:02}_{kind}.png"), image)
}

/// Writes the generated images into `dir`.
fn generate(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for i in 0..GENERATED {
        let (name, image) = generated_image(i);
        let path = dir.join(name);
        image
            .save(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The PNG files of `dir`, sorted by name, as absolute paths.
fn pngs(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot read {}", dir.display()))?;
    let mut paths = Vec::new();
    for entry in
        std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?
    {
        let path = entry?.path();
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("png"))
            && path.is_file()
        {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

fn header() -> String {
    let mut header = String::from("path,width,height");
    for channel in ["r", "g", "b"] {
        for bin in 0..BINS {
            let _ = write!(header, ",h_{channel}{bin}");
        }
    }
    header + ",edge_mean,edge_std"
}

fn csv_row(name: &str, f: &Features) -> String {
    let mut row = format!("{name},{},{}", f.width, f.height);
    for h in &f.histogram {
        let _ = write!(row, ",{h:.6}");
    }
    let _ = write!(row, ",{:.6},{:.6}", f.edge_mean, f.edge_std);
    row
}

/// Maps `features` over `paths` on `pool`, prints the CSV and a summary;
/// fails when any image failed.
fn run_pool(mut pool: Pool, paths: &[PathBuf]) -> anyhow::Result<()> {
    let started = Instant::now();
    let inputs: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let results: Vec<Result<Features, TaskError>> = pool.map_all("features", inputs)?;
    let elapsed = started.elapsed();
    println!("{}", header());
    let mut failed = 0;
    for (path, result) in paths.iter().zip(&results) {
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into(),
        );
        match result {
            Ok(f) => println!("{}", csv_row(&name, f)),
            Err(e) => {
                failed += 1;
                eprintln!("image_features: {name}: {e}");
            }
        }
    }
    eprintln!(
        "image_features: {} images in {:.3} s ({failed} failed)",
        results.len(),
        elapsed.as_secs_f64()
    );
    for s in pool.stats() {
        eprintln!(
            "  {} pid {}: {} images, {:.3} ms each",
            s.host,
            s.pid,
            s.count,
            s.mean_time.as_secs_f64() * 1e3
        );
    }
    if failed > 0 {
        bail!("{failed} of {} images failed", results.len());
    }
    Ok(())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn run(args: Args) -> anyhow::Result<u8> {
    match args.mode {
        None => {
            let dir = tempfile::tempdir().context("cannot make a temporary directory")?;
            generate(dir.path())?;
            let paths = pngs(dir.path())?;
            let pool = Pool::local(args.jobs.unwrap_or_else(cores), registry())?.chunksize(2);
            run_pool(pool, &paths)?;
        }
        Some(Mode::Worker { hub_file, jobs }) => {
            let exit = registry().serve(&hub_file, jobs.unwrap_or_else(cores))?;
            return Ok(u8::try_from(exit.exit_code()).unwrap_or(1));
        }
        Some(Mode::Client { hub_file, dir }) => {
            let paths = pngs(&dir)?;
            if paths.is_empty() {
                bail!("no PNG files in {}", dir.display());
            }
            run_pool(Pool::connect(&hub_file)?.chunksize(2), &paths)?;
        }
        Some(Mode::Generate { dir }) => generate(&dir)?,
    }
    Ok(0)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("image_features: {e:#}");
            ExitCode::FAILURE
        }
    }
}
