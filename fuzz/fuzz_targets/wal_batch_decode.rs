//! The WAL batch decoder is fed whatever is on disk or in a Pulsar topic: it must answer every
//! input with a batch, "incomplete" or an error, never a panic, and neither must the record
//! decoding behind it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use millpond_wal::batch::{self, Decoded};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(Decoded::Batch(header, payload)) = batch::decode(data, String::new) {
        for record in batch::records(payload, header.count).flatten() {
            let _ = millpond_wal::proto::Record::decode(record);
        }
    }
    // Also with a valid checksum over arbitrary content, which random bytes rarely reach.
    if data.len() >= 5 {
        let count = u32::from(data[0]) + 1;
        let mut framed = Vec::new();
        batch::encode(1, count, 0, &data[1..], &mut framed);
        if let Ok(Decoded::Batch(header, payload)) = batch::decode(&framed, String::new) {
            for record in batch::records(payload, header.count).flatten() {
                let _ = millpond_wal::proto::Record::decode(record);
            }
        }
    }
});
