//! Clusters of `warren` processes driven with `warrenctl`: formation at once, kill -9 of the
//! leader with confirmed messages on board, restarts in every order, forgetting a dead node,
//! a node that lost its data refused until it is forgotten, and kill -9 of a quorum queue's
//! leader mid-publish.

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use warren_tests::cluster::ClusterProcesses;
use warren_tests::promptly;

use crate::quorum::{durable, quorum};

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

/// Waits until `queue` is known on the node at `url` (metadata reaches followers as they
/// apply it).
async fn wait_for_queue(url: &str, queue: &str) {
    let (connection, mut probe) = channel(url).await;
    for _ in 0..100 {
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        match probe
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
        {
            Ok(_) => return,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                probe = connection.create_channel().await.expect("channel");
            }
        }
    }
    panic!("queue {queue} never reached {url}");
}

fn index_of(cluster: &ClusterProcesses, name: &str) -> usize {
    cluster
        .members
        .iter()
        .position(|member| member.name == name)
        .expect("the leader is a member")
}

/// Three processes started together form one cluster; messages confirmed through one node to a
/// queue on another survive kill -9 of the metadata leader, which a new leader replaces; the
/// killed node rejoins on restart; a full stop and restarts in every order bring the same
/// cluster back, with the messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_leader_and_restarts_in_every_order_lose_nothing_confirmed() {
    let mut cluster = ClusterProcesses::new(3, "");
    cluster.start(&[0, 1, 2]).await;
    let status = cluster.wait_for_members(3).await;
    let leader = index_of(&cluster, status.leader.as_deref().expect("a leader"));
    let home = (leader + 1) % 3;
    let publisher = (leader + 2) % 3;

    let (_h, on_home) = channel(&cluster.url(home)).await;
    on_home
        .queue_declare(
            "ledger".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue");
    wait_for_queue(&cluster.url(publisher), "ledger").await;
    let (_p, on_publisher) = channel(&cluster.url(publisher)).await;
    on_publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let mut confirms = Vec::new();
    for index in 0..500u32 {
        let confirm = on_publisher
            .basic_publish(
                "".into(),
                "ledger".into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &index.to_be_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish");
        confirms.push(confirm);
    }
    for confirm in confirms {
        let confirmation = confirm.await.expect("confirmation");
        assert!(confirmation.is_ack(), "confirmed: {confirmation:?}");
        assert!(
            confirmation.take_message().is_none(),
            "routed (the queue was known on the publisher's node)"
        );
    }

    cluster.kill(leader).await;
    let survivor = home;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let new_leader = loop {
        if let Some(status) = cluster.status(survivor).await
            && let Some(new_leader) = status.leader
            && new_leader != cluster.members[leader].name
        {
            assert!(status.term > 0);
            break new_leader;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no new leader after kill -9 of the old one"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_ne!(new_leader, cluster.members[leader].name);
    on_home
        .exchange_declare(
            "after.kill".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("two of three nodes keep metadata writable");
    cluster.start(&[leader]).await;
    cluster.wait_for_members(3).await;

    for order in [
        [0, 1, 2],
        [2, 1, 0],
        [1, 2, 0],
        [0, 2, 1],
        [2, 0, 1],
        [1, 0, 2],
    ] {
        for index in 0..3 {
            cluster.stop(index).await;
        }
        cluster.start(&order).await;
        cluster.wait_for_members(3).await;
    }

    // Every confirmed message, in order, consumed through a node that is not the queue's home.
    let reader = (home + 1) % 3;
    let (_r, on_reader) = channel(&cluster.url(reader)).await;
    on_reader
        .exchange_declare(
            "after.kill".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                passive: true,
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("metadata written after the kill survived the restarts");
    let mut consumer = on_reader
        .basic_consume(
            "ledger".into(),
            "audit".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    for expected in 0..500u32 {
        let delivery = promptly("a confirmed message", consumer.next())
            .await
            .expect("stream open")
            .expect("delivery");
        assert_eq!(delivery.data, expected.to_be_bytes());
        delivery.ack(BasicAckOptions::default()).await.expect("ack");
    }
    for index in 0..3 {
        cluster.stop(index).await;
    }
}

/// `forget_cluster_node` refuses a running node and removes a dead one; a node whose data was
/// lost is refused by the cluster ("forget it first") and joins by itself once it is forgotten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_a_dead_node_and_rejoin_after_losing_data() {
    let mut cluster = ClusterProcesses::new(3, "");
    cluster.start(&[0, 1, 2]).await;
    cluster.wait_for_members(3).await;
    let third = cluster.members[2].name.clone();

    let refused = cluster.ctl(0, &["forget_cluster_node", &third]).await;
    assert_eq!(refused.code, Some(70), "{refused:?}");
    assert!(refused.stderr.contains("is running"), "{refused:?}");

    // The third node dies and loses its data (its cookie is in the environment).
    cluster.kill(2).await;
    let data = cluster.members[2].options.data_dir.clone();
    std::fs::remove_dir_all(&data).expect("wipe the dead node's data");

    // Started blank, it is not the seed: it asks to join and is refused, again and again.
    let options = cluster.members[2].options.clone();
    let rejoining =
        tokio::spawn(async move { warren_tests::node::NodeProcess::start(&options).await });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !rejoining.is_finished(),
        "refused while its earlier self is a member"
    );

    let forgotten = cluster.ctl(0, &["forget_cluster_node", &third]).await;
    assert_eq!(forgotten.code, Some(0), "{forgotten:?}");
    assert!(forgotten.stdout.contains("Removing node"), "{forgotten:?}");
    let process = promptly("the node to join once forgotten", async {
        tokio::time::timeout(Duration::from_secs(50), rejoining)
            .await
            .expect("joined in time")
            .expect("start task")
    })
    .await;
    cluster.members[2].process = Some(process);
    cluster.wait_for_members(3).await;

    // reset and join_cluster through warrenctl.
    let reset = cluster.ctl(1, &["reset"]).await;
    assert_eq!(reset.code, Some(0), "{reset:?}");
    let alone = cluster.status(1).await.expect("status after reset");
    assert_eq!(alone.members.len(), 1, "{alone:?}");
    let first = cluster.members[0].name.clone();
    let joined = cluster.ctl(1, &["join_cluster", &first]).await;
    assert_eq!(joined.code, Some(0), "{joined:?}");
    assert!(joined.stdout.contains("Clustering node"), "{joined:?}");
    cluster.wait_for_members(3).await;
    let text = cluster.ctl(2, &["cluster_status"]).await;
    assert_eq!(text.code, Some(0));
    for member in &cluster.members {
        assert!(text.stdout.contains(&member.name), "{}", text.stdout);
    }
    assert!(text.stdout.contains("Running Nodes"), "{}", text.stdout);
    for index in 0..3 {
        cluster.stop(index).await;
    }
}

/// Three blank nodes started at the same instant form exactly one cluster, every time: only the
/// seed (the smallest name) may form one, the others join it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_started_together_always_form_one_cluster() {
    for round in 0..50 {
        let mut cluster = ClusterProcesses::new(3, "");
        cluster.start(&[0, 1, 2]).await;
        let status = cluster.wait_for_members(3).await;
        let mut names: Vec<String> = cluster.members.iter().map(|m| m.name.clone()).collect();
        let mut members = status.members.clone();
        names.sort();
        members.sort();
        assert_eq!(members, names, "round {round}: one cluster of all three");
        for index in 0..3 {
            cluster.kill(index).await;
        }
        for member in &cluster.members {
            let _ = std::fs::remove_dir_all(&member.options.data_dir);
        }
    }
}

/// Three `warren` processes, each in a network namespace of its own, formed into one cluster
/// with `config` added; `None` (with the reason printed) where namespaces cannot be made.
async fn cluster_in_namespaces(
    config: &str,
) -> Option<(warren_tests::netns::Network, ClusterProcesses)> {
    use warren_tests::netns::Network;
    if !warren_tests::require(
        "network namespaces",
        Network::available(),
        "run as root with iproute2 (apt-get install iproute2)",
    ) {
        return None;
    }
    let network = Network::create(3).expect("namespaces");
    let ips: Vec<std::net::IpAddr> = (0..3).map(|index| network.address(index)).collect();
    // The test reaches the nodes over the bridge, not loopback.
    let config = format!("{config}loopback_users = none\n");
    let mut cluster = ClusterProcesses::on(&ips, 25672, &config);
    for (index, member) in cluster.members.iter_mut().enumerate() {
        member.options.prefix = network.exec_prefix(index);
    }
    cluster.start(&[0, 1, 2]).await;
    cluster.wait_for_members(3).await;
    Some((network, cluster))
}

/// `pause_minority` across a real network partition: three processes, each in a network
/// namespace of its own; the node cut off from the other two closes its AMQP listener while the
/// majority keeps serving, and serves again once the partition heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_minority_across_network_namespaces() {
    let Some((mut network, mut cluster)) =
        cluster_in_namespaces("cluster_partition_handling = pause_minority\n").await
    else {
        return;
    };
    let minority_url = cluster.url(2);

    let (connected, _) = channel(&minority_url).await;
    network.partition(&[2], &[0, 1]).expect("partition");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let refused = Connection::connect(&minority_url, ConnectionProperties::default())
            .await
            .is_err();
        if refused && !connected.status().connected() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the minority node still accepts clients"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let status = cluster.status(2).await.expect("status of the paused node");
    assert!(status.paused, "{status:?}");
    let (_a, on_majority) = channel(&cluster.url(0)).await;
    on_majority
        .exchange_declare(
            "during.partition".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("the majority serves and changes metadata");

    network.heal().expect("heal");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        if let Ok(connection) =
            Connection::connect(&minority_url, ConnectionProperties::default()).await
        {
            let channel = connection.create_channel().await.expect("channel");
            channel
                .exchange_declare(
                    "during.partition".into(),
                    ExchangeKind::Direct,
                    ExchangeDeclareOptions {
                        passive: true,
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .expect("the healed node has caught up");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the healed node does not serve clients again"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    cluster.wait_for_members(3).await;
    for index in 0..3 {
        cluster.stop(index).await;
    }
}

/// A quorum queue's leader cut off into a minority by a real network partition (three
/// processes in network namespaces of their own, default partition handling): the old leader
/// confirms nothing published to it meanwhile, the majority elects a new leader and confirms
/// what it is sent, and after the partition heals every confirmed message is consumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_leader_partitioned_into_a_minority_confirms_nothing_and_loses_nothing() {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use parking_lot::Mutex;
    let Some((mut network, mut cluster)) = cluster_in_namespaces("").await else {
        return;
    };
    // Declared through node 2, which leads it (client-local).
    let (_m, on_minority) = channel(&cluster.url(2)).await;
    on_minority
        .queue_declare("split".into(), durable(), quorum())
        .await
        .expect("quorum queue");
    on_minority
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    wait_for_queue(&cluster.url(0), "split").await;
    // Returns the confirm, to await apart.
    #[allow(clippy::async_yields_async)]
    let publish = async |channel: &lapin::Channel, body: String| {
        channel
            .basic_publish(
                "".into(),
                "split".into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("published")
    };
    let mut confirmed = BTreeSet::new();
    for i in 0..20 {
        let body = format!("before-{i}");
        let confirm = publish(&on_minority, body.clone()).await;
        assert!(
            promptly("a confirm", confirm)
                .await
                .expect("confirmed")
                .is_ack()
        );
        confirmed.insert(body);
    }

    network.partition(&[2], &[0, 1]).expect("partition");
    // Published to the old leader, cut off: answered only once it has a majority again.
    let acked_during: Arc<Mutex<Vec<String>>> = Arc::default();
    let healed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut waiting = Vec::new();
    for i in 0..10 {
        let body = format!("cut-off-{i}");
        let confirm = publish(&on_minority, body.clone()).await;
        let (acked_during, healed) = (acked_during.clone(), healed.clone());
        waiting.push(tokio::spawn(async move {
            let acked = matches!(confirm.await, Ok(confirmation) if confirmation.is_ack());
            if acked && !healed.load(std::sync::atomic::Ordering::Acquire) {
                acked_during.lock().push(body.clone());
            }
            (body, acked)
        }));
    }
    // The majority side elects a leader and confirms.
    let (_a, on_majority) = channel(&cluster.url(0)).await;
    on_majority
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    for i in 0..20 {
        let body = format!("majority-{i}");
        let confirm = publish(&on_majority, body.clone()).await;
        let confirmation = tokio::time::timeout(Duration::from_secs(30), confirm)
            .await
            .expect("the majority confirms within seconds")
            .expect("a confirmation");
        assert!(confirmation.is_ack(), "{body}: {confirmation:?}");
        confirmed.insert(body);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    healed.store(true, std::sync::atomic::Ordering::Release);
    assert_eq!(
        *acked_during.lock(),
        Vec::<String>::new(),
        "the old leader confirmed without a majority"
    );
    network.heal().expect("heal");
    for task in waiting {
        let (body, acked) = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("every cut-off publish is answered once healed")
            .expect("no panic");
        if acked {
            confirmed.insert(body);
        }
    }
    cluster.wait_for_members(3).await;

    let (_c, reader) = channel(&cluster.url(1)).await;
    let mut consumer = reader
        .basic_consume(
            "split".into(),
            "audit".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut consumed = BTreeSet::new();
    while !confirmed.is_subset(&consumed) {
        let delivery = promptly("a confirmed message", consumer.next())
            .await
            .expect("stream open")
            .expect("delivery");
        consumed.insert(String::from_utf8_lossy(&delivery.data).into_owned());
        delivery.ack(BasicAckOptions::default()).await.expect("ack");
    }
    for index in 0..3 {
        cluster.stop(index).await;
    }
}

/// kill -9 of a quorum queue's leader while a publisher on another node has publishes in
/// flight: the survivors elect a new leader, the publisher's confirms resume on the same
/// channel (none is nacked), and every confirmed message is consumed afterwards, through the
/// killed node once it is back and has caught up. Meanwhile `warrenctl
/// check_if_node_is_quorum_critical` on a survivor fails, naming the queue. Then `shrink`
/// and `grow` move a member away and back through warrenctl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_quorum_queues_leader_mid_publish_loses_nothing_confirmed() {
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let mut cluster = ClusterProcesses::new(3, "");
    cluster.start(&[0, 1, 2]).await;
    cluster.wait_for_members(3).await;
    // Declared through node 0, which leads it (client-local).
    let (_d, on_leader) = channel(&cluster.url(0)).await;
    on_leader
        .queue_declare("replicated".into(), durable(), quorum())
        .await
        .expect("quorum queue");
    wait_for_queue(&cluster.url(1), "replicated").await;
    wait_for_queue(&cluster.url(2), "replicated").await;

    let (_p, on_publisher) = channel(&cluster.url(1)).await;
    on_publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let stop = Arc::new(AtomicBool::new(false));
    let publishing = tokio::spawn({
        let stop = stop.clone();
        async move {
            let (mut confirmed, mut nacked) = (BTreeSet::new(), 0);
            let mut next = 0u32;
            while !stop.load(Ordering::Acquire) {
                let mut confirms = Vec::new();
                for _ in 0..50 {
                    let confirm = on_publisher
                        .basic_publish(
                            "".into(),
                            "replicated".into(),
                            BasicPublishOptions::default(),
                            &next.to_be_bytes(),
                            BasicProperties::default().with_delivery_mode(2),
                        )
                        .await
                        .expect("the publisher's channel stays open");
                    confirms.push((next, confirm));
                    next += 1;
                }
                for (index, confirm) in confirms {
                    let confirmation = confirm.await.expect("a confirmation");
                    if confirmation.is_ack() {
                        confirmed.insert(index);
                    } else {
                        nacked += 1;
                    }
                }
            }
            (confirmed, nacked, next)
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.kill(0).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, Ordering::Release);
    let (confirmed, nacked, sent) = tokio::time::timeout(Duration::from_secs(60), publishing)
        .await
        .expect("the publisher's confirms resume after the failover")
        .expect("the publisher does not panic");
    assert_eq!(nacked, 0, "a majority was up throughout: nothing is nacked");
    assert!(
        confirmed.iter().any(|&index| index > sent / 2),
        "confirms went on after the kill: {} of {sent}",
        confirmed.len()
    );

    // Two of three members left: stopping either survivor would cost the queue its majority.
    let critical = cluster.ctl(1, &["check_if_node_is_quorum_critical"]).await;
    assert_eq!(critical.code, Some(69), "{critical:?}");
    assert!(
        critical.stderr.contains(
            "There are quorum queues that would lose their quorum if the target node is shut down"
        ) && critical.stderr.contains("queue 'replicated' in vhost '/'"),
        "{critical:?}"
    );

    cluster.start(&[0]).await;
    cluster.wait_for_members(3).await;
    wait_for_queue(&cluster.url(0), "replicated").await;
    let safe = cluster.ctl(1, &["check_if_node_is_quorum_critical"]).await;
    assert_eq!(safe.code, Some(0), "{safe:?}");
    let (_r, on_restarted) = channel(&cluster.url(0)).await;
    let mut consumer = on_restarted
        .basic_consume(
            "replicated".into(),
            "audit".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume through the restarted node");
    let mut consumed = BTreeSet::new();
    while !confirmed.is_subset(&consumed) {
        let delivery = promptly("a confirmed message", consumer.next())
            .await
            .expect("stream open")
            .expect("delivery");
        let index = u32::from_be_bytes(delivery.data[..4].try_into().expect("4 bytes"));
        consumed.insert(index);
        delivery.ack(BasicAckOptions::default()).await.expect("ack");
    }

    // Its members through warrenctl, as rabbitmq-queues prints them.
    let third = cluster.members[2].name.clone();
    let shrunk = cluster.ctl(0, &["shrink", &third]).await;
    assert_eq!(shrunk.code, Some(0), "{shrunk:?}");
    assert_eq!(
        shrunk.stdout,
        format!(
            "Shrinking quorum queues on {third}...\nvhost\tname\tsize\tresult\n/\treplicated\t2\tok\n"
        )
    );
    let grown = cluster
        .ctl(1, &["grow", &third, "all", "--errors-only"])
        .await;
    assert_eq!(grown.code, Some(0), "{grown:?}");
    assert_eq!(
        grown.stdout,
        format!("Growing all quorum queues on {third}...\nvhost\tname\tsize\tresult\n")
    );
    // Three members again: no single stop costs the queue its majority.
    let whole = cluster.ctl(1, &["check_if_node_is_quorum_critical"]).await;
    assert_eq!(whole.code, Some(0), "{whole:?}");
    let listed = cluster
        .ctl(
            2,
            &[
                "list_queues",
                "name",
                "type",
                "members",
                "--no-table-headers",
            ],
        )
        .await;
    assert_eq!(listed.code, Some(0), "{listed:?}");
    let row = listed.stdout.lines().last().unwrap_or_default().to_string();
    assert!(
        row.starts_with("replicated\tquorum\t[") && row.contains(&third),
        "{listed:?}"
    );
    let again = cluster.ctl(2, &["add_member", "replicated", &third]).await;
    assert_eq!(again.code, Some(0), "added already: {again:?}");
    let missing = cluster
        .ctl(2, &["delete_member", "-p", "/", "nowhere", &third])
        .await;
    assert_eq!(missing.code, Some(70), "{missing:?}");
    assert!(
        missing
            .stderr
            .contains("queue 'nowhere' was not found in virtual host '/'"),
        "{missing:?}"
    );
    for index in 0..3 {
        cluster.stop(index).await;
    }
}
