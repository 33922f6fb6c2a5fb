//! Merging a node's own spec with the fleet-wide fragments that match it.
//!
//! A resource (same kind, same name) defined by two sources is a conflict naming both; there is
//! no precedence between sources, so the merge is independent of fragment order.

use crate::node::WorkloadKind;
use crate::spec::NodeSpec;
use crate::validate::Problem;
use std::collections::BTreeMap;

/// Where a part of an effective spec came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source<'a> {
    Node,
    Fragment(&'a str),
    Session(&'a str),
}

impl std::fmt::Display for Source<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Node => f.write_str("the node's own spec"),
            Source::Fragment(n) => write!(f, "fragment {n:?}"),
            Source::Session(n) => write!(f, "session {n:?}"),
        }
    }
}

/// Merges `parts` (in order) into one spec; a resource defined twice is a problem naming both
/// sources, reported on the field of the second definition.
pub fn merge_specs<'a>(parts: &[(Source<'a>, &NodeSpec)]) -> Result<NodeSpec, Vec<Problem>> {
    let mut out = NodeSpec::default();
    let mut seen: BTreeMap<(&'static str, String), Source<'a>> = BTreeMap::new();
    let mut problems = Vec::new();

    let mut claim = |kind: &'static str, name: String, field: String, src: Source<'a>| match seen
        .get(&(kind, name.clone()))
    {
        Some(first) => {
            problems.push(Problem::new(
                field,
                format!("{kind} {name:?} is defined by both {first} and {src}"),
            ));
            false
        }
        None => {
            seen.insert((kind, name), src);
            true
        }
    };

    for (src, spec) in parts {
        let src = *src;
        let prefix = match src {
            Source::Node => String::new(),
            Source::Fragment(n) => format!("fragments[{n}]."),
            Source::Session(n) => format!("sessions[{n}]."),
        };
        for kind in WorkloadKind::ALL {
            for (i, name) in spec.workload_names(kind).into_iter().enumerate() {
                let f = format!("{prefix}{}[{i}].name", kind.field());
                if claim(kind.as_str(), name.to_string(), f, src) {
                    out.push_workload(spec, kind, i);
                }
            }
        }
        for (i, p) in spec.payloads.iter().enumerate() {
            if claim(
                "payload",
                p.name.clone(),
                format!("{prefix}payloads[{i}].name"),
                src,
            ) {
                out.payloads.push(p.clone());
            }
        }
        for (i, v) in spec.networks.vlans.iter().enumerate() {
            let f = format!("{prefix}networks.vlans[{i}].name");
            if claim("link", v.name.clone(), f, src) {
                out.networks.vlans.push(v.clone());
            }
        }
        for (i, b) in spec.networks.bridges.iter().enumerate() {
            let f = format!("{prefix}networks.bridges[{i}].name");
            if claim("link", b.name.clone(), f, src) {
                out.networks.bridges.push(b.clone());
            }
        }
        for (i, l) in spec.networks.labs.iter().enumerate() {
            let f = format!("{prefix}networks.labs[{i}].vlan");
            if claim("lab", l.vlan.to_string(), f, src) {
                out.networks.labs.push(l.clone());
            }
        }
        for (i, l) in spec.sessions.iter().enumerate() {
            let f = format!("{prefix}sessions[{i}].id");
            if claim("session", l.id.clone(), f, src) {
                out.sessions.push(l.clone());
            }
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::parse::{parse_document, Format};

    fn spec(yaml: &str) -> NodeSpec {
        parse_document(yaml.as_bytes(), Format::Yaml).unwrap()
    }

    #[test]
    fn disjoint_sources_merge() {
        let own = spec("containers: [{name: web, image: nginx}]");
        let frag = spec("containers: [{name: agent, image: x}]\npayloads: [{name: tc, version: '1', path: /opt/tc}]");
        let m = merge_specs(&[(Source::Node, &own), (Source::Fragment("base"), &frag)]).unwrap();
        let names: Vec<_> = m.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["web", "agent"]);
        assert_eq!(m.payloads.len(), 1);
    }

    #[test]
    fn same_name_from_two_sources_names_both() {
        let own = spec("containers: [{name: web, image: nginx}]");
        let frag = spec("containers: [{name: web, image: other}]");
        let errs =
            merge_specs(&[(Source::Node, &own), (Source::Fragment("base"), &frag)]).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "fragments[base].containers[0].name");
        assert!(errs[0].reason.contains("the node's own spec"));
        assert!(errs[0].reason.contains("fragment \"base\""));
    }

    #[test]
    fn bridge_and_vlan_share_the_link_namespace() {
        let own = spec("networks: {bridges: [{name: br1}]}");
        let frag = spec("networks: {vlans: [{name: br1, parent: eth0, id: 5}]}");
        assert!(merge_specs(&[(Source::Node, &own), (Source::Fragment("f"), &frag)]).is_err());
    }

    #[test]
    fn workloads_of_every_kind_merge_and_a_container_and_a_vm_may_share_a_name() {
        let own = spec("containers: [{name: web, image: nginx}]");
        let vm = "vms: [{name: web, image: /b.qcow2, cpus: 1, memory: 256Mi}, \
                  {name: db, image: /b.qcow2, cpus: 1, memory: 256Mi}]";
        let frag = spec(vm);
        let m = merge_specs(&[(Source::Node, &own), (Source::Fragment("f"), &frag)]).unwrap();
        assert_eq!(m.workload_names(WorkloadKind::Container), ["web"]);
        assert_eq!(m.workload_names(WorkloadKind::Vm), ["web", "db"]);
        let again = spec(vm);
        let errs =
            merge_specs(&[(Source::Node, &frag), (Source::Fragment("g"), &again)]).unwrap_err();
        assert_eq!(errs[0].field, "fragments[g].vms[0].name");
        assert!(errs[0].reason.starts_with("vm \"web\" is defined by both"));
    }

    #[test]
    fn statuses_and_on_change_name_workloads() {
        use crate::node::{ResourceKind, ResourceState, ResourceStatus, WorkloadRef};
        let w = WorkloadRef::new(WorkloadKind::Vm, "db");
        let st = ResourceStatus::of_workload(&w, ResourceState::Converged, None);
        assert_eq!(
            (st.kind, st.workload()),
            (ResourceKind::Vm, Some(w.clone()))
        );
        let net = ResourceStatus::new(ResourceKind::Network, "br0", ResourceState::Converged, None);
        assert_eq!(net.workload(), None);
        let oc = crate::spec::OnChange {
            restart_containers: vec!["web".into()],
            restart_vms: vec!["db".into()],
        };
        let web = WorkloadRef::new(WorkloadKind::Container, "web");
        assert_eq!(oc.workloads().collect::<Vec<_>>(), [web, w]);
    }
}
