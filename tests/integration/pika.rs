//! The conformance script `tests/pika/conformance.py`, run through Python's pika client. Every
//! expectation in it was checked against a real RabbitMQ first (see its header).

use std::path::Path;
use std::process::Stdio;

use tokio::process::Command;
use warren_testkit::TestBroker;
use warren_tests::require;

/// Checks of the script that exercise RabbitMQ extensions this build does not have yet.
const NOT_YET: &[&str] = &["-queue_declare_invalid_args", "-direct_reply_to"];

async fn pika_available() -> bool {
    Command::new("python3")
        .args(["-c", "import pika"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|status| status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pika_conformance_script_passes() {
    if !require(
        "python3 with pika",
        pika_available().await,
        "pip install pika",
    ) {
        return;
    }
    let broker = TestBroker::start().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("pika/conformance.py");
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(180),
        Command::new("python3")
            .arg(&script)
            .arg(broker.url())
            .args(NOT_YET)
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
        "pika conformance failed:\n{stdout}\n{stderr}"
    );
}
