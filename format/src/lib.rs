//! millpond's on-disk contracts, in one place: the composite key ([`key`]), the entry
//! encoding ([`entry`]), the changes ([`op`]) and the rules that apply them ([`fold`]), and
//! the TTL rule ([`ttl`]).
//!
//! Every crate that reads or writes these formats (the store, the snapshot writer and
//! reader, the command-line tool, the fuzz targets) uses this crate, so each has exactly one
//! implementation. It depends on no store, WAL or object storage.
//!
//! What it is not: a storage engine. It holds no state and does no I/O.
//!
//! ```
//! use millpond_format::{fold, ChangeOp, CompositeKey, EntryView};
//! let mut ck = Vec::new();
//! CompositeKey::new(7, 0, b"user-1").encode_into(&mut ck);
//! let mut entry = None;
//! fold::apply(&mut entry, &ChangeOp::Put { value: b"42", expires_at_ms: 0 });
//! let mut bytes = Vec::new();
//! entry.unwrap().encode(&mut bytes);
//! assert_eq!(
//!     EntryView::decode(&bytes).unwrap(),
//!     EntryView::Value { value: b"42".to_vec(), expires_at_ms: 0 }
//! );
//! ```

#![warn(missing_docs)]

pub mod entry;
mod error;
pub mod fold;
pub mod key;
pub mod op;
pub mod ttl;

pub use entry::{Elem, Entry, EntryView, ValueBytes};
pub use error::{FormatError, Result};
pub use fold::KeyChanges;
pub use key::{CompositeKey, CompositeKeyBuf};
pub use op::{ChangeOp, StateKind};
