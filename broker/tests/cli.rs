//! The command line of the `warren` binary. (Having an integration test here also makes
//! `cargo test --workspace` build the binary that the process tests in `tests/` run.)

use std::process::Command;

#[test]
fn version_help_and_unknown_arguments() {
    let warren = env!("CARGO_BIN_EXE_warren");
    let output = Command::new(warren)
        .arg("--version")
        .output()
        .expect("runs");
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("warren {}", env!("CARGO_PKG_VERSION"))
    );
    let output = Command::new(warren).arg("--help").output().expect("runs");
    assert!(String::from_utf8_lossy(&output.stdout).contains("WARREN_CONFIG_FILE"));
    let output = Command::new(warren).arg("--bogus").output().expect("runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown argument '--bogus'"));
}
