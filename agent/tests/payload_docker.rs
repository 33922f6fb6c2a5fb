//! `docker-image` payloads end to end: a `docker save` tarball uploaded to the real registry is
//! deployed by the real agent, loaded into the real engine, and a container of the same spec
//! runs from it (no image can be pulled here); a new version restarts the containers
//! `on_change` names; an image removed from the engine by hand is loaded again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{docker, engine_ready, inspect, suffix, wait_for, Agent, Registry, IMAGE};
use serde_json::Value;

/// Removes the test's image tags even when the test fails.
struct Images(Vec<String>);

impl Drop for Images {
    fn drop(&mut self) {
        for i in &self.0 {
            let _ = std::process::Command::new("docker")
                .args(["rmi", "-f", i])
                .output();
        }
    }
}

fn started_at(name: &str) -> String {
    docker(&["inspect", "-f", "{{.State.StartedAt}}", name])
}

#[tokio::test]
async fn docker_image_payload_is_loaded_and_a_container_runs_from_it() {
    if !engine_ready() {
        return;
    }
    let s = suffix();
    let image = format!("steward-test/payload-{s}:1");
    let extra = format!("steward-test/payload-{s}:extra");
    let _cleanup = Images(vec![image.clone(), extra.clone()]);
    let work = tempfile::tempdir().unwrap();
    let tar1 = work.path().join("v1.tar");
    let tar2 = work.path().join("v2.tar");
    docker(&["tag", IMAGE, &image]);
    docker(&["save", "-o", tar1.to_str().unwrap(), &image]);
    docker(&["tag", IMAGE, &extra]);
    docker(&["save", "-o", tar2.to_str().unwrap(), &image, &extra]);
    // Only the payload may bring these tags back.
    docker(&["rmi", &image, &extra]);

    let r = Registry::start().await;
    let root = tempfile::tempdir().unwrap();
    let a = Agent::start(
        &r,
        &format!("payload_roots = [\"{}\"]", root.path().display()),
    )
    .await;
    let (pname, cname) = (format!("img-{s}"), format!("from-payload-{s}"));
    r.upload(&pname, "1", std::fs::read(&tar1).unwrap()).await;
    let sha2 = r.upload(&pname, "2", std::fs::read(&tar2).unwrap()).await;
    let spec = |v: &str| {
        format!(
            "payloads:\n  - {{name: {pname}, version: '{v}', kind: docker-image, path: '{}/images/app.tar', on_change: {{restart_containers: [{cname}]}}}}\ncontainers:\n  - {{name: {cname}, image: '{image}', command: [sleep, '3600']}}\n",
            root.path().display()
        )
    };
    let g = r.put_spec(&a.node_id, &spec("1")).await;
    let res = r.wait_observed(&a.node_id, g).await;
    let state = |res: &[Value], kind: &str, name: &str| {
        res.iter()
            .find(|x| x["kind"] == kind && x["name"] == name)
            .map(|x| (x["state"].clone(), x["error"].clone()))
            .unwrap()
    };
    assert_eq!(state(&res, "payload", &pname).0, "converged", "{res:?}");
    assert_eq!(state(&res, "container", &cname).0, "converged", "{res:?}");
    let c = inspect(&cname).expect("the container exists");
    assert!(c.running);
    let cfg_image = docker(&["inspect", "-f", "{{.Config.Image}}", &cname]);
    assert_eq!(cfg_image, image);
    assert!(root.path().join("images/app.tar").exists());
    let first_start = started_at(&cname);

    // Version 2 (adds a tag): loaded, and the container named in on_change restarted.
    let g = r.put_spec(&a.node_id, &spec("2")).await;
    r.wait_observed(&a.node_id, g).await;
    wait_for(30, "the extra tag from version 2", || async {
        let out = std::process::Command::new("docker")
            .args(["image", "inspect", &extra])
            .output()
            .ok()?;
        out.status.success().then_some(())
    })
    .await;
    wait_for(30, "the on_change restart", || async {
        (started_at(&cname) != first_start).then_some(())
    })
    .await;
    assert_eq!(
        inspect(&cname).unwrap().id,
        c.id,
        "restarted, not recreated"
    );
    let att = r.attestations(&a.node_id).await;
    assert_eq!(att[0]["actual"], sha2.as_str());

    // An image removed from the engine by hand is loaded again from the deployed payload.
    docker(&["rmi", &extra]);
    wait_for(30, "the removed tag to be loaded again", || async {
        let out = std::process::Command::new("docker")
            .args(["image", "inspect", &extra])
            .output()
            .ok()?;
        out.status.success().then_some(())
    })
    .await;
}
