//! The scale bench on etcd (`--store etcd`): the sled seed migrated once into a one-member etcd
//! cluster (`steward-registry migrate`, the way an operator moves a registry to etcd), cached in
//! `/tmp/steward-scale-etcd-N/`; every run starts an etcd member on a copy of that data dir
//! (`--force-new-cluster`, fresh ports) for the registry replica to use.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hyper::Method;
use serde_json::{json, Value};

use crate::seed::Seed;
use crate::stats::r3;
use crate::util::{free_port, registry_bin, wait_listening_for, ChildGuard, Conn};

/// etcd's backend quota: 8 GiB (the default 2 GiB is below what 100k statuses take with
/// etcd's own overhead).
const QUOTA: &str = "8589934592";

/// One etcd member on a data dir.
pub struct Etcd {
    pub guard: ChildGuard,
    /// `etcd://127.0.0.1:port`, for `--store`.
    pub url: String,
    pub dir: PathBuf,
}

/// The etcd binary: `$STEWARD_ETCD`, else `etcd` on `PATH`.
fn etcd_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("STEWARD_ETCD") {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("etcd is not installed (bash scripts/deps.sh installs it)"))
}

impl Etcd {
    /// Starts a member on `dir` (made new when empty, else taken over with
    /// `--force-new-cluster`), logging to `log`; returns once it answers `/health`.
    pub async fn start(dir: &Path, log: &Path) -> Result<Etcd> {
        let (client, peer) = (free_port()?, free_port()?);
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut cmd = Command::new(etcd_bin()?);
        cmd.args(["--name", "scale", "--data-dir"])
            .arg(dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("scale={peer_url}")])
            .args(["--quota-backend-bytes", QUOTA])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        if dir.join("member").exists() {
            cmd.arg("--force-new-cluster");
        }
        let mut guard = ChildGuard::new("etcd", cmd.spawn()?);
        let addr: SocketAddr = format!("127.0.0.1:{client}").parse()?;
        wait_listening_for(addr, &mut guard, Duration::from_secs(120)).await?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let healthy = async {
                let mut c = Conn::connect(addr).await?;
                let req = c.request(Method::GET, "/health", None, None)?;
                let (st, body) = c.send(req).await?;
                anyhow::Ok(st.is_success() && body.windows(4).any(|w| w == b"true"))
            };
            if healthy.await.unwrap_or(false) {
                break;
            }
            guard.check_alive()?;
            if Instant::now() > deadline {
                bail!("etcd on {} not healthy within 120 s", dir.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Etcd {
            guard,
            url: format!("etcd://127.0.0.1:{client}"),
            dir: dir.to_path_buf(),
        })
    }
}

/// The etcd data dir holding the seed (migrated into it first when not cached); with the
/// migration's figures when it ran now.
pub async fn ensure(seed: &Seed, n: usize) -> Result<(PathBuf, Value)> {
    let root = PathBuf::from(format!("/tmp/steward-scale-etcd-{n}"));
    if root.join("complete").exists() {
        eprintln!("etcd seed: using the cache {}", root.display());
        let stats = std::fs::read_to_string(root.join("migrate.json"))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(Value::Null);
        return Ok((
            root.join("etcd"),
            json!({"cached": true, "when_migrated": stats}),
        ));
    }
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    std::fs::create_dir_all(&root)?;
    // The migration reads a copy: sled may write to a store it opens.
    let from = root.join("sled-copy");
    std::fs::create_dir_all(&from)?;
    crate::seed::copy_data(seed, &from)?;
    let etcd = Etcd::start(&root.join("etcd"), &root.join("etcd.log")).await?;
    eprintln!(
        "etcd seed: migrating the sled seed into etcd ({}) ...",
        etcd.url
    );
    let t = Instant::now();
    let out = Command::new(registry_bin())
        .arg("migrate")
        .arg("--from-data-dir")
        .arg(from.join("data"))
        .arg("--to")
        .arg(&etcd.url)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running steward-registry migrate")?;
    let took = t.elapsed();
    if !out.status.success() {
        bail!(
            "steward-registry migrate: {}; {}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let mut etcd = etcd;
    etcd.guard
        .terminate(Duration::from_secs(60))
        .context("stopping etcd after the migration")?;
    std::fs::remove_dir_all(&from)?;
    let stats = json!({
        "migrate_seconds": r3(took.as_secs_f64()),
        "etcd_dir_bytes": crate::procfs::dir_bytes(&etcd.dir),
        "summary": String::from_utf8_lossy(&out.stdout),
    });
    std::fs::write(
        root.join("migrate.json"),
        serde_json::to_string_pretty(&stats)?,
    )?;
    std::fs::write(root.join("complete"), "")?;
    Ok((
        root.join("etcd"),
        json!({"cached": false, "when_migrated": stats}),
    ))
}

/// Copies the cached etcd data dir to `to/etcd` and starts a member on it.
pub async fn start_copy(cached: &Path, to: &Path) -> Result<(Etcd, Duration)> {
    let t = Instant::now();
    let st = Command::new("cp").arg("-a").arg(cached).arg(to).status()?;
    if !st.success() {
        bail!("cp -a {} {}: {st}", cached.display(), to.display());
    }
    let copied = t.elapsed();
    let etcd = Etcd::start(&to.join("etcd"), &to.join("etcd.log")).await?;
    Ok((etcd, copied))
}
