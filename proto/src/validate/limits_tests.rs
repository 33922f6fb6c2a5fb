//! Table tests of the spec limits: each limit refuses one past it, on its field, naming the
//! count, the limit and the config key; at the limit the spec is fine.

use super::*;
use crate::spec::{BridgeSpec, LabSpec, PayloadSpec, VlanSpec, VmSpec};
use crate::validate::validate_spec;

fn container(i: usize) -> ContainerSpec {
    crate::parse::parse_document(
        format!(r#"{{"name":"c{i}","image":"busybox:1"}}"#).as_bytes(),
        crate::parse::Format::Json,
    )
    .unwrap_or_else(|p| panic!("{p}"))
}

fn vm(i: usize) -> VmSpec {
    crate::parse::parse_document(
        format!(r#"{{"name":"v{i}","image":"/i/v.qcow2","cpus":1,"memory":"1Gi"}}"#).as_bytes(),
        crate::parse::Format::Json,
    )
    .unwrap_or_else(|p| panic!("{p}"))
}

fn vlan(i: usize) -> VlanSpec {
    VlanSpec {
        name: format!("v{i}"),
        parent: "eth1".into(),
        id: 1 + (i % 4000) as u16,
        mtu: None,
        addresses: vec![],
        up: true,
    }
}

fn bridge(i: usize) -> BridgeSpec {
    BridgeSpec {
        name: format!("br{i}"),
        mtu: None,
        stp: false,
        vlan_filtering: false,
        default_pvid: None,
        addresses: vec![],
        ports: vec![],
        up: true,
        isolation: Default::default(),
        allow: vec![],
        ports_isolated: false,
    }
}

fn lab(i: usize) -> LabSpec {
    LabSpec {
        vlan: 1 + (i % 4000) as u16,
        parent: Some("eth1".into()),
        bridge: None,
        cidr: None,
        gateway: Default::default(),
        isolation: Default::default(),
        allow: vec![],
        ports_isolated: false,
    }
}

fn payload(i: usize) -> PayloadSpec {
    PayloadSpec {
        name: format!("p{i}"),
        version: "1".into(),
        path: format!("/p/{i}"),
        kind: Default::default(),
        mode: None,
        owner: None,
        sha256: None,
        size: None,
        on_change: None,
    }
}

/// Small limits so the tables stay quick; each is 3 except the byte limits.
fn small() -> SpecLimits {
    SpecLimits {
        max_spec_bytes: 100_000,
        max_containers: 3,
        max_vms: 3,
        max_vlans: 3,
        max_bridges: 3,
        max_labs: 3,
        max_payloads: 3,
        max_ports_per_container: 3,
        max_volumes_per_container: 3,
        max_env_per_container: 3,
        max_env_bytes_per_container: 100,
    }
}

/// A spec with `n` of the resource or entry the case is about.
type Build = fn(usize) -> NodeSpec;

fn with_container(f: impl Fn(&mut ContainerSpec)) -> NodeSpec {
    let mut c = container(0);
    f(&mut c);
    NodeSpec {
        containers: vec![c],
        ..Default::default()
    }
}

#[test]
fn each_limit_refuses_one_past_it_naming_count_limit_and_key() {
    let cases: [(&str, Build, &str, &str); 10] = [
        (
            "containers",
            |n| NodeSpec {
                containers: (0..n).map(container).collect(),
                ..Default::default()
            },
            "containers",
            "containers exceed the limit of 3 (limits.max_containers)",
        ),
        (
            "vms",
            |n| NodeSpec {
                vms: (0..n).map(vm).collect(),
                ..Default::default()
            },
            "vms",
            "vms exceed the limit of 3 (limits.max_vms)",
        ),
        (
            "vlans",
            |n| {
                let mut s = NodeSpec::default();
                s.networks.vlans = (0..n).map(vlan).collect();
                s
            },
            "networks.vlans",
            "vlans exceed the limit of 3 (limits.max_vlans)",
        ),
        (
            "bridges",
            |n| {
                let mut s = NodeSpec::default();
                s.networks.bridges = (0..n).map(bridge).collect();
                s
            },
            "networks.bridges",
            "bridges exceed the limit of 3 (limits.max_bridges)",
        ),
        (
            "labs",
            |n| {
                let mut s = NodeSpec::default();
                s.networks.labs = (0..n).map(lab).collect();
                s
            },
            "networks.labs",
            "labs exceed the limit of 3 (limits.max_labs)",
        ),
        (
            "payloads",
            |n| NodeSpec {
                payloads: (0..n).map(payload).collect(),
                ..Default::default()
            },
            "payloads",
            "payloads exceed the limit of 3 (limits.max_payloads)",
        ),
        (
            "ports",
            |n| with_container(|c| c.ports = (0..n).map(|i| format!("{}:80", 8000 + i)).collect()),
            "containers[0].ports",
            "ports exceed the limit of 3 (limits.max_ports_per_container)",
        ),
        (
            "volumes",
            |n| with_container(|c| c.volumes = (0..n).map(|i| format!("v{i}:/d{i}")).collect()),
            "containers[0].volumes",
            "volumes exceed the limit of 3 (limits.max_volumes_per_container)",
        ),
        (
            "env entries",
            |n| with_container(|c| c.env = (0..n).map(|i| (format!("K{i}"), "v".into())).collect()),
            "containers[0].env",
            "entries exceed the limit of 3 (limits.max_env_per_container)",
        ),
        // At 3 entries "K0=<30 bytes>\0" is 34 bytes each: 3 make 102 > 100, 2 make 68.
        (
            "env bytes",
            |n| {
                with_container(|c| {
                    c.env = (0..n.saturating_sub(1))
                        .map(|i| (format!("K{i}"), "x".repeat(30)))
                        .collect()
                })
            },
            "containers[0].env",
            "exceed the limit of 100 (limits.max_env_bytes_per_container)",
        ),
    ];
    let limits = small();
    let mut failures = Vec::new();
    for (name, build, field, reason) in cases {
        let at = build(3);
        if let Err(e) = validate_spec(&at, &limits) {
            failures.push(format!("{name}: at the limit wanted no problem, got {e}"));
        }
        let past = build(4);
        match validate_spec(&past, &limits) {
            Ok(()) => failures.push(format!("{name}: one past the limit was accepted")),
            Err(e) => {
                let hit = e.0.len() == 1
                    && e.0[0].field == field
                    && e.0[0].reason.contains(reason)
                    && e.0[0].reason.starts_with(|c: char| c.is_ascii_digit());
                if !hit {
                    failures.push(format!(
                        "{name}: wanted one `{field}: N ...{reason}`, got {e}"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn ten_thousand_containers_are_refused_with_the_issue_message() {
    let spec = NodeSpec {
        containers: (0..10_000).map(container).collect(),
        ..Default::default()
    };
    let err = validate_spec(&spec, &SpecLimits::default()).unwrap_err();
    let text: Vec<String> = err.0.iter().map(|p| p.to_string()).collect();
    assert_eq!(
        text,
        ["containers: 10000 containers exceed the limit of 500 (limits.max_containers)"]
    );
    let raised = SpecLimits {
        max_containers: 10_000,
        ..SpecLimits::default()
    };
    assert_eq!(validate_spec(&spec, &raised), Ok(()));
}

#[test]
fn the_serialized_size_is_bounded() {
    let spec = NodeSpec {
        containers: (0..3).map(container).collect(),
        ..Default::default()
    };
    let size = serde_json::to_vec(&spec).map(|v| v.len()).unwrap_or(0);
    assert_eq!(json_len(&spec), size);
    let limits = SpecLimits {
        max_spec_bytes: size - 1,
        ..SpecLimits::default()
    };
    let err = validate_spec(&spec, &limits).unwrap_err();
    assert_eq!(err.0.len(), 1, "{err}");
    assert_eq!(err.0[0].field, "spec");
    assert_eq!(
        err.0[0].reason,
        format!(
            "{size} bytes (as JSON) exceed the limit of {} (limits.max_spec_bytes)",
            size - 1
        )
    );
}

#[test]
fn limits_come_from_toml_and_environment_and_unknown_keys_are_refused() {
    #[derive(Deserialize)]
    struct File {
        limits: SpecLimits,
    }
    let f: File = toml_like(&[("max_containers", 900)]);
    assert_eq!(f.limits.max_containers, 900);
    assert_eq!(f.limits.max_vms, SpecLimits::default().max_vms);
    fn toml_like(kv: &[(&str, usize)]) -> File {
        let body: serde_json::Map<String, serde_json::Value> = kv
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect();
        serde_json::from_value(serde_json::json!({ "limits": body }))
            .unwrap_or_else(|e| panic!("{e}"))
    }
    let bad = serde_json::from_value::<SpecLimits>(serde_json::json!({"max_container": 1}));
    assert!(bad.is_err_and(|e| e.to_string().contains("unknown field `max_container`")));

    let mut l = SpecLimits::default();
    l.apply_env(|k| (k == "STEWARD_LIMITS_MAX_CONTAINERS").then(|| "12000".to_string()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(l.max_containers, 12_000);
    let e = l
        .apply_env(|k| (k == "STEWARD_LIMITS_MAX_VMS").then(|| "lots".to_string()))
        .unwrap_err();
    assert!(e.contains("limits.max_vms"), "{e}");
    for key in LIMIT_KEYS {
        assert!(l.slot(key).is_some(), "{key}");
    }
}
