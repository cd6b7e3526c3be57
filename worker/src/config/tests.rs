use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use super::{Config, parse_duration};

fn write_token(dir: &Path, mode: u32) -> std::path::PathBuf {
    let path = dir.join("worker.token");
    fs::write(&path, "s3cret-token\n").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn write_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let token = dir.join("worker.token");
    let text = format!(
        "worker_id = \"worker-a\"\n\
         coordinator_url = \"ws://127.0.0.1:7001/v1/cluster\"\n\
         token_file = {token:?}\n\
         data_dir = {data:?}\n{extra}",
        data = dir.join("data"),
    );
    let path = dir.join("worker.toml");
    fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_minimal_file_gets_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    write_token(dir.path(), 0o600);
    let config = Config::load(&write_config(dir.path(), "")).unwrap();
    assert_eq!(config.token.as_str(), "s3cret-token");
    assert_eq!(config.heartbeat_interval, Duration::from_secs(1));
    assert_eq!(config.limits, storage::Limits::default());
    assert!(!format!("{config:?}").contains("s3cret"));
}

#[test]
fn every_key_can_be_set() {
    let dir = tempfile::tempdir().unwrap();
    write_token(dir.path(), 0o400);
    let extra = "memory_budget_bytes = 1000\nmax_in_flight = 3\nheartbeat_interval = \"500ms\"\n\
                 reconnect_max_backoff = 7\nidle_unload_after = \"2m\"\n[limits]\nmax_top_k = 5\nmax_batch = 10\n\
                 segment_points = 10\nindex_threads = 1\n";
    let config = Config::load(&write_config(dir.path(), extra)).unwrap();
    assert_eq!(config.memory_budget_bytes, 1000);
    assert_eq!(config.max_in_flight, 3);
    assert_eq!(config.heartbeat_interval, Duration::from_millis(500));
    assert_eq!(config.reconnect_max_backoff, Duration::from_secs(7));
    assert_eq!(config.idle_unload_after, Some(Duration::from_secs(120)));
    assert_eq!(config.limits.max_top_k, 5);
    assert_eq!(config.limits.max_batch, 10);
}

#[test]
fn unknown_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_token(dir.path(), 0o600);
    let err = Config::load(&write_config(dir.path(), "token = \"inline\"\n")).unwrap_err();
    assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
    let err = Config::load(&write_config(dir.path(), "[limits]\nmax_k = 1\n")).unwrap_err();
    assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
    let err = Config::load(&write_config(dir.path(), "ca_path = \"/ca.pem\"\n")).unwrap_err();
    assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
}

#[test]
fn a_token_file_others_can_read_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    write_token(dir.path(), 0o644);
    let err = Config::load(&write_config(dir.path(), "")).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("chmod 600"), "{msg}");
    assert!(!msg.contains("s3cret"), "{msg}");
}

/// A self-signed CA certificate, as PEM.
fn ca_pem() -> String {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().pem()
}

fn write_wss_config(dir: &Path, ca_file: &str) -> std::path::PathBuf {
    let path = write_config(dir, &format!("ca_file = {ca_file:?}\n"));
    let text = fs::read_to_string(&path)
        .unwrap()
        .replace("ws://127.0.0.1", "wss://127.0.0.1");
    fs::write(&path, text).unwrap();
    path
}

#[test]
fn wss_with_a_ca_file_loads_its_roots() {
    let dir = tempfile::tempdir().unwrap();
    write_token(dir.path(), 0o600);
    let ca = dir.path().join("ca.pem");
    fs::write(&ca, ca_pem() + &ca_pem()).unwrap();
    let config = Config::load(&write_wss_config(dir.path(), ca.to_str().unwrap())).unwrap();
    assert_eq!(config.coordinator_url, "wss://127.0.0.1:7001/v1/cluster");
    assert_eq!(config.ca_file.as_deref(), Some(ca.as_path()));
    assert!(config.tls_client_config().unwrap().is_some());
    assert!(format!("{config:?}").contains("ca.pem"));
}

#[test]
fn a_bad_or_missing_ca_file_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    write_token(dir.path(), 0o600);
    let missing = dir.path().join("missing.pem");
    let err = Config::load(&write_wss_config(dir.path(), missing.to_str().unwrap())).unwrap_err();
    assert!(format!("{err:#}").contains("missing.pem"), "{err:#}");

    let empty = dir.path().join("empty.pem");
    fs::write(&empty, "no certificates here\n").unwrap();
    let err = Config::load(&write_wss_config(dir.path(), empty.to_str().unwrap())).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("empty.pem") && msg.contains("no PEM CERTIFICATE"),
        "{msg}"
    );

    let broken = dir.path().join("broken.pem");
    fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = Config::load(&write_wss_config(dir.path(), broken.to_str().unwrap())).unwrap_err();
    assert!(format!("{err:#}").contains("broken.pem"), "{err:#}");
}

#[test]
fn a_ca_file_with_plain_ws_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_token(dir.path(), 0o600);
    let ca = dir.path().join("ca.pem");
    fs::write(&ca, ca_pem()).unwrap();
    let path = write_config(dir.path(), &format!("ca_file = {ca:?}\n"));
    let err = Config::load(&path).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("ca_file") && msg.contains("wss://"), "{msg}");
}

#[test]
fn schemes_and_bad_values_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests("w", "ws://127.0.0.1:1/v1/cluster", "t", dir.path());
    config.validate().unwrap();
    config.coordinator_url = "wss://example.com/v1/cluster".into();
    config.validate().unwrap();
    config.coordinator_url = "http://example.com".into();
    let msg = format!("{:#}", config.validate().unwrap_err());
    assert!(msg.contains("ws://") && msg.contains("wss://"), "{msg}");
    config.coordinator_url = "ws://h/v1/cluster".into();
    config.ca_file = Some("/ca.pem".into());
    assert!(config.validate().is_err());
    let mut config = Config::for_tests("bad id", "ws://h/v1/cluster", "t", dir.path());
    assert!(config.validate().is_err());
    config.worker_id = "w".into();
    config.max_in_flight = 0;
    assert!(config.validate().is_err());
    config.max_in_flight = 1;
    config.heartbeat_interval = Duration::from_secs(u64::MAX);
    assert!(config.validate().is_err());
    config.heartbeat_interval = Duration::from_secs(1);
    config.token = zeroize::Zeroizing::new("has space".into());
    assert!(config.validate().is_err());
}

#[test]
fn durations_parse() {
    assert_eq!(parse_duration("15s").unwrap(), Duration::from_secs(15));
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
    assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
    for bad in [
        "",
        "s",
        "1.5s",
        "-1s",
        "10 parsecs",
        "99999999999999999999h",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn the_example_config_parses() {
    let dir = tempfile::tempdir().unwrap();
    let token = write_token(dir.path(), 0o600);
    let example = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/worker.example.toml"))
        .unwrap()
        .replace("/etc/vaultvec/worker-a.token", token.to_str().unwrap());
    let path = dir.path().join("example.toml");
    fs::write(&path, example).unwrap();
    let config = Config::load(&path).unwrap();
    assert_eq!(config.worker_id, "worker-a");
}

#[test]
fn idle_unloading_defaults_to_five_minutes_and_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    write_token(dir.path(), 0o600);
    let config = Config::load(&write_config(dir.path(), "")).unwrap();
    assert_eq!(config.idle_unload_after, Some(Duration::from_secs(300)));
    let off = "idle_unload_after = \"0s\"\n";
    let config = Config::load(&write_config(dir.path(), off)).unwrap();
    assert_eq!(config.idle_unload_after, None);
    for bad in [
        "idle_unload_after = \"500ms\"\n",
        "idle_unload_after = \"745h\"\n",
    ] {
        let err = Config::load(&write_config(dir.path(), bad)).unwrap_err();
        assert!(
            format!("{err:#}").contains("idle_unload_after"),
            "{bad}: {err:#}"
        );
    }
}
