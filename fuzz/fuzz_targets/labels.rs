//! Kernel strings (comm, device names) and mount names as label values, through the
//! agent's exposition encoder: whatever the bytes, /metrics stays valid and each value
//! reads back as it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netns_agent::{
    expose::metrics::{CREATED, Family, NETNS_INFO, encode},
    parse::labels::{from_bytes, from_kernel},
};

/// from_bytes by another route: the standard library's UTF-8 chunks.
fn expected(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// One sample line of the text exposition: `name{label="value",...} number`, values
/// unescaped. Panics on anything else.
fn sample(line: &str) -> (&str, Vec<(String, String)>, &str) {
    let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("no value: {line:?}"));
    let name = &line[..name_end];
    assert!(
        !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
            && !name.as_bytes()[0].is_ascii_digit(),
        "bad metric name: {line:?}"
    );
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = inner.find("=\"").unwrap_or_else(|| panic!("bad label: {line:?}"));
            let label = inner[..eq].to_owned();
            assert!(label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'), "{line:?}");
            let mut value = String::new();
            let mut chars = inner[eq + 2..].char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => panic!("bad escape {other:?} in {line:?}"),
                    },
                    Some((_, c)) => value.push(c),
                    None => panic!("unterminated label value: {line:?}"),
                }
            };
            labels.push((label, value));
            inner = &inner[eq + 2 + end + 1..];
            inner = inner.strip_prefix(',').unwrap_or(inner);
        }
    }
    let value = rest.strip_prefix(' ').unwrap_or_else(|| panic!("no value: {line:?}"));
    (name, labels, value)
}

fuzz_target!(|data: &[u8]| {
    let text = from_bytes(data);
    assert_eq!(text, expected(data));
    if let Ok(valid) = std::str::from_utf8(data) {
        assert_eq!(text, valid, "valid UTF-8 passes unchanged");
    }
    let nul = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let comm = from_kernel(data);
    assert_eq!(comm, from_bytes(&data[..nul]));
    assert!(!comm.contains('\0'));

    // Seven values for netns_info, cut from the input at 0x1f; and the comm for netns_created_total.
    let mut values: Vec<String> = data.split(|&b| b == 0x1f).take(7).map(from_bytes).collect();
    values.resize(7, String::new());
    let mut info = Family::new(&NETNS_INFO);
    info.add(&values.iter().map(String::as_str).collect::<Vec<_>>(), 1.0);
    let mut created = Family::new(&CREATED);
    created.add(&[comm.as_str()], 3.0);
    let families: Vec<_> = [info.finish(), created.finish()].into_iter().flatten().collect();
    let exposition = encode(&families).expect("the exposition renders");

    let mut samples = Vec::new();
    for line in exposition.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.splitn(3, ' ');
            let (kind, name) = (words.next(), words.next());
            assert!(matches!(kind, Some("HELP" | "TYPE")) && name.is_some(), "{line:?}");
            continue;
        }
        samples.push(sample(line));
    }
    assert_eq!(samples.len(), 2, "{exposition}");
    let (name, labels, value) = &samples[0];
    assert_eq!((*name, *value), ("netns_info", "1"));
    for (label, want) in NETNS_INFO.labels.iter().zip(&values) {
        let got = labels.iter().find(|(l, _)| l == label).map(|(_, v)| v);
        assert_eq!(got, Some(want), "{label} in {exposition:?}");
    }
    let (name, labels, value) = &samples[1];
    assert_eq!((*name, *value), ("netns_created_total", "3"));
    assert_eq!(labels, &vec![("comm".to_owned(), comm.clone())], "{exposition:?}");
});
