//! The cloud-init NoCloud seed: a small FAT image labelled `CIDATA` (cloud-init matches the
//! label case-insensitively) holding `user-data`, `meta-data` and, when the spec gives one,
//! `network-config` (the spec's, else one made from the VM's lab leases), built in Rust with the `fatfs` crate and attached read-only as a disk.
//! `meta-data` defaults to `instance-id` + `local-hostname` (the VM's name) when the spec has
//! none, since cloud-init needs an instance id; `user-data` defaults to empty.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use steward_proto::CloudInit;

use super::VmError;

/// The files a seed holds, in order: `network-config` is the spec's, else `generated` (from
/// the VM's lab leases, `netconf.rs`).
pub fn files(
    vm: &str,
    ci: Option<&CloudInit>,
    generated: Option<String>,
) -> Vec<(&'static str, String)> {
    let ci = ci.cloned().unwrap_or_default();
    let mut out = vec![
        ("user-data", ci.user_data.unwrap_or_default()),
        (
            "meta-data",
            ci.meta_data
                .unwrap_or_else(|| format!("instance-id: {vm}\nlocal-hostname: {vm}\n")),
        ),
    ];
    if let Some(n) = ci.network_config.or(generated) {
        out.push(("network-config", n));
    }
    out
}

/// Writes the seed image to `path` (replacing it atomically).
pub fn build(path: &Path, files: &[(&str, String)]) -> Result<(), VmError> {
    let err = |e: std::io::Error| VmError::Seed {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let content: u64 = files.iter().map(|(_, c)| c.len() as u64).sum();
    // FAT12 with room for the files: 512 KiB plus twice the content, rounded to 64 KiB.
    let size = ((512 << 10) + 2 * content).div_ceil(65536) * 65536;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(err)?;
    f.set_len(size).map_err(err)?;
    fatfs::format_volume(
        &mut f,
        fatfs::FormatVolumeOptions::new().volume_label(*b"CIDATA     "),
    )
    .map_err(err)?;
    f.seek(SeekFrom::Start(0)).map_err(err)?;
    {
        let fs = fatfs::FileSystem::new(&mut f, fatfs::FsOptions::new()).map_err(err)?;
        {
            let root = fs.root_dir();
            for (name, text) in files {
                let mut file = root.create_file(name).map_err(err)?;
                file.truncate().map_err(err)?;
                file.write_all(text.as_bytes()).map_err(err)?;
                file.flush().map_err(err)?;
            }
        }
        fs.unmount().map_err(err)?;
    }
    // No fsync: the seed is rebuilt from the spec before every start, and QEMU reads it
    // through the same page cache.
    std::fs::rename(&tmp, path).map_err(err)
}

/// Reads a seed back: (volume label, files by name). For tests and `steward-agent` checks.
pub fn read(path: &Path) -> Result<(String, Vec<(String, String)>), VmError> {
    use std::io::Read;
    let err = |e: std::io::Error| VmError::Seed {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let f = std::fs::File::open(path).map_err(err)?;
    let fs = fatfs::FileSystem::new(f, fatfs::FsOptions::new()).map_err(err)?;
    let label = fs.volume_label();
    let mut out = Vec::new();
    for e in fs.root_dir().iter() {
        let e = e.map_err(err)?;
        if e.is_file() {
            let mut s = String::new();
            e.to_file().read_to_string(&mut s).map_err(err)?;
            out.push((e.file_name(), s));
        }
    }
    Ok((label, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_round_trips_with_label_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("seed.img");
        let ci = CloudInit {
            user_data: Some("#cloud-config\nhostname: a\n".into()),
            meta_data: None,
            network_config: Some("version: 2\n".into()),
        };
        build(&p, &files("vm1", Some(&ci), Some("ignored".into()))).unwrap();
        let (label, got) = read(&p).unwrap();
        assert_eq!(label.trim(), "CIDATA");
        assert_eq!(
            got,
            vec![
                (
                    "user-data".to_string(),
                    "#cloud-config\nhostname: a\n".to_string()
                ),
                (
                    "meta-data".to_string(),
                    "instance-id: vm1\nlocal-hostname: vm1\n".to_string()
                ),
                ("network-config".to_string(), "version: 2\n".to_string()),
            ]
        );
        // Rebuilt smaller: the old content is gone.
        build(&p, &files("vm1", None, None)).unwrap();
        let (_, got) = read(&p).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], ("user-data".to_string(), String::new()));
    }
}
