//! Facts, kind detection and statistics, against fixtures and this host.
#![allow(clippy::unwrap_used)]

use super::*;

fn ev() -> KindEvidence {
    KindEvidence::default()
}

fn dmi(vendor: &str, product: &str) -> KindEvidence {
    KindEvidence {
        dmi_vendor: Some(vendor.into()),
        dmi_product: Some(product.into()),
        ..ev()
    }
}

#[test]
fn detect_kind_table() {
    use NodeKind::*;
    let cases: Vec<(&str, KindEvidence, NodeKind)> = vec![
        ("nothing", ev(), BareMetal),
        (
            "docker",
            KindEvidence {
                dockerenv: true,
                ..ev()
            },
            Container,
        ),
        (
            "podman",
            KindEvidence {
                containerenv: true,
                ..ev()
            },
            Container,
        ),
        (
            "lxc via pid 1",
            KindEvidence {
                pid1_container_env: Some("lxc".into()),
                ..ev()
            },
            Container,
        ),
        (
            "empty container=",
            KindEvidence {
                pid1_container_env: Some(String::new()),
                ..ev()
            },
            BareMetal,
        ),
        (
            "container inside a VM is a container",
            KindEvidence {
                dockerenv: true,
                hypervisor_cpu_flag: true,
                ..dmi("QEMU", "Standard PC (Q35 + ICH9, 2009)")
            },
            Container,
        ),
        ("qemu", dmi("QEMU", "Standard PC (i440FX + PIIX, 1996)"), Vm),
        ("kvm product", dmi("Red Hat", "KVM"), Vm),
        ("vmware", dmi("VMware, Inc.", "VMware Virtual Platform"), Vm),
        ("virtualbox", dmi("innotek GmbH", "VirtualBox"), Vm),
        ("xen", dmi("Xen", "HVM domU"), Vm),
        (
            "hyper-v",
            dmi("Microsoft Corporation", "Virtual Machine"),
            Vm,
        ),
        (
            "surface laptop",
            dmi("Microsoft Corporation", "Surface Laptop 4"),
            BareMetal,
        ),
        ("ec2", dmi("Amazon EC2", "m5.large"), Vm),
        ("ec2 metal", dmi("Amazon EC2", "m5.metal"), BareMetal),
        ("gce", dmi("Google", "Google Compute Engine"), Vm),
        (
            "parallels",
            dmi(
                "Parallels Software International Inc.",
                "Parallels Virtual Platform",
            ),
            Vm,
        ),
        ("bhyve", dmi("BHYVE", "BHYVE"), Vm),
        (
            "openstack",
            dmi("OpenStack Foundation", "OpenStack Nova"),
            Vm,
        ),
        ("dell", dmi("Dell Inc.", "PowerEdge R740"), BareMetal),
        ("supermicro", dmi("Supermicro", "Super Server"), BareMetal),
        (
            "hypervisor flag only",
            KindEvidence {
                hypervisor_cpu_flag: true,
                ..ev()
            },
            Vm,
        ),
        (
            "hypervisor flag on physical-looking DMI",
            KindEvidence {
                hypervisor_cpu_flag: true,
                ..dmi("Dell Inc.", "PowerEdge R740")
            },
            Vm,
        ),
    ];
    for (name, e, want) in cases {
        assert_eq!(detect_kind(&e), want, "{name}: {e:?}");
    }
}

#[test]
fn os_release_parsing() {
    assert_eq!(
        parse_os_release(
            "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n"
        )
        .as_deref(),
        Some("Debian GNU/Linux 12 (bookworm)")
    );
    assert_eq!(
        parse_os_release("NAME=Alpine\nVERSION=3.20\n").as_deref(),
        Some("Alpine 3.20")
    );
    assert_eq!(parse_os_release("ID=x\n"), None);
}

#[test]
fn machine_id_fallbacks() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    let real = dir.path().join("real");
    std::fs::write(&empty, "\n").unwrap();
    std::fs::write(&real, "0123456789abcdef0123456789abcdef\n").unwrap();
    let missing = dir.path().join("missing");
    let files = [
        missing.to_str().unwrap(),
        empty.to_str().unwrap(),
        real.to_str().unwrap(),
    ];
    assert_eq!(
        machine_id_from_files(&files).as_deref(),
        Some("0123456789abcdef0123456789abcdef")
    );
    assert_eq!(machine_id_from_files(&files[..2]), None);
    let a = machine_id_from_hostname("web-1");
    assert_eq!(a, machine_id_from_hostname("web-1"));
    assert_ne!(a, machine_id_from_hostname("web-2"));
    assert_eq!(a.len(), 32);
}

#[test]
fn pseudo_and_container_filesystems_are_skipped() {
    // (file system, mount point, a disk?)
    let cases = [
        ("tmpfs", "/dev/shm", false),
        ("tmpfs", "/run", false),
        ("devtmpfs", "/dev", false),
        ("squashfs", "/snap/core/1", false),
        ("proc", "/proc", false),
        ("sysfs", "/sys", false),
        ("cgroup2", "/sys/fs/cgroup", false),
        ("fuse.lxcfs", "/proc/cpuinfo", false),
        ("overlay", "/var/lib/docker/overlay2/0a1b/merged", false),
        (
            "overlay",
            "/var/lib/containers/storage/overlay/0a1b/merged",
            false,
        ),
        ("overlay", "/mnt/overlay", false),
        ("nsfs", "/run/docker/netns/3c2d1e", false),
        ("ext4", "/run/netns", false),
        ("nsfs", "/run/netns/lab", false),
        ("ext4", "/var/lib/docker/containers/0a1b/mounts/shm", false),
        ("xfs", "/var/lib/docker/volumes/data/_data", false),
        ("ext4", "/var/lib/kubelet/pods/p1/volumes/v", false),
        ("ext4", "/run/media/usb", true),
        ("ext4", "/", true),
        ("xfs", "/var/lib/docker", true),
        ("ext4", "/var/lib/containerd", true),
        ("btrfs", "/home", true),
        ("overlay", "/", true),
    ];
    for (fs, mount_point, disk) in cases {
        assert_eq!(
            !is_pseudo_filesystem(fs, mount_point),
            disk,
            "{fs} on {mount_point}"
        );
    }
}

#[test]
fn collect_facts_on_this_machine() {
    let f = collect_facts("9.9.9", Some("27.0.1".into()));
    assert!(!f.machine_id.is_empty());
    assert!(!f.hostname.is_empty());
    assert!(!f.kernel.is_empty());
    assert!(!f.arch.is_empty());
    assert!(!f.os.is_empty());
    assert!(f.cpus >= 1);
    assert!(f.memory_bytes > 0);
    assert!(f.docker);
    assert_eq!(f.docker_version.as_deref(), Some("27.0.1"));
    assert_eq!(f.agent_version, "9.9.9");
    assert_ne!(f.kind, NodeKind::Unknown);
    for d in &f.disks {
        assert!(
            d.total_bytes > 0 && d.available_bytes <= d.total_bytes,
            "{d:?}"
        );
    }
    let g = collect_facts("9.9.9", None);
    assert!(!g.docker);
    assert_eq!(g.machine_id, f.machine_id, "the machine id is stable");
}

#[test]
fn sample_returns_sane_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = StatsSampler::new(&dir.path().join("not-yet-created"));
    std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
    let a = s.sample();
    let b = s.sample();
    for st in [&a, &b] {
        assert!((0.0..=100.0).contains(&st.cpu_percent), "{st:?}");
        assert!(
            st.load1 >= 0.0 && st.load5 >= 0.0 && st.load15 >= 0.0,
            "{st:?}"
        );
        assert!(st.memory_total_bytes > 0, "{st:?}");
        assert!(st.memory_used_bytes <= st.memory_total_bytes, "{st:?}");
        assert!(st.data_dir_total_bytes > 0, "{st:?}");
        assert!(st.data_dir_used_bytes <= st.data_dir_total_bytes, "{st:?}");
        assert!(st.uptime_secs > 0, "{st:?}");
    }
}
