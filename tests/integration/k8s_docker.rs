//! The `k8s` backend in Docker containers named and addressed like a StatefulSet's pods: host
//! names `warren-0`, `warren-1`..., stable DNS names `warren-N.warren-nodes.default.svc.cluster.local`
//! served by Docker's embedded DNS on a user-defined network (as a headless service serves them
//! in Kubernetes). The image is made from this build's binaries and the C libraries they link,
//! with `docker import` (no image is pulled).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use warren_testkit::warren_binary;
use warren_tests::cluster::warrenctl_binary;
use warren_tests::{http_get, require, unique};

const DOMAIN: &str = "warren-nodes.default.svc.cluster.local";

async fn docker(arguments: &[&str]) -> Result<String, String> {
    let output = Command::new("docker")
        .args(arguments)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|error| error.to_string())?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(format!(
            "docker {}: {}",
            arguments.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

async fn docker_available() -> bool {
    docker(&["info", "--format", "{{.ServerVersion}}"])
        .await
        .is_ok()
}

/// The shared libraries `binary` loads, from `ldd`.
fn libraries(binary: &Path) -> Vec<PathBuf> {
    let output = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .expect("ldd runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            line.split_whitespace()
                .find(|word| word.starts_with('/'))
                .map(PathBuf::from)
        })
        .collect()
}

/// An image holding `warren` and `warrenctl` (stripped) and what they link; built once per
/// test binary, tagged by the binaries' sizes and times so that a rebuild makes a new one.
async fn image() -> String {
    let binaries = [warren_binary(), warrenctl_binary()];
    let mut stamp = 0u64;
    for binary in &binaries {
        let metadata = std::fs::metadata(binary).expect("binary metadata");
        let modified = metadata
            .modified()
            .ok()
            .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |since| since.as_secs());
        stamp = stamp
            .wrapping_mul(31)
            .wrapping_add(metadata.len() ^ modified);
    }
    let tag = format!("warren-test:{stamp:x}");
    if docker(&["image", "inspect", &tag]).await.is_ok() {
        return tag;
    }
    // Images of earlier builds go (a running test of another build keeps its own).
    if let Ok(tags) = docker(&["images", "warren-test", "--format", "{{.Tag}}"]).await {
        for old in tags.lines().filter(|old| !old.is_empty()) {
            let _ = docker(&["rmi", &format!("warren-test:{old}")]).await;
        }
    }
    let root = std::env::temp_dir().join(unique("warren-rootfs"));
    for dir in ["bin", "tmp", "var/lib/warren", "etc/warren"] {
        std::fs::create_dir_all(root.join(dir)).expect("rootfs directory");
    }
    for binary in &binaries {
        let name = binary.file_name().expect("binary name");
        let target = root.join("bin").join(name);
        let stripped = std::process::Command::new("strip")
            .arg("-o")
            .arg(&target)
            .arg(binary)
            .status()
            .is_ok_and(|status| status.success());
        if !stripped {
            std::fs::copy(binary, &target).expect("copy binary");
        }
        for library in libraries(binary) {
            let target = root.join(library.strip_prefix("/").expect("absolute"));
            std::fs::create_dir_all(target.parent().expect("library directory"))
                .expect("library directory");
            std::fs::copy(&library, &target).expect("copy library");
        }
    }
    let tar = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .expect("tar runs");
    let stdout: Stdio = tar.stdout.expect("tar output").try_into().expect("pipe");
    let imported = Command::new("docker")
        .args(["import", "-", &tag])
        .stdin(stdout)
        .output()
        .await
        .expect("docker import runs");
    let _ = std::fs::remove_dir_all(&root);
    assert!(
        imported.status.success(),
        "docker import: {}",
        String::from_utf8_lossy(&imported.stderr)
    );
    tag
}

/// A user-defined network and the pod containers on it; all removed when dropped.
struct Pods {
    network: String,
    prefix: String,
    image: String,
    cookie: String,
    config_dir: PathBuf,
}

impl Pods {
    async fn new(image: String) -> Pods {
        let prefix = unique("warren-k8s");
        let network = format!("{prefix}-net");
        docker(&["network", "create", &network])
            .await
            .expect("network created");
        let config_dir = std::env::temp_dir().join(unique("warren-k8s-config"));
        std::fs::create_dir_all(&config_dir).expect("config directory");
        std::fs::write(
            config_dir.join("warren.conf"),
            "cluster_formation.peer_discovery_backend = rabbit_peer_discovery_k8s\n\
             cluster_formation.discovery_retry_interval = 200\n\
             loopback_users = none\n",
        )
        .expect("config file");
        Pods {
            network,
            prefix,
            image,
            cookie: unique("cookie"),
            config_dir,
        }
    }

    fn container(&self, ordinal: usize) -> String {
        format!("{}-{ordinal}", self.prefix)
    }

    fn node(ordinal: usize) -> String {
        format!("warren@warren-{ordinal}.{DOMAIN}")
    }

    /// Starts pod `ordinal` (a new container) without waiting for it.
    async fn run(&self, ordinal: usize) {
        let hostname = format!("warren-{ordinal}");
        let alias = format!("warren-{ordinal}.{DOMAIN}");
        let volume = format!("{}:/etc/warren:ro", self.config_dir.display());
        let node = format!("WARREN_NODENAME={}", Pods::node(ordinal));
        let cookie = format!("WARREN_ERLANG_COOKIE={}", self.cookie);
        let name = self.container(ordinal);
        docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            &self.network,
            "--hostname",
            &hostname,
            "--network-alias",
            &alias,
            "-v",
            &volume,
            "-w",
            "/var/lib/warren",
            "-e",
            &node,
            "-e",
            "WARREN_USE_LONGNAME=true",
            "-e",
            &cookie,
            "-e",
            "WARREN_CONFIG_FILE=/etc/warren/warren.conf",
            &self.image,
            "/bin/warren",
        ])
        .await
        .expect("container starts");
    }

    /// `warrenctl cluster_status --formatter json` inside pod `ordinal`: the member names and
    /// how many run.
    async fn members(&self, ordinal: usize) -> Option<(Vec<String>, usize)> {
        let node = Pods::node(ordinal);
        let text = docker(&[
            "exec",
            &self.container(ordinal),
            "/bin/warrenctl",
            "-n",
            &node,
            "cluster_status",
            "--formatter",
            "json",
        ])
        .await
        .ok()?;
        let status: serde_json::Value = serde_json::from_str(&text).ok()?;
        let members = status["members"].as_array()?;
        let names = members
            .iter()
            .filter_map(|member| member["name"].as_str().map(str::to_string))
            .collect();
        let running = members
            .iter()
            .filter(|member| member["running"] == serde_json::Value::Bool(true))
            .count();
        Some((names, running))
    }

    /// Waits until every pod in `ordinals` sees exactly those pods, all running.
    async fn wait_for_cluster(&self, ordinals: &[usize]) {
        let mut expected: Vec<String> = ordinals.iter().map(|o| Pods::node(*o)).collect();
        expected.sort();
        let mut last = Vec::new();
        for _ in 0..240 {
            last.clear();
            for ordinal in ordinals {
                last.push(self.members(*ordinal).await);
            }
            let settled = last.iter().all(|seen| {
                seen.as_ref().is_some_and(|(names, running)| {
                    let mut names = names.clone();
                    names.sort();
                    names == expected && *running == expected.len()
                })
            });
            if settled {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let logs = docker(&["logs", "--tail", "30", &self.container(ordinals[0])]).await;
        panic!("pods {ordinals:?} did not form one cluster: {last:?}\n{logs:?}");
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        for ordinal in 0..8 {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", &self.container(ordinal)])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::process::Command::new("docker")
            .args(["network", "rm", &self.network])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.config_dir);
    }
}

/// Three pods started at the same instant form one cluster around `warren-0`, round after
/// round, and say so on the management port's cluster formation check; a pod killed with -9 and started again (same container, same data) rejoins; a fourth
/// pod joins the running cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_pods_in_docker_form_one_cluster() {
    if !require(
        "docker",
        docker_available().await,
        "a running Docker engine, and the docker command",
    ) {
        return;
    }
    let image = image().await;
    for round in 0..2 {
        let pods = Pods::new(image.clone()).await;
        // docker run -d returns once the container runs: the three start together.
        futures_lite::future::zip(
            futures_lite::future::zip(pods.run(0), pods.run(1)),
            pods.run(2),
        )
        .await;
        pods.wait_for_cluster(&[0, 1, 2]).await;
        // The cluster formation check over HTTP, as a probe would call it.
        let ip = docker(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &pods.container(2),
        ])
        .await
        .expect("container address");
        let address = SocketAddr::new(ip.parse().expect("an IP address"), 15672);
        let (status, _, body) = http_get(
            address,
            "/api/health/checks/cluster-formation",
            Some("guest:guest"),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains(&Pods::node(0)),
            "the seed is warren-0: {body}"
        );
        if round == 1 {
            docker(&["kill", "--signal", "KILL", &pods.container(1)])
                .await
                .expect("kill -9");
            docker(&["start", &pods.container(1)])
                .await
                .expect("start again");
            pods.wait_for_cluster(&[0, 1, 2]).await;
            pods.run(3).await;
            pods.wait_for_cluster(&[0, 1, 2, 3]).await;
        }
    }
}
