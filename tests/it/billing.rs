//! Billing anomalies and mail, on a clock the test moves, with a real SMTP relay
//! (`tests/python/smtp_server.py`, aiosmtpd over TLS on loopback) reached through the outbound
//! guard with an explicit allowance:
//! - a tenant's hourly requests jump past its baseline: the anomaly is recorded and audited, the
//!   tenant (whose tier says so) is paused, and the mail to its owners, notification addresses and
//!   the operators waits while the relay is down, then arrives over STARTTLS naming the audit row;
//! - a test mail over implicit TLS; a relay that does not offer STARTTLS is sent nothing (no
//!   downgrade to plain text).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use coordinator::billing::ANOMALIES;
use coordinator::config::Config;
use coordinator::jobs::{CENSUS, ManualClock};
use coordinator::mail::{MailConfig, MailTls, SEND_MAIL};
use coordinator::outbound::OutboundConfig;
use serde_json::{Value, json};
use tests::{Cluster, TestCa};
use tokio::io::AsyncBufReadExt;

use super::cluster::audit_rows;
use super::python::repo_root;

/// An hour boundary.
const T0: u64 = 1_800_000_000_000;
const HOUR: Duration = Duration::from_secs(3600);
const MINUTE: Duration = Duration::from_secs(60);
/// An operator's address (`[dashboard] operators`).
const OPERATOR: &str = "root@ops.example";
/// Hours of steady usage before the spike: more than the 7 days the watch looks back.
const BASELINE_HOURS: u64 = 170;

/// The mail and outbound settings and clock of the cluster the next `start_without_workers`
/// makes (nextest runs each test in a process of its own).
static SETUP: Mutex<Option<(MailConfig, OutboundConfig, Arc<ManualClock>)>> = Mutex::new(None);

fn with_mail(config: &mut Config) {
    let (mail, outbound, clock) = SETUP.lock().unwrap().clone().expect("the setup");
    config.mail = Some(mail);
    config.outbound = outbound;
    // Operators hear of every anomaly (no login provider is needed for that).
    config.dashboard = Some(coordinator::dashboard::DashboardConfig {
        public_url: url::Url::parse("https://vaultvec.test").unwrap(),
        idle: Duration::from_secs(1800),
        absolute: Duration::from_secs(43_200),
        providers: Vec::new(),
        operators: vec![OPERATOR.into()],
    });
    config.clock = clock;
    let pro = config.tiers.get_mut("pro").unwrap();
    pro.anomaly.min_hourly = 20;
    pro.anomaly.min_stored_bytes = 1024;
    pro.anomaly.auto_pause = true;
}

/// A relay the test runs: its port and the messages it accepted, one JSON object a line.
struct Relay {
    port: u16,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    _child: tokio::process::Child,
}

impl Relay {
    async fn start(dir: &std::path::Path, mode: &str, port: u16) -> Relay {
        let python = super::python::venv_python();
        let mut child = tokio::process::Command::new(python)
            .arg(repo_root().join("tests/python/smtp_server.py"))
            .args([dir.join("relay.pem"), dir.join("relay.key")])
            .args([mode, &port.to_string()])
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let port = loop {
            let line = next_line(&mut lines).await;
            if let Some(port) = line.strip_prefix("PORT ") {
                break port.trim().parse().unwrap();
            }
        };
        Relay {
            port,
            lines,
            _child: child,
        }
    }

    /// The next message the relay accepted.
    async fn mail(&mut self) -> Value {
        loop {
            let line = next_line(&mut self.lines).await;
            if let Some(json) = line.strip_prefix("MAIL ") {
                return serde_json::from_str(json).unwrap();
            }
        }
    }
}

async fn next_line(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> String {
    tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the relay said nothing in a minute")
        .unwrap()
        .expect("the relay exited")
}

/// The relay's TLS material (for `localhost`, from a CA the outbound guard is told to trust).
fn relay_files(dir: &std::path::Path) -> std::path::PathBuf {
    let ca = TestCa::new("mail test CA");
    let (cert, key) = ca.server_cert();
    std::fs::write(dir.join("relay.pem"), cert).unwrap();
    std::fs::write(dir.join("relay.key"), key).unwrap();
    let ca_file = dir.join("ca.pem");
    ca.write_cert(&ca_file);
    ca_file
}

/// A port on loopback nothing listens on (bound, then let go).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A cluster that sends mail to `localhost:port`, trusting `ca_file`.
async fn start(
    ca_file: std::path::PathBuf,
    tls: MailTls,
    port: u16,
) -> (Cluster, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(T0));
    let mail = MailConfig {
        host: "localhost".into(),
        port,
        tls,
        from: "vaultvec <alerts@vaultvec.test>".parse().unwrap(),
        credentials: None,
    };
    let outbound = OutboundConfig {
        allow_hosts: vec![format!("localhost:{port}")],
        ca_file: Some(ca_file),
    };
    *SETUP.lock().unwrap() = Some((mail, outbound, clock.clone()));
    let mut cluster = Cluster::start_without_workers(1, with_mail).await;
    cluster.start_worker(0).await;
    (cluster, clock)
}

/// Runs of job `name` so far.
async fn runs(cluster: &Cluster, name: &str) -> u64 {
    super::jobs::job(cluster, name).await["runs"]
        .as_u64()
        .unwrap()
}

/// Moves the clock by `by` and waits for job `name`'s next run.
async fn advance_for(cluster: &Cluster, clock: &ManualClock, by: Duration, name: &str) {
    let before = runs(cluster, name).await;
    clock.advance(by);
    cluster.service().wait_for_job_runs(name, before + 1).await;
}

async fn requests(cluster: &Cluster, key: &str, n: usize) {
    for _ in 0..n {
        let (status, body) = cluster
            .http("GET", "/v1/collections", Some(key), None)
            .await;
        assert_eq!(status, 200, "{body}");
    }
}

async fn outbox(cluster: &Cluster) -> Vec<Value> {
    let (status, body) = cluster.admin("GET", "/admin/v1/outbox", None).await;
    assert_eq!(status, 200, "{body}");
    body["mail"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spike_is_audited_pauses_the_tenant_and_its_mail_arrives_once_the_relay_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let ca_file = relay_files(dir.path());
    let (cluster, clock) = start(ca_file, MailTls::Starttls, port).await;
    let key = cluster.tenant("acme", Some("pro")).await;
    let quiet = cluster.tenant("quiet", Some("pro")).await;
    let (status, body) = cluster
        .admin(
            "POST",
            "/admin/v1/tenants/acme/members",
            Some(json!({"email": "alice@acme.example", "role": "owner"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    cluster
        .service()
        .set_tenant_settings_as("admin", "acme", "billing@acme.example", "")
        .unwrap();
    // A steady baseline: 3 requests an hour for a week and a bit (under the tier's floor of 20
    // an hour, so nothing in it is an anomaly whatever its score).
    for _ in 0..BASELINE_HOURS {
        requests(&cluster, &key, 3).await;
        requests(&cluster, &quiet, 3).await;
        advance_for(&cluster, &clock, HOUR, ANOMALIES).await;
    }
    let (_, body) = cluster
        .admin("GET", "/admin/v1/tenants/acme/anomalies", None)
        .await;
    assert_eq!(body["anomalies"], json!([]), "{body}");
    // The spike: 60 requests in one hour; the quiet tenant keeps its pace.
    requests(&cluster, &key, 60).await;
    requests(&cluster, &quiet, 3).await;
    advance_for(&cluster, &clock, HOUR, ANOMALIES).await;

    let (_, body) = cluster
        .admin("GET", "/admin/v1/tenants/acme/anomalies", None)
        .await;
    let anomalies = body["anomalies"].as_array().unwrap();
    assert_eq!(anomalies.len(), 1, "{body}");
    let anomaly = &anomalies[0];
    assert_eq!(anomaly["metric"], "requests", "{anomaly}");
    assert_eq!(anomaly["value"], 60, "{anomaly}");
    assert_eq!(anomaly["median"], 3.0, "{anomaly}");
    assert_eq!(
        anomaly["period_ms"],
        T0 + BASELINE_HOURS * 3_600_000,
        "{anomaly}"
    );
    assert!(anomaly["paused_ms"].is_u64(), "{anomaly}");
    let seq = anomaly["audit_seq"].as_u64().unwrap();
    // Its audit row, on the tenant's chain, by the system.
    let (_, export) = cluster.admin("GET", "/admin/v1/audit/acme", None).await;
    let rows = audit_rows(&export, "billing.anomaly");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["seq"], seq);
    assert_eq!(rows[0]["actor"], "system");
    assert_eq!(rows[0]["details"]["value"], 60);
    let hash = rows[0]["hash"].as_str().unwrap().to_owned();
    let pauses = audit_rows(&export, "tenant.pause");
    assert_eq!(pauses.len(), 1, "{pauses:?}");
    assert_eq!(pauses[0]["actor"], "system");
    // Paused: its requests are refused; the quiet tenant is neither flagged nor paused.
    let (status, body) = cluster
        .http("GET", "/v1/collections", Some(&key), None)
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(body.to_string().contains("paused"), "{body}");
    let (_, body) = cluster
        .admin("GET", "/admin/v1/tenants/quiet/anomalies", None)
        .await;
    assert_eq!(body["anomalies"], json!([]), "{body}");
    requests(&cluster, &quiet, 1).await;

    // The relay is down: the mail waits, tried again later, never dropped.
    advance_for(&cluster, &clock, MINUTE, SEND_MAIL).await;
    let queued = outbox(&cluster).await;
    assert_eq!(queued.len(), 3, "{queued:?}");
    assert_eq!(cluster.metric("vaultvec_billing_anomalies_total").await, 1);
    assert_eq!(cluster.metric("vaultvec_mail_waiting").await, 3);
    // Queued by the anomaly watch a minute (of the test clock) before this run.
    assert!(cluster.metric("vaultvec_mail_oldest_waiting_seconds").await >= 60);
    assert_eq!(cluster.metric("vaultvec_mail_failed_total").await, 3);
    for mail in &queued {
        assert_eq!(mail["audit_ref"], format!("acme#{seq}"), "{mail}");
        assert!(mail["sent_ms"].is_null(), "{mail}");
        assert!(mail["attempts"].as_u64().unwrap() >= 1, "{mail}");
        assert!(
            mail["last_error"].as_str().unwrap().contains("connect"),
            "{mail}"
        );
    }
    // Back: the next attempts deliver them, over STARTTLS, naming the audit row.
    let mut relay = Relay::start(dir.path(), "starttls", port).await;
    assert_eq!(relay.port, port);
    advance_for(&cluster, &clock, 2 * MINUTE, SEND_MAIL).await;
    let mut to = Vec::new();
    for _ in 0..3 {
        let mail = relay.mail().await;
        assert_eq!(mail["tls"], true, "{mail}");
        assert_eq!(mail["mail_from"], "alerts@vaultvec.test");
        assert_eq!(
            mail["subject"],
            "[vaultvec] unusual requests for tenant acme"
        );
        let content = mail["body"].as_str().unwrap();
        assert!(
            content.contains(&format!(
                "Audit reference: chain acme, row {seq}, hash {hash}"
            )),
            "{content}"
        );
        to.extend(mail["rcpt_tos"].as_array().unwrap().clone());
    }
    to.sort_by_key(|v| v.to_string());
    assert_eq!(
        to,
        [
            json!("alice@acme.example"),
            json!("billing@acme.example"),
            json!(OPERATOR)
        ]
    );
    let sent = outbox(&cluster).await;
    assert!(sent.iter().all(|m| m["sent_ms"].is_u64()), "{sent:?}");
    assert_eq!(cluster.metric("vaultvec_mail_sent_total").await, 3);
    assert_eq!(cluster.metric("vaultvec_mail_waiting").await, 0);
    assert_eq!(
        cluster.metric("vaultvec_mail_oldest_waiting_seconds").await,
        0
    );
    // The same hour is never reported twice.
    let before = runs(&cluster, ANOMALIES).await;
    clock.advance(HOUR);
    cluster
        .service()
        .wait_for_job_runs(ANOMALIES, before + 1)
        .await;
    let (_, body) = cluster
        .admin("GET", "/admin/v1/tenants/acme/anomalies", None)
        .await;
    assert_eq!(body["anomalies"].as_array().unwrap().len(), 1, "{body}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_mail_goes_over_implicit_tls_naming_its_audit_row() {
    let dir = tempfile::tempdir().unwrap();
    let ca_file = relay_files(dir.path());
    let mut relay = Relay::start(dir.path(), "implicit", 0).await;
    let (cluster, clock) = start(ca_file, MailTls::Implicit, relay.port).await;
    for bad in ["not an address", "", "a@b@c"] {
        let (status, body) = cluster
            .admin("POST", "/admin/v1/mail/test", Some(json!({ "to": bad })))
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, body) = cluster
        .admin(
            "POST",
            "/admin/v1/mail/test",
            Some(json!({ "to": "Ops@Vaultvec.test" })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let seq = body["audit_seq"].as_u64().unwrap();
    advance_for(&cluster, &clock, MINUTE, SEND_MAIL).await;
    let mail = relay.mail().await;
    assert_eq!(mail["tls"], true, "{mail}");
    assert_eq!(mail["rcpt_tos"], json!(["ops@vaultvec.test"]));
    assert!(
        mail["body"]
            .as_str()
            .unwrap()
            .contains(&format!("Audit reference: chain platform, row {seq},")),
        "{mail}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_does_not_offer_starttls_is_sent_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ca_file = relay_files(dir.path());
    let relay = Relay::start(dir.path(), "plain", 0).await;
    let (cluster, clock) = start(ca_file, MailTls::Starttls, relay.port).await;
    let (status, body) = cluster
        .admin(
            "POST",
            "/admin/v1/mail/test",
            Some(json!({ "to": "ops@vaultvec.test" })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    advance_for(&cluster, &clock, MINUTE, SEND_MAIL).await;
    let mail = &outbox(&cluster).await[0];
    assert!(mail["sent_ms"].is_null(), "{mail}");
    assert!(
        mail["last_error"]
            .as_str()
            .unwrap()
            .contains("does not offer STARTTLS"),
        "{mail}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_bytes_that_jump_past_the_census_baseline_are_an_anomaly() {
    let dir = tempfile::tempdir().unwrap();
    let ca_file = relay_files(dir.path());
    let (cluster, clock) = start(ca_file, MailTls::Starttls, free_port()).await;
    let key = cluster.tenant("acme", Some("pro")).await;
    cluster.create_collection(&key, "docs", 4).await;
    // Four census days of slow growth: 20 points a day.
    for day in 0..4u64 {
        crate::snapshots::put(&cluster, &key, day * 20..(day + 1) * 20, "a").await;
        advance_for(&cluster, &clock, 24 * HOUR, CENSUS).await;
    }
    let (_, body) = cluster
        .admin("GET", "/admin/v1/tenants/acme/anomalies", None)
        .await;
    assert!(
        !body.to_string().contains("stored_bytes"),
        "slow growth is not an anomaly: {body}"
    );
    // Then 2,000 points in a day; the census records them, the next watch judges that day.
    crate::snapshots::put(&cluster, &key, 100..2100, "b").await;
    advance_for(&cluster, &clock, 24 * HOUR, CENSUS).await;
    advance_for(&cluster, &clock, HOUR, ANOMALIES).await;
    let (_, body) = cluster
        .admin("GET", "/admin/v1/tenants/acme/anomalies", None)
        .await;
    let bytes: Vec<&Value> = body["anomalies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["metric"] == "stored_bytes")
        .collect();
    assert_eq!(bytes.len(), 1, "{body}");
    assert_eq!(bytes[0]["period_len_ms"], 86_400_000, "{body}");
    assert!(
        bytes[0]["value"].as_f64().unwrap() > 10.0 * bytes[0]["median"].as_f64().unwrap(),
        "{body}"
    );
    let (_, export) = cluster.admin("GET", "/admin/v1/audit/acme", None).await;
    let rows = audit_rows(&export, "billing.anomaly");
    assert!(
        rows.iter()
            .any(|r| r["seq"] == bytes[0]["audit_seq"] && r["details"]["metric"] == "stored_bytes"),
        "{rows:?}"
    );
    cluster.shutdown().await;
}
