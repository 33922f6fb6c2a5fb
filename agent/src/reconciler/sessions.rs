//! Session expiry in a pass: the spec the agent holds (from the registry, its stored copy or a
//! spec file) without the sessions whose lease has run out by the agent's clock
//! (`reconcile::leases`), so the ordinary plan and apply remove their containers, VMs and
//! volumes. This is the one destructive act the agent takes without the registry: a lease is
//! the registry's own word that the session ends at its deadline, so it holds offline too.

use chrono::{DateTime, Utc};
use steward_proto::NodeSpec;
use tracing::info;

use super::Reconciler;
use crate::reconcile::leases::{expired, without_expired};

impl Reconciler {
    /// `spec` without its sessions expired at `now`; logs each newly expired session once.
    pub(super) fn unexpired(&mut self, spec: &NodeSpec, now: DateTime<Utc>) -> NodeSpec {
        let gone = expired(spec, now);
        for lease in gone.iter().filter(|l| !self.expired.contains(&l.id)) {
            let of = |s: &Option<String>| s.as_deref() == Some(lease.id.as_str());
            let containers = spec.containers.iter().filter(|c| of(&c.session)).count();
            let vms = spec.vms.iter().filter(|v| of(&v.session)).count();
            info!(
                session = %lease.id,
                expires_at = %lease.expires_at.to_rfc3339(),
                containers,
                vms,
                volumes = ?lease.volumes,
                keep_volumes = lease.keep_volumes,
                "session expired: removing its workloads and volumes (by the agent's clock, registry or not)"
            );
        }
        // Only sessions still in the spec are remembered: the set never outgrows it.
        self.expired = gone.iter().map(|l| l.id.clone()).collect();
        without_expired(spec, now)
    }
}
