//! A DHCP server of the test's own: busybox `udhcpd` on the wire's end of a veth, in the
//! wire's namespace, with its lease file in the test's directory (written every second, read
//! with busybox `dumpleases`). Killed when dropped.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use xmacvlan::netns::Netns;

pub const BUSYBOX: &str = "/bin/busybox";

/// One line of `dumpleases`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leased {
    pub mac: String,
    pub ip: String,
    /// Seconds left; None once expired (or released: udhcpd expires a released lease at once).
    pub expires_in: Option<u64>,
}

pub struct Udhcpd {
    child: Option<Child>,
    leases: PathBuf,
    conf: PathBuf,
    netns: String,
}

/// What the server hands out: a range of one /24, its router and DNS server, and the lease.
pub struct Pool<'a> {
    pub first: &'a str,
    pub last: &'a str,
    pub router: &'a str,
    pub dns: &'a str,
    pub lease_s: u32,
}

impl Udhcpd {
    /// Serve `ifname` (which must carry an address of the pool's subnet) in namespace
    /// `netns`, from `dir`.
    pub fn start(netns: &str, ifname: &str, dir: &Path, pool: &Pool) -> Self {
        let leases = dir.join("udhcpd.leases");
        let conf = dir.join("udhcpd.conf");
        std::fs::write(
            &conf,
            format!(
                "start {}\nend {}\ninterface {ifname}\nlease_file {}\npidfile {}\n\
                 auto_time 1\nmin_lease {}\noption subnet 255.255.255.0\noption router {}\n\
                 option dns {}\noption lease {}\n",
                pool.first,
                pool.last,
                leases.display(),
                dir.join("udhcpd.pid").display(),
                pool.lease_s,
                pool.router,
                pool.dns,
                pool.lease_s
            ),
        )
        .unwrap();
        std::fs::write(&leases, "").unwrap();
        let mut server = Udhcpd {
            child: None,
            leases,
            conf,
            netns: netns.to_string(),
        };
        server.resume();
        server
    }

    /// Start (again) after [`Udhcpd::stop`], with the leases it had written.
    pub fn resume(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.conf.with_extension("log"))
            .unwrap();
        let conf = self.conf.clone();
        let child = Netns::open(&self.netns)
            .unwrap()
            .run(|| {
                // -a 100: probe an offered address with ARP for 100 ms, not 2 s.
                Ok(Command::new(BUSYBOX)
                    .args(["udhcpd", "-f", "-a", "100"])
                    .arg(&conf)
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()?)
            })
            .unwrap();
        self.child = Some(child);
        std::thread::sleep(Duration::from_millis(200));
    }

    /// Stop answering (the leases it wrote stay in its file).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server's leases as its file has them (it writes the file every second).
    pub fn leases(&self) -> Vec<Leased> {
        let out = Command::new(BUSYBOX)
            .args(["dumpleases", "-f"])
            .arg(&self.leases)
            .output()
            .unwrap();
        parse_dumpleases(&String::from_utf8_lossy(&out.stdout))
    }

    /// The lease of `mac`, if the server has one.
    pub fn lease_of(&self, mac: &str) -> Option<Leased> {
        self.leases()
            .into_iter()
            .find(|l| l.mac.eq_ignore_ascii_case(mac))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.conf.with_extension("log")).unwrap_or_default()
    }
}

impl Drop for Udhcpd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `Mac Address  IP Address  Host Name  Expires in` rows: `02:42:…  198.18.60.100  name
/// 0:00:27` (or `expired`; the host name may be empty).
fn parse_dumpleases(text: &str) -> Vec<Leased> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (mac, ip, expiry) = (fields.first()?, fields.get(1)?, fields.last()?);
            if fields.len() < 3 {
                return None;
            }
            let expires_in = (*expiry != "expired").then(|| {
                expiry
                    .split(':')
                    .filter_map(|p| p.parse::<u64>().ok())
                    .fold(0, |acc, p| acc * 60 + p)
            });
            Some(Leased {
                mac: mac.to_string(),
                ip: ip.to_string(),
                expires_in,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dumpleases_rows() {
        let rows = parse_dumpleases(
            "Mac Address       IP Address      Host Name           Expires in\n\
             02:42:0a:00:00:01 198.18.60.100   docker-0123456789ab 0:00:27\n\
             02:42:0a:00:00:02 198.18.60.101                       expired\n",
        );
        assert_eq!(rows[0].expires_in, Some(27));
        assert_eq!(rows[1].expires_in, None);
        assert_eq!(rows[1].ip, "198.18.60.101");
    }
}
