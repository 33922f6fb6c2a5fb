//! What the agent knows about its host: the facts reported at enrolment ([`collect_facts`]),
//! the kind of machine ([`detect_kind`]) and the small statistics sent with every heartbeat
//! ([`StatsSampler`]).
//!
//! Everything here reads `/proc`, `/sys` and `/etc` (through `sysinfo`, `nix` and plain file
//! reads); nothing needs root, and whatever cannot be read is reported as unknown rather than
//! failing.

use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};
use steward_proto::{DiskFact, HostStats, NodeFacts, NodeKind};
use sysinfo::{CpuRefreshKind, Disks, MemoryRefreshKind, RefreshKind, System};

/// Where the machine id is looked up, in order.
const MACHINE_ID_FILES: [&str; 2] = ["/etc/machine-id", "/var/lib/dbus/machine-id"];

/// Collects the facts reported at enrolment.
///
/// `docker_version` is the Docker engine's version when the agent could talk to it (`docker` is
/// `true` exactly then).
///
/// The machine id comes from `/etc/machine-id`, else `/var/lib/dbus/machine-id`. When neither
/// exists (minimal containers, some embedded systems) a stable id is derived from the hostname
/// (`sha256("steward-hostname:" + hostname)`, first 32 hex digits, the shape of a machine-id)
/// and nothing is written: such a node keeps its identity only while its hostname stays the
/// same, and two machines with the same hostname would share one node.
pub fn collect_facts(agent_version: &str, docker_version: Option<String>) -> NodeFacts {
    let hostname = hostname();
    let machine_id = machine_id_from_files(&MACHINE_ID_FILES)
        .unwrap_or_else(|| machine_id_from_hostname(&hostname));

    let mut sys = System::new_with_specifics(
        RefreshKind::nothing()
            .with_cpu(CpuRefreshKind::nothing())
            .with_memory(MemoryRefreshKind::nothing().with_ram()),
    );
    sys.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
    let cpus = match sys.cpus().len() {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        n => n,
    };
    let cpu_model = sys
        .cpus()
        .iter()
        .map(|c| c.brand().trim())
        .find(|b| !b.is_empty())
        .map(str::to_string)
        .or_else(cpu_model_from_cpuinfo)
        .unwrap_or_default();

    let (kernel, arch) = match nix::sys::utsname::uname() {
        Ok(u) => (
            u.release().to_string_lossy().into_owned(),
            u.machine().to_string_lossy().into_owned(),
        ),
        Err(_) => (
            System::kernel_version().unwrap_or_default(),
            std::env::consts::ARCH.to_string(),
        ),
    };

    NodeFacts {
        machine_id,
        hostname,
        kind: detect_kind(&gather_kind_evidence()),
        os: os_pretty_name(),
        kernel,
        arch,
        cpu_model,
        cpus: u32::try_from(cpus).unwrap_or(u32::MAX),
        memory_bytes: sys.total_memory(),
        disks: disks(),
        docker: docker_version.is_some(),
        docker_version,
        kvm: kvm_available(),
        agent_version: agent_version.to_string(),
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .map(|h| h.to_string_lossy().trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(System::host_name)
        .unwrap_or_else(|| "localhost".to_string())
}

/// The first non-empty id among `files`.
fn machine_id_from_files(files: &[&str]) -> Option<String> {
    files.iter().find_map(|f| {
        std::fs::read_to_string(f)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    })
}

/// A machine-id-shaped (32 hex digits) id derived from the hostname; see [`collect_facts`].
fn machine_id_from_hostname(hostname: &str) -> String {
    let digest = Sha256::digest(format!("steward-hostname:{hostname}").as_bytes());
    hex::encode(&digest[..16])
}

/// `PRETTY_NAME` from `/etc/os-release` (or `/usr/lib/os-release`), else sysinfo's name.
fn os_pretty_name() -> String {
    ["/etc/os-release", "/usr/lib/os-release"]
        .iter()
        .find_map(|f| std::fs::read_to_string(f).ok())
        .and_then(|text| parse_os_release(&text))
        .or_else(System::long_os_version)
        .unwrap_or_else(|| "unknown".to_string())
}

/// `PRETTY_NAME`, else `NAME VERSION`, from the text of an os-release file.
fn parse_os_release(text: &str) -> Option<String> {
    let get = |key: &str| {
        text.lines().find_map(|l| {
            let v = l.trim().strip_prefix(key)?.strip_prefix('=')?;
            let v = v.trim().trim_matches('"').trim_matches('\'').trim();
            (!v.is_empty()).then(|| v.to_string())
        })
    };
    get("PRETTY_NAME").or_else(|| match (get("NAME"), get("VERSION")) {
        (Some(n), Some(v)) => Some(format!("{n} {v}")),
        (n, _) => n,
    })
}

fn cpu_model_from_cpuinfo() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        let k = k.trim();
        let v = v.trim();
        (matches!(k, "model name" | "Model" | "cpu model" | "Hardware") && !v.is_empty())
            .then(|| v.to_string())
    })
}

/// File system types that are not disks: kernel interfaces, memory-backed file systems, image
/// mounts (snaps) and FUSE helpers. Skipped in [`NodeFacts::disks`].
const PSEUDO_FILESYSTEMS: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fusectl",
    "hugetlbfs",
    "iso9660",
    "mqueue",
    "nsfs",
    "proc",
    "pstore",
    "ramfs",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "sysfs",
    "tmpfs",
    "tracefs",
];

/// Directories whose mounts belong to container engines and network namespaces (a
/// container's root file system, its bind mounts, its namespace files), not to the host's
/// disks. A disk mounted *at* one of them (say `/var/lib/docker`) is still a disk.
const CONTAINER_DIRS: &[&str] = &[
    "/var/lib/docker",
    "/run/docker",
    "/var/run/docker",
    "/var/lib/containerd",
    "/run/containerd",
    "/var/lib/containers",
    "/run/containers",
    "/var/lib/kubelet/pods",
];

/// Directories holding nothing but namespace and runtime mounts, skipped with their mounts.
const RUNTIME_DIRS: &[&str] = &["/proc", "/sys", "/dev", "/run/netns", "/var/run/netns"];

/// Union file systems of container images: a container's root, not a disk (except the root of
/// a host that itself runs in a container, which is the disk the agent has).
const UNION_FILESYSTEMS: &[&str] = &["overlay", "aufs", "fuse-overlayfs"];

fn is_pseudo_filesystem(fs: &str, mount_point: &str) -> bool {
    let under = |dir: &&str| mount_point.starts_with(&format!("{dir}/"));
    PSEUDO_FILESYSTEMS.contains(&fs)
        || fs.starts_with("fuse.")
        || (UNION_FILESYSTEMS.contains(&fs) && mount_point != "/")
        || RUNTIME_DIRS.iter().any(|p| mount_point == *p || under(p))
        || CONTAINER_DIRS.iter().any(under)
}

/// Mounted disks with their sizes, pseudo file systems left out, sorted by mount point.
fn disks() -> Vec<DiskFact> {
    let list = Disks::new_with_refreshed_list();
    let mut out: Vec<DiskFact> = Vec::new();
    for d in list.list() {
        let fs = d.file_system().to_string_lossy();
        let mount_point = d.mount_point().to_string_lossy().into_owned();
        // Files bind-mounted into containers (/etc/hosts, /etc/resolv.conf) are not disks.
        if d.total_space() == 0
            || is_pseudo_filesystem(&fs, &mount_point)
            || !d.mount_point().is_dir()
        {
            continue;
        }
        if out.iter().any(|o| o.mount_point == mount_point) {
            continue;
        }
        out.push(DiskFact {
            mount_point,
            total_bytes: d.total_space(),
            available_bytes: d.available_space(),
        });
    }
    out.sort_by(|a, b| a.mount_point.cmp(&b.mount_point));
    out
}

/// What [`detect_kind`] decides from; gathered by [`gather_kind_evidence`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KindEvidence {
    /// `/.dockerenv` exists.
    pub dockerenv: bool,
    /// `/run/.containerenv` exists (podman).
    pub containerenv: bool,
    /// Value of `container=` in `/proc/1/environ` (systemd's convention, set by LXC, nspawn,
    /// podman...). `None` when absent or unreadable (reading it needs root).
    pub pid1_container_env: Option<String>,
    /// `/sys/class/dmi/id/sys_vendor`.
    pub dmi_vendor: Option<String>,
    /// `/sys/class/dmi/id/product_name`.
    pub dmi_product: Option<String>,
    /// The `hypervisor` CPU flag is in `/proc/cpuinfo`.
    pub hypervisor_cpu_flag: bool,
}

/// Substrings of the DMI vendor or product name (lower-cased) that name a hypervisor.
const HYPERVISOR_DMI: &[&str] = &[
    "qemu",
    "kvm",
    "vmware",
    "virtualbox",
    "innotek",
    "bochs",
    "bhyve",
    "parallels",
    "openstack",
    "google compute engine",
    "hvm domu",
    "rhev hypervisor",
    "nutanix ahv",
    "cloud hypervisor",
    "droplet",
    "vserver",
    "virtual machine",
];

/// Whether the DMI vendor/product pair names a virtual machine.
fn dmi_names_hypervisor(vendor: &str, product: &str) -> bool {
    let vendor = vendor.trim().to_ascii_lowercase();
    let product = product.trim().to_ascii_lowercase();
    if vendor.contains("amazon ec2") {
        // EC2 bare-metal instances (`*.metal`) carry the same vendor.
        return !product.ends_with(".metal");
    }
    if vendor == "xen" {
        return true;
    }
    if vendor.starts_with("microsoft") {
        // Hyper-V / Azure say "Virtual Machine"; Surface laptops say "Surface ...".
        return product.contains("virtual machine");
    }
    HYPERVISOR_DMI
        .iter()
        .any(|h| vendor.contains(h) || product.contains(h))
}

/// Container when `/.dockerenv`, `/run/.containerenv` or `container=` in PID 1's environment
/// says so; else VM when the DMI vendor/product names a hypervisor or the CPU has the
/// `hypervisor` flag; else bare metal.
pub fn detect_kind(e: &KindEvidence) -> NodeKind {
    let pid1_container = e
        .pid1_container_env
        .as_deref()
        .is_some_and(|v| !v.trim().is_empty());
    if e.dockerenv || e.containerenv || pid1_container {
        return NodeKind::Container;
    }
    let vendor = e.dmi_vendor.as_deref().unwrap_or("");
    let product = e.dmi_product.as_deref().unwrap_or("");
    if dmi_names_hypervisor(vendor, product) || e.hypervisor_cpu_flag {
        return NodeKind::Vm;
    }
    NodeKind::BareMetal
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Reads the files [`detect_kind`] looks at; whatever cannot be read counts as absent.
pub fn gather_kind_evidence() -> KindEvidence {
    let pid1_container_env = std::fs::read("/proc/1/environ").ok().and_then(|env| {
        env.split(|b| *b == 0).find_map(|var| {
            var.strip_prefix(b"container=")
                .map(|v| String::from_utf8_lossy(v).into_owned())
        })
    });
    let hypervisor_cpu_flag = std::fs::read_to_string("/proc/cpuinfo")
        .map(|text| {
            text.lines()
                .filter_map(|l| l.split_once(':'))
                .filter(|(k, _)| k.trim() == "flags")
                .any(|(_, v)| v.split_whitespace().any(|f| f == "hypervisor"))
        })
        .unwrap_or(false);
    KindEvidence {
        dockerenv: Path::new("/.dockerenv").exists(),
        containerenv: Path::new("/run/.containerenv").exists(),
        pid1_container_env,
        dmi_vendor: read_trimmed("/sys/class/dmi/id/sys_vendor"),
        dmi_product: read_trimmed("/sys/class/dmi/id/product_name"),
        hypervisor_cpu_flag,
    }
}

/// `/dev/kvm` exists and this process may open it read-write.
pub fn kvm_available() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Samples [`HostStats`] once per heartbeat.
///
/// Keeps one `sysinfo::System` that only ever refreshes CPU usage and RAM (no process table,
/// no disks), so a sample costs a few small `/proc` reads. CPU usage is the average since the
/// previous sample; the first sample taken less than `sysinfo::MINIMUM_CPU_UPDATE_INTERVAL`
/// (200 ms) after [`StatsSampler::new`] reports the value sysinfo had then (0).
pub struct StatsSampler {
    sys: System,
    data_dir: PathBuf,
    last_cpu_refresh: Instant,
    cpu_percent: f32,
}

impl std::fmt::Debug for StatsSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsSampler")
            .field("data_dir", &self.data_dir)
            .field("cpu_percent", &self.cpu_percent)
            .finish_non_exhaustive()
    }
}

impl StatsSampler {
    /// A sampler reporting the file system holding `data_dir` (or its nearest existing
    /// ancestor, while it does not exist yet).
    pub fn new(data_dir: &Path) -> Self {
        let mut sys = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_cpu_usage())
                .with_memory(MemoryRefreshKind::nothing().with_ram()),
        );
        sys.refresh_cpu_usage();
        StatsSampler {
            sys,
            data_dir: data_dir.to_path_buf(),
            last_cpu_refresh: Instant::now(),
            cpu_percent: 0.0,
        }
    }

    /// Current statistics.
    pub fn sample(&mut self) -> HostStats {
        if self.last_cpu_refresh.elapsed() >= sysinfo::MINIMUM_CPU_UPDATE_INTERVAL {
            self.sys.refresh_cpu_usage();
            self.last_cpu_refresh = Instant::now();
            let usage = self.sys.global_cpu_usage();
            self.cpu_percent = if usage.is_finite() {
                usage.clamp(0.0, 100.0)
            } else {
                0.0
            };
        }
        self.sys
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let load = System::load_average();
        let (data_dir_used_bytes, data_dir_total_bytes) =
            fs_usage(&self.data_dir).unwrap_or((0, 0));
        HostStats {
            cpu_percent: self.cpu_percent,
            load1: load.one as f32,
            load5: load.five as f32,
            load15: load.fifteen as f32,
            memory_used_bytes: self.sys.used_memory(),
            memory_total_bytes: self.sys.total_memory(),
            data_dir_used_bytes,
            data_dir_total_bytes,
            uptime_secs: System::uptime(),
        }
    }
}

/// (used, total) bytes of the file system holding `path` or its nearest existing ancestor.
// The block counts are u32 on some 32-bit targets.
#[allow(clippy::useless_conversion)]
fn fs_usage(path: &Path) -> Option<(u64, u64)> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let st = nix::sys::statvfs::statvfs(existing).ok()?;
    let frsize = u64::from(st.fragment_size()).max(1);
    let total = u64::from(st.blocks()).saturating_mul(frsize);
    let free = u64::from(st.blocks_free()).saturating_mul(frsize);
    Some((total.saturating_sub(free), total))
}

#[cfg(test)]
#[path = "facts_tests.rs"]
mod tests;
