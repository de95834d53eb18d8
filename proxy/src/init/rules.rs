//! The capture rules `mesh-proxy init` installs in a pod's network
//! namespace (nat table), as pure data so they can be printed, compared
//! and tested: inbound TCP → the inbound proxy port except skipped ports;
//! outbound TCP → the outbound proxy port except the proxy's own user,
//! loopback, and skipped ports and subnets.

/// The chain inbound connections go through (jumped to from PREROUTING).
pub const INBOUND_CHAIN: &str = "MESH_INBOUND";
/// The chain outbound connections go through (jumped to from OUTPUT).
pub const OUTBOUND_CHAIN: &str = "MESH_OUTBOUND";

/// What to capture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capture {
    /// Port of the inbound proxy listener.
    pub inbound_port: u16,
    /// Port of the outbound proxy listener.
    pub outbound_port: u16,
    /// The proxy's user id; its own connections are never captured.
    pub proxy_uid: u32,
    /// Inbound destination ports left alone (e.g. the admin port).
    pub skip_inbound_ports: Vec<PortRange>,
    /// Outbound destination ports left alone.
    pub skip_outbound_ports: Vec<PortRange>,
    /// Outbound destination subnets left alone (CIDR).
    pub skip_outbound_subnets: Vec<String>,
}

/// A port or an inclusive range of ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange(pub u16, pub u16);

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0 == self.1 {
            write!(f, "{}", self.0)
        } else {
            write!(f, "{}:{}", self.0, self.1)
        }
    }
}

impl Default for Capture {
    fn default() -> Self {
        Capture {
            inbound_port: 4143,
            outbound_port: 4140,
            proxy_uid: 2102,
            skip_inbound_ports: vec![PortRange(4191, 4191)],
            skip_outbound_ports: Vec::new(),
            skip_outbound_subnets: Vec::new(),
        }
    }
}

/// One rule: the arguments after `iptables -t nat`.
pub type Rule = Vec<String>;

fn rule(parts: &[&str]) -> Rule {
    parts.iter().map(|s| s.to_string()).collect()
}

/// `multiport` takes at most 15 ports; a range counts as two.
fn port_groups(ports: &[PortRange]) -> Vec<String> {
    let mut groups = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut used = 0;
    for p in ports {
        let cost = if p.0 == p.1 { 1 } else { 2 };
        if used + cost > 15 {
            groups.push(current.join(","));
            current.clear();
            used = 0;
        }
        current.push(p.to_string());
        used += cost;
    }
    if !current.is_empty() {
        groups.push(current.join(","));
    }
    groups
}

/// The address family a rule set is for (`iptables` or `ip6tables`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The loopback network, never redirected.
    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }

    /// True when CIDR `net` belongs to this family.
    fn holds(self, net: &str) -> bool {
        net.contains(':') == (self == Family::V6)
    }
}

/// The rules of our two chains for `family`, in order (the chains are
/// flushed first). Skipped subnets of the other family are left out.
pub fn chain_rules(c: &Capture, family: Family) -> Vec<Rule> {
    let mut rules = Vec::new();
    for group in port_groups(&c.skip_inbound_ports) {
        rules.push(rule(&[
            "-A",
            INBOUND_CHAIN,
            "-p",
            "tcp",
            "-m",
            "multiport",
            "--dports",
            &group,
            "-j",
            "RETURN",
        ]));
    }
    let inbound = c.inbound_port.to_string();
    rules.push(rule(&[
        "-A",
        INBOUND_CHAIN,
        "-p",
        "tcp",
        "-j",
        "REDIRECT",
        "--to-ports",
        &inbound,
    ]));

    let uid = c.proxy_uid.to_string();
    rules.push(rule(&[
        "-A",
        OUTBOUND_CHAIN,
        "-m",
        "owner",
        "--uid-owner",
        &uid,
        "-j",
        "RETURN",
    ]));
    rules.push(rule(&["-A", OUTBOUND_CHAIN, "-o", "lo", "-j", "RETURN"]));
    rules.push(rule(&[
        "-A",
        OUTBOUND_CHAIN,
        "-d",
        family.loopback(),
        "-j",
        "RETURN",
    ]));
    for group in port_groups(&c.skip_outbound_ports) {
        rules.push(rule(&[
            "-A",
            OUTBOUND_CHAIN,
            "-p",
            "tcp",
            "-m",
            "multiport",
            "--dports",
            &group,
            "-j",
            "RETURN",
        ]));
    }
    for net in c.skip_outbound_subnets.iter().filter(|n| family.holds(n)) {
        rules.push(rule(&["-A", OUTBOUND_CHAIN, "-d", net, "-j", "RETURN"]));
    }
    let outbound = c.outbound_port.to_string();
    rules.push(rule(&[
        "-A",
        OUTBOUND_CHAIN,
        "-p",
        "tcp",
        "-j",
        "REDIRECT",
        "--to-ports",
        &outbound,
    ]));
    rules
}

/// The jumps from the built-in chains into ours: (built-in chain, rule
/// arguments without the `-A`/`-C` verb).
pub fn jumps() -> Vec<(&'static str, Rule)> {
    vec![
        ("PREROUTING", rule(&["-p", "tcp", "-j", INBOUND_CHAIN])),
        ("OUTPUT", rule(&["-p", "tcp", "-j", OUTBOUND_CHAIN])),
    ]
}

/// Parses `4191,8000-8010` into port ranges.
pub fn parse_ports(s: &str) -> Result<Vec<PortRange>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (a, b) = p.split_once('-').unwrap_or((p, p));
            let a: u16 = a.trim().parse().map_err(|_| format!("bad port {p:?}"))?;
            let b: u16 = b.trim().parse().map_err(|_| format!("bad port {p:?}"))?;
            if a == 0 || b < a {
                return Err(format!("bad port range {p:?}"));
            }
            Ok(PortRange(a, b))
        })
        .collect()
}

/// Parses `10.0.0.0/8,192.168.0.0/16` into validated CIDRs.
pub fn parse_subnets(s: &str) -> Result<Vec<String>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|net| {
            let (ip, len) = net
                .split_once('/')
                .ok_or(format!("bad subnet {net:?} (want CIDR)"))?;
            let ip: std::net::IpAddr = ip.parse().map_err(|_| format!("bad subnet {net:?}"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            match len.parse::<u8>() {
                Ok(l) if l <= max => Ok(net.to_string()),
                _ => Err(format!("bad subnet {net:?}")),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(rules: &[Rule]) -> Vec<String> {
        rules.iter().map(|r| r.join(" ")).collect()
    }

    #[test]
    fn exact_rules_for_a_flag_set() {
        let c = Capture {
            skip_inbound_ports: parse_ports("4191,22").unwrap(),
            skip_outbound_ports: parse_ports("443,9000-9010").unwrap(),
            skip_outbound_subnets: parse_subnets("10.0.0.0/8,fd00::/8").unwrap(),
            ..Default::default()
        };
        assert_eq!(
            text(&chain_rules(&c, Family::V4)),
            vec![
                "-A MESH_INBOUND -p tcp -m multiport --dports 4191,22 -j RETURN",
                "-A MESH_INBOUND -p tcp -j REDIRECT --to-ports 4143",
                "-A MESH_OUTBOUND -m owner --uid-owner 2102 -j RETURN",
                "-A MESH_OUTBOUND -o lo -j RETURN",
                "-A MESH_OUTBOUND -d 127.0.0.0/8 -j RETURN",
                "-A MESH_OUTBOUND -p tcp -m multiport --dports 443,9000:9010 -j RETURN",
                "-A MESH_OUTBOUND -d 10.0.0.0/8 -j RETURN",
                "-A MESH_OUTBOUND -p tcp -j REDIRECT --to-ports 4140",
            ]
        );
        let v6 = text(&chain_rules(&c, Family::V6));
        assert!(v6.contains(&"-A MESH_OUTBOUND -d ::1/128 -j RETURN".to_string()));
        assert!(v6.contains(&"-A MESH_OUTBOUND -d fd00::/8 -j RETURN".to_string()));
        assert!(!v6
            .iter()
            .any(|r| r.contains("10.0.0.0/8") || r.contains("127.0.0.0")));
        assert_eq!(v6.len(), 8);
    }

    #[test]
    fn the_proxy_user_is_exempt_before_any_redirect() {
        let rules = text(&chain_rules(&Capture::default(), Family::V4));
        let exempt = rules
            .iter()
            .position(|r| r.contains("--uid-owner 2102 -j RETURN"))
            .unwrap();
        let redirect = rules
            .iter()
            .position(|r| r.contains("--to-ports 4140"))
            .unwrap();
        assert!(exempt < redirect);
    }

    #[test]
    fn long_port_lists_are_split_for_multiport() {
        let ports: Vec<PortRange> = (1..=20).map(|p| PortRange(p, p)).collect();
        let groups = port_groups(&ports);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].split(',').count(), 15);
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(parse_ports("80,x").is_err());
        assert!(parse_ports("0").is_err());
        assert!(parse_ports("90-80").is_err());
        assert_eq!(
            parse_ports(" 80 , 81-82 ").unwrap(),
            vec![PortRange(80, 80), PortRange(81, 82)]
        );
        assert!(parse_subnets("10.0.0.0").is_err());
        assert!(parse_subnets("10.0.0.0/33").is_err());
        assert!(parse_subnets("fd00::/8").is_ok());
    }
}
