//! A fake of the AWS APIs the AWS peer discovery backend calls: no AWS can be reached here, so
//! this follows the documented Query APIs (EC2 `DescribeInstances` 2016-11-15, Auto Scaling
//! `DescribeAutoScalingInstances` and `DescribeAutoScalingGroups` 2011-01-01, XML answers with
//! pagination tokens) and the instance metadata service (IMDSv2: `PUT /latest/api/token`, then
//! `GET /latest/meta-data/...` with the token).
//!
//! Every API request must carry a Signature Version 4 `Authorization` that the fake recomputes
//! from what it received (host, query, `x-amz-date`, the session token of role credentials);
//! a wrong one gets AWS's 403 `SignatureDoesNotMatch`. The metadata service serves several
//! instances at once: each node is pointed at `http://127.0.0.1:<port>/<instance-id>` and
//! sees its own instance there.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use warren_cluster::discovery::sigv4::{Credentials, canonical_query, sign_get};

use crate::{read_http_request, write_http_response};

/// An EC2 instance of the fake account.
#[derive(Debug, Clone)]
pub struct Instance {
    /// `i-...`
    pub id: String,
    /// Its private IP.
    pub private_ip: String,
    /// `running`, `terminated`...
    pub state: String,
    /// Tags.
    pub tags: Vec<(String, String)>,
    /// Its autoscaling group, if any.
    pub group: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    instances: Vec<Instance>,
    /// Requests refused for a bad signature.
    refused: usize,
    /// Actions served.
    actions: Vec<String>,
}

/// The fake, on 127.0.0.1.
#[derive(Debug)]
pub struct FakeAws {
    /// Its port.
    pub port: u16,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeAws {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The long-term credentials the fake accepts, and those of the instance role.
pub const ACCESS_KEY_ID: &str = "AKIDWARRENTEST";
/// The secret of [`ACCESS_KEY_ID`].
pub const SECRET_KEY: &str = "warren-test-secret";
const ROLE_KEY_ID: &str = "ASIAWARRENROLE";
const ROLE_SECRET: &str = "warren-role-secret";
const ROLE_TOKEN: &str = "warren-role-session-token";
/// The fake's region (its instances' availability zone is `eu-west-1b`).
pub const REGION: &str = "eu-west-1";

impl FakeAws {
    /// Starts the fake with `instances`.
    pub async fn start(instances: Vec<Instance>) -> FakeAws {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let state = Arc::new(Mutex::new(State {
            instances,
            ..State::default()
        }));
        let for_task = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, for_task.clone()));
            }
        });
        FakeAws { port, state, task }
    }

    /// Changes the instances (launch, terminate, move between groups).
    pub fn update(&self, change: impl FnOnce(&mut Vec<Instance>)) {
        change(&mut self.state.lock().instances);
    }

    /// How many requests had a bad signature.
    pub fn refused(&self) -> usize {
        self.state.lock().refused
    }

    /// Whether `action` was called.
    pub fn called(&self, action: &str) -> bool {
        self.state.lock().actions.iter().any(|a| a == action)
    }
}

async fn serve(socket: TcpStream, state: Arc<Mutex<State>>) {
    let mut reader = BufReader::new(socket);
    let Some(request) = read_http_request(&mut reader).await else {
        return;
    };
    let (status, answer) = handle(&request.method, &request.target, &request.headers, &state);
    let content_type = [("Content-Type", "text/xml".to_string())];
    write_http_response(reader.get_mut(), status, &content_type, &answer).await;
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%'
            && let Some(hex) = text.get(index + 1..index + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            index += 3;
            continue;
        }
        out.push(bytes[index]);
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn handle(
    method: &str,
    target: &str,
    headers: &HashMap<String, String>,
    state: &Mutex<State>,
) -> (u16, String) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    // The metadata service: /<instance-id>/latest/...
    if let Some((instance, rest)) = path
        .strip_prefix('/')
        .and_then(|path| path.split_once("/latest/"))
    {
        if method == "PUT" && rest == "api/token" {
            if !headers.contains_key("x-aws-ec2-metadata-token-ttl-seconds") {
                return (400, "missing the token TTL header".into());
            }
            return (200, format!("token-for-{instance}"));
        }
        if headers.get("x-aws-ec2-metadata-token") != Some(&format!("token-for-{instance}")) {
            return (401, String::new());
        }
        return match rest {
            "meta-data/instance-id" => (200, instance.to_string()),
            "meta-data/placement/availability-zone" => (200, format!("{REGION}b")),
            "meta-data/iam/security-credentials/" => (200, "warren-node-role".into()),
            "meta-data/iam/security-credentials/warren-node-role" => (
                200,
                format!(
                    r#"{{"Code":"Success","Type":"AWS-HMAC","AccessKeyId":"{ROLE_KEY_ID}","SecretAccessKey":"{ROLE_SECRET}","Token":"{ROLE_TOKEN}","Expiration":"2099-01-01T00:00:00Z"}}"#
                ),
            ),
            _ => (404, String::new()),
        };
    }
    let parameters: Vec<(String, String)> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(key), decode(value))
        })
        .collect();
    let parameter = |name: &str| {
        parameters
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    };
    let action = parameter("Action").unwrap_or_default();
    let service = if action.contains("AutoScaling") {
        "autoscaling"
    } else {
        "ec2"
    };
    if !signed_correctly(service, &parameters, headers) {
        state.lock().refused += 1;
        return (
            403,
            "<Response><Errors><Error><Code>SignatureDoesNotMatch</Code><Message>The request \
             signature we calculated does not match the signature you provided.</Message>\
             </Error></Errors></Response>"
                .into(),
        );
    }
    let mut state = state.lock();
    state.actions.push(action.clone());
    match action.as_str() {
        "DescribeInstances" => describe_instances(&state.instances, &parameters),
        "DescribeAutoScalingInstances" => {
            let id = parameter("InstanceIds.member.1").unwrap_or_default();
            let members: String = state
                .instances
                .iter()
                .filter(|instance| instance.id == id)
                .filter_map(|instance| instance.group.as_ref())
                .map(|group| {
                    format!(
                        "<member><InstanceId>{id}</InstanceId><AutoScalingGroupName>{group}</AutoScalingGroupName><LifecycleState>InService</LifecycleState></member>"
                    )
                })
                .collect();
            (
                200,
                format!(
                    "<DescribeAutoScalingInstancesResponse xmlns=\"http://autoscaling.amazonaws.com/doc/2011-01-01/\"><DescribeAutoScalingInstancesResult><AutoScalingInstances>{members}</AutoScalingInstances></DescribeAutoScalingInstancesResult></DescribeAutoScalingInstancesResponse>"
                ),
            )
        }
        "DescribeAutoScalingGroups" => {
            let group = parameter("AutoScalingGroupNames.member.1").unwrap_or_default();
            let members: String = state
                .instances
                .iter()
                .filter(|instance| instance.group.as_deref() == Some(group.as_str()))
                .map(|instance| {
                    format!(
                        "<member><InstanceId>{}</InstanceId><LifecycleState>InService</LifecycleState></member>",
                        instance.id
                    )
                })
                .collect();
            (
                200,
                format!(
                    "<DescribeAutoScalingGroupsResponse><DescribeAutoScalingGroupsResult><AutoScalingGroups><member><AutoScalingGroupName>{group}</AutoScalingGroupName><Instances>{members}</Instances></member></AutoScalingGroups></DescribeAutoScalingGroupsResult></DescribeAutoScalingGroupsResponse>"
                ),
            )
        }
        _ => (
            400,
            format!(
                "<Response><Errors><Error><Code>InvalidAction</Code><Message>{action}</Message></Error></Errors></Response>"
            ),
        ),
    }
}

/// Recomputes the request's SigV4 signature with the credentials its access key names.
fn signed_correctly(
    service: &str,
    parameters: &[(String, String)],
    headers: &HashMap<String, String>,
) -> bool {
    let (Some(authorization), Some(date), Some(host)) = (
        headers.get("authorization"),
        headers.get("x-amz-date"),
        headers.get("host"),
    ) else {
        return false;
    };
    let credentials = if authorization.contains(&format!("Credential={ACCESS_KEY_ID}/")) {
        Credentials {
            access_key_id: ACCESS_KEY_ID.into(),
            secret_key: SECRET_KEY.into(),
            session_token: None,
        }
    } else if authorization.contains(&format!("Credential={ROLE_KEY_ID}/")) {
        if headers.get("x-amz-security-token").map(String::as_str) != Some(ROLE_TOKEN) {
            return false;
        }
        Credentials {
            access_key_id: ROLE_KEY_ID.into(),
            secret_key: ROLE_SECRET.into(),
            session_token: Some(ROLE_TOKEN.into()),
        }
    } else {
        return false;
    };
    let expected = sign_get(
        &credentials,
        REGION,
        service,
        host,
        &canonical_query(parameters),
        date,
    );
    expected
        .iter()
        .any(|(name, value)| name == "Authorization" && value == authorization)
}

/// At most two instances per page, with `nextToken`, to exercise pagination.
fn describe_instances(instances: &[Instance], parameters: &[(String, String)]) -> (u16, String) {
    // (filter name, accepted values)
    let mut filters: Vec<(String, Vec<String>)> = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    for (key, value) in parameters {
        if let Some(index) = key
            .strip_prefix("Filter.")
            .and_then(|k| k.strip_suffix(".Name"))
        {
            let value_prefix = format!("Filter.{index}.Value.");
            let wanted = parameters
                .iter()
                .filter(|(key, _)| key.starts_with(&value_prefix))
                .map(|(_, value)| value.clone())
                .collect();
            filters.push((value.clone(), wanted));
        }
        if key.starts_with("InstanceId.") {
            ids.push(value.clone());
        }
    }
    let selected: Vec<&Instance> = instances
        .iter()
        .filter(|instance| ids.is_empty() || ids.contains(&instance.id))
        .filter(|instance| {
            filters
                .iter()
                .all(|(name, wanted)| match name.strip_prefix("tag:") {
                    Some(tag) => instance
                        .tags
                        .iter()
                        .any(|(k, v)| k == tag && wanted.contains(v)),
                    None if name == "instance-state-name" => wanted.contains(&instance.state),
                    None => false,
                })
        })
        .collect();
    let start: usize = parameters
        .iter()
        .find(|(key, _)| key == "NextToken")
        .and_then(|(_, token)| token.strip_prefix("page-")?.parse().ok())
        .unwrap_or(0);
    let page: Vec<&&Instance> = selected.iter().skip(start).take(2).collect();
    let items: String = page
        .iter()
        .map(|instance| {
            format!(
                "<item><reservationId>r-{id}</reservationId><instancesSet><item><instanceId>{id}</instanceId><instanceState><code>16</code><name>{state}</name></instanceState><privateDnsName>ip-{dashed}.{REGION}.compute.internal</privateDnsName><privateIpAddress>{ip}</privateIpAddress><tagSet/></item></instancesSet></item>",
                id = instance.id,
                state = instance.state,
                dashed = instance.private_ip.replace('.', "-"),
                ip = instance.private_ip,
            )
        })
        .collect();
    let next = if start + 2 < selected.len() {
        format!("<nextToken>page-{}</nextToken>", start + 2)
    } else {
        String::new()
    };
    (
        200,
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DescribeInstancesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>fake</requestId><reservationSet>{items}</reservationSet>{next}</DescribeInstancesResponse>"
        ),
    )
}
