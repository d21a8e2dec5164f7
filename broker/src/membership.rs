//! Where a quorum queue's members are: `add_member`, `delete_member`, `grow` and `shrink`, as
//! `rabbitmq-queues` does them, run on whichever node the operator asks.
//!
//! ```text
//!  add_member     record += node (its node starts an empty member) ─> leader: AddLearner
//!                 (the leader promotes it to voter once it has caught up)
//!  delete_member  leader: Remove (committed at index R) ─> record -= node, R
//!                 (its node deletes its member and log, unless that log goes past R)
//! ```
//!
//! The record (the metadata store's) says which nodes hold members and so where each node's
//! front routes; the group's own log says who votes. An addition goes to the record first, so
//! that the new member exists by the time the leader sends it the log; a removal goes to the
//! group first, so that the record never names fewer members than can vote. Both are
//! idempotent: adding a member that is there, or removing one that is not, succeeds, and one
//! left half-done (the record changed, the group not) is completed when asked again.

use std::sync::Arc;
use std::time::Duration;

use regex_lite::Regex;
use tokio::time::Instant;
use warren_cluster::NodeName;
use warren_cluster::control::MemberChange;
use warren_cluster::multiraft::core::MembershipChange;
use warren_cluster::multiraft::host::GroupError;

use crate::broker::Broker;
use crate::queue::QueueHandle;
use crate::server::NodeShared;
use crate::store::metadata::MetadataCommand;

/// How long a change waits for another change of the same group to be committed (a new
/// member's promotion is one).
const CHANGE_PATIENCE: Duration = Duration::from_secs(10);

/// A quorum queue and its members, as this node knows them.
struct Target {
    vhost: String,
    queue: QueueHandle,
    members: Vec<(u64, String)>,
}

impl Target {
    fn ids(&self) -> Vec<u64> {
        self.members.iter().map(|(id, _)| *id).collect()
    }

    fn holds(&self, node: &str) -> bool {
        self.members.iter().any(|(_, member)| member == node)
    }
}

/// RabbitMQ's text for a queue that does not exist.
fn not_found(vhost: &str, queue: &str) -> String {
    format!("queue '{queue}' was not found in virtual host '{vhost}'")
}

fn find(broker: &Broker, vhost: &str, queue: &str, verb: &str) -> Result<Target, String> {
    let handle = broker
        .vhost(vhost)
        .and_then(|v| v.queue(queue.as_bytes()))
        .ok_or_else(|| not_found(vhost, queue))?;
    target(broker, vhost, handle).ok_or_else(|| format!("Cannot {verb} a classic queue"))
}

fn target(broker: &Broker, vhost: &str, queue: QueueHandle) -> Option<Target> {
    if !queue.config.quorum {
        return None;
    }
    let members = broker.quorum().placement(queue.id())?;
    Some(Target {
        vhost: vhost.to_string(),
        queue,
        members,
    })
}

/// The metadata member id of a cluster member, by node name.
fn member_id(broker: &Broker, node: &str) -> Result<u64, String> {
    let group = broker
        .metadata_group()
        .ok_or("the metadata store is not running")?;
    group
        .status()
        .members
        .into_iter()
        .find(|member| member.name == node)
        .map(|member| member.id)
        .ok_or_else(|| format!("node {node} is not a member of the cluster"))
}

async fn set_members(
    broker: &Broker,
    target: &Target,
    members: Vec<(u64, String)>,
    removed_at: u64,
) -> Result<(), String> {
    broker
        .store()
        .metadata
        .propose(MetadataCommand::SetQuorumMembers {
            vhost: target.vhost.clone(),
            name: target.queue.name.as_bytes().to_vec(),
            id: target.queue.id(),
            members,
            removed_at,
        })
        .await
        .map_err(|error| error.explanation)
}

/// Changes the group's membership, waiting out another change still being committed.
async fn change(
    broker: &Broker,
    target: &Target,
    change: MembershipChange,
) -> Result<u64, GroupError> {
    let host = broker.quorum().host();
    let deadline = Instant::now() + CHANGE_PATIENCE;
    loop {
        match host
            .change_membership(target.queue.id(), change, &target.ids())
            .await
        {
            Err(GroupError::ChangeInProgress(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            result => return result,
        }
    }
}

/// RabbitMQ's words for why a change failed.
fn failure(error: &GroupError) -> String {
    match error {
        GroupError::Timeout(_) | GroupError::NoLeader(_) => "timeout".to_string(),
        GroupError::ChangeInProgress(_) => "cluster_change_not_permitted".to_string(),
        GroupError::LastVoter(_) => "last_node".to_string(),
        other => other.to_string(),
    }
}

/// `add_member`: a member of the queue on `node`, which joins as a non-voter and votes once it
/// has caught up.
pub(crate) async fn add_member(
    node: &NodeShared,
    broker: &Arc<Broker>,
    vhost: &str,
    queue: &str,
    on: &str,
) -> Result<(), String> {
    let target = find(broker, vhost, queue, "add members to")?;
    let id = member_id(broker, on)?;
    add(node, broker, &target, on, id).await
}

async fn add(
    node: &NodeShared,
    broker: &Broker,
    target: &Target,
    on: &str,
    id: u64,
) -> Result<(), String> {
    if target.holds(on) {
        // In the record: the group has it too, unless an earlier add stopped half-way.
        return match change(broker, target, MembershipChange::AddLearner(id)).await {
            Ok(_) | Err(GroupError::Unchanged(_)) => Ok(()),
            Err(error) => Err(failure(&error)),
        };
    }
    if !crate::control::is_running(node, on).await {
        return Err("node_not_running".to_string());
    }
    let before = target.members.clone();
    let mut after = before.clone();
    after.push((id, on.to_string()));
    set_members(broker, target, after, 0).await?;
    match change(broker, target, MembershipChange::AddLearner(id)).await {
        Ok(_) | Err(GroupError::Unchanged(_)) => {
            tracing::info!(
                "queue '{}' in vhost '{}': a member added on {on}",
                target.queue.name,
                target.vhost
            );
            Ok(())
        }
        Err(error) => {
            // Undone as far as it went: the member out of the group (it may have got in
            // before the answer was lost) and the record as it was.
            let _ = change(broker, target, MembershipChange::Remove(id)).await;
            let _ = set_members(broker, target, before, u64::MAX).await;
            Err(failure(&error))
        }
    }
}

/// `delete_member`: the queue's member on `node` goes (its log with it); the last one cannot.
pub(crate) async fn delete_member(
    broker: &Arc<Broker>,
    vhost: &str,
    queue: &str,
    on: &str,
) -> Result<(), String> {
    let target = find(broker, vhost, queue, "delete members from")?;
    delete(broker, &target, on).await
}

async fn delete(broker: &Broker, target: &Target, on: &str) -> Result<(), String> {
    let Some((id, _)) = target
        .members
        .iter()
        .find(|(_, member)| member == on)
        .cloned()
    else {
        return Ok(());
    };
    if target.members.len() == 1 {
        return Err("last_node".to_string());
    }
    let removed_at = match change(broker, target, MembershipChange::Remove(id)).await {
        Ok(index) => index,
        // Out of the group already (an earlier delete stopped half-way): its log may still
        // be there, and goes if it ends before now.
        Err(GroupError::Unchanged(_)) => u64::MAX,
        Err(error) => return Err(failure(&error)),
    };
    let rest: Vec<(u64, String)> = target
        .members
        .iter()
        .filter(|(_, member)| member != on)
        .cloned()
        .collect();
    set_members(broker, target, rest, removed_at).await?;
    tracing::info!(
        "queue '{}' in vhost '{}': the member on {on} was removed",
        target.queue.name,
        target.vhost
    );
    Ok(())
}

/// Every quorum queue of every vhost, with its members.
fn quorum_queues(broker: &Broker) -> Vec<Target> {
    let mut all = Vec::new();
    for vhost in broker.vhost_names() {
        let Some(queues) = broker.vhost(&vhost).map(|v| v.queues()) else {
            continue;
        };
        let mut queues: Vec<Target> = queues
            .into_iter()
            .filter_map(|queue| target(broker, &vhost, queue))
            .collect();
        queues.sort_by(|a, b| a.queue.name.as_bytes().cmp(b.queue.name.as_bytes()));
        all.extend(queues);
    }
    all
}

fn pattern(text: &str, name: &str) -> Result<Regex, String> {
    Regex::new(text).map_err(|error| format!("{name} '{text}' is not a valid pattern: {error}"))
}

/// The row of a queue: its size after a change (before it, when it failed), and the outcome in
/// `rabbitmq-queues`' words.
fn row(target: &Target, outcome: Result<usize, String>) -> MemberChange {
    let before = target.members.len();
    let (size, result) = match outcome {
        Ok(size) => (Some(size), "ok".to_string()),
        Err(error) if error == "timeout" => (
            None,
            "error: the operation timed out and may not have been completed".to_string(),
        ),
        Err(error) if error == "last_node" => (
            Some(before),
            "error: the last node cannot be removed".to_string(),
        ),
        Err(error) => (Some(before), format!("error: {error}")),
    };
    MemberChange {
        vhost: target.vhost.clone(),
        name: target.queue.name.to_string(),
        size,
        result,
    }
}

/// `grow`: a member on `on` for every matching quorum queue without one there (`even`: only
/// those with an even number of members). Nothing is done while the node is not running.
pub(crate) async fn grow(
    node: &NodeShared,
    broker: &Arc<Broker>,
    on: &str,
    even: bool,
    vhost_pattern: &str,
    queue_pattern: &str,
) -> Result<Vec<MemberChange>, String> {
    let id = member_id(broker, on)?;
    let vhosts = pattern(vhost_pattern, "--vhost-pattern")?;
    let queues = pattern(queue_pattern, "--queue-pattern")?;
    if !crate::control::is_running(node, on).await {
        return Ok(Vec::new());
    }
    let mut rows = Vec::new();
    for target in quorum_queues(broker) {
        let chosen = !target.holds(on)
            && vhosts.is_match(&target.vhost)
            && queues.is_match(&target.queue.name.to_string())
            && (!even || target.members.len() % 2 == 0);
        if !chosen {
            continue;
        }
        let outcome = add(node, broker, &target, on, id).await;
        rows.push(row(&target, outcome.map(|()| target.members.len() + 1)));
    }
    Ok(rows)
}

/// `shrink`: `on`'s member goes from every quorum queue that has one there (not from a queue
/// it is the last member of).
pub(crate) async fn shrink(broker: &Arc<Broker>, on: &str) -> Vec<MemberChange> {
    let mut rows = Vec::new();
    for target in quorum_queues(broker) {
        if !target.holds(on) {
            continue;
        }
        let outcome = delete(broker, &target, on).await;
        rows.push(row(&target, outcome.map(|()| target.members.len() - 1)));
    }
    rows
}

/// How long a leadership hand-over may take before `rebalance` counts it failed.
const TRANSFER_PATIENCE: Duration = Duration::from_secs(5);

/// `rebalance quorum`: RabbitMQ's algorithm. The matching quorum queues are grouped by their
/// leader's node (shortest queues first); while a node leads more than its share (the queues
/// over the running nodes, rounded up), its next queue not yet moved goes to the running
/// member node that leads the fewest. Each queue moves at most once. Answers the leaders per
/// node afterwards, as `rabbitmq-queues` prints them.
pub(crate) async fn rebalance(
    node: &NodeShared,
    broker: &Arc<Broker>,
    vhost_pattern: &str,
    queue_pattern: &str,
) -> Result<(Vec<String>, Vec<Vec<String>>), String> {
    let vhosts = pattern(vhost_pattern, "--vhost-pattern")?;
    let queues = pattern(queue_pattern, "--queue-pattern")?;
    let group = broker
        .metadata_group()
        .ok_or("the metadata store is not running")?;
    let mut running = Vec::new();
    for member in group.status().members {
        if crate::control::is_running(node, &member.name).await {
            running.push(member.name);
        }
    }
    let host = broker.quorum().host();
    // (leader node) -> [(length, queue, moved)]
    let mut by_node: std::collections::BTreeMap<String, Vec<(u32, Target, bool)>> =
        std::collections::BTreeMap::new();
    let mut total: usize = 0;
    for target in quorum_queues(broker) {
        if !vhosts.is_match(&target.vhost) || !queues.is_match(&target.queue.name.to_string()) {
            continue;
        }
        let Some(leader) = host.leader(target.queue.id(), &target.ids()).await else {
            continue;
        };
        let Some((_, leader_node)) = target.members.iter().find(|(id, _)| *id == leader) else {
            continue;
        };
        let length = target
            .queue
            .ask(|reply| crate::queue::QueueCommand::Stats {
                renew: false,
                reply,
            })
            .await
            .map_or(0, |stats| stats.messages);
        total += 1;
        by_node
            .entry(leader_node.clone())
            .or_default()
            .push((length, target, false));
    }
    for queues in by_node.values_mut() {
        queues.sort_by_key(|(length, _, _)| *length);
    }
    let share = total.div_ceil(running.len().max(1));
    tracing::info!(
        "Starting queue rebalance operation: 'quorum' for vhosts matching '{vhost_pattern}' \
         and queues matching '{queue_pattern}'"
    );
    loop {
        let overloaded = by_node
            .iter()
            .find(|(_, queues)| queues.len() > share && !queues[0].2)
            .map(|(node, _)| node.clone());
        let Some(from) = overloaded else { break };
        let (length, target, _) = by_node.get_mut(&from).expect("found").remove(0);
        let mut candidates: Vec<(usize, String)> = target
            .members
            .iter()
            .map(|(_, member)| member)
            .filter(|member| **member != from && running.contains(member))
            .map(|member| (by_node.get(member).map_or(0, Vec::len), member.clone()))
            .collect();
        candidates.sort();
        let landed = match candidates.first() {
            None => from.clone(),
            Some((_, to)) => match transfer(broker, &target, &from, to).await {
                Ok(()) => {
                    tracing::info!(
                        "queue '{}' in vhost '{}' migrated to {to}",
                        target.queue.name,
                        target.vhost
                    );
                    to.clone()
                }
                Err(error) => {
                    tracing::warn!(
                        "Error migrating queue '{}' in vhost '{}': {error}",
                        target.queue.name,
                        target.vhost
                    );
                    from.clone()
                }
            },
        };
        by_node
            .entry(landed)
            .or_default()
            .push((length, target, true));
    }
    tracing::info!("Finished queue rebalance operation");
    let columns = vec![
        "Node name".to_string(),
        "Number of quorum queues".to_string(),
    ];
    let rows = by_node
        .into_iter()
        .filter(|(_, queues)| !queues.is_empty())
        .map(|(node, queues)| vec![node, queues.len().to_string()])
        .collect();
    Ok((columns, rows))
}

/// Hands a queue's leadership from the node `from` to the node `to`, and waits until `to`
/// leads it.
async fn transfer(broker: &Broker, target: &Target, from: &str, to: &str) -> Result<(), String> {
    let id_of = |name: &str| {
        target
            .members
            .iter()
            .find(|(_, member)| member == name)
            .map(|(id, _)| *id)
            .ok_or_else(|| format!("{name} holds no member"))
    };
    let (leader, next) = (id_of(from)?, id_of(to)?);
    let host = broker.quorum().host();
    let group = target.queue.id();
    host.transfer_leadership_from(group, leader, next)
        .await
        .map_err(|error| error.to_string())?;
    let deadline = Instant::now() + TRANSFER_PATIENCE;
    while Instant::now() < deadline {
        if host.leader(group, &target.ids()).await == Some(next) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!(
        "{to} did not take the lead within {TRANSFER_PATIENCE:?}"
    ))
}

/// The columns `list_queues` shows (a subset of `rabbitmqctl`'s).
pub(crate) const QUEUE_COLUMNS: &[&str] = &[
    "name",
    "durable",
    "auto_delete",
    "exclusive",
    "arguments",
    "messages",
    "consumers",
    "type",
    "leader",
    "members",
    "online",
];

/// A list of node names as `rabbitmqctl` prints one: `[rabbit@a, rabbit@b]`.
fn node_list(nodes: &[String]) -> String {
    format!("[{}]", nodes.join(", "))
}

/// `list_queues`: the queues of `vhost`, sorted by name, with `columns` (`name messages` by
/// default). A quorum queue's leader, members and online members (those on nodes this one
/// reaches) come from its group; a classic queue's are its home node.
pub(crate) async fn list_queues(
    node: &NodeShared,
    broker: &Arc<Broker>,
    vhost: &str,
    columns: &[String],
) -> Result<(Vec<String>, Vec<Vec<String>>), String> {
    let columns: Vec<String> = if columns.is_empty() {
        vec!["name".into(), "messages".into()]
    } else {
        columns.to_vec()
    };
    if let Some(bad) = columns
        .iter()
        .find(|column| !QUEUE_COLUMNS.contains(&column.as_str()))
    {
        return Err(format!(
            "Info key(s) {bad} are not supported; the valid ones are: {}",
            QUEUE_COLUMNS.join(", ")
        ));
    }
    let host = broker
        .vhost(vhost)
        .ok_or_else(|| format!("Virtual host '{vhost}' does not exist"))?;
    let mut queues = host.queues();
    queues.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    let me = node.transport.node().to_string();
    let reachable = |name: &str| {
        name == me
            || node
                .transport
                .is_connected(&NodeName::new_unchecked(name.to_string()))
    };
    let mut rows = Vec::with_capacity(queues.len());
    for queue in queues {
        let wants = |name: &str| columns.iter().any(|column| column == name);
        let stats = if wants("messages") || wants("consumers") {
            queue
                .ask(|reply| crate::queue::QueueCommand::Stats {
                    renew: false,
                    reply,
                })
                .await
        } else {
            None
        };
        let (leader, members) = if queue.config.quorum {
            let status = broker.quorum().group_status(queue.id()).await;
            let members = broker
                .quorum()
                .placement(queue.id())
                .map(|members| members.into_iter().map(|(_, node)| node).collect())
                .unwrap_or_default();
            let leader = status
                .and_then(|status| status.leader)
                .map(|leader| leader.to_string())
                .unwrap_or_default();
            (leader, members)
        } else {
            let home = queue
                .home
                .as_ref()
                .map_or_else(|| me.clone(), ToString::to_string);
            (home.clone(), vec![home])
        };
        let online: Vec<String> = members
            .iter()
            .filter(|member| reachable(member))
            .cloned()
            .collect();
        let row = columns
            .iter()
            .map(|column| match column.as_str() {
                "name" => queue.name.to_string(),
                "durable" => queue.durable.to_string(),
                "auto_delete" => queue.auto_delete.to_string(),
                "exclusive" => queue.exclusive_owner.is_some().to_string(),
                "arguments" => format_arguments(&queue.arguments),
                "messages" => stats.as_ref().map_or("".into(), |s| s.messages.to_string()),
                "consumers" => stats
                    .as_ref()
                    .map_or("".into(), |s| s.consumers.to_string()),
                "type" => if queue.config.quorum {
                    "quorum"
                } else {
                    "classic"
                }
                .to_string(),
                "leader" => leader.clone(),
                "members" => node_list(&members),
                "online" => node_list(&online),
                _ => String::new(),
            })
            .collect();
        rows.push(row);
    }
    Ok((columns, rows))
}

/// Queue arguments as `rabbitmqctl` prints them: `[{"x-queue-type","quorum"}]`.
fn format_arguments(arguments: &warren_wire::FieldTable) -> String {
    let pairs: Vec<String> = arguments
        .iter()
        .map(|(key, value)| {
            let value = match value {
                warren_wire::FieldValue::LongString(text) => {
                    format!("\"{}\"", String::from_utf8_lossy(text.as_bytes()))
                }
                other => other
                    .as_integer()
                    .map_or_else(|| format!("{other:?}"), |number| number.to_string()),
            };
            format!(
                "{{\"{}\",{value}}}",
                String::from_utf8_lossy(key.as_bytes())
            )
        })
        .collect();
    format!("[{}]", pairs.join(","))
}
