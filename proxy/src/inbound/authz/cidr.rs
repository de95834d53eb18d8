//! Client networks in CIDR form (`198.18.0.0/15`, `2001:db8::/32`, or a
//! bare address for one host).

use std::net::IpAddr;

/// A network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address or network"))?;
        let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0 to {max}"))?,
        };
        // An IPv4-mapped network is the IPv4 network (callers are compared
        // in canonical form).
        if let IpAddr::V6(v6) = addr {
            if let (Some(v4), true) = (v6.to_ipv4_mapped(), prefix >= 96) {
                return Ok(Cidr {
                    addr: IpAddr::V4(v4),
                    prefix: prefix - 96,
                });
            }
        }
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    /// True when `ip` is inside the network (IPv4-mapped IPv6 addresses
    /// count as their IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_contain_their_addresses() {
        assert!(c("198.18.0.0/15").contains("198.19.255.1".parse().unwrap()));
        assert!(!c("198.18.0.0/15").contains("198.20.0.1".parse().unwrap()));
        assert!(c("10.0.0.1").contains("10.0.0.1".parse().unwrap()));
        assert!(!c("10.0.0.1").contains("10.0.0.2".parse().unwrap()));
        assert!(c("0.0.0.0/0").contains("203.0.113.9".parse().unwrap()));
        assert!(c("2001:db8::/32").contains("2001:db8:1::5".parse().unwrap()));
        assert!(!c("2001:db8::/32").contains("10.0.0.1".parse().unwrap()));
        assert!(c("10.0.0.0/8").contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(c("::ffff:10.0.0.0/104").contains("10.9.9.9".parse().unwrap()));
        assert!(!c("::ffff:10.0.0.0/104").contains("11.0.0.1".parse().unwrap()));
    }

    #[test]
    fn bad_networks_are_errors() {
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
        assert!("::/129".parse::<Cidr>().is_err());
    }
}
