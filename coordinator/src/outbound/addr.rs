//! Which addresses an outbound connection may reach: public unicast only. Everything an
//! attacker could aim a fetch at inside the network (or at the machine itself) is refused by
//! class, including through the IPv6 forms that carry an IPv4 address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is refused, or `None` for a public unicast address.
pub fn refused_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => refused_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], bits: u32) -> bool {
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    };
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    const CLASSES: &[([u8; 4], u32, &str)] = &[
        ([0, 0, 0, 0], 8, "unspecified (0.0.0.0/8)"),
        ([10, 0, 0, 0], 8, "private (RFC 1918)"),
        ([100, 64, 0, 0], 10, "carrier-grade NAT (100.64.0.0/10)"),
        ([127, 0, 0, 0], 8, "loopback"),
        (
            [169, 254, 0, 0],
            16,
            "link-local (169.254.0.0/16, cloud metadata)",
        ),
        ([172, 16, 0, 0], 12, "private (RFC 1918)"),
        (
            [192, 0, 0, 0],
            24,
            "IETF protocol assignments (192.0.0.0/24)",
        ),
        ([192, 0, 2, 0], 24, "documentation (192.0.2.0/24)"),
        ([192, 88, 99, 0], 24, "6to4 relay anycast (192.88.99.0/24)"),
        ([192, 168, 0, 0], 16, "private (RFC 1918)"),
        ([198, 18, 0, 0], 15, "benchmarking (198.18.0.0/15)"),
        ([198, 51, 100, 0], 24, "documentation (198.51.100.0/24)"),
        ([203, 0, 113, 0], 24, "documentation (203.0.113.0/24)"),
        ([224, 0, 0, 0], 4, "multicast"),
        ([240, 0, 0, 0], 4, "reserved (240.0.0.0/4, broadcast)"),
    ];
    CLASSES
        .iter()
        .find(|(net, bits, _)| in_v4(ip, *net, *bits))
        .map(|(_, _, why)| *why)
}

fn in_v6(ip: Ipv6Addr, net: [u16; 8], bits: u32) -> bool {
    let mask = if bits == 0 {
        0
    } else {
        u128::MAX << (128 - bits)
    };
    u128::from(ip) & mask == u128::from(Ipv6Addr::from(net)) & mask
}

/// The IPv4 address in bits `at..at + 32` of `ip`.
fn embedded_v4(ip: Ipv6Addr, at: u32) -> Ipv4Addr {
    Ipv4Addr::from((u128::from(ip) >> (96 - at)) as u32)
}

fn refused_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("unspecified (::)");
    }
    if ip.is_loopback() {
        return Some("loopback (::1)");
    }
    // Every IPv6 form that carries an IPv4 address in its low bits is refused as such: a
    // connection to it may reach that IPv4 address (a dual-stack socket, a NAT64 gateway), and
    // none is a normal way to name a public server.
    const EMBEDDING: &[([u16; 8], u32, &str)] = &[
        (
            [0, 0, 0, 0, 0, 0xffff, 0, 0],
            96,
            "IPv4-mapped IPv6 (::ffff:0:0/96)",
        ),
        ([0, 0, 0, 0, 0, 0, 0, 0], 96, "IPv4-compatible IPv6 (::/96)"),
        (
            [0, 0, 0, 0, 0xffff, 0, 0, 0],
            96,
            "IPv4-translated IPv6 (::ffff:0:0:0/96)",
        ),
        ([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96, "NAT64 (64:ff9b::/96)"),
        (
            [0x64, 0xff9b, 1, 0, 0, 0, 0, 0],
            48,
            "local NAT64 (64:ff9b:1::/48)",
        ),
    ];
    if let Some((_, _, why)) = EMBEDDING
        .iter()
        .find(|(net, bits, _)| in_v6(ip, *net, *bits))
    {
        return Some(why);
    }
    // Tunnels whose address names an IPv4 endpoint: refused when that endpoint is.
    if in_v6(ip, [0x2002, 0, 0, 0, 0, 0, 0, 0], 16) && refused_v4(embedded_v4(ip, 16)).is_some() {
        return Some("6to4 (2002::/16) to a refused IPv4 address");
    }
    if in_v6(ip, [0x2001, 0, 0, 0, 0, 0, 0, 0], 32) {
        // Teredo: the server's IPv4 address in bits 32..64, the client's (inverted) in 96..128.
        let server = embedded_v4(ip, 32);
        let client = Ipv4Addr::from(!(u128::from(ip) as u32));
        if refused_v4(server).is_some() || refused_v4(client).is_some() {
            return Some("Teredo (2001::/32) to a refused IPv4 address");
        }
    }
    const CLASSES: &[([u16; 8], u32, &str)] = &[
        ([0x100, 0, 0, 0, 0, 0, 0, 0], 64, "discard-only (100::/64)"),
        (
            [0x2001, 0xdb8, 0, 0, 0, 0, 0, 0],
            32,
            "documentation (2001:db8::/32)",
        ),
        (
            [0x2001, 0x10, 0, 0, 0, 0, 0, 0],
            28,
            "ORCHID (2001:10::/28)",
        ),
        (
            [0x2001, 0x20, 0, 0, 0, 0, 0, 0],
            28,
            "ORCHIDv2 (2001:20::/28)",
        ),
        (
            [0xfc00, 0, 0, 0, 0, 0, 0, 0],
            7,
            "unique local (RFC 4193, fc00::/7)",
        ),
        ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "link-local (fe80::/10)"),
        ([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, "site-local (fec0::/10)"),
        ([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "multicast (ff00::/8)"),
    ];
    CLASSES
        .iter()
        .find(|(net, bits, _)| in_v6(ip, *net, *bits))
        .map(|(_, _, why)| *why)
}
