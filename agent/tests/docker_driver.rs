//! The Docker driver against the real engine (never a mock). Each test skips loudly when no
//! engine is reachable, and fails instead when `CI` is set.
//!
//!   cargo test -p steward-agent --test docker_driver
#![allow(clippy::unwrap_used)]

#[path = "common/docker.rs"]
mod docker_common;

use std::time::Duration;

use docker_common::*;
use futures_util::StreamExt;
use serde_json::json;
use steward_agent::docker::{ContainerEvent, Docker, DockerError};
use steward_agent::reconcile::types::limits;
use steward_agent::reconcile::types::{
    ObservedConfig, ObservedContainer, LABEL_MANAGED, LABEL_NAME, LABEL_NODE, LABEL_SPEC_HASH,
};

const SLEEP: &[&str] = &["sleep", "3600"];

async fn setup() -> Option<Docker> {
    let d = require_docker().await?;
    ensure_test_image();
    Some(d)
}

async fn observed(d: &Docker, name: &str) -> Option<ObservedContainer> {
    d.observe()
        .await
        .unwrap()
        .containers
        .into_iter()
        .find(|c| c.name == name)
}

#[tokio::test]
async fn connect_and_version() {
    let Some(d) = setup().await else { return };
    let v = d.version().await.unwrap();
    assert!(!v.is_empty());
    assert_eq!(v, docker_cli(&["version", "-f", "{{.Server.Version}}"]));

    let missing = std::path::Path::new("/nonexistent/docker.sock");
    let err = Docker::connect(Some(missing)).await.unwrap_err();
    assert!(matches!(err, DockerError::Connect { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("/nonexistent/docker.sock") && msg.contains("dockerd"),
        "{msg}"
    );
}

#[tokio::test]
async fn create_and_start_applies_the_spec() {
    let Some(d) = setup().await else { return };
    let cleanup = Cleanup::new();
    let name = cleanup.container(unique_name("web"));
    let spec = container_spec(
        &name,
        TEST_IMAGE,
        json!({
            "command": ["sh", "-c"],
            "args": ["httpd -p 8080 -h /www && exec sleep 3600"],
            "env": {"GREETING": "hello world", "EMPTY": ""},
            "labels": {"team": "web"},
            "ports": ["127.0.0.1::8080/tcp"],
            "hostname": "web-host",
            "resources": {"memory": "64Mi", "cpus": 0.5},
            "healthcheck": {"exec": ["true"], "interval": "5s", "timeout": "2s", "retries": 2},
        }),
    );
    let id = d.create_and_start(&spec, "hash-1", "node-a").await.unwrap();
    assert!(id.len() >= 12, "{id}");

    // Reachable over HTTP on the ephemeral host port Docker picked on 127.0.0.1.
    let binding = inspect(
        &name,
        r#"{{(index (index .NetworkSettings.Ports "8080/tcp") 0).HostIp}}:{{(index (index .NetworkSettings.Ports "8080/tcp") 0).HostPort}}"#,
    );
    assert!(binding.starts_with("127.0.0.1:"), "{binding}");
    let (code, body) = http_get(&binding, "/index.html", Duration::from_secs(10));
    assert_eq!(code, 200, "{body}");
    assert_eq!(body.trim(), "steward test image");

    // Env, hostname, labels, health check as given.
    assert_eq!(
        docker_cli(&[
            "exec",
            &name,
            "sh",
            "-c",
            "echo \"$GREETING|$EMPTY|$(hostname)\""
        ]),
        "hello world||web-host"
    );
    assert_eq!(inspect(&name, "{{index .Config.Labels \"team\"}}"), "web");
    assert_eq!(
        inspect(&name, "{{json .Config.Healthcheck.Test}}"),
        r#"["CMD","true"]"#
    );
    assert_eq!(inspect(&name, "{{.Config.Healthcheck.Interval}}"), "5s");
    assert_eq!(inspect(&name, "{{.Config.Healthcheck.Retries}}"), "2");

    // observe() reports it as managed, with the ownership labels and the limits the planner
    // compares against.
    let o = observed(&d, &name).await.expect("container observed");
    assert_eq!(o.id, id);
    assert!(o.managed);
    assert_eq!(o.steward_name.as_deref(), Some(name.as_str()));
    assert_eq!(o.spec_hash.as_deref(), Some("hash-1"));
    assert_eq!(o.node.as_deref(), Some("node-a"));
    assert!(o.running);
    assert_eq!(o.state, "running");
    assert_eq!(o.exit_code, None);
    assert_eq!(o.restart_count, 0);
    assert_eq!(
        o.config,
        ObservedConfig {
            image: TEST_IMAGE.to_string(),
            memory: 64 << 20,
            nano_cpus: 500_000_000,
            privileged: false,
        }
    );
    assert_eq!((o.config.memory, o.config.nano_cpus), limits(&spec));
    for (label, want) in [
        (LABEL_MANAGED, "true"),
        (LABEL_NAME, name.as_str()),
        (LABEL_SPEC_HASH, "hash-1"),
        (LABEL_NODE, "node-a"),
    ] {
        assert_eq!(
            inspect(&name, &format!("{{{{index .Config.Labels \"{label}\"}}}}")),
            want,
            "{label}"
        );
    }

    // The image shows up among the local references.
    let all = d.observe().await.unwrap();
    assert!(all.images.contains(TEST_IMAGE), "{:?}", all.images);

    // Creating the same name again is a name conflict, not a generic failure.
    let err = d
        .create_and_start(&spec, "hash-1", "node-a")
        .await
        .unwrap_err();
    assert!(matches!(err, DockerError::NameConflict { .. }), "{err}");
    assert!(err.to_string().contains(&name), "{err}");
}

#[tokio::test]
async fn observe_reports_unmanaged_containers_as_unmanaged() {
    let Some(d) = setup().await else { return };
    let cleanup = Cleanup::new();
    let name = cleanup.container(unique_name("unmanaged"));
    docker_cli(&["run", "-d", "--name", &name, TEST_IMAGE, "sleep", "3600"]);
    let o = observed(&d, &name).await.expect("container observed");
    assert!(!o.managed);
    assert_eq!(o.steward_name, None);
    assert_eq!(o.spec_hash, None);
    assert!(o.running);
    assert_eq!(o.state, "running");
    assert_eq!(o.config.image, TEST_IMAGE);

    // Stopped by hand: the exit code comes from the listing.
    let exited = cleanup.container(unique_name("unmanaged-exit"));
    docker_cli(&[
        "run", "-d", "--name", &exited, TEST_IMAGE, "sh", "-c", "exit 7",
    ]);
    let o = wait_for("the container to exit", Duration::from_secs(20), || async {
        observed(&d, &exited).await.filter(|o| !o.running)
    })
    .await;
    assert!(!o.managed && !o.running);
    assert_eq!(o.state, "exited");
    assert_eq!(o.exit_code, Some(7));
}

#[tokio::test]
async fn start_failure_leaves_no_container() {
    let Some(d) = setup().await else { return };
    let cleanup = Cleanup::new();
    let name = cleanup.container(unique_name("nostart"));
    let spec = container_spec(
        &name,
        TEST_IMAGE,
        json!({"command": ["/no/such/binary"], "restart": "never"}),
    );
    let err = d.create_and_start(&spec, "h", "n").await.unwrap_err();
    assert!(
        matches!(err, DockerError::StartFailed { cleanup: None, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&name) && msg.contains("/no/such/binary"),
        "{msg}"
    );
    assert!(!container_exists(&name), "{name} was left behind");
    assert!(observed(&d, &name).await.is_none());
}

#[tokio::test]
async fn missing_image_errors_name_the_image() {
    let Some(d) = setup().await else { return };
    let cleanup = Cleanup::new();
    let image = "steward-test/does-not-exist:9";

    // Pull: no registry is reachable (and the image does not exist anyway).
    let err = d.pull(image).await.unwrap_err();
    assert!(
        matches!(err, DockerError::ImageUnavailable { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "image {image} is not present and could not be pulled"
        )),
        "{msg}"
    );

    // Create without the image: says so, and leaves nothing behind.
    let name = cleanup.container(unique_name("noimage"));
    let spec = container_spec(&name, image, json!({}));
    let err = d.create_and_start(&spec, "h", "n").await.unwrap_err();
    assert!(matches!(err, DockerError::ImageMissing { .. }), "{err:?}");
    assert!(err.to_string().contains(image), "{err}");
    assert!(!container_exists(&name));
}

#[tokio::test]
async fn remove_is_idempotent_and_start_restarts() {
    let Some(d) = setup().await else { return };
    let cleanup = Cleanup::new();
    let name = cleanup.container(unique_name("remove"));
    let spec = container_spec(&name, TEST_IMAGE, json!({"command": SLEEP}));
    let id = d.create_and_start(&spec, "h", "n").await.unwrap();

    // start() of a stopped container brings it back; of a running one is a no-op.
    docker_cli(&["stop", "-t", "0", &name]);
    assert!(!observed(&d, &name).await.unwrap().running);
    d.start(&id).await.unwrap();
    assert!(observed(&d, &name).await.unwrap().running);
    d.start(&id).await.unwrap();

    d.remove(&id).await.unwrap();
    assert!(!container_exists(&name));
    d.remove(&id).await.unwrap();
    d.remove(&unique_name("never-existed")).await.unwrap();

    let err = d.start(&id).await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
}

#[tokio::test]
async fn stopped_container_shows_exit_code() {
    let Some(d) = setup().await else { return };
    let cleanup = Cleanup::new();
    let name = cleanup.container(unique_name("exit"));
    let spec = container_spec(
        &name,
        TEST_IMAGE,
        json!({"command": ["sh", "-c", "exit 3"], "restart": "never"}),
    );
    d.create_and_start(&spec, "h", "n").await.unwrap();
    let o = wait_for("the container to exit", Duration::from_secs(20), || async {
        observed(&d, &name).await.filter(|o| !o.running)
    })
    .await;
    assert!(o.managed);
    assert_eq!(o.state, "exited");
    assert_eq!(o.exit_code, Some(3));
}

#[tokio::test]
async fn restart_policies_are_mapped() {
    let Some(d) = setup().await else { return };
    let cleanup = Cleanup::new();
    for (policy, docker_name) in [
        ("always", "always"),
        ("on-failure", "on-failure"),
        ("never", "no"),
    ] {
        let name = cleanup.container(unique_name("restart"));
        let spec = container_spec(
            &name,
            TEST_IMAGE,
            json!({"command": SLEEP, "restart": policy}),
        );
        d.create_and_start(&spec, "h", "n").await.unwrap();
        assert_eq!(
            inspect(&name, "{{.HostConfig.RestartPolicy.Name}}"),
            docker_name,
            "{policy}"
        );
    }
}

#[tokio::test]
async fn host_namespaces_and_networks_are_mapped() {
    let Some(d) = setup().await else { return };
    let cleanup = Cleanup::new();
    let name = cleanup.container(unique_name("hostns"));
    let spec = container_spec(
        &name,
        TEST_IMAGE,
        json!({"command": SLEEP, "host_network": true, "host_pid": true}),
    );
    d.create_and_start(&spec, "h", "n").await.unwrap();
    assert_eq!(inspect(&name, "{{.HostConfig.NetworkMode}}"), "host");
    assert_eq!(inspect(&name, "{{.HostConfig.PidMode}}"), "host");
    let o = observed(&d, &name).await.unwrap();
    assert!(!o.config.privileged);
    assert_eq!((o.config.memory, o.config.nano_cpus), (0, 0));

    // A named Docker network.
    let net = unique_name("net");
    docker_cli(&["network", "create", &net]);
    let name2 = cleanup.container(unique_name("onnet"));
    let spec = container_spec(
        &name2,
        TEST_IMAGE,
        json!({"command": SLEEP, "network": net}),
    );
    let res = d.create_and_start(&spec, "h", "n").await;
    let mode = res
        .as_ref()
        .ok()
        .map(|_| inspect(&name2, "{{.HostConfig.NetworkMode}}"));
    let _ = try_docker_cli(&["rm", "-f", &name2]);
    let _ = try_docker_cli(&["network", "rm", &net]);
    res.unwrap();
    assert_eq!(mode.as_deref(), Some(net.as_str()));
}

#[tokio::test]
async fn privileged_is_mapped() {
    let Some(d) = setup().await else { return };
    let cleanup = Cleanup::new();
    let name = cleanup.container(unique_name("priv"));
    let spec = container_spec(
        &name,
        TEST_IMAGE,
        json!({"command": SLEEP, "privileged": true}),
    );
    // Some hosts (e.g. an engine inside a container without every capability) cannot run
    // privileged containers at all; ask the CLI first.
    let probe = cleanup.container(unique_name("priv-probe"));
    let cli = try_docker_cli(&[
        "run",
        "-d",
        "--privileged",
        "--name",
        &probe,
        TEST_IMAGE,
        "true",
    ]);
    match cli {
        Ok(_) => {
            d.create_and_start(&spec, "h", "n").await.unwrap();
            assert_eq!(inspect(&name, "{{.HostConfig.Privileged}}"), "true");
            assert!(observed(&d, &name).await.unwrap().config.privileged);
        }
        Err(cli_err) => {
            eprintln!(
                "NOTE: this engine cannot run privileged containers ({cli_err}); checking that \
                 the driver reports it and leaves nothing behind instead"
            );
            let err = d.create_and_start(&spec, "h", "n").await.unwrap_err();
            assert!(
                matches!(err, DockerError::StartFailed { cleanup: None, .. }),
                "{err:?}"
            );
            assert!(!container_exists(&name));
        }
    }
}

#[tokio::test]
async fn read_only_bind_mount() {
    let Some(d) = setup().await else { return };
    let cleanup = Cleanup::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "from the host\n").unwrap();
    let name = cleanup.container(unique_name("bind"));
    let spec = container_spec(
        &name,
        TEST_IMAGE,
        json!({
            "command": SLEEP,
            "volumes": [format!("{}:/data:ro", dir.path().display())],
        }),
    );
    d.create_and_start(&spec, "h", "n").await.unwrap();
    assert_eq!(
        docker_cli(&["exec", &name, "cat", "/data/hello.txt"]),
        "from the host"
    );
    let write = try_docker_cli(&["exec", &name, "sh", "-c", "echo x > /data/new.txt"]);
    assert!(
        write.is_err(),
        "writing into a read-only bind mount succeeded"
    );
    assert!(write.unwrap_err().contains("Read-only file system"));
    assert!(!dir.path().join("new.txt").exists());
}

#[tokio::test]
async fn named_volume_outlives_its_container() {
    let Some(d) = setup().await else { return };
    let cleanup = Cleanup::new();
    let volume = cleanup.volume(unique_name("vol"));
    let first = cleanup.container(unique_name("vol-a"));
    let spec = container_spec(
        &first,
        TEST_IMAGE,
        json!({"command": SLEEP, "volumes": [format!("{volume}:/data")]}),
    );
    let id = d.create_and_start(&spec, "h", "n").await.unwrap();
    docker_cli(&["exec", &first, "sh", "-c", "echo kept > /data/file"]);
    assert_eq!(
        inspect(&first, "{{range .Mounts}}{{.Type}} {{.Name}}{{end}}"),
        format!("volume {volume}")
    );

    // remove() keeps named volumes; a new container sees the data.
    d.remove(&id).await.unwrap();
    assert_eq!(
        docker_cli(&["volume", "inspect", "-f", "{{.Name}}", &volume]),
        volume
    );
    let second = cleanup.container(unique_name("vol-b"));
    let spec = container_spec(
        &second,
        TEST_IMAGE,
        json!({"command": SLEEP, "volumes": [format!("{volume}:/data:ro")]}),
    );
    d.create_and_start(&spec, "h", "n").await.unwrap();
    assert_eq!(docker_cli(&["exec", &second, "cat", "/data/file"]), "kept");
}

#[tokio::test]
async fn events_report_managed_containers_only() {
    let Some(d) = setup().await else { return };
    let cleanup = Cleanup::new();
    let name = cleanup.container(unique_name("events"));
    let spec = container_spec(
        &name,
        TEST_IMAGE,
        json!({"command": SLEEP, "restart": "never"}),
    );
    let id = d.create_and_start(&spec, "h", "n").await.unwrap();
    let unmanaged = cleanup.container(unique_name("events-unmanaged"));
    docker_cli(&[
        "run", "-d", "--name", &unmanaged, TEST_IMAGE, "sleep", "3600",
    ]);

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ContainerEvent>();
    let mut events = d.events();
    let follower = tokio::spawn(async move {
        while let Some(ev) = events.next().await {
            if tx.send(ev.expect("event stream error")).is_err() {
                break;
            }
        }
    });

    // The subscription is live once a harmless signal (SIGCONT) to our container shows up as
    // a `kill` event; until then, keep poking.
    let mut live = false;
    for _ in 0..100 {
        docker_cli(&["kill", "-s", "CONT", &name]);
        if let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            if ev.id == id && ev.action == "kill" {
                live = true;
                break;
            }
        }
    }
    assert!(live, "the event stream never delivered an event");

    // The unmanaged container dies first; then ours. Events arrive in order, so when ours
    // arrives, one about the unmanaged container would already have been seen. (Other tests
    // running in parallel produce events of their own managed containers: skip those.)
    docker_cli(&["kill", &unmanaged]);
    docker_cli(&["kill", &name]);
    let die = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let ev = rx.recv().await.expect("event stream ended");
            assert!(
                ev.name != unmanaged,
                "got an event of an unmanaged container: {ev:?}"
            );
            if ev.id == id && ev.action == "die" {
                return ev;
            }
        }
    })
    .await
    .expect("no die event within 20s");
    assert_eq!(
        die,
        ContainerEvent {
            id: id.clone(),
            name: name.clone(),
            action: "die".into()
        }
    );
    follower.abort();
}

#[tokio::test]
async fn load_image_from_a_saved_tarball() {
    let Some(d) = setup().await else { return };
    let cleanup = Cleanup::new();
    let alias = cleanup.image(format!("{}:load", unique_name("load")));
    docker_cli(&["tag", TEST_IMAGE, &alias]);
    let dir = tempfile::tempdir().unwrap();
    let tarball = dir.path().join("image.tar");
    docker_cli(&["save", "-o", tarball.to_str().unwrap(), &alias]);
    // Untag the alias (the image itself stays: TEST_IMAGE still names it).
    docker_cli(&["rmi", &alias]);
    assert!(!d.observe().await.unwrap().images.contains(&alias));

    let loaded = d.load_image(&tarball).await.unwrap();
    assert_eq!(loaded, vec![alias.clone()]);
    assert!(d.observe().await.unwrap().images.contains(&alias));

    // Not a tarball / no such file: errors that name the file.
    let junk = dir.path().join("junk.tar");
    std::fs::write(&junk, b"this is not a tar archive").unwrap();
    let err = d.load_image(&junk).await.unwrap_err();
    assert!(matches!(err, DockerError::Load { .. }), "{err:?}");
    assert!(err.to_string().contains("junk.tar"), "{err}");
    let err = d
        .load_image(&dir.path().join("missing.tar"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("missing.tar") && err.to_string().contains("cannot open"),
        "{err}"
    );
}
