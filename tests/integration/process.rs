//! The `warren` binary as users run it: configuration errors stop it with a message naming the
//! key, and SIGTERM closes client connections with 320 CONNECTION_FORCED and exits 0.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use warren_testkit::warren_binary;
use warren_tests::{RawClient, promptly, unique};

fn config_file(text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("{}.conf", unique("warren-test")));
    std::fs::write(&path, text).expect("write config");
    path
}

#[tokio::test]
async fn a_bad_configuration_stops_the_node_naming_file_line_and_key() {
    let cases = [
        (
            "heartbeat = 30\ndefualt_user = admin\n",
            "2: unknown configuration key 'defualt_user' (did you mean 'default_user'?)",
        ),
        (
            "frame_max = lots\n",
            "1: invalid value 'lots' for 'frame_max': expected an integer from 0 to 4294967295",
        ),
        (
            "ssl_options.verify = verify_peer\n",
            "1: configuration key 'ssl_options.verify' is a RabbitMQ setting that Warren does not support",
        ),
    ];
    for (text, expected) in cases {
        let path = config_file(text);
        let output = promptly(
            "warren to exit",
            Command::new(warren_binary())
                .env("WARREN_CONFIG_FILE", &path)
                .env_remove("RABBITMQ_CONFIG_FILE")
                .output(),
        )
        .await
        .expect("warren runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("{}:{expected}", path.display())),
            "{stderr}"
        );
        std::fs::remove_file(path).expect("remove config");
    }
}

#[tokio::test]
async fn sigterm_closes_connections_with_320_and_exits_zero() {
    let path = config_file("listeners.tcp.default = 127.0.0.1:0\nlog.console.level = info\n");
    let mut child = Command::new(warren_binary())
        .env("WARREN_CONFIG_FILE", &path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("warren starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let address = promptly("the listener to start", async {
        while let Some(line) = lines.next_line().await.expect("read log") {
            if let Some((_, address)) = line.split_once("started TCP listener on ") {
                return address
                    .trim()
                    .parse::<std::net::SocketAddr>()
                    .expect("an address");
            }
        }
        panic!("warren exited before listening");
    })
    .await;
    let mut client = RawClient::open(address, 0).await;
    let pid = child.id().expect("pid").to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("kill runs");
    assert!(status.success());
    let (code, text, _, _) = client.expect_connection_close().await;
    assert_eq!(
        (code, text.as_str()),
        (
            320,
            "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
        )
    );
    let exit = promptly("warren to exit", child.wait())
        .await
        .expect("exit status");
    assert_eq!(exit.code(), Some(0));
    std::fs::remove_file(path).expect("remove config");
}
