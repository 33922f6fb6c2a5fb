//! Probes run inside a container's network namespace. A container's `tcp`/`http` check means
//! what it means in Docker's HEALTHCHECK: `localhost` is the container itself, its own ports
//! are reachable whether published or not, and other hosts are reached over the container's
//! networks. The probe runs in a thread of its own that joined the namespace of the
//! container's init process (`/proc/<pid>/ns/net`, `setns`), on a single-threaded runtime: the
//! sockets it makes are the container's. The thread ends with the probe, so no other task of the
//! agent ever runs in a container's namespace.

use std::time::Duration;

use nix::sched::{setns, CloneFlags};

use super::probe;

/// How much longer than the probe's own timeout the caller waits for the probe thread.
const SLACK: Duration = Duration::from_secs(5);

/// Probes `target` (an `http://` URL when `http`, else `host:port`) from the network namespace
/// of process `pid` within `timeout`.
pub async fn probe_in(
    pid: u32,
    http: bool,
    target: String,
    timeout: Duration,
) -> Result<(), String> {
    let path = format!("/proc/{pid}/ns/net");
    let ns = std::fs::File::open(&path)
        .map_err(|e| format!("cannot enter the container's network namespace ({path}): {e}"))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("probe-in-netns".into())
        .spawn(move || {
            let _ = tx.send(run_in(ns, http, &target, timeout));
        });
    if let Err(e) = spawned {
        return Err(format!("cannot start a probe thread: {e}"));
    }
    match tokio::time::timeout(timeout + SLACK, rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err("the probe thread ended without a result".into()),
        Err(_) => Err(format!("no probe result within {:?}", timeout + SLACK)),
    }
}

/// In the probe thread: join the namespace, then probe on a runtime of this thread alone.
fn run_in(ns: std::fs::File, http: bool, target: &str, timeout: Duration) -> Result<(), String> {
    setns(&ns, CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("cannot enter the container's network namespace: {e}"))?;
    drop(ns);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a probe runtime: {e}"))?;
    rt.block_on(async {
        if http {
            // A client of this thread: its connections are made, and pooled, in this namespace.
            probe::http(&probe::http_client(), target, timeout).await
        } else {
            probe::tcp(target, timeout).await
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process in a namespace of its own (`unshare -n`, loopback up) listens on a port: a
    /// probe in that namespace reaches it through `localhost`, a probe of the agent's own
    /// namespace does not, and the agent's thread stays in its namespace.
    #[tokio::test]
    async fn a_probe_in_a_namespace_reaches_what_listens_there() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        let have = std::process::Command::new("unshare")
            .args(["-n", "true"])
            .status()
            .is_ok_and(|s| s.success());
        if !have {
            assert!(!ci, "unshare -n is needed (root, util-linux)");
            return;
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let script = format!(
            "ip link set lo up && exec python3 -c 'import socket,time\n\
             s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind((\"127.0.0.1\", {port})); s.listen(8)\n\
             print(\"up\", flush=True)\n\
             time.sleep(120)'"
        );
        let mut child = std::process::Command::new("unshare")
            .args(["-n", "sh", "-c", &script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let mut buf = [0u8; 3];
        std::io::Read::read_exact(&mut out, &mut buf).unwrap();
        let pid = child.id();
        let t = Duration::from_secs(5);
        let inside = probe_in(pid, false, format!("localhost:{port}"), t).await;
        let host = probe::tcp(&format!("127.0.0.1:{port}"), t).await;
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(inside, Ok(()));
        assert!(host.is_err(), "the agent's namespace was changed: {host:?}");
        let gone = probe_in(u32::MAX, false, format!("localhost:{port}"), t).await;
        assert!(gone.unwrap_err().contains("network namespace"));
    }
}
