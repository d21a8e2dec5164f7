//! The management HTTP listener's health checks, as probes and monitoring call them: basic
//! authentication, `200 {"status":"ok"}` or `503 {"status":"failed","reason":...}`, RabbitMQ's
//! 401 and 404 bodies.

use warren_broker::alarms::AlarmSet;
use warren_testkit::{TestBroker, TestCluster};
use warren_tests::http_get as get;

#[tokio::test]
async fn health_checks_answer_authenticated_management_users() {
    let broker = TestBroker::start().await;
    let address = broker.management_address().expect("a management listener");
    let guest = Some("guest:guest");
    let (status, _, body) = get(address, "/api/health/checks/local-alarms", guest).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, _, _) = get(address, "/api/health/checks/is-in-service", guest).await;
    assert_eq!(status, 200);
    let (status, _, body) = get(address, "/api/health/checks/cluster-formation", guest).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));

    let (status, head, body) = get(address, "/api/health/checks/local-alarms", None).await;
    assert_eq!(status, 401);
    assert!(
        head.contains("Basic realm=\"RabbitMQ Management\""),
        "{head}"
    );
    assert!(
        body.is_empty(),
        "no credentials: only the challenge, as RabbitMQ: {body}"
    );
    let (status, _, _) = get(
        address,
        "/api/health/checks/local-alarms",
        Some("guest:nope"),
    )
    .await;
    assert_eq!(status, 401);
    broker.broker().users.put_user("app", "secret", Vec::new());
    let (status, _, body) = get(
        address,
        "/api/health/checks/local-alarms",
        Some("app:secret"),
    )
    .await;
    assert_eq!(status, 401, "a user without a management tag");
    assert!(body.contains("Not management user"), "{body}");
    broker
        .broker()
        .users
        .put_user("monitor", "secret", vec!["monitoring".into()]);
    let (status, _, _) = get(
        address,
        "/api/health/checks/local-alarms",
        Some("monitor:secret"),
    )
    .await;
    assert_eq!(status, 200);

    broker.broker().alarms.set(AlarmSet {
        memory: true,
        disk: false,
    });
    let (status, _, body) = get(address, "/api/health/checks/local-alarms", guest).await;
    assert_eq!(status, 503);
    assert!(
        body.contains(r#""status":"failed""#) && body.contains("memory"),
        "{body}"
    );
    broker.broker().alarms.set(AlarmSet::default());

    let (status, _, body) = get(address, "/api/no/such/thing", guest).await;
    assert_eq!(status, 404);
    assert!(body.contains("Object Not Found"), "{body}");
    broker.stop().await;
}

/// The cluster formation check over HTTP fails on a member cut off from the others (it has
/// lost the metadata leader, and cannot reach the members).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_formation_check_fails_on_a_partitioned_member() {
    let cluster = TestCluster::builder().nodes(3).build().await;
    cluster
        .wait_for_members(3, std::time::Duration::from_secs(30))
        .await;
    let address = cluster
        .node(2)
        .node()
        .management_address()
        .expect("listener");
    let path = "/api/health/checks/cluster-formation";
    let (status, _, _) = get(address, path, Some("guest:guest")).await;
    assert_eq!(status, 200);
    cluster.partition(&[0, 1], &[2]);
    let mut last = (0, String::new());
    for _ in 0..100 {
        let (status, _, body) = get(address, path, Some("guest:guest")).await;
        last = (status, body);
        if last.0 == 503 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(last.0, 503, "{last:?}");
    assert!(
        last.1.contains("partitioned from") || last.1.contains("no leader"),
        "{last:?}"
    );
    cluster.heal();
    cluster.stop().await;
}

/// `management.tcp.port = none` turns the listener off.
#[tokio::test]
async fn the_management_listener_can_be_turned_off() {
    let broker = TestBroker::builder()
        .config_text("management.tcp.port = none\n")
        .expect("valid configuration")
        .start()
        .await;
    assert_eq!(broker.management_address(), None);
    broker.stop().await;
}
