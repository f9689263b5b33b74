//! Release binaries keep their line tables (for backtraces that name files
//! and lines; see the workspace's `[profile.release]`) but compress them: on
//! Linux the linker stores the debug sections zlib-compressed, which the
//! standard library's backtrace reads as they are. That takes the binary
//! `cargo install` builds from about 35 MB to about 15 MB. Debug builds are
//! left alone: compressing hundreds of megabytes at every test link would
//! slow the edit-test loop for nothing.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    let release = std::env::var("PROFILE").is_ok_and(|profile| profile == "release");
    if linux && release {
        println!("cargo:rustc-link-arg-bins=-Wl,--compress-debug-sections=zlib");
    }
}
