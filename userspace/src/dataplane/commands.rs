//! Commands to the dataplane's threads: a bounded push onto a thread's command queue, and
//! one send-and-ask for the commands that carry a reply channel.
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use super::idle::Mailbox;

/// How long a thread may take to take a command, and then to answer it.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// A thread that did not take a command, or did not answer it in time: what was asked.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct Unanswered(pub(super) String);

/// Push a command to a thread's queue (which wakes it), waiting briefly if it is full
/// (commands are rare).
pub(super) fn send<T>(queue: &Mailbox<T>, mut item: T) -> Result<(), Unanswered> {
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    loop {
        match queue.push(item) {
            Ok(()) => return Ok(()),
            Err(back) if Instant::now() < deadline => {
                item = back;
                std::thread::sleep(Duration::from_micros(100));
            }
            Err(_) => {
                return Err(Unanswered(
                    "a dataplane thread is not taking commands".into(),
                ));
            }
        }
    }
}

/// Send the command `make(reply)` and wait for its answer; `silent` says who did not answer
/// (the error when no answer comes within 5 s).
pub(super) fn ask<T, R>(
    queue: &Mailbox<T>,
    make: impl FnOnce(SyncSender<R>) -> T,
    silent: impl FnOnce() -> String,
) -> Result<R, Unanswered> {
    let (reply, answer) = std::sync::mpsc::sync_channel(1);
    send(queue, make(reply))?;
    answer
        .recv_timeout(ANSWER_TIMEOUT)
        .map_err(|_| Unanswered(silent()))
}
