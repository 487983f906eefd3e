//! Records that dependencies write through the `log` facade (aya, the netlink crates) reach
//! the same driver as xmacvlan's own events, tagged with `log.target`. Only `info` and above
//! are taken: their debug output is per-message chatter that would drown xmacvlan's own.

/// The `log` → `tracing` bridge.
pub struct LogBridge;

/// The most detailed dependency records forwarded.
pub const BRIDGE_MAX_LEVEL: log::LevelFilter = log::LevelFilter::Info;

impl log::Log for LogBridge {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= BRIDGE_MAX_LEVEL
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let target = record.target();
        let message = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(log.target = target, "{message}"),
            log::Level::Warn => tracing::warn!(log.target = target, "{message}"),
            log::Level::Info => tracing::info!(log.target = target, "{message}"),
            log::Level::Debug => tracing::debug!(log.target = target, "{message}"),
            log::Level::Trace => tracing::trace!(log.target = target, "{message}"),
        }
    }

    fn flush(&self) {}
}

/// Route the `log` facade into tracing for the whole process (once; later calls do nothing).
pub(super) fn install() {
    static BRIDGE: LogBridge = LogBridge;
    if log::set_logger(&BRIDGE).is_ok() {
        log::set_max_level(BRIDGE_MAX_LEVEL);
    }
}
