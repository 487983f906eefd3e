//! Endpoint slots: the small integers the classifier maps keys to (index into the XSKMAP).
//! The lowest free slot is reused first, so the XSKMAP stays dense.
use std::collections::BTreeSet;

use anyhow::{Result, bail};

pub(super) struct Slots {
    free: BTreeSet<u32>,
    next: u32,
    limit: u32,
}

impl Slots {
    pub(super) fn new(limit: u32) -> Self {
        Self {
            free: BTreeSet::new(),
            next: 0,
            limit,
        }
    }

    pub(super) fn take(&mut self) -> Result<u32> {
        if let Some(slot) = self.free.pop_first() {
            return Ok(slot);
        }
        if self.next >= self.limit {
            bail!("all {} endpoint slots are in use", self.limit);
        }
        self.next += 1;
        Ok(self.next - 1)
    }

    pub(super) fn give_back(&mut self, slot: u32) {
        debug_assert!(slot < self.next && !self.free.contains(&slot));
        self.free.insert(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_lowest_and_refuses_past_the_limit() {
        let mut s = Slots::new(3);
        assert_eq!(
            (s.take().unwrap(), s.take().unwrap(), s.take().unwrap()),
            (0, 1, 2)
        );
        assert!(
            s.take()
                .unwrap_err()
                .to_string()
                .contains("all 3 endpoint slots")
        );
        s.give_back(2);
        s.give_back(0);
        assert_eq!(s.take().unwrap(), 0);
        assert_eq!(s.take().unwrap(), 2);
    }
}
