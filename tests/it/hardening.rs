//! Process hardening of the real binaries: both make themselves non-dumpable at startup
//! (`prctl(PR_SET_DUMPABLE, 0)`, INV-08), so no core dump or same-user ptrace can read the keys
//! and plaintext they hold.
//!
//! The check is the kernel's own (proc(5)): the files of a non-dumpable process under `/proc/<pid>`
//! are owned by root whatever user it runs as. So the binary runs as a user other than root (`nobody`
//! when the test runs as root, else the test's own user), and `/proc/<pid>/{mem,environ,status}`
//! must be owned by root once the
//! process has shown it is past startup (the worker dialled us; the coordinator printed its ports).

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use tests::binary;

/// `nobody`, for the binaries started by a test running as root.
const NOBODY: u32 = 65534;

/// The uid the binary runs as: never root, so a root-owned `/proc/<pid>` means non-dumpable.
fn run_as() -> Option<u32> {
    let me = std::fs::metadata("/proc/self").expect("/proc/self").uid();
    (me == 0).then_some(NOBODY)
}

/// Hands `dir` and everything under it to `uid` (when the binary runs as another user).
fn give(dir: &Path, uid: Option<u32>) {
    let Some(uid) = uid else { return };
    std::os::unix::fs::chown(dir, Some(uid), Some(uid)).expect("chown");
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            give(&path, Some(uid));
        } else {
            std::os::unix::fs::chown(&path, Some(uid), Some(uid)).expect("chown");
        }
    }
}

fn spawn(mut command: Command, uid: Option<u32>) -> Child {
    if let Some(uid) = uid {
        command.uid(uid).gid(uid);
    }
    command.spawn().expect("starting the binary")
}

/// Asserts that the running `child` is not dumpable: it runs as a user other than root, and the
/// kernel made root the owner of the files in its `/proc/<pid>`.
fn assert_not_dumpable(child: &Child, name: &str) {
    let proc_dir = format!("/proc/{}", child.id());
    let status = std::fs::read_to_string(format!("{proc_dir}/status")).expect("status");
    let uid_line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("Uid line");
    assert!(
        !uid_line.split_whitespace().skip(1).any(|uid| uid == "0"),
        "{name} must run as a user other than root for this check: {uid_line}"
    );
    for file in ["mem", "environ", "status"] {
        let owner = std::fs::metadata(format!("{proc_dir}/{file}"))
            .expect("/proc/<pid> file")
            .uid();
        assert_eq!(
            owner, 0,
            "{name} is dumpable: /proc/<pid>/{file} is owned by uid {owner}, not root (PR_SET_DUMPABLE not cleared)"
        );
    }
}

#[test]
fn the_worker_process_is_not_dumpable() {
    let uid = run_as();
    let dir = tempfile::tempdir().expect("tempdir");
    // A fake coordinator: the worker's TCP connection shows that it is past startup.
    let coordinator = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let token_file = dir.path().join("token");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&token_file)
        .expect("token file");
    std::io::Write::write_all(&mut file, b"a-token-of-twenty-four-chars").expect("token");
    let config = dir.path().join("worker.toml");
    std::fs::write(
        &config,
        format!(
            "worker_id = \"w\"\ncoordinator_url = \"ws://{}/v1/cluster\"\ntoken_file = \"{}\"\ndata_dir = \"{}\"\n",
            coordinator.local_addr().expect("addr"),
            token_file.display(),
            dir.path().join("data").display()
        ),
    )
    .expect("config");
    give(dir.path(), uid);
    let mut command = Command::new(binary("vaultvec-worker"));
    command
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = spawn(command, uid);
    let (_conn, _) = coordinator
        .accept()
        .expect("the worker dials the coordinator");
    let result = std::panic::catch_unwind(|| assert_not_dumpable(&child, "vaultvec-worker"));
    child.kill().expect("kill");
    child.wait().expect("wait");
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn the_coordinator_process_is_not_dumpable() {
    let uid = run_as();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let init = Command::new(binary("vaultvec-coordinator"))
        .arg("init")
        .arg("--dir")
        .arg(&data)
        .stdout(Stdio::null())
        .output()
        .expect("init");
    assert!(init.status.success(), "init failed: {init:?}");
    // Every listener on port 0: the coordinator prints the ports it got.
    let config = data.join("coordinator.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    let mut rewritten = String::new();
    for line in text.lines() {
        match line.find("127.0.0.1:") {
            Some(at) => rewritten.push_str(&format!("{}127.0.0.1:0\"", &line[..at])),
            None => rewritten.push_str(line),
        }
        rewritten.push('\n');
    }
    assert_ne!(text, rewritten, "the config names no loopback listener");
    std::fs::write(&config, rewritten).expect("config");
    give(dir.path(), uid);
    let mut command = Command::new(binary("vaultvec-coordinator"));
    command
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = spawn(command, uid);
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    let result = std::panic::catch_unwind(|| {
        assert!(line.starts_with("listening "), "coordinator said {line:?}");
        assert_not_dumpable(&child, "vaultvec-coordinator");
    });
    child.kill().expect("kill");
    child.wait().expect("wait");
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// Every entry under `dir`, with its path relative to `dir` and its permission bits.
fn modes(dir: &Path, out: &mut Vec<(String, bool, u32)>) {
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        let meta = std::fs::symlink_metadata(&path).expect("metadata");
        out.push((
            path.display().to_string(),
            meta.is_dir(),
            meta.mode() & 0o7777,
        ));
        if meta.is_dir() {
            modes(&path, out);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_files_are_0600_and_directories_0700() {
    let mut cluster = tests::Cluster::start(1).await;
    let key = cluster.tenant("modes", None).await;
    cluster.create_collection(&key, "c", 2).await;
    let (s, v) = cluster
        .http(
            "PUT",
            "/v1/collections/c/points",
            Some(&key),
            Some(serde_json::json!({"points": [{"id": 1, "vector": [1.0, 2.0], "payload": {"a": 1}}]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    // A graceful stop flushes and writes the MANIFEST again.
    cluster.stop_worker(0).await;

    let mut entries = Vec::new();
    // The worker's whole data directory (engine root, tenants, collections, WAL, MANIFEST) and
    // the coordinator's tenant KEK files, all written by storage.
    let root = cluster.worker_dir(0);
    let meta = std::fs::metadata(&root).expect("worker dir");
    entries.push((root.display().to_string(), true, meta.mode() & 0o7777));
    modes(&root, &mut entries);
    modes(
        &cluster.dir().join("coordinator").join("keks"),
        &mut entries,
    );
    let tenant_files = entries
        .iter()
        .filter(|(path, is_dir, _)| !is_dir && path.contains("/modes/"))
        .count();
    assert!(
        tenant_files >= 2,
        "expected WAL and MANIFEST files: {entries:?}"
    );
    let wrong: Vec<_> = entries
        .iter()
        .filter(|(_, is_dir, mode)| *mode != if *is_dir { 0o700 } else { 0o600 })
        .map(|(path, is_dir, mode)| {
            format!(
                "{path} ({}) {mode:04o}",
                if *is_dir { "dir" } else { "file" }
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "files must be 0600 and directories 0700:\n{}",
        wrong.join("\n")
    );
    cluster.shutdown().await;
}

/// The coordinator works through large messages on its background-priority pool, so a tenant's
/// megabytes of JSON yield the cores to other tenants' small requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_are_worked_through_at_background_priority() {
    let cluster = tests::Cluster::start_without_workers(0, |_| {}).await;
    let idle = cluster
        .service()
        .heavy(|| storage::process::this_thread_is_idle_class().expect("sched_getscheduler"))
        .await
        .expect("the pool answers");
    assert!(idle, "the large-message pool runs in the SCHED_IDLE class");
    cluster.shutdown().await;
}
