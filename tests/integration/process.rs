//! The `warren` binary as users run it: configuration errors stop it with a message naming the
//! key, SIGTERM closes client connections with 320 CONNECTION_FORCED and exits 0, and a data
//! directory serves one node at a time.

use tokio::process::Command;
use warren_testkit::warren_binary;
use warren_tests::node::{NodeOptions, NodeProcess};
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
    let node = NodeProcess::start(&NodeOptions::new("")).await;
    let data_dir = node.data_dir().to_path_buf();
    let mut client = RawClient::open(node.address(), 0).await;
    let terminated = tokio::spawn(node.terminate());
    let (code, text, _, _) = client.expect_connection_close().await;
    assert_eq!(
        (code, text.as_str()),
        (
            320,
            "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
        )
    );
    assert_eq!(terminated.await.expect("terminate"), Some(0));
    std::fs::remove_dir_all(data_dir).expect("remove data");
}

#[tokio::test]
async fn a_second_node_on_the_same_data_directory_refuses_to_start() {
    let options = NodeOptions::new("");
    let first = NodeProcess::start(&options).await;
    let output = NodeProcess::try_start(&options)
        .await
        .expect_err("the second node must not start");
    let expected = format!(
        "data directory {} is in use by another Warren node",
        options.data_dir.display()
    );
    assert!(output.contains(&expected), "{output}");
    // The first node is unharmed and, once stopped, lets another start.
    RawClient::open(first.address(), 0).await;
    assert_eq!(first.terminate().await, Some(0));
    let again = NodeProcess::start(&options).await;
    assert_eq!(again.terminate().await, Some(0));
    std::fs::remove_dir_all(&options.data_dir).expect("remove data");
}

/// A node name whose host part does not resolve stops the node at start, naming it.
#[tokio::test]
async fn an_unresolvable_node_name_is_reported_at_start() {
    let mut options = NodeOptions::new("");
    options.env = vec![
        (
            "WARREN_NODENAME".into(),
            "warren@no-such-host.invalid".into(),
        ),
        ("WARREN_USE_LONGNAME".into(), "true".into()),
    ];
    let output = NodeProcess::try_start(&options)
        .await
        .expect_err("the node must not start");
    assert!(
        output.contains("cannot resolve the host 'no-such-host.invalid' of node name 'warren@no-such-host.invalid'"),
        "{output}"
    );
    let mut options = NodeOptions::new("");
    options.env = vec![("WARREN_NODENAME".into(), "warren@10.0.0.1".into())];
    let output = NodeProcess::try_start(&options)
        .await
        .expect_err("an IP address needs long names");
    assert!(output.contains("WARREN_USE_LONGNAME"), "{output}");
}
