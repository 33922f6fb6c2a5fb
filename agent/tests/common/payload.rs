//! Payload helpers for the agent's end-to-end tests: upload through the real registry's API,
//! read the node's attestations, corrupt a blob on the registry's disk, hash files.

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::Registry;

pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Random-looking bytes (fast, reproducible per seed).
pub fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

impl Registry {
    /// `PUT /v1/payloads/{name}/{version}`; returns the sha256 the registry pinned.
    pub async fn upload(&self, name: &str, version: &str, body: Vec<u8>) -> String {
        let resp = self
            .http
            .put(self.url(&format!("/v1/payloads/{name}/{version}")))
            .bearer_auth(&self.admin)
            .body(body)
            .send()
            .await
            .unwrap();
        let st = resp.status();
        let v: Value = resp.json().await.unwrap();
        assert!(st.is_success(), "upload refused: {st} {v}");
        v["sha256"].as_str().unwrap().to_string()
    }

    /// Where the registry keeps a blob on disk.
    pub fn blob_file(&self, sha256: &str) -> std::path::PathBuf {
        self.dir.path().join("data/blobs").join(sha256)
    }

    /// The node's last reported payload attestations.
    pub async fn attestations(&self, id: &str) -> Vec<Value> {
        self.node(id).await["status"]["payloads"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

/// Flips one byte of a file in place (keeps its size).
pub fn flip_byte(path: &std::path::Path, at: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    b[0] ^= 0xff;
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&b).unwrap();
    f.sync_all().unwrap();
}
