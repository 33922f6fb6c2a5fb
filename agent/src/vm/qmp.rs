//! A small typed QMP client (QEMU Machine Protocol) over the VM's unix socket: the greeting,
//! `qmp_capabilities`, then one command at a time, asynchronous events skipped. The agent's
//! only QMP speaker. Why not a crate: the one maintained QMP crate (`qapi`) generates bindings
//! for the whole schema (thousands of types, a heavy build) while the agent needs four
//! commands (`query-status`, `system_powerdown`, `quit`, `query-kvm`); this is ~100 lines of
//! tokio + serde_json, the crates the agent already has.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// Per-message time limit: QMP answers at once unless QEMU is wedged.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A QMP failure, as text for the VM's status.
#[derive(Debug, thiserror::Error)]
#[error("QMP {op}: {reason}")]
pub struct QmpError {
    pub op: String,
    pub reason: String,
}

fn qerr(op: &str, reason: impl ToString) -> QmpError {
    QmpError {
        op: op.to_string(),
        reason: reason.to_string(),
    }
}

/// An open QMP session (capabilities negotiated).
pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

/// The VM state QMP reports (`query-status`'s `status`): "running", "paused", "shutdown",
/// "internal-error", "guest-panicked", ...
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunState(pub String);

impl Qmp {
    /// Connects and negotiates capabilities.
    pub async fn connect(sock: &Path) -> Result<Qmp, QmpError> {
        let s = tokio::time::timeout(TIMEOUT, UnixStream::connect(sock))
            .await
            .map_err(|_| qerr("connect", format!("{} timed out", sock.display())))?
            .map_err(|e| qerr("connect", format!("{}: {e}", sock.display())))?;
        let (r, w) = s.into_split();
        let mut q = Qmp {
            reader: BufReader::new(r),
            writer: w,
        };
        let greeting = q.read_message("greeting").await?;
        if greeting.get("QMP").is_none() {
            return Err(qerr("greeting", format!("unexpected {greeting}")));
        }
        q.execute("qmp_capabilities", None).await?;
        Ok(q)
    }

    async fn read_message(&mut self, op: &str) -> Result<Value, QmpError> {
        let mut line = String::new();
        let n = tokio::time::timeout(TIMEOUT, self.reader.read_line(&mut line))
            .await
            .map_err(|_| qerr(op, "no answer within 5s"))?
            .map_err(|e| qerr(op, e))?;
        if n == 0 {
            return Err(qerr(op, "QEMU closed the socket"));
        }
        serde_json::from_str(&line).map_err(|e| qerr(op, format!("bad JSON {line:?}: {e}")))
    }

    /// Runs a command and returns its `return` value (events in between are skipped).
    pub async fn execute(&mut self, cmd: &str, args: Option<Value>) -> Result<Value, QmpError> {
        let mut msg = json!({ "execute": cmd });
        if let Some(a) = args {
            msg["arguments"] = a;
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(b'\n');
        tokio::time::timeout(TIMEOUT, self.writer.write_all(&bytes))
            .await
            .map_err(|_| qerr(cmd, "write timed out"))?
            .map_err(|e| qerr(cmd, e))?;
        loop {
            let v = self.read_message(cmd).await?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(qerr(
                    cmd,
                    e.get("desc").and_then(Value::as_str).unwrap_or("error"),
                ));
            }
            // An asynchronous event ({"event": ...}): not the answer.
        }
    }

    /// `query-status`.
    pub async fn status(&mut self) -> Result<RunState, QmpError> {
        let v = self.execute("query-status", None).await?;
        v.get("status")
            .and_then(Value::as_str)
            .map(|s| RunState(s.to_string()))
            .ok_or_else(|| qerr("query-status", format!("no status in {v}")))
    }

    /// `query-kvm`: whether this VM runs with KVM.
    pub async fn kvm_enabled(&mut self) -> Result<bool, QmpError> {
        let v = self.execute("query-kvm", None).await?;
        Ok(v.get("enabled").and_then(Value::as_bool).unwrap_or(false))
    }

    /// ACPI power button (`system_powerdown`).
    pub async fn powerdown(&mut self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).await.map(|_| ())
    }

    /// `system_reset`: a hard reset of the guest, as the reset button (QEMU stays).
    pub async fn system_reset(&mut self) -> Result<(), QmpError> {
        self.execute("system_reset", None).await.map(|_| ())
    }

    /// `quit`: QEMU exits at once (the guest gets no say).
    pub async fn quit(&mut self) -> Result<(), QmpError> {
        match self.execute("quit", None).await {
            Ok(_) => Ok(()),
            // QEMU may close the socket before its answer arrives.
            Err(e) if e.reason.contains("closed") => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// One `query-status` on a fresh connection (a QMP socket serves one client at a time, so the
/// agent never keeps it open).
pub async fn query_status(sock: &Path) -> Result<RunState, QmpError> {
    Qmp::connect(sock).await?.status().await
}
