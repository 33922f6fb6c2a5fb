//! From a `VmSpec` to what QEMU's command line needs ([`Launch`]): memory in MiB, tap names,
//! MACs (given, or derived stably from node, VM and NIC index), boot, cloud-init files (with a
//! `network-config` from the NICs' lab leases unless the spec gives one). Pure.

use steward_proto::quantity::parse_memory;
use steward_proto::VmSpec;

use std::collections::BTreeMap;

use super::driver::{Launch, LaunchNic};
use super::{netconf, seed, tap};
use crate::network::NicLease;

/// The MAC of NIC `index` of VM `vm` on `node`: QEMU's 52:54:00 prefix and three bytes of a
/// hash, stable across restarts and agents.
pub fn derive_mac(node: &str, vm: &str, index: usize) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(format!("{node}\0{vm}\0{index}").as_bytes());
    format!("52:54:00:{:02x}:{:02x}:{:02x}", h[0], h[1], h[2])
}

/// What QEMU's command line needs for `vm` on `node`, its NICs' lab `leases` (by NIC index)
/// going into its `network-config`.
pub fn launch(
    vm: &VmSpec,
    node: &str,
    leases: Option<&BTreeMap<usize, NicLease>>,
) -> Result<Launch, String> {
    let memory = parse_memory(&vm.memory).map_err(|e| format!("memory: {e}"))?;
    let nics: Vec<LaunchNic> = vm
        .nics
        .iter()
        .enumerate()
        .map(|(i, n)| LaunchNic {
            tap: tap::tap_name(node, &vm.name, i),
            bridge: n.bridge.clone(),
            vlan: n.vlan,
            mac: n
                .mac
                .clone()
                .map(|m| m.to_ascii_lowercase())
                .unwrap_or_else(|| derive_mac(node, &vm.name, i)),
        })
        .collect();
    let with_leases: Vec<(&str, Option<&NicLease>)> = (nics.iter().enumerate())
        .map(|(i, n)| (n.mac.as_str(), leases.and_then(|l| l.get(&i))))
        .collect();
    let generated = netconf::network_config(&with_leases);
    Ok(Launch {
        name: vm.name.clone(),
        cpus: vm.cpus,
        memory_mib: memory.div_ceil(1 << 20),
        nics,
        kernel: vm.kernel.clone(),
        initrd: vm.initrd.clone(),
        cmdline: vm.cmdline.clone(),
        seed: seed::files(&vm.name, vm.cloud_init.as_ref(), generated)
            .into_iter()
            .map(|(n, c)| (n.to_string(), c))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::driver::{self, VmPaths};
    use std::path::PathBuf;

    #[test]
    fn macs_are_stable_unicast_and_per_nic() {
        let a = derive_mac("n1", "vm", 0);
        assert_eq!(a, derive_mac("n1", "vm", 0));
        assert!(a.starts_with("52:54:00:"), "{a}");
        assert_ne!(a, derive_mac("n1", "vm", 1));
        assert_ne!(a, derive_mac("n2", "vm", 0));
    }

    #[test]
    fn launch_hash_follows_cpus_and_memory_not_power_state() {
        let mut vm: VmSpec = serde_norway::from_str(
            "{name: a, image: /i.qcow2, memory: 256Mi, nics: [{bridge: br0}]}",
        )
        .unwrap();
        let h = launch(&vm, "n", None).unwrap().hash();
        assert_eq!(launch(&vm, "n", None).unwrap().memory_mib, 256);
        vm.state = steward_proto::PowerState::Stopped;
        assert_eq!(launch(&vm, "n", None).unwrap().hash(), h);
        vm.cpus = 2;
        assert_ne!(launch(&vm, "n", None).unwrap().hash(), h);
        vm.cpus = 1;
        vm.memory = steward_proto::Quantity::Text("512Mi".into());
        assert_ne!(launch(&vm, "n", None).unwrap().hash(), h);
    }

    #[test]
    fn qemu_args_carry_the_detached_layout() {
        let vm: VmSpec = serde_norway::from_str(
            "{name: a, image: /i.qcow2, memory: 256Mi, cpus: 2, nics: [{bridge: br0, mac: \"52:54:00:AA:00:01\"}], kernel: /k, initrd: /i, cmdline: console=ttyS0}",
        )
        .unwrap();
        let l = launch(&vm, "n", None).unwrap();
        let p = VmPaths::new(PathBuf::from("/v/a"));
        let args = driver::qemu_args(&p, &l, "tcg").join(" ");
        for want in [
            "-daemonize",
            "-pidfile /v/a/qemu.pid",
            "-qmp unix:/v/a/qmp.sock,server=on,wait=off",
            "-serial file:/v/a/serial.log",
            "-accel tcg",
            "-smp 2 -m 256M",
            "file=/v/a/disk.qcow2,if=virtio,format=qcow2",
            "file=/v/a/seed.img,if=virtio,format=raw,readonly=on",
            "mac=52:54:00:aa:00:01",
            "-kernel /k -initrd /i -append console=ttyS0",
        ] {
            assert!(args.contains(want), "{want} not in {args}");
        }
        assert!(!args.contains("-cpu host"));
        assert!(driver::qemu_args(&p, &l, "kvm")
            .join(" ")
            .contains("-accel kvm -cpu host"));
    }
}
