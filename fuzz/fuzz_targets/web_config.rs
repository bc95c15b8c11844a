//! The web config (`--web.config.file`, YAML): never a panic, and every problem is one line.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use netns_agent::expose::web::WebConfig;
use yaml_rust2::{Yaml, YamlLoader};

/// Inputs the target leaves out, as they test the machine rather than the parser: bcrypt
/// hashes of a cost above 5 (cost 31 is hours of work, by design of bcrypt), and TLS file
/// names that could reach a device or a FIFO on this machine (absolute, or with `..`).
fn out_of_scope(text: &str) -> bool {
    let Ok(docs) = YamlLoader::load_from_str(text) else { return false };
    let Some(root) = docs.first() else { return false };
    let slow_hash = root["basic_auth_users"].as_hash().is_some_and(|users| {
        users.values().filter_map(Yaml::as_str).any(|hash| {
            hash.as_bytes()
                .get(4..6)
                .and_then(|c| std::str::from_utf8(c).ok()?.parse::<u32>().ok())
                .is_some_and(|c| c > 5)
        })
    });
    let outside = root["tls_server_config"].as_hash().is_some_and(|tls| {
        tls.values().filter_map(Yaml::as_str).any(|f| f.starts_with('/') || f.contains(".."))
    });
    slow_hash || outside
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if out_of_scope(text) {
        return;
    }
    // The directory relative file names resolve in: absent, so no file is ever read.
    match WebConfig::parse(text, Path::new("/nonexistent/netns-agent-fuzz")) {
        Ok(config) => {
            assert!(config.tls.is_none(), "TLS configured without readable files");
            for (user, hash) in &config.users {
                assert!(bcrypt::verify("", hash).is_ok(), "{user}: {hash:?} is not bcrypt");
            }
        }
        Err(err) => {
            assert!(!err.is_empty() && !err.contains(['\n', '\r']), "not one line: {err:?}");
        }
    }
});
