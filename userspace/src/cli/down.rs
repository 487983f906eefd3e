//! `xmacvlan down IFACE`: detach xmacvlan's classifier from an interface and remove its pins,
//! which a daemon leaves behind on purpose (the next daemon takes it over). For an uninstall,
//! or to hand the interface back to the kernel alone.
use std::path::Path;

use anyhow::{Result, bail};

use crate::ipc::protocol::{Answer, Request};
use crate::ipc::socket::request;
use crate::xdp::PinDir;

#[derive(clap::Args, Debug)]
pub struct DownArgs {
    /// The interface (the parent NIC the daemon served).
    #[arg(value_name = "IFACE")]
    pub iface: String,
}

pub fn main(socket: &Path, args: DownArgs) -> Result<()> {
    let iface = &args.iface;
    if let Ok(Answer::Stats { interfaces, .. }) = request(socket, &Request::Stats)
        && interfaces.iter().any(|s| &s.interface == iface)
    {
        bail!(
            "the daemon on {} serves {iface}: remove its endpoints there (`xmacvlan endpoint rm`), \
             or stop it with `xmacvlan daemon --detach-on-exit`, then run this again",
            socket.display()
        );
    }
    let pins = PinDir::for_interface(iface);
    if let Some(id) = crate::xdp::pinned_program_id(&pins)
        && let Some(pid) = crate::ipc::alive::holders_of_bpf_program(id).first()
    {
        bail!(
            "xmacvlan process {pid} uses {iface}'s classifier (a daemon on another control \
             socket?): stop it first (kill {pid})"
        );
    }
    // Without a link of its own the classifier is one program of libxdp's dispatcher.
    let how = match pins.link().exists() {
        true => "detached",
        false => "left libxdp's dispatcher (its other programs stay)",
    };
    match crate::xdp::release_pinned(&pins)? {
        Some(id) => println!(
            "{iface}: xmacvlan's classifier (program {id}) {how}, {} removed",
            pins.path().display()
        ),
        None => println!(
            "{iface}: nothing of xmacvlan's is pinned ({} does not exist)",
            pins.path().display()
        ),
    }
    Ok(())
}
