//! End-to-end against the real registry binary (and `stewardctl`): spec limits on node specs,
//! fragments and the merged effective spec of each node, raised by `[limits]` in the config;
//! YAML values of the wrong type refused on their field, over HTTP and through stewardctl.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::Registry;
use reqwest::Method;
use serde_json::{json, Value};

/// A spec of `n` containers named `<prefix><i>`.
fn containers(prefix: &str, n: usize) -> Value {
    let list: Vec<Value> = (0..n)
        .map(|i| json!({"name": format!("{prefix}{i}"), "image": "busybox:1"}))
        .collect();
    json!({ "containers": list })
}

/// The problems of an error body as `field: reason` lines.
fn problems(body: &Value) -> Vec<String> {
    body["problems"]
        .as_array()
        .unwrap_or_else(|| panic!("no problems in {body}"))
        .iter()
        .map(|p| {
            format!(
                "{}: {}",
                p["field"].as_str().unwrap(),
                p["reason"].as_str().unwrap()
            )
        })
        .collect()
}

async fn spec_of(r: &Registry, id: &str) -> Value {
    let (st, doc) = r.get(&format!("/v1/nodes/{id}/spec"), &r.admin).await;
    assert_eq!(st, 200, "{doc}");
    doc
}

#[tokio::test]
async fn specs_fragments_and_merged_specs_over_the_limits_are_refused_until_raised() {
    let r = Registry::start(&[]).await;
    let (id, _) = r.enroll("m-limits", json!({"role": "web"})).await;
    let spec_url = format!("/v1/nodes/{id}/spec");
    let (st, w) = r
        .req(
            Method::PUT,
            &spec_url,
            Some(&r.admin),
            Some(containers("own", 1)),
        )
        .await;
    assert_eq!(st, 200, "{w}");
    let before = spec_of(&r, &id).await;
    assert_eq!(before["generation"], 1);

    // 10,000 containers (about 500 KB, under the body limit): 400 naming the limit.
    let (st, err) = r
        .req(
            Method::PUT,
            &spec_url,
            Some(&r.admin),
            Some(containers("c", 10_000)),
        )
        .await;
    assert_eq!(st, 400, "{err}");
    assert_eq!(
        problems(&err),
        ["containers: 10000 containers exceed the limit of 500 (limits.max_containers)"]
    );
    assert_eq!(
        spec_of(&r, &id).await,
        before,
        "a refused spec changed the stored one"
    );

    // Past the body limit the body is not even read: 413 naming the setting.
    let (st, err) = r
        .req(
            Method::PUT,
            &spec_url,
            Some(&r.admin),
            Some(containers("big-name-", 30_000)),
        )
        .await;
    assert_eq!(st, 413, "{err}");
    assert!(
        err["error"].as_str().unwrap().contains("max_body_bytes"),
        "{err}"
    );

    // A fragment over the limit on its own: 400 on spec.containers, nothing stored.
    let (st, err) = r
        .req(
            Method::PUT,
            "/v1/fragments/huge",
            Some(&r.admin),
            Some(json!({"selector": "role=web", "spec": containers("h", 501)})),
        )
        .await;
    assert_eq!(st, 400, "{err}");
    assert_eq!(
        problems(&err),
        ["spec.containers: 501 containers exceed the limit of 500 (limits.max_containers)"]
    );

    // Fragments that fit alone but add up past the limit in the node's effective spec.
    let (st, w) = r
        .req(
            Method::PUT,
            "/v1/fragments/half",
            Some(&r.admin),
            Some(json!({"selector": "role=web", "spec": containers("a", 300)})),
        )
        .await;
    assert_eq!(st, 200, "{w}");
    let fitting = spec_of(&r, &id).await;
    assert_eq!(fitting["spec"]["containers"].as_array().unwrap().len(), 301);
    let (st, err) = r
        .req(
            Method::PUT,
            "/v1/fragments/more",
            Some(&r.admin),
            Some(json!({"selector": "role=web", "spec": containers("b", 250)})),
        )
        .await;
    assert_eq!(st, 409, "{err}");
    assert_eq!(
        problems(&err),
        [format!(
            "nodes[{id}].containers: 551 containers exceed the limit of 500 (limits.max_containers)"
        )]
    );
    let (st, _) = r.get("/v1/fragments/more", &r.admin).await;
    assert_eq!(st, 404, "a refused fragment was stored");
    // The node's own spec growing past the limit with the fragment: refused too.
    let (st, err) = r
        .req(
            Method::PUT,
            &spec_url,
            Some(&r.admin),
            Some(containers("own", 201)),
        )
        .await;
    assert_eq!(st, 409, "{err}");
    assert_eq!(
        problems(&err),
        ["containers: 501 containers exceed the limit of 500 (limits.max_containers)"]
    );
    assert_eq!(
        spec_of(&r, &id).await,
        fitting,
        "a refused write changed the spec"
    );

    // Per-container limits name the container.
    let mut one = containers("e", 1);
    one["containers"][0]["env"] = (0..1001).map(|i| (format!("K{i}"), json!("v"))).collect();
    let (st, err) = r
        .req(Method::PUT, &spec_url, Some(&r.admin), Some(one))
        .await;
    assert_eq!(st, 400, "{err}");
    assert_eq!(
        problems(&err),
        ["containers[0].env: 1001 entries exceed the limit of 1000 (limits.max_env_per_container)"]
    );
}

#[tokio::test]
async fn raised_limits_in_the_config_let_a_bigger_spec_through() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("registry.toml");
    std::fs::write(
        &cfg,
        "max_body_bytes = 4194304\n[limits]\nmax_containers = 20000\n",
    )
    .unwrap();
    let r = Registry::start(&["--config", cfg.to_str().unwrap()]).await;
    let (id, _) = r.enroll("m-raised", json!({})).await;
    let (st, w) = r
        .req(
            Method::PUT,
            &format!("/v1/nodes/{id}/spec"),
            Some(&r.admin),
            Some(containers("c", 10_000)),
        )
        .await;
    assert_eq!(st, 200, "{w}");
    let doc = spec_of(&r, &id).await;
    assert_eq!(doc["spec"]["containers"].as_array().unwrap().len(), 10_000);
    // The other limits keep their defaults.
    let (st, err) = r
        .req(Method::PUT, &format!("/v1/nodes/{id}/spec"), Some(&r.admin),
             Some(json!({"vms": (0..201).map(|i| json!({"name": format!("v{i}"), "image": "/i/v.qcow2", "memory": "1Gi"})).collect::<Vec<_>>()})))
        .await;
    assert_eq!(st, 400, "{err}");
    assert_eq!(
        problems(&err),
        ["vms: 201 vms exceed the limit of 200 (limits.max_vms)"]
    );

    // A config with an unknown limit is refused at start.
    std::fs::write(&cfg, "[limits]\nmax_containerz = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_steward-registry"))
        .args([
            "serve",
            "--config",
            cfg.to_str().unwrap(),
            "--listen",
            "127.0.0.1:1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown field `max_containerz`"),
        "{stderr}"
    );
}

/// Sends `yaml` with `method` to `path` as application/yaml.
async fn send_yaml(r: &Registry, method: Method, path: &str, yaml: &str) -> (u16, Value) {
    let resp = r
        .client
        .request(method, r.url(path))
        .bearer_auth(&r.admin)
        .header("content-type", "application/yaml")
        .body(yaml.to_string())
        .send()
        .await
        .unwrap();
    let st = resp.status().as_u16();
    (st, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn yaml_values_of_the_wrong_type_are_refused_naming_the_field() {
    let r = Registry::start(&[]).await;
    let (id, _) = r.enroll("m-yaml", json!({"role": "web"})).await;
    let spec_url = format!("/v1/nodes/{id}/spec");
    let node_url = format!("/v1/nodes/{id}");
    let (st, w) = r
        .put_yaml(
            &spec_url,
            &r.admin,
            "containers:\n  - {name: a, image: \"busybox:1\"}\n",
        )
        .await;
    assert_eq!(st, 200, "{w}");
    let spec_before = spec_of(&r, &id).await;
    let (_, node_before) = r.get(&node_url, &r.admin).await;

    // (method, path, YAML body, field, part of the reason)
    let cases = [
        (
            Method::PUT,
            "/v1/fragments/f".to_string(),
            "selector: null\nspec: {}\n",
            "selector",
            "invalid type: unit value, expected a string",
        ),
        (
            Method::PUT,
            "/v1/fragments/f".to_string(),
            "selector: true\nspec: {}\n",
            "selector",
            "invalid type: boolean `true`",
        ),
        (
            Method::POST,
            "/v1/enrollment-tokens".to_string(),
            "description: true\n",
            "description",
            "invalid type: boolean `true`",
        ),
        (
            Method::POST,
            "/v1/enrollment-tokens".to_string(),
            "labels: {role: false}\n",
            "labels.role",
            "invalid type: boolean `false`",
        ),
        (
            Method::PATCH,
            node_url.clone(),
            "labels: {role: false}\n",
            "labels.role",
            "invalid type: boolean `false`",
        ),
        (
            Method::PUT,
            spec_url.clone(),
            "containers:\n  - {name: a, image: x, labels: {tier: false}}\n",
            "containers[0].labels.tier",
            "invalid type: boolean `false`",
        ),
        (
            Method::PUT,
            spec_url.clone(),
            "containers:\n  - {name: a, image: null}\n",
            "containers[0].image",
            "invalid type: unit value",
        ),
    ];
    let mut failures = Vec::new();
    for (method, path, yaml, field, reason) in cases {
        let (st, err) = send_yaml(&r, method.clone(), &path, yaml).await;
        let got = if st == 400 { problems(&err) } else { vec![] };
        let hit =
            got.len() == 1 && got[0].starts_with(&format!("{field}: ")) && got[0].contains(reason);
        if !hit {
            failures.push(format!(
                "{method} {path} {yaml:?}: wanted 400 `{field}: ...{reason}...`, got {st} {err}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Nothing was written.
    let (_, frags) = r.get("/v1/fragments", &r.admin).await;
    assert_eq!(frags, json!([]));
    let (_, tokens) = r.get("/v1/enrollment-tokens", &r.admin).await;
    assert_eq!(
        tokens.as_array().unwrap().len(),
        1,
        "only the enrol test's token: {tokens}"
    );
    let (_, node_after) = r.get(&node_url, &r.admin).await;
    assert_eq!(node_after["labels"], node_before["labels"]);
    assert_eq!(spec_of(&r, &id).await, spec_before);

    // Quoted, the same values are strings and accepted.
    let (st, w) = send_yaml(
        &r,
        Method::PATCH,
        &node_url,
        "labels: {enabled: \"false\"}\n",
    )
    .await;
    assert_eq!(st, 200, "{w}");
    assert_eq!(w["labels"]["enabled"], "false");

    // stewardctl: the spec sent as YAML (spec apply) and the one parsed locally (fragments
    // apply) are refused with the field, and nothing changes.
    let file = r.dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "containers:\n  - {name: a, image: x, env: {DEBUG: true}}\n",
    )
    .unwrap();
    for args in [
        vec!["spec", "apply", id.as_str(), "-f", file.to_str().unwrap()],
        vec![
            "fragments",
            "apply",
            "g",
            "--selector",
            "role=web",
            "-f",
            file.to_str().unwrap(),
        ],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_stewardctl"))
            .arg("--registry")
            .arg(r.url(""))
            .args(&args)
            .env("STEWARD_TOKEN", &r.admin)
            .env_remove("STEWARD_TOKEN_FILE")
            .env("HOME", r.dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            stderr.contains("containers[0].env.DEBUG"),
            "{args:?}: {stderr}"
        );
        assert!(
            stderr.contains("invalid type: boolean `true`"),
            "{args:?}: {stderr}"
        );
    }
    assert_eq!(spec_of(&r, &id).await, spec_before);
    let (_, frags) = r.get("/v1/fragments", &r.admin).await;
    assert_eq!(frags, json!([]));
}
