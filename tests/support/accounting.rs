//! Every frame accounted for: what the generator sent is what XDP saw, and each frame ends
//! delivered to an endpoint, passed to the kernel (by reason), or dropped (by reason).
use xmacvlan::abi::Counters;
use xmacvlan::dataplane::{EndpointResult, Finished, QueueSnapshot, SocketStats};

#[derive(Debug)]
pub struct Ledger {
    pub sent: u64,
    pub delivered: u64,
    /// The classifier's counters: its pass reasons and what it redirected.
    pub xdp: Counters,
    /// Frames lost after XDP redirected them, by reason (all should stay 0 in a healthy lab).
    pub dropped: Vec<(&'static str, u64)>,
}

impl Ledger {
    /// `endpoints`: each endpoint's delivered frames and its sockets' kernel counters (xdp
    /// demux; user-demux endpoints have none). Ring-full drops are taken from the queues,
    /// which count each once (the endpoint's own counter repeats them).
    pub fn new(
        sent: u64,
        xdp: Counters,
        endpoints: impl IntoIterator<Item = (u64, SocketStats)>,
        queues: &[QueueSnapshot],
    ) -> Self {
        let mut delivered = 0;
        let mut socket_full = 0;
        for (frames, socket) in endpoints {
            delivered += frames;
            socket_full += socket.dropped();
        }
        let sum = |f: fn(&QueueSnapshot) -> u64| queues.iter().map(f).sum::<u64>();
        Self {
            sent,
            delivered,
            xdp,
            dropped: vec![
                ("endpoint socket full", socket_full),
                ("queue socket full", sum(|q| q.socket.dropped())),
                ("endpoint ring full", sum(|q| q.dropped_ring_full)),
                ("unknown to the userspace table", sum(|q| q.dropped_unknown)),
                ("broken multi-buffer chain", sum(|q| q.dropped_broken_chain)),
            ],
        }
    }

    /// A stopped dataplane's ledger, with the endpoints removed while it ran.
    pub fn finished(sent: u64, finished: &Finished, removed: &[EndpointResult]) -> Self {
        let endpoints = finished
            .endpoints
            .iter()
            .chain(removed)
            .map(|e| (e.frames, e.socket_stats));
        Self::new(sent, finished.xdp, endpoints, &finished.queues)
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().map(|(_, n)| n).sum()
    }

    /// sent = seen = delivered + passed + dropped, and what XDP redirected is exactly what
    /// was delivered or dropped after it.
    pub fn assert_balanced(&self, what: &str) {
        let x = &self.xdp;
        assert_eq!(
            x.seen, self.sent,
            "{what}: XDP saw what was sent: {self:#?}"
        );
        assert_eq!(
            x.verdicts(),
            x.seen,
            "{what}: one verdict a frame: {self:#?}"
        );
        assert_eq!(
            self.delivered + self.dropped_total(),
            x.redirected,
            "{what}: every redirected frame delivered or dropped by reason: {self:#?}"
        );
        assert_eq!(
            self.delivered + x.passed() + self.dropped_total(),
            self.sent,
            "{what}: delivered + passed + dropped = sent: {self:#?}"
        );
    }
}
