//! A VM's cloud-init `network-config` (version 2) made from its NICs' lab leases, pure: each
//! NIC with a lease is matched by its MAC and gets its address; the first one also gets the
//! default route through the lab's gateway, and the gateway as DNS server when a router VM owns
//! it (`gateway: none`; the host serves no DNS on its labs). A VM without a lease gets none, and
//! a `network_config` in the spec always wins (`seed::files`).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::network::NicLease;

#[derive(Serialize)]
struct NetworkConfig {
    version: u8,
    ethernets: BTreeMap<String, Ethernet>,
}

#[derive(Serialize)]
struct Ethernet {
    #[serde(rename = "match")]
    matches: Match,
    addresses: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    routes: Vec<Route>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nameservers: Option<Nameservers>,
}

#[derive(Serialize)]
struct Match {
    macaddress: String,
}

#[derive(Serialize)]
struct Route {
    to: String,
    via: String,
}

#[derive(Serialize)]
struct Nameservers {
    addresses: Vec<String>,
}

/// The `network-config` for NICs given as (MAC, lease) in NIC order; `None` when no NIC has a
/// lease.
pub fn network_config(nics: &[(&str, Option<&NicLease>)]) -> Option<String> {
    let mut ethernets = BTreeMap::new();
    let mut routed = false;
    for (i, (mac, lease)) in nics.iter().enumerate() {
        let Some(lease) = lease else { continue };
        let default = if lease.gateway.is_ipv4() {
            "0.0.0.0/0"
        } else {
            "::/0"
        };
        let routes = if routed {
            Vec::new()
        } else {
            routed = true;
            vec![Route {
                to: default.into(),
                via: lease.gateway.to_string(),
            }]
        };
        let eth = Ethernet {
            matches: Match {
                macaddress: mac.to_ascii_lowercase(),
            },
            addresses: vec![lease.address.to_string()],
            routes,
            nameservers: lease.dns.map(|d| Nameservers {
                addresses: vec![d.to_string()],
            }),
        };
        ethernets.insert(format!("nic{i}"), eth);
    }
    if ethernets.is_empty() {
        return None;
    }
    let doc = NetworkConfig {
        version: 2,
        ethernets,
    };
    serde_norway::to_string(&doc).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn lease(addr: &str, gw: &str, dns: bool) -> NicLease {
        NicLease {
            address: addr.parse().unwrap(),
            gateway: gw.parse().unwrap(),
            dns: dns.then(|| gw.parse().unwrap()),
        }
    }

    #[test]
    fn leases_become_a_version_2_network_config() {
        assert_eq!(network_config(&[("52:54:00:00:00:01", None)]), None);
        assert_eq!(network_config(&[]), None);
        let a = lease("192.168.100.10/24", "192.168.100.1", false);
        let b = lease("192.168.101.11/24", "192.168.101.1", true);
        let text = network_config(&[
            ("52:54:00:AA:00:01", Some(&a)),
            ("52:54:00:aa:00:02", None),
            ("52:54:00:aa:00:03", Some(&b)),
        ])
        .unwrap();
        let v: serde_json::Value = serde_norway::from_str(&text).unwrap();
        let want = serde_json::json!({
            "version": 2,
            "ethernets": {
                "nic0": {
                    "match": {"macaddress": "52:54:00:aa:00:01"},
                    "addresses": ["192.168.100.10/24"],
                    "routes": [{"to": "0.0.0.0/0", "via": "192.168.100.1"}]
                },
                // Only the first leased NIC routes; a router VM's lab gives DNS.
                "nic2": {
                    "match": {"macaddress": "52:54:00:aa:00:03"},
                    "addresses": ["192.168.101.11/24"],
                    "nameservers": {"addresses": ["192.168.101.1"]}
                }
            }
        });
        assert_eq!(v, want, "{text}");
        // The VM guest of the tests reads the first NIC's address off this layout.
        assert!(
            text.contains("\n    addresses:\n    - 192.168.100.10/24\n"),
            "{text}"
        );
        let v6 = lease("fd00:151::10/64", "fd00:151::1", false);
        let text = network_config(&[("52:54:00:00:00:09", Some(&v6))]).unwrap();
        assert!(text.contains("to: ::/0"), "{text}");
    }
}
