//! The CNI result cache (`/var/lib/cni/results/*`): any file a runtime or a plugin wrote.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netns_agent::parse::cni::parse;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    // The agent reads the files with read_to_string: invalid UTF-8 never reaches the parser.
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Some(entry) = parse(text) else { return };
    let value: Value = serde_json::from_str(text).expect("an entry came from text that is not JSON");
    assert!(!entry.netns_path.is_empty(), "an entry without a namespace path");
    if let Some(netns) = value.get("netns").and_then(Value::as_str).filter(|s| !s.is_empty()) {
        assert_eq!(entry.netns_path, netns, "the top-level netns path comes first");
    }
    if let Some((name, namespace)) = &entry.pod {
        assert!(!name.is_empty() && !namespace.is_empty(), "a pod with an empty name or namespace");
    }
    // The entry depends on the document, not on how it is written (spacing, escapes, key order).
    let rewritten = serde_json::to_string_pretty(&value).expect("a JSON value serialises");
    assert_eq!(parse(&rewritten), Some(entry), "the same document written differently");
});
