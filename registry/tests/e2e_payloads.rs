//! Payloads against the real registry binary: streamed upload, download with Range resume,
//! dedup, immutability, spec pinning, deletion refused while referenced, node blob scoping, and
//! the registry's memory staying flat while a 512 MiB upload streams through.
#![allow(clippy::unwrap_used)]

mod common;

use common::Registry;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Deterministic pseudo-random bytes.
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
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

async fn upload(
    r: &Registry,
    name: &str,
    version: &str,
    body: Vec<u8>,
    sha_hdr: Option<&str>,
) -> (u16, Value) {
    let mut rb = r
        .client
        .put(r.url(&format!("/v1/payloads/{name}/{version}")))
        .bearer_auth(&r.admin)
        .header("content-type", "application/octet-stream")
        .body(body);
    if let Some(s) = sha_hdr {
        rb = rb.header("x-steward-sha256", s);
    }
    let resp = rb.send().await.unwrap();
    let st = resp.status().as_u16();
    (st, resp.json().await.unwrap_or(Value::Null))
}

fn blob_files(r: &Registry) -> Vec<String> {
    let dir = r.dir.path().join("data/blobs");
    let Ok(rd) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut v: Vec<String> = rd
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    v
}

fn problem_fields(err: &Value) -> Vec<String> {
    err["problems"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| p["field"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn upload_download_resume_dedup_and_immutability() {
    let r = Registry::start(&[]).await;
    let data = content(5 * 1024 * 1024 + 17, 1);
    let digest = sha(&data);

    // A wrong x-steward-sha256 stores nothing.
    let (st, err) = upload(&r, "tc", "1.0", data.clone(), Some(&"0".repeat(64))).await;
    assert_eq!(st, 400, "{err}");
    assert!(err["error"].as_str().unwrap().contains(&digest), "{err}");
    assert!(blob_files(&r).is_empty());
    let (_, list) = r.get("/v1/payloads", &r.admin).await;
    assert_eq!(list, json!([]));

    let (st, pv) = upload(&r, "tc", "1.0", data.clone(), Some(&digest)).await;
    assert_eq!(st, 201, "{pv}");
    assert_eq!(pv["sha256"], digest.as_str());
    assert_eq!(pv["size"], data.len() as u64);
    // Same version, same content: 200, nothing new. Other content: 409.
    let (st, again) = upload(&r, "tc", "1.0", data.clone(), None).await;
    assert_eq!(st, 200, "{again}");
    assert_eq!(again["created_at"], pv["created_at"]);
    let (st, err) = upload(&r, "tc", "1.0", b"other".to_vec(), None).await;
    assert_eq!(st, 409, "{err}");
    assert!(
        err["error"].as_str().unwrap().contains("immutable"),
        "{err}"
    );

    // Dedup: another version with the same content shares the blob file.
    let (st, _) = upload(&r, "tc", "1.1", data.clone(), None).await;
    assert_eq!(st, 201);
    let (st, _) = upload(&r, "tc", "2.0", b"version two".to_vec(), None).await;
    assert_eq!(st, 201);
    let mut want = vec![digest.clone(), sha(b"version two")];
    want.sort();
    assert_eq!(blob_files(&r), want);
    let (_, versions) = r.get("/v1/payloads/tc", &r.admin).await;
    let names: Vec<&str> = versions
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["1.0", "1.1", "2.0"]);
    let (_, list) = r.get("/v1/payloads", &r.admin).await;
    assert_eq!(list[0]["name"], "tc");
    let (st, one) = r.get("/v1/payloads/tc/1.1", &r.admin).await;
    assert_eq!((st, one["sha256"].as_str()), (200, Some(digest.as_str())));
    assert_eq!(r.get("/v1/payloads/tc/9", &r.admin).await.0, 404);

    // Whole download.
    let url = r.url(&format!("/v1/blobs/{digest}"));
    let resp = r
        .client
        .get(&url)
        .bearer_auth(&r.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers().clone();
    assert_eq!(h["etag"], format!("\"{digest}\"").as_str());
    assert_eq!(h["accept-ranges"], "bytes");
    assert_eq!(h["content-length"], data.len().to_string().as_str());
    let got = resp.bytes().await.unwrap();
    assert_eq!(sha(&got), digest);

    // Resume: the first part, then `bytes=N-` for the rest.
    let cut = 1_234_567;
    let resp = r
        .client
        .get(&url)
        .bearer_auth(&r.admin)
        .header("range", format!("bytes=0-{}", cut - 1))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    let mut joined = resp.bytes().await.unwrap().to_vec();
    assert_eq!(joined.len(), cut);
    let resp = r
        .client
        .get(&url)
        .bearer_auth(&r.admin)
        .header("range", format!("bytes={cut}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        resp.headers()["content-range"],
        format!("bytes {cut}-{}/{}", data.len() - 1, data.len()).as_str()
    );
    joined.extend_from_slice(&resp.bytes().await.unwrap());
    assert_eq!(joined, data);
    // A range past the end.
    let resp = r
        .client
        .get(&url)
        .bearer_auth(&r.admin)
        .header("range", format!("bytes={}-", data.len() + 10))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    // Unknown and malformed hashes.
    assert_eq!(
        r.get(&format!("/v1/blobs/{}", "a".repeat(64)), &r.admin)
            .await
            .0,
        404
    );
    assert_eq!(r.get("/v1/blobs/..%2Fdb", &r.admin).await.0, 400);

    // Bad names and versions name the field.
    let (st, err) = upload(&r, "tc", "1 0", b"x".to_vec(), None).await;
    assert_eq!(st, 400, "{err}");
    assert_eq!(problem_fields(&err), ["version"]);
    let (_, events) = r.get("/v1/events", &r.admin).await;
    assert!(events
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "payload-uploaded"));
}

#[tokio::test]
async fn specs_pin_versions_and_referenced_versions_cannot_be_deleted() {
    let r = Registry::start(&[]).await;
    let (a, a_secret) = r.enroll("m-a", json!({"role": "builder"})).await;
    let (b, b_secret) = r.enroll("m-b", json!({})).await;
    let data = content(300_000, 2);
    let digest = sha(&data);
    assert_eq!(upload(&r, "tc", "1", data.clone(), None).await.0, 201);

    // A missing version: 422 naming the field, the stored spec unchanged.
    let spec_url = format!("/v1/nodes/{a}/spec");
    let (_, before) = r.get(&spec_url, &r.admin).await;
    let (st, err) = r
        .put_yaml(
            &spec_url,
            &r.admin,
            "payloads: [{name: tc, version: '9', path: /opt/tc}]",
        )
        .await;
    assert_eq!(st, 422, "{err}");
    assert_eq!(problem_fields(&err), ["payloads[0].version"]);
    let other = "b".repeat(64);
    let (st, err) = r
        .put_yaml(
            &spec_url,
            &r.admin,
            &format!("payloads: [{{name: tc, version: '1', path: /opt/tc, sha256: {other}}}]"),
        )
        .await;
    assert_eq!(st, 422, "{err}");
    assert_eq!(problem_fields(&err), ["payloads[0].sha256"]);
    assert_eq!(r.get(&spec_url, &r.admin).await.1, before);
    let frag = json!({"selector": "role=builder", "spec": {"payloads": [{"name": "tc", "version": "7", "path": "/opt/tc"}]}});
    let (st, err) = r
        .req(
            Method::PUT,
            "/v1/fragments/tools",
            Some(&r.admin),
            Some(frag),
        )
        .await;
    assert_eq!(st, 422, "{err}");
    assert_eq!(problem_fields(&err), ["spec.payloads[0].version"]);
    assert_eq!(r.get("/v1/fragments/tools", &r.admin).await.0, 404);

    // Written: sha256 and size pinned.
    let (st, w) = r
        .put_yaml(
            &spec_url,
            &r.admin,
            "payloads: [{name: tc, version: '1', path: /opt/tc}]",
        )
        .await;
    assert_eq!(st, 200, "{w}");
    let (_, doc) = r.get(&spec_url, &a_secret).await;
    assert_eq!(doc["spec"]["payloads"][0]["sha256"], digest.as_str());
    assert_eq!(doc["spec"]["payloads"][0]["size"], data.len() as u64);

    // Blob scoping: node a reads its blob, node b may not.
    let blob = format!("/v1/blobs/{digest}");
    let resp = r
        .client
        .get(r.url(&blob))
        .bearer_auth(&a_secret)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap().to_vec(), data);
    assert_eq!(r.get(&blob, &b_secret).await.0, 403);
    let _ = b;

    // A fragment referencing it too; deletion refused naming both.
    let frag = json!({"selector": "role=builder", "spec": {"payloads": [{"name": "tc", "version": "1", "path": "/opt/tc2"}]}});
    let (st, err) = r
        .req(
            Method::PUT,
            "/v1/fragments/tools",
            Some(&r.admin),
            Some(frag),
        )
        .await;
    assert_eq!(st, 409, "payload name defined twice must conflict: {err}");
    let frag = json!({"selector": "env=none", "spec": {"payloads": [{"name": "tc", "version": "1", "path": "/opt/tc2"}]}});
    let (st, err) = r
        .req(
            Method::PUT,
            "/v1/fragments/tools",
            Some(&r.admin),
            Some(frag),
        )
        .await;
    assert_eq!(st, 200, "{err}");
    let (st, err) = r
        .req(Method::DELETE, "/v1/payloads/tc/1", Some(&r.admin), None)
        .await;
    assert_eq!(st, 409, "{err}");
    let msg = err["error"].as_str().unwrap();
    assert!(
        msg.contains(&format!("node {a}")) && msg.contains("fragment tools"),
        "{msg}"
    );
    assert_eq!(blob_files(&r), vec![digest.clone()]);

    // Unreferenced: deleted, and the blob collected.
    assert_eq!(r.put_yaml(&spec_url, &r.admin, "{}").await.0, 200);
    assert_eq!(
        r.req(Method::DELETE, "/v1/fragments/tools", Some(&r.admin), None)
            .await
            .0,
        200
    );
    let (st, err) = r
        .req(Method::DELETE, "/v1/payloads/tc/1", Some(&r.admin), None)
        .await;
    assert_eq!(st, 200, "{err}");
    assert!(blob_files(&r).is_empty());
    assert_eq!(r.get("/v1/payloads/tc/1", &r.admin).await.0, 404);
    assert_eq!(r.get(&blob, &r.admin).await.0, 404);
}

fn vm_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap()
}

/// 512 MiB go through the registry without its peak resident memory growing anywhere near
/// that (a memory assertion, not a timing one).
#[tokio::test]
async fn a_512_mib_upload_is_streamed_not_buffered() {
    const MIB: usize = 1024 * 1024;
    const TOTAL_MIB: usize = 512;
    let r = Registry::start(&[]).await;
    let pid = r.child.as_ref().unwrap().id();
    let chunk = |i: usize| -> Vec<u8> { content(MIB, i as u64) };
    let mut h = Sha256::new();
    for i in 0..TOTAL_MIB {
        h.update(chunk(i));
    }
    let digest = hex::encode(h.finalize());
    let stream =
        futures_util::stream::iter((0..TOTAL_MIB).map(move |i| Ok::<_, std::io::Error>(chunk(i))));
    let resp = r
        .client
        .put(r.url("/v1/payloads/big/1"))
        .bearer_auth(&r.admin)
        .header("x-steward-sha256", &digest)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let pv: Value = resp.json().await.unwrap();
    assert_eq!(pv["size"], (TOTAL_MIB * MIB) as u64);
    let peak_mib = vm_kib(pid, "VmHWM:") / 1024;
    eprintln!("registry peak RSS after a {TOTAL_MIB} MiB upload: {peak_mib} MiB");
    assert!(
        peak_mib < 128,
        "registry peak RSS {peak_mib} MiB after a {TOTAL_MIB} MiB upload: the body was buffered"
    );
    let on_disk = std::fs::metadata(r.dir.path().join("data/blobs").join(&digest)).unwrap();
    assert_eq!(on_disk.len(), (TOTAL_MIB * MIB) as u64);
}

/// A status whose payload attestation differs from the pinned hash (or whose file is missing)
/// marks the node drifted in the node API, and `?drifted=true` finds it.
#[tokio::test]
async fn attestation_mismatch_marks_the_node_drifted() {
    let r = Registry::start(&[]).await;
    let (a, a_secret) = r.enroll("m-a", json!({})).await;
    let (b, _) = r.enroll("m-b", json!({})).await;
    let expected = "e".repeat(64);
    let status = |actual: Option<String>| {
        json!({"observed_generation": 1, "digest": format!("d-{actual:?}"),
               "resources": [{"kind": "payload", "name": "tc", "state": "converged"}],
               "payloads": [{"name": "tc", "version": "1", "path": "/opt/tc",
                             "expected": expected, "actual": actual}]})
    };
    let status_url = format!("/v1/nodes/{a}/status");
    let put = |body: Value| r.req(Method::PUT, &status_url, Some(&a_secret), Some(body));
    assert!(put(status(Some(expected.clone()))).await.0 < 300);
    let (_, n) = r.get(&format!("/v1/nodes/{a}"), &r.admin).await;
    assert_eq!(n["drifted"], false, "{n}");

    assert!(put(status(Some("f".repeat(64)))).await.0 < 300);
    let (_, n) = r.get(&format!("/v1/nodes/{a}"), &r.admin).await;
    assert_eq!(n["drifted"], true, "{n}");
    assert_eq!(n["drift"][0]["path"], "/opt/tc");
    assert_eq!(n["drift"][0]["actual"], "f".repeat(64));
    let (_, list) = r.get("/v1/nodes?drifted=true", &r.admin).await;
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [a.as_str()]);
    let (_, list) = r.get("/v1/nodes?drifted=false", &r.admin).await;
    assert_eq!(list[0]["id"], b.as_str());

    assert!(put(status(None)).await.0 < 300);
    let (_, n) = r.get(&format!("/v1/nodes/{a}"), &r.admin).await;
    assert_eq!(n["drifted"], true);
    assert!(
        n["drift"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("file missing"),
        "{n}"
    );
    assert!(n["drift"][0].get("actual").is_none(), "{n}");
    // The status change is in the event log, with the drift named.
    let (_, events) = r.get(&format!("/v1/events?node={a}"), &r.admin).await;
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "status-changed"
                && e["message"]
                    .as_str()
                    .unwrap()
                    .contains("DRIFTED: tc /opt/tc: file missing")),
        "{events}"
    );
}
