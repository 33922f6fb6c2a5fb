//! VM disks: a qcow2 overlay on the base image (`qemu-img create -f qcow2 -F <fmt> -b <base>`),
//! so the base is only ever read, grown to the requested size. The base's format and virtual
//! size come from `qemu-img info --output=json`. A base that is missing or unreadable is a
//! clear per-VM error.

use std::path::Path;

use serde_json::Value;
use tokio::process::Command;

use super::VmError;

/// Format and virtual size of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub format: String,
    pub virtual_size: u64,
}

async fn qemu_img(args: &[&std::ffi::OsStr]) -> Result<Vec<u8>, String> {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .await
        .map_err(|e| format!("cannot run qemu-img ({e}); install qemu-utils"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(out.stdout)
}

/// Probes the base image: it must exist, be a readable regular file, and be an image
/// `qemu-img` understands.
pub async fn probe(base: &Path) -> Result<ImageInfo, VmError> {
    let bad = |reason: String| VmError::BaseImage {
        path: base.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(base).map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    std::fs::File::open(base).map_err(|e| bad(format!("not readable: {e}")))?;
    let out = qemu_img(&[
        "info".as_ref(),
        "--output=json".as_ref(),
        "-U".as_ref(),
        base.as_os_str(),
    ])
    .await
    .map_err(bad)?;
    let v: Value = serde_json::from_slice(&out).map_err(|e| bad(e.to_string()))?;
    Ok(ImageInfo {
        format: v["format"].as_str().unwrap_or("raw").to_string(),
        virtual_size: v["virtual-size"].as_u64().unwrap_or(0),
    })
}

/// Creates `overlay` on `base` with a virtual size of `size` bytes (the base's when `None`).
/// A size below the base's is refused: it would cut the base's file system short.
pub async fn create_overlay(base: &Path, overlay: &Path, size: Option<u64>) -> Result<(), VmError> {
    let info = probe(base).await?;
    let size = size.unwrap_or(info.virtual_size);
    if size < info.virtual_size {
        return Err(VmError::Disk {
            reason: format!(
                "disk size {size} bytes is below the base image's virtual size {} bytes",
                info.virtual_size
            ),
        });
    }
    let size_s = size.to_string();
    qemu_img(&[
        "create".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-F".as_ref(),
        info.format.as_ref(),
        "-b".as_ref(),
        base.as_os_str(),
        overlay.as_os_str(),
        size_s.as_ref(),
    ])
    .await
    .map_err(|reason| VmError::Disk {
        reason: format!("qemu-img create {}: {reason}", overlay.display()),
    })?;
    Ok(())
}
