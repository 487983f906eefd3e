//! Property tests for everything that parses outside input: frames off the wire, the daemon's
//! config file, the command line and the persisted state file. Each input kind gets hostile
//! data (random bytes, truncations, stray tags, garbage JSON) and must never panic; where a
//! second opinion exists (etherparse for frames, a re-parse for the config) the two agree.
//! Sized for CI: a few seconds each. No root needed.
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use etherparse::{Ethernet2HeaderSlice, SingleVlanHeaderSlice};
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use xmacvlan::abi::Key;
use xmacvlan::config::{DaemonConfig, KEYS};
use xmacvlan::control::state::{State, Store};
use xmacvlan::frame::{self, Class};
use xmacvlan_bench::test_frame::{MIN_FRAME, TestFrame};

const MAX_FRAME: usize = 9000;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Failures are reported with their shrunk input; no regression files in the tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Frames

/// What the classifier must say, worked out with etherparse's header parsers (an independent
/// reading of the same bytes). `None` for unicast means "a unicast key", compared separately.
#[derive(Debug, PartialEq)]
enum Expected {
    Key(Key),
    Group,
    Stacked,
    Malformed,
}

fn oracle(bytes: &[u8]) -> Expected {
    let Ok(eth) = Ethernet2HeaderSlice::from_slice(bytes) else {
        return Expected::Malformed;
    };
    let dst = eth.destination();
    let mut vid = 0;
    match eth.ether_type().0 {
        frame::TPID_8021AD => return Expected::Stacked,
        frame::TPID_8021Q => {
            let Ok(tag) = SingleVlanHeaderSlice::from_slice(&bytes[frame::ETH_HLEN..]) else {
                return Expected::Malformed; // cut inside the tag
            };
            if matches!(tag.ether_type().0, frame::TPID_8021Q | frame::TPID_8021AD) {
                return Expected::Stacked;
            }
            vid = tag.vlan_identifier().value();
        }
        _ => {}
    }
    if dst[0] & 1 != 0 {
        Expected::Group
    } else {
        Expected::Key(Key { vid, mac: dst })
    }
}

fn classified(bytes: &[u8]) -> Expected {
    match frame::classify(bytes) {
        Class::Unicast(k) | Class::Control(k) => Expected::Key(k),
        Class::Group => Expected::Group,
        Class::Stacked => Expected::Stacked,
        Class::Malformed => Expected::Malformed,
    }
}

/// VLAN ids with the edges (0 = priority tag, 4095 = reserved) drawn often.
fn vid() -> impl Strategy<Value = u16> {
    prop_oneof![Just(0u16), Just(4095u16), Just(1u16), 0u16..4096]
}

/// A tag: TPID (802.1Q, 802.1ad, the old 0x9100, anything) and a TCI with random PCP/DEI bits.
fn tag() -> impl Strategy<Value = (u16, u16)> {
    let tpid = prop_oneof![
        3 => Just(frame::TPID_8021Q),
        2 => Just(frame::TPID_8021AD),
        1 => Just(0x9100u16),
        1 => any::<u16>(),
    ];
    (tpid, vid(), 0u16..16).prop_map(|(tpid, vid, bits)| (tpid, (bits << 12) | vid))
}

fn dst_mac() -> impl Strategy<Value = [u8; 6]> {
    prop_oneof![
        Just(frame::BROADCAST),
        Just([0x01, 0x00, 0x5e, 0, 0, 1]),
        Just([0x33, 0x33, 0, 0, 0, 1]),
        any::<[u8; 5]>().prop_map(|t| [0x02, t[0], t[1], t[2], t[3], t[4]]),
        any::<[u8; 6]>(),
    ]
}

/// Ethernet frames built field by field (0 to 2 tags, control and test EtherTypes, sizes up
/// to 9000), then optionally cut anywhere, inside a tag included.
fn structured_frame() -> impl Strategy<Value = Vec<u8>> {
    let ethertype = prop_oneof![
        Just(frame::ETHERTYPE_TEST),
        Just(frame::ETHERTYPE_ARP),
        Just(frame::ETHERTYPE_IPV4),
        Just(frame::ETHERTYPE_IPV6),
        any::<u16>(),
    ];
    (
        dst_mac(),
        any::<[u8; 6]>(),
        prop::collection::vec(tag(), 0..=2),
        ethertype,
        prop::collection::vec(any::<u8>(), 0..48),
        0usize..=MAX_FRAME,
        prop::option::weighted(0.5, any::<prop::sample::Index>()),
    )
        .prop_map(|(dst, src, tags, ethertype, head, len, cut)| {
            let mut f = Vec::with_capacity(len.max(64));
            f.extend_from_slice(&dst);
            f.extend_from_slice(&src);
            for (tpid, tci) in tags {
                f.extend_from_slice(&tpid.to_be_bytes());
                f.extend_from_slice(&tci.to_be_bytes());
            }
            f.extend_from_slice(&ethertype.to_be_bytes());
            f.extend_from_slice(&head);
            f.resize(f.len().max(len), 0);
            if let Some(cut) = cut {
                f.truncate(cut.index(f.len() + 1));
            }
            f
        })
}

fn check_frame(bytes: &[u8]) -> Result<(), TestCaseError> {
    prop_assert_eq!(classified(bytes), oracle(bytes), "frame {:02x?}", bytes);
    // The payload readers take any bytes; an offset they return lies inside the frame.
    if let Some(at) = frame::payload_offset(bytes) {
        prop_assert!(at <= bytes.len());
    }
    let _ = frame::read_payload(bytes);
    Ok(())
}

proptest! {
    #![proptest_config(config(65_536))]

    #[test]
    fn frames_built_field_by_field_agree_with_etherparse(bytes in structured_frame()) {
        check_frame(&bytes)?;
    }
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn random_bytes_never_panic_and_agree(bytes in prop::collection::vec(any::<u8>(), 0..=MAX_FRAME)) {
        check_frame(&bytes)?;
    }

    /// The generator's frames classify to the key they were built for and carry their payload.
    #[test]
    fn test_frames_round_trip(
        dst in any::<[u8; 5]>(),
        vid in prop::option::of(vid()),
        len in 0usize..=MAX_FRAME,
        stream in any::<u16>(),
    ) {
        let dst = [0x02, dst[0], dst[1], dst[2], dst[3], dst[4]];
        let f = TestFrame { dst, src: [0x02, 0, 0, 0, 0, 0xfe], vid, qinq_outer: None, len }
            .build(stream);
        prop_assert_eq!(f.len(), len.max(MIN_FRAME));
        prop_assert_eq!(
            frame::classify(&f),
            Class::Unicast(Key { vid: vid.unwrap_or(0), mac: dst })
        );
        let p = frame::read_payload(&f).expect("a test frame carries its payload");
        prop_assert_eq!((p.vid, p.stream), (vid.unwrap_or(0), stream));
        // Any prefix cut inside the tag is malformed, never a key.
        if vid.is_some() {
            for cut in frame::ETH_HLEN..frame::ETH_HLEN + frame::VLAN_HLEN {
                prop_assert_eq!(frame::classify(&f[..cut]), Class::Malformed);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// daemon.json

/// Words the parser has meanings for, so random objects often get past the type checks.
const WORDS: &[&str] = &[
    "debug",
    "info",
    "warn",
    "error",
    "fatal",
    "text",
    "json",
    "stderr",
    "json-file",
    "journald",
    "syslog",
    "xdp",
    "user",
    "kernel",
    "native",
    "generic",
    "auto",
    "zerocopy",
    "copy",
    "10m",
    "1g",
    "0",
    "-1",
    "1s",
    "100ms",
    "50ms",
    "2h",
    "127.0.0.1:9100",
    "[::1]:9100",
    "0.0.0.0:80",
    "localhost:1",
    "unix:/run/x.sock",
    "unix:",
    "/var/lib/x",
    "relative",
    "0-3",
    "1,2",
    "3-1",
    "",
    " ",
    "\u{0}",
    "é",
    "max-size",
    "path",
    "tag",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        (0u64..2048).prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(WORDS).prop_map(|w| json!(w)),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Known keys, log options, near-misses and arbitrary text.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(KEYS).prop_map(str::to_string),
        2 => prop::sample::select(&["max-size", "max-file", "path", "tag"][..]).prop_map(str::to_string),
        1 => prop::sample::select(KEYS).prop_map(|k| format!("{k}s")),
        1 => any::<String>(),
    ]
}

fn config_object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(key(), json_value(), 0..6).prop_map(|m| m.into_iter().collect())
}

const SOURCE: &str = "/etc/xmacvlan/test-daemon.json";

proptest! {
    #![proptest_config(config(1024))]

    /// Any text: parsed or refused, never a panic; refusals name the file.
    #[test]
    fn config_text_never_panics(text in prop_oneof![
        any::<String>(),
        prop::collection::vec(any::<u8>(), 0..256).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        json_value().prop_map(|v| v.to_string()),
    ]) {
        if let Err(e) = DaemonConfig::from_json_str(&text, SOURCE) {
            prop_assert!(e.to_string().starts_with(SOURCE), "{}", e);
        }
    }

    /// An object: accepted (and then a re-parse of its normalized form gives the same
    /// configuration), or refused with an error naming a key the object has.
    #[test]
    fn config_objects_are_accepted_or_name_the_key(map in config_object()) {
        let text = Value::Object(map.clone()).to_string();
        match DaemonConfig::from_json_str(&text, SOURCE) {
            Ok(cfg) => {
                prop_assert!(map.keys().all(|k| KEYS.contains(&k.as_str())), "accepted unknown key in {}", text);
                let again = DaemonConfig::from_json_str(&cfg.to_json().to_string(), SOURCE)
                    .map_err(|e| TestCaseError::fail(format!("normalized form refused: {e}")))?;
                prop_assert_eq!(again, cfg);
            }
            Err(e) => {
                let message = e.to_string();
                let key = e.key_name().ok_or_else(|| TestCaseError::fail(
                    format!("an error about an object names no key: {message}")))?;
                // `log-opts.NAME` for a log option, else a top-level key (dots and all).
                let (top, shown) = match key.strip_prefix("log-opts.") {
                    Some(option) if map.contains_key("log-opts") => {
                        ("log-opts", format!("option \"{option}\""))
                    }
                    _ => (key, format!("\"{key}\"")),
                };
                prop_assert!(map.contains_key(top), "error names {} not in {}: {}", key, text, message);
                prop_assert!(message.contains(&shown), "{}", message);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Command line

/// Tokens a user (or a script gone wrong) might type after `network create` / `endpoint create`.
const FLAGS: &[&str] = &[
    "--subnet",
    "--gateway",
    "--ip-range",
    "--aux-address",
    "-o",
    "--opt",
    "--host-shim",
    "--ipv6",
    "-d",
    "--driver",
    "--network",
    "--netns",
    "--ifname",
    "--ip",
    "--ip6",
    "--mac-address",
    "--data-root",
    "--control-socket",
    "--",
    "-",
    "--help",
    "-h",
    "--version",
    "--subnet=",
    "--ip=1.2.3.4",
    "-oparent=v0",
];
const VALUES: &[&str] = &[
    "198.18.0.0/24",
    "198.18.0.1",
    "2001:db8::/64",
    "2001:db8::1",
    "parent=v0.100",
    "parent=",
    "macvlan_mode=passthru",
    "host_shim=198.18.0.2",
    "02:42:c6:12:00:02",
    "ff:ff:ff:ff:ff:ff",
    "zz",
    "net1",
    "/run/netns/x",
    "eth0",
    "0",
    "",
    "=",
    "a=b=c",
    "999.1.1.1/99",
];

fn argument() -> impl Strategy<Value = OsString> {
    prop_oneof![
        4 => prop::sample::select(FLAGS).prop_map(OsString::from),
        4 => prop::sample::select(VALUES).prop_map(OsString::from),
        2 => any::<String>().prop_map(OsString::from),
        1 => prop::collection::vec(any::<u8>(), 0..12).prop_map(OsString::from_vec),
    ]
}

proptest! {
    #![proptest_config(config(1024))]

    /// Argument vectors parse or fail with a printable error; a parse that succeeds is the
    /// subcommand that was typed.
    #[test]
    fn cli_create_arguments_never_panic(
        network in any::<bool>(),
        args in prop::collection::vec(argument(), 0..10),
    ) {
        use clap::Parser;
        use xmacvlan::cli::{Cli, Command};
        use xmacvlan::cli::control::{EndpointCommand, NetworkCommand};
        let noun = if network { "network" } else { "endpoint" };
        let argv: Vec<OsString> = ["xmacvlan", noun, "create"]
            .into_iter()
            .map(OsString::from)
            .chain(args)
            .collect();
        match Cli::try_parse_from(&argv) {
            Ok(cli) => match cli.command {
                Command::Network(NetworkCommand::Create(a)) => {
                    prop_assert!(network);
                    // What the library checks next must not panic either.
                    let _ = xmacvlan::control::model::check_name(&a.name, "network");
                    for s in a.subnet.iter().chain(&a.ip_range) {
                        let _ = s.parse::<xmacvlan::control::model::Cidr>().map(|c| (c.first(), c.last()));
                    }
                    for o in &a.opt {
                        if let Some(p) = o.strip_prefix("parent=") {
                            let _ = xmacvlan::control::model::ParentSpec::parse(p);
                        }
                    }
                }
                Command::Endpoint(EndpointCommand::Create(a)) => {
                    prop_assert!(!network);
                    let _ = xmacvlan::control::model::check_name(&a.name, "endpoint");
                    if let Some(mac) = &a.mac_address {
                        let _ = mac.parse::<xmacvlan::ether::Mac>();
                    }
                }
                other => prop_assert!(false, "{:?} parsed as {:?}", argv, other),
            },
            Err(e) => prop_assert!(!e.render().to_string().is_empty()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// State file

/// A state with one network and one endpoint, written as the control path writes it.
fn seed_state() -> String {
    let state: State = serde_json::from_value(json!({
        "version": 1,
        "networks": [{
            "id": "a".repeat(64), "name": "net1", "driver": "macvlan", "parent": "v0.100",
            "link": "v0.100", "vlan": 100, "created_parent": true, "mode": "bridge",
            "subnets": [{"subnet": "198.18.0.0/24", "gateway": "198.18.0.1", "ip_range": null,
                         "aux_addresses": {}}],
            "host_shim": null, "options": {"parent": "v0.100"}, "created": 1
        }],
        "endpoints": [{
            "name": "c1", "network": "net1", "vlan": 100, "mac": "02:42:c6:12:00:02",
            "addresses": ["198.18.0.2/24"], "gateways": ["198.18.0.1"], "netns": "/run/netns/c1",
            "ifname": "eth0", "created": 2
        }]
    }))
    .expect("the seed follows the state model (update it with the model)");
    serde_json::to_string_pretty(&state).unwrap() + "\n"
}

#[derive(Debug, Clone)]
enum Damage {
    Truncate(prop::sample::Index),
    Flip(prop::sample::Index, u8),
    Splice(prop::sample::Index, Vec<u8>),
    Replace(Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    let garbage = prop::collection::vec(any::<u8>(), 0..64);
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Damage::Truncate),
        (any::<prop::sample::Index>(), 1u8..=255).prop_map(|(i, x)| Damage::Flip(i, x)),
        (any::<prop::sample::Index>(), garbage.clone()).prop_map(|(i, g)| Damage::Splice(i, g)),
        garbage.prop_map(Damage::Replace),
    ]
}

fn apply(seed: &[u8], d: &Damage) -> Vec<u8> {
    let mut b = seed.to_vec();
    match d {
        Damage::Truncate(i) => b.truncate(i.index(b.len())), // strictly shorter
        Damage::Flip(i, x) => {
            let at = i.index(b.len());
            b[at] ^= x;
        }
        Damage::Splice(i, g) => {
            let at = i.index(b.len());
            b.splice(at..at, g.iter().copied());
        }
        Damage::Replace(g) => b = g.clone(),
    }
    b
}

struct TempRoot(PathBuf);

impl Drop for TempRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cli_in(root: &Path, args: &[&str]) -> anyhow::Result<()> {
    let root_s = root.to_str().unwrap();
    let socket = root.join("no-daemon.sock");
    let mut argv = vec![
        "xmacvlan",
        "--data-root",
        root_s,
        "--control-socket",
        socket.to_str().unwrap(),
    ];
    argv.extend_from_slice(args);
    xmacvlan::cli::control::execute_args(&argv, &mut std::io::sink())
}

proptest! {
    #![proptest_config(config(512))]

    /// A damaged state file loads as exactly what it says (a damage the JSON survives) or is
    /// an error naming the file; either way the file keeps every byte, through the reader,
    /// the writer's lock and CLI commands that would otherwise succeed on an empty state.
    #[test]
    fn damaged_state_is_an_error_and_kept(d in damage()) {
        let root = TempRoot(std::env::temp_dir().join(format!(
            "xmv-prop-state-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        )));
        std::fs::create_dir_all(&root.0).unwrap();
        let path = root.0.join("state.json");
        let bytes = apply(seed_state().as_bytes(), &d);
        std::fs::write(&path, &bytes).unwrap();
        let what_it_says = serde_json::from_slice::<State>(&bytes).ok().filter(|s| s.version == 1);
        match State::load(&root.0) {
            Ok(state) => prop_assert_eq!(Some(state), what_it_says, "loaded something else"),
            Err(e) => {
                prop_assert!(what_it_says.is_none(), "a valid state was refused: {:#}", e);
                let message = format!("{e:#}");
                prop_assert!(message.contains(&path.display().to_string()), "{}", message);
                prop_assert!(Store::lock(&root.0).is_err(), "the writer took a damaged state");
                // `endpoint rm` of an unknown name succeeds on a good state: here it must not.
                prop_assert!(cli_in(&root.0, &["endpoint", "rm", "ghost"]).is_err());
                prop_assert!(cli_in(&root.0, &["network", "ls"]).is_err());
            }
        }
        prop_assert_eq!(std::fs::read(&path).unwrap(), bytes, "the state file changed");
    }
}
