//! Undo on failure for the create paths: each step that made something pushes how to unmake
//! it; returning early (an error, a panic) drops the [`Rollback`], which undoes the steps in
//! reverse order. [`Rollback::commit`] keeps everything once the last step succeeded.
//!
//! An undo that fails is logged and the others still run: the caller's error is the one the
//! user needs, and the log names whatever could not be removed.

type Undo<'a> = Box<dyn FnOnce() -> anyhow::Result<()> + 'a>;

#[must_use = "dropping a Rollback at once undoes every step pushed so far"]
#[derive(Default)]
pub struct Rollback<'a> {
    steps: Vec<(String, Undo<'a>)>,
}

impl<'a> Rollback<'a> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Record how to undo a step just done; `what` names it in the log if undoing fails.
    pub fn push(
        &mut self,
        what: impl Into<String>,
        undo: impl FnOnce() -> anyhow::Result<()> + 'a,
    ) {
        self.steps.push((what.into(), Box::new(undo)));
    }

    /// Every step succeeded: keep them.
    pub fn commit(mut self) {
        self.steps.clear();
    }
}

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        while let Some((what, undo)) = self.steps.pop() {
            if let Err(e) = undo() {
                tracing::warn!("undoing {what} after a failure: {e:#}; remove it by hand");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    #[test]
    fn undoes_in_reverse_unless_committed() {
        let log = RefCell::new(Vec::new());
        {
            let mut r = Rollback::new();
            r.push("a", || {
                log.borrow_mut().push("a");
                Ok(())
            });
            r.push("b", || {
                log.borrow_mut().push("b");
                anyhow::bail!("b failed")
            });
            r.push("c", || {
                log.borrow_mut().push("c");
                Ok(())
            });
        }
        assert_eq!(*log.borrow(), ["c", "b", "a"], "a failing undo stops none");
        log.borrow_mut().clear();
        let mut r = Rollback::new();
        r.push("a", || {
            log.borrow_mut().push("a");
            Ok(())
        });
        r.commit();
        assert!(log.borrow().is_empty());
    }
}
