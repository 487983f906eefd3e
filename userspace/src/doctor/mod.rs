//! `xmacvlan doctor [--iface IF]`: finds out why frames do not reach the fast path.
//!
//! Each check produces a [`Finding`]: a severity, what was found, why it matters and the
//! command that fixes it. Facts are gathered first ([`facts`]), then judged by pure functions
//! ([`checks`]) that the tests feed with made-up facts.
//!
//! Exit status: 0 when no finding is an error (warnings included unless `--strict`), 1 when
//! something is wrong.
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;

pub mod chain;
pub mod checks;
pub mod facts;
pub mod xdp;

pub use checks::{check_daemon_state, check_interface, check_system};
pub use facts::{
    DaemonFacts, InterfaceFacts, LinkFacts, SystemFacts, daemon_facts, interface_facts,
    system_facts,
};

#[derive(clap::Args, Debug, Clone)]
pub struct DoctorArgs {
    /// Check this interface too (the parent NIC); repeat for several.
    #[arg(long = "iface", value_name = "IF")]
    pub ifaces: Vec<String>,
    /// Print the findings as JSON.
    #[arg(long)]
    pub json: bool,
    /// Exit with status 1 on warnings too, not only on errors.
    #[arg(long)]
    pub strict: bool,
    /// The daemon's pid file (checked for a crashed daemon) [default: beside the control
    /// socket, /run/xmacvlan/xmacvlan.pid].
    #[arg(long, value_name = "PATH")]
    pub pid_file: Option<PathBuf>,
    /// The daemon's control socket (checked for a crashed daemon): the global
    /// `--control-socket` when given explicitly, else control-socket from the configuration
    /// file, else /run/xmacvlan/xmacvlan.sock.
    #[arg(skip)]
    pub control_socket: Option<PathBuf>,
    /// The daemon's configuration file, checked too [default: /etc/xmacvlan/daemon.json,
    /// which may be absent].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Clear the claims a dead daemon left in the classifier pinned on each --iface (only
    /// while no daemon runs), then check.
    #[arg(long, requires = "ifaces")]
    pub fix: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Ok,
    Warn,
    Error,
}

impl Severity {
    pub fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

/// One thing the doctor found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Short id of the check: `privileges`, `af-xdp`, `promiscuous`, ...
    pub check: &'static str,
    /// The interface a per-interface finding is about (null for system findings).
    pub subject: Option<String>,
    pub severity: Severity,
    pub what: String,
    /// Why it matters (for warnings and errors; null otherwise).
    pub why: Option<String>,
    /// The command or setting that fixes it (null when there is nothing to run).
    pub fix: Option<String>,
}

/// All findings of one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn count(&self, severity: Severity) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == severity)
            .count()
    }

    /// 1 when something is wrong (an error, or with `strict` a warning), else 0.
    pub fn exit_code(&self, strict: bool) -> i32 {
        let worst = self
            .findings
            .iter()
            .map(|f| f.severity)
            .max()
            .unwrap_or(Severity::Ok);
        match worst {
            Severity::Error => 1,
            Severity::Warn if strict => 1,
            _ => 0,
        }
    }

    /// The human-readable report: one line per finding, `why` and `fix` under problems.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let mut subject: Option<&str> = None;
        writeln!(out, "system").ok();
        for f in &self.findings {
            if f.subject.as_deref() != subject {
                subject = f.subject.as_deref();
                writeln!(out, "\ninterface {}", subject.unwrap_or("?")).ok();
            }
            writeln!(
                out,
                "  {:<5}  {:<15}  {}",
                f.severity.label(),
                f.check,
                f.what
            )
            .ok();
            if let Some(why) = &f.why {
                writeln!(out, "  {:<5}  {:<15}  why: {why}", "", "").ok();
            }
            if let Some(fix) = &f.fix {
                writeln!(out, "  {:<5}  {:<15}  fix: {fix}", "", "").ok();
            }
        }
        let (errors, warnings) = (self.count(Severity::Error), self.count(Severity::Warn));
        let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
        writeln!(
            out,
            "\n{}, {}, {} ok",
            plural(errors, "error"),
            plural(warnings, "warning"),
            self.count(Severity::Ok)
        )
        .ok();
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "findings": self.findings,
            "errors": self.count(Severity::Error),
            "warnings": self.count(Severity::Warn),
        })
    }
}

/// Gather every fact and run every check (system, daemon state, each interface).
pub fn examine(args: &DoctorArgs) -> Result<Report> {
    let (config_path, required) = match &args.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(crate::config::DEFAULT_PATH), false),
    };
    let exists = config_path.exists();
    let config = if required || exists {
        crate::config::DaemonConfig::load(&config_path)
    } else {
        Ok(crate::config::DaemonConfig::default())
    };
    let socket = match (&args.control_socket, &config) {
        (Some(s), _) => s.clone(),
        (None, Ok(c)) => c.control_socket.clone(),
        (None, Err(_)) => PathBuf::from(crate::config::DEFAULT_CONTROL_SOCKET),
    };
    let system = system_facts();
    let pid_file = args
        .pid_file
        .clone()
        .unwrap_or_else(|| crate::ipc::pid_path(&socket));
    let daemon = daemon_facts(&pid_file, &socket);
    // A running daemon's configuration is the one that matters: the file on its command line.
    let running = daemon
        .pid
        .filter(|_| daemon.daemon_running() && args.config.is_none())
        .and_then(|pid| u32::try_from(pid).ok());
    let (config_path, exists, config) = match running.and_then(crate::ipc::alive::config_flag) {
        Some(path) => {
            let loaded = crate::config::DaemonConfig::load(&path);
            (path.clone(), path.exists(), loaded)
        }
        None => (config_path, exists, config),
    };
    let mut findings = check_system(&system);
    findings.push(checks::check_config(&config_path, exists, &config, running));
    findings.extend(check_daemon_state(&daemon));
    if args.fix {
        for name in &args.ifaces {
            findings.push(fix_stale_claims(name, daemon.daemon_running()));
        }
    }
    if !args.ifaces.is_empty() {
        let nl = crate::netlink::Netlink::new()?;
        // How the daemon places the classifier (its file's settings; the defaults when it
        // could not be read, which the config finding reports).
        let placement = config
            .as_ref()
            .map(crate::dataplane::DataplaneConfig::from_daemon)
            .unwrap_or_default()
            .attach_options();
        for name in &args.ifaces {
            let facts = interface_facts(&nl, name)?;
            findings.extend(check_interface(&facts, daemon.daemon_running(), &placement));
        }
    }
    Ok(Report { findings })
}

/// `--fix`: release what a dead daemon's classifier still claims on `name`.
fn fix_stale_claims(name: &str, daemon_running: bool) -> Finding {
    let finding = |severity, what: String| Finding {
        check: "fix",
        subject: Some(name.to_string()),
        severity,
        what,
        why: None,
        fix: None,
    };
    if daemon_running {
        return finding(
            Severity::Ok,
            "a daemon runs: it owns the claims, nothing to fix".into(),
        );
    }
    let pins = crate::xdp::PinDir::for_interface(name);
    match crate::xdp::Classifier::open_pinned(&pins).and_then(|c| match c {
        Some(mut c) => c.clear_state().map(Some),
        None => Ok(None),
    }) {
        Ok(Some((claims, keys))) => finding(
            Severity::Ok,
            format!(
                "cleared {claims} stale claims and {keys} keys of the classifier pinned in {}",
                pins.path().display()
            ),
        ),
        Ok(None) => finding(
            Severity::Ok,
            format!("no classifier is pinned in {}", pins.path().display()),
        ),
        Err(e) => finding(
            Severity::Error,
            format!("clearing the pinned classifier's claims: {e:#}"),
        ),
    }
}

/// `xmacvlan doctor`: print the report and exit 1 if something is wrong.
pub fn main(args: DoctorArgs) -> Result<()> {
    let report = examine(&args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        print!("{}", report.render_text());
    }
    let code = report.exit_code(args.strict);
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
