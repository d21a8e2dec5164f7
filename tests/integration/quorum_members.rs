//! Where a quorum queue's members are, changed while it runs (`rabbitmq-queues add_member`,
//! `delete_member`, `grow`, `shrink`, and `forget_cluster_node`), on clusters of in-process
//! nodes: a member added catches up on what the queue held before it and keeps it when the
//! others go; a member removed goes with its log, and its node still serves the queue.

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::{AMQPValue, FieldTable};
use warren_cluster::control::{ControlRequest, ControlResponse, MemberChange};
use warren_testkit::{TestCluster, TestNode};
use warren_tests::promptly;

use crate::quorum::{channel, confirming, durable, publish_confirmed, quorum};

const SETTLE: Duration = Duration::from_secs(20);

fn sized(size: i64) -> FieldTable {
    let mut arguments = quorum();
    arguments.insert(
        "x-quorum-initial-group-size".into(),
        AMQPValue::LongLongInt(size),
    );
    arguments
}

fn add(queue: &str, node: &TestNode) -> ControlRequest {
    ControlRequest::AddMember {
        vhost: "/".into(),
        queue: queue.into(),
        node: node.name().to_string(),
    }
}

fn delete(queue: &str, node: &TestNode) -> ControlRequest {
    ControlRequest::DeleteMember {
        vhost: "/".into(),
        queue: queue.into(),
        node: node.name().to_string(),
    }
}

async fn rows(node: &TestNode, request: ControlRequest) -> Vec<MemberChange> {
    match node.control(request).await {
        Ok(ControlResponse::MemberChanges(rows)) => rows,
        other => panic!("not a table of changes: {other:?}"),
    }
}

/// The queue's members as `asking`'s member of its group sees them once they settle (voters,
/// learners), sorted by name.
async fn members_seen(node: &TestNode, queue: &str) -> Option<(Vec<String>, Vec<String>)> {
    let broker = node.broker();
    let id = broker.vhost("/")?.queue(queue.as_bytes())?.id();
    let status = broker.quorum().group_status(id).await?;
    let mut voters: Vec<String> = status
        .members
        .iter()
        .filter(|member| !status.learners.contains(member))
        .map(ToString::to_string)
        .collect();
    voters.sort();
    let mut learners: Vec<String> = status.learners.iter().map(ToString::to_string).collect();
    learners.sort();
    Some((voters, learners))
}

/// Waits until `node` sees exactly `voters` voting in the queue's group and nobody learning.
async fn wait_for_voters(node: &TestNode, queue: &str, voters: &[&TestNode]) {
    let mut expected: Vec<String> = voters.iter().map(|n| n.name().to_string()).collect();
    expected.sort();
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let seen = members_seen(node, queue).await;
        if seen.as_ref() == Some(&(expected.clone(), Vec::new())) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} sees {seen:?}, not the voters {expected:?}",
            node.name()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Consumes `count` messages from `queue` through `node` and acks them.
async fn consume(node: &TestNode, queue: &str, count: usize) -> Vec<String> {
    let (_connection, channel) = channel(&node.url()).await;
    let mut deliveries = channel
        .basic_consume(
            queue.into(),
            "members".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consumes");
    let mut bodies = Vec::new();
    while bodies.len() < count {
        let delivery = promptly("a delivery", deliveries.next())
            .await
            .expect("a delivery")
            .expect("not an error");
        bodies.push(String::from_utf8(delivery.data.clone()).expect("a text body"));
        delivery
            .ack(BasicAckOptions::default())
            .await
            .expect("acked");
    }
    bodies
}

/// A queue of one member grows to three (asked on a node without a member, then with `grow`);
/// the new members catch up on the messages published before they joined, and keep them when
/// the first member's node stops. Its member removed, a node still serves the queue through
/// the others; the last member cannot go. Asked again, each change is a no-op; a classic
/// queue, an unknown queue or node are refused with RabbitMQ's texts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_grows_and_shrinks_while_it_runs() {
    let mut cluster = TestCluster::builder().nodes(3).build().await;
    cluster.wait_for_members(3, SETTLE).await;
    let (_connection, on_first) = confirming(cluster.node(0)).await;
    on_first
        .queue_declare("grown".into(), durable(), sized(1))
        .await
        .expect("declared with one member");
    on_first
        .queue_declare("full".into(), durable(), quorum())
        .await
        .expect("declared with three");
    on_first
        .queue_declare("classic".into(), durable(), FieldTable::default())
        .await
        .expect("a classic queue");
    cluster.wait_for_queue("/", "grown", SETTLE).await;
    cluster.wait_for_queue("/", "full", SETTLE).await;
    let before: Vec<String> = (0..30).map(|i| format!("before-{i}")).collect();
    publish_confirmed(&on_first, "grown", &before).await;
    wait_for_voters(cluster.node(0), "grown", &[cluster.node(0)]).await;

    // Asked on node 2, which holds no member: the change finds the group's leader.
    let added = cluster.node(2).control(add("grown", cluster.node(1))).await;
    assert!(matches!(added, Ok(ControlResponse::Done(_))), "{added:?}");
    wait_for_voters(
        cluster.node(1),
        "grown",
        &[cluster.node(0), cluster.node(1)],
    )
    .await;
    let again = cluster.node(0).control(add("grown", cluster.node(1))).await;
    assert!(matches!(again, Ok(ControlResponse::Done(_))), "{again:?}");

    // `grow ... even` takes the queues with an even number of members: "grown" (2), not
    // "full" (3, and with a member on node 2 already).
    let grown = rows(
        cluster.node(1),
        ControlRequest::Grow {
            node: cluster.node(2).name().to_string(),
            even: true,
            vhost_pattern: ".*".into(),
            queue_pattern: ".*".into(),
        },
    )
    .await;
    assert_eq!(
        grown,
        vec![MemberChange {
            vhost: "/".into(),
            name: "grown".into(),
            size: Some(3),
            result: "ok".into(),
        }]
    );
    let all: Vec<&TestNode> = (0..3).map(|i| cluster.node(i)).collect();
    wait_for_voters(cluster.node(2), "grown", &all).await;
    // `list_queues` shows them, asked on any node.
    let listed = cluster
        .node(1)
        .control(ControlRequest::ListQueues {
            vhost: "/".into(),
            columns: ["name", "type", "leader", "members", "online", "messages"]
                .map(String::from)
                .to_vec(),
        })
        .await;
    let Ok(ControlResponse::Table { rows: listing, .. }) = listed else {
        panic!("not a table: {listed:?}");
    };
    let mut names: Vec<String> = all.iter().map(|node| node.name().to_string()).collect();
    let members = |names: &[String]| format!("[{}]", names.join(", "));
    let grown_row = listing
        .iter()
        .find(|row| row[0] == "grown")
        .expect("grown is listed");
    assert_eq!(grown_row[1], "quorum");
    assert_eq!(
        grown_row[2],
        cluster.node(0).name().to_string(),
        "{grown_row:?}"
    );
    // Members in the order they joined: node 0, then 1, then 2.
    assert_eq!(grown_row[3], members(&names));
    assert_eq!(grown_row[4], members(&names), "all online");
    assert_eq!(grown_row[5], "30");
    let classic_row = listing
        .iter()
        .find(|row| row[0] == "classic")
        .expect("classic is listed");
    assert_eq!(classic_row[1], "classic");
    names.truncate(1);
    assert_eq!(classic_row[3], members(&names), "its home node");

    // The first member's node stops: the two that joined hold every confirmed message.
    cluster.stop_node(0).await;
    let bodies = consume(cluster.node(2), "grown", 30).await;
    assert_eq!(
        bodies, before,
        "every message published before they joined, in order"
    );
    cluster.restart_node(0).await;
    cluster.wait_for_members(3, SETTLE).await;

    // Node 0's member goes; node 0 still serves the queue through the others.
    let deleted = cluster
        .node(1)
        .control(delete("grown", cluster.node(0)))
        .await;
    assert!(
        matches!(deleted, Ok(ControlResponse::Done(_))),
        "{deleted:?}"
    );
    let (one, two) = (cluster.node(1), cluster.node(2));
    wait_for_voters(cluster.node(1), "grown", &[one, two]).await;
    let deadline = tokio::time::Instant::now() + SETTLE;
    while members_seen(cluster.node(0), "grown").await.is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 0 still holds a member of the queue"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_again, on_zero) = confirming(cluster.node(0)).await;
    let after: Vec<String> = (0..10).map(|i| format!("after-{i}")).collect();
    publish_confirmed(&on_zero, "grown", &after).await;
    assert_eq!(consume(cluster.node(0), "grown", 10).await, after);
    let gone_again = cluster
        .node(1)
        .control(delete("grown", cluster.node(0)))
        .await;
    assert!(
        matches!(gone_again, Ok(ControlResponse::Done(_))),
        "{gone_again:?}"
    );

    // `shrink` takes node 1's members; the last member of a queue stays.
    let shrunk = rows(
        cluster.node(0),
        ControlRequest::Shrink {
            node: cluster.node(1).name().to_string(),
        },
    )
    .await;
    let outcomes: Vec<(&str, Option<usize>, &str)> = shrunk
        .iter()
        .map(|row| (row.name.as_str(), row.size, row.result.as_str()))
        .collect();
    assert_eq!(
        outcomes,
        vec![("full", Some(2), "ok"), ("grown", Some(1), "ok")]
    );
    wait_for_voters(cluster.node(2), "grown", &[cluster.node(2)]).await;
    let last = cluster
        .node(0)
        .control(delete("grown", cluster.node(2)))
        .await;
    assert_eq!(last, Err("last_node".to_string()));

    // Refusals, in RabbitMQ's words.
    let classic = cluster
        .node(0)
        .control(add("classic", cluster.node(1)))
        .await;
    assert_eq!(
        classic,
        Err("Cannot add members to a classic queue".to_string())
    );
    let missing = cluster
        .node(0)
        .control(add("nowhere", cluster.node(1)))
        .await;
    assert_eq!(
        missing,
        Err("queue 'nowhere' was not found in virtual host '/'".to_string())
    );
    let stranger = cluster
        .node(0)
        .control(ControlRequest::AddMember {
            vhost: "/".into(),
            queue: "grown".into(),
            node: "stranger@nowhere".into(),
        })
        .await;
    assert_eq!(
        stranger,
        Err("node stranger@nowhere is not a member of the cluster".to_string())
    );
    cluster.stop().await;
}

/// `forget_cluster_node` of a stopped node removes its member from every quorum queue first:
/// the queues go on with the members left, and count only those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_node_leaves_every_quorum_queue() {
    let mut cluster = TestCluster::builder().nodes(3).build().await;
    cluster.wait_for_members(3, SETTLE).await;
    let (_connection, on_first) = confirming(cluster.node(0)).await;
    for queue in ["left-1", "left-2"] {
        on_first
            .queue_declare(queue.into(), durable(), quorum())
            .await
            .expect("declared");
        cluster.wait_for_queue("/", queue, SETTLE).await;
    }
    let bodies: Vec<String> = (0..20).map(|i| format!("m-{i}")).collect();
    publish_confirmed(&on_first, "left-1", &bodies).await;
    let gone = cluster.node(2).name().to_string();
    cluster.stop_node(2).await;
    let forgotten = cluster
        .node(0)
        .control(ControlRequest::ForgetNode {
            node: gone.clone(),
            offline: false,
        })
        .await;
    assert!(
        matches!(forgotten, Ok(ControlResponse::Done(_))),
        "{forgotten:?}"
    );
    for queue in ["left-1", "left-2"] {
        wait_for_voters(cluster.node(1), queue, &[cluster.node(0), cluster.node(1)]).await;
    }
    // Two members now: the queue needs both, and has them.
    publish_confirmed(&on_first, "left-1", &["last".to_string()]).await;
    let mut expected = bodies.clone();
    expected.push("last".into());
    assert_eq!(consume(cluster.node(1), "left-1", 21).await, expected);
    cluster.stop().await;
}

/// A member removed while its node is down: the node, once back and caught up on the
/// metadata, deletes its member (its log ends before the removal) and serves the queue through
/// the members left. (A node whose metadata already had the removal when it started does the
/// same from the record's list of removed members.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_removed_while_its_node_is_down_goes_when_it_returns() {
    let mut cluster = TestCluster::builder().nodes(3).build().await;
    cluster.wait_for_members(3, SETTLE).await;
    let (_connection, on_first) = confirming(cluster.node(0)).await;
    on_first
        .queue_declare("away".into(), durable(), quorum())
        .await
        .expect("declared");
    cluster.wait_for_queue("/", "away", SETTLE).await;
    let bodies: Vec<String> = (0..10).map(|i| format!("m-{i}")).collect();
    publish_confirmed(&on_first, "away", &bodies).await;
    cluster.stop_node(2).await;
    let name = cluster.node(2).name().to_string();
    let deleted = cluster
        .node(0)
        .control(ControlRequest::DeleteMember {
            vhost: "/".into(),
            queue: "away".into(),
            node: name,
        })
        .await;
    assert!(
        matches!(deleted, Ok(ControlResponse::Done(_))),
        "{deleted:?}"
    );
    cluster.restart_node(2).await;
    cluster.wait_for_members(3, SETTLE).await;
    cluster.wait_for_queue("/", "away", SETTLE).await;
    let deadline = tokio::time::Instant::now() + SETTLE;
    while members_seen(cluster.node(2), "away").await.is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the returned node still holds a member"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_again, on_returned) = confirming(cluster.node(2)).await;
    publish_confirmed(&on_returned, "away", &["back".to_string()]).await;
    let mut expected = bodies;
    expected.push("back".into());
    assert_eq!(consume(cluster.node(2), "away", 11).await, expected);
    cluster.stop().await;
}

/// `rabbitmq-queues rebalance quorum`: six quorum queues declared through one node have their
/// leaders there (most of them, at least); rebalanced (asked of another node), each node leads two, as the table
/// says and the queues' groups agree, and the queues still take and give messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_spreads_the_leaders_over_the_nodes() {
    let cluster = TestCluster::builder().nodes(3).build().await;
    cluster.wait_for_members(3, SETTLE).await;
    let (_a, on_first) = confirming(cluster.node(0)).await;
    let names: Vec<String> = (0..6).map(|i| format!("r{i}")).collect();
    for name in &names {
        on_first
            .queue_declare(name.as_str().into(), durable(), quorum())
            .await
            .expect("declared, led by node 0");
    }
    for name in &names {
        cluster.wait_for_queue("/", name, SETTLE).await;
    }
    // Each queue's leader, as node 0's member sees it, once every queue has one.
    let leaders = async |cluster: &TestCluster| {
        promptly("every queue to have a leader", async {
            'again: loop {
                let mut counts = std::collections::BTreeMap::new();
                for name in &names {
                    let broker = cluster.node(0).broker();
                    let queue = broker.vhost("/").unwrap().queue(name.as_bytes());
                    let status = broker
                        .quorum()
                        .group_status(queue.expect("the queue").id())
                        .await;
                    let Some(leader) = status.and_then(|status| status.leader) else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue 'again;
                    };
                    *counts.entry(leader.to_string()).or_insert(0) += 1;
                }
                return counts;
            }
        })
        .await
    };
    let before = leaders(&cluster).await;
    // Node 0 stood for election first in each (an election under load may go elsewhere).
    assert!(
        before.values().any(|count| *count > 3),
        "unbalanced to start with: {before:?}"
    );
    let answer = cluster
        .node(1)
        .control(ControlRequest::Rebalance {
            vhost_pattern: ".*".into(),
            queue_pattern: "^r".into(),
        })
        .await;
    let Ok(ControlResponse::Table { columns, rows }) = answer else {
        panic!("a table: {answer:?}");
    };
    assert_eq!(columns, ["Node name", "Number of quorum queues"]);
    let mut expected: Vec<Vec<String>> = (0..3)
        .map(|i| vec![cluster.node(i).name().to_string(), "2".to_string()])
        .collect();
    expected.sort();
    assert_eq!(rows, expected);
    let after = leaders(&cluster).await;
    assert!(after.values().all(|count| *count == 2), "{after:?}");
    publish_confirmed(&on_first, "r5", &["after".into()]).await;
    assert_eq!(consume(cluster.node(2), "r5", 1).await, ["after"]);
    cluster.stop().await;
}
