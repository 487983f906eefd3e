//! Preferred busy polling on a queue's socket (see `crate::nic::busy_poll`): the options that
//! ask for it, the NAPI id it needs, and the call that runs the queue's NAPI once.
use std::os::fd::AsRawFd;

use anyhow::{Context, Result};

use super::RxSocket;

const SO_BUSY_POLL: libc::c_int = 46;
const SO_INCOMING_NAPI_ID: libc::c_int = 56;
const SO_PREFER_BUSY_POLL: libc::c_int = 69;
const SO_BUSY_POLL_BUDGET: libc::c_int = 70;

impl RxSocket {
    /// The id of the NAPI instance the socket's queue is processed by, as the kernel marked
    /// it at bind; 0 when the queue has none (veth never registers its NAPI with its
    /// queues), and busy polling cannot engage.
    pub fn napi_id(&self) -> Result<u32> {
        let mut id: libc::c_uint = 0;
        let mut len = std::mem::size_of::<libc::c_uint>() as libc::socklen_t;
        // SAFETY: `id` and `len` are live and writable, `len` holds id's size.
        let ret = unsafe {
            libc::getsockopt(
                self.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_INCOMING_NAPI_ID,
                (&mut id as *mut libc::c_uint).cast(),
                &mut len,
            )
        };
        if ret != 0 {
            return Err(std::io::Error::last_os_error()).context("getsockopt(SO_INCOMING_NAPI_ID)");
        }
        Ok(id)
    }

    /// Ask for preferred busy polling taking up to `budget` frames a poll, for the calls of
    /// [`Self::busy_poll`].
    pub fn prefer_busy_poll(&self, busy_poll_us: u32, budget: u16) -> Result<()> {
        for (name, option, value) in [
            ("SO_PREFER_BUSY_POLL", SO_PREFER_BUSY_POLL, 1),
            ("SO_BUSY_POLL", SO_BUSY_POLL, busy_poll_us as libc::c_int),
            (
                "SO_BUSY_POLL_BUDGET",
                SO_BUSY_POLL_BUDGET,
                libc::c_int::from(budget),
            ),
        ] {
            // SAFETY: `value` is a live c_int of the size passed; the kernel copies it.
            let ret = unsafe {
                libc::setsockopt(
                    self.as_raw_fd(),
                    libc::SOL_SOCKET,
                    option,
                    (&value as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if ret != 0 {
                return Err(std::io::Error::last_os_error()).with_context(|| {
                    format!(
                        "setsockopt({name}, {value}) on queue {}'s socket",
                        self.queue
                    )
                });
            }
        }
        Ok(())
    }

    /// Run the queue's NAPI once (a non-blocking `recvfrom` with no buffer: the kernel busy
    /// polls the socket's NAPI, and kicks a driver that asked for a wake-up). Call it when
    /// the socket's ring is empty, at most once per pass: never per frame.
    #[inline]
    pub fn busy_poll(&mut self) {
        // SAFETY: a zero-length receive into no buffer touches no memory of ours; the fd is
        // this socket's.
        unsafe {
            libc::recvfrom(
                self.as_raw_fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
    }
}
