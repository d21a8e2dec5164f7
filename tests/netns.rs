//! Network namespaces for partition tests: each node in a namespace of its own, all on a bridge
//! in a switch namespace (whose firewall is empty, unlike a host where Docker drops bridged
//! traffic), the test's namespace on it too (it reaches every node), and partitions made with
//! `prohibit` routes between chosen nodes, removed to heal.
//!
//! Needs root and `ip` (iproute2). [`Network::available`] says whether they are there.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};

/// Namespaces, a bridge, and the routes of the current partition.
#[derive(Debug)]
pub struct Network {
    prefix: String,
    subnet: u8,
    count: usize,
    partitioned: Vec<(usize, usize)>,
}

fn ip(arguments: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(arguments)
        .output()
        .map_err(|error| format!("ip: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            arguments.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Network {
    /// Whether namespaces can be made here (root, iproute2).
    pub fn available() -> bool {
        let probe = format!("wrprobe{}", std::process::id());
        let made = ip(&["netns", "add", &probe]).is_ok();
        if made {
            let _ = ip(&["netns", "del", &probe]);
        }
        made
    }

    /// `count` namespaces on a new bridge.
    pub fn create(count: usize) -> Result<Network, String> {
        static NEXT: AtomicU8 = AtomicU8::new(0);
        let serial = NEXT.fetch_add(1, Ordering::Relaxed);
        let subnet = ((std::process::id() % 200) as u8).wrapping_add(serial);
        let network = Network {
            prefix: format!("wr{}x{serial}", std::process::id() % 100_000),
            subnet,
            count,
            partitioned: Vec::new(),
        };
        let switch = network.switch();
        ip(&["netns", "add", &switch])?;
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &switch, "link", "set", "br0", "up"])?;
        // The test's own leg.
        let host = network.host_veth();
        ip(&[
            "link", "add", &host, "type", "veth", "peer", "name", "host", "netns", &switch,
        ])?;
        ip(&["-n", &switch, "link", "set", "host", "master", "br0", "up"])?;
        ip(&[
            "addr",
            "add",
            &format!("10.251.{subnet}.254/24"),
            "dev",
            &host,
        ])?;
        ip(&["link", "set", &host, "up"])?;
        for index in 0..count {
            let namespace = network.namespace(index);
            let leg = format!("n{index}");
            ip(&["netns", "add", &namespace])?;
            ip(&[
                "-n", &switch, "link", "add", &leg, "type", "veth", "peer", "name", "eth0",
                "netns", &namespace,
            ])?;
            ip(&["-n", &switch, "link", "set", &leg, "master", "br0", "up"])?;
            let address = format!("{}/24", network.address(index));
            ip(&["-n", &namespace, "addr", "add", &address, "dev", "eth0"])?;
            ip(&["-n", &namespace, "link", "set", "eth0", "up"])?;
            ip(&["-n", &namespace, "link", "set", "lo", "up"])?;
        }
        Ok(network)
    }

    fn switch(&self) -> String {
        format!("{}sw", self.prefix)
    }

    fn host_veth(&self) -> String {
        format!("{}h", self.prefix)
    }

    fn namespace(&self, index: usize) -> String {
        format!("{}n{index}", self.prefix)
    }

    /// Node `index`'s address.
    pub fn address(&self, index: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 251, self.subnet, index as u8 + 1))
    }

    /// The command prefix that runs a program in node `index`'s namespace.
    pub fn exec_prefix(&self, index: usize) -> Vec<String> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.namespace(index),
        ]
    }

    /// Cuts every node of `a` off from every node of `b` (both ways); the test's namespace still
    /// reaches all of them.
    pub fn partition(&mut self, a: &[usize], b: &[usize]) -> Result<(), String> {
        for &i in a {
            for &j in b {
                for (from, to) in [(i, j), (j, i)] {
                    let target = format!("{}/32", self.address(to));
                    ip(&[
                        "-n",
                        &self.namespace(from),
                        "route",
                        "add",
                        "prohibit",
                        &target,
                    ])?;
                    self.partitioned.push((from, to));
                }
            }
        }
        Ok(())
    }

    /// Removes every partition.
    pub fn heal(&mut self) -> Result<(), String> {
        for (from, to) in std::mem::take(&mut self.partitioned) {
            let target = format!("{}/32", self.address(to));
            ip(&[
                "-n",
                &self.namespace(from),
                "route",
                "del",
                "prohibit",
                &target,
            ])?;
        }
        Ok(())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for index in 0..self.count {
            let _ = ip(&["netns", "del", &self.namespace(index)]);
        }
        let _ = ip(&["link", "del", &self.host_veth()]);
        let _ = ip(&["netns", "del", &self.switch()]);
    }
}
