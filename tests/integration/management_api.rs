//! RabbitMQ's management HTTP API on Warren, through hyper's HTTP client as operator tools use
//! it, with lapin as the AMQP client whose connections, queues and messages the API shows.

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{Value, json};
use warren_testkit::{TestBroker, TestCluster};
use warren_tests::{Api, ApiAnswer, promptly, unique};

fn api(broker: &TestBroker) -> Api {
    Api::new(
        broker.management_address().expect("a management listener"),
        "guest",
        "guest",
    )
}

async fn connect(url: &str) -> Connection {
    promptly(
        "lapin to connect",
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .expect("lapin connects")
}

/// Polls `path` until `done` holds for its JSON answer.
async fn eventually(api: &Api, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    promptly(&format!("GET {path} to show the change"), async {
        loop {
            let answer = api.get(path).await;
            if answer.status == 200 && done(&answer.json) {
                return answer.json;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

fn assert_error(answer: &ApiAnswer, status: u16, error: &str, reason: &str) {
    assert_eq!(answer.status, status, "{}", answer.text);
    assert_eq!(answer.json["error"], json!(error), "{}", answer.text);
    assert!(
        answer.json["reason"]
            .as_str()
            .is_some_and(|text| text.contains(reason)),
        "reason should contain {reason:?}: {}",
        answer.text
    );
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .expect("a list")
        .iter()
        .map(|row| row["name"].as_str().expect("a name").to_string())
        .collect()
}

#[tokio::test]
async fn the_overview_nodes_and_whoami_describe_the_node() {
    let broker = TestBroker::start().await;
    let api = api(&broker);
    let overview = api.get("/api/overview").await;
    assert_eq!(overview.status, 200, "{}", overview.text);
    let node = broker.broker().node().to_string();
    assert_eq!(overview.json["node"], json!(node));
    assert_eq!(overview.json["cluster_name"], json!(node));
    assert_eq!(overview.json["product_name"], json!("Warren"));
    assert!(overview.json["rabbitmq_version"].is_string());
    let protocols: Vec<&str> = overview.json["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|listener| listener["protocol"].as_str().unwrap())
        .collect();
    assert!(
        protocols.contains(&"amqp") && protocols.contains(&"http"),
        "{protocols:?}"
    );

    let connection = connect(&broker.url()).await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare(
            "overview-q".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let totals = eventually(&api, "/api/overview", |overview| {
        overview["object_totals"]["connections"] == json!(1)
            && overview["object_totals"]["channels"] == json!(1)
    })
    .await;
    assert_eq!(totals["object_totals"]["queues"], json!(1));
    // The default exchange and the five predeclared ones.
    assert_eq!(totals["object_totals"]["exchanges"], json!(6));

    let nodes = api.get("/api/nodes").await;
    assert_eq!(nodes.status, 200);
    let row = &nodes.json[0];
    assert_eq!(row["name"], json!(node));
    assert_eq!(row["running"], json!(true));
    assert!(row["mem_used"].as_u64().unwrap() > 0, "{row}");
    assert!(row["mem_limit"].as_u64().unwrap() > 0);
    assert!(row["disk_free"].as_u64().unwrap() > 0);
    assert!(row["fd_used"].as_u64().unwrap() > 0);
    let one = api.get(&format!("/api/nodes/{node}")).await;
    assert_eq!(one.json["name"], json!(node));
    assert_error(
        &api.get("/api/nodes/nobody@nowhere").await,
        404,
        "Object Not Found",
        "Not Found",
    );

    let whoami = api.get("/api/whoami").await;
    assert_eq!(whoami.json["name"], json!("guest"));
    assert_eq!(whoami.json["tags"], json!(["administrator"]));

    let renamed = api
        .put("/api/cluster-name", json!({"name": "orders-cluster"}))
        .await;
    assert_eq!(renamed.status, 204, "{}", renamed.text);
    let name = api.get("/api/cluster-name").await;
    assert_eq!(name.json, json!({"name": "orders-cluster"}));
    assert_eq!(
        api.call("POST", "/api/overview", None, &[]).await.status,
        405
    );

    connection.close(200, "bye".into()).await.unwrap();
    broker.stop().await;
}

#[tokio::test]
async fn vhosts_users_and_permissions_are_managed_as_in_rabbitmq() {
    let broker = TestBroker::start().await;
    let api = api(&broker);
    let vhost = unique("vh");

    let created = api
        .put(
            &format!("/api/vhosts/{vhost}"),
            json!({"description": "orders", "tags": "prod,eu", "default_queue_type": "quorum"}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let again = api
        .put(
            &format!("/api/vhosts/{vhost}"),
            json!({"description": "orders!"}),
        )
        .await;
    assert_eq!(again.status, 204);
    // What the second body does not name is kept.
    let row = api.get(&format!("/api/vhosts/{vhost}")).await;
    assert_eq!(row.json["description"], json!("orders!"));
    assert_eq!(row.json["tags"], json!(["prod", "eu"]));
    assert_eq!(row.json["default_queue_type"], json!("quorum"));
    let retagged = api
        .put(
            &format!("/api/vhosts/{vhost}"),
            json!({"tags": ["prod"], "default_queue_type": "classic"}),
        )
        .await;
    assert_eq!(retagged.status, 204);
    let row = api.get(&format!("/api/vhosts/{vhost}")).await;
    assert_eq!(row.json["tags"], json!(["prod"]));
    assert_eq!(row.json["default_queue_type"], json!("classic"));
    assert!(names(&api.get("/api/vhosts").await.json).contains(&vhost));
    assert_error(
        &api.put(
            &format!("/api/vhosts/{vhost}"),
            json!({"default_queue_type": "stream"}),
        )
        .await,
        400,
        "bad_request",
        "stream",
    );

    // A user with a password, tags as a 3.x comma-separated string.
    let created = api
        .put(
            "/api/users/alice",
            json!({"password": "s3cret", "tags": "management,monitoring"}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let alice = api.get("/api/users/alice").await;
    assert_eq!(alice.json["tags"], json!(["management", "monitoring"]));
    assert_eq!(
        alice.json["hashing_algorithm"],
        json!("rabbit_password_hashing_sha256")
    );
    // A user from a RabbitMQ export: a SHA-512 hash of "guest" (salt 01 02 03 04).
    let hash = "AQIDBANSvkE51MvG7pNDq4NjmP8SFay7rWsolg//30q7jnApCiuE049JxchapptDh7ryvu/VdvUXYHbwdpa9veVAv14=";
    let imported = api
        .put(
            "/api/users/bob",
            json!({"password_hash": hash, "hashing_algorithm": "rabbit_password_hashing_sha512", "tags": []}),
        )
        .await;
    assert_eq!(imported.status, 201, "{}", imported.text);
    assert_eq!(
        api.get("/api/users/bob").await.json["password_hash"],
        json!(hash)
    );
    assert_error(
        &api.put("/api/users/carol", json!({"password": "x"})).await,
        400,
        "bad_request",
        "tags_not_present",
    );
    assert_error(
        &api.put("/api/permissions/%2F/guest", json!({"configure": ".*"}))
            .await,
        400,
        "bad_request",
        "[{key_missing,write},{key_missing,read}]",
    );
    assert_error(
        &api.call("PUT", "/api/users/carol", Some(json!("x")), &[])
            .await,
        400,
        "bad_request",
        "doubly-JSON-encoded",
    );
    assert_error(
        &api.put(
            "/api/users/carol",
            json!({"password": "x", "password_hash": hash, "tags": ""}),
        )
        .await,
        400,
        "bad_request",
        "both_password_and_password_hash_are_provided",
    );
    assert_error(
        &api.put("/api/users/carol", json!({"password_hash": hash, "hashing_algorithm": "rabbit_password_hashing_sha1", "tags": ""})).await,
        400,
        "bad_request",
        "hashing_algorithm",
    );
    let without = api.get("/api/users/without-permissions").await;
    assert!(
        names(&without.json).contains(&"bob".to_string()),
        "{}",
        without.text
    );

    // Permissions, then the imported user logs in over AMQP with its old password.
    let set = api
        .put(
            &format!("/api/permissions/{vhost}/bob"),
            json!({"configure": ".*", "write": ".*", "read": ".*"}),
        )
        .await;
    assert_eq!(set.status, 201, "{}", set.text);
    let listed = api.get(&format!("/api/vhosts/{vhost}/permissions")).await;
    assert_eq!(listed.json[0]["user"], json!("bob"));
    assert_eq!(listed.json[0]["read"], json!(".*"));
    let address = broker.address();
    let bob = connect(&format!("amqp://bob:guest@{address}/{vhost}")).await;
    bob.close(200, "bye".into()).await.unwrap();
    assert_error(
        &api.put(
            "/api/permissions/no-such-vhost/bob",
            json!({"configure": "", "write": "", "read": ""}),
        )
        .await,
        400,
        "bad_request",
        "vhost_or_user_not_found",
    );
    assert_error(
        &api.put(
            &format!("/api/permissions/{vhost}/bob"),
            json!({"configure": "(", "write": "", "read": ""}),
        )
        .await,
        400,
        "bad_request",
        "invalid regular expression",
    );

    // A monitoring user reads, but changes nothing; a management user sees only its vhosts.
    let alice_api = api.as_user("alice", "s3cret");
    assert_eq!(alice_api.get("/api/vhosts").await.status, 200);
    assert_error(
        &alice_api.put("/api/vhosts/other", json!({})).await,
        401,
        "not_authorised",
        "Not administrator user",
    );
    assert_error(
        &alice_api.get("/api/users").await,
        401,
        "not_authorised",
        "Not administrator user",
    );
    assert_eq!(
        api.put(
            "/api/users/dave",
            json!({"password": "pw", "tags": "management"})
        )
        .await
        .status,
        201
    );
    let dave = api.as_user("dave", "pw");
    assert_eq!(
        names(&dave.get("/api/vhosts").await.json),
        Vec::<String>::new()
    );
    assert_error(
        &dave.get(&format!("/api/queues/{vhost}")).await,
        404,
        "not_found",
        "Not Found",
    );
    assert_error(
        &api.as_user("dave", "wrong").get("/api/overview").await,
        401,
        "not_authorized",
        "Not_Authorized",
    );

    // Deletions.
    assert_eq!(
        api.delete(&format!("/api/permissions/{vhost}/bob"))
            .await
            .status,
        204
    );
    assert_eq!(
        api.get(&format!("/api/permissions/{vhost}/bob"))
            .await
            .status,
        404
    );
    let bulk = api
        .post("/api/users/bulk-delete", json!({"users": ["bob", "dave"]}))
        .await;
    assert_eq!(bulk.status, 204, "{}", bulk.text);
    assert_eq!(api.get("/api/users/bob").await.status, 404);
    assert_eq!(
        api.delete(&format!("/api/vhosts/{vhost}")).await.status,
        204
    );
    assert_eq!(api.get(&format!("/api/vhosts/{vhost}")).await.status, 404);
    assert_eq!(
        api.delete(&format!("/api/vhosts/{vhost}")).await.status,
        404
    );
    broker.stop().await;
}

#[tokio::test]
async fn queues_exchanges_and_bindings_are_declared_listed_and_deleted() {
    let broker = TestBroker::start().await;
    let api = api(&broker);
    let created = api
        .put(
            "/api/exchanges/%2F/orders",
            json!({"type": "topic", "durable": true}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(
        api.put(
            "/api/exchanges/%2F/orders",
            json!({"type": "topic", "durable": true})
        )
        .await
        .status,
        204
    );
    assert_error(
        &api.put("/api/exchanges/%2F/orders", json!({"type": "fanout"}))
            .await,
        400,
        "bad_request",
        "inequivalent arg 'type' for exchange 'orders' in vhost '/'",
    );
    assert_error(
        &api.put("/api/exchanges/%2F/amq.mine", json!({"type": "direct"}))
            .await,
        401,
        "not_authorised",
        "Access refused.",
    );
    let exchange = api.get("/api/exchanges/%2F/orders").await;
    assert_eq!(exchange.json["type"], json!("topic"));
    let default = api.get("/api/exchanges/%2F/amq.default").await;
    assert_eq!(default.json["name"], json!(""));

    let queue = api
        .put(
            "/api/queues/%2F/orders.eu",
            json!({"durable": true, "arguments": {"x-max-length": 100}}),
        )
        .await;
    assert_eq!(queue.status, 201, "{}", queue.text);
    assert_eq!(
        api.put(
            "/api/queues/%2F/orders.eu",
            json!({"durable": true, "arguments": {"x-max-length": 100}})
        )
        .await
        .status,
        204
    );
    assert_error(
        &api.put("/api/queues/%2F/orders.eu", json!({"durable": false}))
            .await,
        400,
        "bad_request",
        "inequivalent arg 'durable' for queue 'orders.eu'",
    );
    let bound = api
        .post(
            "/api/bindings/%2F/e/orders/q/orders.eu",
            json!({"routing_key": "eu.#", "arguments": {}}),
        )
        .await;
    assert_eq!(bound.status, 201, "{}", bound.text);
    assert_eq!(
        bound.headers.get("location").map(String::as_str),
        Some("orders.eu/eu.%2523")
    );
    let between = api.get("/api/bindings/%2F/e/orders/q/orders.eu").await;
    assert_eq!(
        between.json.as_array().unwrap().len(),
        1,
        "{}",
        between.text
    );
    assert_eq!(between.json[0]["properties_key"], json!("eu.%23"));
    let queue_bindings = api.get("/api/queues/%2F/orders.eu/bindings").await;
    let sources: Vec<&str> = queue_bindings
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["source"].as_str().unwrap())
        .collect();
    assert_eq!(
        sources,
        ["", "orders"],
        "the default exchange's binding, then ours"
    );
    assert_error(
        &api.post("/api/bindings/%2F/e/nope/q/orders.eu", json!({}))
            .await,
        404,
        "not_found",
        "no exchange 'nope'",
    );

    // Messages published over AMQP show in the queue's counts.
    let connection = connect(&broker.url()).await;
    let channel = connection.create_channel().await.unwrap();
    for _ in 0..3 {
        channel
            .basic_publish(
                "orders".into(),
                "eu.new".into(),
                BasicPublishOptions::default(),
                b"order",
                BasicProperties::default(),
            )
            .await
            .unwrap();
    }
    let row = eventually(&api, "/api/queues/%2F/orders.eu", |row| {
        row["messages_ready"] == json!(3)
    })
    .await;
    assert_eq!(row["messages"], json!(3));
    assert_eq!(row["type"], json!("classic"));
    assert_eq!(row["arguments"], json!({"x-max-length": 100}));
    assert_eq!(row["message_stats"]["publish"], json!(3));
    assert_error(
        &api.delete("/api/queues/%2F/orders.eu?if-empty=true").await,
        400,
        "bad_request",
        "queue 'orders.eu' in vhost '/' not empty",
    );
    assert_eq!(
        api.delete("/api/queues/%2F/orders.eu/contents")
            .await
            .status,
        204
    );
    eventually(&api, "/api/queues/%2F/orders.eu", |row| {
        row["messages"] == json!(0)
    })
    .await;

    // Lists: RabbitMQ's sort, paging and columns.
    for name in ["b-queue", "a-queue"] {
        assert_eq!(
            api.put(&format!("/api/queues/%2F/{name}"), json!({}))
                .await
                .status,
            201
        );
    }
    let listed = api.get("/api/queues/%2F?columns=name,messages").await;
    assert_eq!(names(&listed.json), ["a-queue", "b-queue", "orders.eu"]);
    assert_eq!(listed.json[0], json!({"name": "a-queue", "messages": 0}));
    let page = api
        .get("/api/queues?page=2&page_size=2&sort=name&sort_reverse=true")
        .await;
    assert_eq!(page.json["total_count"], json!(3), "{}", page.text);
    assert_eq!(page.json["page_count"], json!(2));
    assert_eq!(names(&page.json["items"]), ["a-queue"]);
    let filtered = api.get("/api/queues?page=1&name=ORDERS").await;
    assert_eq!(names(&filtered.json["items"]), ["orders.eu"]);
    assert_error(
        &api.get("/api/queues?page=1&page_size=600").await,
        400,
        "invalid_pagination_parameters",
        "page size 600",
    );

    assert_eq!(
        api.delete("/api/bindings/%2F/e/orders/q/orders.eu/eu.%2523")
            .await
            .status,
        204
    );
    assert_eq!(
        api.get("/api/bindings/%2F/e/orders/q/orders.eu/eu.%2523")
            .await
            .status,
        404
    );
    assert_eq!(api.delete("/api/queues/%2F/orders.eu").await.status, 204);
    assert_eq!(api.get("/api/queues/%2F/orders.eu").await.status, 404);
    assert_error(
        &api.delete("/api/exchanges/%2F/amq.topic").await,
        401,
        "not_authorised",
        "Access refused.",
    );
    assert_eq!(
        api.delete("/api/exchanges/%2F/orders?if-unused=true")
            .await
            .status,
        204
    );
    assert_eq!(api.get("/api/exchanges/%2F/orders").await.status, 404);
    connection.close(200, "bye".into()).await.unwrap();
    broker.stop().await;
}

#[tokio::test]
async fn connections_channels_and_consumers_are_listed_and_closed_with_a_reason() {
    let broker = TestBroker::start().await;
    let api = api(&broker);
    let connection = connect(&broker.url()).await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_qos(7, BasicQosOptions::default())
        .await
        .unwrap();
    channel
        .queue_declare(
            "work".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _consumer = channel
        .basic_consume(
            "work".into(),
            "worker-1".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    let connections = eventually(&api, "/api/connections", |list| {
        list.as_array().is_some_and(|rows| rows.len() == 1)
    })
    .await;
    let row = &connections[0];
    assert_eq!(row["user"], json!("guest"));
    assert_eq!(row["vhost"], json!("/"));
    assert_eq!(row["protocol"], json!("AMQP 0-9-1"));
    assert_eq!(row["client_properties"]["product"], json!("lapin"));
    let name = row["name"].as_str().unwrap().to_string();

    let channels = eventually(&api, "/api/channels", |list| {
        list.as_array().is_some_and(|rows| {
            rows.first()
                .is_some_and(|row| row["consumer_count"] == json!(1))
        })
    })
    .await;
    assert_eq!(channels[0]["prefetch_count"], json!(7));
    assert_eq!(channels[0]["name"], json!(format!("{name} (1)")));
    let encoded: String = name
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' => (byte as char).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect();
    let of_connection = api
        .get(&format!("/api/connections/{encoded}/channels"))
        .await;
    assert_eq!(
        of_connection.json.as_array().unwrap().len(),
        1,
        "{}",
        of_connection.text
    );
    let consumers = api.get("/api/consumers/%2F").await;
    assert_eq!(consumers.json[0]["consumer_tag"], json!("worker-1"));
    assert_eq!(
        consumers.json[0]["queue"],
        json!({"name": "work", "vhost": "/"})
    );
    assert_eq!(consumers.json[0]["prefetch_count"], json!(7));

    // Another management user sees nothing of guest's connection, nor may close it.
    api.put(
        "/api/users/erin",
        json!({"password": "pw", "tags": "management"}),
    )
    .await;
    let erin = api.as_user("erin", "pw");
    assert_eq!(erin.get("/api/connections").await.json, json!([]));
    assert_error(
        &erin.delete(&format!("/api/connections/{encoded}")).await,
        401,
        "not_authorised",
        "User not authorised to access object",
    );

    let (sender, mut errors) = tokio::sync::mpsc::unbounded_channel();
    let events = connection.events_listener();
    tokio::spawn(async move {
        futures_lite::pin!(events);
        while let Some(event) = events.next().await {
            if let lapin::Event::Error(error) = event {
                let _ = sender.send(error);
            }
        }
    });
    let closed = api
        .call(
            "DELETE",
            &format!("/api/connections/{encoded}"),
            None,
            &[("X-Reason", "maintenance window")],
        )
        .await;
    assert_eq!(closed.status, 204, "{}", closed.text);
    let forced = promptly("connection.close 320", async {
        loop {
            let error = errors.recv().await.expect("an error event");
            if let lapin::ErrorKind::ProtocolError(amqp) = error.kind() {
                return (amqp.get_id(), amqp.get_message().to_string());
            }
        }
    })
    .await;
    assert_eq!(
        forced,
        (320, "CONNECTION_FORCED - maintenance window".into())
    );
    eventually(&api, "/api/connections", |list| list == &json!([])).await;
    assert_eq!(
        api.get(&format!("/api/connections/{encoded}")).await.status,
        404
    );
    broker.stop().await;
}

/// Every node answers for the whole cluster: a queue's messages counted where it runs, a
/// connection to another node listed and closed through this one, quorum queue members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_node_answers_for_the_whole_cluster() {
    let cluster = TestCluster::builder().nodes(3).build().await;
    cluster.wait_for_members(3, Duration::from_secs(30)).await;
    let address = |index: usize| {
        cluster
            .node(index)
            .node()
            .management_address()
            .expect("a management listener")
    };
    let on_a = Api::new(address(0), "guest", "guest");
    let on_b = Api::new(address(1), "guest", "guest");

    let connection = connect(&cluster.node(0).url()).await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare(
            "on-a".into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            "replicated".into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            quorum,
        )
        .await
        .unwrap();
    for queue in ["on-a", "replicated", "replicated"] {
        channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                b"m",
                BasicProperties::default(),
            )
            .await
            .unwrap();
    }
    let classic = eventually(&on_b, "/api/queues/%2F/on-a", |row| {
        row["messages"] == json!(1)
    })
    .await;
    assert_eq!(classic["node"], json!(cluster.node(0).name().to_string()));
    let replicated = eventually(&on_b, "/api/queues/%2F/replicated", |row| {
        row["messages"] == json!(2) && row["leader"].is_string()
    })
    .await;
    assert_eq!(replicated["type"], json!("quorum"));
    assert_eq!(replicated["members"].as_array().unwrap().len(), 3);
    assert_eq!(replicated["online"].as_array().unwrap().len(), 3);

    let nodes = on_b.get("/api/nodes").await;
    assert_eq!(nodes.json.as_array().unwrap().len(), 3, "{}", nodes.text);
    assert!(
        nodes
            .json
            .as_array()
            .unwrap()
            .iter()
            .all(|node| node["running"] == json!(true))
    );
    let overview = on_b.get("/api/overview").await;
    assert_eq!(
        overview.json["queue_totals"]["messages"],
        json!(3),
        "{}",
        overview.text
    );
    assert_eq!(
        overview.json["cluster_name"],
        on_a.get("/api/overview").await.json["cluster_name"]
    );

    let connections = eventually(&on_b, "/api/connections", |list| {
        list.as_array().is_some_and(|rows| rows.len() == 1)
    })
    .await;
    assert_eq!(
        connections[0]["node"],
        json!(cluster.node(0).name().to_string())
    );
    let name = connections[0]["name"].as_str().unwrap();
    let encoded = name.replace(' ', "%20").replace('>', "%3E");
    let closed = on_b.delete(&format!("/api/connections/{encoded}")).await;
    assert_eq!(closed.status, 204, "{}", closed.text);
    eventually(&on_a, "/api/connections", |list| list == &json!([])).await;
}

/// `/publish` routes as `basic.publish` does and waits for the queues' confirms; `/get` takes
/// messages with each of RabbitMQ's ack modes.
#[tokio::test]
async fn messages_are_published_and_got_through_the_api() {
    let broker = TestBroker::start().await;
    let api = api(&broker);
    assert_eq!(
        api.put("/api/queues/%2F/inbox", json!({"durable": true}))
            .await
            .status,
        201
    );
    let published = api
        .post(
            "/api/exchanges/%2F/amq.default/publish",
            json!({
                "properties": {"delivery_mode": 2, "headers": {"x-trace": "abc"}, "content_type": "text/plain"},
                "routing_key": "inbox",
                "payload": "hello world",
                "payload_encoding": "string",
            }),
        )
        .await;
    assert_eq!(
        published.json,
        json!({"routed": true}),
        "{}",
        published.text
    );
    let binary = api
        .post(
            "/api/exchanges/%2F/amq.default/publish",
            json!({"properties": {}, "routing_key": "inbox", "payload": "AP8=", "payload_encoding": "base64"}),
        )
        .await;
    assert_eq!(binary.json, json!({"routed": true}), "{}", binary.text);
    let unroutable = api
        .post(
            "/api/exchanges/%2F/amq.direct/publish",
            json!({"properties": {}, "routing_key": "nobody", "payload": "x", "payload_encoding": "string"}),
        )
        .await;
    assert_eq!(unroutable.json, json!({"routed": false}));
    assert_error(
        &api.post(
            "/api/exchanges/%2F/amq.direct/publish",
            json!({"routing_key": "x"}),
        )
        .await,
        400,
        "bad_request",
        "{key_missing,properties}",
    );
    assert_error(
        &api.post(
            "/api/exchanges/%2F/amq.default/publish",
            json!({"properties": {"delivery_mode": "two"}, "routing_key": "inbox", "payload": "x", "payload_encoding": "string"}),
        )
        .await,
        400,
        "bad_request",
        "[\"not_int\",\"delivery_mode\"]",
    );
    assert_error(
        &api.post(
            "/api/exchanges/%2F/nope/publish",
            json!({"properties": {}, "routing_key": "x", "payload": "x", "payload_encoding": "string"}),
        )
        .await,
        404,
        "not_found",
        "exchange_not_found",
    );

    // Requeued: both come back, marked redelivered the next time.
    let got = api
        .post(
            "/api/queues/%2F/inbox/get",
            json!({"count": 5, "ackmode": "ack_requeue_true", "encoding": "auto", "truncate": 5}),
        )
        .await;
    assert_eq!(got.status, 200, "{}", got.text);
    let messages = got.json.as_array().expect("a list");
    assert_eq!(messages.len(), 2, "{}", got.text);
    assert_eq!(messages[0]["payload"], json!("hello"));
    assert_eq!(messages[0]["payload_bytes"], json!(11));
    assert_eq!(messages[0]["payload_encoding"], json!("string"));
    assert_eq!(messages[0]["redelivered"], json!(false));
    assert_eq!(messages[0]["message_count"], json!(1));
    assert_eq!(messages[0]["routing_key"], json!("inbox"));
    assert_eq!(
        messages[0]["properties"],
        json!({"delivery_mode": 2, "headers": {"x-trace": "abc"}, "content_type": "text/plain"})
    );
    assert_eq!(messages[1]["payload"], json!("AP8="), "not UTF-8: base64");
    assert_eq!(messages[1]["payload_encoding"], json!("base64"));
    let again = api
        .post(
            "/api/queues/%2F/inbox/get",
            json!({"count": "1", "ackmode": "ack_requeue_false", "encoding": "base64"}),
        )
        .await;
    assert_eq!(again.json[0]["redelivered"], json!(true), "{}", again.text);
    assert_eq!(again.json[0]["payload"], json!("aGVsbG8gd29ybGQ="));
    let last = api
        .post(
            "/api/queues/%2F/inbox/get",
            json!({"count": 5, "ackmode": "ack_requeue_false", "encoding": "auto"}),
        )
        .await;
    assert_eq!(last.json.as_array().unwrap().len(), 1, "{}", last.text);
    let empty = api
        .post(
            "/api/queues/%2F/inbox/get",
            json!({"count": 5, "ackmode": "ack_requeue_false", "encoding": "auto"}),
        )
        .await;
    assert_eq!(empty.json, json!([]));
    assert_error(
        &api.post(
            "/api/queues/%2F/inbox/get",
            json!({"count": 1, "ackmode": "keep", "encoding": "auto"}),
        )
        .await,
        400,
        "bad_request",
        "Invalid ackmode value: keep",
    );
    assert_error(
        &api.post(
            "/api/queues/%2F/inbox/get",
            json!({"count": 1, "ackmode": "ack_requeue_true", "encoding": "hex"}),
        )
        .await,
        400,
        "bad_request",
        "Unsupported encoding. Please use auto or base64.",
    );
    assert_error(
        &api.post(
            "/api/queues/%2F/nope/get",
            json!({"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"}),
        )
        .await,
        404,
        "not_found",
        "queue_not_found",
    );
    broker.stop().await;
}
