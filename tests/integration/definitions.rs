//! Definitions export and import through the management API: a round trip between two fresh
//! nodes, a RabbitMQ 3.5 export with MD5 password hashes, and refusals that leave nothing
//! half-imported.

use lapin::{Connection, ConnectionProperties};
use serde_json::{Value, json};
use warren_testkit::TestBroker;
use warren_tests::{Api, promptly};

fn api(broker: &TestBroker) -> Api {
    Api::new(
        broker.management_address().expect("a management listener"),
        "guest",
        "guest",
    )
}

async fn login(broker: &TestBroker, user: &str, password: &str, vhost: &str) {
    let url = format!("amqp://{user}:{password}@{}/{vhost}", broker.address());
    let connection = promptly(
        "lapin to connect",
        Connection::connect(&url, ConnectionProperties::default()),
    )
    .await
    .unwrap_or_else(|error| panic!("{user} logs in to {vhost}: {error}"));
    connection
        .close(200, "bye".into())
        .await
        .expect("the connection closes");
}

/// The sections two exports of the same definitions share (the rest names the product and
/// the cluster).
fn sections(export: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for key in [
        "users",
        "vhosts",
        "permissions",
        "exchanges",
        "queues",
        "bindings",
    ] {
        out.insert(key.into(), export[key].clone());
    }
    Value::Object(out)
}

#[tokio::test]
async fn definitions_round_trip_between_two_nodes() {
    let source = TestBroker::start().await;
    let from = api(&source);
    assert_eq!(
        from.put(
            "/api/vhosts/shop",
            json!({"description": "the shop", "default_queue_type": "quorum"})
        )
        .await
        .status,
        201
    );
    // "guest" hashed with SHA-512 (salt 01 02 03 04), as a RabbitMQ export carries it.
    let hash = "AQIDBANSvkE51MvG7pNDq4NjmP8SFay7rWsolg//30q7jnApCiuE049JxchapptDh7ryvu/VdvUXYHbwdpa9veVAv14=";
    assert_eq!(
        from.put(
            "/api/users/clerk",
            json!({"password_hash": hash, "hashing_algorithm": "rabbit_password_hashing_sha512", "tags": ["management"]}),
        )
        .await
        .status,
        201
    );
    assert_eq!(
        from.put(
            "/api/permissions/shop/clerk",
            json!({"configure": "^shop-", "write": ".*", "read": ".*"})
        )
        .await
        .status,
        201
    );
    assert_eq!(
        from.put(
            "/api/permissions/shop/guest",
            json!({"configure": ".*", "write": ".*", "read": ".*"})
        )
        .await
        .status,
        201
    );
    assert_eq!(
        from.put(
            "/api/exchanges/shop/orders",
            json!({"type": "topic", "durable": true})
        )
        .await
        .status,
        201
    );
    assert_eq!(
        from.put(
            "/api/queues/shop/shop-orders",
            json!({"durable": true, "arguments": {"x-max-length": 1000}}),
        )
        .await
        .status,
        201
    );
    assert_eq!(
        from.post(
            "/api/bindings/shop/e/orders/q/shop-orders",
            json!({"routing_key": "order.*"})
        )
        .await
        .status,
        201
    );
    assert_eq!(
        from.put("/api/cluster-name", json!({"name": "shop-cluster"}))
            .await
            .status,
        204
    );

    let export = from.get("/api/definitions").await;
    assert_eq!(export.status, 200, "{}", export.text);
    let export = export.json;
    assert_eq!(export["rabbitmq_definition_format"], json!("cluster"));
    assert!(
        export["global_parameters"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "cluster_name", "value": "shop-cluster"})),
        "{export}"
    );
    let queue = export["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|queue| queue["name"] == json!("shop-orders"))
        .expect("the queue is exported");
    // The vhost's default type made it a quorum queue.
    assert_eq!(queue["type"], json!("quorum"));
    assert_eq!(queue["arguments"]["x-max-length"], json!(1000));
    assert_eq!(
        export["bindings"],
        json!([{"source": "orders", "vhost": "shop", "destination": "shop-orders",
                "destination_type": "queue", "routing_key": "order.*", "arguments": {}}])
    );

    let target = TestBroker::start().await;
    let to = api(&target);
    let imported = to.post("/api/definitions", export.clone()).await;
    assert_eq!(imported.status, 204, "{}", imported.text);
    let again = to.get("/api/definitions").await.json;
    assert_eq!(sections(&again), sections(&export));
    assert_eq!(
        to.get("/api/cluster-name").await.json,
        json!({"name": "shop-cluster"})
    );
    // The imported user logs in with its old password.
    login(&target, "clerk", "guest", "shop").await;
    // Importing the same definitions again changes nothing and succeeds.
    assert_eq!(to.post("/api/definitions", export).await.status, 204);

    // One vhost's export has no "vhost" keys, and imports into a vhost of another name.
    let single = from.get("/api/definitions/shop").await.json;
    assert_eq!(
        single["rabbitmq_definition_format"],
        json!("single_virtual_host")
    );
    assert!(single["queues"][0].get("vhost").is_none(), "{single}");
    assert_eq!(to.put("/api/vhosts/shop-copy", json!({})).await.status, 201);
    assert_eq!(
        to.post("/api/definitions/shop-copy", single).await.status,
        204
    );
    assert_eq!(
        to.get("/api/queues/shop-copy/shop-orders").await.status,
        200
    );
    source.stop().await;
    target.stop().await;
}

#[tokio::test]
async fn a_rabbitmq_3_5_export_imports_with_its_md5_passwords() {
    let broker = TestBroker::start().await;
    let api = api(&broker);
    // RabbitMQ 3.5 wrote tags as a string and no hashing_algorithm: its hashes were MD5.
    let export = json!({
        "rabbit_version": "3.5.7",
        "users": [{"name": "legacy", "password_hash": "AQIDBH/JkOf0oGZ5yhQgSBXkHS0=", "tags": "management"}],
        "vhosts": [{"name": "old"}],
        "permissions": [{"user": "legacy", "vhost": "old", "configure": ".*", "write": ".*", "read": ".*"}],
        "parameters": [], "policies": [],
        "queues": [{"name": "jobs", "vhost": "old", "durable": true, "auto_delete": false, "arguments": {}}],
        "exchanges": [{"name": "work", "vhost": "old", "type": "fanout", "durable": true,
                       "auto_delete": false, "internal": false, "arguments": {}}],
        "bindings": [{"source": "work", "vhost": "old", "destination": "jobs",
                      "destination_type": "queue", "routing_key": "", "arguments": {}}],
    });
    let imported = api.post("/api/definitions", export).await;
    assert_eq!(imported.status, 204, "{}", imported.text);
    let user = api.get("/api/users/legacy").await.json;
    assert_eq!(
        user["hashing_algorithm"],
        json!("rabbit_password_hashing_md5")
    );
    assert_eq!(user["tags"], json!(["management"]));
    login(&broker, "legacy", "guest", "old").await;
    let bindings = api.get("/api/bindings/old/e/work/q/jobs").await.json;
    assert_eq!(bindings.as_array().unwrap().len(), 1, "{bindings}");
    broker.stop().await;
}

#[tokio::test]
async fn an_import_warren_cannot_keep_whole_changes_nothing() {
    let broker = TestBroker::start().await;
    let api = api(&broker);
    let with_policy = json!({
        "users": [{"name": "never", "password_hash": "", "tags": []}],
        "vhosts": [{"name": "never-vhost"}],
        "policies": [{"vhost": "/", "name": "ha", "pattern": ".*", "apply-to": "queues",
                      "definition": {"ha-mode": "all"}, "priority": 0}],
    });
    let refused = api.post("/api/definitions", with_policy).await;
    assert_eq!(refused.status, 400, "{}", refused.text);
    assert!(
        refused.json["reason"]
            .as_str()
            .unwrap()
            .contains("1 policies"),
        "{}",
        refused.text
    );
    let unknown_vhost = json!({
        "queues": [{"name": "q", "vhost": "nowhere", "durable": true, "auto_delete": false, "arguments": {}}],
    });
    let refused = api.post("/api/definitions", unknown_vhost).await;
    assert_eq!(refused.status, 400, "{}", refused.text);
    let bad_hash = json!({
        "users": [{"name": "never", "password_hash": "not base64!", "tags": []}],
    });
    assert_eq!(api.post("/api/definitions", bad_hash).await.status, 400);
    let broken = api.post("/api/definitions", json!([1, 2])).await;
    assert_eq!(
        broken.status, 400,
        "a list is not definitions: {}",
        broken.text
    );
    assert_eq!(broken.json["reason"], json!("failed_to_parse_json"));
    assert_eq!(api.get("/api/users/never").await.status, 404);
    assert_eq!(api.get("/api/vhosts/never-vhost").await.status, 404);
    assert_eq!(
        api.as_user("nobody", "x")
            .get("/api/definitions")
            .await
            .status,
        401
    );
    broker.stop().await;
}

/// `load_definitions` at start: a directory's files are imported in name order, every start;
/// a file that cannot be imported stops the node from starting, naming the key and the file.
#[tokio::test]
async fn load_definitions_imports_a_directory_at_start_and_refuses_a_bad_file() {
    let dir = warren_testkit::temporary_dir("definitions");
    std::fs::create_dir_all(&dir).expect("a directory");
    std::fs::write(
        dir.join("1-vhosts.json"),
        json!({"vhosts": [{"name": "boot"}]}).to_string(),
    )
    .expect("write");
    std::fs::write(
        dir.join("2-queues.json"),
        json!({
            "queues": [{"name": "boot-q", "vhost": "boot", "durable": true,
                        "auto_delete": false, "arguments": {}}],
            "permissions": [{"user": "guest", "vhost": "boot", "configure": ".*",
                             "write": ".*", "read": ".*"}],
        })
        .to_string(),
    )
    .expect("write");
    std::fs::write(dir.join("notes.txt"), "not definitions").expect("write");
    let loaded = dir.clone();
    let broker = TestBroker::builder()
        .config(move |config| config.load_definitions = Some(loaded))
        .start()
        .await;
    let api = api(&broker);
    assert_eq!(api.get("/api/queues/boot/boot-q").await.status, 200);
    login(&broker, "guest", "guest", "boot").await;
    broker.stop().await;

    let bad = warren_testkit::temporary_dir("bad-definitions").with_extension("json");
    std::fs::write(
        &bad,
        "{\"queues\": [{\"name\": \"q\", \"vhost\": \"nowhere\"}]}",
    )
    .expect("write");
    let refused = TestBroker::builder()
        .config(move |config| config.load_definitions = Some(bad))
        .try_start()
        .await;
    let error = refused.expect_err("the node does not start").to_string();
    assert!(
        error.starts_with("load_definitions: ") && error.contains("nowhere"),
        "{error}"
    );
}
