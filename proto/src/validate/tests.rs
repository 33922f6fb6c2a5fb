//! Whole-spec tests (the documented example, several problems at once) and label tests.

use super::test_support::{problems, run_table};
use super::*;

const EXAMPLE: &str = r##"
networks:
  vlans:
    - {name: eth1.142, parent: eth1, id: 142}
  bridges:
    - name: br142
      mtu: 1500
      stp: false
      vlan_filtering: false
      addresses: [192.168.142.1/24]
      ports:
        - {iface: eth1.142}
    - name: brtrunk
      vlan_filtering: true
      ports:
        - {iface: eth2, vlans: [{id: 20, pvid: true, untagged: true}, {id: 30}]}
  labs:
    - {vlan: 150, parent: eth1}
containers:
  - name: web
    image: nginx:1.27
    command: [nginx, -g, "daemon off;"]
    env: {MODE: lab}
    ports: ["8080:80/tcp"]
    volumes: ["web-data:/data", "/srv/web:/usr/share/nginx/html:ro"]
    network: br142
    restart: always
    resources: {cpus: 0.5, memory: 256Mi}
    healthcheck: {http: "http://localhost:80/", interval: 10s}
vms:
  - name: kali-01
    image: /var/lib/steward/images/kali.qcow2
    cpus: 2
    memory: 2Gi
    disk: 20Gi
    nics: [{bridge: br142}]
    cloud_init: {user_data: "#cloud-config\nhostname: kali-01\n"}
    state: running
payloads:
  - {name: build-toolchain, version: 1.4.2, path: /opt/toolchain/gcc.tar.zst, mode: "0644"}
"##;

#[test]
fn example_spec_is_valid() {
    let got = problems(EXAMPLE);
    assert!(got.is_empty(), "{got:#?}");
}

#[test]
fn empty_spec_is_valid() {
    assert_eq!(
        validate_spec(&NodeSpec::default(), &SpecLimits::default()),
        Ok(())
    );
}

#[test]
fn every_problem_is_reported() {
    let yaml = r#"
networks:
  vlans:
    - {name: averyveryverylongname, parent: eth1, id: 5000}
  bridges:
    - name: br0
      ports:
        - {iface: eth2, vlans: [{id: 20}]}
containers:
  - name: web
    image: nginx:1.27
    ports: ["8080:80", "8080:80"]
    resources: {memory: 1Mi}
  - name: web
    image: Nginx
vms:
  - {name: kali, image: kali.qcow2, memory: 2Gi, cpus: 0}
payloads:
  - {name: p, version: "1", path: /opt/p, sha256: abc, mode: "999"}
"#;
    let got = problems(yaml);
    let want = [
        (
            "networks.vlans[0].name",
            "is 21 bytes; the kernel allows at most 15",
        ),
        (
            "networks.vlans[0].id",
            "VLAN id 5000 is out of range 1-4094",
        ),
        ("networks.bridges[0].ports[0].vlans", "vlan_filtering: true"),
        (
            "containers[1].name",
            "duplicate container name \"web\": containers[0]",
        ),
        (
            "containers[0].ports[1]",
            "already published by containers[0].ports[0]",
        ),
        ("containers[0].resources.memory", "below the 4Mi minimum"),
        ("containers[1].image", "must be lowercase"),
        ("vms[0].image", "is not absolute"),
        ("vms[0].cpus", "out of range 1-256"),
        ("payloads[0].sha256", "exactly 64"),
        ("payloads[0].mode", "octal digits are 0-7"),
    ];
    for (field, reason) in want {
        assert!(
            got.iter()
                .any(|p| p.field == field && p.reason.contains(reason)),
            "missing `{field}: ...{reason}...` in {got:#?}"
        );
    }
    assert_eq!(got.len(), want.len(), "{got:#?}");
    // The error type lists them all too.
    let spec: NodeSpec =
        crate::parse::parse_document(yaml.as_bytes(), crate::parse::Format::Yaml).unwrap();
    let err = validate_spec(&spec, &SpecLimits::default()).unwrap_err();
    assert!(err.to_string().starts_with("11 problem(s): "), "{err}");
}

#[test]
fn problems_are_also_found_in_json() {
    let spec: NodeSpec = crate::parse::parse_document(
        br#"{"containers":[{"name":"a","image":"nginx","ports":["99999"]}]}"#,
        crate::parse::Format::Json,
    )
    .unwrap();
    let err = validate_spec(&spec, &SpecLimits::default()).unwrap_err();
    assert_eq!(err.0.len(), 1);
    assert_eq!(err.0[0].field, "containers[0].ports[0]");
    assert!(err.0[0]
        .reason
        .contains("port 99999 is out of range 1-65535"));
}

#[test]
fn table_runner_rejects_extra_problems() {
    let result = std::panic::catch_unwind(|| {
        run_table(&[(
            "containers:\n  - {name: -a, image: Nginx}\n",
            "containers[0].name",
            "must start",
        )])
    });
    assert!(result.is_err());
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn valid_labels() {
    let ok = labels(&[
        ("role", "lab"),
        ("site", ""),
        ("example.com/team", "net-ops_2"),
        ("a", "b"),
        ("Zone.A-1_b", "Eu.West-1"),
        (&"k".repeat(63), &"v".repeat(63)),
        (
            &format!("{}.example/{}", "p".repeat(60), "n".repeat(63)),
            "x",
        ),
    ]);
    assert_eq!(validate_labels(&ok, "labels"), Vec::<Problem>::new());
}

#[test]
fn label_rules() {
    let long_prefix = format!(
        "{}/name",
        [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(63)
        ]
        .join(".")
    );
    let cases: &[(&str, &str, &str)] = &[
        ("", "", "label key is empty"),
        ("-role", "x", "must start and end with a letter or digit"),
        ("role-", "x", "must start and end with a letter or digit"),
        ("ro le", "x", "contains ' '"),
        ("role:x", "x", "contains ':'"),
        (&"k".repeat(64), "x", "is 64 characters; at most 63"),
        ("a/b/c", "x", "more than one '/'"),
        (
            "Example.com/role",
            "x",
            "prefix \"Example.com\" must be a DNS name",
        ),
        ("-x.com/role", "x", "must be a DNS name"),
        ("/role", "x", "must be a DNS name"),
        ("example.com/", "x", "empty name after the prefix"),
        (&long_prefix, "x", "at most 253"),
        ("role", &"v".repeat(64), "label value \"vvvv"),
        ("role", "a b", "contains ' '"),
        ("role", "-lab", "must start and end with a letter or digit"),
        ("role", "lab/1", "contains '/'"),
    ];
    let mut failures = Vec::new();
    for (key, value, reason) in cases {
        let got = validate_labels(&labels(&[(key, value)]), "labels");
        let field = format!("labels.{key}");
        if got.len() != 1 || got[0].field != field || !got[0].reason.contains(reason) {
            failures.push(format!(
                "{key:?}={value:?}: wanted `{field}: ...{reason}...`, got {got:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn labels_report_every_problem_with_the_given_prefix() {
    let got = validate_labels(
        &labels(&[("-a", "ok"), ("b", "-bad"), ("ok", "ok")]),
        "node.labels",
    );
    let fields: Vec<&str> = got.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["node.labels.-a", "node.labels.b"]);
}

#[test]
fn shared_helpers() {
    assert_eq!(normalize_path("/a//b/./c/"), "/a/b/c");
    assert_eq!(normalize_path("/"), "/");
    assert!(iface_problem("eth0").is_none());
    assert!(iface_problem(&"e".repeat(15)).is_none());
    assert!(iface_problem(".").is_some());
    assert!(iface_problem("a\0b").is_some_and(|r| r.contains("NUL")));
    assert!(iface_problem("a\tb").is_some_and(|r| r.contains("whitespace")));
    assert!(vlan_id_problem(1).is_none() && vlan_id_problem(4094).is_none());
    assert!(resource_name_problem("container", "a_b.c-1").is_none());
}
