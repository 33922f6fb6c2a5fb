//! `stewardctl templates` and `stewardctl sessions`: the real CLI against the real registry
//! binary, with a node enrolled and heartbeating: writing, listing, showing and deleting
//! templates; creating (typed parameters, quiet output, quotas, --wait), listing, extending and
//! ending sessions; errors naming the field or the limit with exit code 6.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Output;

use chrono::{DateTime, Utc};
use common::sessions::node;
use common::Registry;
use serde_json::{json, Value};

/// A template with typed parameters, two host ports, a lab, a volume, and one live session
/// per owner at most.
const WEB: &str = r#"# a web server per session
selector: pool=web
ports: [http, ssh]
volumes: [data]
lab: true
ttl: 1h
max_ttl: 3h
per_owner: 1
reserve: {cpus: 0.1, memory: 64Mi}
params:
  replicas: {type: int, min: 1, max: 4, default: 1}
  flavor: {type: string, one_of: [small, large]}
spec:
  containers:
    - name: "web-{{session}}"
      image: busybox
      ports: ["{{port.http}}:80", "{{port.ssh}}:22"]
      volumes: ["{{volume.data}}:/data"]
      env: {OWNER: "{{owner}}", REPLICAS: "{{param.replicas}}", FLAVOR: "{{param.flavor}}"}
"#;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// The stdout of a command that must succeed.
fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        stderr(&o)
    );
    stdout(&o)
}

/// The stderr of a command that must fail with `code`.
fn fails(o: Output, code: i32) -> String {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(&o),
        stderr(&o)
    );
    stderr(&o)
}

/// Writes `text` to a file in the registry's temporary dir; returns its path.
fn file(r: &Registry, name: &str, text: &str) -> String {
    let p = r.dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

/// The table row (a line of stdout) starting with `key`.
fn row<'a>(table: &'a str, key: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("no row {key} in:\n{table}"))
}

fn expires_at(s: &Value) -> DateTime<Utc> {
    s["expires_at"].as_str().unwrap().parse().unwrap()
}

// Multi-threaded: `ctl` blocks its thread while the node's heartbeats must go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_and_sessions_round_trip_through_stewardctl() {
    let r = Registry::start(&[]).await;
    let admin = r.admin.clone();
    let node_id = node(&r, vec![r.url("")], "m1", json!({"pool": "web"})).await;

    // templates put from a YAML file, then list and get.
    let web = file(&r, "web.yaml", WEB);
    let out = ok(r.ctl(&admin, &["templates", "put", "web", "-f", &web]));
    assert_eq!(out.trim(), "template web written (revision 1)");
    let table = ok(r.ctl(&admin, &["templates", "list"]));
    let head = table.lines().next().unwrap();
    for h in [
        "NAME", "REVISION", "SELECTOR", "PORTS", "LAB", "TTL", "MAX_TTL", "LIMITS", "UPDATED",
    ] {
        assert!(head.contains(h), "{head}");
    }
    let line = row(&table, "web ");
    for want in [
        "pool=web",
        "http,ssh",
        "yes",
        "1h",
        "3h",
        "per_owner=1,cpus=0.1,memory=64Mi",
    ] {
        assert!(line.contains(want), "{want} missing: {line}");
    }
    assert_eq!(
        ok(r.ctl(&admin, &["-q", "templates", "list"])).trim(),
        "web"
    );
    let yaml = ok(r.ctl(&admin, &["templates", "get", "web"]));
    assert!(
        yaml.starts_with("# template web, revision 1, updated "),
        "{yaml}"
    );
    assert!(yaml.contains("{{port.http}}:80"), "{yaml}");
    // What `get` prints can be written back as it is: the same template (no new revision).
    let again = file(&r, "again.yaml", &yaml);
    let out = ok(r.ctl(&admin, &["templates", "put", "web", "-f", &again]));
    assert_eq!(out.trim(), "template web written (revision 1)");
    let got: Value = serde_json::from_str(&ok(
        r.ctl(&admin, &["-o", "json", "templates", "get", "web"])
    ))
    .unwrap();
    assert_eq!(
        (got["revision"].clone(), got["per_owner"].clone()),
        (json!(1), json!(1))
    );

    // sessions create with typed parameters; quiet prints just the id.
    let args = [
        "-q",
        "sessions",
        "create",
        "web",
        "--owner",
        "alice",
        "--param",
        "replicas=2",
        "--param",
        "flavor=small",
    ];
    let o = r.ctl(&admin, &args);
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
    let id = ok(o);
    assert_eq!(id.lines().count(), 1, "{id}");
    let id = id.trim().to_string();
    let (st, s) = r.get(&format!("/v1/sessions/{id}"), &admin).await;
    assert_eq!(st, 200, "{s}");
    assert_eq!(s["params"], json!({"replicas": 2, "flavor": "small"}));
    assert_eq!(
        (s["owner"].as_str(), s["node"].as_str()),
        (Some("alice"), Some(node_id.as_str()))
    );

    // Without --quiet: the id on stdout, the details on stderr.
    let o = r.ctl(
        &admin,
        &[
            "sessions",
            "create",
            "web",
            "--owner",
            "bob",
            "-p",
            "flavor=large",
            "--ttl",
            "30m",
        ],
    );
    let err = stderr(&o);
    let bob = ok(o).trim().to_string();
    assert!(
        bob.starts_with("s-") && !bob.contains(char::is_whitespace),
        "{bob}"
    );
    for want in [
        bob.as_str(),
        "created for bob from template web",
        node_id.as_str(),
        "pending",
        "endpoints: http=host-m1:",
    ] {
        assert!(err.contains(want), "{want} missing: {err}");
    }

    // A create the template's per_owner quota refuses: exit 6, the limit named.
    let err = fails(
        r.ctl(
            &admin,
            &[
                "sessions",
                "create",
                "web",
                "--owner",
                "alice",
                "-p",
                "flavor=small",
            ],
        ),
        6,
    );
    assert!(err.contains("its per_owner"), "{err}");
    // A parameter of the wrong type is named by its field.
    let err = fails(
        r.ctl(
            &admin,
            &[
                "sessions", "create", "web", "--owner", "carol", "-p", "flavor=7",
            ],
        ),
        6,
    );
    assert!(err.contains("params.flavor"), "{err}");
    // ... and `--param-string` sends it as a string (then refused by one_of, still named).
    let err = fails(
        r.ctl(
            &admin,
            &[
                "sessions",
                "create",
                "web",
                "--owner",
                "carol",
                "--param-string",
                "flavor=7",
            ],
        ),
        6,
    );
    assert!(
        err.contains("params.flavor") && err.contains("not one of"),
        "{err}"
    );

    // sessions list: owner, template, node, state, time left and endpoints.
    let table = ok(r.ctl(&admin, &["sessions", "list"]));
    let head = table.lines().next().unwrap();
    for h in [
        "ID",
        "OWNER",
        "TEMPLATE",
        "NODE",
        "STATE",
        "EXPIRES IN",
        "ENDPOINTS",
    ] {
        assert!(head.contains(h), "{head}");
    }
    let line = row(&table, &id);
    for want in [
        "alice",
        "web",
        node_id.as_str(),
        "pending",
        "59m",
        "http=host-m1:",
        "ssh=host-m1:",
    ] {
        assert!(line.contains(want), "{want} missing: {line}");
    }
    assert!(row(&table, &bob).contains("29m"), "{table}");
    let mine = ok(r.ctl(
        &admin,
        &[
            "-q",
            "sessions",
            "list",
            "--owner",
            "alice",
            "--template",
            "web",
            "--node",
            &node_id,
        ],
    ));
    assert_eq!(mine.trim(), id);
    let o = r.ctl(&admin, &["sessions", "list", "--state", "ended"]);
    assert!(stderr(&o).contains("no sessions"), "{}", stderr(&o));
    assert!(ok(o).is_empty());
    let err = fails(r.ctl(&admin, &["sessions", "list", "--state", "up"]), 2);
    assert!(err.contains("pending, running, failed or ended"), "{err}");
    let yaml = ok(r.ctl(&admin, &["sessions", "get", &id]));
    assert!(
        yaml.contains(&format!("id: {id}")) && yaml.contains("state: pending"),
        "{yaml}"
    );

    // extend --by 10m moves the deadline by ten minutes.
    let before = expires_at(&s);
    let o = ok(r.ctl(
        &admin,
        &["-o", "json", "sessions", "extend", &id, "--by", "10m"],
    ));
    let extended: Value = serde_json::from_str(&o).unwrap();
    assert_eq!((expires_at(&extended) - before).num_seconds(), 600);
    let (_, now) = r.get(&format!("/v1/sessions/{id}"), &admin).await;
    assert_eq!(expires_at(&now), expires_at(&extended));
    let out = ok(r.ctl(&admin, &["sessions", "extend", &id, "--by", "1m"]));
    assert!(
        out.contains(&format!("session {id} extended: expires ")),
        "{out}"
    );
    // Past max_ttl (3h from creation), the registry says how much is left.
    let err = fails(r.ctl(&admin, &["sessions", "extend", &id, "--by", "2h"]), 6);
    assert!(err.contains("at most"), "{err}");

    // end: the session is ended; the list says so; the template is free once bob's ends too.
    let out = ok(r.ctl(&admin, &["sessions", "end", &id]));
    assert_eq!(out.trim(), format!("session {id} ended"));
    let (_, s) = r.get(&format!("/v1/sessions/{id}"), &admin).await;
    assert_eq!(s["state"], "ended");
    let table = ok(r.ctl(&admin, &["sessions", "list", "--state", "ended"]));
    assert!(row(&table, &id).contains("ended"), "{table}");
    let err = fails(r.ctl(&admin, &["templates", "delete", "web"]), 6);
    assert!(err.contains("error:"), "{err}");
    let ended: Value =
        serde_json::from_str(&ok(r.ctl(&admin, &["-o", "json", "sessions", "end", &bob]))).unwrap();
    assert_eq!(ended["state"], "ended");
    let out = ok(r.ctl(&admin, &["templates", "delete", "web"]));
    assert_eq!(out.trim(), "template web deleted");
    fails(r.ctl(&admin, &["templates", "get", "web"]), 5);
    let o = r.ctl(&admin, &["templates", "list"]);
    assert!(
        stderr(&o).contains("no session templates"),
        "{}",
        stderr(&o)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_template_file_is_refused_naming_the_field() {
    let r = Registry::start(&[]).await;
    let admin = r.admin.clone();
    // Does not parse: refused before it is sent.
    let bad = file(&r, "bogus.yaml", "spec: {}\nbogus: true\n");
    let err = fails(r.ctl(&admin, &["templates", "put", "t", "-f", &bad]), 6);
    assert!(err.contains("bogus") && err.contains("bogus.yaml"), "{err}");
    let bad = file(&r, "limits.json", r#"{"spec": {}, "per_owner": "many"}"#);
    let err = fails(r.ctl(&admin, &["templates", "put", "t", "-f", &bad]), 6);
    assert!(err.contains("per_owner"), "{err}");
    // Parses, but the registry's check refuses it: an undeclared port, a ttl past max_ttl.
    let bad = file(
        &r,
        "port.yaml",
        "spec:\n  containers:\n    - {name: a, image: busybox, ports: [\"{{port.web}}:80\"]}\n",
    );
    let err = fails(r.ctl(&admin, &["templates", "put", "t", "-f", &bad]), 6);
    assert!(err.contains("spec.containers[0].ports[0]"), "{err}");
    let bad = file(&r, "ttl.yaml", "spec: {}\nttl: 3h\nmax_ttl: 1h\n");
    let err = fails(r.ctl(&admin, &["templates", "put", "t", "-f", &bad]), 6);
    assert!(err.contains("ttl"), "{err}");
    fails(r.ctl(&admin, &["templates", "get", "t"]), 5);
    // Bad flags are refused locally (exit 2).
    let err = fails(
        r.ctl(&admin, &["sessions", "create", "t", "--param", "novalue"]),
        2,
    );
    assert!(err.contains("KEY=VALUE"), "{err}");
    let err = fails(
        r.ctl(
            &admin,
            &["sessions", "create", "t", "-p", "a=1", "-p", "a=2"],
        ),
        2,
    );
    assert!(err.contains("given twice"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_wait_returns_once_running_and_gives_up_after_its_timeout() {
    let r = Registry::start(&[]).await;
    let admin = r.admin.clone();
    node(&r, vec![r.url("")], "m1", json!({})).await;
    // Nothing to start: running as soon as the jobs see it.
    let quick = file(&r, "quick.yaml", "ports: [http]\nspec: {}\n");
    ok(r.ctl(&admin, &["templates", "put", "quick", "-f", &quick]));
    let o = r.ctl(
        &admin,
        &[
            "-o",
            "json",
            "sessions",
            "create",
            "quick",
            "--wait",
            "--timeout",
            "30s",
        ],
    );
    let err = stderr(&o);
    let s: Value = serde_json::from_str(&ok(o)).unwrap();
    assert_eq!(s["state"], "running", "{s}");
    assert!(
        s["endpoints"][0]["address"]
            .as_str()
            .unwrap()
            .starts_with("host-m1:"),
        "{s}"
    );
    assert!(
        err.contains("waiting up to 30s") && err.contains("running (after"),
        "{err}"
    );
    let table = ok(r.ctl(&admin, &["sessions", "list", "--state", "running"]));
    assert!(
        row(&table, s["id"].as_str().unwrap()).contains("running"),
        "{table}"
    );
    // A container no agent starts stays pending: --wait gives up after its timeout (exit 7),
    // the id already printed on stdout.
    let slow = file(
        &r,
        "slow.yaml",
        "spec:\n  containers:\n    - {name: \"c-{{session}}\", image: busybox}\n",
    );
    ok(r.ctl(&admin, &["templates", "put", "slow", "-f", &slow]));
    let o = r.ctl(
        &admin,
        &["sessions", "create", "slow", "--wait", "--timeout", "2s"],
    );
    let id = stdout(&o).trim().to_string();
    let err = fails(o, 7);
    assert!(
        err.contains(&format!("session {id} is still pending after 2s")),
        "{err}"
    );
}
