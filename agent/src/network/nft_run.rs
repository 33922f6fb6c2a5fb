//! Running `nft -j` (the only place that spawns it): with a timeout, its stdin fed, its stderr
//! turned into a [`NetworkError::Nft`] with a hint a user can act on.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::NetworkError;

/// How long one `nft` run may take.
const NFT_TIMEOUT: Duration = Duration::from_secs(10);

/// A hint for what `nft` answered (empty when we have none).
pub(super) fn hint(reason: &str) -> String {
    let r = reason.to_ascii_lowercase();
    let text = if r.contains("operation not permitted") || r.contains("permission denied") {
        "the agent needs CAP_NET_ADMIN (run it as root)"
    } else if r.contains("protocol not supported") || r.contains("not supported") {
        "the kernel has no nf_tables support (modprobe nf_tables)"
    } else {
        return String::new();
    };
    format!(" ({text})")
}

pub(super) fn nft_error(op: &str, reason: String) -> NetworkError {
    NetworkError::Nft {
        op: op.to_string(),
        hint: hint(&reason),
        reason,
    }
}

/// Runs `nft -j <args>` with `input` on its stdin; its stdout, or an error with its stderr.
pub(super) async fn run(
    op: &str,
    args: &[&str],
    input: Option<String>,
) -> Result<String, NetworkError> {
    let mut cmd = tokio::process::Command::new("nft");
    cmd.arg("-j")
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| {
        let why = if e.kind() == std::io::ErrorKind::NotFound {
            "nft is not installed (or not on PATH); install the nftables package".to_string()
        } else {
            format!("cannot run nft: {e}")
        };
        nft_error(op, why)
    })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .await
            .map_err(|e| nft_error(op, format!("writing to nft: {e}")))?;
    }
    let out = tokio::time::timeout(NFT_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| nft_error(op, format!("nft did not finish in {NFT_TIMEOUT:?}")))?
        .map_err(|e| nft_error(op, format!("waiting for nft: {e}")))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = stderr.lines().next().unwrap_or("").trim();
    Err(nft_error(op, format!("{} ({})", first, out.status)))
}
