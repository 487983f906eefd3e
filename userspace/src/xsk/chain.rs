//! Frames in several UMEM chunks. A socket bound with `XDP_USE_SG` receives a frame longer than
//! one chunk as consecutive descriptors, every one but the last flagged `XDP_PKT_CONTD`. The
//! [`Joiner`] turns a socket's descriptors back into frames: it holds a chain whose end has not
//! been read yet (a receive batch may end inside one), and drops a broken chain whole — never
//! half-delivers it — giving back every chunk it took. [`Links`] records, per chunk, the chunk
//! that follows it in its frame, so a frame moves as one small value (its first chunk's
//! descriptor) through rings and pools while its other chunks stay where they are.
use std::cell::UnsafeCell;

use xsk_rs::FrameDesc;

/// What the joiner needs of a descriptor (a trait so tests can make their own: xsk-rs makes
/// a [`FrameDesc`] with an address only from a ring).
pub trait Desc: Copy + Default {
    /// Its address in the UMEM.
    fn addr(&self) -> usize;
    /// Bytes of the frame it holds.
    fn data_len(&self) -> u32;
    /// Whether more chunks of its frame follow (`XDP_PKT_CONTD`).
    fn more(&self) -> bool;
}

impl Desc for FrameDesc {
    #[inline]
    fn addr(&self) -> usize {
        FrameDesc::addr(self)
    }
    #[inline]
    fn data_len(&self) -> u32 {
        self.lengths().data() as u32
    }
    #[inline]
    fn more(&self) -> bool {
        self.options() & XDP_PKT_CONTD != 0
    }
}

/// Most chunks one frame may take; a longer chain is broken (dropped, counted). With
/// multi-buffer the classifier redirects only frames that fit (`QueueUmem::max_rx_frame`), so
/// a longer chain is a driver's fault.
pub const MAX_CHAIN: usize = 8;

/// The descriptor option the kernel sets on every chunk of a frame but the last
/// (`XDP_PKT_CONTD` of `linux/if_xdp.h`).
pub const XDP_PKT_CONTD: u32 = 1;

/// Per chunk of a UMEM: the descriptor of the next chunk of its frame. Entry `i` belongs to
/// whoever owns chunk `i` (the kernel, a socket, a ring, a thread or a pool: always exactly
/// one party, since frames and chunks are values that cannot be copied); it is written while
/// a chain is joined and read while the chain is read or given back.
pub struct Links<D = FrameDesc> {
    next: Box<[UnsafeCell<D>]>,
    frame_size: usize,
}

// SAFETY: entry `i` is only touched by the party owning chunk `i` (see the type's comment), and
// ownership passes between threads through synchronising rings and queues.
unsafe impl<D: Send> Sync for Links<D> {}

impl<D: Desc> Links<D> {
    pub fn new(frames: usize, frame_size: usize) -> Self {
        Self {
            next: (0..frames).map(|_| UnsafeCell::new(D::default())).collect(),
            frame_size: frame_size.max(1),
        }
    }

    fn entry(&self, chunk: &D) -> Option<&UnsafeCell<D>> {
        self.next.get(chunk.addr() / self.frame_size)
    }

    /// Record `next` as the chunk following `chunk`. The caller owns `chunk`.
    #[inline]
    pub fn set(&self, chunk: &D, next: D) {
        // An address beyond the UMEM is never owned: the ledger refuses it first.
        if let Some(cell) = self.entry(chunk) {
            // SAFETY: the caller owns `chunk`, so no other party touches its entry now.
            unsafe { *cell.get() = next };
        }
    }

    /// The chunk recorded after `chunk`. The caller owns `chunk`'s frame.
    #[inline]
    pub fn get(&self, chunk: &D) -> D {
        match self.entry(chunk) {
            // SAFETY: the caller owns `chunk`, so no other party writes its entry now.
            Some(cell) => unsafe { *cell.get() },
            None => D::default(),
        }
    }
}

/// A frame being joined: its first and last chunk so far.
#[derive(Debug, Clone, Copy)]
struct Partial<D> {
    head: D,
    last: D,
    chunks: u8,
    len: u32,
}

/// Where a socket is in its descriptor stream.
#[derive(Debug, Clone, Copy, Default)]
enum State<D> {
    /// Between frames.
    #[default]
    Idle,
    /// Inside a chain, its chunks so far held.
    Joining(Partial<D>),
    /// Inside a broken chain: its chunks are given back as they come, until its last one.
    Discarding,
}

/// What one descriptor completed.
#[derive(Debug, Clone, Copy)]
pub enum Joined<D> {
    /// Nothing yet: a chain goes on (or a descriptor not ours was skipped).
    Nothing,
    /// A whole frame: its first chunk, its chunk count and its length.
    Frame { head: D, chunks: u8, len: u32 },
    /// A broken chain ended: its chunks were given back.
    Broken,
}

/// Joins one socket's descriptors into frames (see the module comment).
#[derive(Debug, Default)]
pub struct Joiner<D = FrameDesc> {
    state: State<D>,
}

impl<D: Desc> Joiner<D> {
    /// Take one descriptor off the socket's receive ring. `ours` says whether the ledger gave
    /// the chunk to us (false: the kernel had already handed it over; it is not ours to give
    /// back, and a chain it belongs to is broken). Chunks of a broken chain go to `give_back`.
    #[inline]
    pub fn push(
        &mut self,
        desc: D,
        ours: bool,
        links: &Links<D>,
        mut give_back: impl FnMut(D),
    ) -> Joined<D> {
        let (more, len) = (desc.more(), desc.data_len());
        let (state, joined) = match self.state {
            State::Idle if !ours => (
                if more { State::Discarding } else { State::Idle },
                Joined::Nothing,
            ),
            State::Idle if !more => (
                State::Idle,
                Joined::Frame {
                    head: desc,
                    chunks: 1,
                    len,
                },
            ),
            State::Idle => (
                State::Joining(Partial {
                    head: desc,
                    last: desc,
                    chunks: 1,
                    len,
                }),
                Joined::Nothing,
            ),
            State::Joining(p) if !ours || usize::from(p.chunks) >= MAX_CHAIN => {
                release_chain(p.head, p.chunks, links, &mut give_back);
                discard(desc, ours, more, give_back)
            }
            State::Joining(mut p) => {
                links.set(&p.last, desc);
                p.last = desc;
                p.chunks += 1;
                p.len += len;
                if more {
                    (State::Joining(p), Joined::Nothing)
                } else {
                    (
                        State::Idle,
                        Joined::Frame {
                            head: p.head,
                            chunks: p.chunks,
                            len: p.len,
                        },
                    )
                }
            }
            State::Discarding => discard(desc, ours, more, give_back),
        };
        self.state = state;
        joined
    }

    /// Whether a chain is held, waiting for its end.
    pub fn holds_chain(&self) -> bool {
        matches!(self.state, State::Joining(_))
    }

    /// Give back the chain held (the socket is closing, or its end will never come): returns
    /// whether there was one, which is then a broken frame.
    pub fn abandon(&mut self, links: &Links<D>, give_back: impl FnMut(D)) -> bool {
        let state = std::mem::take(&mut self.state);
        match state {
            State::Joining(p) => {
                release_chain(p.head, p.chunks, links, give_back);
                true
            }
            State::Discarding => true,
            State::Idle => false,
        }
    }
}

/// A chunk of a broken chain: given back if ours; the chain is counted once, at its end.
fn discard<D>(
    desc: D,
    ours: bool,
    more: bool,
    mut give_back: impl FnMut(D),
) -> (State<D>, Joined<D>) {
    if ours {
        give_back(desc);
    }
    if more {
        (State::Discarding, Joined::Nothing)
    } else {
        (State::Idle, Joined::Broken)
    }
}

/// Give back every chunk of the chain starting at `head`.
#[inline]
pub fn release_chain<D: Desc>(head: D, chunks: u8, links: &Links<D>, mut give_back: impl FnMut(D)) {
    let mut chunk = head;
    for i in 0..chunks {
        let next = if i + 1 < chunks {
            links.get(&chunk)
        } else {
            chunk
        };
        give_back(chunk);
        chunk = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A descriptor as a test makes it.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    struct D {
        addr: usize,
        len: u32,
        more: bool,
    }

    impl Desc for D {
        fn addr(&self) -> usize {
            self.addr
        }
        fn data_len(&self) -> u32 {
            self.len
        }
        fn more(&self) -> bool {
            self.more
        }
    }

    const CHUNK: usize = 4096;

    /// xorshift64*: reproducible from its seed, no dependency.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
        }
    }

    /// One frame as the kernel writes it on the ring (each descriptor with whether the ledger
    /// gives it to us), and whether it must be delivered whole; else it is a broken chain,
    /// or a lone chunk the ledger refused (skipped, the ledger's to count).
    struct Sent {
        descs: Vec<(D, bool)>,
        whole: bool,
    }

    impl Sent {
        fn broken(&self) -> bool {
            let lone_refused = self.descs.len() == 1 && !self.descs[0].1;
            !self.whole && !lone_refused
        }
    }

    /// Random frames: mostly whole chains of 1..=MAX_CHAIN chunks, some too long, some with a
    /// chunk the ledger refuses; the last may never end.
    fn frames(rng: &mut Rng, count: usize, next_chunk: &mut usize) -> Vec<Sent> {
        (0..count)
            .map(|_| {
                let kind = rng.below(10);
                let chunks = match kind {
                    0 => MAX_CHAIN + 1 + rng.below(3) as usize,
                    _ => 1 + rng.below(MAX_CHAIN as u64) as usize,
                };
                let refused = (kind == 1).then(|| rng.below(chunks as u64) as usize);
                let descs = (0..chunks)
                    .map(|i| {
                        *next_chunk += 1;
                        let d = D {
                            addr: *next_chunk * CHUNK + 256,
                            len: 1 + rng.below(3840) as u32,
                            more: i + 1 < chunks,
                        };
                        (d, refused != Some(i))
                    })
                    .collect();
                Sent {
                    descs,
                    whole: kind > 1,
                }
            })
            .collect()
    }

    #[test]
    fn random_chains_split_anywhere_come_out_whole_or_dropped_with_every_chunk_back() {
        for seed in 1..=500u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut next_chunk = 0;
            let count = 1 + rng.below(40) as usize;
            let mut sent = frames(&mut rng, count, &mut next_chunk);
            let unended = rng.below(4) == 0;
            if unended {
                // The last frame's end never comes: its last descriptor is cut off.
                let last = sent.last_mut().unwrap();
                if last.descs.len() > 1 {
                    last.descs.pop();
                } else {
                    last.descs[0].0.more = true;
                }
                last.whole = false;
            }
            let links = Links::<D>::new(next_chunk + 1, CHUNK);
            let stream: Vec<(D, bool)> = sent.iter().flat_map(|s| s.descs.clone()).collect();
            let mut joiner = Joiner::<D>::default();
            let (mut given_back, mut delivered, mut broken) = (Vec::new(), Vec::new(), 0);
            // Read in batches of random size, as a socket's reads end anywhere in a chain.
            let mut at = 0;
            while at < stream.len() {
                let batch = 1 + rng.below(9) as usize;
                for &(d, ours) in &stream[at..(at + batch).min(stream.len())] {
                    match joiner.push(d, ours, &links, |c| given_back.push(c)) {
                        Joined::Nothing => {}
                        Joined::Frame { head, chunks, len } => {
                            let mut segs = Vec::new();
                            release_chain(head, chunks, &links, |c| segs.push(c));
                            assert_eq!(len, segs.iter().map(|c| c.len).sum::<u32>());
                            delivered.push(segs);
                        }
                        Joined::Broken => broken += 1,
                    }
                }
                at += batch;
                let inside = stream[..at.min(stream.len())]
                    .last()
                    .is_some_and(|(d, _)| d.more);
                if !inside {
                    assert!(
                        !joiner.holds_chain(),
                        "seed {seed}: holds nothing between frames"
                    );
                }
            }
            let abandoned = joiner.abandon(&links, |c| given_back.push(c));
            assert_eq!(
                abandoned, unended,
                "seed {seed}: an unended chain is held, then given back"
            );

            let want: Vec<Vec<D>> = sent
                .iter()
                .filter(|s| s.whole)
                .map(|s| s.descs.iter().map(|(d, _)| *d).collect())
                .collect();
            assert_eq!(
                delivered, want,
                "seed {seed}: whole frames, chunks in order"
            );
            let ended = &sent[..sent.len() - usize::from(unended)];
            let ended_broken = ended.iter().filter(|s| s.broken()).count();
            assert_eq!(
                broken, ended_broken,
                "seed {seed}: each broken chain counted once"
            );
            // Every chunk ours is delivered or given back, exactly once; none not ours is.
            let mut accounted: Vec<usize> = delivered
                .iter()
                .flatten()
                .chain(&given_back)
                .map(|c| c.addr)
                .collect();
            accounted.sort_unstable();
            let mut ours: Vec<usize> = stream
                .iter()
                .filter(|(_, ours)| *ours)
                .map(|(d, _)| d.addr)
                .collect();
            ours.sort_unstable();
            assert_eq!(accounted, ours, "seed {seed}: every chunk back once");
        }
    }

    #[test]
    fn a_chain_cut_by_the_batch_end_is_held_not_dropped() {
        let links = Links::<D>::new(8, CHUNK);
        let d = |i: usize, more| D {
            addr: i * CHUNK,
            len: 100,
            more,
        };
        let mut joiner = Joiner::<D>::default();
        let mut back = Vec::new();
        assert!(matches!(
            joiner.push(d(1, true), true, &links, |c| back.push(c)),
            Joined::Nothing
        ));
        assert!(
            joiner.holds_chain(),
            "the first read ended inside the chain"
        );
        assert!(matches!(
            joiner.push(d(2, true), true, &links, |c| back.push(c)),
            Joined::Nothing
        ));
        let Joined::Frame { head, chunks, len } =
            joiner.push(d(3, false), true, &links, |c| back.push(c))
        else {
            panic!("the second read ends it");
        };
        assert_eq!((head, chunks, len), (d(1, true), 3, 300));
        assert!(back.is_empty());
        // A duplicate (not ours) between frames is skipped; one inside a chain breaks it.
        assert!(matches!(
            joiner.push(d(4, false), false, &links, |c| back.push(c)),
            Joined::Nothing
        ));
        joiner.push(d(5, true), true, &links, |c| back.push(c));
        assert!(matches!(
            joiner.push(d(6, false), false, &links, |c| back.push(c)),
            Joined::Broken
        ));
        assert_eq!(
            back,
            [d(5, true)],
            "its chunks ours given back, not the refused one"
        );
    }
}
