//! Where the receive work runs. On veth the receiver's kernel work (NAPI, XDP, the AF_XDP
//! copy, the stack) runs on the *sender's* core unless moved (see the platform findings), so
//! every mode would show the generator's rate. The benchmark moves it to the receive core:
//! threaded NAPI with its kernel thread pinned there (XDP modes; every mode with the
//! `xdp-frame` ingress, whose NIC keeps NAPI through GRO), and RPS (the kernel path with the
//! `skb` ingress, where frames enter the stack through the backlog on the sender's core).
use anyhow::{Context, Result, bail};

use crate::ingress::Ingress;
use crate::lab::{Lab, NIC};

/// Move the kernel path's receive work (macvlan, AF_PACKET) to `core`: RPS with the `skb`
/// ingress, the pinned NAPI thread with `xdp-frame`. Call once per lab.
pub fn prepare(lab: &Lab, core: usize) -> Result<()> {
    match lab.ingress {
        Ingress::Skb => {
            let mask = format!("{:x}", 1u64 << core);
            lab.shell(&format!(
                "for q in /sys/class/net/{NIC}/queues/rx-*; do echo {mask} > $q/rps_cpus; done"
            ))
        }
        Ingress::XdpFrame => pin_napi_threads(lab, core).map(drop),
    }
}

/// Before a kernel-path run: with `xdp-frame`, pin the NAPI thread again (an XDP mode's
/// attach and detach may have replaced it).
pub fn prepare_kernel_path(lab: &Lab, core: usize) -> Result<()> {
    match lab.ingress {
        Ingress::Skb => Ok(()),
        Ingress::XdpFrame => pin_napi_threads(lab, core).map(drop),
    }
}

/// Make the NIC's NAPI threaded and pin its kernel threads to `core`. veth has NAPI only
/// while an XDP program is attached or GRO is on, so call this after every attach. Returns
/// how many threads were pinned.
pub fn pin_napi_threads(lab: &Lab, core: usize) -> Result<usize> {
    lab.shell(&format!("echo 1 > /sys/class/net/{NIC}/threaded"))?;
    let prefix = format!("napi/{NIC}-");
    let threads = tasks_named("/proc", |comm| comm.starts_with(&prefix))?;
    for (pid, _) in &threads {
        xmacvlan::sys::set_task_affinity(*pid, core)
            .with_context(|| format!("pinning NAPI thread {pid} to core {core}"))?;
    }
    let pinned = threads.len();
    if pinned == 0 {
        bail!(
            "no NAPI thread of {NIC} found after making its NAPI threaded: the receive work would stay on the generator's core"
        );
    }
    Ok(pinned)
}

/// Nice value of the receive threads (workers, consumers, the kernel-path reader, the rxdrop
/// loop) in every
/// mode. They busy-poll; at the same weight as the NAPI thread they would take two thirds of the
/// shared core from it. A lower weight lets the kernel's receive work go first, as softirq
/// does on the kernel path, while they still run whenever it pauses.
pub const RECEIVE_THREAD_NICE: i32 = 10;

/// Renice this process's receive threads (named `xmv-worker-…`, `xmv-consumer-…`,
/// `xmv-kernel-rx`, `xmv-rxdrop`). Call after they started. Returns how many were reniced.
pub fn renice_receive_threads() -> Result<usize> {
    let threads = tasks_named("/proc/self/task", |comm| {
        [
            "xmv-worker",
            "xmv-consumer",
            "xmv-kernel-rx",
            super::rxdrop::THREAD,
        ]
        .iter()
        .any(|p| comm.starts_with(p))
    })?;
    for (tid, comm) in &threads {
        xmacvlan::sys::set_task_nice(*tid, RECEIVE_THREAD_NICE)
            .with_context(|| format!("renicing thread {tid} ({comm})"))?;
    }
    Ok(threads.len())
}

/// The tasks (`/proc`: processes, `/proc/self/task`: this process's threads) whose name
/// (`comm`) `keep` accepts, with their names.
pub fn tasks_named(dir: &str, keep: impl Fn(&str) -> bool) -> Result<Vec<(i32, String)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {dir}"))? {
        let Ok(entry) = entry else { continue };
        let Ok(id) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // A task may exit between the listing and this read.
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let comm = comm.trim_end();
        if keep(comm) {
            found.push((id, comm.to_string()));
        }
    }
    Ok(found)
}
