//! The one shutdown of a dataplane, shared by [`Dataplane::stop`] (which reports) and `Drop`
//! (which only releases): workers stop first (the user demux hands consumers their last
//! frames), then consumers; each thread is joined once, and the endpoints' sockets close in
//! parallel.
use std::sync::atomic::Ordering;

use anyhow::{Result, anyhow};

use super::registry::result;
use super::{Dataplane, Finished, QueueSnapshot, SocketStats, close_in_parallel, consumer};

/// What the threads returned.
struct Joined {
    /// Each worker's queue socket counters, or why it failed.
    workers: Vec<Result<SocketStats>>,
    endpoints: Vec<consumer::FinishedEndpoint>,
    consumer_panicked: bool,
}

impl Joined {
    /// Close what the consumers handed back, without reporting.
    fn discard(self) {
        close_in_parallel(self.endpoints.into_iter().flat_map(|f| f.sockets).collect());
    }
}

impl Dataplane {
    /// Stop and join every thread still running (none the second time).
    fn join_threads(&mut self) -> Joined {
        self.stop_workers.store(true, Ordering::Release);
        // Threads blocked in epoll_wait see the flag now.
        self.workers.iter().for_each(|w| w.updates.waker.wake());
        let mut workers: Vec<_> = self
            .workers
            .iter_mut()
            .filter_map(|w| w.thread.take())
            .map(|t| {
                t.join()
                    .map_err(|_| anyhow!("a worker thread panicked"))
                    .and_then(|r| r)
            })
            .collect();
        self.stop_consumers.store(true, Ordering::Release);
        self.consumers.iter().for_each(|c| c.commands.waker.wake());
        let mut endpoints = Vec::new();
        let mut consumer_panicked = false;
        for c in &mut self.consumers {
            match c.thread.take().map(|t| t.join()) {
                Some(Ok(stopped)) => {
                    endpoints.extend(stopped.endpoints);
                    // Run to completion: the queues' workers ran on this thread.
                    workers.extend(stopped.queues);
                }
                Some(Err(_)) => consumer_panicked = true,
                None => {}
            }
        }
        Joined {
            workers,
            endpoints,
            consumer_panicked,
        }
    }

    /// Stop the threads (after they drain what is already queued) and collect the results.
    pub fn stop(mut self) -> Result<Finished> {
        let xdp = self.classifier.counters()?;
        let mut joined = self.join_threads();
        let queue_sockets = match std::mem::take(&mut joined.workers)
            .into_iter()
            .collect::<Result<Vec<_>>>()
        {
            Ok(sockets) if !joined.consumer_panicked => sockets,
            Ok(_) => {
                joined.discard();
                return Err(anyhow!("a consumer thread panicked"));
            }
            Err(e) => {
                joined.discard();
                return Err(e);
            }
        };
        let mut by_slot: std::collections::HashMap<_, _> =
            joined.endpoints.into_iter().map(|f| (f.slot, f)).collect();
        let mut sockets = Vec::new();
        let endpoints = self
            .in_attach_order()
            .into_iter()
            .map(|a| {
                let mut f = by_slot
                    .remove(&a.slot)
                    .expect("every endpoint has a consumer");
                sockets.append(&mut f.sockets);
                drop(f.port.take());
                result(a, f)
            })
            .collect();
        close_in_parallel(sockets);
        let queues = self
            .queues
            .iter()
            .zip(queue_sockets)
            .zip(&self.tx_pools)
            .map(|((q, socket), (pool, size))| QueueSnapshot {
                socket,
                tx_pool_free: pool.len() as u64,
                tx_pool: *size as u64,
                ..q.snapshot()
            })
            .collect();
        Ok(Finished {
            endpoints,
            queues,
            xdp,
        })
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.join_threads().discard();
    }
}
