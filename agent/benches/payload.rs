//! Payload bench, two parts, each side by side in the same run with the tools a user would
//! otherwise use:
//!
//! 1. Hash 1 GiB: the agent's verification hash (`payload::hash_file`, the loop attestation and
//!    install use) vs `openssl dgst -sha256` vs `sha256sum`, on the same file (page cache warm).
//!    Goal: agent ≥ 0.9× openssl's throughput.
//! 2. Download + verify + install 1 GiB over loopback from the real release registry binary
//!    (`GET /v1/blobs/{sha256}`): the agent's path (`fetch::ensure_blob` into a fresh blob cache,
//!    hashing while writing, then `install::install`: copy into a temp file next to the target
//!    while hashing, fsync, rename) vs `curl -o` followed by `sha256sum`. Goal: ≤ 1× curl +
//!    sha256sum.
//!
//! `cargo build --release -p steward-registry && cargo bench -p steward-agent --bench payload
//! [-- --quick]` (`--quick`: 256 MiB, one round; `STEWARD_BENCH_PAYLOAD_MIB` sets the size).
//! Medians over the rounds are printed and written to `target/bench-results/payload.json`.
//! The files live in a temporary directory under the target dir (same filesystem) and are
//! deleted at the end. Timings are reported, never asserted; a wrong hash fails the run.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

#[allow(dead_code)]
#[path = "agent/harness.rs"]
mod harness;

use std::io::Write;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use steward_agent::client::{RegistryClient, TlsOptions};
use steward_agent::payload::{fetch, hash_file, install, policy};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

/// Writes `size` pseudo-random bytes (xorshift; incompressible enough for a hash bench).
fn write_content(path: &Path, size: u64) {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for c in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
    f.get_ref().sync_all().unwrap();
}

/// Runs a command, returns (wall time, first word of its stdout).
fn timed(cmd: &str, args: &[&str]) -> (Duration, String) {
    let t = Instant::now();
    let out = Command::new(cmd)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let d = t.elapsed();
    assert!(out.status.success(), "{cmd} {args:?} failed");
    let s = String::from_utf8_lossy(&out.stdout);
    (d, s.split_whitespace().next().unwrap_or("").to_string())
}

fn main() -> ExitCode {
    let quick = std::env::args().any(|a| a == "--quick");
    let mib: u64 = std::env::var("STEWARD_BENCH_PAYLOAD_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 256 } else { 1024 });
    let size = mib << 20;
    let rounds = if quick { 1 } else { 3 };
    let results = harness::results_dir();
    std::fs::create_dir_all(&results).unwrap();
    let base = results.parent().unwrap().to_path_buf();
    // Peak use: the source, the registry's copy, curl's copy or the agent's cache + target.
    if let Ok(v) = nix::sys::statvfs::statvfs(&base) {
        let free = v.blocks_available().saturating_mul(v.fragment_size());
        if free < 5 * size {
            println!(
                "not enough free space in {}: {} MiB free, the bench needs {} MiB (5 × the \
                 payload); free some or set STEWARD_BENCH_PAYLOAD_MIB lower",
                base.display(),
                free >> 20,
                (5 * size) >> 20
            );
            return ExitCode::FAILURE;
        }
    }
    let work = tempfile::Builder::new()
        .prefix("payload-bench-")
        .tempdir_in(&base)
        .unwrap();
    let src = work.path().join("blob.bin");
    println!(
        "payload bench: {mib} MiB, {rounds} round(s), files in {}",
        work.path().display()
    );
    write_content(&src, size);
    let src_s = src.to_str().unwrap();
    // Warm the page cache, and the reference hash.
    let (_, expected) = timed("sha256sum", &[src_s]);

    // 1. Hashing.
    let (mut t_agent, mut t_openssl, mut t_sum) = (vec![], vec![], vec![]);
    for _ in 0..rounds {
        let t = Instant::now();
        let (h, n) = hash_file(&src).unwrap();
        t_agent.push(t.elapsed());
        assert_eq!((h.as_str(), n), (expected.as_str(), size), "agent hash");
        let (d, h) = timed("openssl", &["dgst", "-sha256", "-r", src_s]);
        assert_eq!(h, expected, "openssl hash");
        t_openssl.push(d);
        let (d, h) = timed("sha256sum", &[src_s]);
        assert_eq!(h, expected, "sha256sum hash");
        t_sum.push(d);
    }
    let (ha, ho, hs) = (median(t_agent), median(t_openssl), median(t_sum));

    // 2. Download + verify + install over loopback from the real registry.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let reg = match rt.block_on(harness::Registry::start(Duration::from_secs(10))) {
        Ok(r) => r,
        Err(e) => {
            println!("cannot start the registry: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(w) = harness::registry_staleness(&harness::registry_bin().unwrap()) {
        println!("{w}");
    }
    let auth = format!("Authorization: Bearer {}", reg.admin);
    let put = reg.url("/v1/payloads/bench/1");
    let (_, _) = timed(
        "curl",
        &["-sSf", "-o", "/dev/null", "-T", src_s, "-H", &auth, &put],
    );
    let blob_url = reg.url(&format!("/v1/blobs/{expected}"));
    let client = RegistryClient::new(&reg.url(""), &TlsOptions::default())
        .unwrap()
        .with_credentials("bench".into(), reg.admin.clone());
    let (mut t_dl_agent, mut t_dl_curl) = (vec![], vec![]);
    for i in 0..rounds {
        let out = work.path().join("curl.out");
        let out_s = out.to_str().unwrap();
        let t = Instant::now();
        let _ = timed("curl", &["-sSf", "-o", out_s, "-H", &auth, &blob_url]);
        let (_, h) = timed("sha256sum", &[out_s]);
        t_dl_curl.push(t.elapsed());
        assert_eq!(h, expected, "curl download hash");
        std::fs::remove_file(&out).unwrap();

        let cache = work.path().join(format!("cache-{i}"));
        let target = work.path().join(format!("root/installed-{i}.bin"));
        let roots = [work.path().join("root")];
        std::fs::create_dir_all(&roots[0]).unwrap();
        let t = Instant::now();
        let fetched = rt
            .block_on(fetch::ensure_blob(
                Some(&client),
                &cache,
                &expected,
                Some(size),
            ))
            .unwrap();
        let tgt = policy::check_path(target.to_str().unwrap(), &roots).unwrap();
        let dir = policy::open_dir(&tgt, true).unwrap().unwrap();
        install::install(
            &dir,
            &install::Install {
                target: &tgt,
                blob: &fetched.path,
                sha256: &expected,
                mode: 0o644,
                owner: (None, None),
            },
        )
        .unwrap();
        t_dl_agent.push(t.elapsed());
        assert_eq!(fetched.downloaded, size);
        std::fs::remove_dir_all(&cache).unwrap();
        std::fs::remove_file(&target).unwrap();
    }
    let (da, dc) = (median(t_dl_agent), median(t_dl_curl));
    drop(reg);

    println!();
    println!("hash {mib} MiB (median of {rounds})      time        GB/s    vs openssl");
    for (what, d) in [
        ("steward-agent (sha2, 1 MiB reads)", ha),
        ("openssl dgst -sha256", ho),
        ("sha256sum", hs),
    ] {
        println!(
            "  {what:<34} {:>8.3} s  {:>6.2}   {:>5.2}×",
            d.as_secs_f64(),
            gbps(size, d),
            ho.as_secs_f64() / d.as_secs_f64()
        );
    }
    println!("  goal: agent ≥ 0.9× openssl's throughput");
    println!();
    println!("download + verify + install {mib} MiB over loopback     time      vs curl+sha256sum");
    println!(
        "  steward-agent (cache, hash, temp, fsync, rename) {:>8.3} s  {:>5.2}×",
        da.as_secs_f64(),
        da.as_secs_f64() / dc.as_secs_f64()
    );
    println!(
        "  curl -o + sha256sum                              {:>8.3} s  {:>5.2}×",
        dc.as_secs_f64(),
        1.0
    );
    println!("  goal: agent ≤ 1× curl -o + sha256sum");
    let out = json!({
        "size_bytes": size,
        "rounds": rounds,
        "hash": {
            "agent_s": ha.as_secs_f64(),
            "openssl_s": ho.as_secs_f64(),
            "sha256sum_s": hs.as_secs_f64(),
            "agent_gbps": gbps(size, ha),
            "openssl_gbps": gbps(size, ho),
            "sha256sum_gbps": gbps(size, hs),
            "agent_vs_openssl_throughput": ho.as_secs_f64() / ha.as_secs_f64(),
        },
        "download_install": {
            "agent_s": da.as_secs_f64(),
            "curl_sha256sum_s": dc.as_secs_f64(),
            "agent_vs_curl_sha256sum_time": da.as_secs_f64() / dc.as_secs_f64(),
        },
    });
    let path = results.join("payload.json");
    std::fs::write(&path, serde_json::to_string_pretty(&out).unwrap()).unwrap();
    println!("\nwritten to {}", path.display());
    ExitCode::SUCCESS
}
