//! The modes the dataplane runs in, one definition each: the command line (clap), the JSON
//! of reports and snapshots (serde), `daemon.json` and every log line spell them through
//! [`name`](DemuxMode::name), lowercase. This module imports nothing from the crate.

/// An enum whose values are a fixed list of words, with that list for error messages:
/// `name()`, `from_name()`, `NAMES`, `Display` and a `FromStr` whose error lists the words.
macro_rules! choice {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// The words accepted, in documentation order.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            pub fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }

            pub fn from_name(word: &str) -> Option<Self> {
                match word {
                    $($text => Some(Self::$variant),)+
                    _ => None,
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::modes::NotOneOf;
            fn from_str(word: &str) -> Result<Self, Self::Err> {
                Self::from_name(word).ok_or_else(|| $crate::modes::NotOneOf {
                    word: word.to_string(),
                    names: Self::NAMES,
                })
            }
        }
    };
}
pub(crate) use choice;

/// A word that is none of a [`choice!`] enum's words, with the words it could have been.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("\"{word}\" is not one of {}", .names.join(", "))]
pub struct NotOneOf {
    pub word: String,
    pub names: &'static [&'static str],
}

choice! {
    /// Who steers claimed frames to endpoints (`--demux`, `demux-mode`).
    ///
    /// `kernel` is no fast path at all (plain macvlan devices, the baseline): the daemon and
    /// `daemon.json` accept it, the commands that run a dataplane (`run`, the benchmark) do
    /// not offer it (`value(skip)`), and [`Dataplane::start`](crate::dataplane::Dataplane::start)
    /// refuses it.
    #[derive(clap::ValueEnum, serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    DemuxMode {
        /// The XDP program steers frames into per-endpoint AF_XDP sockets (kernel demux)
        Xdp = "xdp",
        /// Pinned workers demux in userspace from one socket per queue (zero-copy handoff)
        User = "user",
        /// No fast path: plain macvlan devices (the baseline)
        #[value(skip)]
        Kernel = "kernel",
    }
}

choice! {
    /// How a running dataplane steers claimed frames to endpoints: the two fast paths of
    /// [`DemuxMode`], without `kernel` (which runs no dataplane).
    #[derive(clap::ValueEnum, serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    Demux {
        /// The XDP program steers frames into per-endpoint AF_XDP sockets (kernel demux)
        Xdp = "xdp",
        /// Pinned workers demux in userspace from one socket per queue (zero-copy handoff)
        User = "user",
    }
}

impl DemuxMode {
    /// The dataplane's demux for this mode; None for `kernel`, which runs none.
    pub fn fast_path(self) -> Option<Demux> {
        match self {
            DemuxMode::Xdp => Some(Demux::Xdp),
            DemuxMode::User => Some(Demux::User),
            DemuxMode::Kernel => None,
        }
    }
}

impl From<Demux> for DemuxMode {
    fn from(d: Demux) -> Self {
        match d {
            Demux::Xdp => DemuxMode::Xdp,
            Demux::User => DemuxMode::User,
        }
    }
}

choice! {
    /// Where the XDP program runs (`--xdp-mode`, `xdp-mode`).
    #[derive(clap::ValueEnum, serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    XdpMode {
        /// In the driver, before any socket buffer exists (fastest; the NIC driver must support it)
        Native = "native",
        /// In the kernel stack after the driver (works everywhere, slower)
        Generic = "generic",
        /// Native, falling back to generic if the driver refuses
        Auto = "auto",
    }
}

choice! {
    /// How the classifier takes its place on an interface (`--xdp-attach`, `xdp-attach`): on
    /// its own, or as one program of libxdp's multi-program dispatcher beside other XDP programs.
    #[derive(clap::ValueEnum, serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    XdpAttach {
        /// Join a libxdp dispatcher the interface already runs, else attach alone
        Auto = "auto",
        /// Always alone, through a bpf_link; an interface with a dispatcher is refused
        Alone = "alone",
        /// Always through libxdp's dispatcher (a new one if the interface has none), so other programs can join later
        Dispatcher = "dispatcher",
    }
}

choice! {
    /// How AF_XDP sockets bind (`--bind`, `bind-mode`).
    #[derive(clap::ValueEnum, serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    BindMode {
        /// The NIC DMAs straight into the UMEM (driver support needed; veth has none)
        Zerocopy = "zerocopy",
        /// The kernel copies each frame into the UMEM
        Copy = "copy",
        /// Zero-copy if the driver supports it, else copy (and say so)
        Auto = "auto",
    }
}

choice! {
    /// How the receive work of a dataplane is laid out in threads (`receive-threads`).
    #[derive(clap::ValueEnum, serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "kebab-case")]
    Threads {
        /// One thread per receive core owns the fill rings, steers and serves every endpoint in one loop
        RunToCompletion = "run-to-completion",
        /// Each queue has a worker thread (fill ring, user demux steering) beside the consumers
        Split = "split",
    }
}

choice! {
    /// The binding a queue ended up with (what [`BindMode::Auto`] resolved to).
    #[derive(serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    Bound { Zerocopy = "zerocopy", Copy = "copy" }
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use super::*;

    /// serde, clap and `name()` must agree word for word: reports, `daemon.json` and flags
    /// are read back by each other.
    fn same_spelling<T>(name: fn(&T) -> &'static str)
    where
        T: serde::Serialize + serde::de::DeserializeOwned + ValueEnum + PartialEq + std::fmt::Debug,
    {
        for v in T::value_variants() {
            let json = serde_json::to_string(v).unwrap();
            assert_eq!(json, format!("\"{}\"", name(v)));
            assert_eq!(&serde_json::from_str::<T>(&json).unwrap(), v);
            assert_eq!(v.to_possible_value().unwrap().get_name(), name(v));
        }
    }

    #[test]
    fn one_spelling_everywhere() {
        same_spelling::<DemuxMode>(|m| m.name());
        same_spelling::<XdpMode>(|m| m.name());
        same_spelling::<BindMode>(|m| m.name());
        same_spelling::<Threads>(|m| m.name());
        assert_eq!(
            DemuxMode::value_variants(),
            [DemuxMode::Xdp, DemuxMode::User]
        );
        assert_eq!(
            serde_json::to_string(&DemuxMode::Kernel).unwrap(),
            "\"kernel\""
        );
        assert_eq!(
            serde_json::to_string(&Bound::Zerocopy).unwrap(),
            "\"zerocopy\""
        );
        assert_eq!(Bound::Copy.to_string(), "copy");
    }

    #[test]
    fn kernel_is_for_the_daemon_only() {
        assert_eq!(DemuxMode::NAMES, ["xdp", "user", "kernel"]);
        assert_eq!("kernel".parse::<DemuxMode>(), Ok(DemuxMode::Kernel));
        assert!(
            DemuxMode::from_str("kernel", false).is_err(),
            "not a `--demux` value"
        );
        let e = "fast".parse::<DemuxMode>().unwrap_err();
        assert_eq!((e.word.as_str(), e.names), ("fast", DemuxMode::NAMES));
        assert_eq!(e.to_string(), r#""fast" is not one of xdp, user, kernel"#);
    }
}
