//! Conference-style sessions end to end: the real registry, a real agent and the real Docker
//! engine. Each session is a frontend (busybox httpd, a host port from the range, a volume of
//! its own) and a backend; per-owner and per-template limits; endpoints answer over HTTP; a
//! session's TTL ends it (containers and volume removed, its port free for the next one); an
//! extension restarts nothing; a delete removes everything.
#![allow(clippy::unwrap_used)]

mod common;

use common::agent::{wait_for, Agent};
use common::docker::{containers_of, docker, docker_ready, IMAGE};
use common::sessions::{enrollment_token, put_template, registry_with, running, session};
use common::Registry;
use reqwest::Method;
use serde_json::{json, Value};

fn volume_exists(name: &str) -> bool {
    docker(&["volume", "ls", "-q", "--filter", &format!("name=^{name}$")]) == name
}

async fn create(r: &Registry, owner: &str, ttl: &str) -> (u16, Value) {
    let body = json!({"template": "conf", "owner": owner, "ttl": ttl});
    r.req(Method::POST, "/v1/sessions", Some(&r.admin), Some(body))
        .await
}

/// The frontend's page through the session's endpoint (on this host).
async fn page(r: &Registry, s: &Value) -> Option<String> {
    let port = s["allocations"]["ports"]["http"].as_u64().unwrap();
    let url = format!("http://127.0.0.1:{port}/");
    let resp = r.client.get(url).send().await.ok()?;
    resp.status().is_success().then_some(())?;
    resp.text().await.ok()
}

#[tokio::test]
async fn conference_sessions_run_answer_expire_extend_and_end() {
    if !docker_ready() {
        return;
    }
    // A range of its own (100 ports from a random base): leftovers of an earlier run that
    // failed half-way hold none of them.
    let base = 21_000 + (std::process::id() % 80) * 100;
    let (r, _cfg) = registry_with(&format!("[sessions]\nports = \"{base}-{}\"\n", base + 99)).await;
    let tok = enrollment_token(&r, json!({"pool": "conf"})).await;
    let agent = Agent::start(&r.url(""), &tok, None).await;
    let template = json!({
        "selector": "pool=conf", "ports": ["http"], "volumes": ["data"],
        "ttl": "1h", "max_ttl": "2h", "per_owner": 1, "max_sessions": 2,
        "spec": {"containers": [
            {"name": "front-{{session}}", "image": IMAGE,
             "command": ["sh", "-c", "echo \"hello {{owner}}\" > /www/index.html && exec httpd -f -p 80 -h /www"],
             "ports": ["{{port.http}}:80"], "volumes": ["{{volume.data}}:/data"]},
            {"name": "back-{{session}}", "image": IMAGE, "command": ["sleep", "3600"],
             "env": {"SESSION": "{{session}}"}}
        ]}
    });
    let (st, t) = put_template(&r, &r.admin, "conf", template).await;
    assert_eq!(st, 200, "{t}");

    // Two owners fit; a second for one of them and a third owner do not.
    let (st, alice) = create(&r, "alice", "40s").await;
    assert_eq!(st, 201, "{alice}");
    let (st, bob) = create(&r, "bob", "1h").await;
    assert_eq!(st, 201, "{bob}");
    let (st, e) = create(&r, "alice", "1h").await;
    assert_eq!(st, 409);
    assert!(
        e["error"].as_str().unwrap().contains("its max_sessions")
            || e["error"].as_str().unwrap().contains("its per_owner"),
        "{e}"
    );
    let (st, e) = create(&r, "carol", "1h").await;
    assert_eq!(st, 409);
    assert!(
        e["error"].as_str().unwrap().contains("its max_sessions"),
        "{e}"
    );
    let (alice_id, bob_id) = (alice["id"].as_str().unwrap(), bob["id"].as_str().unwrap());
    assert_eq!(alice["node"], agent.id.as_str());

    // Both run (alice's short TTL may end hers before the registry sees it running: then
    // only bob's is checked); each endpoint answers with its owner's page; containers and
    // volumes are labelled.
    let bob_running = running(&r, bob_id).await;
    let mut up = vec![(bob_running.clone(), "bob")];
    let alice_now = wait_for(60, "alice's session to run or end", || async {
        let s = session(&r, alice_id).await;
        (s["state"] == "running" || s["state"] == "ended").then_some(s)
    })
    .await;
    if alice_now["state"] == "running" {
        up.push((alice_now.clone(), "alice"));
    }
    for (s, owner) in &up {
        let body = wait_for(30, "the frontend to answer", || page(&r, s)).await;
        assert_eq!(body.trim(), format!("hello {owner}"));
        assert!(s["endpoints"][0]["address"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{}", s["allocations"]["ports"]["http"])));
        let id = s["id"].as_str().unwrap();
        assert_eq!(containers_of(id).len(), 2, "{id}");
        assert!(volume_exists(&format!("steward-{id}-data")));
    }
    let alice_port = alice["allocations"]["ports"]["http"].clone();

    // Bob's endpoints gain each container's address on its Docker network, as the agent
    // reports it: the one Docker gave it.
    for name in [format!("front-{bob_id}"), format!("back-{bob_id}")] {
        let addr = wait_for(60, "a container's address in the endpoints", || async {
            let s = session(&r, bob_id).await;
            let e = s["endpoints"]
                .as_array()?
                .iter()
                .find(|e| e["name"] == name.as_str());
            e.map(|e| e["address"].as_str().unwrap().to_string())
        })
        .await;
        let fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}";
        assert_eq!(addr, docker(&["inspect", "-f", fmt, &name]), "{name}");
    }

    // Extending bob changes only the deadline: the same containers keep running.
    let before = containers_of(bob_id);
    let (st, x) = r
        .req(
            Method::POST,
            &format!("/v1/sessions/{bob_id}/extend"),
            Some(&r.admin),
            Some(json!({"by": "30m"})),
        )
        .await;
    assert_eq!(st, 200, "{x}");
    let generation = wait_for(30, "bob's node to apply the extension", || async {
        let (_, n) = r.get(&format!("/v1/nodes/{}", agent.id), &r.admin).await;
        let (_, doc) = r
            .get(&format!("/v1/nodes/{}/spec", agent.id), &r.admin)
            .await;
        (n["observed_generation"] == doc["generation"]).then_some(doc["generation"].clone())
    })
    .await;
    assert!(generation.as_u64().unwrap() > 0);
    assert_eq!(
        containers_of(bob_id),
        before,
        "an extension restarts nothing"
    );

    // Alice's TTL ends her session: containers and volume go, her port is free again.
    let ended = wait_for(60, "alice's session to expire", || async {
        let s = session(&r, alice_id).await;
        (s["state"] == "ended").then_some(s)
    })
    .await;
    assert_eq!(ended["reason"], "expired");
    wait_for(
        60,
        "alice's containers and volume to be removed",
        || async {
            (containers_of(alice_id).is_empty()
                && !volume_exists(&format!("steward-{alice_id}-data")))
            .then_some(())
        },
    )
    .await;
    let (st, carol) = create(&r, "carol", "1h").await;
    assert_eq!(st, 201, "{carol}");
    assert_eq!(
        carol["allocations"]["ports"]["http"], alice_port,
        "the freed port is given again"
    );
    let carol_id = carol["id"].as_str().unwrap();
    let carol_running = running(&r, carol_id).await;
    let body = wait_for(30, "carol's frontend to answer", || {
        page(&r, &carol_running)
    })
    .await;
    assert_eq!(body.trim(), "hello carol");

    // Deleting bob's session removes its containers and volume; carol's stays.
    let (st, e) = r
        .req(
            Method::DELETE,
            &format!("/v1/sessions/{bob_id}"),
            Some(&r.admin),
            None,
        )
        .await;
    assert_eq!(st, 200, "{e}");
    assert_eq!(e["reason"], "deleted");
    wait_for(60, "bob's containers and volume to be removed", || async {
        (containers_of(bob_id).is_empty() && !volume_exists(&format!("steward-{bob_id}-data")))
            .then_some(())
    })
    .await;
    assert_eq!(containers_of(carol_id).len(), 2);
    // The end: carol's too, so the engine is left as found.
    let (st, _) = r
        .req(
            Method::DELETE,
            &format!("/v1/sessions/{carol_id}"),
            Some(&r.admin),
            None,
        )
        .await;
    assert_eq!(st, 200);
    wait_for(
        60,
        "carol's containers and volume to be removed",
        || async {
            (containers_of(carol_id).is_empty()
                && !volume_exists(&format!("steward-{carol_id}-data")))
            .then_some(())
        },
    )
    .await;
    drop(agent);
}

#[tokio::test]
async fn a_claimed_spare_answers_at_once_and_a_new_spare_starts() {
    if !docker_ready() {
        return;
    }
    let base = 29_000 + (std::process::id() % 50) * 20;
    let (r, _cfg) = registry_with(&format!("[sessions]\nports = \"{base}-{}\"\n", base + 19)).await;
    let tok = enrollment_token(&r, json!({})).await;
    let _agent = Agent::start(&r.url(""), &tok, None).await;
    let template = json!({
        "spares": 1, "ports": ["http"], "ttl": "1h",
        "spec": {"containers": [
            {"name": "warm-{{session}}", "image": IMAGE,
             "command": ["httpd", "-f", "-p", "80", "-h", "/www"], "ports": ["{{port.http}}:80"]}
        ]}
    });
    let (st, t) = put_template(&r, &r.admin, "conf", template).await;
    assert_eq!(st, 200, "{t}");
    let spare_running = || async {
        let (_, all) = r.get("/v1/sessions?state=running", &r.admin).await;
        all.as_array()
            .unwrap()
            .iter()
            .find(|s| s["spare"] == true)
            .cloned()
    };
    let spare = wait_for(120, "a running spare", spare_running).await;
    // The claim answers with the running session; its endpoint answers straight away.
    let (st, s) = create(&r, "ada", "1h").await;
    assert_eq!(st, 201, "{s}");
    assert_eq!(s["id"], spare["id"]);
    assert_eq!(s["state"], "running");
    let body = page(&r, &s)
        .await
        .expect("the claimed session answers at once");
    assert!(!body.is_empty());
    // A new spare starts and runs; the claimed session keeps its container.
    let id = s["id"].as_str().unwrap();
    let before = containers_of(id);
    let next = wait_for(120, "a new running spare", spare_running).await;
    assert_ne!(next["id"], s["id"]);
    assert_eq!(containers_of(id), before);
    for sid in [id, next["id"].as_str().unwrap()] {
        let (st, _) = r
            .req(
                Method::DELETE,
                &format!("/v1/sessions/{sid}"),
                Some(&r.admin),
                None,
            )
            .await;
        assert_eq!(st, 200);
    }
    // No spares: the template wants one, so take it away first by deleting the template's
    // spares setting, then wait for the engine to be clean.
    let (st, _) = put_template(&r, &r.admin, "conf", json!({"spec": {}})).await;
    assert_eq!(st, 200);
    wait_for(60, "the session containers to be removed", || async {
        let (_, all) = r.get("/v1/sessions", &r.admin).await;
        let live: Vec<String> = all
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["state"] != "ended")
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect();
        for sid in &live {
            r.req(
                Method::DELETE,
                &format!("/v1/sessions/{sid}"),
                Some(&r.admin),
                None,
            )
            .await;
        }
        (live.is_empty() && containers_of(id).is_empty()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_expired_session_is_removed_while_the_registry_is_down_and_nothing_else() {
    if !docker_ready() {
        return;
    }
    let base = 31_000 + (std::process::id() % 50) * 20;
    let (mut r, _cfg) =
        registry_with(&format!("[sessions]\nports = \"{base}-{}\"\n", base + 19)).await;
    let tok = enrollment_token(&r, json!({})).await;
    let agent = Agent::start(&r.url(""), &tok, None).await;
    // The node's own workload, which must survive.
    let own = format!("own-{}", &agent.id[..8]);
    let spec = format!("containers: [{{name: {own}, image: '{IMAGE}', command: [sleep, '3600']}}]");
    let (st, w) = r
        .put_yaml(&format!("/v1/nodes/{}/spec", agent.id), &r.admin, &spec)
        .await;
    assert_eq!(st, 200, "{w}");
    let template = json!({"volumes": ["data"], "ttl": "1h",
        "spec": {"containers": [{"name": "s-{{session}}", "image": IMAGE,
                                 "command": ["sleep", "3600"], "volumes": ["{{volume.data}}:/data"]}]}});
    let (st, t) = put_template(&r, &r.admin, "conf", template).await;
    assert_eq!(st, 200, "{t}");
    let (st, s) = create(&r, "ada", "25s").await;
    assert_eq!(st, 201, "{s}");
    let id = s["id"].as_str().unwrap().to_string();
    wait_for(60, "the session's container to run", || async {
        (containers_of(&id).len() == 1).then_some(())
    })
    .await;
    let own_filter = format!("name=^{own}$");
    let own_id = wait_for(60, "the node's own container", || async {
        let id = docker(&["ps", "-q", "--no-trunc", "--filter", &own_filter]);
        (!id.is_empty()).then_some(id)
    })
    .await;
    // The registry dies before the deadline; the agent removes the session on its own.
    r.kill9();
    wait_for(
        90,
        "the expired session's container and volume to go",
        || async {
            (containers_of(&id).is_empty() && !volume_exists(&format!("steward-{id}-data")))
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        docker(&["ps", "-q", "--no-trunc", "--filter", &own_filter]),
        own_id,
        "the node's own container runs on, untouched"
    );
    assert!(agent.log().contains(&id), "the agent logs the expiry");
    drop(agent);
    let _ = docker(&["rm", "-f", &own]);
}
