//! The guard's address classes, URL checks and resolution, adversarially: every refused class
//! (directly, through the IPv6 forms that carry IPv4, and through names that resolve to them),
//! URLs in every shape that should not be fetched, and allowances that must not stretch.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

/// A resolver answering from a table, counting lookups.
#[derive(Default)]
struct FakeDns {
    names: HashMap<String, Vec<IpAddr>>,
    lookups: AtomicUsize,
}

impl FakeDns {
    fn with(entries: &[(&str, &[&str])]) -> Arc<FakeDns> {
        Arc::new(FakeDns {
            names: entries
                .iter()
                .map(|(name, ips)| {
                    (
                        (*name).to_owned(),
                        ips.iter().map(|ip| ip.parse().unwrap()).collect(),
                    )
                })
                .collect(),
            lookups: AtomicUsize::new(0),
        })
    }
}

impl Lookup for FakeDns {
    fn lookup(
        &self,
        host: String,
        port: u16,
    ) -> futures_util::future::BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let answer = self
            .names
            .get(&host)
            .map(|ips| ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such name"));
        Box::pin(async move { answer })
    }
}

const REFUSED: &[&str] = &[
    "0.0.0.0",
    "0.1.2.3",
    "10.0.0.1",
    "10.255.255.255",
    "100.64.0.1",
    "100.127.255.254",
    "127.0.0.1",
    "127.1.2.3",
    "169.254.169.254",
    "169.254.0.1",
    "172.16.0.1",
    "172.31.255.255",
    "192.0.0.8",
    "192.0.2.1",
    "192.88.99.1",
    "192.168.1.1",
    "198.18.0.1",
    "198.19.255.255",
    "198.51.100.7",
    "203.0.113.9",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "::",
    "::1",
    "fc00::1",
    "fd00::1",
    "fd00:ec2::254",
    "fe80::1",
    "febf::1",
    "fec0::1",
    "ff02::1",
    "ff05::1:3",
    "100::1",
    "2001:db8::1",
    "2001:10::1",
    "2001:20::1",
    // IPv4 inside IPv6: mapped, compatible, translated, NAT64 (even of public addresses).
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:8.8.8.8",
    "::127.0.0.1",
    "::10.0.0.1",
    "::ffff:0:10.0.0.1",
    "64:ff9b::a9fe:a9fe",
    "64:ff9b::8.8.8.8",
    "64:ff9b:1::1",
    // 6to4 to loopback, private and metadata addresses.
    "2002:7f00:1::1",
    "2002:a00:1::1",
    "2002:a9fe:a9fe::1",
    "2002:c0a8:101::",
    // Teredo whose server or (inverted) client address is refused: client 10.0.0.1 is
    // f5ff:fffe inverted; server 127.0.0.1 in bits 32..64.
    "2001:0:4136:e378:8000:63bf:f5ff:fffe",
    "2001:0:7f00:1:8000:63bf:3fff:fdd2",
    // The classic example: its client 192.0.2.45 is a documentation address.
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",
];

const PUBLIC: &[&str] = &[
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "100.63.255.255",
    "100.128.0.0",
    "172.15.255.255",
    "172.32.0.0",
    "192.167.255.255",
    "169.253.255.255",
    "223.255.255.255",
    "2606:4700:4700::1111",
    "2a00:1450:4001:80b::200e",
    // 6to4 and Teredo to public addresses are ordinary global addresses.
    "2002:808:808::1",
    "2001:0:4136:e378:8000:63bf:f7f7:f7f7",
];

#[test]
fn every_refused_class_is_refused_and_public_addresses_pass() {
    for ip in REFUSED {
        let parsed: IpAddr = ip.parse().unwrap();
        assert!(refused_class(parsed).is_some(), "{ip} should be refused");
    }
    for ip in PUBLIC {
        let parsed: IpAddr = ip.parse().unwrap();
        assert_eq!(refused_class(parsed), None, "{ip} is public");
    }
}

fn guard(dns: Arc<FakeDns>, allow: &[&str]) -> Outbound {
    let config = OutboundConfig {
        allow_hosts: allow.iter().map(|s| (*s).to_owned()).collect(),
        ca_file: None,
    };
    Outbound::with_lookup(&config, dns).unwrap()
}

#[test]
fn urls_other_than_https_to_a_public_host_are_refused_before_anything_is_resolved() {
    let dns = FakeDns::with(&[]);
    let out = guard(dns.clone(), &[]);
    for url in [
        "http://example.com/",
        "ftp://example.com/",
        "file:///etc/passwd",
        "gopher://example.com/",
        "https://user:pass@example.com/",
        "https://user@example.com/",
        "https://127.0.0.1/",
        "https://127.0.0.1:8443/token",
        "https://[::1]/",
        "https://[::ffff:127.0.0.1]/",
        "https://[::ffff:7f00:1]/",
        "https://169.254.169.254/latest/meta-data/",
        "https://[fd00:ec2::254]/",
        "https://10.1.2.3/",
        "https://0x7f.1/",
        "https://2130706433/",
        "https://0177.0.0.1/",
        "https://0/",
        "https://100.64.1.1/",
        "https://[2002:a9fe:a9fe::]/",
    ] {
        let parsed = url::Url::parse(url).unwrap();
        let err = out.check_url(&parsed).unwrap_err();
        assert!(matches!(err, OutboundError::Refused(_)), "{url}: {err}");
    }
    assert_eq!(dns.lookups.load(Ordering::SeqCst), 0);
    let ok =
        url::Url::parse("https://accounts.example.com/.well-known/openid-configuration").unwrap();
    assert_eq!(
        out.check_url(&ok).unwrap(),
        ("accounts.example.com".to_owned(), 443)
    );
    let ok = url::Url::parse("https://8.8.8.8:8443/x").unwrap();
    assert_eq!(out.check_url(&ok).unwrap(), ("8.8.8.8".to_owned(), 8443));
}

#[tokio::test]
async fn a_name_that_resolves_to_any_refused_address_is_refused_whole() {
    let dns = FakeDns::with(&[
        ("metadata.evil", &["169.254.169.254"]),
        ("loop.evil", &["127.0.0.1"]),
        ("mixed.evil", &["8.8.8.8", "10.0.0.1"]),
        ("v6.evil", &["fd00:ec2::254"]),
        ("mapped.evil", &["::ffff:127.0.0.1"]),
        ("sixtofour.evil", &["2002:a9fe:a9fe::1"]),
        ("teredo.evil", &["2001:0:4136:e378:8000:63bf:f5ff:fffe"]),
        ("cgnat.evil", &["100.64.0.7"]),
        ("good.example", &["93.184.216.34", "2606:4700:4700::1111"]),
        ("inside.corp", &["10.0.0.5"]),
    ]);
    let out = guard(dns.clone(), &["inside.corp:443"]);
    for name in [
        "metadata.evil",
        "loop.evil",
        "mixed.evil",
        "v6.evil",
        "mapped.evil",
        "sixtofour.evil",
        "teredo.evil",
        "cgnat.evil",
    ] {
        let err = out.resolve(name, 443).await.unwrap_err();
        assert!(matches!(err, OutboundError::Refused(_)), "{name}: {err}");
    }
    let good = out.resolve("good.example", 443).await.unwrap();
    assert_eq!(good.len(), 2);
    assert!(good.iter().all(|a| a.port() == 443));
    // An allowed host is reached wherever it resolves, on its port only.
    assert_eq!(
        out.resolve("inside.corp", 443).await.unwrap(),
        vec!["10.0.0.5:443".parse().unwrap()]
    );
    assert!(matches!(
        out.resolve("inside.corp", 8443).await.unwrap_err(),
        OutboundError::Refused(_)
    ));
    let other_port = url::Url::parse("https://inside.corp:8443/").unwrap();
    assert!(matches!(
        out.check_url(&other_port).unwrap_err(),
        OutboundError::Refused(_)
    ));
    // An unknown name fails (and is not refused as an address).
    assert!(matches!(
        out.resolve("nowhere.example", 443).await.unwrap_err(),
        OutboundError::Failed(_)
    ));
    // Connecting goes through the same check: nothing is dialled for a refused name.
    assert!(matches!(
        out.connect("metadata.evil", 25).await.unwrap_err(),
        OutboundError::Refused(_)
    ));
}

#[tokio::test]
async fn the_systems_resolver_is_checked_too() {
    let out = Outbound::new(&OutboundConfig::default()).unwrap();
    let err = out.resolve("localhost", 443).await.unwrap_err();
    assert!(matches!(err, OutboundError::Refused(_)), "{err}");
}

#[test]
fn allowances_are_host_and_port() {
    for bad in [
        "example.com",
        "example.com:",
        "example.com:x",
        ":443",
        "a/b:1",
        "u@h:1",
    ] {
        assert!(parse_allowance(bad).is_err(), "{bad}");
    }
    assert_eq!(
        parse_allowance("IdP.Example:8443").unwrap(),
        Allowed {
            host: "idp.example".into(),
            port: 8443
        }
    );
    assert_eq!(
        parse_allowance("[::1]:9000").unwrap(),
        Allowed {
            host: "::1".into(),
            port: 9000
        }
    );
}
