//! Codecs turn typed keys and values into the bytes the store keeps.
//!
//! Key bytes decide the key group, so a key codec must be deterministic: the same key always
//! encodes to the same bytes. The integer codecs are big-endian, so that bytes sort as numbers
//! (unsigned) and snapshots list keys in a useful order.

use std::marker::PhantomData;

use crate::error::BoxError;

/// Encodes and decodes values of type `T`.
pub trait Codec<T>: Send + Sync + 'static {
    /// Appends the encoding of `value` to `out`.
    fn encode(&self, value: &T, out: &mut Vec<u8>) -> Result<(), BoxError>;
    /// Decodes a value from exactly `bytes`.
    fn decode(&self, bytes: &[u8]) -> Result<T, BoxError>;
}

/// Raw bytes, stored as they are.
///
/// ```
/// use millpond_state::{BytesCodec, Codec};
/// let mut out = Vec::new();
/// BytesCodec.encode(&b"abc".to_vec(), &mut out).unwrap();
/// assert_eq!(BytesCodec.decode(&out).unwrap(), b"abc");
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct BytesCodec;

impl Codec<Vec<u8>> for BytesCodec {
    fn encode(&self, value: &Vec<u8>, out: &mut Vec<u8>) -> Result<(), BoxError> {
        out.extend_from_slice(value);
        Ok(())
    }
    fn decode(&self, bytes: &[u8]) -> Result<Vec<u8>, BoxError> {
        Ok(bytes.to_vec())
    }
}

/// UTF-8 strings.
#[derive(Debug, Default, Clone, Copy)]
pub struct StringCodec;

impl Codec<String> for StringCodec {
    fn encode(&self, value: &String, out: &mut Vec<u8>) -> Result<(), BoxError> {
        out.extend_from_slice(value.as_bytes());
        Ok(())
    }
    fn decode(&self, bytes: &[u8]) -> Result<String, BoxError> {
        Ok(std::str::from_utf8(bytes)?.to_owned())
    }
}

macro_rules! int_codec {
    ($name:ident, $t:ty, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Default, Clone, Copy)]
        pub struct $name;

        impl Codec<$t> for $name {
            fn encode(&self, value: &$t, out: &mut Vec<u8>) -> Result<(), BoxError> {
                out.extend_from_slice(&value.to_be_bytes());
                Ok(())
            }
            fn decode(&self, bytes: &[u8]) -> Result<$t, BoxError> {
                let arr: [u8; std::mem::size_of::<$t>()] = bytes.try_into().map_err(|_| {
                    format!(
                        "expected {} bytes for {}, found {}",
                        std::mem::size_of::<$t>(),
                        stringify!($t),
                        bytes.len()
                    )
                })?;
                Ok(<$t>::from_be_bytes(arr))
            }
        }
    };
}

int_codec!(U64Codec, u64, "`u64`, 8 bytes big-endian.");
int_codec!(
    I64Codec,
    i64,
    "`i64`, 8 bytes big-endian (two's complement)."
);
int_codec!(U32Codec, u32, "`u32`, 4 bytes big-endian.");
int_codec!(
    I32Codec,
    i32,
    "`i32`, 4 bytes big-endian (two's complement)."
);

/// Protocol Buffers messages, through prost.
///
/// ```
/// use millpond_state::{Codec, ProstCodec};
/// #[derive(Clone, PartialEq, prost::Message)]
/// struct Session { #[prost(uint64, tag = "1")] clicks: u64 }
/// let codec = ProstCodec::<Session>::new();
/// let mut out = Vec::new();
/// codec.encode(&Session { clicks: 3 }, &mut out).unwrap();
/// assert_eq!(codec.decode(&out).unwrap().clicks, 3);
/// ```
pub struct ProstCodec<M>(PhantomData<fn() -> M>);

impl<M> ProstCodec<M> {
    /// A codec for messages of type `M`.
    pub fn new() -> Self {
        ProstCodec(PhantomData)
    }
}

impl<M> Default for ProstCodec<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M> Clone for ProstCodec<M> {
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl<M> std::fmt::Debug for ProstCodec<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProstCodec")
    }
}

impl<M: prost::Message + Default + 'static> Codec<M> for ProstCodec<M> {
    fn encode(&self, value: &M, out: &mut Vec<u8>) -> Result<(), BoxError> {
        value.encode(out)?;
        Ok(())
    }
    fn decode(&self, bytes: &[u8]) -> Result<M, BoxError> {
        Ok(M::decode(bytes)?)
    }
}

/// Any serde type, encoded with postcard (feature `serde`).
///
/// Do not use it for keys whose serde encoding is not deterministic (for example a `HashMap`).
#[cfg(feature = "serde")]
pub struct SerdeCodec<T>(PhantomData<fn() -> T>);

#[cfg(feature = "serde")]
impl<T> SerdeCodec<T> {
    /// A codec for values of type `T`.
    pub fn new() -> Self {
        SerdeCodec(PhantomData)
    }
}

#[cfg(feature = "serde")]
impl<T> Default for SerdeCodec<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "serde")]
impl<T> Codec<T> for SerdeCodec<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned + 'static,
{
    fn encode(&self, value: &T, out: &mut Vec<u8>) -> Result<(), BoxError> {
        let bytes = postcard::to_allocvec(value)?;
        out.extend_from_slice(&bytes);
        Ok(())
    }
    fn decode(&self, bytes: &[u8]) -> Result<T, BoxError> {
        Ok(postcard::from_bytes(bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_round_trip_and_reject_wrong_lengths() {
        let mut out = Vec::new();
        I64Codec.encode(&-5, &mut out).unwrap();
        assert_eq!(I64Codec.decode(&out).unwrap(), -5);
        assert!(U64Codec.decode(&[1, 2, 3]).is_err());
        assert!(StringCodec.decode(&[0xff]).is_err());
    }
}
