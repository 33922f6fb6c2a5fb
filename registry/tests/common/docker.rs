//! Test support: the real Docker engine, for the tests of sessions run by a real agent (the
//! test image is built by `scripts/test-image.sh`).
#![allow(dead_code, clippy::unwrap_used)]

use std::process::Command;

/// The test image (`scripts/test-image.sh`).
pub const IMAGE: &str = "steward-test/busybox:1";

/// Whether the Docker engine answers; in CI (`CI=true`) a missing engine fails the test.
pub fn docker_ready() -> bool {
    let ok = Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok && std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("no Docker engine answers `docker info`: .ci/run must install and start dockerd");
    }
    if !ok {
        eprintln!("skipped: no Docker engine (CI=true makes this a failure)");
    }
    ok
}

/// The `docker` CLI's trimmed output with `args`.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Ids of the running containers labelled with session `id`.
pub fn containers_of(id: &str) -> Vec<String> {
    let filter = format!("label=io.steward.session={id}");
    let out = docker(&["ps", "-q", "--no-trunc", "--filter", &filter]);
    let mut v: Vec<String> = out.lines().map(str::to_string).collect();
    v.sort();
    v
}
