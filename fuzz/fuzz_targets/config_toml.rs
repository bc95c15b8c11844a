//! The TOML config file: written by an operator, but the agent must say what is wrong in
//! one line (it is logged and shown by the DaemonSet's status), never panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use netns_agent::config::{FileConfig, KEYS, Overrides, Settings};

fn one_line(err: &dyn std::fmt::Display) {
    let text = err.to_string();
    assert!(!text.is_empty() && !text.contains(['\n', '\r']), "not one line: {text:?}");
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let file = match FileConfig::parse(Path::new("netns-agent.toml"), text) {
        Ok(file) => file,
        Err(err) => {
            one_line(&err);
            let shown = err.to_string();
            if let Some(position) = shown.strip_prefix("config file netns-agent.toml line ") {
                let line: usize = position.split(' ').next().unwrap().parse().unwrap();
                assert!(line >= 1 && line <= text.split('\n').count(), "line {line} of {text:?}");
            }
            return;
        }
    };
    let listen = file.listen.clone();
    match Settings::resolve(file, Overrides::default()) {
        Err(err) => one_line(&err),
        Ok(settings) => {
            // The address as written: a literal socket address is taken as is, `:PORT` is
            // that port on every address (a host name resolves, so only its port is known).
            if let Some(listen) = listen {
                if let Ok(addr) = listen.parse::<std::net::SocketAddr>() {
                    assert_eq!(settings.listen, addr, "the listen address as written");
                } else if let Some(port) = listen.strip_prefix(':') {
                    assert_eq!(port.parse(), Ok(settings.listen.port()), "the port as written");
                    assert!(settings.listen.ip().is_unspecified(), ":PORT listens everywhere");
                } else {
                    let port = listen.rsplit_once(':').map(|(_, port)| port.parse());
                    assert_eq!(port, Some(Ok(settings.listen.port())), "the port as written");
                }
            }
            // Every number is inside its registry range.
            let maps = settings.limits.maps;
            for (name, value) in [
                ("limits.kernel_namespaces", u64::from(maps.kernel_namespaces)),
                ("limits.event_buffer_bytes", u64::from(maps.event_buffer_bytes)),
                ("limits.route_keys", u64::from(maps.route_keys)),
                ("limits.tracked_namespaces", settings.limits.tracked_namespaces as u64),
                ("journal_max_events", settings.journal_max_events as u64),
                ("events_file_max_bytes", settings.events_file_max_bytes),
                ("series_grace_seconds", settings.series_grace.as_secs()),
                ("inventory_interval_seconds", settings.inventory_interval.as_secs()),
                ("attribution_interval_seconds", settings.attribution_interval.as_secs()),
                ("dying_after_seconds", settings.dying_after.as_secs()),
            ] {
                let key = KEYS.iter().find(|k| k.name == name).unwrap();
                let (min, max) = key.range.unwrap();
                assert!((min..=max).contains(&value), "{name} = {value}");
            }
            assert!(maps.event_buffer_bytes.is_power_of_two());
        }
    }
});
