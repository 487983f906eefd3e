//! Every frame of a run through ports, placed. A frame the generator sends to an endpoint
//! either comes out at the end — into the application (sinks) or back on the wire
//! (reflectors) — or is lost at one stage on the way; each stage's loss is the difference of
//! the counts on either side of it, and is matched against the counter that says why (the
//! lab's veths, the classifier, the sockets, the ports, the applications). Whatever a stage
//! lost that no counter explains is `unplaced`, and must be 0.
use serde::Serialize;

/// A network device's counters as `/proc/net/dev` shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DevStats {
    pub rx_packets: u64,
    pub rx_dropped: u64,
    pub tx_packets: u64,
    pub tx_dropped: u64,
}

impl DevStats {
    /// `ifname`'s counters in the calling thread's network namespace.
    pub fn read(ifname: &str) -> anyhow::Result<Self> {
        use anyhow::Context;
        let text = std::fs::read_to_string("/proc/thread-self/net/dev")?;
        let line = text
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(ifname)?.strip_prefix(':'))
            .with_context(|| format!("no {ifname} in /proc/thread-self/net/dev"))?;
        let f: Vec<u64> = line
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        // rx: bytes packets errs drop fifo frame compressed multicast | tx: bytes packets errs drop
        let at = |i: usize| f.get(i).copied().unwrap_or(0);
        Ok(Self {
            rx_packets: at(1),
            rx_dropped: at(3),
            tx_packets: at(9),
            tx_dropped: at(11),
        })
    }

    /// What was counted since `before`.
    pub fn since(&self, before: &Self) -> Self {
        Self {
            rx_packets: self.rx_packets.saturating_sub(before.rx_packets),
            rx_dropped: self.rx_dropped.saturating_sub(before.rx_dropped),
            tx_packets: self.tx_packets.saturating_sub(before.tx_packets),
            tx_dropped: self.tx_dropped.saturating_sub(before.tx_dropped),
        }
    }
}

/// One stage of the way: frames in, frames out, and the frames lost there by counted reason.
#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    pub name: &'static str,
    pub frames_in: u64,
    pub frames_out: u64,
    /// `(reason, frames)`: what the counters say was lost here.
    pub counted: Vec<(&'static str, u64)>,
}

impl Stage {
    /// Frames lost here that no counter accounts for (0 when the counters explain the loss;
    /// counters that say more than was lost leave it at 0 too: they are checked elsewhere).
    pub fn unplaced(&self) -> u64 {
        let counted: u64 = self.counted.iter().map(|(_, n)| n).sum();
        self.frames_in
            .saturating_sub(self.frames_out)
            .saturating_sub(counted)
    }

    pub fn lost(&self) -> u64 {
        self.frames_in.saturating_sub(self.frames_out)
    }
}

/// The stages of a run, from the generator to where frames come out.
#[derive(Debug, Clone, Serialize)]
pub struct Placed {
    pub sent: u64,
    pub stages: Vec<Stage>,
    /// Frames at the end: in the applications (sinks) or back on the wire (reflectors).
    pub arrived: u64,
    /// Frames no counter places (the stages' `unplaced` summed): must be 0.
    pub unplaced: u64,
}

impl Placed {
    /// Chain `stages` (each one's `frames_in` should be the last one's `frames_out`).
    pub fn new(sent: u64, stages: Vec<Stage>) -> Self {
        let arrived = stages.last().map_or(sent, |s| s.frames_out);
        let unplaced = stages.iter().map(Stage::unplaced).sum();
        Self {
            sent,
            stages,
            arrived,
            unplaced,
        }
    }

    /// `stage lost (reason n, …)` for every stage that lost something, or `none lost`.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self
            .stages
            .iter()
            .filter(|s| s.lost() > 0)
            .map(|s| {
                let mut reasons: Vec<String> = s
                    .counted
                    .iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(r, n)| format!("{r} {n}"))
                    .collect();
                if s.unplaced() > 0 {
                    reasons.push(format!("UNPLACED {}", s.unplaced()));
                }
                format!("{} lost {} ({})", s.name, s.lost(), reasons.join(", "))
            })
            .collect();
        if parts.is_empty() {
            format!("{} of {} arrived, none lost", self.arrived, self.sent)
        } else {
            format!(
                "{} of {} arrived; {}",
                self.arrived,
                self.sent,
                parts.join("; ")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_are_placed_by_their_counters_and_the_rest_is_unplaced() {
        let placed = Placed::new(
            100,
            vec![
                Stage {
                    name: "to XDP",
                    frames_in: 100,
                    frames_out: 97,
                    counted: vec![("veth ring full", 3)],
                },
                Stage {
                    name: "into the port",
                    frames_in: 97,
                    frames_out: 90,
                    counted: vec![("ring full", 5)],
                },
            ],
        );
        assert_eq!(placed.arrived, 90);
        assert_eq!(placed.unplaced, 2);
        assert_eq!(
            placed.summary(),
            "90 of 100 arrived; to XDP lost 3 (veth ring full 3); into the port lost 7 \
             (ring full 5, UNPLACED 2)"
        );
    }
}
