//! Server-side request forgery: finds the host of every URL in a string and
//! says whether it is internal (loopback, private, link-local or metadata
//! addresses in any of the encodings URL parsers accept, internal names).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::text::percent_decode;

/// An address range such as `10.0.0.0/8` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    /// Parses `addr/len`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an address range such as 10.20.0.0/16 or fd00::/8");
        let (addr, len) = s.trim().split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(format!("{s:?}: the prefix length {len} is above {max}"));
        }
        Ok(Self { addr, len })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(
                u128::from(net.to_bits()) << 96,
                u128::from(ip.to_bits()) << 96,
                self.len,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_eq(net.to_bits(), ip.to_bits(), self.len),
            (IpAddr::V4(_), IpAddr::V6(ip)) => ip
                .to_ipv4_mapped()
                .is_some_and(|v4| self.contains(IpAddr::V4(v4))),
            (IpAddr::V6(_), IpAddr::V4(_)) => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, len: u8) -> bool {
    if len == 0 {
        return true;
    }
    let mask = u128::MAX << (128 - u32::from(len));
    a & mask == b & mask
}

/// Internal targets a tenant may reach anyway.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SsrfAllow {
    hosts: Vec<String>,
    suffixes: Vec<String>,
    cidrs: Vec<Cidr>,
}

impl SsrfAllow {
    /// `hosts`: exact names, `*.suffix` wildcards or IP literals; `cidrs`:
    /// address ranges.
    pub fn new(hosts: &[String], cidrs: &[String]) -> Result<Self, String> {
        let mut allow = Self::default();
        for h in hosts {
            let h = h.trim().to_ascii_lowercase();
            let h = h.trim_end_matches('.');
            if h.is_empty() {
                return Err("an allowed host must not be empty".into());
            }
            match h.strip_prefix("*.") {
                Some(suffix) => allow.suffixes.push(format!(".{suffix}")),
                None => allow.hosts.push(h.to_owned()),
            }
        }
        for c in cidrs {
            allow.cidrs.push(Cidr::parse(c)?);
        }
        Ok(allow)
    }

    fn host_allowed(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| h == host) || self.suffixes.iter().any(|s| host.ends_with(s))
    }

    fn ip_allowed(&self, ip: IpAddr) -> bool {
        self.cidrs.iter().any(|c| c.contains(ip))
            || self
                .hosts
                .iter()
                .any(|h| h.parse::<IpAddr>().is_ok_and(|a| a == ip))
    }
}

/// The first internal target named in `s`, as a short reason (never the
/// value). URLs are found by their `scheme://`; with `whole_is_target` (a
/// field declared as a URL or host), the whole value counts as one too.
pub(crate) fn internal_target(
    s: &str,
    whole_is_target: bool,
    allow: &SsrfAllow,
) -> Option<&'static str> {
    let b = s.as_bytes();
    let mut from = 0;
    let mut found_url = false;
    while let Some(pos) = s[from..].find(':') {
        let colon = from + pos;
        from = colon + 1;
        let slashes = b[colon + 1..]
            .iter()
            .take_while(|c| matches!(c, b'/' | b'\\'))
            .count();
        if slashes < 2 {
            continue;
        }
        found_url = true;
        let scheme_start = s[..colon]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        let network = is_network_scheme(&s[scheme_start..colon]);
        if let Some(reason) = authority_target(&s[colon + 1 + slashes..], allow)
            // A single-label name is only a way into the intranet when a
            // network client resolves it; `test://example-resource` or an
            // MCP resource URI is not fetched by anyone.
            && (network || reason != SINGLE_LABEL)
        {
            return Some(reason);
        }
    }
    let trimmed = s.trim();
    if let Some(rest) = trimmed
        .strip_prefix("//")
        .or_else(|| trimmed.strip_prefix("\\\\"))
        && let Some(reason) = authority_target(rest.trim_start_matches(['/', '\\']), allow)
    {
        return Some(reason);
    }
    if whole_is_target && !found_url && !trimmed.is_empty() {
        if let Ok(ip) = trimmed.trim_matches(['[', ']']).parse::<IpAddr>() {
            return ip_target(ip, allow);
        }
        return authority_target(trimmed, allow);
    }
    None
}

const SINGLE_LABEL: &str = "single-label host name";

/// Schemes whose URLs some client fetches over the network (or that have
/// no scheme at all, like `//host`), where a single-label name matters.
fn is_network_scheme(scheme: &str) -> bool {
    const NETWORK: [&str; 14] = [
        "", "http", "https", "ws", "wss", "ftp", "ftps", "sftp", "tftp", "gopher", "dict", "ldap",
        "ldaps", "smb",
    ];
    NETWORK.iter().any(|n| scheme.eq_ignore_ascii_case(n))
}

/// Classifies the host at the start of `rest` (what follows `scheme://`).
fn authority_target(rest: &str, allow: &SsrfAllow) -> Option<&'static str> {
    let end = rest
        .find(|c: char| {
            matches!(
                c,
                '/' | '\\' | '?' | '#' | '"' | '\'' | '<' | '>' | '`' | ',' | ';' | '|'
            ) || c.is_whitespace()
        })
        .unwrap_or(rest.len());
    let authority = &rest[..end];
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(inner) = hostport.strip_prefix('[') {
        let inner = inner.split(']').next().unwrap_or(inner);
        let decoded = percent_decode(inner);
        let addr = decoded.split('%').next().unwrap_or("");
        return match addr.parse::<Ipv6Addr>() {
            Ok(ip) => ip_target(IpAddr::V6(ip), allow),
            Err(_) => None,
        };
    }
    let host = hostport.split(':').next().unwrap_or("");
    let host = percent_decode(host).to_ascii_lowercase();
    let host = host.trim_end_matches('.');
    host_target(host, allow)
}

fn host_target(host: &str, allow: &SsrfAllow) -> Option<&'static str> {
    if host.is_empty() || allow.host_allowed(host) {
        return None;
    }
    if let Some(ip) = parse_ipv4_loose(host) {
        return ip_target(IpAddr::V4(ip), allow);
    }
    if let Ok(ip) = host.parse::<Ipv6Addr>() {
        return ip_target(IpAddr::V6(ip), allow);
    }
    // Wildcard DNS services answer with the address spelled in the name.
    for suffix in [
        ".nip.io",
        ".sslip.io",
        ".xip.io",
        ".nip.direct",
        ".traefik.me",
    ] {
        if let Some(prefix) = host.strip_suffix(suffix) {
            return embedded_ip(prefix).and_then(|ip| ip_target(IpAddr::V4(ip), allow));
        }
    }
    const LOOPBACK_NAMES: [&str; 6] = [
        "localhost",
        "localtest.me",
        "lvh.me",
        "vcap.me",
        "lacolhost.com",
        "localhost.localdomain",
    ];
    if LOOPBACK_NAMES
        .iter()
        .any(|n| host == *n || host.strip_suffix(n).is_some_and(|p| p.ends_with('.')))
    {
        return Some("loopback host name");
    }
    const METADATA_NAMES: [&str; 5] = [
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
    ];
    if METADATA_NAMES.contains(&host) {
        return Some("cloud metadata host name");
    }
    const INTERNAL_SUFFIXES: [&str; 9] = [
        ".internal",
        ".local",
        ".localdomain",
        ".home.arpa",
        ".lan",
        ".intranet",
        ".corp",
        ".private",
        ".svc",
    ];
    if INTERNAL_SUFFIXES.iter().any(|s| host.ends_with(s)) || host.starts_with("kubernetes.") {
        return Some("internal host name");
    }
    if !host.contains('.') {
        // Resolved through the search domains of the gateway's network.
        return Some(SINGLE_LABEL);
    }
    None
}

/// The IPv4 address spelled at the end of a wildcard-DNS name:
/// `10.0.0.1`, `app.10.0.0.1`, `10-0-0-1`, `app-10-0-0-1` or `0a000001`.
fn embedded_ip(prefix: &str) -> Option<Ipv4Addr> {
    let labels: Vec<&str> = prefix.split('.').collect();
    if labels.len() >= 4
        && let Ok(ip) = labels[labels.len() - 4..].join(".").parse::<Ipv4Addr>()
    {
        return Some(ip);
    }
    let last = labels.last()?;
    let parts: Vec<&str> = last.split('-').collect();
    if parts.len() >= 4
        && let Ok(ip) = parts[parts.len() - 4..].join(".").parse::<Ipv4Addr>()
    {
        return Some(ip);
    }
    if last.len() == 8
        && let Ok(v) = u32::from_str_radix(last, 16)
    {
        return Some(Ipv4Addr::from_bits(v));
    }
    None
}

/// Parses an IPv4 host the way URL parsers (WHATWG) and `inet_aton` do:
/// one to four parts, each decimal, octal (leading `0`) or hex (`0x`), the
/// last filling the remaining bytes: `2130706433`, `0x7f000001`,
/// `0177.0.0.1`, `127.1` are all 127.0.0.1.
pub(crate) fn parse_ipv4_loose(host: &str) -> Option<Ipv4Addr> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty()
        || !host
            .bytes()
            .all(|c| c.is_ascii_hexdigit() || c == b'.' || c == b'x' || c == b'X')
        || !host.as_bytes()[0].is_ascii_digit()
    {
        return None;
    }
    let parts: Vec<&str> = host.split('.').collect();
    if parts.len() > 4 {
        return None;
    }
    let mut nums = Vec::with_capacity(4);
    for p in &parts {
        let v = if let Some(h) = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X")) {
            if h.is_empty() {
                0
            } else {
                u64::from_str_radix(h, 16).ok()?
            }
        } else if p.len() > 1 && p.starts_with('0') {
            u64::from_str_radix(&p[1..], 8).ok()?
        } else {
            p.parse::<u64>().ok()?
        };
        nums.push(v);
    }
    let (last, init) = nums.split_last()?;
    if init.iter().any(|&n| n > 255) {
        return None;
    }
    let rest_bits = 8 * (5 - nums.len() as u32);
    if rest_bits < 64 && *last >= 1u64 << rest_bits {
        return None;
    }
    let mut v: u64 = *last;
    for (i, n) in init.iter().enumerate() {
        v |= n << (24 - 8 * i as u32);
    }
    u32::try_from(v).ok().map(Ipv4Addr::from_bits)
}

fn ip_target(ip: IpAddr, allow: &SsrfAllow) -> Option<&'static str> {
    if allow.ip_allowed(ip) {
        return None;
    }
    match ip {
        IpAddr::V4(v4) => v4_target(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                if allow.ip_allowed(IpAddr::V4(v4)) {
                    return None;
                }
                return v4_target(v4).map(|_| "IPv6 address embedding an internal IPv4 address");
            }
            let seg = v6.segments();
            if v6.is_loopback() {
                Some("loopback address")
            } else if v6.is_unspecified() {
                Some("unspecified address")
            } else if seg[0] & 0xfe00 == 0xfc00 {
                Some("unique-local IPv6 address")
            } else if seg[0] & 0xffc0 == 0xfe80 {
                Some("link-local IPv6 address")
            } else if seg[0] & 0xffc0 == 0xfec0 {
                Some("site-local IPv6 address")
            } else if seg[0] & 0xff00 == 0xff00 {
                Some("multicast address")
            } else {
                None
            }
        }
    }
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::/96`) or 6to4
/// (`2002::/16`) address.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let seg = v6.segments();
    let low = Ipv4Addr::from_bits(v6.to_bits() as u32);
    if seg[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified() {
        return Some(low);
    }
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(low);
    }
    if seg[0] == 0x2002 {
        return Some(Ipv4Addr::from_bits(
            (u32::from(seg[1]) << 16) | u32::from(seg[2]),
        ));
    }
    None
}

fn v4_target(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    Some(match o {
        [127, ..] => "loopback address",
        [0, ..] => "unspecified address",
        [169, 254, ..] => "link-local address (cloud metadata)",
        [10, ..] | [192, 168, ..] => "private address",
        [172, b, ..] if (16..32).contains(&b) => "private address",
        [100, b, ..] if (64..128).contains(&b) => "shared (carrier-grade NAT) address",
        [192, 0, 0, _] => "IETF protocol address",
        [198, b, ..] if b == 18 || b == 19 => "benchmarking address",
        [255, 255, 255, 255] => "broadcast address",
        [a, ..] if a >= 240 => "reserved address",
        [a, ..] if a >= 224 => "multicast address",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(s: &str) -> Option<&'static str> {
        internal_target(s, false, &SsrfAllow::default())
    }

    #[test]
    fn loose_ipv4() {
        let lo = Some(Ipv4Addr::LOCALHOST);
        for s in [
            "127.0.0.1",
            "2130706433",
            "0x7f000001",
            "0x7F.0.0.1",
            "0177.0.0.1",
            "017700000001",
            "127.1",
            "127.0.1",
            "127.0.0.1.",
        ] {
            assert_eq!(parse_ipv4_loose(s), lo, "{s}");
        }
        assert_eq!(parse_ipv4_loose("0"), Some(Ipv4Addr::UNSPECIFIED));
        for s in [
            "1password",
            "256.0.0.1",
            "1.2.3.4.5",
            "example",
            "08.0.0.1",
            "4294967296",
            "deadbeef",
        ] {
            assert_eq!(parse_ipv4_loose(s), None, "{s}");
        }
    }

    #[test]
    fn internal_urls() {
        for s in [
            "http://127.0.0.1/",
            "https://localhost:8443/admin",
            "http://169.254.169.254/latest/meta-data/",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://[fe80::1%25eth0]/",
            "http://[fd00:ec2::254]/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
            "http://10.0.0.5:8080/x",
            "http://172.20.1.1/",
            "http://192.168.0.1/",
            "http://evil.com@169.254.169.254/",
            "http://%31%32%37.0.0.1/",
            "gopher://127.0.0.1:6379/_INFO",
            "http:\\\\127.0.0.1\\x",
            "see HTTP://LOCALHOST./ now",
            "http://127.0.0.1.nip.io/",
            "http://redis:6379/",
            "http://0/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[2002:a9fe:a9fe::]/",
            "//169.254.169.254/latest",
            "http://app.svc.cluster.local/",
        ] {
            assert!(target(s).is_some(), "{s}");
        }
        for s in [
            "https://example.com/path?q=1",
            "http://8.8.8.8/",
            "https://1.1.1.1/dns-query",
            "https://api.github.com/repos",
            "test://example-resource",
            "cellgate+upstream://memory/knowledge",
            "version 10.0.0.1 released",
            "mailto:someone@example.com",
            "https://[2606:4700::1111]/",
            "ratio 3:2 and 4://",
            "https://1password.com/",
        ] {
            assert_eq!(target(s), None, "{s}");
        }
    }

    #[test]
    fn declared_fields_and_allow_lists() {
        let none = SsrfAllow::default();
        assert!(internal_target("169.254.169.254", true, &none).is_some());
        assert!(internal_target("localhost:8080/x", true, &none).is_some());
        assert!(internal_target("::1", true, &none).is_some());
        assert!(internal_target("169.254.169.254", false, &none).is_none());
        assert!(internal_target("example.com", true, &none).is_none());

        let allow = SsrfAllow::new(
            &[
                "*.svc.cluster.local".into(),
                "metadata.google.internal".into(),
            ],
            &["10.20.0.0/16".into(), "fd00::/8".into()],
        )
        .unwrap();
        assert_eq!(internal_target("http://10.20.3.4/", false, &allow), None);
        assert!(internal_target("http://10.21.3.4/", false, &allow).is_some());
        assert_eq!(internal_target("http://[fd00::1]/", false, &allow), None);
        assert_eq!(
            internal_target("http://app.svc.cluster.local/", false, &allow),
            None
        );
        assert_eq!(
            internal_target("http://metadata.google.internal/", false, &allow),
            None
        );
        assert!(internal_target("http://169.254.169.254/", false, &allow).is_some());
        assert!(SsrfAllow::new(&[], &["10.0.0.0/40".into()]).is_err());
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
    }
}
