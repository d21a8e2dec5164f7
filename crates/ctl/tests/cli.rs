//! The `warrenctl` binary's own checks: usage errors exit 64, an unreachable node 69. (Its being
//! an integration test also makes `cargo test` build the binary the cluster tests run.)

use std::process::Command;

fn warrenctl(arguments: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_warrenctl"))
        .args(arguments)
        .env("WARREN_ERLANG_COOKIE", "test-cookie")
        .output()
        .expect("warrenctl runs")
}

#[test]
fn usage_errors_and_unreachable_nodes_have_their_exit_codes() {
    let output = warrenctl(&["frobnicate"]);
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown command"));
    let output = warrenctl(&["forget_cluster_node", "--offline"]);
    assert_eq!(output.status.code(), Some(64));
    // Nothing listens on port 1 of 127.0.0.1.
    let output = warrenctl(&[
        "-n",
        "warren@127.0.0.1",
        "--dist-port",
        "1",
        "-t",
        "5",
        "cluster_status",
    ]);
    assert_eq!(output.status.code(), Some(69), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("warren@127.0.0.1"));
}
