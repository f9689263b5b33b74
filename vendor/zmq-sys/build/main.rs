//! Builds libzmq 4.3.5 from zeromq-src WITH CURVE (ZMQ_HAVE_CURVE,
//! ZMQ_USE_LIBSODIUM), against the static libsodium that the
//! libsodium-sys-stable dependency has just built from its bundled source.
use std::env;

fn main() {
    println!("cargo:rerun-if-changed=build/main.rs");
    println!("cargo:rerun-if-env-changed=PROFILE");
    println!("cargo:rerun-if-env-changed=TARGET");
    println!("cargo:rerun-if-env-changed=DEP_SODIUM_INCLUDE");
    println!("cargo:rerun-if-env-changed=DEP_SODIUM_LIB");

    // Set by cargo from libsodium-sys-stable's `cargo:include=` / `cargo:lib=`
    // lines (its manifest says `links = "sodium"`). A panic is how a build
    // script fails the build, with this message shown to the user.
    let include_dir = env::var_os("DEP_SODIUM_INCLUDE")
        .expect("libsodium-sys-stable did not report its include dir (DEP_SODIUM_INCLUDE)");
    let lib_dir = env::var_os("DEP_SODIUM_LIB")
        .expect("libsodium-sys-stable did not report its lib dir (DEP_SODIUM_LIB)");

    // cc relays every compiler warning as `cargo:warning`, and cargo shows
    // those for path dependencies such as this patched crate: dozens of lines
    // about libzmq's own code on every cold build. `-w` silences them; flags a
    // user set in CXXFLAGS are kept in front.
    //
    // zeromq-src sets only some of the platform macros libzmq's own build
    // (CMake) finds on Linux, and libzmq then falls back to older paths:
    // - without ZMQ_HAVE_EVENTFD each mailbox signals through a pair of
    //   AF_UNIX sockets (two descriptors, a sendto and a recvfrom per
    //   wake-up) instead of one eventfd (a write and a read of 8 bytes);
    //   every hand-off between threads (client, hub, engine, slot) pays it;
    // - without the *_CLOEXEC macros its sockets are made close-on-exec by
    //   a second call after they exist (a child spawned in between inherits
    //   them) and its epoll descriptor never is;
    // - without HAVE_CLOCK_GETTIME its timers (heartbeats, reconnects) read
    //   gettimeofday, which jumps when the wall clock is set.
    let platform = if env::var("TARGET").is_ok_and(|target| target.contains("linux")) {
        " -DZMQ_HAVE_EVENTFD -DZMQ_HAVE_EVENTFD_CLOEXEC -DZMQ_HAVE_SOCK_CLOEXEC \
         -DHAVE_ACCEPT4 -DZMQ_IOTHREAD_POLLER_USE_EPOLL_CLOEXEC -DHAVE_CLOCK_GETTIME"
    } else {
        ""
    };
    let cxxflags = match env::var("CXXFLAGS") {
        Ok(flags) => format!("{flags} -w{platform}"),
        Err(_) => format!("-w{platform}"),
    };
    env::set_var("CXXFLAGS", cxxflags);

    zeromq_src::Build::new()
        .with_libsodium(Some(zeromq_src::LibLocation::new(lib_dir, include_dir)))
        .build();
}
