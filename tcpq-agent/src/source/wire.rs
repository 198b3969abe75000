//! Kernel structs and raw records as recordings keep them: their bytes
//! in hex (`serde` helpers for `engine::record`). The structs are all
//! integers, so any bytes of the right length are a valid value.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// A kernel struct (all integers) as its bytes in hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Pod(#[serde(with = "hex")] pub Vec<u8>);

impl Pod {
    pub fn of<T: aya::Pod>(v: &T) -> Pod {
        // SAFETY: T is plain old data (integers only): every byte is
        // initialised and any byte pattern is a valid T.
        let b = unsafe {
            std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>())
        };
        Pod(b.to_vec())
    }

    pub fn get<T: aya::Pod>(&self) -> Result<T> {
        if self.0.len() != std::mem::size_of::<T>() {
            bail!(
                "a recorded {} has {} bytes, this agent's has {}",
                std::any::type_name::<T>()
                    .rsplit("::")
                    .next()
                    .unwrap_or("value"),
                self.0.len(),
                std::mem::size_of::<T>()
            );
        }
        // SAFETY: length checked; any byte pattern is a valid T.
        Ok(unsafe { std::ptr::read_unaligned(self.0.as_ptr().cast()) })
    }
}

pub mod hex {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <&str>::deserialize(d)?;
        decode(s).ok_or_else(|| D::Error::custom("not hex bytes"))
    }

    pub fn encode(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    pub fn decode(s: &str) -> Option<Vec<u8>> {
        if !s.len().is_multiple_of(2) || !s.is_ascii() {
            return None;
        }
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
            .collect()
    }
}

pub mod hex_list {
    use serde::{de::Error, Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        let hex: Vec<String> = v
            .iter()
            .map(|b| crate::source::wire::hex::encode(b))
            .collect();
        hex.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        v.iter()
            .map(|s| {
                crate::source::wire::hex::decode(s).ok_or_else(|| D::Error::custom("not hex bytes"))
            })
            .collect()
    }
}

/// serde for `Event` fields: its bytes in hex.
pub mod event_bytes {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};
    use tcpq_common::Event;

    use crate::source::wire::Pod;

    pub fn serialize<S: Serializer>(ev: &Event, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::source::wire::hex::encode(&Pod::of(ev).0))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Event, D::Error> {
        let s = <&str>::deserialize(d)?;
        let b =
            crate::source::wire::hex::decode(s).ok_or_else(|| D::Error::custom("not hex bytes"))?;
        Pod(b).get().map_err(|e| D::Error::custom(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_round_trip_and_check_their_size() {
        let s = tcpq_common::AcceptStats {
            accepts: 7,
            depth_max: 3,
            netns: 4026531840,
            sock_ino: 12345,
            _pad: 0,
        };
        let p = Pod::of(&s);
        let back: tcpq_common::AcceptStats = p.get().unwrap();
        assert_eq!(back, s);
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Pod>(&json).unwrap(), p);
        let short = Pod(p.0[..4].to_vec());
        let e = short.get::<tcpq_common::AcceptStats>().unwrap_err();
        assert!(e.to_string().contains("has 4 bytes"), "{e}");
    }

    #[test]
    fn bad_hex_is_refused() {
        assert_eq!(hex::decode("0g"), None);
        assert_eq!(hex::decode("abc"), None);
        assert_eq!(hex::decode("00ff"), Some(vec![0, 255]));
    }
}
