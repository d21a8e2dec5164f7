//! The AWS backend: the peers are the running EC2 instances carrying
//! `cluster_formation.aws.instance_tags`, or the instances of this instance's autoscaling group
//! (`use_autoscaling_group`), named by private DNS name (or private IP, or `hostname_path`).
//!
//! ```text
//!  credentials  config, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN),
//!               ~/.aws/credentials (AWS_PROFILE), the instance role (metadata service, IMDSv2)
//!  region       config, AWS_DEFAULT_REGION / AWS_REGION, the instance's availability zone,
//!               us-east-1
//!  endpoints    https://ec2.<region>.amazonaws.com, https://autoscaling.<region>.amazonaws.com,
//!               or AWS_ENDPOINT_URL_EC2 / AWS_ENDPOINT_URL_AUTO_SCALING / AWS_ENDPOINT_URL;
//!               the metadata service at AWS_EC2_METADATA_SERVICE_ENDPOINT or 169.254.169.254
//! ```
//!
//! Requests are signed with Signature Version 4. There is no registration and no lock (AWS
//! keeps the list); the seed is the smallest discovered name, as for DNS.

use std::sync::Arc;
use std::time::SystemTime;

use rustls::ClientConfig;
use serde_json::Value;
use warren_config::{AwsConfig, ProxyConfig, TlsSettings};

use super::http::{Client, is_https, split_url, tls_config};
use super::sigv4::{Credentials, Element, amz_date, canonical_query, parse_xml, sign_get};
use crate::identity::NodeName;

const EC2_VERSION: &str = "2016-11-15";
const AUTOSCALING_VERSION: &str = "2011-01-01";
const METADATA: &str = "http://169.254.169.254";

/// An AWS account's EC2 and Auto Scaling APIs, as this node sees them.
#[derive(Debug)]
pub(crate) struct Aws {
    config: AwsConfig,
    proxy: ProxyConfig,
    tls: Arc<ClientConfig>,
    node: NodeName,
    long_names: bool,
}

fn env(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|value| !value.is_empty()))
}

/// A client for `url` (`https://host[:port]` or `http://...`).
fn client_for(url: &str, tls: &Arc<ClientConfig>, proxy: &ProxyConfig) -> Result<Client, String> {
    let https = is_https(url);
    let (host, port) = split_url(url, if https { 443 } else { 80 })?;
    let settings = TlsSettings::default();
    let tls = https.then_some((tls, &settings));
    Client::new(&host, port, tls, proxy)
}

fn check(response: &super::http::Response, what: &str) -> Result<String, String> {
    let text = String::from_utf8_lossy(&response.body).into_owned();
    if (200..300).contains(&response.status) {
        Ok(text)
    } else {
        Err(format!("{what}: {} {}", response.status, text.trim()))
    }
}

impl Aws {
    /// Checks the settings; talks to nobody yet.
    pub(crate) fn new(
        config: &AwsConfig,
        proxy: &ProxyConfig,
        node: &NodeName,
        long_names: bool,
    ) -> Result<Aws, String> {
        if !config.use_autoscaling_group && config.instance_tags.is_empty() {
            return Err(
                "the aws backend needs cluster_formation.aws.instance_tags.<key> = <value> or \
                 cluster_formation.aws.use_autoscaling_group = true"
                    .into(),
            );
        }
        if config.access_key_id.is_some() != config.secret_key.is_some() {
            return Err(
                "cluster_formation.aws.access_key_id and cluster_formation.aws.secret_key go \
                 together"
                    .into(),
            );
        }
        Ok(Aws {
            config: config.clone(),
            proxy: proxy.clone(),
            tls: tls_config(&TlsSettings::default(), "cluster_formation.aws")?,
            node: node.clone(),
            long_names,
        })
    }

    /// A metadata service path (IMDSv2: a session token first).
    async fn metadata(&self, path: &str) -> Result<String, String> {
        let base = env(&["AWS_EC2_METADATA_SERVICE_ENDPOINT"]).unwrap_or_else(|| METADATA.into());
        let base = base.trim_end_matches('/');
        let prefix = base
            .strip_prefix("http://")
            .and_then(|rest| rest.split_once('/'))
            .map(|(_, prefix)| format!("/{prefix}"))
            .unwrap_or_default();
        // Never through a proxy: the metadata service is link-local, and hands out credentials.
        let client = client_for(base, &self.tls, &ProxyConfig::default())?;
        let token = client
            .clone()
            .with_header("X-aws-ec2-metadata-token-ttl-seconds", "21600")
            .request("PUT", &format!("{prefix}/latest/api/token"), None, None)
            .await?;
        let token = check(&token, "instance metadata token")?;
        let response = client
            .with_header("X-aws-ec2-metadata-token", token.trim())
            .request("GET", &format!("{prefix}{path}"), None, None)
            .await?;
        check(&response, &format!("instance metadata {path}"))
    }

    async fn region(&self) -> String {
        if let Some(region) = &self.config.region {
            return region.clone();
        }
        if let Some(region) = env(&["AWS_EC2_REGION", "AWS_DEFAULT_REGION", "AWS_REGION"]) {
            return region;
        }
        if let Ok(region) = self.metadata("/latest/meta-data/placement/region").await
            && !region.trim().is_empty()
        {
            return region.trim().to_string();
        }
        match self
            .metadata("/latest/meta-data/placement/availability-zone")
            .await
        {
            // us-east-1a -> us-east-1
            Ok(zone) => zone
                .trim()
                .trim_end_matches(|c: char| c.is_ascii_alphabetic())
                .to_string(),
            Err(error) => {
                tracing::debug!("peer discovery (aws): no region from the metadata: {error}");
                "us-east-1".into()
            }
        }
    }

    async fn credentials(&self) -> Result<Credentials, String> {
        if let (Some(access_key_id), Some(secret_key)) =
            (&self.config.access_key_id, &self.config.secret_key)
        {
            return Ok(Credentials {
                access_key_id: access_key_id.clone(),
                secret_key: secret_key.clone(),
                session_token: None,
            });
        }
        if let (Some(access_key_id), Some(secret_key)) =
            (env(&["AWS_ACCESS_KEY_ID"]), env(&["AWS_SECRET_ACCESS_KEY"]))
        {
            return Ok(Credentials {
                access_key_id,
                secret_key,
                session_token: env(&["AWS_SESSION_TOKEN"]),
            });
        }
        if let Some(credentials) = shared_credentials_file() {
            return Ok(credentials);
        }
        let role = self
            .metadata("/latest/meta-data/iam/security-credentials/")
            .await
            .map_err(|error| {
                format!(
                    "no AWS credentials (config, environment, ~/.aws/credentials, instance \
                     role): {error}"
                )
            })?;
        let role = role.lines().next().unwrap_or("").trim().to_string();
        let document = self
            .metadata(&format!(
                "/latest/meta-data/iam/security-credentials/{role}"
            ))
            .await?;
        let document: Value = serde_json::from_str(&document)
            .map_err(|error| format!("instance role credentials: {error}"))?;
        let field = |name: &str| document[name].as_str().map(str::to_string);
        match (field("AccessKeyId"), field("SecretAccessKey")) {
            (Some(access_key_id), Some(secret_key)) => Ok(Credentials {
                access_key_id,
                secret_key,
                session_token: field("Token"),
            }),
            _ => Err(format!(
                "instance role {role}: no credentials in the answer"
            )),
        }
    }

    /// Calls a Query API action.
    async fn call(
        &self,
        service: &str,
        region: &str,
        credentials: &Credentials,
        parameters: &[(String, String)],
    ) -> Result<Element, String> {
        let (endpoint_env, host_name) = match service {
            "ec2" => ("AWS_ENDPOINT_URL_EC2", "ec2"),
            _ => ("AWS_ENDPOINT_URL_AUTO_SCALING", "autoscaling"),
        };
        let suffix = if region.starts_with("cn-") {
            "amazonaws.com.cn"
        } else {
            "amazonaws.com"
        };
        let url = env(&[endpoint_env, "AWS_ENDPOINT_URL"])
            .unwrap_or_else(|| format!("https://{host_name}.{region}.{suffix}"));
        let client = client_for(&url, &self.tls, &self.proxy)?;
        let query = canonical_query(parameters);
        let mut signed = client.clone();
        for (name, value) in sign_get(
            credentials,
            region,
            service,
            &client.authority(),
            &query,
            &amz_date(SystemTime::now()),
        ) {
            signed = signed.with_header(&name, &value);
        }
        let action = parameters
            .iter()
            .find(|(key, _)| key == "Action")
            .map_or("", |(_, value)| value.as_str());
        let response = signed
            .request("GET", &format!("/?{query}"), None, None)
            .await?;
        let text = check(&response, &format!("AWS {service} {action}"))?;
        parse_xml(&text)
            .map_err(|error| format!("AWS {service} {action}: unreadable answer: {error}"))
    }

    /// The host names of the instances the EC2 `filters` select (all pages).
    async fn instances(
        &self,
        region: &str,
        credentials: &Credentials,
        filters: Vec<(String, String)>,
    ) -> Result<Vec<String>, String> {
        let mut hosts = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let mut parameters = vec![
                ("Action".to_string(), "DescribeInstances".to_string()),
                ("Version".to_string(), EC2_VERSION.to_string()),
            ];
            parameters.extend(filters.iter().cloned());
            if let Some(token) = &next {
                parameters.push(("NextToken".into(), token.clone()));
            }
            let answer = self.call("ec2", region, credentials, &parameters).await?;
            for reservation in answer
                .child("reservationSet")
                .into_iter()
                .flat_map(|set| set.all("item"))
            {
                for instance in reservation
                    .child("instancesSet")
                    .into_iter()
                    .flat_map(|set| set.all("item"))
                {
                    hosts.extend(self.hosts_of(instance));
                }
            }
            next = answer.text_at(&["nextToken"]).map(str::to_string);
            if next.is_none() {
                return Ok(hosts);
            }
        }
    }

    /// An instance's host names: along each `hostname_path`, else its private IP or private
    /// DNS name.
    fn hosts_of(&self, instance: &Element) -> Vec<String> {
        let default = vec![vec![
            if self.config.use_private_ip {
                "privateIpAddress"
            } else {
                "privateDnsName"
            }
            .to_string(),
        ]];
        let paths = if self.config.hostname_paths.is_empty() {
            &default
        } else {
            &self.config.hostname_paths
        };
        let mut hosts = Vec::new();
        for path in paths {
            let mut element = Some(instance);
            for step in path {
                element = element.and_then(|element| match step.parse::<usize>() {
                    Ok(index) if index >= 1 => element.all("item").nth(index - 1),
                    _ => element.child(step),
                });
            }
            if let Some(host) = element.map(|element| element.text.clone())
                && !host.is_empty()
                && !hosts.contains(&host)
            {
                hosts.push(host);
            }
        }
        hosts
    }

    /// The instance IDs of this instance's autoscaling group.
    async fn group_instances(
        &self,
        region: &str,
        credentials: &Credentials,
    ) -> Result<Vec<String>, String> {
        let me = self.metadata("/latest/meta-data/instance-id").await?;
        let me = me.trim().to_string();
        let answer = self
            .call(
                "autoscaling",
                region,
                credentials,
                &[
                    ("Action".into(), "DescribeAutoScalingInstances".into()),
                    ("Version".into(), AUTOSCALING_VERSION.into()),
                    ("InstanceIds.member.1".into(), me.clone()),
                ],
            )
            .await?;
        let group = answer
            .text_at(&[
                "DescribeAutoScalingInstancesResult",
                "AutoScalingInstances",
                "member",
                "AutoScalingGroupName",
            ])
            .ok_or_else(|| format!("instance {me} is in no autoscaling group"))?
            .to_string();
        let mut instances = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let mut parameters = vec![
                (
                    "Action".to_string(),
                    "DescribeAutoScalingGroups".to_string(),
                ),
                ("Version".to_string(), AUTOSCALING_VERSION.to_string()),
                ("AutoScalingGroupNames.member.1".to_string(), group.clone()),
            ];
            if let Some(token) = &next {
                parameters.push(("NextToken".into(), token.clone()));
            }
            let answer = self
                .call("autoscaling", region, credentials, &parameters)
                .await?;
            let result = answer.child("DescribeAutoScalingGroupsResult");
            for group in result
                .and_then(|result| result.child("AutoScalingGroups"))
                .into_iter()
                .flat_map(|groups| groups.all("member"))
            {
                for instance in group
                    .child("Instances")
                    .into_iter()
                    .flat_map(|set| set.all("member"))
                {
                    if let Some(id) = instance.text_at(&["InstanceId"]) {
                        instances.push(id.to_string());
                    }
                }
            }
            next = result
                .and_then(|result| result.text_at(&["NextToken"]))
                .map(str::to_string);
            if next.is_none() {
                // This instance is in its group: an empty list is an answer not understood, and
                // must not become "every instance of the region".
                if instances.is_empty() {
                    return Err(format!("autoscaling group {group}: no instance listed"));
                }
                return Ok(instances);
            }
        }
    }

    /// The nodes on the instances the settings select, sorted.
    pub(crate) async fn discover(&self) -> Result<Vec<NodeName>, String> {
        let region = self.region().await;
        let credentials = self.credentials().await?;
        let filters: Vec<(String, String)> = if self.config.use_autoscaling_group {
            let instances = self.group_instances(&region, &credentials).await?;
            instances
                .iter()
                .enumerate()
                .map(|(index, id)| (format!("InstanceId.{}", index + 1), id.clone()))
                .collect()
        } else {
            let mut filters = Vec::new();
            let mut tags = self.config.instance_tags.clone();
            tags.sort();
            for (index, (key, value)) in tags.iter().enumerate() {
                filters.push((format!("Filter.{}.Name", index + 1), format!("tag:{key}")));
                filters.push((format!("Filter.{}.Value.1", index + 1), value.clone()));
            }
            filters
        };
        let mut filters = filters;
        let default_states = vec!["pending".to_string(), "running".to_string()];
        let states = self
            .config
            .instance_states
            .as_ref()
            .unwrap_or(&default_states);
        if !states.is_empty() {
            let next = filters
                .iter()
                .filter(|(key, _)| key.ends_with(".Name"))
                .count()
                + 1;
            filters.push((format!("Filter.{next}.Name"), "instance-state-name".into()));
            for (index, state) in states.iter().enumerate() {
                filters.push((format!("Filter.{next}.Value.{}", index + 1), state.clone()));
            }
        }
        let hosts = self.instances(&region, &credentials, filters).await?;
        let prefix = self.node.prefix();
        let mut nodes: Vec<NodeName> = hosts
            .iter()
            .map(|host| {
                let host = if self.long_names || host.parse::<std::net::IpAddr>().is_ok() {
                    host.as_str()
                } else {
                    host.split('.').next().unwrap_or(host)
                };
                NodeName::new_unchecked(format!("{prefix}@{host}"))
            })
            .collect();
        nodes.sort();
        nodes.dedup();
        Ok(nodes)
    }
}

/// Credentials of `~/.aws/credentials` (or `AWS_SHARED_CREDENTIALS_FILE`), profile
/// `AWS_DEFAULT_PROFILE` (RabbitMQ's), `AWS_PROFILE` (the SDKs') or `default`.
fn shared_credentials_file() -> Option<Credentials> {
    let path = env(&["AWS_SHARED_CREDENTIALS_FILE"])
        .or_else(|| env(&["HOME"]).map(|home| format!("{home}/.aws/credentials")))?;
    let text = std::fs::read_to_string(path).ok()?;
    let profile = env(&["AWS_DEFAULT_PROFILE", "AWS_PROFILE"]).unwrap_or_else(|| "default".into());
    let mut in_profile = false;
    let (mut access_key_id, mut secret_key, mut session_token) = (None, None, None);
    for line in text.lines().map(str::trim) {
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = section.trim() == profile;
            continue;
        }
        if !in_profile {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            let value = Some(value.trim().to_string());
            match key.trim() {
                "aws_access_key_id" => access_key_id = value,
                "aws_secret_access_key" => secret_key = value,
                "aws_session_token" => session_token = value,
                _ => {}
            }
        }
    }
    Some(Credentials {
        access_key_id: access_key_id?,
        secret_key: secret_key?,
        session_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aws(config: AwsConfig) -> Aws {
        Aws::new(
            &config,
            &ProxyConfig::default(),
            &NodeName::new_unchecked("rabbit@here"),
            true,
        )
        .unwrap()
    }

    #[test]
    fn host_names_come_from_the_configured_paths() {
        let instance = parse_xml(
            "<item><privateDnsName>ip-10-0-0-1.ec2.internal</privateDnsName>\
             <privateIpAddress>10.0.0.1</privateIpAddress><networkInterfaceSet>\
             <item><association><publicDnsName>ec2-1.compute.amazonaws.com</publicDnsName>\
             </association></item></networkInterfaceSet></item>",
        )
        .unwrap();
        let tags = vec![("service".to_string(), "rabbitmq".to_string())];
        let by_name = aws(AwsConfig {
            instance_tags: tags.clone(),
            ..AwsConfig::default()
        });
        assert_eq!(
            by_name.hosts_of(&instance),
            vec!["ip-10-0-0-1.ec2.internal"]
        );
        let by_ip = aws(AwsConfig {
            instance_tags: tags.clone(),
            use_private_ip: true,
            ..AwsConfig::default()
        });
        assert_eq!(by_ip.hosts_of(&instance), vec!["10.0.0.1"]);
        let by_path = aws(AwsConfig {
            instance_tags: tags,
            hostname_paths: vec![
                ["networkInterfaceSet", "1", "association", "publicDnsName"]
                    .map(String::from)
                    .to_vec(),
                vec!["privateIpAddress".into()],
                vec!["noSuchField".into()],
            ],
            ..AwsConfig::default()
        });
        assert_eq!(
            by_path.hosts_of(&instance),
            vec!["ec2-1.compute.amazonaws.com", "10.0.0.1"]
        );
    }

    #[test]
    fn a_backend_with_nothing_to_look_for_is_refused() {
        let error = Aws::new(
            &AwsConfig::default(),
            &ProxyConfig::default(),
            &NodeName::new_unchecked("rabbit@here"),
            true,
        )
        .unwrap_err();
        assert!(error.contains("instance_tags"), "{error}");
    }
}
