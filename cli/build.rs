//! Release binaries keep their line tables (for backtraces that name files
//! and lines; see the workspace's `[profile.release]`) but compress them: on
//! Linux the linker stores the debug sections zlib-compressed, which the
//! standard library's backtrace reads as they are (zlib only: it has no
//! zstd decoder). `-O2` has the linker sort and tail-merge `.debug_str`,
//! whose names then compress to about half. Where the linker takes a
//! compression level (lld 19 and later, Rust's default linker on x86_64
//! Linux since 1.90), the debug sections get zlib's best rather than lld's
//! fastest. The binary `cargo install --path cli` builds, in bytes:
//! 15,615,456 with zlib at lld's default, 15,029,664 with `-O2`,
//! 14,539,152 with level 6 as well. Debug builds are left alone:
//! compressing hundreds of megabytes at every test link would slow the
//! edit-test loop for nothing.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// zlib's level for the debug sections, where the linker takes a level.
/// lld's default, 1, left them 14% larger (4.03 against 3.54 MB); 6 is
/// zlib's own default and compresses those 16.5 MB in 0.45 s of one core,
/// where 9 took 4.3 s for 33 kB less.
const DEBUG_ZLIB_LEVEL: u32 = 6;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    let release = std::env::var("PROFILE").is_ok_and(|profile| profile == "release");
    if !(linux && release) {
        return;
    }
    // GNU ld and lld both take these two.
    let always = ["-Wl,--compress-debug-sections=zlib", "-Wl,-O2"];
    for arg in always {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    // lld only: GNU ld would stop the link on an option it does not know,
    // so the linker this build uses is asked first. Not `.debug_*`: lld
    // refuses to compress `.debug_gdb_scripts`, which is loaded (SHF_ALLOC).
    let level = format!("-Wl,--compress-sections=.debug_[!g]*=zlib:{DEBUG_ZLIB_LEVEL}");
    if links_with(&always, &level) {
        println!("cargo:rustc-link-arg-bins={level}");
    }
}

/// Whether the compiler and linker of this build link an empty program with
/// `extra` after `always`: the same rustc, target, linker and RUSTFLAGS
/// that will link the `zcluster` binary. Any failure to try says no, so the
/// binary is then linked without `extra`, as before.
fn links_with(always: &[&str], extra: &str) -> bool {
    let (Some(rustc), Some(out_dir)) = (std::env::var_os("RUSTC"), std::env::var_os("OUT_DIR"))
    else {
        return false;
    };
    let dir = PathBuf::from(out_dir).join("link-probe");
    let source = dir.join("probe.rs");
    if std::fs::create_dir_all(&dir).is_err() || std::fs::write(&source, "fn main() {}\n").is_err()
    {
        return false;
    }
    let mut probe = Command::new(rustc);
    if let Some(flags) = std::env::var_os("CARGO_ENCODED_RUSTFLAGS") {
        let flags = flags.to_string_lossy().into_owned();
        probe.args(flags.split('\x1f').filter(|flag| !flag.is_empty()));
    }
    if let Some(linker) = std::env::var_os("RUSTC_LINKER") {
        let mut arg = OsString::from("linker=");
        arg.push(linker);
        probe.arg("-C").arg(arg);
    }
    if let Some(target) = std::env::var_os("TARGET") {
        probe.arg("--target").arg(target);
    }
    for arg in always.iter().chain([&extra]) {
        probe.arg(format!("-Clink-arg={arg}"));
    }
    probe
        .args([
            "--edition",
            "2021",
            "--crate-type",
            "bin",
            "-C",
            "debuginfo=1",
        ])
        .arg("-o")
        .arg(dir.join("probe"))
        .arg(&source)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    probe.status().is_ok_and(|status| status.success())
}
