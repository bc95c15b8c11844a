//! `/proc/PID/stat` and `/proc/PID/status` as the procfs crate parses them for the agent
//! (flags and start time of every process). The comm in them is whatever the process named
//! itself (prctl PR_SET_NAME, or its executable's name): up to 15 bytes, anything but NUL.
#![no_main]

use libfuzzer_sys::fuzz_target;
use procfs::{
    FromBufRead as _, FromRead as _,
    process::{Stat, Status},
};

/// The kernel writes `PID (COMM) STATE` and then only numbers. The procfs crate slices
/// around the first `(` and the last `)` and panics on text without that shape (`(` at the
/// start, nothing after the last `)`), which the kernel never writes: raw text is given to it
/// only in the kernel's shape.
fn kernel_shaped(text: &str) -> bool {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0
        && text[digits..].starts_with(" (")
        && text.rfind(')').is_some_and(|end| text[end + 1..].starts_with(' '))
}

fuzz_target!(|data: &[u8]| {
    let lossy = String::from_utf8_lossy(data);
    if kernel_shaped(&lossy) {
        let _ = Stat::from_read(data);
    }
    let _ = Status::from_buf_read(data);

    // A stat line as the kernel writes it, for a comm of any bytes: the fields the agent
    // reads come back whatever the comm holds (spaces, parentheses, newlines, invalid UTF-8).
    let Some((numbers, rest)) = data.split_first_chunk::<16>() else { return };
    let comm: Vec<u8> = rest.iter().copied().filter(|&b| b != 0).take(15).collect();
    let pid = i32::from_le_bytes(numbers[..4].try_into().unwrap()) & 0x3fff_ffff;
    let flags = u32::from_le_bytes(numbers[4..8].try_into().unwrap());
    let starttime = u64::from_le_bytes(numbers[8..16].try_into().unwrap());
    let mut line = format!("{pid} (").into_bytes();
    line.extend_from_slice(&comm);
    line.extend_from_slice(
        format!(
            ") S 1 {pid} {pid} 0 -1 {flags} 120 0 0 0 3 1 0 0 20 0 1 0 {starttime} 12345 67 \
             18446744073709551615 1 1 0 0 0 0 0 4096 16384 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
        )
        .as_bytes(),
    );
    let stat = Stat::from_read(line.as_slice())
        .unwrap_or_else(|err| panic!("{:?}: {err}", String::from_utf8_lossy(&line)));
    assert_eq!((stat.pid, stat.flags, stat.starttime), (pid, flags, starttime));
    assert_eq!(stat.comm, String::from_utf8_lossy(&comm));
});
