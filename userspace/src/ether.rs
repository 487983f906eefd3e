//! The two Ethernet identities an endpoint is keyed by, as text: [`Mac`] and [`VlanId`].
//! Every MAC or VLAN id read from a flag, a file or a request is parsed here, so a bad one
//! gets the same message everywhere. The data path keeps the plain bytes ([`crate::abi::Mac`]).
use std::fmt;
use std::str::FromStr;

/// A MAC address, written `02:42:c6:12:00:02`. It derefs to its six bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// Group bit set: multicast or broadcast, never an endpoint's own address.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }
}

/// Why a text is not a [`Mac`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    #[error("invalid MAC address `{text}`: expected six hex bytes like 02:00:00:00:00:01")]
    NotSixBytes { text: String },
    #[error("invalid MAC address `{text}`: `{byte}` is not a hex byte")]
    NotHex { text: String, byte: String },
}

impl FromStr for Mac {
    type Err = MacError;

    fn from_str(s: &str) -> Result<Self, MacError> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(MacError::NotSixBytes { text: s.into() });
        }
        let mut mac = [0u8; 6];
        for (out, part) in mac.iter_mut().zip(parts) {
            *out = u8::from_str_radix(part, 16)
                .ok()
                .filter(|_| part.len() == 2)
                .ok_or_else(|| MacError::NotHex {
                    text: s.into(),
                    byte: part.into(),
                })?;
        }
        Ok(Self(mac))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::ops::Deref for Mac {
    type Target = [u8; 6];
    fn deref(&self) -> &[u8; 6] {
        &self.0
    }
}

impl From<[u8; 6]> for Mac {
    fn from(bytes: [u8; 6]) -> Self {
        Self(bytes)
    }
}

impl From<Mac> for [u8; 6] {
    fn from(mac: Mac) -> Self {
        mac.0
    }
}

impl serde::Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Serde of a `[u8; 6]` field in the text form of [`Mac`] (`#[serde(with = ...)]`).
pub mod mac_text {
    use super::Mac;

    pub fn serialize<S: serde::Serializer>(mac: &[u8; 6], s: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&Mac(*mac), s)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<[u8; 6], D::Error> {
        <Mac as serde::Deserialize>::deserialize(d).map(|m| m.0)
    }
}

/// An 802.1Q VLAN id, 1-4094 (0 is "untagged" and 4095 reserved, so neither is an id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VlanId(u16);

impl VlanId {
    pub const MIN: u16 = 1;
    pub const MAX: u16 = 4094;

    pub fn new(id: u16) -> Result<Self, VlanIdError> {
        if (Self::MIN..=Self::MAX).contains(&id) {
            Ok(Self(id))
        } else {
            Err(VlanIdError::OutOfRange(id.to_string()))
        }
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

/// Why a text is not a [`VlanId`]; each carries the text as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VlanIdError {
    #[error("`{0}` is not a VLAN id: write a number from {min} to {max}", min = VlanId::MIN, max = VlanId::MAX)]
    NotANumber(String),
    #[error("VLAN id {0} is out of range: 802.1Q ids are {min}-{max}", min = VlanId::MIN, max = VlanId::MAX)]
    OutOfRange(String),
}

impl FromStr for VlanId {
    type Err = VlanIdError;

    fn from_str(s: &str) -> Result<Self, VlanIdError> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(VlanIdError::NotANumber(s.into()));
        }
        // All digits: anything that does not fit a u16 is out of range too.
        s.parse::<u16>()
            .ok()
            .and_then(|id| Self::new(id).ok())
            .ok_or_else(|| VlanIdError::OutOfRange(s.into()))
    }
}

impl fmt::Display for VlanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl From<VlanId> for u16 {
    fn from(id: VlanId) -> Self {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parses_prints_and_serializes_as_text() {
        let mac: Mac = "02:0a:ff:00:10:01".parse().unwrap();
        assert_eq!(mac.0, [2, 0x0a, 0xff, 0, 0x10, 1]);
        assert_eq!(mac.to_string(), "02:0a:ff:00:10:01");
        assert_eq!(format!("{mac:?}"), "02:0a:ff:00:10:01");
        assert_eq!(
            serde_json::to_string(&mac).unwrap(),
            r#""02:0a:ff:00:10:01""#
        );
        assert_eq!(
            serde_json::from_str::<Mac>(r#""02:0a:ff:00:10:01""#).unwrap(),
            mac
        );
        assert!(!mac.is_multicast());
        assert!(Mac([0xff; 6]).is_multicast());
    }

    #[test]
    fn bad_macs_name_the_input_and_the_form() {
        assert_eq!(
            "02:0a:ff:00:10".parse::<Mac>().unwrap_err().to_string(),
            "invalid MAC address `02:0a:ff:00:10`: expected six hex bytes like 02:00:00:00:00:01"
        );
        assert_eq!(
            "02:0a:ff:00:10:zz".parse::<Mac>().unwrap_err(),
            MacError::NotHex {
                text: "02:0a:ff:00:10:zz".into(),
                byte: "zz".into()
            }
        );
        assert_eq!(
            "02:0a:ff:00:10:zz".parse::<Mac>().unwrap_err().to_string(),
            "invalid MAC address `02:0a:ff:00:10:zz`: `zz` is not a hex byte"
        );
        for bad in [
            "02:0a:ff:00:10:1",
            "",
            "02-0a-ff-00-10-01",
            "02:0a:ff:00:10:001",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
        let e = serde_json::from_str::<Mac>(r#""nope""#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid MAC address `nope`"), "{e}");
    }

    #[test]
    fn vlan_ids_are_1_to_4094() {
        assert_eq!("1".parse::<VlanId>().unwrap().get(), 1);
        assert_eq!("4094".parse::<VlanId>().unwrap().to_string(), "4094");
        for bad in ["0", "4095", "40950", "99999999999999999999"] {
            let e = bad.parse::<VlanId>().unwrap_err();
            assert_eq!(e, VlanIdError::OutOfRange(bad.into()));
            assert_eq!(
                e.to_string(),
                format!("VLAN id {bad} is out of range: 802.1Q ids are 1-4094")
            );
        }
        for bad in ["", "-1", "10a", " 5"] {
            assert_eq!(
                bad.parse::<VlanId>().unwrap_err().to_string(),
                format!("`{bad}` is not a VLAN id: write a number from 1 to 4094")
            );
        }
        assert!(VlanId::new(0).is_err());
        assert_eq!(u16::from(VlanId::new(100).unwrap()), 100);
    }
}
