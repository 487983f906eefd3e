//! Multi-step changes that happen whole or not at all. A [`Rollback`] borrows what the steps
//! change (the dataplane, a netlink handle, `()` when the undo actions own what they need);
//! each step that made something registers the action that unmakes it; [`Rollback::commit`]
//! keeps everything, and a `Rollback` dropped without it (an early `?`, a panic) undoes the
//! steps in reverse order. So no error path has to remember what came before it: the control
//! path's create commands and the dataplane's endpoint attach both use it.
use std::ops::{Deref, DerefMut};

type Undo<'a, T> = Box<dyn FnOnce(&mut T) + 'a>;

/// Undo actions for the steps taken so far on `T`, run in reverse on Drop unless committed.
/// Derefs to `T`, so the steps themselves go through it.
#[must_use = "a Rollback dropped at once undoes its steps: keep it until commit"]
pub struct Rollback<'a, T: ?Sized> {
    target: &'a mut T,
    undo: Vec<Undo<'a, T>>,
}

impl<'a, T: ?Sized> Rollback<'a, T> {
    pub fn new(target: &'a mut T) -> Self {
        Self {
            target,
            undo: Vec::new(),
        }
    }

    /// Register how to unmake the step just taken.
    pub fn on_rollback(&mut self, undo: impl FnOnce(&mut T) + 'a) {
        self.undo.push(Box::new(undo));
    }

    /// Keep every step: nothing is undone.
    pub fn commit(mut self) {
        self.undo.clear();
    }
}

impl<T: ?Sized> Deref for Rollback<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.target
    }
}

impl<T: ?Sized> DerefMut for Rollback<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.target
    }
}

impl<T: ?Sized> Drop for Rollback<'_, T> {
    fn drop(&mut self) {
        while let Some(undo) = self.undo.pop() {
            undo(self.target);
        }
    }
}

impl<T: ?Sized> std::fmt::Debug for Rollback<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rollback({} steps to undo)", self.undo.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_undoes_in_reverse_and_commit_keeps() {
        let mut log = Vec::new();
        {
            let mut r = Rollback::new(&mut log);
            r.push(1);
            r.on_rollback(|l| l.push(-1));
            r.push(2);
            r.on_rollback(|l| l.push(-2));
        }
        assert_eq!(log, [1, 2, -2, -1]);
        log.clear();
        let mut r = Rollback::new(&mut log);
        r.push(1);
        r.on_rollback(|l| l.clear());
        r.commit();
        assert_eq!(log, [1]);
    }

    #[test]
    fn an_early_return_rolls_back() {
        fn attempt(made: &mut Vec<&'static str>, fail: bool) -> Result<(), &'static str> {
            let mut r = Rollback::new(made);
            r.push("a");
            r.on_rollback(|m| m.retain(|x| *x != "a"));
            if fail {
                return Err("step b failed");
            }
            r.push("b");
            r.commit();
            Ok(())
        }
        let mut made = Vec::new();
        assert!(attempt(&mut made, true).is_err());
        assert!(made.is_empty());
        attempt(&mut made, false).unwrap();
        assert_eq!(made, ["a", "b"]);
    }
}
