//! Clusters of in-process nodes ([`TestCluster`]): formation, metadata on every node,
//! membership changes (join, reset, forget), partitions.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use warren_cluster::control::{ControlRequest, ControlResponse};
use warren_testkit::TestCluster;
use warren_tests::{promptly, wait_until};

const SETTLE: Duration = Duration::from_secs(20);

async fn channel(url: &str) -> (Connection, lapin::Channel) {
    let connection = promptly(
        "lapin to connect",
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .expect("lapin connects");
    let channel = connection.create_channel().await.expect("channel opens");
    (connection, channel)
}

fn durable() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// Three nodes started at once form one cluster with one leader; what is declared on one node
/// exists on the others, and users and vhosts are the cluster's, not the node's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_one_cluster_and_share_metadata() {
    let cluster = TestCluster::builder().nodes(3).build().await;
    cluster.wait_for_members(3, SETTLE).await;
    let status = cluster.node(2).status().await;
    assert_eq!(status.members.len(), 3, "{status}");
    assert!(
        status.members.iter().all(|member| member.running),
        "{status}"
    );
    assert!(status.partitions.is_empty(), "{status}");

    let (_a, on_a) = channel(&cluster.node(0).url()).await;
    on_a.exchange_declare(
        "cluster.events".into(),
        ExchangeKind::Topic,
        durable(),
        FieldTable::default(),
    )
    .await
    .expect("declared on node 0");
    on_a.queue_declare(
        "cluster.orders".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("queue declared on node 0");
    for index in [1, 2] {
        let node = cluster.node(index);
        wait_until("the exchange reaches every node", || {
            node.broker()
                .vhost("/")
                .is_some_and(|vhost| vhost.exchange(b"cluster.events").is_some())
        })
        .await;
        let (_c, on_other) = channel(&node.url()).await;
        on_other
            .exchange_declare(
                "cluster.events".into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    passive: true,
                    ..durable()
                },
                FieldTable::default(),
            )
            .await
            .expect("a passive declare on another node finds the exchange");
        let home = node
            .broker()
            .vhost("/")
            .and_then(|vhost| vhost.remote_queue_home(b"cluster.orders"));
        assert_eq!(home.as_deref(), Some(cluster.node(0).name().as_str()));
    }
    cluster.stop().await;
}

/// A member that stops and starts again on its data rejoins by itself; metadata changed while
/// it was away reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_rejoins_and_catches_up() {
    let mut cluster = TestCluster::builder().nodes(3).build().await;
    cluster.wait_for_members(3, SETTLE).await;
    cluster.stop_node(2).await;
    let (_a, on_a) = channel(&cluster.node(0).url()).await;
    on_a.exchange_declare(
        "while.away".into(),
        ExchangeKind::Fanout,
        durable(),
        FieldTable::default(),
    )
    .await
    .expect("two of three nodes keep metadata writable");
    cluster.restart_node(2).await;
    cluster.wait_for_members(3, SETTLE).await;
    let node = cluster.node(2);
    wait_until("the node catches up", || {
        node.broker()
            .vhost("/")
            .is_some_and(|vhost| vhost.exchange(b"while.away").is_some())
    })
    .await;
    cluster.stop().await;
}

/// `forget_cluster_node` refuses a running member, removes a stopped one; a node that lost its
/// data is refused until it is forgotten, then joins again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_and_rejoin_after_reset() {
    let mut cluster = TestCluster::builder().nodes(3).build().await;
    cluster.wait_for_members(3, SETTLE).await;
    let third = cluster.node(2).name().to_string();
    let refused = cluster
        .node(0)
        .control(ControlRequest::ForgetNode {
            node: third.clone(),
            offline: false,
        })
        .await
        .expect_err("a running member is not forgotten");
    assert!(refused.contains("is running"), "{refused}");

    // The third node's data is lost while the others still count it as a member.
    cluster.stop_node(2).await;
    let first = cluster.node(0).name().to_string();
    cluster.restart_node_blank(2).await;
    let node = cluster.node(2);
    let refused = node
        .control(ControlRequest::JoinCluster {
            node: first.clone(),
        })
        .await
        .expect_err("an earlier incarnation is still a member");
    assert!(refused.contains("forget_cluster_node"), "{refused}");

    let forgotten = cluster
        .node(0)
        .control(ControlRequest::ForgetNode {
            node: third.clone(),
            offline: false,
        })
        .await
        .expect("a stopped member is forgotten");
    assert!(matches!(forgotten, ControlResponse::Done(_)));
    cluster
        .node(2)
        .control(ControlRequest::JoinCluster { node: first })
        .await
        .expect("joins once forgotten");
    cluster.wait_for_members(3, SETTLE).await;
    cluster.stop().await;
}

/// `reset` takes a node out of the cluster cleanly; `join_cluster` brings it back, and its own
/// metadata is dropped for the cluster's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_leaves_and_join_cluster_returns() {
    let cluster = TestCluster::builder().nodes(3).build().await;
    cluster.wait_for_members(3, SETTLE).await;
    let leaving = cluster.node(1);
    leaving.control(ControlRequest::Reset).await.expect("reset");
    let alone = leaving.status().await;
    assert_eq!(alone.members.len(), 1, "{alone}");
    let status = cluster.node(0).status().await;
    assert_eq!(status.members.len(), 2, "{status}");

    // Declared while alone: gone once it joins the cluster again.
    let (connection, on_alone) = channel(&leaving.url()).await;
    on_alone
        .exchange_declare(
            "only.mine".into(),
            ExchangeKind::Direct,
            durable(),
            FieldTable::default(),
        )
        .await
        .expect("declared while alone");
    let _ = connection.close(200, "bye".into()).await;
    let joined = leaving
        .control(ControlRequest::JoinCluster {
            node: cluster.node(0).name().to_string(),
        })
        .await
        .expect("joins again");
    assert!(matches!(joined, ControlResponse::Done(text) if text.starts_with("Clustering node")));
    cluster.wait_for_members(3, SETTLE).await;
    let vhost = leaving.broker().vhost("/").expect("the cluster's vhost");
    assert!(vhost.exchange(b"only.mine").is_none());
    cluster.stop().await;
}

/// A minority cannot change metadata (a clear error, no hang beyond the proposal timeout); the
/// majority can; after healing, everyone agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_refuses_metadata_changes() {
    let cluster = TestCluster::builder().nodes(3).build().await;
    cluster.wait_for_members(3, SETTLE).await;
    cluster.partition(&[2], &[0, 1]);
    let (_c, on_minority) = channel(&cluster.node(2).url()).await;
    let error = on_minority
        .exchange_declare(
            "minority.write".into(),
            ExchangeKind::Direct,
            durable(),
            FieldTable::default(),
        )
        .await
        .expect_err("a minority cannot commit");
    assert!(
        error.to_string().contains("majority"),
        "the error says why: {error}"
    );
    let (_a, on_majority) = channel(&cluster.node(0).url()).await;
    on_majority
        .exchange_declare(
            "majority.write".into(),
            ExchangeKind::Direct,
            durable(),
            FieldTable::default(),
        )
        .await
        .expect("the majority commits");
    cluster.heal();
    let node = cluster.node(2);
    wait_until("the healed node catches up", || {
        node.broker()
            .vhost("/")
            .is_some_and(|vhost| vhost.exchange(b"majority.write").is_some())
    })
    .await;
    // The refused declaration left no trace anywhere, not even on the node that was asked.
    for index in 0..3 {
        let vhost = cluster.node(index).broker().vhost("/").expect("vhost");
        assert!(vhost.exchange(b"minority.write").is_none(), "node {index}");
    }
    cluster.stop().await;
}

/// Any node serves any queue: declared on node 0, published to through node 1 with confirms,
/// consumed and acknowledged through node 2; `basic.get`, purge and delete through another
/// node work too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_is_served_by_every_node() {
    use futures_lite::StreamExt;
    use lapin::BasicProperties;
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
        BasicQosOptions, ConfirmSelectOptions, QueueBindOptions, QueueDeleteOptions,
        QueuePurgeOptions,
    };

    let cluster = TestCluster::builder().nodes(3).build().await;
    cluster.wait_for_members(3, SETTLE).await;
    let (_a, on_home) = channel(&cluster.node(0).url()).await;
    on_home
        .queue_declare(
            "anywhere".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declared on its home");
    on_home
        .exchange_declare(
            "routes".into(),
            ExchangeKind::Direct,
            durable(),
            FieldTable::default(),
        )
        .await
        .expect("exchange");
    on_home
        .queue_bind(
            "anywhere".into(),
            "routes".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bound");
    for index in [1, 2] {
        let node = cluster.node(index);
        wait_until("the queue and its binding reach every node", || {
            node.broker().vhost("/").is_some_and(|vhost| {
                vhost.queue(b"anywhere").is_some()
                    && vhost.exchange(b"routes").is_some_and(|e| e.has_bindings())
            })
        })
        .await;
    }

    let (_b, publisher) = channel(&cluster.node(1).url()).await;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    for index in 0..100u32 {
        let (exchange, key) = if index % 2 == 0 {
            ("routes", "k")
        } else {
            ("", "anywhere")
        };
        let confirm = publisher
            .basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions::default(),
                &index.to_be_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("published");
        assert!(
            confirm.await.expect("confirmed").is_ack(),
            "message {index} confirmed"
        );
    }
    let declared = publisher
        .queue_declare(
            "anywhere".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare through another node");
    assert_eq!(declared.message_count(), 100);

    let (_c, consumer_channel) = channel(&cluster.node(2).url()).await;
    consumer_channel
        .basic_qos(10, BasicQosOptions::default())
        .await
        .expect("qos");
    let got = consumer_channel
        .basic_get("anywhere".into(), BasicGetOptions::default())
        .await
        .expect("get")
        .expect("a message");
    assert_eq!(got.delivery.data, 0u32.to_be_bytes());
    got.delivery
        .ack(BasicAckOptions::default())
        .await
        .expect("ack");
    let mut consumer = consumer_channel
        .basic_consume(
            "anywhere".into(),
            "far".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume through a third node");
    for expected in 1..100u32 {
        let delivery = promptly("a delivery", consumer.next())
            .await
            .expect("stream open")
            .expect("delivery");
        assert_eq!(delivery.data, expected.to_be_bytes(), "in order");
        delivery.ack(BasicAckOptions::default()).await.expect("ack");
    }
    let node = cluster.node(0);
    let vhost = node.broker().vhost("/").expect("vhost");
    let home_queue = vhost.queue(b"anywhere").expect("queue");
    let mut empty = false;
    for _ in 0..100 {
        let stats = home_queue
            .ask(|reply| warren_broker::queue::QueueCommand::Stats {
                renew: false,
                reply,
            })
            .await
            .expect("stats");
        if stats.messages == 0 {
            empty = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(empty, "acks travelled back to the home node");

    publisher
        .basic_publish(
            "".into(),
            "anywhere".into(),
            BasicPublishOptions::default(),
            b"one more",
            BasicProperties::default(),
        )
        .await
        .expect("published")
        .await
        .expect("confirmed");
    let purged = publisher
        .queue_purge("anywhere".into(), QueuePurgeOptions::default())
        .await
        .expect("purge through another node");
    assert!(purged <= 1);
    publisher
        .queue_delete("anywhere".into(), QueueDeleteOptions::default())
        .await
        .expect("delete through another node");
    for index in 0..3 {
        let node = cluster.node(index);
        wait_until("the queue is gone everywhere", || {
            node.broker()
                .vhost("/")
                .is_some_and(|vhost| vhost.queue(b"anywhere").is_none())
        })
        .await;
    }
    cluster.stop().await;
}

/// When a queue's home node goes away, a consumer on another node gets `basic.cancel` and a
/// publisher's unconfirmed messages are nacked: nobody hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_home_node_cancels_consumers_and_fails_requests() {
    use lapin::options::BasicConsumeOptions;

    let mut cluster = TestCluster::builder().nodes(3).build().await;
    cluster.wait_for_members(3, SETTLE).await;
    let (_a, on_home) = channel(&cluster.node(0).url()).await;
    on_home
        .queue_declare(
            "fragile".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declared");
    let node = cluster.node(1);
    wait_until("the queue reaches node 1", || {
        node.broker()
            .vhost("/")
            .is_some_and(|vhost| vhost.queue(b"fragile").is_some())
    })
    .await;
    let (_b, remote) = channel(&cluster.node(1).url()).await;
    let mut consumer = remote
        .basic_consume(
            "fragile".into(),
            "watcher".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consumes through node 1");
    cluster.stop_node(0).await;
    // lapin ends the consumer's stream when the server cancels it.
    let end = promptly(
        "the consumer to be cancelled",
        futures_lite::StreamExt::next(&mut consumer),
    )
    .await;
    assert!(end.is_none(), "cancelled, not delivered to: {end:?}");
    let error = remote
        .queue_declare(
            "fragile".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect_err("the queue's home is down");
    assert!(
        error.to_string().contains("is down or inaccessible"),
        "RabbitMQ's words: {error}"
    );
    cluster.stop().await;
}

/// `cluster_partition_handling = pause_minority`: the node cut off from the majority closes its
/// client listener (clients connected to it are disconnected) and opens it again once the
/// partition heals; the majority keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_minority_closes_the_minority_listener_until_the_partition_heals() {
    let cluster = TestCluster::builder()
        .nodes(3)
        .config(|config| {
            config.cluster.partition_handling = warren_config::PartitionHandling::PauseMinority;
        })
        .build()
        .await;
    cluster.wait_for_members(3, SETTLE).await;
    let minority = cluster.node(2);
    let (connection, _channel) = channel(&minority.url()).await;
    cluster.partition(&[2], &[0, 1]);
    wait_until("the client of the minority node is disconnected", || {
        !connection.status().connected()
    })
    .await;
    let refused = Connection::connect(&minority.url(), ConnectionProperties::default()).await;
    assert!(refused.is_err(), "the minority node accepts no clients");
    assert!(minority.status().await.paused);
    let (_a, majority) = channel(&cluster.node(0).url()).await;
    majority
        .exchange_declare(
            "while.paused".into(),
            ExchangeKind::Direct,
            durable(),
            FieldTable::default(),
        )
        .await
        .expect("the majority serves");
    assert!(!cluster.node(0).status().await.paused);

    cluster.heal();
    let url = minority.url();
    let mut reconnected = None;
    for _ in 0..100 {
        if let Ok(connection) = Connection::connect(&url, ConnectionProperties::default()).await {
            reconnected = Some(connection);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        reconnected.is_some(),
        "the healed node serves clients again"
    );
    assert!(!minority.status().await.paused);
    cluster.stop().await;
}

/// Transient and exclusive queues are the cluster's too: an RPC server on one node replies to
/// a client's exclusive, server-named reply queue on another; other nodes' connections are
/// locked out of it; a transient exchange is visible everywhere; and a node that restarts takes
/// its transient queues with it, on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_and_exclusive_queues_work_across_nodes() {
    use futures_lite::StreamExt;
    use lapin::BasicProperties;
    use lapin::options::{BasicConsumeOptions, BasicPublishOptions};

    let mut cluster = TestCluster::builder().nodes(3).build().await;
    cluster.wait_for_members(3, SETTLE).await;
    let (_client, on_client) = channel(&cluster.node(0).url()).await;
    let reply_queue = on_client
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("server-named exclusive queue")
        .name()
        .to_string();
    let mut replies = on_client
        .basic_consume(
            reply_queue.as_str().into(),
            "replies".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume replies");
    let server = cluster.node(1);
    wait_until("the reply queue reaches the server's node", || {
        server
            .broker()
            .vhost("/")
            .is_some_and(|vhost| vhost.queue(reply_queue.as_bytes()).is_some())
    })
    .await;
    let (_server, on_server) = channel(&server.url()).await;
    on_server
        .basic_publish(
            "".into(),
            reply_queue.as_str().into(),
            BasicPublishOptions::default(),
            b"the answer",
            BasicProperties::default(),
        )
        .await
        .expect("reply published");
    let reply = promptly("the reply", replies.next())
        .await
        .expect("stream open")
        .expect("delivery");
    assert_eq!(reply.data, b"the answer");
    let locked = on_server
        .basic_consume(
            reply_queue.as_str().into(),
            "thief".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("another node's connection cannot use an exclusive queue");
    assert!(locked.to_string().contains("RESOURCE_LOCKED"), "{locked}");

    let (_c, on_third) = channel(&cluster.node(2).url()).await;
    on_third
        .exchange_declare(
            "short.lived".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("transient exchange");
    on_third
        .queue_declare(
            "scratch".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("transient queue");
    for index in [0, 1] {
        let node = cluster.node(index);
        wait_until("transient entities reach every node", || {
            node.broker().vhost("/").is_some_and(|vhost| {
                vhost.exchange(b"short.lived").is_some() && vhost.queue(b"scratch").is_some()
            })
        })
        .await;
    }
    cluster.restart_node(2).await;
    for index in 0..3 {
        let node = cluster.node(index);
        wait_until(
            "a restarted node's transient entities are gone everywhere",
            || {
                node.broker().vhost("/").is_some_and(|vhost| {
                    vhost.exchange(b"short.lived").is_none() && vhost.queue(b"scratch").is_none()
                })
            },
        )
        .await;
    }
    cluster.stop().await;
}

/// Two nodes declare the same queue with different arguments at the same time: the metadata
/// log orders them, the first wins everywhere, the second is refused as RabbitMQ refuses an
/// inequivalent redeclaration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_conflicting_declarations_agree_on_one_winner() {
    let cluster = TestCluster::builder().nodes(3).build().await;
    cluster.wait_for_members(3, SETTLE).await;
    for round in 0..10 {
        let name = format!("contested-{round}");
        let (_a, on_a) = channel(&cluster.node(0).url()).await;
        let (_b, on_b) = channel(&cluster.node(1).url()).await;
        let with_ttl = |ttl: i32| {
            let mut arguments = FieldTable::default();
            arguments.insert(
                "x-message-ttl".into(),
                lapin::types::AMQPValue::LongInt(ttl),
            );
            arguments
        };
        let durable_queue = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let (first, second) = futures_lite::future::zip(
            on_a.queue_declare(name.as_str().into(), durable_queue, with_ttl(1000)),
            on_b.queue_declare(name.as_str().into(), durable_queue, with_ttl(2000)),
        )
        .await;
        assert!(
            first.is_ok() != second.is_ok(),
            "round {round}: exactly one wins: {first:?} / {second:?}"
        );
        let loser = first.err().or(second.err()).expect("a loser");
        assert!(loser.to_string().contains("PRECONDITION_FAILED"), "{loser}");
        let winner_ttl = |index: usize| {
            cluster
                .node(index)
                .broker()
                .vhost("/")
                .and_then(|vhost| vhost.queue(name.as_bytes()))
                .map(|queue| queue.arguments.get("x-message-ttl").cloned())
        };
        let node = cluster.node(2);
        wait_until("every node knows the queue", || {
            node.broker()
                .vhost("/")
                .is_some_and(|vhost| vhost.queue(name.as_bytes()).is_some())
        })
        .await;
        assert_eq!(winner_ttl(0), winner_ttl(1), "round {round}");
        assert_eq!(winner_ttl(1), winner_ttl(2), "round {round}");
    }
    cluster.stop().await;
}

/// `forget_cluster_node --offline`: two of three members are gone for good; the survivor
/// cannot change metadata, refuses an offline forget of a node that answers, and after
/// forgetting both dead members offline is a cluster of one that writes again, with everything
/// it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_offline_recovers_a_survivor_without_a_majority() {
    let mut cluster = TestCluster::builder().nodes(3).build().await;
    cluster.wait_for_members(3, SETTLE).await;
    let (connection, on_survivor) = channel(&cluster.node(0).url()).await;
    on_survivor
        .exchange_declare(
            "kept".into(),
            ExchangeKind::Direct,
            durable(),
            FieldTable::default(),
        )
        .await
        .expect("declared while all run");
    let _ = connection.close(200, "bye".into()).await;
    let (second, third) = (
        cluster.node(1).name().to_string(),
        cluster.node(2).name().to_string(),
    );
    let refused = cluster
        .node(0)
        .control(ControlRequest::ForgetNode {
            node: second.clone(),
            offline: true,
        })
        .await
        .expect_err("a majority is reachable");
    assert!(refused.contains("majority"), "{refused}");
    cluster.stop_node(1).await;
    cluster.stop_node(2).await;
    for _ in 0..100 {
        let status = cluster.node(0).status().await;
        if status.members.iter().filter(|m| m.running).count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for dead in [&second, &third] {
        let forgotten = cluster
            .node(0)
            .control(ControlRequest::ForgetNode {
                node: dead.clone(),
                offline: true,
            })
            .await;
        if let Err(error) = forgotten {
            panic!(
                "{dead} not forgotten: {error}; {:?}",
                cluster.node(0).node().cluster_status().await
            );
        }
    }
    cluster.wait_for_members(1, SETTLE).await;
    let (_c, on_survivor) = channel(&cluster.node(0).url()).await;
    on_survivor
        .exchange_declare(
            "kept".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..durable()
            },
            FieldTable::default(),
        )
        .await
        .expect("what it had is still there");
    on_survivor
        .exchange_declare(
            "after".into(),
            ExchangeKind::Direct,
            durable(),
            FieldTable::default(),
        )
        .await
        .expect("the survivor writes metadata again");
    cluster.stop().await;
}

/// A slow network (100 ms each way between every pair of nodes): the leader stays, metadata
/// commits, and a queue used through another node still confirms and delivers, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_network_slows_but_breaks_nothing() {
    use futures_lite::StreamExt;
    use lapin::BasicProperties;
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    };

    let cluster = TestCluster::builder().nodes(3).build().await;
    let before = {
        cluster.wait_for_members(3, SETTLE).await;
        cluster.node(0).status().await
    };
    cluster.delay(&[0], &[1, 2], Duration::from_millis(100));
    cluster.delay(&[1], &[2], Duration::from_millis(100));
    let (_a, on_a) = channel(&cluster.node(0).url()).await;
    on_a.queue_declare(
        "slow".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("metadata commits over a slow network");
    let node = cluster.node(1);
    wait_until("the queue reaches node 1", || {
        node.broker()
            .vhost("/")
            .is_some_and(|vhost| vhost.queue(b"slow").is_some())
    })
    .await;
    let (_b, on_b) = channel(&cluster.node(1).url()).await;
    on_b.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let mut confirms = Vec::new();
    for index in 0..20u32 {
        confirms.push(
            on_b.basic_publish(
                "".into(),
                "slow".into(),
                BasicPublishOptions::default(),
                &index.to_be_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("published"),
        );
    }
    for confirm in confirms {
        assert!(confirm.await.expect("confirmed").is_ack());
    }
    let (_c, on_c) = channel(&cluster.node(2).url()).await;
    let mut consumer = on_c
        .basic_consume(
            "slow".into(),
            "slowpoke".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    for expected in 0..20u32 {
        let delivery = promptly("a delivery", consumer.next())
            .await
            .expect("open")
            .expect("delivery");
        assert_eq!(delivery.data, expected.to_be_bytes());
        delivery.ack(BasicAckOptions::default()).await.expect("ack");
    }
    let after = cluster.node(0).status().await;
    assert_eq!(
        after.leader, before.leader,
        "no election over 100 ms of latency"
    );
    cluster.heal();
    cluster.stop().await;
}

/// Kubernetes formation, as RabbitMQ 4.1 does it: pods named like a StatefulSet's; the pod with
/// the first ordinal forms the cluster and every other pod joins it, waiting for it as long as
/// it takes. Pod names resolve through the test cluster's own table (no Kubernetes API is
/// involved: the backend makes no API calls).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8s_pods_join_the_first_ordinal_and_wait_for_it() {
    let pods = |ordinals: [u32; 3]| -> Vec<String> {
        ordinals
            .iter()
            .map(|n| format!("warren@warren-{n}.warren-nodes.test.svc.cluster.local"))
            .collect()
    };
    let names = pods([0, 1, 2]);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let cluster = TestCluster::builder()
        .names(&names)
        .config(|config| config.cluster.discovery = warren_config::DiscoveryBackend::K8s)
        .build()
        .await;
    let status = cluster.node(2).status().await;
    assert_eq!(status.members.len(), 3, "{status}");
    cluster.wait_for_members(3, SETTLE).await;
    cluster.stop().await;

    // ordinal_start = 1: pods 2 and 3 start first and wait for pod 1, which forms the cluster.
    let names = pods([1, 2, 3]);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut cluster = TestCluster::builder()
        .names(&names)
        .config(|config| {
            config.cluster.discovery = warren_config::DiscoveryBackend::K8s;
            config.cluster.k8s_ordinal_start = 1;
        })
        .start_only(&[])
        .build()
        .await;
    let waiting = [
        cluster.start_in_background(1),
        cluster.start_in_background(2),
    ];
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        waiting.iter().all(|start| !start.is_finished()),
        "pods other than the seed never form a cluster of their own"
    );
    let seed = cluster.start_in_background(0);
    cluster.adopt(0, seed.await.expect("seed starts"));
    let [second, third] = waiting;
    cluster.adopt(1, second.await.expect("pod 2 joins"));
    cluster.adopt(2, third.await.expect("pod 3 joins"));
    cluster.wait_for_members(3, SETTLE).await;
    let status = cluster.node(2).status().await;
    assert!(
        status.members.iter().any(|m| m.name == names[0]),
        "{status}"
    );
    cluster.stop().await;
}
