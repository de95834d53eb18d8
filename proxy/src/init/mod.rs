//! `mesh-proxy init`: the init container. Installs the capture rules in the
//! current network namespace (idempotently: our chains are flushed and
//! refilled, the jumps into them added once), or prints them with
//! `--dry-run`. Flags may also come from `MESH_INIT_*` variables.

pub mod rules;

use rules::{
    chain_rules, jumps, parse_ports, parse_subnets, Capture, Family, INBOUND_CHAIN, OUTBOUND_CHAIN,
};
use std::process::{Command, ExitCode};

/// Which iptables flavour to drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Whatever `iptables` is on this system.
    Auto,
    Nft,
    Legacy,
}

impl Mode {
    fn binary(self, family: Family) -> &'static str {
        match (self, family) {
            (Mode::Auto, Family::V4) => "iptables",
            (Mode::Nft, Family::V4) => "iptables-nft",
            (Mode::Legacy, Family::V4) => "iptables-legacy",
            (Mode::Auto, Family::V6) => "ip6tables",
            (Mode::Nft, Family::V6) => "ip6tables-nft",
            (Mode::Legacy, Family::V6) => "ip6tables-legacy",
        }
    }
}

/// Whether IPv6 traffic is captured too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ipv6 {
    /// When ip6tables works here (a kernel without IPv6 nat is skipped).
    Auto,
    /// Always; failing is an error.
    On,
    Off,
}

/// Parsed `mesh-proxy init` arguments.
#[derive(Debug, PartialEq)]
pub struct Args {
    pub capture: Capture,
    pub dry_run: bool,
    pub mode: Mode,
    pub ipv6: Ipv6,
}

const USAGE: &str =
    "usage: mesh-proxy init [--inbound-port 4143] [--outbound-port 4140] [--proxy-uid 2102] \
[--skip-inbound-ports P,..] [--skip-outbound-ports P,..] [--skip-outbound-subnets CIDR,..] \
[--iptables-mode auto|nft|legacy] [--ipv6 auto|on|off] [--dry-run]";

/// Parses flags, falling back to `MESH_INIT_<FLAG>` variables via `env`.
pub fn parse(argv: &[String], env: impl Fn(&str) -> Option<String>) -> Result<Args, String> {
    let mut c = Capture::default();
    let mut dry_run = env("MESH_INIT_DRY_RUN").is_some_and(|v| v == "true" || v == "1");
    let mut mode = Mode::Auto;
    let mut ipv6 = Ipv6::Auto;
    let set = |flag: &str,
               value: &str,
               c: &mut Capture,
               mode: &mut Mode,
               ipv6: &mut Ipv6|
     -> Result<(), String> {
        let port = |v: &str| {
            v.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or(format!("{flag}: bad port {v:?}"))
        };
        match flag {
            "--inbound-port" => c.inbound_port = port(value)?,
            "--outbound-port" => c.outbound_port = port(value)?,
            "--proxy-uid" => {
                c.proxy_uid = value
                    .parse()
                    .map_err(|_| format!("{flag}: bad uid {value:?}"))?
            }
            "--skip-inbound-ports" => {
                let mut ports = parse_ports(value).map_err(|e| format!("{flag}: {e}"))?;
                // The admin port always stays reachable for probes.
                ports.insert(0, rules::PortRange(4191, 4191));
                ports.dedup();
                c.skip_inbound_ports = ports;
            }
            "--skip-outbound-ports" => {
                c.skip_outbound_ports = parse_ports(value).map_err(|e| format!("{flag}: {e}"))?
            }
            "--skip-outbound-subnets" => {
                c.skip_outbound_subnets =
                    parse_subnets(value).map_err(|e| format!("{flag}: {e}"))?
            }
            "--iptables-mode" => {
                *mode = match value {
                    "auto" => Mode::Auto,
                    "nft" => Mode::Nft,
                    "legacy" => Mode::Legacy,
                    other => {
                        return Err(format!(
                            "{flag}: expected auto, nft or legacy, got {other:?}"
                        ))
                    }
                }
            }
            "--ipv6" => {
                *ipv6 = match value {
                    "auto" => Ipv6::Auto,
                    "on" | "true" => Ipv6::On,
                    "off" | "false" => Ipv6::Off,
                    other => {
                        return Err(format!("{flag}: expected auto, on or off, got {other:?}"))
                    }
                }
            }
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
        Ok(())
    };
    for flag in [
        "--inbound-port",
        "--outbound-port",
        "--proxy-uid",
        "--skip-inbound-ports",
        "--skip-outbound-ports",
        "--skip-outbound-subnets",
        "--iptables-mode",
        "--ipv6",
    ] {
        let var = format!(
            "MESH_INIT_{}",
            flag.trim_start_matches("--")
                .replace('-', "_")
                .to_uppercase()
        );
        if let Some(v) = env(&var) {
            set(flag, &v, &mut c, &mut mode, &mut ipv6).map_err(|e| format!("{var}: {e}"))?;
        }
    }
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        if a == "--dry-run" {
            dry_run = true;
            continue;
        }
        if a == "--help" || a == "-h" {
            return Err(USAGE.to_string());
        }
        let (flag, value) = match a.split_once('=') {
            Some((f, v)) => (f.to_string(), v.to_string()),
            None => {
                let v = it.next().ok_or(format!("{a} needs a value\n{USAGE}"))?;
                (a.clone(), v.clone())
            }
        };
        set(&flag, &value, &mut c, &mut mode, &mut ipv6)?;
    }
    Ok(Args {
        capture: c,
        dry_run,
        mode,
        ipv6,
    })
}

/// Every iptables invocation for `family`, in order (arguments after the
/// binary).
pub fn plan(c: &Capture, family: Family) -> Vec<Vec<String>> {
    let nat = |rest: Vec<String>| {
        let mut v = vec!["-t".to_string(), "nat".to_string()];
        v.extend(rest);
        v
    };
    let mut steps = Vec::new();
    for chain in [INBOUND_CHAIN, OUTBOUND_CHAIN] {
        steps.push(nat(vec!["-N".into(), chain.into()]));
        steps.push(nat(vec!["-F".into(), chain.into()]));
    }
    steps.extend(chain_rules(c, family).into_iter().map(nat));
    for (builtin, rule) in jumps() {
        let mut v = vec!["-A".to_string(), builtin.to_string()];
        v.extend(rule);
        steps.push(nat(v));
    }
    steps
}

fn iptables(bin: &str, args: &[String]) -> Result<std::process::Output, String> {
    Command::new(bin).args(args).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!("{bin} not found: install iptables (or pick --iptables-mode nft|legacy)")
        } else {
            format!("cannot run {bin}: {e}")
        }
    })
}

fn fail(bin: &str, args: &[String], out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if stderr.contains("Permission denied") || stderr.contains("you must be root") {
        return format!(
            "{bin} {}: needs NET_ADMIN (and NET_RAW): {stderr}",
            args.join(" ")
        );
    }
    format!("{bin} {} failed: {stderr}", args.join(" "))
}

/// True when `family`'s nat table can be driven here (binary present,
/// kernel support loaded).
fn family_works(mode: Mode, family: Family) -> bool {
    let args = ["-t".to_string(), "nat".to_string(), "-S".to_string()];
    iptables(mode.binary(family), &args).is_ok_and(|o| o.status.success())
}

/// The families to install rules for.
fn families(args: &Args) -> Vec<Family> {
    let v6 = match args.ipv6 {
        Ipv6::On => true,
        Ipv6::Off => false,
        Ipv6::Auto => args.dry_run || family_works(args.mode, Family::V6),
    };
    if v6 {
        vec![Family::V4, Family::V6]
    } else {
        vec![Family::V4]
    }
}

/// Applies the rules of `family`; safe to run again.
pub fn apply(c: &Capture, mode: Mode, family: Family) -> Result<(), String> {
    let bin = mode.binary(family);
    for step in plan(c, family) {
        let verb = step.get(2).map(String::as_str);
        if verb == Some("-N") {
            // An existing chain is fine: it is flushed next.
            let out = iptables(bin, &step)?;
            if !out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("exists") {
                return Err(fail(bin, &step, &out));
            }
            continue;
        }
        if verb == Some("-A")
            && matches!(
                step.get(3).map(String::as_str),
                Some("PREROUTING" | "OUTPUT")
            )
        {
            // Add each jump only once.
            let mut check = step.clone();
            check[2] = "-C".into();
            if iptables(bin, &check)?.status.success() {
                continue;
            }
        }
        let out = iptables(bin, &step)?;
        if !out.status.success() {
            return Err(fail(bin, &step, &out));
        }
    }
    Ok(())
}

/// Entry point of `mesh-proxy init`.
pub fn main(argv: &[String]) -> ExitCode {
    let args = match parse(argv, |k| std::env::var(k).ok()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("mesh-proxy init: {e}");
            return ExitCode::from(2);
        }
    };
    let families = families(&args);
    if args.dry_run {
        for family in families {
            for step in plan(&args.capture, family) {
                println!("{} {}", args.mode.binary(family), step.join(" "));
            }
        }
        return ExitCode::SUCCESS;
    }
    for family in &families {
        if let Err(e) = apply(&args.capture, args.mode, *family) {
            eprintln!("mesh-proxy init: {e}");
            return ExitCode::FAILURE;
        }
    }
    eprintln!(
        "mesh-proxy init: capture installed for {} (inbound → {}, outbound → {}, uid {} exempt)",
        if families.len() == 2 {
            "IPv4 and IPv6"
        } else {
            "IPv4"
        },
        args.capture.inbound_port,
        args.capture.outbound_port,
        args.capture.proxy_uid
    );
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_and_env() {
        let a = parse(
            &args(&[
                "--inbound-port",
                "5143",
                "--skip-outbound-ports=443",
                "--dry-run",
            ]),
            |k| (k == "MESH_INIT_PROXY_UID").then(|| "3000".to_string()),
        )
        .unwrap();
        assert_eq!(a.capture.inbound_port, 5143);
        assert_eq!(a.capture.proxy_uid, 3000);
        assert_eq!(
            a.capture.skip_outbound_ports,
            vec![rules::PortRange(443, 443)]
        );
        assert!(a.dry_run);
        assert_eq!(a.mode, Mode::Auto);
        assert_eq!(a.ipv6, Ipv6::Auto);
        let a = parse(&args(&["--ipv6", "off"]), |_| None).unwrap();
        assert_eq!(a.ipv6, Ipv6::Off);
        assert!(parse(&args(&["--ipv6", "maybe"]), |_| None).is_err());
        assert_eq!(Mode::Legacy.binary(Family::V6), "ip6tables-legacy");
    }

    #[test]
    fn the_admin_port_is_always_skipped_inbound() {
        let a = parse(&args(&["--skip-inbound-ports", "22"]), |_| None).unwrap();
        assert_eq!(
            a.capture.skip_inbound_ports,
            vec![rules::PortRange(4191, 4191), rules::PortRange(22, 22)]
        );
    }

    #[test]
    fn bad_flags_are_named() {
        let e = parse(&args(&["--inbound-port", "x"]), |_| None).unwrap_err();
        assert!(e.starts_with("--inbound-port"), "{e}");
        let e = parse(&args(&["--nope", "1"]), |_| None).unwrap_err();
        assert!(e.contains("unknown flag --nope"), "{e}");
        let e = parse(&[], |k| {
            (k == "MESH_INIT_IPTABLES_MODE").then(|| "x".into())
        })
        .unwrap_err();
        assert!(e.starts_with("MESH_INIT_IPTABLES_MODE"), "{e}");
        assert!(parse(&args(&["--outbound-port"]), |_| None).is_err());
    }

    #[test]
    fn plan_creates_flushes_fills_and_jumps() {
        let p: Vec<String> = plan(&Capture::default(), Family::V4)
            .iter()
            .map(|s| s.join(" "))
            .collect();
        assert_eq!(p[0], "-t nat -N MESH_INBOUND");
        assert_eq!(p[1], "-t nat -F MESH_INBOUND");
        assert_eq!(
            p[p.len() - 2],
            "-t nat -A PREROUTING -p tcp -j MESH_INBOUND"
        );
        assert_eq!(p[p.len() - 1], "-t nat -A OUTPUT -p tcp -j MESH_OUTBOUND");
    }

    #[test]
    fn a_missing_binary_is_a_clear_error() {
        let e = iptables("iptables-that-does-not-exist", &[]).unwrap_err();
        assert!(e.contains("not found"), "{e}");
    }
}
