//! Where the receive work runs. On veth the receiver's kernel work (NAPI, XDP, the AF_XDP
//! copy, the stack) runs on the *sender's* core unless moved (see the platform findings), so
//! every mode would show the generator's rate. The benchmark moves it to the receive core:
//! threaded NAPI with its kernel thread pinned there (XDP modes), and RPS (kernel path).
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::lab::{Lab, NIC};

/// Write sysfs attributes of the lab NIC. sysfs shows the namespace of whoever mounted it, so
/// this goes through `ip netns exec`, which mounts a fresh sysfs for the namespace.
fn write_sysfs(lab: &Lab, script: &str) -> Result<()> {
    let status = Command::new("ip")
        .args(["netns", "exec", lab.host.name(), "sh", "-c", script])
        .status()
        .context("running `ip netns exec` (iproute2)")?;
    if !status.success() {
        bail!(
            "`{script}` in namespace {} failed ({status})",
            lab.host.name()
        );
    }
    Ok(())
}

/// Steer the NIC's RPS to `core`: the kernel path's receive work (macvlan, AF_PACKET) runs
/// there. Call once per lab.
pub fn prepare(lab: &Lab, core: usize) -> Result<()> {
    let mask = format!("{:x}", 1u64 << core);
    write_sysfs(
        lab,
        &format!("for q in /sys/class/net/{NIC}/queues/rx-*; do echo {mask} > $q/rps_cpus; done"),
    )
}

/// Make the NIC's NAPI threaded and pin its kernel threads to `core`. veth has NAPI only
/// while an XDP program is attached, so call this after every attach. Returns how many
/// threads were pinned.
pub fn pin_napi_threads(lab: &Lab, core: usize) -> Result<usize> {
    write_sysfs(lab, &format!("echo 1 > /sys/class/net/{NIC}/threaded"))?;
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

/// Nice value of the receive threads (workers, consumers, the kernel-path reader) in every
/// mode. They busy-poll; at the same weight as the NAPI thread they would take two thirds of the
/// shared core from it. A lower weight lets the kernel's receive work go first, as softirq
/// does on the kernel path, while they still run whenever it pauses.
pub const RECEIVE_THREAD_NICE: i32 = 10;

/// Renice this process's receive threads (named `xmv-worker-…`, `xmv-consumer-…`,
/// `xmv-kernel-rx`). Call after they started. Returns how many were reniced.
pub fn renice_receive_threads() -> Result<usize> {
    let threads = tasks_named("/proc/self/task", |comm| {
        ["xmv-worker", "xmv-consumer", "xmv-kernel-rx"]
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
