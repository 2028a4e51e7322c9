//! A test bed of hosts on one machine: each host is a network namespace with
//! its own address, joined to the others by a veth pair to one bridge; the
//! bridge lives in a namespace of its own, so the machine's own network is
//! never touched. Faults are made by the kernel, not by our code: nftables
//! drops (one direction, or everything, or a random share), nftables
//! duplicates, and a slow link (tc tbf). tc netem (delay, jitter, reordering)
//! is not in this machine's kernel (CONFIG_NET_SCH_NETEM is off).
//!
//! Needs root, iproute2 (`ip`, `tc`) and nftables (`nft`); scripts/test-deps.sh
//! installs them. Everything a bed makes is removed when it is dropped, and
//! what a killed test left is removed by the next bed.
use crate::{run, Run};
use std::path::Path;
use std::process::Command;

/// The namespaces of bed `id` are named `hahsm-bed<id>-<host>`.
const PREFIX: &str = "hahsm-bed";

pub struct Bed {
    switch: String,
    pub hosts: Vec<Host>,
}

pub struct Host {
    pub name: String,
    /// The host's network namespace.
    pub netns: String,
    pub ip: String,
}

fn ip(args: &[&str]) -> Run {
    run("ip", args)
}

#[track_caller]
fn must(r: Run, what: &str) {
    assert!(r.ok, "{what}: {}{}", r.stdout, r.stderr);
}

/// Namespaces left by a bed whose test no longer runs (it was killed before
/// its clean-up): the processes in them have died with the test, or are
/// killed here.
fn sweep() {
    let list = ip(&["netns", "list"]);
    for line in list.stdout.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid: Option<u32> = rest.split('-').next().and_then(|p| p.parse().ok());
        if let Some(pid) = pid {
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                eprintln!("removing network namespace {name}, left by a test that was killed");
                for p in ip(&["netns", "pids", name]).stdout.lines() {
                    let _ = run("kill", &["-9", p.trim()]);
                }
                let _ = ip(&["netns", "del", name]);
            }
        }
    }
}

impl Bed {
    /// Hosts named `names`, with addresses .1, .2, … of a /24 of their own.
    pub fn new(names: &[&str]) -> Bed {
        sweep();
        let id = std::process::id();
        let subnet = format!("10.{}.{}", 100 + id % 50, (id / 50) % 250);
        let switch = format!("{PREFIX}{id}-switch");
        must(
            ip(&["netns", "add", &switch]),
            "ip netns add (the bed needs root)",
        );
        let mut bed = Bed {
            switch,
            hosts: Vec::new(),
        };
        let sw = bed.switch.clone();
        must(ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]), "bridge");
        must(ip(&["-n", &sw, "link", "set", "br0", "up"]), "bridge up");
        for (i, name) in names.iter().enumerate() {
            let netns = format!("{PREFIX}{id}-{name}");
            let address = format!("{subnet}.{}", i + 1);
            must(ip(&["netns", "add", &netns]), "ip netns add");
            // Created in the bridge's namespace, one end then moved: no
            // interface ever appears in the machine's own namespace.
            let (host_end, switch_end) = (format!("h{i}"), format!("s{i}"));
            must(
                ip(&[
                    "-n",
                    &sw,
                    "link",
                    "add",
                    &host_end,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &switch_end,
                ]),
                "veth pair",
            );
            must(
                ip(&["-n", &sw, "link", "set", &host_end, "netns", &netns]),
                "veth into the host",
            );
            must(
                ip(&["-n", &netns, "link", "set", &host_end, "name", "eth0"]),
                "eth0",
            );
            must(
                ip(&[
                    "-n",
                    &netns,
                    "addr",
                    "add",
                    &format!("{address}/24"),
                    "dev",
                    "eth0",
                ]),
                "address",
            );
            must(ip(&["-n", &netns, "link", "set", "eth0", "up"]), "eth0 up");
            must(ip(&["-n", &netns, "link", "set", "lo", "up"]), "lo up");
            must(
                ip(&["-n", &sw, "link", "set", &switch_end, "master", "br0"]),
                "bridge port",
            );
            must(
                ip(&["-n", &sw, "link", "set", &switch_end, "up"]),
                "bridge port up",
            );
            bed.hosts.push(Host {
                name: name.to_string(),
                netns,
                ip: address,
            });
        }
        bed
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name} in the bed"))
    }

    /// A command to run in `host`'s namespace (`ip netns exec`, which execs
    /// the program: the child's pid is the program's).
    pub fn command(&self, host: &str, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.host(host).netns]).arg(program);
        c
    }

    /// Runs a command in `host`'s namespace to its end.
    pub fn exec(&self, host: &str, program: &str, args: &[&str]) -> Run {
        let netns = &self.host(host).netns;
        let mut all = vec!["netns", "exec", netns.as_str(), program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    fn nft(&self, host: &str, script: &str) {
        let r = self.exec(host, "nft", &[script]);
        assert!(r.ok, "nft on {host} ({script}): {}{}", r.stdout, r.stderr);
    }

    /// The table of this bed's drops on `host`, made on first use.
    fn drops(&self, host: &str) {
        self.nft(
            host,
            "add table inet bed; \
             add chain inet bed input { type filter hook input priority 0; policy accept; }; \
             add chain inet bed output { type filter hook output priority 0; policy accept; }",
        );
    }

    /// `to` no longer hears `from` (packets from `from` are dropped as they
    /// arrive at `to`); `from` still hears `to`: an asymmetric partition.
    pub fn cut_one_way(&self, from: &str, to: &str) {
        self.drops(to);
        let src = self.host(from).ip.clone();
        self.nft(to, &format!("add rule inet bed input ip saddr {src} drop"));
    }

    /// The hosts of `side` and those of `other` no longer hear each other
    /// (both ways); every other host still hears both, as an application
    /// host does when the members' own links fail.
    pub fn split(&self, side: &[&str], other: &[&str]) {
        for a in side {
            for b in other {
                self.cut_one_way(a, b);
                self.cut_one_way(b, a);
            }
        }
    }

    /// `host` hears no one and no one hears it.
    pub fn isolate(&self, host: &str) {
        self.drops(host);
        self.nft(host, "add rule inet bed input iifname \"eth0\" drop");
        self.nft(host, "add rule inet bed output oifname \"eth0\" drop");
    }

    /// `host` loses `percent` % of the packets it sends, at random (nftables'
    /// numgen). (This machine's kernel has no netem, CONFIG_NET_SCH_NETEM;
    /// loss, duplication and a slow link are made with what it has.)
    pub fn lose(&self, host: &str, percent: u32) {
        self.drops(host);
        self.nft(
            host,
            &format!("add rule inet bed output oifname \"eth0\" numgen random mod 100 < {percent} drop"),
        );
    }

    /// `host` sends `percent` % of its packets to `to` twice (nftables' dup).
    /// (`dup` exists in the ip family only, hence a table of its own.)
    pub fn duplicate(&self, host: &str, to: &str, percent: u32) {
        let dst = self.host(to).ip.clone();
        self.nft(
            host,
            &format!(
                "add table ip beddup; \
                 add chain ip beddup output {{ type filter hook output priority 0; policy accept; }}; \
                 add rule ip beddup output ip daddr {dst} numgen random mod 100 < {percent} dup to {dst} device \"eth0\""
            ),
        );
    }

    /// `host`'s outgoing link limited to `rate` (e.g. `2mbit`) by a token
    /// bucket (tc tbf): packets queue, and those that would wait longer than
    /// `latency` (e.g. `200ms`) are dropped.
    pub fn throttle(&self, host: &str, rate: &str, latency: &str) {
        let args = [
            "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", rate, "burst", "16kb", "latency",
            latency,
        ];
        let r = self.exec(host, "tc", &args);
        assert!(r.ok, "tc tbf on {host}: {}{}", r.stdout, r.stderr);
    }

    /// `host` behind a stateful firewall that forgets a TCP flow idle for
    /// `seconds`, as corporate firewalls and cloud NATs do after minutes:
    /// only packets of flows it tracks pass, and a flow is tracked from its
    /// SYN (`nf_conntrack_tcp_loose` off), so a packet of a forgotten flow is
    /// dropped without a word, both ways. Set up before the host's
    /// connections open (those already open are forgotten at once).
    pub fn forget_idle_flows(&self, host: &str, seconds: u32) {
        self.nft(
            host,
            "add table inet bedfw; \
             add chain inet bedfw input { type filter hook input priority 0; policy accept; }; \
             add chain inet bedfw output { type filter hook output priority 0; policy accept; }; \
             add rule inet bedfw input iifname \"eth0\" meta l4proto tcp ct state established accept; \
             add rule inet bedfw input iifname \"eth0\" meta l4proto tcp drop; \
             add rule inet bedfw output oifname \"eth0\" meta l4proto tcp ct state established accept; \
             add rule inet bedfw output oifname \"eth0\" tcp flags & (syn | ack) == syn ct state new accept; \
             add rule inet bedfw output oifname \"eth0\" meta l4proto tcp drop",
        );
        for (key, value) in [
            ("net.netfilter.nf_conntrack_tcp_loose", "0".to_string()),
            (
                "net.netfilter.nf_conntrack_tcp_timeout_established",
                seconds.to_string(),
            ),
        ] {
            let r = self.exec(host, "sysctl", &["-w", &format!("{key}={value}")]);
            assert!(r.ok, "sysctl {key} on {host}: {}{}", r.stdout, r.stderr);
        }
    }

    /// Every drop, duplication and throttle of the bed removed.
    pub fn heal(&self) {
        for h in &self.hosts {
            let _ = self.exec(&h.name, "nft", &["delete table inet bed"]);
            let _ = self.exec(&h.name, "nft", &["delete table ip beddup"]);
            let _ = self.exec(&h.name, "nft", &["delete table inet bedfw"]);
            let _ = self.exec(&h.name, "tc", &["qdisc", "del", "dev", "eth0", "root"]);
        }
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        // The processes started in the namespaces belong to the test, which
        // stops them first (its members are dropped before the bed); any left
        // die here with their namespace's last link.
        for h in &self.hosts {
            for p in ip(&["netns", "pids", &h.netns]).stdout.lines() {
                let _ = run("kill", &["-9", p.trim()]);
            }
            let _ = ip(&["netns", "del", &h.netns]);
        }
        let _ = ip(&["netns", "del", &self.switch]);
    }
}
