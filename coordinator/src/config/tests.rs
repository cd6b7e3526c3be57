use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::Config;

fn write(dir: &Path, name: &str, contents: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, contents).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// Secret files (0600) and a config naming them, plus `extra` at the end.
fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let secret = "0123456789abcdef0123456789abcdef0123456789";
    for name in ["pepper", "admin.token", "audit.key", "worker-a.token"] {
        write(dir, name, secret, 0o600);
    }
    let text = format!(
        r#"data_dir = "data"
default_tier = "free"

[listen]
http = "127.0.0.1:7700"
grpc = "127.0.0.1:7701"
cluster = "127.0.0.1:7702"
metrics = "127.0.0.1:7703"

[secrets]
pepper_file = "pepper"
admin_token_file = "admin.token"
audit_key_file = "audit.key"
root_key_file = "root.key"

[[workers]]
id = "worker-a"
token_file = "worker-a.token"

[tiers.free]
max_collections = 10
max_points = 1000
max_stored_bytes = 1048576
max_dim = 8
requests_per_second = 10.0
burst = 10
max_body_bytes = 1024
{extra}"#
    );
    write(dir, "coordinator.toml", &text, 0o600)
}

/// A self-signed certificate for 127.0.0.1 and its key, as PEM.
fn cert_and_key() -> (String, String) {
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    (made.cert.pem(), made.signing_key.serialize_pem())
}

const TLS_TABLE: &str =
    "\n[cluster_tls]\ncert_file = \"cluster.crt\"\nkey_file = \"cluster.key\"\n";

#[test]
fn without_cluster_tls_the_listener_is_plain() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::load(&write_config(dir.path(), "")).unwrap();
    assert!(config.cluster_tls.is_none());
    assert_eq!(config.workers.len(), 1);
}

#[test]
fn cluster_tls_reads_the_certificate_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = cert_and_key();
    write(dir.path(), "cluster.crt", &cert, 0o644);
    write(dir.path(), "cluster.key", &key, 0o600);
    let config = Config::load(&write_config(dir.path(), TLS_TABLE)).unwrap();
    let tls = config.cluster_tls.expect("cluster_tls is set");
    // The server configuration is built with the ring provider at load time.
    assert!(tls.server_config().crypto_provider().cipher_suites.len() > 1);
}

#[test]
fn a_key_file_others_can_read_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = cert_and_key();
    write(dir.path(), "cluster.crt", &cert, 0o644);
    write(dir.path(), "cluster.key", &key, 0o644);
    let err = Config::load(&write_config(dir.path(), TLS_TABLE))
        .err()
        .unwrap();
    let msg = format!("{err:#}");
    assert!(msg.contains("chmod 600"), "{msg}");
    assert!(msg.contains("cluster.key"), "{msg}");
    assert!(!msg.contains("PRIVATE KEY-----\n"), "{msg}");
}

#[test]
fn unknown_and_missing_cluster_tls_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = cert_and_key();
    write(dir.path(), "cluster.crt", &cert, 0o644);
    write(dir.path(), "cluster.key", &key, 0o600);
    let extra = format!("{TLS_TABLE}ca_file = \"ca.pem\"\n");
    let err = Config::load(&write_config(dir.path(), &extra))
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
    let extra = "\n[cluster_tls]\ncert_file = \"cluster.crt\"\n";
    let err = Config::load(&write_config(dir.path(), extra))
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("key_file"), "{err:#}");
}

#[test]
fn a_key_of_another_certificate_or_no_pem_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = cert_and_key();
    let (_, other_key) = cert_and_key();
    write(dir.path(), "cluster.crt", &cert, 0o644);
    write(dir.path(), "cluster.key", &other_key, 0o600);
    let err = Config::load(&write_config(dir.path(), TLS_TABLE))
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("does not fit"), "{err:#}");

    write(dir.path(), "cluster.key", "not a key", 0o600);
    let err = Config::load(&write_config(dir.path(), TLS_TABLE))
        .err()
        .unwrap();
    assert!(
        format!("{err:#}").contains("not a PEM private key"),
        "{err:#}"
    );

    let (_, key) = cert_and_key();
    write(dir.path(), "cluster.key", &key, 0o600);
    write(dir.path(), "cluster.crt", "no certificate here\n", 0o644);
    let err = Config::load(&write_config(dir.path(), TLS_TABLE))
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("no PEM CERTIFICATE"), "{err:#}");
}

/// The shipped example config with its absolute paths made relative (to the test's directory).
fn example_config() -> String {
    fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/coordinator.example.toml"
    ))
    .unwrap()
    .replace("/etc/vaultvec/", "")
    .replace("/var/lib/vaultvec/", "")
}

#[test]
fn the_example_config_parses_with_and_without_tls() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), "");
    let example = example_config();
    let path = write(dir.path(), "example.toml", &example, 0o600);
    let config = Config::load(&path).unwrap();
    assert!(config.cluster_tls.is_none());
    assert_eq!(config.default_tier, "free");
    // Every shipped tier bounds the bytes a tenant stores.
    for (name, tier) in &config.tiers {
        assert!(tier.max_stored_bytes > 0, "tier {name} has no byte quota");
    }
    // The shipped nginx config proxies from loopback and sets X-Forwarded-For; the shipped
    // coordinator config must trust it, or every client behind nginx shares one failure budget.
    let nginx = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/nginx/vaultvec.conf"
    ))
    .unwrap();
    assert!(nginx.contains("proxy_pass http://127.0.0.1:"));
    assert!(nginx.contains("X-Forwarded-For $remote_addr"));
    assert!(
        config
            .auth_failures
            .trusted_proxies
            .contains(&std::net::IpAddr::from([127, 0, 0, 1])),
        "{:?}",
        config.auth_failures.trusted_proxies
    );

    let (cert, key) = cert_and_key();
    write(dir.path(), "cluster.crt", &cert, 0o644);
    write(dir.path(), "cluster.key", &key, 0o600);
    let with_tls = example
        .replace("# [cluster_tls]", "[cluster_tls]")
        .replace("# cert_file =", "cert_file =")
        .replace("# key_file =", "key_file =");
    let path = write(dir.path(), "example-tls.toml", &with_tls, 0o600);
    assert!(Config::load(&path).unwrap().cluster_tls.is_some());
}

/// A failure budget that is not a positive finite rate would panic or never refill.
#[test]
fn an_auth_failure_rate_that_is_not_a_positive_number_is_refused() {
    for (per_second, burst) in [
        ("0.0", "5"),
        ("-1.0", "5"),
        ("nan", "5"),
        ("inf", "5"),
        ("1.0", "0"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(
            dir.path(),
            &format!("\n[auth_failures]\nper_second = {per_second}\nburst = {burst}\n"),
        );
        let Err(err) = Config::load(&path) else {
            panic!("{per_second}/{burst} was accepted");
        };
        let err = format!("{err:#}");
        assert!(
            err.contains("[auth_failures]"),
            "{per_second}/{burst}: {err}"
        );
    }
}

#[test]
fn the_per_tenant_in_flight_bound_defaults_to_a_quarter_of_the_per_worker_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "");
    let text = fs::read_to_string(&path).unwrap().replace(
        "default_tier = \"free\"",
        "default_tier = \"free\"\nmax_in_flight_per_worker = 100",
    );
    fs::write(&path, &text).unwrap();
    assert_eq!(Config::load(&path).unwrap().max_in_flight_per_tenant, 25);
    let text = text.replace(
        "max_in_flight_per_worker = 100",
        "max_in_flight_per_worker = 100\nmax_in_flight_per_tenant = 7",
    );
    fs::write(&path, &text).unwrap();
    assert_eq!(Config::load(&path).unwrap().max_in_flight_per_tenant, 7);
}

/// A byte quota is required in every tier, and one too small for a single vector of the tier's
/// largest dimension is refused at load; 0 means no limit.
#[test]
fn a_tier_byte_quota_is_required_and_at_least_one_vector() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "");
    let text = fs::read_to_string(&path).unwrap();
    let set = |value: &str| {
        let changed = text.replace(
            "max_stored_bytes = 1048576",
            &format!("max_stored_bytes = {value}"),
        );
        fs::write(&path, changed).unwrap();
        Config::load(&path)
    };
    // max_dim is 8: one vector is 32 bytes.
    let err = format!("{:#}", set("31").err().expect("31 bytes was accepted"));
    assert!(
        err.contains("max_stored_bytes must be 0 (no limit) or at least one vector"),
        "{err}"
    );
    assert_eq!(set("32").unwrap().tiers["free"].max_stored_bytes, 32);
    assert_eq!(set("0").unwrap().tiers["free"].max_stored_bytes, 0);
    fs::write(&path, text.replace("max_stored_bytes = 1048576\n", "")).unwrap();
    let Err(err) = Config::load(&path) else {
        panic!("a tier without max_stored_bytes was accepted");
    };
    assert!(format!("{err:#}").contains("max_stored_bytes"), "{err:#}");
}

#[test]
fn kek_rotation_days_and_job_intervals_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "");
    let text = fs::read_to_string(&path).unwrap();
    let with = |tier_line: &str, jobs: &str| {
        let changed = text.replace(
            "max_stored_bytes = 1048576",
            &format!("max_stored_bytes = 1048576\n{tier_line}"),
        );
        fs::write(&path, format!("{changed}\n{jobs}")).unwrap();
        Config::load(&path)
    };
    let config = with("", "").unwrap();
    assert_eq!(config.tiers["free"].rotate_kek_every_days, 0);
    let every: Vec<(&str, u64)> = config
        .jobs
        .iter()
        .map(|j| (j.name, j.every.as_secs()))
        .collect();
    assert_eq!(
        every,
        [
            ("verify_audit", 3600),
            ("rotate_keks", 3600),
            ("flush_usage", 60),
            ("census", 86_400),
            ("snapshots", 3600),
            ("anomalies", 3600),
            ("send_mail", 60)
        ]
    );
    assert_eq!(config.tiers["free"].snapshot_every_hours, 0);
    assert_eq!(config.tiers["free"].snapshot_keep, 7);
    // Under the data directory, itself relative to the config file's directory.
    assert_eq!(config.snapshots.dir, config.data_dir.join("snapshots"));
    assert!(config.snapshots.dir.starts_with(dir.path()));
    assert_eq!(config.snapshots.limits.max_files, 100_000);
    let config = with(
        "snapshot_every_hours = 24\nsnapshot_keep = 3",
        "[snapshots]\ndir = \"/srv/snaps\"\nmax_files = 10\nmax_bytes = 2097152\n",
    )
    .unwrap();
    assert_eq!(config.tiers["free"].snapshot_every_hours, 24);
    assert_eq!(config.tiers["free"].snapshot_keep, 3);
    assert_eq!(config.snapshots.dir, std::path::Path::new("/srv/snaps"));
    assert_eq!(config.snapshots.limits.max_bytes, 2 << 20);
    let config = with("", "[snapshots]\ndir = \"snaps\"\n").unwrap();
    assert_eq!(config.snapshots.dir, dir.path().join("snaps"));
    let config = with(
        "rotate_kek_every_days = 90",
        "[jobs]\nrotate_keks_every_s = 600\n",
    )
    .unwrap();
    assert_eq!(config.tiers["free"].rotate_kek_every_days, 90);
    assert_eq!(config.jobs[1].every.as_secs(), 600);
    assert_eq!(config.privacy.entity_field, "entity_id");
    assert_eq!(config.privacy.erase_timeout_secs, 600);
    let config = with("", "[privacy]\nentity_field = \"subject.id\"\n").unwrap();
    assert_eq!(config.privacy.entity_field, "subject.id");
    for (tier_line, jobs, want) in [
        ("rotate_kek_every_days = 3651", "", "rotate_kek_every_days"),
        ("", "[jobs]\nverify_audit_every_s = 59\n", "[jobs]"),
        ("", "[jobs]\nrotate_keks_every_s = 2592001\n", "[jobs]"),
        ("", "[jobs]\nverify_every = 60\n", "unknown field"),
        ("", "[privacy]\nentity_field = \"\"\n", "entity_field"),
        ("", "[privacy]\nentity_field = \"a..b\"\n", "entity_field"),
        ("", "[privacy]\nentity_field = \"a\\nb\"\n", "entity_field"),
        (
            "",
            "[privacy]\nerase_timeout_secs = 0\n",
            "erase_timeout_secs",
        ),
        ("", "[privacy]\nfield = \"x\"\n", "unknown field"),
        ("snapshot_every_hours = 8761", "", "snapshot_every_hours"),
        ("snapshot_keep = 0", "", "snapshot_keep"),
        ("", "[snapshots]\nmax_files = 0\n", "max_files"),
        ("", "[snapshots]\nmax_bytes = 1\n", "max_bytes"),
        ("", "[snapshots]\nevery = 1\n", "unknown field"),
    ] {
        let err = format!("{:#}", with(tier_line, jobs).err().expect(want));
        assert!(err.contains(want), "{tier_line} {jobs}: {err}");
    }
}

#[test]
fn the_dashboard_and_outbound_sections_are_read_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "google.secret", "a-client-secret", 0o600);
    let section = r#"
[outbound]
allow_hosts = ["idp.internal:8443"]

[dashboard]
public_url = "https://vaultvec.example/"
session_idle_s = 600

[[dashboard.oidc]]
name = "google"
issuer = "https://accounts.google.com"
client_id = "the-client"
client_secret_file = "google.secret"

[dashboard.github]
client_id = "the-github-client"
client_secret_file = "google.secret"
"#;
    let config = Config::load(&write_config(dir.path(), section)).unwrap();
    assert_eq!(config.outbound.allow_hosts, ["idp.internal:8443"]);
    let dashboard = config.dashboard.unwrap();
    assert_eq!(dashboard.public_url.as_str(), "https://vaultvec.example/");
    assert_eq!(dashboard.idle.as_secs(), 600);
    assert_eq!(dashboard.absolute.as_secs(), 43_200);
    assert_eq!(dashboard.providers[0].name, "google");
    assert_eq!(&*dashboard.providers[0].client_secret, "a-client-secret");
    assert_eq!(dashboard.providers[1].name, "github");
    assert!(matches!(
        &dashboard.providers[1].kind,
        crate::dashboard::ProviderKind::Github { api_url, .. } if api_url.as_str() == "https://api.github.com/"
    ));
    assert!(!format!("{dashboard:?}").contains("a-client-secret"));
    // Plain http, a provider name that cannot be a path segment, a secret others can read.
    for (from, to) in [
        ("https://vaultvec.example/", "http://vaultvec.example/"),
        ("name = \"google\"", "name = \"Goo/gle\""),
    ] {
        let bad = section.replace(from, to);
        assert!(
            Config::load(&write_config(dir.path(), &bad)).is_err(),
            "{to}"
        );
    }
    write(dir.path(), "google.secret", "a-client-secret", 0o644);
    assert!(Config::load(&write_config(dir.path(), section)).is_err());
    // Without the sections: no dashboard, no allowances.
    let config = Config::load(&write_config(dir.path(), "")).unwrap();
    assert!(config.dashboard.is_none() && config.outbound.allow_hosts.is_empty());
}

#[test]
fn the_example_mail_relay_and_anomaly_policy_parse() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), "");
    let example = example_config();
    // Uncomment the [mail] table.
    let mut in_mail = false;
    let lines: Vec<String> = example
        .lines()
        .map(|line| {
            if line == "# [mail]" {
                in_mail = true;
            } else if line.is_empty() {
                in_mail = false;
            }
            match line.strip_prefix("# ") {
                Some(rest) if in_mail => rest.to_owned(),
                _ => line.to_owned(),
            }
        })
        .collect();
    fs::create_dir_all(dir.path().join("secrets")).unwrap();
    write(
        dir.path(),
        "secrets/smtp.password",
        "hunter2-but-longer",
        0o600,
    );
    let path = write(dir.path(), "example.toml", &lines.join("\n"), 0o600);
    let config = Config::load(&path).unwrap();
    let mail = config.mail.expect("[mail]");
    assert_eq!(mail.tls, crate::mail::MailTls::Implicit);
    assert_eq!(mail.port, 465);
    assert_eq!(mail.from.email.to_string(), "alerts@example.com");
    // The password is not in the debug form.
    assert!(!format!("{mail:?}").contains("hunter2"));
    let pro = &config.tiers["pro"].anomaly;
    assert_eq!(pro.threshold, 8.0);
    assert!(!pro.auto_pause);
    assert_eq!(
        config.tiers["free"].anomaly,
        crate::billing::AnomalyPolicy::default()
    );
}
