//! The userspace demux's endpoint table: (VLAN, MAC) → endpoint index, with a cheap hash
//! (the key is 8 bytes; SipHash would dominate the per-frame cost).
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::abi::Key;

#[derive(Default)]
pub struct EndpointTable {
    map: HashMap<Key, u32, BuildHasherDefault<KeyHasher>>,
}

impl EndpointTable {
    pub fn new(keys: impl Iterator<Item = Key>) -> Self {
        Self {
            map: keys.enumerate().map(|(i, k)| (k, i as u32)).collect(),
        }
    }

    #[inline]
    pub fn get(&self, key: &Key) -> Option<u32> {
        self.map.get(key).copied()
    }
}

/// Multiply-xorshift over the written bytes (Key hashes as a u16 and a 6-byte array).
#[derive(Default)]
pub(super) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u16(&mut self, v: u16) {
        self.mix(v as u64);
    }

    #[inline]
    fn write_usize(&mut self, v: usize) {
        self.mix(v as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
}

impl KeyHasher {
    #[inline]
    fn mix(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(23) ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_key_and_only_those() {
        let keys: Vec<Key> = (0..1024u32)
            .map(|i| Key {
                vid: (i % 4) as u16 * 100,
                mac: [2, 0, 0, 0, (i >> 8) as u8, i as u8],
            })
            .collect();
        let table = EndpointTable::new(keys.iter().copied());
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(table.get(k), Some(i as u32));
        }
        assert_eq!(
            table.get(&Key {
                vid: 1,
                mac: [2, 0, 0, 0, 0, 0]
            }),
            None
        );
        assert_eq!(
            table.get(&Key {
                vid: 0,
                mac: [2, 0, 0, 0, 9, 9]
            }),
            None
        );
    }
}
