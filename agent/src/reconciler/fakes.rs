//! In-memory fakes of the pass's drivers (unit tests only). Each writes what it was asked into
//! one shared journal, so a test reads the order of a pass's steps; the fake engine keeps its
//! containers and images in memory and lets a test play Docker (a restart count, a health).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ipnet::Ipv4Net;
use steward_proto::{
    ContainerSpec, NodeSpec, PayloadAttestation, ResourceKind, ResourceState, ResourceStatus,
    WorkloadKind, WorkloadRef,
};

use crate::docker::engine::{ContainerEngine, EngineConnector};
use crate::docker::DockerError;
use crate::network::counters::Interfaces;
use crate::network::{NetOutcome, NetworkError, NetworkPhase};
use crate::pass::Pass;
use crate::payload::PayloadPhase;
use crate::reconcile::types::limits;
use crate::reconcile::volumes::{ObservedVolume, SessionVolume};
use crate::reconcile::{Observed, ObservedConfig, ObservedContainer, Policy};
use crate::workload::{PassCx, WorkloadPass, WorkloadPhase};

/// What the fakes were asked, in order.
#[derive(Clone, Default)]
pub struct Journal(Arc<Mutex<Vec<String>>>);

impl Journal {
    pub fn write(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }
    /// Everything written since the last call.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// The drivers a reconciler under test goes through.
pub struct Drivers {
    pub connector: Box<dyn EngineConnector>,
    pub networks: Box<dyn NetworkPhase>,
    pub payloads: Box<dyn PayloadPhase>,
    pub vms: Option<Box<dyn WorkloadPhase>>,
}

/// Host networks: a converged status per bridge of the spec; the reads of workloads' activity
/// counted.
pub struct FakeNetworks(pub Journal, pub AtomicU64);

#[async_trait]
impl NetworkPhase for FakeNetworks {
    async fn reconcile(&mut self, spec: &NodeSpec, _: &Policy, _: &str, _: &Pass) -> NetOutcome {
        self.0.write("networks".into());
        let mut out = NetOutcome::default();
        for b in &spec.networks.bridges {
            out.desired_bridges.insert(b.name.clone());
            out.resources.push(ResourceStatus::new(
                ResourceKind::Network,
                &b.name,
                ResourceState::Converged,
                None,
            ));
        }
        out
    }
    async fn finish(&mut self, _: &mut NetOutcome, _: &Pass) {
        self.0.write("network deletions".into());
    }
    fn force_full_observe(&mut self) {}
    /// Every running workload has moved as many bytes as there were reads so far.
    async fn activity(
        &self,
        wanted: Vec<(WorkloadRef, Interfaces)>,
    ) -> Result<BTreeMap<WorkloadRef, u64>, NetworkError> {
        let n = self.1.fetch_add(1, Ordering::Relaxed) + 1;
        let names: Vec<String> = wanted.iter().map(|(w, _)| w.to_string()).collect();
        self.0.write(format!("activity of {}", names.join(" ")));
        Ok(wanted.into_iter().map(|(w, _)| (w, n)).collect())
    }
}

/// Payloads: "deploys" each new version until the pass is superseded; a changed version
/// asks its `on_change` workloads to restart.
pub struct FakePayloads {
    pub journal: Journal,
    deployed: BTreeMap<String, String>,
    restarts: BTreeSet<WorkloadRef>,
}

impl FakePayloads {
    pub fn new(journal: Journal) -> Self {
        Self {
            journal,
            deployed: BTreeMap::new(),
            restarts: BTreeSet::new(),
        }
    }
}

#[async_trait]
impl PayloadPhase for FakePayloads {
    fn retain_blobs(&mut self, _: BTreeSet<String>) {}
    async fn reconcile(
        &mut self,
        spec: &NodeSpec,
        _: &Policy,
        _: Option<&dyn ContainerEngine>,
        pass: &Pass,
    ) -> Vec<ResourceStatus> {
        let mut out = Vec::new();
        for p in &spec.payloads {
            if pass.superseded().is_some() {
                break;
            }
            let before = self.deployed.insert(p.name.clone(), p.version.clone());
            if before.as_ref() != Some(&p.version) {
                self.journal
                    .write(format!("deploy payload {}@{}", p.name, p.version));
                if before.is_some() {
                    let on_change = p.on_change.iter().flat_map(|o| o.workloads());
                    self.restarts.extend(on_change);
                }
            }
            out.push(ResourceStatus::new(
                ResourceKind::Payload,
                &p.name,
                ResourceState::Converged,
                None,
            ));
        }
        out
    }
    fn take_restarts(&mut self) -> BTreeSet<WorkloadRef> {
        std::mem::take(&mut self.restarts)
    }
    fn attestations(&self) -> Vec<PayloadAttestation> {
        Vec::new()
    }
}

/// VMs: converged as asked, one by one until the pass is superseded.
pub struct FakeVms(pub Journal);

#[async_trait]
impl WorkloadPhase for FakeVms {
    fn kind(&self) -> WorkloadKind {
        WorkloadKind::Vm
    }
    async fn restart(&mut self, name: &str, _: &mut PassCx<'_>) -> Result<(), String> {
        self.0.write(format!("restart vm {name}"));
        Ok(())
    }
    async fn reconcile(&mut self, cx: &mut PassCx<'_>) -> WorkloadPass {
        let statuses = (cx.spec.vms.iter())
            .take_while(|_| cx.pass.superseded().is_none())
            .map(|v| {
                self.0.write(format!("vm {}", v.name));
                ResourceStatus::new(ResourceKind::Vm, &v.name, ResourceState::Converged, None)
            })
            .collect();
        WorkloadPass {
            statuses,
            ..Default::default()
        }
    }
    fn next_probe_in(&self, _: &NodeSpec) -> Option<Duration> {
        None
    }
}

/// What the fake engine holds.
#[derive(Default)]
pub struct Engine {
    pub containers: BTreeMap<String, ObservedContainer>,
    pub images: BTreeSet<String>,
    /// Containers made from these images report `unhealthy`, others `healthy`.
    pub unhealthy_images: BTreeSet<String>,
    /// Volumes by name (`in_use` computed from `mounts` when observed).
    pub volumes: BTreeMap<String, ObservedVolume>,
    /// The named volumes each container mounts.
    pub mounts: BTreeMap<String, Vec<String>>,
    next_id: u32,
}

impl Engine {
    fn in_use(&self, volume: &str) -> bool {
        self.mounts.values().flatten().any(|v| v == volume)
    }
}

/// A container engine in memory.
#[derive(Clone, Default)]
pub struct FakeEngine {
    pub journal: Journal,
    pub state: Arc<Mutex<Engine>>,
    /// While set, connecting fails (the engine is down).
    pub offline: Arc<AtomicBool>,
}

impl FakeEngine {
    fn by_id(&self, id: &str, verb: &str, f: impl FnOnce(&mut ObservedContainer)) {
        let mut st = self.state.lock().unwrap();
        if let Some(c) = st.containers.values_mut().find(|c| c.id == id) {
            self.journal.write(format!("{verb} {}", c.name));
            f(c);
        }
    }
}

#[async_trait]
impl ContainerEngine for FakeEngine {
    async fn observe(&self) -> Result<Observed, DockerError> {
        if self.offline.load(Ordering::SeqCst) {
            return Err(DockerError::Connect {
                socket: "/fake/docker.sock".into(),
                reason: "the fake engine is offline".into(),
            });
        }
        let st = self.state.lock().unwrap();
        Ok(Observed {
            containers: st.containers.values().cloned().collect(),
            images: st.images.clone(),
        })
    }
    async fn pull(&self, image: &str) -> Result<(), DockerError> {
        self.journal.write(format!("pull {image}"));
        self.state.lock().unwrap().images.insert(image.to_string());
        Ok(())
    }
    async fn create_and_start(
        &self,
        spec: &ContainerSpec,
        hash: &str,
        node_id: &str,
        _: Option<IpAddr>,
    ) -> Result<(), DockerError> {
        self.journal
            .write(format!("create {} {}", spec.name, spec.image));
        let mut st = self.state.lock().unwrap();
        st.next_id += 1;
        let (memory, nano_cpus) = limits(spec);
        let health = match st.unhealthy_images.contains(&spec.image) {
            true => "unhealthy",
            false => "healthy",
        };
        let c = ObservedContainer {
            id: format!("id{}", st.next_id),
            name: spec.name.clone(),
            managed: true,
            steward_name: Some(spec.name.clone()),
            spec_hash: Some(hash.to_string()),
            node: Some(node_id.to_string()),
            running: true,
            state: "running".into(),
            exit_code: None,
            restart_count: 0,
            health: Some(health.into()),
            pid: None,
            addresses: Vec::new(),
            config: ObservedConfig {
                image: spec.image.clone(),
                memory,
                nano_cpus,
                privileged: spec.privileged,
            },
        };
        st.containers.insert(spec.name.clone(), c);
        let named = spec.volumes.iter().filter_map(|v| {
            let source = v.split(':').next()?;
            (!source.starts_with('/')).then(|| source.to_string())
        });
        st.mounts.insert(spec.name.clone(), named.collect());
        Ok(())
    }
    async fn start(&self, id: &str) -> Result<(), DockerError> {
        self.by_id(id, "start", |c| c.running = true);
        Ok(())
    }
    async fn restart(&self, id: &str) -> Result<(), DockerError> {
        self.by_id(id, "restart", |c| c.running = true);
        Ok(())
    }
    async fn restart_managed(&self, name: &str, _: &str) -> Result<bool, DockerError> {
        let id = self
            .state
            .lock()
            .unwrap()
            .containers
            .get(name)
            .map(|c| c.id.clone());
        match id {
            Some(id) => self.restart(&id).await.map(|_| true),
            None => Ok(false),
        }
    }
    async fn stop(&self, id: &str) -> Result<(), DockerError> {
        self.by_id(id, "stop", |c| {
            c.running = false;
            c.state = "exited".into();
        });
        Ok(())
    }
    async fn remove(&self, id: &str) -> Result<(), DockerError> {
        self.by_id(id, "remove", |_| {});
        let mut st = self.state.lock().unwrap();
        let gone: Vec<String> = (st.containers.values())
            .filter(|c| c.id == id)
            .map(|c| c.name.clone())
            .collect();
        st.containers.retain(|_, c| c.id != id);
        for name in gone {
            st.mounts.remove(&name);
        }
        Ok(())
    }
    async fn ensure_bridge_network(
        &self,
        bridge: &str,
        _: Ipv4Net,
        _: Ipv4Addr,
        _: &str,
    ) -> Result<(), DockerError> {
        self.journal.write(format!("docker network {bridge}"));
        Ok(())
    }
    async fn remove_bridge_network(&self, bridge: &str) -> Result<(), DockerError> {
        self.journal
            .write(format!("remove docker network {bridge}"));
        Ok(())
    }
    async fn observe_volumes(&self) -> Result<Vec<ObservedVolume>, DockerError> {
        let st = self.state.lock().unwrap();
        let seen = st.volumes.values().map(|v| ObservedVolume {
            in_use: st.in_use(&v.name),
            ..v.clone()
        });
        Ok(seen.collect())
    }
    async fn create_volume(&self, v: &SessionVolume, node_id: &str) -> Result<(), DockerError> {
        self.journal
            .write(format!("create volume {} {}", v.name, v.session));
        let seen = ObservedVolume {
            name: v.name.clone(),
            managed: true,
            node: Some(node_id.to_string()),
            session: Some(v.session.clone()),
            keep: v.keep,
            in_use: false,
        };
        let mut st = self.state.lock().unwrap();
        st.volumes.insert(v.name.clone(), seen);
        Ok(())
    }
    async fn remove_volume(&self, name: &str) -> Result<bool, DockerError> {
        let mut st = self.state.lock().unwrap();
        if st.in_use(name) {
            return Ok(false);
        }
        self.journal.write(format!("remove volume {name}"));
        st.volumes.remove(name);
        Ok(true)
    }
}

#[async_trait]
impl EngineConnector for FakeEngine {
    async fn connect(&self) -> Result<Arc<dyn ContainerEngine>, String> {
        if self.offline.load(Ordering::SeqCst) {
            return Err("Docker engine unreachable: the fake engine is offline".into());
        }
        Ok(Arc::new(self.clone()))
    }
}
