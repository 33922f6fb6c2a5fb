//! The project's own example (`examples/node-spec.yaml`, what `scripts/demo.sh` applies) run
//! by the real agent (`steward-agent apply --watch --file`, no registry) on the real Docker
//! engine: its web server's health check passes, probe after probe, and nothing is restarted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{engine_ready, free_port, suffix, wait_for, IMAGE};
use serde_json::Value;

struct Running(Child, Vec<String>);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let mut args = vec!["rm".to_string(), "-f".to_string()];
        args.extend(self.1.iter().cloned());
        let _ = Command::new("docker").args(&args).output();
    }
}

/// `examples/node-spec.yaml` with the test's image, unique names, a free host port and a 1 s
/// check interval (so the check runs often); everything else as shipped.
fn example(web: &str, ticker: &str, port: u16) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/node-spec.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let swaps = [
        ("steward-demo/busybox:1", IMAGE.to_string()),
        ("name: web\n", format!("name: {web}\n")),
        ("name: ticker\n", format!("name: {ticker}\n")),
        ("127.0.0.1:18080:", format!("127.0.0.1:{port}:")),
        ("interval: 10s", "interval: 1s".to_string()),
    ];
    let mut out = text.clone();
    for (from, to) in swaps {
        assert!(
            out.contains(from),
            "the example no longer has {from:?}:\n{text}"
        );
        out = out.replace(from, &to);
    }
    out
}

#[tokio::test]
async fn the_example_spec_stays_healthy_with_no_restarts() {
    if !engine_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = suffix();
    let (web, ticker) = (format!("web-{s}"), format!("ticker-{s}"));
    let port = free_port();
    let spec = dir.path().join("node-spec.yaml");
    std::fs::write(&spec, example(&web, &ticker, port)).unwrap();
    let data = dir.path().join("agent");
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\nresync_interval = \"2s\"\nmetrics_listen = \"off\"\n",
            data.display()
        ),
    )
    .unwrap();
    let log_path = dir.path().join("agent.log");
    let child = Command::new(env!("CARGO_BIN_EXE_steward-agent"))
        .arg("--config")
        .arg(&cfg)
        .args(["apply", "--watch", "--file"])
        .arg(&spec)
        .env("RUST_LOG", "info,steward_agent::heal::probes=debug")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let _agent = Running(child, vec![web.clone(), ticker.clone()]);
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let status_path = data.join("status.json");
    let resource = |name: &str| -> Option<Value> {
        let st: Value = serde_json::from_slice(&std::fs::read(&status_path).ok()?).ok()?;
        st["resources"]
            .as_array()?
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
    };
    let probes_of_web = || {
        log()
            .lines()
            .filter(|l| l.contains("probed") && l.contains(web.as_str()))
            .count()
    };

    let id = wait_for(60, "web healthy", || {
        let healthy = resource(&web).is_some_and(|r| r["health"] == "healthy");
        let id = healthy.then(|| common::docker(&["inspect", "-f", "{{.Id}}", &web]));
        async move { id }
    })
    .await;
    let at_first = probes_of_web();
    wait_for(120, "five more probes of web", || {
        let n = probes_of_web();
        async move { (n >= at_first + 5).then_some(()) }
    })
    .await;
    // Let the pass after the last probe write its status.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let w = resource(&web).unwrap();
    assert_eq!(w["health"], "healthy", "{w}\n{}", log());
    assert_eq!(w["state"], "converged", "{w}");
    assert_eq!(w["restarts"], 0, "{w}\n{}", log());
    assert!(w["escalation"].is_null(), "{w}");
    assert_eq!(
        common::docker(&["inspect", "-f", "{{.Id}}", &web]),
        id,
        "web was recreated\n{}",
        log()
    );
    assert_eq!(
        common::docker(&["inspect", "-f", "{{.RestartCount}}", &web]),
        "0"
    );
    assert!(!log().contains("restarting (escalation)"), "{}", log());
    assert!(!log().contains("recreating"), "{}", log());
    let t = resource(&ticker).unwrap();
    assert_eq!(t["state"], "converged", "{t}");
    // And the web server answers on its published port, as the demo promises.
    let (code, _) = get_root(port).await;
    assert_eq!(code, 200);
}

async fn get_root(port: u16) -> (u16, String) {
    let r = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}
