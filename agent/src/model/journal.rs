//! The incident journal: every lifecycle event and device move with its time and its who,
//! resolved when it happened. Kept in memory (bounded) and optionally appended as JSON
//! lines to a file that rotates at a size cap, so it cannot fill a disk.

use std::{
    collections::VecDeque,
    fs::{File, OpenOptions},
    io::Write as _,
    path::{Path, PathBuf},
    time::SystemTime,
};

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// One journal entry. Fields that do not apply to a kind are left out of the JSON.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the journal (increasing; `since` takes it).
    pub seq: u64,
    /// RFC 3339 time, UTC, milliseconds.
    pub time: String,
    /// `netns_created`, `netns_destroyed`, `netns_setup_failed`, `device_moved`,
    /// `device_move_failed`.
    pub kind: String,
    /// The namespace (for moves: the source).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<u32>,
    /// The namespace's cookie: its identity, which (unlike the inode number) is never reused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<u64>,
    /// For a move, the destination's cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_cookie: Option<u64>,
    /// Who: the process that asked (for teardown, whatever dropped the last reference).
    pub pid: u32,
    pub comm: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Setup time of a creation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub setup_ms: Option<f64>,
    /// Age of a namespace at teardown (when its creation was seen).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ifindex: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_ifindex: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_netns: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_netns: Option<u32>,
    /// The kernel's error (negative errno), where the mode sees it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<i32>,
}

impl Entry {
    /// True if the entry concerns namespace `inum` (either side of a move).
    pub fn concerns(&self, inum: u32) -> bool {
        self.netns == Some(inum) || self.from_netns == Some(inum) || self.to_netns == Some(inum)
    }

    /// True if the entry concerns the namespace with this cookie (either side of a move).
    pub fn concerns_cookie(&self, cookie: u64) -> bool {
        self.cookie == Some(cookie) || self.to_cookie == Some(cookie)
    }

    /// True if the entry passes `filter`.
    pub fn matches(&self, filter: &Filter) -> bool {
        filter.netns.is_none_or(|n| self.concerns(n)) && filter.cookie.is_none_or(|c| self.concerns_cookie(c))
    }

    /// The entry as one human-readable line, its time first (`events`, `show`).
    pub fn line(&self) -> String {
        format!("{}  {}", self.time, self.detail())
    }

    /// What happened, without the time (the log adds its own timestamp).
    pub fn detail(&self) -> String {
        let e = self;
        let who = format!("pid {} ({})", e.pid, e.comm.escape_debug());
        match e.kind.as_str() {
            "netns_created" => {
                let mut d = format!("netns {} created by {who}", e.netns.unwrap_or(0));
                if let Some(ms) = e.setup_ms {
                    let _ = write!(d, " in {ms:.1} ms");
                }
                if let Some(c) = &e.container_id {
                    let _ = write!(d, ", container {}", c.chars().take(12).collect::<String>());
                }
                if let Some(p) = &e.pod {
                    let _ = write!(d, ", pod {p}");
                }
                d
            }
            "netns_destroyed" => {
                let age = e.age_seconds.map(|a| format!(" after {}", short_duration(a))).unwrap_or_default();
                format!("netns {} destroyed{age}", e.netns.unwrap_or(0))
            }
            "netns_setup_failed" => {
                format!("netns creation by {who} failed: errno {}", -e.error.unwrap_or(0))
            }
            "device_moved" => format!(
                "device {} (ifindex {}) moved from netns {} to netns {} by {who}",
                e.device.as_deref().unwrap_or("?").escape_debug(),
                e.ifindex.unwrap_or(0),
                e.from_netns.unwrap_or(0),
                e.to_netns.unwrap_or(0)
            ),
            "device_move_failed" => format!(
                "device {} (ifindex {}) failed to leave netns {} ({who}, error {})",
                e.device.as_deref().unwrap_or("?").escape_debug(),
                e.ifindex.unwrap_or(0),
                e.from_netns.unwrap_or(0),
                e.error.unwrap_or(0)
            ),
            other => format!("{other} {who}"),
        }
    }
}

/// `1h2m`, `3m4s`, `5.2s`: how `ps` and `kubectl get` show ages.
pub fn short_duration(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..60 => format!("{seconds:.1}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

/// Which entries a query wants.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Entries concerning this inode number (any namespace that had it).
    pub netns: Option<u32>,
    /// Entries concerning this one namespace.
    pub cookie: Option<u64>,
}

/// RFC 3339 with milliseconds, UTC.
pub fn format_time(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

#[derive(Debug, thiserror::Error)]
#[error("cannot write the events file {path}: {reason}; give --events-file (events_file) a writable path")]
pub struct FileError {
    path: PathBuf,
    reason: String,
}

/// The JSON-lines file: when the next line would pass `max_bytes`, the file becomes
/// `<path>.1` (replacing the previous one) and a new one starts; at most twice the cap on disk.
///
/// Every line on disk is whole: a write that fails part-way (disk full) is cut back, and a
/// torn last line left by a crash (the agent killed mid-write, power lost) is cut off when the
/// file is opened. A line that cannot be written (disk full, read-only, I/O error) is lost
/// from the file, kept in memory and counted; writing resumes by itself once the file takes
/// lines again, with one warning when writes start failing and one info line when they work.
pub struct EventsFile {
    path: PathBuf,
    max_bytes: u64,
    /// `None` after a rotation whose new file could not be created: created on the next line.
    file: Option<File>,
    written: u64,
    /// Lines lost since start.
    errors: u64,
    /// Lines lost since writes began failing; `None` while they work.
    failing: Option<u64>,
}

impl EventsFile {
    pub fn open(path: &Path, max_bytes: u64) -> Result<Self, FileError> {
        let error = |err: std::io::Error| FileError { path: path.to_owned(), reason: err.to_string() };
        let file = OpenOptions::new().create(true).read(true).append(true).open(path).map_err(error)?;
        let written = cut_torn_tail(&file, path).map_err(error)?;
        Ok(Self { path: path.to_owned(), max_bytes, file: Some(file), written, errors: 0, failing: None })
    }

    /// The seq of the newest entry the file (or, if it is empty, its rotated copy) holds: the
    /// journal continues from there, so sequence numbers never restart.
    pub fn last_seq(&self) -> u64 {
        [self.path.clone(), self.rotated()].iter().find_map(|path| last_seq_in(path)).unwrap_or(0)
    }

    /// Lines that could not be written since start.
    pub fn write_errors(&self) -> u64 {
        self.errors
    }

    /// False while writes fail.
    pub fn writable(&self) -> bool {
        self.failing.is_none()
    }

    fn rotated(&self) -> PathBuf {
        let mut rotated = self.path.clone().into_os_string();
        rotated.push(".1");
        PathBuf::from(rotated)
    }

    /// Writes one line, or counts it lost; logs when writing starts failing and when it works
    /// again (once each, not per line).
    fn write(&mut self, line: &str) {
        let len = line.len() as u64 + 1;
        if len > self.max_bytes {
            return; // a single line larger than the cap is never written
        }
        // While failing, a line is tried only once the filesystem has a free block: the slack
        // at the end of the file's last block would take a short line, refuse a longer one,
        // and the log would flap between failing and working.
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let still_full = self.failing.is_some() && crate::kernel::host::has_room(dir, len) == Some(false);
        let result = if still_full { Err(None) } else { self.append(line, len).map_err(Some) };
        match (result, self.failing) {
            (Ok(()), Some(lost)) => {
                self.failing = None;
                log::info!(
                    "events file {}: writing again; {lost} line(s) could not be written",
                    self.path.display()
                );
            }
            (Ok(()), None) => {}
            (Err(_), Some(lost)) => {
                self.errors += 1;
                self.failing = Some(lost + 1);
            }
            (Err(err), None) => {
                self.errors += 1;
                self.failing = Some(1);
                log::warn!(
                    "events file {}: {}; its lines are lost (kept in memory, counted in \
                     netns_agent_journal_write_errors_total) until it can be written again",
                    self.path.display(),
                    err.map_or_else(|| "no room".to_owned(), |e| e.to_string())
                );
            }
        }
    }

    fn append(&mut self, line: &str, len: u64) -> std::io::Result<()> {
        if self.file.is_none() {
            let file = OpenOptions::new().create(true).append(true).open(&self.path)?;
            self.written = file.metadata()?.len();
            self.file = Some(file);
        }
        if self.written > 0 && self.written + len > self.max_bytes {
            std::fs::rename(&self.path, self.rotated())?;
            self.file = None;
            self.file = Some(OpenOptions::new().create(true).append(true).open(&self.path)?);
            self.written = 0;
        }
        let Some(file) = self.file.as_mut() else { unreachable!("opened above") };
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        // One write per line; on a full disk it may take part of the line before failing.
        let mut done = 0;
        let result = loop {
            if done == buf.len() {
                break Ok(());
            }
            match file.write(&buf[done..]) {
                Ok(0) => break Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => break Err(err),
            }
        };
        match result {
            Ok(()) => {
                self.written += len;
                Ok(())
            }
            Err(err) => {
                // Cut the part written, so that no torn line stays between whole ones.
                if done > 0
                    && let Ok(meta) = file.metadata()
                {
                    let _ = file.set_len(meta.len().saturating_sub(done as u64));
                }
                Err(err)
            }
        }
    }
}

/// Cuts a torn last line (no newline: the writer died mid-line) off the file; the size left.
fn cut_torn_tail(file: &File, path: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt as _;
    const TAIL: u64 = 64 * 1024;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(TAIL);
    let mut tail = vec![0; (len - start) as usize];
    file.read_exact_at(&mut tail, start)?;
    if tail.last().is_none_or(|b| *b == b'\n') {
        return Ok(len);
    }
    let keep = match tail.iter().rposition(|b| *b == b'\n') {
        Some(i) => start + i as u64 + 1,
        None if start == 0 => 0,
        // No line end in the last 64 KiB: not a torn line of ours; leave the text alone.
        None => return Ok(len),
    };
    file.set_len(keep)?;
    log::warn!(
        "events file {}: cut a torn last line of {} bytes (the agent stopped in the middle of writing it)",
        path.display(),
        len - keep
    );
    Ok(keep)
}

/// The seq of the last complete, parsable line of a JSON-lines journal file.
fn last_seq_in(path: &Path) -> Option<u64> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    const TAIL: u64 = 64 * 1024;
    let mut file = File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(TAIL))).ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    String::from_utf8_lossy(&tail)
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str::<Entry>(line).ok())
        .map(|entry| entry.seq)
}

/// The in-memory journal.
pub struct Journal {
    entries: VecDeque<Entry>,
    capacity: usize,
    next_seq: u64,
    file: Option<EventsFile>,
}

impl Journal {
    pub fn new(capacity: usize, file: Option<EventsFile>) -> Self {
        let next_seq = file.as_ref().map_or(0, EventsFile::last_seq) + 1;
        Self { entries: VecDeque::with_capacity(capacity.min(4096)), capacity, next_seq, file }
    }

    /// Records an entry (its `seq` is assigned here).
    pub fn push(&mut self, mut entry: Entry) {
        entry.seq = self.next_seq;
        self.next_seq += 1;
        if let Some(file) = &mut self.file {
            match serde_json::to_string(&entry) {
                Ok(line) => file.write(&line),
                Err(err) => log::warn!("cannot encode a journal entry: {err}"),
            }
        }
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back(entry);
    }

    /// Entries after `since` (a seq) that pass `filter`, oldest first, at most
    /// `limit` of them (the newest ones when more match).
    pub fn query(&self, filter: &Filter, since: u64, limit: usize) -> Vec<Entry> {
        let matching: Vec<&Entry> =
            self.entries.iter().filter(|e| e.seq > since && e.matches(filter)).collect();
        let skip = matching.len().saturating_sub(limit);
        matching.into_iter().skip(skip).cloned().collect()
    }

    /// The seq of the newest entry (0 when none was ever written).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Lines the events file could not take since start, and whether it takes them now
    /// (`(0, true)` without an events file).
    pub fn file_health(&self) -> (u64, bool) {
        self.file.as_ref().map_or((0, true), |f| (f.write_errors(), f.writable()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: &str, netns: u32) -> Entry {
        Entry { kind: kind.into(), netns: Some(netns), ..Default::default() }
    }

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(short_duration(5.23), "5.2s");
        assert_eq!(short_duration(312.0), "5m12s");
        assert_eq!(short_duration(7380.0), "2h3m");
        assert_eq!(short_duration(90000.0), "1d1h");
    }

    #[test]
    fn the_journal_is_bounded_and_queries_by_namespace_and_position() {
        let mut j = Journal::new(3, None);
        for n in 1..=5 {
            j.push(entry("netns_created", n));
        }
        let all = j.query(&Filter::default(), 0, 100);
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(j.query(&Filter { netns: Some(4), cookie: None }, 0, 100).len(), 1);
        assert_eq!(j.query(&Filter::default(), 4, 100).iter().map(|e| e.seq).collect::<Vec<_>>(), vec![5]);
        assert_eq!(j.query(&Filter::default(), 0, 2).iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4, 5]);
        let mv = Entry {
            kind: "device_moved".into(),
            from_netns: Some(7),
            to_netns: Some(8),
            ..Default::default()
        };
        j.push(mv);
        assert_eq!(
            j.query(&Filter { netns: Some(8), cookie: None }, 0, 10).len(),
            1,
            "a move concerns both namespaces"
        );
    }

    #[test]
    fn a_reused_inode_number_is_told_apart_by_cookie() {
        let mut j = Journal::new(10, None);
        j.push(Entry { kind: "netns_created".into(), netns: Some(5), cookie: Some(1), ..Default::default() });
        j.push(Entry {
            kind: "netns_destroyed".into(),
            netns: Some(5),
            cookie: Some(1),
            ..Default::default()
        });
        j.push(Entry { kind: "netns_created".into(), netns: Some(5), cookie: Some(2), ..Default::default() });
        assert_eq!(j.query(&Filter { netns: Some(5), cookie: None }, 0, 10).len(), 3);
        let live = j.query(&Filter { netns: None, cookie: Some(2) }, 0, 10);
        assert_eq!(live.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(), vec!["netns_created"]);
    }

    #[test]
    fn the_events_file_rotates_at_its_cap() {
        let dir = std::env::temp_dir().join(format!("netns-agent-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.jsonl");
        let _ = std::fs::remove_file(&path);
        let mut j = Journal::new(10, Some(EventsFile::open(&path, 1024).unwrap()));
        for n in 0..100 {
            j.push(entry("netns_created", n));
        }
        let current = std::fs::metadata(&path).unwrap().len();
        let rotated = std::fs::metadata(dir.join("events.jsonl.1")).unwrap().len();
        assert!(current <= 1024 && rotated <= 1024, "{current} {rotated}");
        let last = std::fs::read_to_string(&path).unwrap();
        let line: Entry = serde_json::from_str(last.lines().last().unwrap()).unwrap();
        assert_eq!(line.seq, 100);
        // A restart continues the numbering, past a torn last line.
        drop(j);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"seq\":101,\"ti")
            .unwrap();
        let mut j = Journal::new(10, Some(EventsFile::open(&path, 1 << 20).unwrap()));
        j.push(entry("netns_created", 1));
        assert_eq!(j.last_seq(), 101);
        // The torn line was cut off at open: every line is whole, the new one right after.
        let text = std::fs::read_to_string(&path).unwrap();
        let seqs: Vec<u64> = text.lines().map(|l| serde_json::from_str::<Entry>(l).expect(l).seq).collect();
        assert_eq!(seqs.last(), Some(&101), "{text}");
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        assert_eq!(j.file_health(), (0, true));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
