//! The conformance scripts `tests/pika/conformance.py` (core protocol) and
//! `tests/pika/extensions.py` (RabbitMQ's extensions), run through Python's pika client. Every
//! expectation in them was checked against a real RabbitMQ first (see their headers); where
//! RabbitMQ 4 differs from the 3.10 they were run against, the scripts follow the version the
//! broker advertises and say so.

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
