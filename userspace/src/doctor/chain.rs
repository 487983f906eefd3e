//! libxdp's multi-program dispatcher on an interface: every program of its chain in the order
//! a frame meets them (name, id, priority, chain-call actions), and which one takes the
//! endpoints' frames first.
use super::checks::{ok, problem};
use super::{Finding, Severity};
use crate::abi;
use crate::modes::{XdpAttach, XdpMode};
use crate::xdp::{AttachOptions, ChainProgram, XdpAction, place};

/// A program of xmacvlan's object.
pub fn is_ours(p: &ChainProgram) -> bool {
    abi::PROGRAMS.contains(&p.name.as_str())
}

/// The dispatcher `id` (running in `mode`) on `name` with `programs`, as libxdp orders them.
/// `expected`: a daemon runs, or xmacvlan's classifier is pinned to outlive one; `opts`: how
/// the daemon's configuration places the classifier.
pub fn check_dispatcher(
    name: &str,
    (id, mode): (u32, XdpMode),
    programs: &[ChainProgram],
    expected: bool,
    opts: &AttachOptions,
) -> Vec<Finding> {
    let ours = programs.iter().find(|p| is_ours(p));
    let dispatcher = format!(
        "{name} runs libxdp's multi-program dispatcher (id {id}, {mode} mode) with {} program{}",
        programs.len(),
        if programs.len() == 1 { "" } else { "s" }
    );
    let mut out = vec![match ours {
        Some(_) if expected => ok(
            "xdp-program",
            format!("{dispatcher}; xmacvlan's classifier is one of them"),
        ),
        Some(p) => problem(
            "xdp-program",
            Severity::Warn,
            format!(
                "{dispatcher}; xmacvlan's classifier (id {}) is one of them, but no daemon runs \
                 and it is not pinned",
                p.id
            ),
            "a crashed `xmacvlan run` left it in the chain: its sockets are gone, so it claims \
             nothing, but it costs every frame a lookup",
            Some(format!("xdp-loader unload {name} --id {}", p.id)),
        ),
        None if opts.attach == XdpAttach::Alone => problem(
            "xdp-program",
            Severity::Error,
            format!("{dispatcher}, and xdp-attach is alone: xmacvlan refuses {name}"),
            "with xdp-attach alone xmacvlan needs the interface to itself",
            Some(
                "set \"xdp-attach\": \"auto\" in daemon.json (or --xdp-attach auto) to join the \
                 dispatcher beside them"
                    .into(),
            ),
        ),
        None => ok(
            "xdp-program",
            format!(
                "{dispatcher}; xmacvlan joins it (xdp-attach {}) at priority {}",
                opts.attach, opts.priority
            ),
        ),
    }];
    for (i, p) in programs.iter().enumerate() {
        out.push(ok(
            "xdp-chain",
            format!(
                "{}. {} (id {}): priority {}, {}{}",
                i + 1,
                p.name,
                p.id,
                p.priority,
                chain_call(&p.chain_call),
                if is_ours(p) {
                    " (xmacvlan's classifier)"
                } else {
                    ""
                }
            ),
        ));
    }
    if opts.attach != XdpAttach::Alone || ours.is_some() {
        out.push(first_taker(programs, ours, opts.priority));
    }
    out
}

fn chain_call(actions: &[XdpAction]) -> String {
    match actions {
        [] => "chain-call on nothing (every verdict is final)".into(),
        _ => format!(
            "chain-call on {}",
            actions
                .iter()
                .map(|a| a.name())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Which program takes the endpoints' frames first, and whether xmacvlan's classifier gets
/// them at all: every program before it must go on to the next one on `pass`.
fn first_taker(programs: &[ChainProgram], ours: Option<&ChainProgram>, priority: u32) -> Finding {
    let (position, joined) = match ours {
        Some(me) => (
            programs.iter().position(|p| p.id == me.id).unwrap_or(0),
            true,
        ),
        None => (
            place::position_in_chain(programs, priority, abi::PROGRAM_CLASSIFY),
            false,
        ),
    };
    let (runs, gets) = match joined {
        true => ("runs", "gets"),
        false => ("would run", "would get"),
    };
    let before = &programs[..position];
    let Some(first) = before.first() else {
        return ok(
            "xdp-first",
            format!(
                "xmacvlan's classifier {runs} first and takes the endpoints' frames before any \
                 other program; those after it see only what it passes (frames of unclaimed \
                 endpoints and everything else)"
            ),
        );
    };
    let label = |p: &ChainProgram| format!("{} (id {}, priority {})", p.name, p.id, p.priority);
    if let Some(stop) = before
        .iter()
        .find(|p| !p.chain_call.contains(&XdpAction::Pass))
    {
        return problem(
            "xdp-first",
            Severity::Warn,
            format!(
                "{} {runs} before xmacvlan's classifier and does not chain-call on pass: every \
                 frame it passes goes straight to the kernel",
                label(stop)
            ),
            "the classifier never sees the endpoints' frames, so the fast path gets nothing \
             (the endpoints still get them through their kernel devices)",
            Some(format!(
                "give xmacvlan a priority below {}: \"xdp-priority\" in daemon.json (or \
                 --xdp-priority), then restart the daemon; or load {} with chain-call on pass",
                stop.priority, stop.name
            )),
        );
    }
    ok(
        "xdp-first",
        format!(
            "{} takes the endpoints' frames first; xmacvlan's classifier {gets} what {} \
             pass{} on (each chain-calls on pass): a frame dropped or redirected before it \
             never reaches the fast path",
            label(first),
            match before.len() {
                1 => "it".to_string(),
                n => format!("all {n}"),
            },
            if before.len() == 1 { "es" } else { "" }
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(name: &str, id: u32, priority: u32, chain: &[XdpAction]) -> ChainProgram {
        ChainProgram {
            name: name.into(),
            id,
            priority,
            chain_call: chain.to_vec(),
        }
    }

    fn opts(attach: XdpAttach, priority: u32) -> AttachOptions {
        AttachOptions {
            mode: XdpMode::Auto,
            attach,
            priority,
        }
    }

    fn find<'a>(f: &'a [Finding], check: &str) -> &'a Finding {
        f.iter().find(|x| x.check == check).unwrap()
    }

    #[test]
    fn every_program_is_listed_in_order_and_the_first_taker_is_named() {
        let filter = program("xdpfilt_alw_all", 10, 10, &[XdpAction::Pass]);
        let ours = program(abi::PROGRAM_CLASSIFY, 12, 50, &[XdpAction::Pass]);
        let chain = [filter.clone(), ours];
        let f = check_dispatcher(
            "v0",
            (14, XdpMode::Native),
            &chain,
            true,
            &opts(XdpAttach::Auto, 50),
        );
        assert_eq!(find(&f, "xdp-program").severity, Severity::Ok);
        let listed: Vec<&str> = f
            .iter()
            .filter(|x| x.check == "xdp-chain")
            .map(|x| x.what.as_str())
            .collect();
        assert_eq!(
            listed,
            [
                "1. xdpfilt_alw_all (id 10): priority 10, chain-call on pass",
                "2. xmv_classify (id 12): priority 50, chain-call on pass (xmacvlan's classifier)",
            ]
        );
        let first = find(&f, "xdp-first");
        assert_eq!(first.severity, Severity::Ok);
        assert!(
            first
                .what
                .starts_with("xdpfilt_alw_all (id 10, priority 10) takes")
        );

        // Not joined yet: where it would go.
        let f = check_dispatcher(
            "v0",
            (14, XdpMode::Native),
            std::slice::from_ref(&filter),
            false,
            &opts(XdpAttach::Auto, 5),
        );
        assert!(find(&f, "xdp-program").what.contains("xmacvlan joins it"));
        assert!(find(&f, "xdp-first").what.contains("would run first"));
    }

    #[test]
    fn a_program_before_xmacvlan_that_ends_the_chain_on_pass_is_a_warning() {
        let greedy = program("lb", 3, 10, &[XdpAction::Drop]);
        let f = check_dispatcher(
            "v0",
            (14, XdpMode::Native),
            &[greedy],
            false,
            &opts(XdpAttach::Dispatcher, 50),
        );
        let first = find(&f, "xdp-first");
        assert_eq!(first.severity, Severity::Warn);
        assert!(
            first.fix.as_ref().unwrap().contains("below 10"),
            "{first:?}"
        );
        assert!(find(&f, "xdp-chain").what.contains("chain-call on drop"));
    }

    #[test]
    fn alone_refuses_a_dispatcher_and_a_leftover_member_is_named() {
        let filter = program("xdpfilt_alw_all", 10, 10, &[XdpAction::Pass]);
        let f = check_dispatcher(
            "v0",
            (14, XdpMode::Generic),
            std::slice::from_ref(&filter),
            false,
            &opts(XdpAttach::Alone, 50),
        );
        assert_eq!(find(&f, "xdp-program").severity, Severity::Error);
        assert!(!f.iter().any(|x| x.check == "xdp-first"));
        let leftover = program(abi::PROGRAM_CLASSIFY, 12, 50, &[XdpAction::Pass]);
        let f = check_dispatcher(
            "v0",
            (14, XdpMode::Generic),
            &[filter, leftover],
            false,
            &opts(XdpAttach::Auto, 50),
        );
        let program = find(&f, "xdp-program");
        assert_eq!(program.severity, Severity::Warn);
        assert_eq!(program.fix.as_deref(), Some("xdp-loader unload v0 --id 12"));
    }
}
