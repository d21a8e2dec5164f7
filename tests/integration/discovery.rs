//! Peer discovery through real services, started by the tests on loopback: etcd (Debian's
//! `etcd-server`, with `etcdctl` to read its keys) and DNS (`dnsmasq` serving A and PTR records
//! on a port of its own; nodes and warrenctl resolve names through it); Consul, which cannot run
//! here, through a fake agent that follows its HTTP API. Clusters of `warren` processes, each on
//! its own `127.0.<block>.0/24`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use warren_tests::cluster::ClusterProcesses;
use warren_tests::consul::FakeConsul;
use warren_tests::{require, unique};

fn installed(program: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
        || std::path::Path::new(&format!("/usr/sbin/{program}")).exists()
}

/// A port for a server started later (below the ephemeral range, see `reserved_port`).
fn free_port() -> u16 {
    warren_testkit::reserved_port(&[IpAddr::from([127, 0, 0, 1])])
}

/// A real etcd on loopback, stopped (by its pid) and wiped when dropped.
struct EtcdServer {
    child: Child,
    port: u16,
    dir: PathBuf,
    tls: Option<Certificates>,
    /// `user:password` for etcdctl, once authentication is on.
    user: Option<String>,
}

/// A test CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl.
#[derive(Debug, Clone)]
struct Certificates {
    dir: PathBuf,
}

impl Certificates {
    fn make() -> Option<Certificates> {
        if !require("openssl", installed("openssl"), "apt-get install openssl") {
            return None;
        }
        let dir = std::env::temp_dir().join(unique("warren-tls"));
        std::fs::create_dir_all(&dir).expect("certificate directory");
        let run = |arguments: &str| {
            let status = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("cd '{}' && openssl {arguments}", dir.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl runs");
            assert!(status.success(), "openssl {arguments}");
        };
        // etcd's JSON gateway dials etcd itself with the server's certificate: it must be good
        // for client authentication too.
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .expect("extensions");
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n")
            .expect("extensions");
        run(
            "req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=warren-test-ca",
        );
        for (name, subject) in [("server", "127.0.0.1"), ("client", "warren")] {
            run(&format!(
                "req -newkey rsa:2048 -nodes -keyout {name}.key -out {name}.csr -subj /CN={subject}"
            ));
            run(&format!(
                "x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out {name}.pem -days 2 -extfile {name}.ext"
            ));
        }
        Some(Certificates { dir })
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl EtcdServer {
    /// Starts etcd, or says why the test is skipped (`None`).
    async fn start() -> Option<EtcdServer> {
        EtcdServer::start_with(None).await
    }

    /// Starts etcd, serving HTTPS and asking for client certificates when `tls` is given.
    async fn start_with(tls: Option<Certificates>) -> Option<EtcdServer> {
        let hint = "apt-get install etcd-server etcd-client";
        if !require("etcd", installed("etcd"), hint)
            || !require("etcdctl", installed("etcdctl"), hint)
        {
            return None;
        }
        let dir = std::env::temp_dir().join(unique("warren-etcd"));
        for _ in 0..5 {
            let (port, peer) = (free_port(), free_port());
            let scheme = if tls.is_some() { "https" } else { "http" };
            let mut tls_arguments = Vec::new();
            if let Some(certificates) = &tls {
                let file = |name: &str| certificates.dir.join(name).display().to_string();
                tls_arguments = vec![
                    "--cert-file".to_string(),
                    file("server.pem"),
                    "--key-file".into(),
                    file("server.key"),
                    "--client-cert-auth".into(),
                    "--trusted-ca-file".into(),
                    file("ca.pem"),
                ];
            }
            let child = Command::new("etcd")
                .args(&tls_arguments)
                .args([
                    "--data-dir",
                    &dir.display().to_string(),
                    "--listen-client-urls",
                    &format!("{scheme}://127.0.0.1:{port}"),
                    "--advertise-client-urls",
                    &format!("{scheme}://127.0.0.1:{port}"),
                    "--listen-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                    "--initial-cluster",
                    &format!("default=http://127.0.0.1:{peer}"),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("etcd starts");
            let mut server = EtcdServer {
                child,
                port,
                dir: dir.clone(),
                tls: tls.clone(),
                user: None,
            };
            for _ in 0..100 {
                if server.etcdctl(&["endpoint", "health"]).await.is_some() {
                    return Some(server);
                }
                if server.child.try_wait().ok().flatten().is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = server.child.kill().await;
        }
        panic!("etcd did not start");
    }

    async fn etcdctl(&self, arguments: &[&str]) -> Option<String> {
        let mut command = Command::new("etcdctl");
        command.env("ETCDCTL_API", "3");
        match &self.tls {
            Some(certificates) => {
                command
                    .arg(format!("--endpoints=https://127.0.0.1:{}", self.port))
                    .arg(format!("--cacert={}", certificates.file("ca.pem")))
                    .arg(format!("--cert={}", certificates.file("client.pem")))
                    .arg(format!("--key={}", certificates.file("client.key")));
            }
            None => {
                command.arg(format!("--endpoints=http://127.0.0.1:{}", self.port));
            }
        }
        if let Some(user) = &self.user {
            command.arg(format!("--user={user}"));
        }
        let output = command.args(arguments).output().await.ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The keys under `prefix`.
    async fn keys(&self, prefix: &str) -> Vec<String> {
        let listed = self
            .etcdctl(&["get", "--prefix", "--keys-only", prefix])
            .await
            .expect("etcdctl get");
        let mut keys: Vec<String> = listed
            .lines()
            .filter(|line| !line.is_empty())
            .map(str::to_string)
            .collect();
        keys.sort();
        keys
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn etcd_config(etcd: &EtcdServer, cluster_name: &str, extra: &str) -> String {
    format!(
        "cluster_formation.peer_discovery_backend = etcd\n\
         cluster_formation.etcd.endpoints.1 = 127.0.0.1:{}\n\
         cluster_formation.etcd.cluster_name = {cluster_name}\n\
         cluster_formation.etcd.node_ttl = 5\n\
         {extra}",
        etcd.port
    )
}

fn names(ips: &[IpAddr]) -> Vec<String> {
    ips.iter().map(|ip| format!("warren@{ip}")).collect()
}

/// The registration keys of `names` under `prefix`.
fn node_keys(prefix: &str, names: &[String]) -> Vec<String> {
    names.iter().map(|name| format!("{prefix}{name}")).collect()
}

async fn wait_for_keys(etcd: &EtcdServer, prefix: &str, expected: &[String]) {
    let mut expected: Vec<String> = expected.to_vec();
    expected.sort();
    for _ in 0..100 {
        if etcd.keys(prefix).await == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "etcd keys under {prefix}: {:?}, expected {expected:?}",
        etcd.keys(prefix).await
    );
}

/// Node 1 of a three-node cluster is killed with -9 and started again: it rejoins; then node 3
/// starts: it joins the running cluster.
async fn kill_restart_and_grow(cluster: &mut ClusterProcesses) {
    cluster.kill(1).await;
    cluster.start(&[1]).await;
    cluster.wait_for_members(3).await;
    cluster.start(&[3]).await;
    cluster.wait_for_members(4).await;
}

/// Waits for a log line of node `index` containing `text`.
async fn wait_for_log(cluster: &mut ClusterProcesses, index: usize, text: &str) {
    let process = cluster.members[index]
        .process
        .as_mut()
        .expect("the node runs");
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = process.log.recv().await {
            if line.contains(text) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "node {index} never logged {text:?}");
}

/// etcd: three nodes started at the same instant form one cluster, again and again, each
/// registered under RabbitMQ's key names; the health check passes; a node killed with -9 and
/// restarted rejoins; a new node joins the running cluster; a cleanly stopped node deletes its
/// key, and the others log that the backend no longer lists it; a node reset out of the cluster
/// fails the health check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_nodes_form_one_cluster_register_and_rejoin() {
    let Some(etcd) = EtcdServer::start().await else {
        return;
    };
    for round in 0..3 {
        let cluster_name = unique("etcd-round");
        let prefix = format!("/rabbitmq/discovery/rabbitmq/clusters/{cluster_name}/nodes/");
        let (ips, port) = ClusterProcesses::addresses(4);
        let names = names(&ips);
        let config = etcd_config(
            &etcd,
            &cluster_name,
            "cluster_formation.node_cleanup.interval = 1\n",
        );
        let mut cluster = ClusterProcesses::named(&ips, &names, port, &config);
        cluster.start(&[0, 1, 2]).await;
        cluster.wait_for_members(3).await;
        let keys = node_keys(&prefix, &names[..3]);
        wait_for_keys(&etcd, &prefix, &keys).await;
        for index in 0..3 {
            let health = cluster.ctl(index, &["cluster_health_check"]).await;
            assert_eq!(health.code, Some(0), "round {round}: {health:?}");
        }
        if round < 2 {
            for index in 0..3 {
                cluster.stop(index).await;
            }
            continue;
        }
        kill_restart_and_grow(&mut cluster).await;
        let keys = node_keys(&prefix, &names);
        wait_for_keys(&etcd, &prefix, &keys).await;
        cluster.stop(2).await;
        wait_for_keys(&etcd, &prefix, &[&keys[..2], &keys[3..]].concat()).await;
        wait_for_log(
            &mut cluster,
            0,
            &format!(
                "{} is a member of the cluster but the backend does not list it",
                names[2]
            ),
        )
        .await;
        // A node reset out of the cluster is registered on its own: not with the seed.
        let reset = cluster.ctl(3, &["reset"]).await;
        assert_eq!(reset.code, Some(0), "{reset:?}");
        let unhealthy = cluster.ctl(3, &["cluster_health_check"]).await;
        assert_eq!(unhealthy.code, Some(69), "{unhealthy:?}");
        assert!(
            unhealthy.stderr.contains("not clustered with"),
            "{unhealthy:?}"
        );
        for index in [0, 1, 3] {
            cluster.stop(index).await;
        }
        wait_for_keys(&etcd, &prefix, &[]).await;
    }
}

/// etcd with `node_cleanup.only_log_warning = false`: a member that is gone (its key deleted,
/// it does not answer) is removed from the cluster by the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_cleanup_removes_members_the_backend_no_longer_lists() {
    let Some(etcd) = EtcdServer::start().await else {
        return;
    };
    let (ips, port) = ClusterProcesses::addresses(3);
    let names = names(&ips);
    let config = etcd_config(
        &etcd,
        &unique("etcd-cleanup"),
        "cluster_formation.node_cleanup.interval = 1\n\
         cluster_formation.node_cleanup.only_log_warning = false\n",
    );
    let mut cluster = ClusterProcesses::named(&ips, &names, port, &config);
    cluster.start(&[0, 1, 2]).await;
    cluster.wait_for_members(3).await;
    cluster.stop(2).await;
    let status = cluster.wait_for_members(2).await;
    assert!(!status.members.contains(&names[2]), "{status:?}");
    for index in [0, 1] {
        cluster.stop(index).await;
    }
}

/// etcd over TLS with client certificates (`ssl_options.cacertfile`, `certfile`, `keyfile`):
/// three nodes form one cluster and register; a node without a client certificate is refused
/// by etcd and stops, saying why, instead of forming a cluster of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_with_client_certificates() {
    let Some(certificates) = Certificates::make() else {
        return;
    };
    let Some(etcd) = EtcdServer::start_with(Some(certificates.clone())).await else {
        return;
    };
    let cluster_name = unique("etcd-tls");
    let prefix = format!("/rabbitmq/discovery/rabbitmq/clusters/{cluster_name}/nodes/");
    let (ips, port) = ClusterProcesses::addresses(4);
    let names = names(&ips);
    let tls = format!(
        "cluster_formation.peer_discovery_backend = etcd\n\
         cluster_formation.etcd.endpoints.1 = https://127.0.0.1:{}\n\
         cluster_formation.etcd.cluster_name = {cluster_name}\n\
         cluster_formation.etcd.ssl_options.cacertfile = {}\n\
         cluster_formation.etcd.ssl_options.verify = verify_peer\n\
         cluster_formation.etcd.ssl_options.versions.1 = tlsv1.2\n",
        etcd.port,
        certificates.file("ca.pem"),
    );
    let with_certificate = format!(
        "{tls}cluster_formation.etcd.ssl_options.certfile = {}\n\
         cluster_formation.etcd.ssl_options.keyfile = {}\n",
        certificates.file("client.pem"),
        certificates.file("client.key"),
    );
    let mut cluster = ClusterProcesses::named(&ips[..3], &names[..3], port, &with_certificate);
    cluster.start(&[0, 1, 2]).await;
    cluster.wait_for_members(3).await;
    let keys = node_keys(&prefix, &names[..3]);
    wait_for_keys(&etcd, &prefix, &keys).await;
    let stranger = ClusterProcesses::named(
        &ips[3..],
        &names[3..],
        port,
        &format!("{tls}cluster_formation.discovery_retry_limit = 2\n"),
    );
    let refused = warren_tests::node::NodeProcess::try_start(&stranger.members[0].options).await;
    let output = refused.expect_err("a node etcd refuses does not start");
    assert!(output.contains("peer discovery (etcd) failed"), "{output}");
    for index in 0..3 {
        cluster.stop(index).await;
    }
    let _ = std::fs::remove_dir_all(&certificates.dir);
}

/// A dnsmasq on a loopback port serving the seed name's A records and each node's A and PTR
/// records; stopped by its pid when dropped.
struct DnsServer {
    child: Child,
    port: u16,
}

impl DnsServer {
    async fn start(seed: &str, nodes: &[(String, IpAddr)]) -> Option<DnsServer> {
        if !require(
            "dnsmasq",
            installed("dnsmasq"),
            "apt-get install dnsmasq-base",
        ) {
            return None;
        }
        for _ in 0..5 {
            let port = free_port();
            if let Some(child) = DnsServer::spawn(port, seed, nodes).await {
                return Some(DnsServer { child, port });
            }
        }
        panic!("dnsmasq did not start");
    }

    /// Serves these records instead, on the same port.
    async fn replace(&mut self, seed: &str, nodes: &[(String, IpAddr)]) {
        let _ = self.child.kill().await;
        for _ in 0..20 {
            if let Some(child) = DnsServer::spawn(self.port, seed, nodes).await {
                self.child = child;
                return;
            }
        }
        panic!("dnsmasq did not start again");
    }

    async fn spawn(port: u16, seed: &str, nodes: &[(String, IpAddr)]) -> Option<Child> {
        let mut arguments = vec![
            "--keep-in-foreground".to_string(),
            format!("--port={port}"),
            "--listen-address=127.0.0.1".into(),
            "--bind-interfaces".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--conf-file=/dev/null".into(),
            "--pid-file=".into(),
        ];
        for (host, ip) in nodes {
            arguments.push(format!("--host-record={host},{ip}"));
            arguments.push(format!("--address=/{seed}/{ip}"));
        }
        let program = if std::path::Path::new("/usr/sbin/dnsmasq").exists() {
            "/usr/sbin/dnsmasq"
        } else {
            "dnsmasq"
        };
        let mut child = Command::new(program)
            .args(&arguments)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("dnsmasq starts");
        tokio::time::sleep(Duration::from_millis(300)).await;
        child.try_wait().ok().flatten().is_none().then_some(child)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// DNS: the seed name's A records list the nodes, PTR records name them; three nodes started
/// at the same instant (no start-up delay) form one cluster, again and again, and the health
/// check names the seed; a node killed with -9 and restarted rejoins; a fourth node joins the
/// running cluster; a member dropped from DNS is logged by the node cleanup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_nodes_form_one_cluster_and_rejoin() {
    for round in 0..3 {
        let (ips, port) = ClusterProcesses::addresses(4);
        let zone = format!("{}.warren.test", unique("zone").replace(['_', '.'], "-"));
        let hosts: Vec<String> = (1..=4).map(|n| format!("node{n}.{zone}")).collect();
        let records: Vec<(String, IpAddr)> =
            hosts.iter().cloned().zip(ips.iter().copied()).collect();
        let seed = format!("seed.{zone}");
        let Some(mut dns) = DnsServer::start(&seed, &records).await else {
            return;
        };
        let names: Vec<String> = hosts.iter().map(|host| format!("warren@{host}")).collect();
        let config = format!(
            "cluster_formation.peer_discovery_backend = dns\n\
             cluster_formation.dns.hostname = {seed}\n\
             cluster_formation.dns.nameservers.1 = 127.0.0.1:{}\n\
             cluster_formation.randomized_startup_delay_range.min = 0\n\
             cluster_formation.randomized_startup_delay_range.max = 0\n\
             cluster_formation.node_cleanup.interval = 1\n",
            dns.port
        );
        let mut cluster = ClusterProcesses::named(&ips, &names, port, &config);
        cluster.ctl_options = vec!["--nameserver".into(), format!("127.0.0.1:{}", dns.port)];
        cluster.start(&[0, 1, 2]).await;
        let status = cluster.wait_for_members(3).await;
        assert!(status.members.contains(&names[0]), "{status:?}");
        let health = cluster.ctl(1, &["cluster_health_check"]).await;
        assert_eq!(health.code, Some(0), "round {round}: {health:?}");
        assert!(
            health.stdout.contains(&names[0]),
            "the seed is named: {health:?}"
        );
        if round == 2 {
            kill_restart_and_grow(&mut cluster).await;
            // Gone from DNS: the others log it (only_log_warning is the default).
            dns.replace(&seed, &records[..3]).await;
            wait_for_log(
                &mut cluster,
                0,
                &format!(
                    "node cleanup (dns): {} is a member of the cluster but the backend does not \
                     list it",
                    names[3]
                ),
            )
            .await;
            cluster.stop(3).await;
        }
        for index in 0..3 {
            cluster.stop(index).await;
        }
    }
}

/// Consul, against a fake agent that follows Consul's documented HTTP API (no Consul can run
/// here; see `warren_tests::consul`): three nodes started at the same instant form one cluster,
/// again and again, each registered as a service with a passing TTL check and the ACL token;
/// the health check passes; a node killed with -9 and restarted rejoins; a new node joins; a
/// cleanly stopped node deregisters and, with `only_log_warning = false`, is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_nodes_form_one_cluster_register_and_clean_up() {
    let consul = FakeConsul::start().await;
    for round in 0..3 {
        let (ips, port) = ClusterProcesses::addresses(4);
        let names = names(&ips);
        let cluster_name = unique("consul-round");
        let config = format!(
            "cluster_formation.peer_discovery_backend = rabbit_peer_discovery_consul\n\
             cluster_formation.consul.host = 127.0.0.1\n\
             cluster_formation.consul.port = {}\n\
             cluster_formation.consul.acl_token = secret-token\n\
             cluster_formation.consul.cluster_name = {cluster_name}\n\
             cluster_formation.consul.svc_addr_auto = true\n\
             cluster_formation.consul.svc_addr_use_nodename = true\n\
             cluster_formation.consul.svc_ttl = 4\n\
             cluster_formation.consul.svc_tags.1 = qa\n\
             cluster_formation.node_cleanup.interval = 1\n\
             cluster_formation.node_cleanup.only_log_warning = false\n",
            consul.port
        );
        let mut cluster = ClusterProcesses::named(&ips, &names, port, &config);
        cluster.start(&[0, 1, 2]).await;
        cluster.wait_for_members(3).await;
        let ids: Vec<String> = ips.iter().map(|ip| format!("rabbitmq:{ip}")).collect();
        let registered = |consul: &FakeConsul| -> Vec<String> {
            consul
                .services()
                .into_iter()
                .filter(|(id, status)| ids.contains(id) && status == "passing")
                .map(|(id, _)| id)
                .collect()
        };
        assert_eq!(registered(&consul), ids[..3].to_vec(), "round {round}");
        let health = cluster.ctl(2, &["cluster_health_check"]).await;
        assert_eq!(health.code, Some(0), "round {round}: {health:?}");
        if round == 2 {
            kill_restart_and_grow(&mut cluster).await;
            assert!(
                consul.saw("PUT", "/v1/session/create"),
                "joins take the lock"
            );
            assert!(consul.saw("PUT", "/v1/agent/check/pass/service:"));
            cluster.stop(2).await;
            let status = cluster.wait_for_members(3).await;
            assert!(!status.members.contains(&names[2]), "{status:?}");
            assert!(
                !registered(&consul).contains(&ids[2]),
                "deregistered on stop"
            );
        }
        for index in 0..4 {
            cluster.stop(index).await;
        }
        assert!(registered(&consul).is_empty(), "round {round}");
    }
    assert!(
        consul
            .tokens()
            .iter()
            .all(|token| token.as_deref() == Some("secret-token")),
        "every request carries the ACL token"
    );
}

/// AWS, against a fake of the EC2 and Auto Scaling Query APIs and the instance metadata service
/// (no AWS can be reached here; see `warren_tests::aws`), every request signed with SigV4 and
/// checked. By tags, with credentials from the environment: three nodes started at the same
/// instant form one cluster, again and again. By autoscaling group, with the instance role's
/// credentials and the region from the metadata service: a node killed with -9 and restarted
/// rejoins, a launched instance joins, and a terminated one is removed by the node cleanup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_nodes_form_one_cluster_by_tags_and_by_autoscaling_group() {
    use warren_tests::aws::{ACCESS_KEY_ID, FakeAws, Instance, REGION, SECRET_KEY};
    let (ips, port) = ClusterProcesses::addresses(4);
    let names = names(&ips);
    let instance = |index: usize, group: Option<&str>| Instance {
        id: format!("i-{index:08}"),
        private_ip: ips[index].to_string(),
        state: "running".into(),
        tags: vec![("service".into(), "warren".into())],
        group: group.map(str::to_string),
    };
    let others = Instance {
        id: "i-elsewhere".into(),
        private_ip: "127.0.0.250".into(),
        state: "running".into(),
        tags: vec![("service".into(), "other".into())],
        group: Some("other-group".into()),
    };
    let aws = FakeAws::start(vec![
        instance(0, None),
        instance(1, None),
        instance(2, None),
        others,
    ])
    .await;
    let endpoint = format!("http://127.0.0.1:{}", aws.port);
    for round in 0..3 {
        let config = format!(
            "cluster_formation.peer_discovery_backend = aws\n\
             cluster_formation.aws.region = {REGION}\n\
             cluster_formation.aws.instance_tags.service = warren\n\
             cluster_formation.aws.use_private_ip = true\n"
        );
        let mut cluster = ClusterProcesses::named(&ips[..3], &names[..3], port, &config);
        for (index, member) in cluster.members.iter_mut().enumerate() {
            member.options.env.extend([
                ("AWS_ENDPOINT_URL".to_string(), endpoint.clone()),
                ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY_ID.into()),
                ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
                (
                    "AWS_EC2_METADATA_SERVICE_ENDPOINT".into(),
                    format!("{endpoint}/i-{index:08}"),
                ),
            ]);
        }
        cluster.start(&[0, 1, 2]).await;
        cluster.wait_for_members(3).await;
        let health = cluster.ctl(2, &["cluster_health_check"]).await;
        assert_eq!(health.code, Some(0), "round {round}: {health:?}");
        assert!(health.stdout.contains(&names[0]), "{health:?}");
        for index in 0..3 {
            cluster.stop(index).await;
        }
    }
    assert!(aws.called("DescribeInstances"));

    aws.update(|instances| {
        for instance in instances.iter_mut().take(3) {
            instance.group = Some("warren-asg".into());
        }
    });
    let config = "cluster_formation.peer_discovery_backend = aws\n\
                  cluster_formation.aws.use_autoscaling_group = true\n\
                  cluster_formation.aws.use_private_ip = true\n\
                  cluster_formation.node_cleanup.interval = 1\n\
                  cluster_formation.node_cleanup.only_log_warning = false\n";
    let mut cluster = ClusterProcesses::named(&ips, &names, port, config);
    for (index, member) in cluster.members.iter_mut().enumerate() {
        member.options.env.extend([
            ("AWS_ENDPOINT_URL".to_string(), endpoint.clone()),
            (
                "AWS_EC2_METADATA_SERVICE_ENDPOINT".into(),
                format!("{endpoint}/i-{index:08}"),
            ),
        ]);
    }
    cluster.start(&[0, 1, 2]).await;
    cluster.wait_for_members(3).await;
    assert!(aws.called("DescribeAutoScalingGroups"));
    cluster.kill(1).await;
    cluster.start(&[1]).await;
    cluster.wait_for_members(3).await;
    aws.update(|instances| instances.push(instance(3, Some("warren-asg"))));
    cluster.start(&[3]).await;
    cluster.wait_for_members(4).await;
    aws.update(|instances| instances[2].state = "terminated".into());
    aws.update(|instances| instances[2].group = None);
    cluster.kill(2).await;
    let status = cluster.wait_for_members(3).await;
    assert!(!status.members.contains(&names[2]), "{status:?}");
    for index in [0, 1, 3] {
        cluster.stop(index).await;
    }
    assert_eq!(aws.refused(), 0, "every request was signed correctly");
}

/// `cluster_formation.proxy.http_proxy`: the Consul requests go through the proxy (the fake
/// agent plays it), even to a host this machine cannot resolve; an excluded host is reached
/// directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_requests_go_through_the_http_proxy() {
    let consul = FakeConsul::start().await;
    let (ips, port) = ClusterProcesses::addresses(2);
    let names = names(&ips);
    let config = |host: &str| {
        format!(
            "cluster_formation.peer_discovery_backend = consul\n\
             cluster_formation.consul.host = {host}\n\
             cluster_formation.consul.port = 8500\n\
             cluster_formation.consul.svc_addr_auto = true\n\
             cluster_formation.consul.svc_addr_use_nodename = true\n\
             cluster_formation.proxy.http_proxy = http://127.0.0.1:{}\n\
             cluster_formation.proxy.proxy_exclusions.1 = consul.excluded.invalid\n",
            consul.port
        )
    };
    let mut cluster = ClusterProcesses::named(
        &ips[..1],
        &names[..1],
        port,
        &config("consul.service.invalid"),
    );
    cluster.start(&[0]).await;
    cluster.wait_for_members(1).await;
    assert!(
        consul
            .proxied()
            .iter()
            .all(|origin| origin == "consul.service.invalid:8500"),
        "{:?}",
        consul.proxied()
    );
    assert!(consul.saw("PUT", "/v1/agent/service/register"));
    cluster.stop(0).await;
    let excluded = ClusterProcesses::named(
        &ips[1..],
        &names[1..],
        port,
        &config("consul.excluded.invalid"),
    );
    let mut options = excluded.members[0].options.clone();
    options
        .config
        .push_str("cluster_formation.discovery_retry_limit = 1\n");
    let output = warren_tests::node::NodeProcess::try_start(&options)
        .await
        .expect_err("the excluded host is dialled directly, and does not resolve");
    assert!(output.contains("consul.excluded.invalid"), "{output}");
}

/// etcd with authentication on (`username`, `password`): nodes with the right password form a
/// cluster and register; a node with a wrong one is refused by etcd and stops, naming the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_with_authentication() {
    let Some(mut etcd) = EtcdServer::start().await else {
        return;
    };
    etcd.etcdctl(&[
        "user",
        "add",
        "root",
        "--new-user-password=s3kR37",
        "--interactive=false",
    ])
    .await
    .expect("user added");
    etcd.etcdctl(&["auth", "enable"])
        .await
        .expect("authentication on");
    etcd.user = Some("root:s3kR37".into());
    let cluster_name = unique("etcd-auth");
    let prefix = format!("/rabbitmq/discovery/rabbitmq/clusters/{cluster_name}/nodes/");
    let (ips, port) = ClusterProcesses::addresses(3);
    let names = names(&ips);
    let config = |password: &str| {
        etcd_config(
            &etcd,
            &cluster_name,
            &format!(
                "cluster_formation.etcd.username = root\n\
                 cluster_formation.etcd.password = {password}\n\
                 cluster_formation.discovery_retry_limit = 2\n"
            ),
        )
    };
    let mut cluster = ClusterProcesses::named(&ips[..2], &names[..2], port, &config("s3kR37"));
    cluster.start(&[0, 1]).await;
    cluster.wait_for_members(2).await;
    let keys = node_keys(&prefix, &names[..2]);
    wait_for_keys(&etcd, &prefix, &keys).await;
    let stranger = ClusterProcesses::named(&ips[2..], &names[2..], port, &config("wrong"));
    let output = warren_tests::node::NodeProcess::try_start(&stranger.members[0].options)
        .await
        .expect_err("etcd refuses the password");
    assert!(output.contains("etcd refused user 'root'"), "{output}");
    for index in 0..2 {
        cluster.stop(index).await;
    }
}

/// `cluster_formation.registration.enabled = false`: the node looks (and takes the lock) but
/// never registers or deregisters; listed by no one, it forms a cluster of its own after the
/// retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_registration_can_be_turned_off() {
    let consul = FakeConsul::start().await;
    let (ips, port) = ClusterProcesses::addresses(1);
    let names = names(&ips);
    let config = format!(
        "cluster_formation.peer_discovery_backend = consul\n\
         cluster_formation.consul.host = 127.0.0.1\n\
         cluster_formation.consul.port = {}\n\
         cluster_formation.registration.enabled = false\n\
         cluster_formation.discovery_retry_limit = 2\n",
        consul.port
    );
    let mut cluster = ClusterProcesses::named(&ips, &names, port, &config);
    cluster.start(&[0]).await;
    cluster.wait_for_members(1).await;
    cluster.stop(0).await;
    assert!(consul.saw("GET", "/v1/health/service/rabbitmq"));
    assert!(!consul.saw("PUT", "/v1/agent/service/register"));
    assert!(!consul.saw("PUT", "/v1/agent/service/deregister"));
    assert!(consul.services().is_empty());
}
