//! Cluster configuration files (TOML), including the socket short forms
//! inside them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use zcluster::config::ClusterConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(config) = ClusterConfig::parse(text) {
            // What parses must write back to something that parses.
            let again = ClusterConfig::parse(&config.to_toml());
            assert!(again.is_ok(), "{again:?}");
        }
    }
});
