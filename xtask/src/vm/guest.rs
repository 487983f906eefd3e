//! The two guests of `vm-test` and what each is made of.
//!
//! - `stock`: Debian 12's own 6.1 kernel on the host's QEMU, 2 vCPUs, no NIC. The VLAN and
//!   fast-path areas run on veth pairs inside it (802.1Q, which the host kernel lacks).
//! - `igb`: a kernel >= 6.14 from `trixie-backports` (igb AF_XDP zero-copy) on QEMU 10 from
//!   `bookworm-backports` (the `igb` device), both unpacked into `target/vm/igb/`; 4 vCPUs so
//!   that igb opens 4 queue pairs; an igb NIC (the device under test) and a virtio-net peer on
//!   one QEMU hub with no host interface. Inside, the igb is `xmvnic0` and the peer
//!   `xmvwire0` in network namespace `xmvwire`, both found by MAC (names the host's `eth0`
//!   can never be confused with), IPv6 off so that the wire carries only what tests send.
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use super::apt::Apt;
use super::emulator::{self, Emulator};
use super::initramfs;
use super::kernel::{self, Kernel, KernelSource};

/// Which guest an area runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum GuestKind {
    Stock,
    Igb,
}

impl GuestKind {
    pub(super) fn name(self) -> &'static str {
        match self {
            GuestKind::Stock => "stock",
            GuestKind::Igb => "igb",
        }
    }

    pub(super) fn parse(name: &str) -> Option<Self> {
        match name {
            "stock" | "6.1" => Some(GuestKind::Stock),
            "igb" | "nic" => Some(GuestKind::Igb),
            _ => None,
        }
    }
}

/// Modules of the stock guest: 8021q, macvlan, veth under test; virtio-pci, 9p and overlay
/// for the host root.
const STOCK_MODULES: &[&str] = &[
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    "overlay",
    "8021q",
    "macvlan",
    "veth",
];

/// The igb guest's, besides the stock set: the two NICs' drivers.
const IGB_MODULES: &[&str] = &["igb", "virtio_net"];

const STOCK_KERNEL: KernelSource = KernelSource {
    meta: "linux-image-amd64",
    series: Some((
        "linux-image-6.1.",
        r"^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$",
    )),
    min_release: (6, 1),
    min_reason: "Debian 12's stock kernel",
    modules: STOCK_MODULES,
    extra_modules: &[],
    override_env: "XMACVLAN_VM_KERNEL",
};

/// The kernel suite of the igb guest.
pub(super) const IGB_KERNEL_SUITE: &str = "trixie-backports";

const IGB_KERNEL: KernelSource = KernelSource {
    meta: "linux-image-amd64/trixie-backports",
    series: None,
    min_release: (6, 14),
    min_reason: "igb has AF_XDP zero-copy from Linux 6.14",
    modules: STOCK_MODULES,
    extra_modules: IGB_MODULES,
    override_env: "XMACVLAN_VM_IGB_KERNEL",
};

/// The igb guest's NICs: (MAC, name inside the guest). The peer lives in [`WIRE_NS`].
pub(super) const IGB_NIC: (&str, &str) = ("02:58:4d:4e:00:01", "xmvnic0");
pub(super) const IGB_PEER: (&str, &str) = ("02:58:4d:4e:00:02", "xmvwire0");
pub(super) const WIRE_NS: &str = "xmvwire";

/// A guest ready to boot.
pub(super) struct Machine {
    pub kind: GuestKind,
    pub kernel: Kernel,
    pub initrd: std::path::PathBuf,
    pub emulator: Emulator,
    /// `-accel` (TCG; multi-threaded for more than 2 vCPUs).
    pub accel: &'static str,
    pub cpus: u32,
    pub memory_mb: u32,
    /// `-netdev`/`-device` arguments of its NICs.
    pub nics: Vec<String>,
}

impl Machine {
    /// Fetch (first run) or load from `target/vm/` what `kind` needs.
    pub(super) fn prepare(kind: GuestKind, vm_dir: &Path) -> Result<Self> {
        let dir = vm_dir.join(kind.name());
        let machine = match kind {
            GuestKind::Stock => {
                let kernel = kernel::ensure(&dir, &STOCK_KERNEL, &Apt::host())?;
                Machine {
                    kind,
                    initrd: initramfs::ensure(&kernel)?,
                    kernel,
                    emulator: Emulator::host(),
                    accel: "tcg",
                    cpus: 2,
                    memory_mb: 1024,
                    nics: Vec::new(),
                }
            }
            GuestKind::Igb => {
                let suites = ["bookworm", emulator::QEMU_SUITE, IGB_KERNEL_SUITE];
                let apt = Apt::private(&vm_dir.join("apt"), &suites, false)?;
                let kernel = kernel::ensure(&dir, &IGB_KERNEL, &apt)?;
                let emulator = emulator::ensure_unpacked(&dir, &apt)?;
                let (nic_mac, _) = IGB_NIC;
                let (peer_mac, _) = IGB_PEER;
                Machine {
                    kind,
                    initrd: initramfs::ensure(&kernel)?,
                    kernel,
                    emulator,
                    accel: "tcg,thread=multi",
                    cpus: 4,
                    memory_mb: 2048,
                    nics: [
                        "-netdev",
                        "hubport,id=dut,hubid=0",
                        "-netdev",
                        "hubport,id=peer,hubid=0",
                        "-device",
                        &format!("igb,netdev=dut,mac={nic_mac},romfile="),
                        "-device",
                        &format!("virtio-net-pci,netdev=peer,mac={peer_mac},romfile="),
                    ]
                    .map(str::to_string)
                    .to_vec(),
                }
            }
        };
        Ok(machine)
    }

    /// The prefix of its areas' names in the summary (`vm/vm_vlan`, `vm-igb/vm_nic`).
    pub(super) fn tally_prefix(&self) -> &'static str {
        match self.kind {
            GuestKind::Stock => "vm",
            GuestKind::Igb => "vm-igb",
        }
    }

    /// Shell lines the guest script runs before the tests: the guest's own environment
    /// variables for the tests, and for the igb guest its NICs named and placed.
    pub(super) fn setup_script(&self) -> String {
        let mut s = String::new();
        writeln!(s, "export XMACVLAN_VM_GUEST={}", self.kind.name()).ok();
        if self.kind == GuestKind::Stock {
            return s;
        }
        let (nic_mac, nic) = IGB_NIC;
        let (peer_mac, peer) = IGB_PEER;
        writeln!(
            s,
            "export XMACVLAN_VM_NIC={nic} XMACVLAN_VM_NIC_MAC={nic_mac} \
             XMACVLAN_VM_WIRE={peer} XMACVLAN_VM_WIRE_MAC={peer_mac} XMACVLAN_VM_WIRE_NS={WIRE_NS}"
        )
        .ok();
        // IPv6 off everywhere (new namespaces inherit it): no router solicitations, DAD or
        // MLD reports on the wire, so every frame the tests count is one they sent.
        s.push_str(
            "echo 1 > /proc/sys/net/core/devconf_inherit_init_net\n\
             echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6\n\
             echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6\n\
             xmvm_name() {\n\
             \tfor d in /sys/class/net/*; do\n\
             \t\tread -r a < \"$d/address\"\n\
             \t\t[ \"$a\" = \"$1\" ] || continue\n\
             \t\tip link set dev \"${d##*/}\" name \"$2\" && return 0\n\
             \tdone\n\
             \techo \"vm-test: no NIC with MAC $1 to name $2 (ip -br link: $(ip -br link | tr '\\n' ' '))\"\n\
             \texit 125\n\
             }\n",
        );
        writeln!(s, "xmvm_name {nic_mac} {nic}").ok();
        writeln!(s, "xmvm_name {peer_mac} {peer}").ok();
        writeln!(
            s,
            "ip netns add {WIRE_NS} && ip link set {peer} netns {WIRE_NS} && \
             ip -n {WIRE_NS} link set lo up && ip -n {WIRE_NS} link set {peer} up && \
             ip link set {nic} up || {{ echo 'vm-test: setting up the NICs failed'; exit 125; }}"
        )
        .ok();
        writeln!(
            s,
            "drv=$(readlink /sys/class/net/{nic}/device/driver)\n\
             echo \"vm-test: {nic} (driver ${{drv##*/}}, $(ls -d /sys/class/net/{nic}/queues/rx-* \
             | wc -l) rx queues) <-> {peer} in netns {WIRE_NS}\""
        )
        .ok();
        s
    }
}
