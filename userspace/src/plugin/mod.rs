//! Runtime adapters: container engines driving the control path (Docker's network plugin).
pub mod docker;
