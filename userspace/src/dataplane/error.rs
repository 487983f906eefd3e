//! The dataplane's errors, as its callers tell them apart: a setting or an endpoint it cannot
//! take (the message names the fix), a name it does not know or already has, a port question
//! that does not fit, a thread that did not answer, and a step the kernel or a lower layer
//! refused (the step named, the cause kept as the source, so `{:#}` shows the errno).

/// What went wrong in the dataplane.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// A setting that cannot work.
    #[error("{0}")]
    Config(String),
    /// No interface of that name in the calling thread's namespace.
    #[error("no interface named `{0}` (check `ip link show`)")]
    NoInterface(String),
    /// An endpoint the dataplane cannot take as given (its VLAN, its MAC, a clash).
    #[error("{0}")]
    Endpoint(String),
    #[error("no endpoint named `{0}` is attached")]
    NotAttached(String),
    #[error("an endpoint named `{0}` is already attached")]
    AlreadyAttached(String),
    /// A port request that does not fit the endpoint's state (it has one already, or none).
    #[error("{0}")]
    Port(String),
    /// A dataplane thread did not take a command or answer it in time, or panicked.
    #[error("{0}")]
    Thread(String),
    /// A step the kernel or a lower layer refused.
    #[error("{step}")]
    Step {
        step: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

/// `Result` with a [`DataplaneError`].
pub type Result<T, E = DataplaneError> = std::result::Result<T, E>;

impl DataplaneError {
    /// Name the step that failed, keeping why as the source.
    pub(super) fn step(step: impl Into<String>) -> impl FnOnce(anyhow::Error) -> Self {
        move |source| DataplaneError::Step {
            step: step.into(),
            source: source.into(),
        }
    }
}

impl From<super::commands::Unanswered> for DataplaneError {
    fn from(e: super::commands::Unanswered) -> Self {
        DataplaneError::Thread(e.0)
    }
}
