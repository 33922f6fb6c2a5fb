//! VM checks: image path, direct kernel boot paths, CPUs, memory and disk sizes, NICs (bridge,
//! VLAN, MAC), health check (tcp or http only).

use super::{abs_path_problem, check_names, iface_problem, vlan_id_problem, Problems};
use crate::quantity::parse_memory;
use crate::spec::{HealthCheck, Quantity, VmSpec};
use std::collections::HashMap;

const VM_MAX_CPUS: u32 = 256;
const VM_MIN_MEMORY: u64 = 16 << 20;
const VM_MIN_DISK: u64 = 1 << 20;

pub(super) fn check(vms: &[VmSpec], out: &mut Problems) {
    check_names(out, "vms", "VM", vms.iter().map(|v| v.name.as_str()));
    // Lower-case MAC -> the NIC that first used it.
    let mut macs: HashMap<String, String> = HashMap::new();
    for (i, vm) in vms.iter().enumerate() {
        let f = format!("vms[{i}]");
        let image = abs_path_problem("image", &vm.image).or_else(|| {
            vm.image.ends_with('/').then(|| {
                format!(
                    "image {:?} ends with '/'; give the path of the image file",
                    vm.image
                )
            })
        });
        out.check(format!("{f}.image"), image);
        check_boot(vm, &f, out);
        if !(1..=VM_MAX_CPUS).contains(&vm.cpus) {
            out.push(
                format!("{f}.cpus"),
                format!("cpus {} is out of range 1-{VM_MAX_CPUS}", vm.cpus),
            );
        }
        check_size(&vm.memory, VM_MIN_MEMORY, "memory", "16Mi", &f, out);
        if let Some(disk) = &vm.disk {
            check_size(disk, VM_MIN_DISK, "disk", "1Mi", &f, out);
        }
        if let Some(hc) = &vm.healthcheck {
            check_healthcheck(hc, &format!("{f}.healthcheck"), out);
        }
        check_nics(vm, &f, &mut macs, out);
    }
}

/// Direct kernel boot: kernel and initrd paths, cmdline; initrd and cmdline need kernel.
fn check_boot(vm: &VmSpec, f: &str, out: &mut Problems) {
    for (what, v) in [("kernel", &vm.kernel), ("initrd", &vm.initrd)] {
        if let Some(path) = v {
            out.check(format!("{f}.{what}"), abs_path_problem(what, path));
        }
    }
    if vm.kernel.is_none() {
        for (what, set) in [
            ("initrd", vm.initrd.is_some()),
            ("cmdline", vm.cmdline.is_some()),
        ] {
            if set {
                out.push(
                    format!("{f}.{what}"),
                    format!(
                        "{what} needs kernel (direct kernel boot); set kernel or remove {what}"
                    ),
                );
            }
        }
    }
    if let Some(c) = &vm.cmdline {
        if c.contains('\0') || c.contains('\n') || c.len() > 4096 {
            out.push(
                format!("{f}.cmdline"),
                "cmdline must be one line of at most 4096 bytes without NUL".to_string(),
            );
        }
    }
}

/// A container's health check rules, and no exec (it would run inside a container).
fn check_healthcheck(hc: &HealthCheck, hf: &str, out: &mut Problems) {
    super::container::check_healthcheck(hc, hf, out);
    if hc.exec.is_some() {
        out.push(
            format!("{hf}.exec"),
            "exec checks run inside a container; for a VM use tcp or http against the \
             guest's address on its bridge, e.g. tcp: 10.0.0.2:22",
        );
    }
}

/// Each NIC's bridge, VLAN and MAC; MACs unique across the node (`macs`).
fn check_nics(vm: &VmSpec, f: &str, macs: &mut HashMap<String, String>, out: &mut Problems) {
    for (j, nic) in vm.nics.iter().enumerate() {
        let nf = format!("{f}.nics[{j}]");
        out.check(format!("{nf}.bridge"), iface_problem(&nic.bridge));
        if let Some(vlan) = nic.vlan {
            out.check(format!("{nf}.vlan"), vlan_id_problem(vlan));
        }
        if let Some(mac) = &nic.mac {
            let field = format!("{nf}.mac");
            if !out.check(&field, mac_problem(mac)) {
                continue;
            }
            let key = mac.to_ascii_lowercase();
            match macs.get(&key) {
                Some(first) => out.push(
                    field,
                    format!("MAC {mac} is already used by {first}; MACs must be unique"),
                ),
                None => {
                    macs.insert(key, nf);
                }
            }
        }
    }
}

fn check_size(q: &Quantity, min: u64, what: &str, min_text: &str, f: &str, out: &mut Problems) {
    let field = format!("{f}.{what}");
    if let Some(bytes) = out.ok(&field, parse_memory(q)) {
        if bytes < min {
            out.push(
                field,
                format!("{what} {q} is below the {min_text} minimum for a VM"),
            );
        }
    }
}

/// Why `mac` is not a unicast MAC address written `xx:xx:xx:xx:xx:xx`.
fn mac_problem(mac: &str) -> Option<String> {
    let octets: Vec<&str> = mac.split(':').collect();
    let well_formed = octets.len() == 6
        && octets
            .iter()
            .all(|o| o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit()));
    if !well_formed {
        return Some(format!(
            "MAC {mac:?} is not six hex pairs separated by ':', e.g. 52:54:00:12:34:56"
        ));
    }
    let first = octets
        .first()
        .and_then(|o| u8::from_str_radix(o, 16).ok())
        .unwrap_or(0);
    if first & 1 == 1 {
        return Some(format!(
            "MAC {mac} is a multicast address (the low bit of its first octet is set); use a \
             unicast address such as 52:54:00:12:34:56"
        ));
    }
    if octets.iter().all(|o| *o == "00") {
        return Some(format!(
            "MAC {mac} is all zeros; use an address such as 52:54:00:12:34:56"
        ));
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::test_support::{run_table, run_valid};

    const VM: &str =
        "vms:\n  - name: kali\n    image: /var/lib/steward/images/kali.qcow2\n    memory: 2Gi\n";

    fn vm(extra: &str) -> String {
        format!("{VM}{extra}")
    }

    #[test]
    fn vm_rules() {
        let cases: Vec<(String, &str, &str)> = vec![
            ("vms:\n  - {name: a, image: /i.qcow2, memory: 1Gi}\n  - {name: a, image: /i.qcow2, memory: 1Gi}\n".into(), "vms[1].name", "duplicate VM name \"a\": vms[0] already uses it"),
            ("vms:\n  - {name: \"a/b\", image: /i.qcow2, memory: 1Gi}\n".into(), "vms[0].name", "contains '/'"),
            ("vms:\n  - {name: a, image: images/kali.qcow2, memory: 1Gi}\n".into(), "vms[0].image", "is not absolute"),
            ("vms:\n  - {name: a, image: /var/lib/../kali.qcow2, memory: 1Gi}\n".into(), "vms[0].image", "'..'"),
            ("vms:\n  - {name: a, image: /var/lib/images/, memory: 1Gi}\n".into(), "vms[0].image", "ends with '/'"),
            (vm("    cpus: 0\n"), "vms[0].cpus", "cpus 0 is out of range 1-256"),
            (vm("    cpus: 257\n"), "vms[0].cpus", "cpus 257 is out of range 1-256"),
            ("vms:\n  - {name: a, image: /i.qcow2, memory: 8Mi}\n".into(), "vms[0].memory", "memory 8Mi is below the 16Mi minimum"),
            ("vms:\n  - {name: a, image: /i.qcow2, memory: 2GB}\n".into(), "vms[0].memory", "did you mean Gi or G?"),
            (vm("    disk: 512Ki\n"), "vms[0].disk", "disk 512Ki is below the 1Mi minimum"),
            (vm("    disk: big\n"), "vms[0].disk", "not a memory size"),
            (vm("    nics: [{bridge: averyveryverylongname}]\n"), "vms[0].nics[0].bridge", "is 21 bytes; the kernel allows at most 15"),
            (vm("    nics: [{bridge: br0, vlan: 0}]\n"), "vms[0].nics[0].vlan", "VLAN id 0 is out of range 1-4094"),
            (vm("    nics: [{bridge: br0}, {bridge: br0, mac: \"52:54:00:12:34\"}]\n"), "vms[0].nics[1].mac", "not six hex pairs"),
            (vm("    nics: [{bridge: br0, mac: \"52:54:00:12:34:zz\"}]\n"), "vms[0].nics[0].mac", "not six hex pairs"),
            (vm("    nics: [{bridge: br0, mac: \"01:00:5e:00:00:01\"}]\n"), "vms[0].nics[0].mac", "multicast"),
            (vm("    nics: [{bridge: br0, mac: \"00:00:00:00:00:00\"}]\n"), "vms[0].nics[0].mac", "all zeros"),
            (vm("    nics: [{bridge: br0, mac: \"52:54:00:12:34:56\"}, {bridge: br1, mac: \"52:54:00:12:34:56\"}]\n"), "vms[0].nics[1].mac", "already used by vms[0].nics[0]"),
            (vm("    kernel: boot/vmlinuz\n"), "vms[0].kernel", "kernel \"boot/vmlinuz\" is not absolute"),
            (vm("    kernel: /boot/vmlinuz\n    initrd: /boot/../x\n"), "vms[0].initrd", "'..'"),
            (vm("    initrd: /boot/initrd.img\n"), "vms[0].initrd", "initrd needs kernel"),
            (vm("    cmdline: console=ttyS0\n"), "vms[0].cmdline", "cmdline needs kernel"),
            (vm("    healthcheck: {exec: [\"true\"]}\n"), "vms[0].healthcheck.exec", "for a VM use tcp or http"),
            (vm("    healthcheck: {tcp: \"10.0.0.2\"}\n"), "vms[0].healthcheck.tcp", "no port"),
            (vm("    healthcheck: {interval: 5s}\n"), "vms[0].healthcheck", "exactly one of http, tcp or exec"),
        ];
        let cases: Vec<(&str, &str, &str)> =
            cases.iter().map(|(y, f, r)| (y.as_str(), *f, *r)).collect();
        run_table(&cases);
    }

    #[test]
    fn valid_vms() {
        run_valid(&[
            &vm("    cpus: 256\n    disk: 1Mi\n    nics: [{bridge: br0, vlan: 4094, mac: \"52:54:00:AB:cd:01\"}, {bridge: br1}]\n    state: stopped\n    restart: on-failure\n"),
            &vm("    kernel: /boot/vmlinuz\n    initrd: /boot/initrd.img\n    cmdline: console=ttyS0 quiet\n"),
            &vm("    healthcheck: {tcp: \"10.0.0.2:22\", interval: 5s, retries: 2}\n    rollback: false\n"),
            "vms:\n  - {name: a, image: /i.qcow2, memory: 16Mi, cpus: 1}\n  - {name: b, image: /i.qcow2, memory: 16777216}\n",
        ]);
    }
}
