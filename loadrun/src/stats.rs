//! `/proc` readers for the server's CPU and RSS; the histogram lives in `testkit`.

pub use testkit::histogram::{Histogram, Percentiles};

/// utime + stime of a process, in seconds (`/proc/<pid>/stat`).
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    stat_cpu_seconds(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// CPU seconds of each of the server's media workers (threads named `media-worker-N`), by
/// worker index; empty for a server without such threads (Janus).
pub fn worker_cpu_seconds(pid: u32) -> Vec<f64> {
    let mut workers: Vec<(usize, f64)> = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    for task in tasks.flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let Some(index) = comm.trim().strip_prefix("media-worker-") else {
            continue;
        };
        let (Ok(index), Some(cpu)) = (
            index.parse::<usize>(),
            std::fs::read_to_string(path.join("stat"))
                .ok()
                .and_then(|s| stat_cpu_seconds(&s)),
        ) else {
            continue;
        };
        workers.push((index, cpu));
    }
    workers.sort_by_key(|(i, _)| *i);
    workers.into_iter().map(|(_, cpu)| cpu).collect()
}

/// utime + stime of one `stat` line (a process's or a thread's), in seconds.
fn stat_cpu_seconds(stat: &str) -> Option<f64> {
    // The command name may contain spaces; fields resume after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime 14 and stime 15 (1-based), so 11 and 12 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks() as f64)
}

/// Resident set size of a process in bytes (`VmRSS` of `/proc/<pid>/status`).
pub fn process_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The machine's UDP datagrams dropped because a socket's receive buffer was full
/// (`RcvbufErrors` of `/proc/net/snmp`; all sockets, the server's and the runner's).
pub fn udp_rcvbuf_errors() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let (names, values) = (udp.next()?, udp.next()?);
    let column = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(column)?.parse().ok()
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        assert!(process_cpu_seconds(pid).is_some());
        assert!(process_rss_bytes(pid).unwrap() > 0);
        assert!(
            udp_rcvbuf_errors().is_some(),
            "/proc/net/snmp has Udp RcvbufErrors"
        );
    }

    #[test]
    fn media_worker_threads_are_found_by_name_in_index_order() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::time::{Duration, Instant};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        // Worker 1 burns CPU, worker 0 only waits: the readings must come back in index
        // order, whatever order the threads were started in.
        let spawn = |name: &str, busy: Duration| {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    let start = Instant::now();
                    while start.elapsed() < busy {
                        std::hint::black_box(0u64.wrapping_add(1));
                    }
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
                .unwrap()
        };
        let threads = [
            spawn("media-worker-1", Duration::from_millis(80)),
            spawn("media-worker-0", Duration::ZERO),
        ];
        std::thread::sleep(Duration::from_millis(150));
        let cpu = worker_cpu_seconds(std::process::id());
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(cpu.len(), 2, "{cpu:?}");
        assert!(
            cpu[1] > cpu[0],
            "worker 1 burned CPU, worker 0 did not: {cpu:?}"
        );
    }
}
