//! `[sessions]` of the registry's config: fleet-wide limits, the host port range (per node
//! label), the VLAN pool and the lab subnet template, the endpoint address label, and how long
//! ended sessions stay listed.

use std::ops::RangeInclusive;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use steward_proto::Labels;

use super::place::{parse_range, Limits};

/// `[sessions]`; every field is documented in `packaging/registry.toml.example`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// Most live sessions in the fleet (default 1000).
    pub max_live: Option<u32>,
    /// Most live sessions of one owner across templates (default: no limit).
    pub per_owner: Option<u32>,
    /// Host ports sessions are given on a node (default `10000-20000`).
    pub ports: String,
    /// A node label that overrides `ports` on that node (`FROM-TO`).
    pub ports_label: String,
    /// The fleet-wide VLAN pool of lab sessions (default `100-170`).
    pub vlans: String,
    /// A lab session's subnet (`{vlan}`, `{vlan_hi}`, `{vlan_lo}`), as the agents'
    /// `lab_cidr_template` (default `192.168.{vlan}.0/24`).
    pub lab_cidr: String,
    /// A node label holding the address endpoints name (default: the node's hostname).
    pub address_label: String,
    /// How long ended sessions stay listed (default `24h`).
    pub ended_kept: String,
    /// How long before an idle session is ended a `session` event warns of it (default `1m`).
    pub idle_warning: String,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            max_live: Some(1000),
            per_owner: None,
            ports: "10000-20000".into(),
            ports_label: "steward.io/session-ports".into(),
            vlans: "100-170".into(),
            lab_cidr: "192.168.{vlan}.0/24".into(),
            address_label: "steward.io/address".into(),
            ended_kept: "24h".into(),
            idle_warning: "1m".into(),
        }
    }
}

impl SessionsConfig {
    /// Checks every field; the error names it.
    pub fn check(&self) -> Result<(), String> {
        parse_range(&self.ports).map_err(|e| format!("sessions.ports: {e}"))?;
        let vlans = parse_range(&self.vlans).map_err(|e| format!("sessions.vlans: {e}"))?;
        if *vlans.end() > 4094 {
            return Err("sessions.vlans: VLAN ids go up to 4094".into());
        }
        super::render::lab_for(*vlans.start(), &self.lab_cidr)
            .map_err(|e| format!("sessions.lab_cidr: {e}"))?;
        self.kept()
            .map_err(|e| format!("sessions.ended_kept: {e}"))?;
        self.warning()
            .map_err(|e| format!("sessions.idle_warning: {e}"))?;
        Ok(())
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_live: self.max_live,
            per_owner: self.per_owner,
        }
    }

    /// The port range of a node with `labels` (its `ports_label`, else `ports`).
    pub fn port_range_of(&self, labels: &Labels) -> RangeInclusive<u16> {
        (labels.get(&self.ports_label))
            .and_then(|r| parse_range(r).ok())
            .or_else(|| parse_range(&self.ports).ok())
            .unwrap_or(10000..=20000)
    }

    pub fn vlan_pool(&self) -> RangeInclusive<u16> {
        parse_range(&self.vlans).unwrap_or(100..=170)
    }

    /// How long before an idle session ends it is warned of.
    pub fn warning(&self) -> Result<Duration, String> {
        humantime::parse_duration(&self.idle_warning).map_err(|e| e.to_string())
    }

    /// How long ended sessions stay listed.
    pub fn kept(&self) -> Result<Duration, String> {
        humantime::parse_duration(&self.ended_kept).map_err(|e| e.to_string())
    }
}
