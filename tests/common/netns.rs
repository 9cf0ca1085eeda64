//! Real networks on one machine: a network namespace joined to the host by a veth pair on a
//! private /30, for tests that shape a link (tc) or block UDP (nftables) for one client.
//! Traffic only ever goes between the host-side and namespace-side addresses.
//!
//! Needs root. Dropping a [`VethNamespace`] deletes the namespace and the pair, also when the
//! test panics; namespaces left by killed runs are removed by the next run.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Runs `program args`, panicking with its stderr when it fails.
pub fn sh(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Like [`sh`] but for cleanup: failures are only printed.
pub fn sh_quiet(program: &str, args: &[&str]) {
    match Command::new(program).args(args).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "cleanup: {program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => eprintln!("cleanup: {program} {args:?}: {e}"),
    }
}

pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// A namespace `ns` with one end of a veth pair in it (`ns_ip`) and the other on the host
/// (`host_dev`, `host_ip`).
pub struct VethNamespace {
    pub ns: String,
    pub host_dev: String,
    pub host_ip: String,
    pub ns_ip: String,
}

impl VethNamespace {
    /// Names are `sfu{tag}{pid}` (namespace), `{tag}h{pid}` / `{tag}n{pid}` (veth ends): `tag`
    /// is at most 4 letters so names stay under IFNAMSIZ. The /30 is `10.{second}.x.y`, picked
    /// from the pid, so runs of different tests (different `second`) never clash.
    pub fn create(tag: &'static str, second: u8) -> Self {
        assert!(tag.len() <= 4, "tag {tag} too long for interface names");
        let pid = std::process::id();
        let quad = |n: u32| format!("10.{second}.{}.{}", (pid >> 6) & 0xff, (pid & 0x3f) * 4 + n);
        let link = VethNamespace {
            ns: format!("sfu{tag}{pid}"),
            host_dev: format!("{tag}h{pid}"),
            host_ip: quad(1),
            ns_ip: quad(2),
        };
        let ns_dev = format!("{tag}n{pid}");
        remove_stale(tag);
        // From here on `link` is dropped (and cleans up) whatever fails.
        sh("ip", &["netns", "add", &link.ns]);
        sh(
            "ip",
            &[
                "link",
                "add",
                &link.host_dev,
                "type",
                "veth",
                "peer",
                "name",
                &ns_dev,
            ],
        );
        sh("ip", &["link", "set", &ns_dev, "netns", &link.ns]);
        let host_cidr = format!("{}/30", link.host_ip);
        let ns_cidr = format!("{}/30", link.ns_ip);
        sh("ip", &["addr", "add", &host_cidr, "dev", &link.host_dev]);
        sh("ip", &["link", "set", &link.host_dev, "up"]);
        sh(
            "ip",
            &["-n", &link.ns, "addr", "add", &ns_cidr, "dev", &ns_dev],
        );
        sh("ip", &["-n", &link.ns, "link", "set", &ns_dev, "up"]);
        sh("ip", &["-n", &link.ns, "link", "set", "lo", "up"]);
        link
    }

    /// Server flags for an in-process server that listens on, and announces, the host-side
    /// address: the host reaches it locally, the namespace through the veth.
    pub fn server_args(&self) -> [&str; 6] {
        [
            "--host",
            &self.host_ip,
            "--rtc-listen-ip",
            &self.host_ip,
            "--announced-ip",
            &self.host_ip,
        ]
    }

    /// Runs `program args` inside the namespace.
    pub fn exec(&self, program: &str, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.ns, program];
        all.extend_from_slice(args);
        sh("ip", &all);
    }

    /// Drop every UDP packet in and out of the namespace (nftables; iptables is absent),
    /// as a network that allows only TCP does.
    pub fn block_udp(&self) {
        let rules = "table inet sfutest {\n\
             chain out { type filter hook output priority 0; policy accept; meta l4proto udp drop; }\n\
             chain in { type filter hook input priority 0; policy accept; meta l4proto udp drop; }\n\
             }\n";
        let path = std::env::temp_dir().join(format!("{}.nft", self.ns));
        fs::write(&path, rules).expect("nft rules written");
        self.exec("nft", &["-f", &path.to_string_lossy()]);
        let _ = fs::remove_file(path);
    }

    /// A script that runs Chromium inside the namespace, for Playwright's `executablePath`.
    pub fn chromium_wrapper(&self, dir: &Path) -> PathBuf {
        let wrapper = dir.join(format!("chromium-in-{}.sh", self.ns));
        fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec ip netns exec {} /usr/bin/chromium \"$@\"\n",
                self.ns
            ),
        )
        .expect("wrapper written");
        fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).expect("chmod wrapper");
        wrapper
    }
}

/// Namespaces (and their host-side veth) of earlier runs killed before their Drop ran
/// (SIGINT, SIGKILL): ours by name, and their process is gone.
fn remove_stale(tag: &str) {
    let list = Command::new("ip").args(["netns", "list"]).output();
    let list = list.map(|o| String::from_utf8_lossy(&o.stdout).to_string());
    let prefix = format!("sfu{tag}");
    for name in list.unwrap_or_default().lines() {
        let name = name.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name.strip_prefix(&prefix) else {
            continue;
        };
        let mine = pid == std::process::id().to_string();
        if mine || (pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists()) {
            eprintln!("removing namespace {name} left by an earlier run");
            let _ = Command::new("ip")
                .args(["link", "del", &format!("{tag}h{pid}")])
                .stderr(Stdio::null())
                .status();
            sh_quiet("ip", &["netns", "del", name]);
        }
    }
}

impl Drop for VethNamespace {
    fn drop(&mut self) {
        // Deleting the namespace destroys the veth pair once nothing runs inside any more;
        // deleting the host end directly does it at once.
        sh_quiet("ip", &["link", "del", &self.host_dev]);
        sh_quiet("ip", &["netns", "del", &self.ns]);
    }
}
