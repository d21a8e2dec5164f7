//! The conformance scripts `tests/pika/conformance.py` (core protocol) and
//! `tests/pika/extensions.py` (RabbitMQ's extensions), run through Python's pika client. Every
//! expectation in them was checked against a real RabbitMQ first (see their headers); where
//! RabbitMQ 4 differs from the 3.10 they were run against, the scripts follow the version the
//! broker advertises and say so. `tests/pika/quorum_failover.py` runs a quorum queue through
//! a leader's loss on a three-node cluster.

use std::path::Path;
use std::process::Stdio;

use tokio::process::Command;
use warren_testkit::TestBroker;
use warren_tests::require;

async fn pika_available() -> bool {
    // From a neutral directory: in this crate's own, `tests/pika/` passes for a namespace package.
    Command::new("python3")
        .args(["-c", "import pika"])
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|status| status.success())
}

/// Runs one script against a fresh broker and fails with its output if any check failed.
async fn run_script(name: &str) {
    if !require(
        "python3 with pika",
        pika_available().await,
        "pip install pika",
    ) {
        return;
    }
    let broker = TestBroker::start().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("pika")
        .join(name);
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(180),
        Command::new("python3")
            .arg(&script)
            .arg(broker.url())
            .output(),
    )
    .await
    .expect("the script finishes within its budget")
    .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "{name} failed:\n{stdout}\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pika_core_conformance() {
    run_script("conformance.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pika_extensions_conformance() {
    run_script("extensions.py").await;
}

/// `tests/pika/quorum_failover.py`: a quorum queue on three in-process nodes, declared through
/// the first, published to through the second and consumed through the third; once the script
/// says it is half-way, the first node (the queue's leader) stops, and the script's publisher
/// and consumer go on, on the same channels, with nothing confirmed lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pika_quorum_queue_failover() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    if !require(
        "python3 with pika",
        pika_available().await,
        "pip install pika",
    ) {
        return;
    }
    let mut cluster = warren_testkit::TestCluster::builder()
        .nodes(3)
        .build()
        .await;
    cluster
        .wait_for_members(3, std::time::Duration::from_secs(20))
        .await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("pika")
        .join("quorum_failover.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .args((0..3).map(|index| cluster.node(index).url()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let budget = std::time::Duration::from_secs(120);
    let ready = tokio::time::timeout(budget, stdout.next_line()).await;
    if !matches!(&ready, Ok(Ok(Some(line))) if line == "ready") {
        let output = child.wait_with_output().await.expect("the script's output");
        panic!(
            "the script did not get half-way ({ready:?}):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    cluster.stop_node(0).await;
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"go\n").await.expect("go");
    drop(stdin);
    let last = tokio::time::timeout(budget, stdout.next_line()).await;
    let output = tokio::time::timeout(budget, child.wait_with_output())
        .await
        .expect("the script finishes")
        .expect("its output");
    assert!(
        output.status.success() && matches!(&last, Ok(Ok(Some(line))) if line == "ok"),
        "quorum_failover.py failed ({last:?}):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    cluster.stop().await;
}
