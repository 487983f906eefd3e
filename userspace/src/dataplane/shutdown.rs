//! The one shutdown of a dataplane, shared by [`Dataplane::stop`] (which reports) and `Drop`
//! (which only releases): threads that only own queues stop first (in `user` demux they hand
//! the serving threads their last frames), then the serving threads; each thread is joined
//! once, and the endpoints' sockets close in parallel.
use std::collections::HashMap;
use std::sync::atomic::Ordering;

use anyhow::Result;

use super::error::DataplaneError;

use super::thread::Finished as FinishedEndpoint;
use super::{Dataplane, Finished, QueueSnapshot, SocketStats, close_in_parallel};

/// What the threads returned.
struct Joined {
    /// Each queue's socket counters (by queue id), or why they could not be read.
    queues: HashMap<u16, Result<SocketStats>>,
    endpoints: Vec<FinishedEndpoint>,
    panicked: bool,
}

impl Joined {
    /// Close what the threads handed back, without reporting.
    fn discard(self) {
        close_in_parallel(self.endpoints.into_iter().flat_map(|f| f.sockets).collect());
    }
}

impl Dataplane {
    /// Stop and join every thread still running (none the second time).
    fn join_threads(&mut self) -> Joined {
        let mut joined = Joined {
            queues: HashMap::new(),
            endpoints: Vec::new(),
            panicked: false,
        };
        for serves in [false, true] {
            for t in self.threads.iter().filter(|t| t.serves == serves) {
                t.stop.store(true, Ordering::Release);
                // A thread blocked in epoll_wait sees the flag now.
                t.commands.waker.wake();
            }
            for t in self.threads.iter_mut().filter(|t| t.serves == serves) {
                match t.join.take().map(|j| j.join()) {
                    Some(Ok(stopped)) => {
                        joined.endpoints.extend(stopped.endpoints);
                        joined.queues.extend(stopped.queues);
                    }
                    Some(Err(_)) => joined.panicked = true,
                    None => {}
                }
            }
        }
        joined
    }

    /// Stop the threads (after they drain what is already queued) and collect the results.
    pub fn stop(mut self) -> Result<Finished, DataplaneError> {
        let xdp = self
            .classifier
            .counters()
            .map_err(DataplaneError::step("reading the classifier's counters"))?;
        let mut joined = self.join_threads();
        if joined.panicked {
            joined.discard();
            return Err(DataplaneError::Thread("a dataplane thread panicked".into()));
        }
        let mut queues = Vec::new();
        for q in &self.queues {
            match joined.queues.remove(&q.id) {
                Some(Ok(socket)) => queues.push(q.snapshot_with(socket)),
                Some(Err(e)) => {
                    joined.discard();
                    return Err(DataplaneError::step(format!(
                        "reading the socket counters of queue {}",
                        q.id
                    ))(e));
                }
                None => {
                    joined.discard();
                    return Err(DataplaneError::Thread(format!(
                        "queue {} had no owner thread to stop",
                        q.id
                    )));
                }
            }
        }
        let mut by_slot: HashMap<_, _> =
            joined.endpoints.into_iter().map(|f| (f.slot, f)).collect();
        let mut sockets = Vec::new();
        let endpoints = self
            .in_attach_order()
            .into_iter()
            .map(|a| {
                let mut f = by_slot
                    .remove(&a.slot)
                    .expect("every endpoint has a thread");
                sockets.append(&mut f.sockets);
                drop(f.port.take());
                a.result(f)
            })
            .collect();
        // The TX sockets the threads handed back with their first endpoint.
        sockets.extend(by_slot.into_values().flat_map(|f| f.sockets));
        close_in_parallel(sockets);
        Ok(Finished {
            endpoints,
            queues: queues.into_iter().collect::<Vec<QueueSnapshot>>(),
            xdp,
        })
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.join_threads().discard();
    }
}
