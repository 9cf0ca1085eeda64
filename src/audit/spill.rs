//! The spill file: audit events that could not be written while the database was down and did
//! not fit in memory, one JSON object per line, oldest first. Blocking I/O: call these from
//! `spawn_blocking`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::Path;

use super::event::{AuditEvent, AuditKind};

/// What is in a spill file found at start-up.
pub(crate) struct Scan {
    pub len: u64,
    /// Bytes of those lines that hold noise events ([`AuditKind::is_noise`]).
    pub noise_len: u64,
    /// Non-empty lines (events, including any that will not parse).
    pub lines: u64,
}

/// Measure an existing spill file (a missing one is empty). A last line cut short by a crash
/// is terminated so the next append starts on a line of its own (the cut line is then
/// reported as unreadable on replay instead of corrupting the next event too).
pub(crate) fn scan(path: &Path) -> io::Result<Scan> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Scan {
                len: 0,
                noise_len: 0,
                lines: 0,
            })
        }
        Err(e) => return Err(e),
    };
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    let (mut len, mut noise_len, mut lines, mut last) = (0u64, 0u64, 0u64, b'\n');
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        len += n as u64;
        last = line[n - 1];
        if line.iter().any(|b| !b.is_ascii_whitespace()) {
            lines += 1;
            if is_noise_line(&line) {
                noise_len += n as u64;
            }
        }
    }
    if last != b'\n' {
        append(path, b"\n")?;
        len += 1;
    }
    Ok(Scan {
        len,
        noise_len,
        lines,
    })
}

/// Whether a line written by [`encode`] holds a noise event (no full parse needed).
fn is_noise_line(line: &[u8]) -> bool {
    AuditKind::ALL
        .into_iter()
        .filter(|k| k.is_noise())
        .any(|k| {
            let needle = format!("\"kind\":\"{}\"", k.as_str());
            line.windows(needle.len()).any(|w| w == needle.as_bytes())
        })
}

/// Append whole lines and fsync before returning.
pub(crate) fn append(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let existed = path.exists();
    if !existed {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)?;
        }
    }
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    file.write_all(bytes)?;
    file.sync_data()?;
    if !existed {
        // Make the new directory entry durable too.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
    }
    Ok(())
}

/// One spill line for `event` (with its newline).
pub(crate) fn encode(event: &AuditEvent) -> Vec<u8> {
    let mut line = serde_json::to_vec(event).expect("an audit event always serializes");
    line.push(b'\n');
    line
}

/// Lines read back from the spill file.
pub(crate) struct Chunk {
    pub events: Vec<AuditEvent>,
    /// Non-empty lines consumed (events plus unreadable lines).
    pub lines: u64,
    /// Lines that were not a valid event (lost; reported and counted as dropped).
    pub unreadable: u64,
    /// Where the next read starts.
    pub next_offset: u64,
}

/// Read up to `max_lines` events starting at byte `offset`.
pub(crate) fn read(path: &Path, offset: u64, max_lines: usize) -> io::Result<Chunk> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut reader = BufReader::new(file);
    let mut chunk = Chunk {
        events: Vec::new(),
        lines: 0,
        unreadable: 0,
        next_offset: offset,
    };
    let mut line = Vec::new();
    while (chunk.lines as usize) < max_lines {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 || line[n - 1] != b'\n' {
            // End of file (a partial line is left for later: it is only ever being written).
            break;
        }
        chunk.next_offset += n as u64;
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        chunk.lines += 1;
        match serde_json::from_slice::<AuditEvent>(&line) {
            Ok(event) => chunk.events.push(event),
            Err(e) => {
                chunk.unreadable += 1;
                tracing::error!(
                    path = %path.display(),
                    offset = chunk.next_offset - n as u64,
                    error = %e,
                    line = %String::from_utf8_lossy(&line).trim_end(),
                    "unreadable line in the audit spill file; event lost"
                );
            }
        }
    }
    Ok(chunk)
}

/// Empty the file once everything in it is in the database.
pub(crate) fn truncate(path: &Path) -> io::Result<()> {
    match OpenOptions::new().write(true).open(path) {
        Ok(file) => {
            file.set_len(0)?;
            file.sync_all()
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_read_truncate_and_repair() {
        let dir = std::env::temp_dir().join(format!("sfu-spill-{}", uuid::Uuid::new_v4()));
        let path = dir.join("nested/spill.jsonl");
        assert_eq!(scan(&path).unwrap().lines, 0);
        let events: Vec<AuditEvent> = (0..5)
            .map(|i| AuditEvent::new(AuditKind::RoomCreated).room(format!("r{i}")))
            .collect();
        let bytes: Vec<u8> = events.iter().flat_map(encode).collect();
        append(&path, &bytes).unwrap();
        // A crash in the middle of an append leaves a cut line.
        append(&path, b"{\"id\":\"cut").unwrap();
        let s = scan(&path).unwrap();
        assert_eq!(s.lines, 6);
        assert_eq!(s.noise_len, 0);
        assert_eq!(s.len, fs::metadata(&path).unwrap().len());
        append(&path, &encode(&events[0])).unwrap();

        let a = read(&path, 0, 3).unwrap();
        assert_eq!(a.events, events[..3]);
        let b = read(&path, a.next_offset, 100).unwrap();
        assert_eq!(b.events.len(), 3);
        assert_eq!(b.events[..2], events[3..]);
        assert_eq!((b.lines, b.unreadable), (4, 1));
        assert_eq!(b.next_offset, s.len + encode(&events[0]).len() as u64);
        truncate(&path).unwrap();
        assert_eq!(scan(&path).unwrap().len, 0);
        let noise = encode(&AuditEvent::new(AuditKind::AuthFailed));
        append(&path, &noise).unwrap();
        append(&path, &encode(&events[1])).unwrap();
        assert_eq!(scan(&path).unwrap().noise_len, noise.len() as u64);
        let _ = fs::remove_dir_all(dir);
    }
}
