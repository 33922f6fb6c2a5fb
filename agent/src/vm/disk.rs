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
    let mut f = std::fs::File::open(base).map_err(|e| bad(format!("not readable: {e}")))?;
    // qcow2 and raw, the common bases, are recognised from their first bytes (no process);
    // anything else is asked of `qemu-img info`.
    if let Some(info) = sniff(&mut f, meta.len()) {
        return Ok(info);
    }
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

/// qcow2 (magic `QFI\xfb`, virtual size at offset 24) or raw (no known magic in the first
/// sector: any other format QEMU knows starts with its own); `None` when unsure.
fn sniff(f: &mut std::fs::File, len: u64) -> Option<ImageInfo> {
    use std::io::Read;
    let mut head = [0u8; 512];
    let n = f.read(&mut head).ok()?;
    let version = head
        .get(4..8)
        .map(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
    if n >= 32 && head[..4] == *b"QFI\xfb" && matches!(version, Some(2 | 3)) {
        let size = u64::from_be_bytes(head[24..32].try_into().ok()?);
        return Some(ImageInfo {
            format: "qcow2".into(),
            virtual_size: size,
        });
    }
    // Magics of the other image formats QEMU probes (vmdk, vdi, vhdx, vpc, qed, qcow1,
    // dmg/luks/parallels...): leave those to qemu-img.
    const OTHERS: [&[u8]; 8] = [
        b"KDMV",
        b"# Disk DescriptorFile",
        b"<<< ",
        b"vhdxfile",
        b"conectix",
        b"QFI",
        b"LUKS",
        b"WithoutFreeSpace",
    ];
    if OTHERS
        .iter()
        .any(|m| head[..n].windows(m.len()).take(80).any(|w| w == *m))
    {
        return None;
    }
    (n == 512 || n as u64 == len).then(|| ImageInfo {
        format: "raw".into(),
        virtual_size: len,
    })
}

/// Creates `overlay` on `base` (probed as `info`) with a virtual size of `size` bytes (the
/// base's when `None`). A size below the base's is refused: it would cut the base's file system
/// short.
pub async fn create_overlay(
    base: &Path,
    info: &ImageInfo,
    overlay: &Path,
    size: Option<u64>,
) -> Result<(), VmError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn probes_qcow2_and_raw_like_qemu_img() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("b.qcow2");
        let st = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&q)
            .arg("48M")
            .status();
        if st.is_ok_and(|s| s.success()) {
            assert_eq!(
                probe(&q).await.unwrap(),
                ImageInfo {
                    format: "qcow2".into(),
                    virtual_size: 48 << 20
                }
            );
        }
        let r = dir.path().join("b.raw");
        std::fs::write(&r, vec![0u8; 4096]).unwrap();
        assert_eq!(
            probe(&r).await.unwrap(),
            ImageInfo {
                format: "raw".into(),
                virtual_size: 4096
            }
        );
        let e = probe(&dir.path().join("missing")).await.unwrap_err();
        assert!(e.to_string().contains("No such file"), "{e}");
    }
}
