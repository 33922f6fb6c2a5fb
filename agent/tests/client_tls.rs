//! The agent's registry client against the real `steward-registry` binary over HTTPS with a
//! self-signed certificate: CA-file mode, pin mode, a wrong pin, an untrusted certificate, an
//! unreachable registry and refused credentials; with several URLs, the pin holds for each.
//!
//! Needs the registry binary next to this test's executable (`target/debug/steward-registry`):
//! run `cargo build -p steward-registry` first. `cargo test --workspace` builds every binary of
//! the workspace before running tests, so CI needs nothing extra. `STEWARD_REGISTRY_BIN`
//! overrides the path.
#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use steward_agent::client::{cert_sha256_pem, ClientError, RegistryClient, TlsOptions};
use steward_proto::{Heartbeat, NodeFacts, NodeStatus};

fn registry_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("STEWARD_REGISTRY_BIN") {
        return PathBuf::from(p);
    }
    // target/debug/deps/client_tls-HASH -> target/debug/steward-registry
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("steward-registry"))
        .unwrap();
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build -p steward-registry` before this test (cargo test \
         --workspace does it), or set STEWARD_REGISTRY_BIN",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A registry process serving HTTPS with a fresh self-signed certificate.
struct Registry {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    cert_pem: String,
    admin: String,
    /// Base URL for admin calls (the certificate's first name, resolved to 127.0.0.1).
    admin_url: String,
    /// Trusts `cert_pem`; for admin calls.
    http: reqwest::Client,
}

impl Registry {
    /// `names`: the certificate's subject alternative names.
    async fn start(names: &[&str]) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(
            names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(registry_bin())
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        // Admin calls connect to 127.0.0.1 whatever the names, so resolve the first name there.
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(ck.cert.pem().as_bytes()).unwrap())
            .resolve(names[0], ([127, 0, 0, 1], port).into())
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let mut r = Registry {
            child,
            dir,
            port,
            cert_pem: ck.cert.pem(),
            admin: String::new(),
            admin_url: String::new(),
            http,
        };
        r.wait_ready(names[0]).await;
        r
    }

    async fn wait_ready(&mut self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("https://{name}:{}/healthz", self.port);
        loop {
            if let Ok(resp) = self.http.get(&url).send().await {
                if resp.status().is_success() {
                    break;
                }
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("registry exited with {st}; log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "registry did not answer in 30 s; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.admin = std::fs::read_to_string(self.dir.path().join("data/admin.token"))
            .unwrap()
            .trim()
            .to_string();
        self.admin_url = format!("https://{name}:{}", self.port);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn ca_file(&self) -> PathBuf {
        let p = self.dir.path().join("ca.pem");
        std::fs::write(&p, &self.cert_pem).unwrap();
        p
    }

    /// `POST /v1/enrollment-tokens` with the admin token; the token.
    async fn token(&self, uses: u32) -> String {
        let resp = self
            .http
            .post(format!("{}/v1/enrollment-tokens", self.admin_url))
            .bearer_auth(&self.admin)
            .json(&json!({"uses": uses}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let v: Value = resp.json().await.unwrap();
        v["token"].as_str().unwrap().to_string()
    }

    async fn put_spec(&self, id: &str, yaml: &str) -> u64 {
        let resp = self
            .http
            .put(format!("{}/v1/nodes/{id}/spec", self.admin_url))
            .bearer_auth(&self.admin)
            .header("content-type", "application/yaml")
            .body(yaml.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().await.unwrap();
        v["generation"].as_u64().unwrap()
    }

    /// Enrols `machine_id` through `client`; the client with its credentials and the secret.
    async fn enroll(&self, client: RegistryClient, machine_id: &str) -> (RegistryClient, String) {
        let token = self.token(1).await;
        let en = client.enroll(&token, &facts(machine_id)).await.unwrap();
        assert!(!en.rotated);
        assert!(en.heartbeat_interval_secs > 0);
        let secret = en.node_secret.clone();
        (client.with_credentials(en.node_id, en.node_secret), secret)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn facts(machine_id: &str) -> NodeFacts {
    NodeFacts {
        machine_id: machine_id.to_string(),
        hostname: format!("host-{machine_id}"),
        cpus: 2,
        agent_version: "test".into(),
        ..NodeFacts::default()
    }
}

fn assert_no_secret(what: &str, text: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(!text.contains(s), "{what} contains a secret: {text}");
    }
}

#[tokio::test]
async fn ca_file_mode_enrols_heartbeats_and_long_polls() {
    let r = Registry::start(&["127.0.0.1", "localhost"]).await;
    let tls = TlsOptions {
        ca_file: Some(r.ca_file()),
        pin_sha256: None,
    };
    let client = RegistryClient::new(&r.url(), &tls).unwrap();
    assert_eq!(client.node_id(), None);
    let (client, secret) = r.enroll(client, "m-ca").await;
    let id = client.node_id().unwrap().to_string();
    assert_no_secret("Debug of the client", &format!("{client:?}"), &[&secret]);

    let hb = client
        .heartbeat(&Heartbeat {
            observed_generation: 0,
            status_digest: "d0".into(),
            stats: None,
            rtt_ms: Some(1.0),
            progress: None,
        })
        .await
        .unwrap();
    assert_eq!(hb.generation, 0);
    assert!(hb.status_wanted);
    client
        .put_status(&NodeStatus {
            digest: "d0".into(),
            ..NodeStatus::default()
        })
        .await
        .unwrap();
    let hb = client
        .heartbeat(&Heartbeat {
            status_digest: "d0".into(),
            ..Heartbeat::default()
        })
        .await
        .unwrap();
    assert!(!hb.status_wanted);

    // Nothing newer than generation 0: 304 after the wait.
    let t = Instant::now();
    let none = client
        .wait_spec(0, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(none.is_none());
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );

    // A waiting long-poll wakes up when a spec is written.
    let waiter = {
        let client = client.clone();
        tokio::spawn(async move { client.wait_spec(0, Duration::from_secs(20)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let generation = r
        .put_spec(&id, "containers: [{name: web, image: nginx:1.27}]")
        .await;
    assert_eq!(generation, 1);
    let doc = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the long-poll did not wake up")
        .unwrap()
        .unwrap()
        .expect("a document after the write");
    assert_eq!(doc.generation, 1);
    assert_eq!(doc.node_id, id);
    assert_eq!(doc.spec.containers.len(), 1);
    // Already newer than `after`: answers at once.
    let doc = client
        .wait_spec(0, Duration::from_secs(20))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(doc.generation, 1);
}

#[tokio::test]
async fn pin_mode_accepts_the_pinned_certificate_whatever_its_names() {
    // The certificate names neither 127.0.0.1 nor localhost: only the pin makes it acceptable.
    let r = Registry::start(&["registry.invalid"]).await;
    let pin = cert_sha256_pem(&r.cert_pem).unwrap();
    assert_eq!(pin.len(), 64);
    // Upper case with colons is the same pin.
    let colons = pin
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap().to_string())
        .collect::<Vec<_>>()
        .join(":");
    for (i, p) in [pin.clone(), colons].into_iter().enumerate() {
        let tls = TlsOptions {
            ca_file: None,
            pin_sha256: Some(p),
        };
        let client = RegistryClient::new(&r.url(), &tls).unwrap();
        let token = r.token(1).await;
        // One machine per pin form: a second plain enrolment of one machine is refused.
        let en = client
            .enroll(&token, &facts(&format!("m-pin-{i}")))
            .await
            .unwrap();
        let client = client.with_credentials(en.node_id, en.node_secret);
        client.heartbeat(&Heartbeat::default()).await.unwrap();
        assert!(client
            .wait_spec(0, Duration::from_millis(100))
            .await
            .unwrap()
            .is_none());
    }
    // The same certificate as a CA does not do: it does not name 127.0.0.1.
    let client = RegistryClient::new(
        &r.url(),
        &TlsOptions {
            ca_file: Some(r.ca_file()),
            pin_sha256: None,
        },
    )
    .unwrap();
    let e = client
        .enroll(&r.token(1).await, &facts("m-name"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClientError::UntrustedCertificate { .. }),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_wrong_pin_or_an_untrusted_certificate_is_refused() {
    let r = Registry::start(&["127.0.0.1", "localhost"]).await;
    let right = cert_sha256_pem(&r.cert_pem).unwrap();
    let wrong = "00".repeat(32);
    let client = RegistryClient::new(
        &r.url(),
        &TlsOptions {
            ca_file: None,
            pin_sha256: Some(wrong.clone()),
        },
    )
    .unwrap();
    let token = r.token(1).await;
    let e = client.enroll(&token, &facts("m-wrong")).await.unwrap_err();
    match &e {
        ClientError::PinMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, &wrong);
            assert_eq!(actual, &right);
        }
        other => panic!("expected PinMismatch, got {other:?}"),
    }
    let msg = e.to_string();
    assert!(msg.contains("certificate did not match the pin"), "{msg}");
    assert_no_secret("a pin error", &format!("{msg} {e:?}"), &[&token]);

    // Neither a CA nor a pin: the self-signed certificate is not trusted.
    let client = RegistryClient::new(&r.url(), &TlsOptions::default()).unwrap();
    let e = client
        .enroll(&token, &facts("m-untrusted"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClientError::UntrustedCertificate { .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("ca_file"), "{e}");
    assert_no_secret(
        "an untrusted-certificate error",
        &format!("{e} {e:?}"),
        &[&token],
    );

    // The token was never sent: it still works.
    let client = RegistryClient::new(
        &r.url(),
        &TlsOptions {
            ca_file: None,
            pin_sha256: Some(right),
        },
    )
    .unwrap();
    client.enroll(&token, &facts("m-after")).await.unwrap();
}

#[tokio::test]
async fn an_unreachable_registry_is_reported_as_such() {
    let port = free_port(); // nothing listens there
    for scheme in ["http", "https"] {
        let client = RegistryClient::new(
            &format!("{scheme}://127.0.0.1:{port}"),
            &TlsOptions::default(),
        )
        .unwrap()
        .with_credentials("n1".into(), "n1.unreachable-secret".into());
        let e = client.heartbeat(&Heartbeat::default()).await.unwrap_err();
        assert!(matches!(e, ClientError::Unreachable { .. }), "{e:?}");
        assert!(e.is_transient());
        assert!(e.to_string().contains("cannot reach the registry"), "{e}");
        assert_no_secret(
            "an unreachable error",
            &format!("{e} {e:?}"),
            &["unreachable-secret"],
        );
        let e = client
            .enroll("tok.enrollment-secret", &facts("m"))
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Unreachable { .. }), "{e:?}");
        assert_no_secret(
            "an unreachable error",
            &format!("{e} {e:?}"),
            &["enrollment-secret"],
        );
    }
}

#[tokio::test]
async fn wrong_credentials_are_unauthorised_and_never_printed() {
    let r = Registry::start(&["127.0.0.1"]).await;
    let tls = TlsOptions {
        ca_file: Some(r.ca_file()),
        pin_sha256: None,
    };
    let (good, secret) = r
        .enroll(RegistryClient::new(&r.url(), &tls).unwrap(), "m-auth")
        .await;
    let id = good.node_id().unwrap().to_string();
    let wrong_secret = format!("{id}.{}", "f".repeat(64));
    let bad = RegistryClient::new(&r.url(), &tls)
        .unwrap()
        .with_credentials(id.clone(), wrong_secret.clone());
    for e in [
        bad.heartbeat(&Heartbeat::default()).await.unwrap_err(),
        bad.put_status(&NodeStatus::default()).await.unwrap_err(),
        bad.wait_spec(0, Duration::ZERO).await.unwrap_err(),
    ] {
        assert!(matches!(e, ClientError::Unauthorized { .. }), "{e:?}");
        assert!(e.requires_reenrolment());
        assert!(e.to_string().contains("enrol again"), "{e}");
        assert_no_secret(
            "an unauthorised error",
            &format!("{e} {e:?}"),
            &[&wrong_secret, &secret],
        );
    }
    assert_no_secret("Debug of the client", &format!("{bad:?}"), &[&wrong_secret]);

    // A used-up enrollment token is refused, and not echoed.
    let token = r.token(1).await;
    good.enroll(&token, &facts("m-auth-2")).await.unwrap();
    let e = good.enroll(&token, &facts("m-auth-3")).await.unwrap_err();
    assert!(matches!(e, ClientError::EnrollmentRefused { .. }), "{e:?}");
    assert_no_secret("an enrollment error", &format!("{e} {e:?}"), &[&token]);

    // The same machine with a plain token is refused (409, naming the node), spending nothing;
    // proving to be the node with its current secret re-enrols it with the same one-use
    // token and rotates the secret: the old one stops working.
    let token = r.token(1).await;
    let e = RegistryClient::new(&r.url(), &tls)
        .unwrap()
        .enroll(&token, &facts("m-auth"))
        .await
        .unwrap_err();
    match &e {
        ClientError::Refused { status: 409, error } => {
            assert!(error.error.contains(&id), "{e}");
            assert!(error.error.contains("reenroll"), "{e}");
        }
        other => panic!("expected a 409 refusal, got {other:?}"),
    }
    assert_no_secret(
        "a refused re-enrolment",
        &format!("{e} {e:?}"),
        &[&token, &secret],
    );
    let en = good.reenroll(&token, &facts("m-auth")).await.unwrap();
    assert!(en.rotated);
    assert_eq!(en.node_id, id);
    let e = good.heartbeat(&Heartbeat::default()).await.unwrap_err();
    assert!(matches!(e, ClientError::Unauthorized { .. }), "{e:?}");
    let fresh = good.with_credentials(en.node_id, en.node_secret);
    fresh.heartbeat(&Heartbeat::default()).await.unwrap();

    // A refusal with problems carries the registry's ApiError.
    let e = fresh
        .wait_spec(0, Duration::from_secs(100_000))
        .await
        .unwrap_err();
    match &e {
        ClientError::Refused { status, error } => {
            assert_eq!(*status, 400);
            assert_eq!(error.code, "invalid");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    assert!(e.to_string().contains("wait"), "{e}");
}

#[tokio::test]
async fn the_pin_holds_for_every_url_of_a_list() {
    // Two registries, each with its own certificate; the pin is B's.
    let a = Registry::start(&["127.0.0.1"]).await;
    let b = Registry::start(&["127.0.0.1"]).await;
    let pin = TlsOptions {
        ca_file: None,
        pin_sha256: Some(cert_sha256_pem(&b.cert_pem).unwrap()),
    };
    // A first: its certificate is refused by the pin, and enrolment moves on to B.
    let client = RegistryClient::new(&format!("{},{}", a.url(), b.url()), &pin).unwrap();
    let token = b.token(1).await;
    let en = client.enroll(&token, &facts("m-list")).await.unwrap();
    assert_eq!(client.url(), format!("{}/", b.url()));
    let client = client.with_credentials(en.node_id, en.node_secret);
    client.heartbeat(&Heartbeat::default()).await.unwrap();

    // Neither URL presents B's certificate: each is refused by the pin, and each is named.
    let other = Registry::start(&["127.0.0.1"]).await;
    let client = RegistryClient::new(&format!("{},{}", a.url(), other.url()), &pin).unwrap();
    let e = client
        .enroll(&a.token(1).await, &facts("m-none"))
        .await
        .unwrap_err();
    let ClientError::AllFailed { attempts } = &e else {
        panic!("expected AllFailed, got {e:?}")
    };
    assert_eq!(attempts.len(), 2);
    for (url, err) in attempts {
        assert!(
            matches!(err, ClientError::PinMismatch { .. }),
            "{url}: {err:?}"
        );
    }
    let msg = e.to_string();
    assert!(
        msg.contains(&a.url()) && msg.contains(&other.url()),
        "{msg}"
    );
}
