//! The one table of xmacvlan's counters (at the bottom of the crate's layers: it imports
//! nothing from it, so the ABI mirror can declare its counters with it too). Every set of counters (the classifier's verdicts, a
//! queue's, an endpoint's, a port's) is declared once with [`counter_set!`]: from that one
//! declaration come the plain-value struct that snapshots, reports and JSON carry, the live
//! atomic struct the dataplane threads publish into (once per batch), the list of fields
//! with their column header, meaning and kind, and the sums (`dropped()`, `verdicts()`). The
//! text tables, `stats --watch`, JSON and the Prometheus page are written from that list, so
//! a counter added to a set appears everywhere at once.

/// What a counter counts: how reports sum it and which Prometheus family it is a sample of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Frames that went through (`xmacvlan_<set>_frames_total`).
    Frames,
    /// Bytes that went through (`xmacvlan_<set>_bytes_total`).
    Bytes,
    /// Frames lost, for a reason (`xmacvlan_<set>_dropped_total{reason=…}`).
    Dropped,
    /// One verdict of the classifier: every frame it saw gets exactly one
    /// (`xmacvlan_<set>_frames_total{verdict=…}`).
    Verdict,
    /// A count that is neither a way through nor a loss, e.g. a classification or an
    /// internal step (`xmacvlan_<set>_<name>_total`).
    Info,
}

/// One counter of a set: its JSON name, its column header, what it means, its kind, and
/// the Prometheus label that tells it apart within its family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub name: &'static str,
    pub column: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    /// `(key, value)`; by default `reason=<name>` for drops, `verdict=<name>` for verdicts.
    pub label: Option<(&'static str, &'static str)>,
}

impl Field {
    /// The Prometheus family this counter is a sample of, and its label within it.
    pub fn metric(&self, set: &str) -> (String, Option<(&'static str, &'static str)>) {
        let family = |suffix: &str| format!("xmacvlan_{set}_{suffix}_total");
        match self.kind {
            Kind::Frames => (family("frames"), self.label),
            Kind::Bytes => (family("bytes"), self.label),
            Kind::Dropped => (
                family("dropped"),
                self.label.or(Some(("reason", self.name))),
            ),
            Kind::Verdict => (
                family("frames"),
                self.label.or(Some(("verdict", self.name))),
            ),
            Kind::Info => (family(self.name), self.label),
        }
    }
}

/// A set's plain values, read generically (reports, Prometheus).
pub trait Counts {
    /// The set's name in metric names (`xmacvlan_<set>_…`).
    const SET: &'static str;
    const FIELDS: &'static [Field];
    /// The values, in [`Self::FIELDS`] order.
    fn values(&self) -> Vec<u64>;

    /// Each field with its value.
    fn fields(&self) -> Vec<(&'static Field, u64)> {
        Self::FIELDS.iter().zip(self.values()).collect()
    }

    /// The sum of the fields of one kind (e.g. every drop, every verdict).
    fn sum(&self, kind: Kind) -> u64 {
        self.fields()
            .into_iter()
            .filter(|(f, _)| f.kind == kind)
            .map(|(_, v)| v)
            .sum()
    }
}

/// `seen 10 tagged 0 …`: every counter of a set on one line, named by its column in lower
/// case (the form of the `XDP:` and `queue N:` lines of reports and `stats`).
pub fn line<C: Counts>(counts: &C) -> String {
    counts
        .fields()
        .into_iter()
        .map(|(f, v)| format!("{} {v}", f.column.to_ascii_lowercase()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The width of a counter's column in tables: its header, and room for large numbers.
fn width(field: &Field) -> usize {
    field.column.len().max(8)
}

/// The column headers of a set's counters for a table row, each right-aligned in its width.
pub fn header<C: Counts>() -> String {
    header_of::<C>(&[])
}

/// A set's values under [`header`].
pub fn cells<C: Counts>(counts: &C) -> String {
    cells_of(counts, &[])
}

/// [`header`] for the counters of the kinds given (all with none given).
pub fn header_of<C: Counts>(kinds: &[Kind]) -> String {
    C::FIELDS
        .iter()
        .filter(|f| kinds.is_empty() || kinds.contains(&f.kind))
        .map(|f| format!("{:>w$}", f.column, w = width(f)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// [`cells`] for the counters of the kinds given (all with none given).
pub fn cells_of<C: Counts>(counts: &C, kinds: &[Kind]) -> String {
    counts
        .fields()
        .into_iter()
        .filter(|(f, _)| kinds.is_empty() || kinds.contains(&f.kind))
        .map(|(f, v)| format!("{v:>w$}", w = width(f)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Declare a set of counters:
///
/// ```ignore
/// counter_set! {
///     /// What the set counts.
///     pub struct EndpointCounts (live EndpointCounters) in "endpoint" {
///         /// Frames delivered to the endpoint.
///         frames: Frames, "FRAMES";
///         /// Its ring was full.
///         dropped_ring_full: Dropped(reason = "ring_full"), "RING-FULL";
///     }
/// }
/// ```
///
/// makes `EndpointCounts` (u64 fields; serde, `add`, `since`, [`Counts`]) and
/// `EndpointCounters` (`AtomicU64` fields; `read`, `publish` a batch of counts). Without
/// `(live …)` only the plain struct is made (the classifier's counters live in a BPF map).
/// The first doc line of each field is its help text.
#[macro_export]
macro_rules! counter_set {
    (
        $(#[$meta:meta])*
        $vis:vis struct $Counts:ident (live $Live:ident) in $set:literal { $($body:tt)* }
    ) => {
        $crate::counter_set!(@values $(#[$meta])* $vis $Counts $set { $($body)* });
        $crate::counter_set!(@live $vis $Live $Counts { $($body)* });
    };
    (
        $(#[$meta:meta])*
        $vis:vis struct $Counts:ident in $set:literal { $($body:tt)* }
    ) => {
        $crate::counter_set!(@values $(#[$meta])* $vis $Counts $set { $($body)* });
    };
    (@values $(#[$meta:meta])* $vis:vis $Counts:ident $set:literal {
        $(
            #[doc = $help:literal]
            $(#[doc = $more:literal])*
            $(#[serde($($serde:tt)*)])?
            $field:ident : $kind:ident $(($key:ident = $value:literal))?, $column:literal;
        )*
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ::serde::Serialize, ::serde::Deserialize)]
        // A counter missing from a peer's JSON (an older or newer xmacvlan) reads as 0.
        #[serde(default)]
        $vis struct $Counts {
            $(
                #[doc = $help]
                $(#[doc = $more])*
                $(#[serde($($serde)*)])?
                pub $field: u64,
            )*
        }

        impl $Counts {
            /// Add `other`'s values to these.
            $vis fn add(&mut self, other: &Self) {
                $(self.$field += other.$field;)*
            }

            /// What was counted since `before` (a counter never goes back; saturates if one did).
            $vis fn since(&self, before: &Self) -> Self {
                Self { $($field: self.$field.saturating_sub(before.$field),)* }
            }
        }

        impl $crate::counters::Counts for $Counts {
            const SET: &'static str = $set;
            const FIELDS: &'static [$crate::counters::Field] = &[
                $($crate::counters::Field {
                    name: stringify!($field),
                    column: $column,
                    help: $help.trim_ascii(),
                    kind: $crate::counters::Kind::$kind,
                    label: $crate::counter_set!(@label $(($key = $value))?),
                },)*
            ];
            fn values(&self) -> Vec<u64> {
                vec![$(self.$field),*]
            }
        }
    };
    (@live $vis:vis $Live:ident $Counts:ident {
        $(
            #[doc = $help:literal]
            $(#[doc = $more:literal])*
            $(#[serde($($serde:tt)*)])?
            $field:ident : $kind:ident $(($key:ident = $value:literal))?, $column:literal;
        )*
    }) => {
        /// Live counters, written by the dataplane threads once per batch
        #[doc = concat!("([`", stringify!($Live), "::publish`]) and read by anyone.")]
        #[derive(Debug, Default)]
        $vis struct $Live {
            $(
                #[doc = $help]
                pub $field: ::std::sync::atomic::AtomicU64,
            )*
        }

        impl $Live {
            /// The values now.
            $vis fn read(&self) -> $Counts {
                $Counts {
                    $($field: self.$field.load(::std::sync::atomic::Ordering::Relaxed),)*
                }
            }

            /// Add a batch's counts (skipping zeros: no write to a shared line for nothing)
            /// and reset the batch.
            #[inline]
            $vis fn publish(&self, batch: &mut $Counts) {
                $(
                    if batch.$field != 0 {
                        self.$field
                            .fetch_add(batch.$field, ::std::sync::atomic::Ordering::Relaxed);
                    }
                )*
                *batch = $Counts::default();
            }
        }
    };
    (@label) => { None };
    (@label ($key:ident = $value:literal)) => { Some((stringify!($key), $value)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::counter_set! {
        /// A set for the test.
        pub(super) struct TestCounts (live TestCounters) in "test" {
            /// Frames through.
            frames: Frames, "FRAMES";
            /// Bytes through.
            bytes: Bytes, "BYTES";
            /// The ring was full.
            /// (a second doc line is not help)
            ring_full: Dropped, "RING-FULL";
            /// Not claimed.
            no_claim: Dropped(reason = "not_claimed"), "NOT-CLAIMED";
        }
    }

    #[test]
    fn one_declaration_gives_fields_values_sums_and_live_counters() {
        assert_eq!(TestCounts::SET, "test");
        let names: Vec<_> = TestCounts::FIELDS.iter().map(|f| f.name).collect();
        assert_eq!(names, ["frames", "bytes", "ring_full", "no_claim"]);
        assert_eq!(TestCounts::FIELDS[2].help, "The ring was full.");
        assert_eq!(TestCounts::FIELDS[2].kind, Kind::Dropped);
        let metric = |i: usize| TestCounts::FIELDS[i].metric(TestCounts::SET);
        assert_eq!(metric(0), ("xmacvlan_test_frames_total".into(), None));
        assert_eq!(
            metric(2),
            (
                "xmacvlan_test_dropped_total".into(),
                Some(("reason", "ring_full"))
            )
        );
        assert_eq!(
            metric(3),
            (
                "xmacvlan_test_dropped_total".into(),
                Some(("reason", "not_claimed"))
            )
        );
        let live = TestCounters::default();
        let mut batch = TestCounts {
            frames: 3,
            bytes: 180,
            ring_full: 1,
            no_claim: 2,
        };
        live.publish(&mut batch);
        assert_eq!(batch, TestCounts::default(), "publishing resets the batch");
        let now = live.read();
        assert_eq!(now.values(), [3, 180, 1, 2]);
        assert_eq!(now.sum(Kind::Dropped), 3);
        assert_eq!(line(&now), "frames 3 bytes 180 ring-full 1 not-claimed 2");
        assert_eq!(
            header::<TestCounts>(),
            "  FRAMES    BYTES RING-FULL NOT-CLAIMED"
        );
        assert_eq!(cells(&now), "       3      180         1           2");
        let mut sum = now;
        sum.add(&now);
        assert_eq!(sum.since(&now), now);
        assert_eq!(
            serde_json::to_value(now).unwrap(),
            serde_json::json!({"frames": 3, "bytes": 180, "ring_full": 1, "no_claim": 2})
        );
    }
}
