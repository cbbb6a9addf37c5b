//! Snapshot readers are fed whatever is in object storage: a manifest, a data file (footer,
//! index, blocks) and an entry must each decode or fail with an error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use millpond_snapshot::{DataFile, Manifest};

fuzz_target!(|data: &[u8]| {
    let _ = Manifest::decode(data, "fuzz");
    if let Ok(file) = DataFile::open(data.to_vec()) {
        let _ = file.verify();
        for entry in file.iter().take(1000) {
            if let Ok((_, value)) = entry {
                let _ = millpond_state::decode_entry(&value);
            }
        }
        let _ = file.get(&data[..data.len().min(8)]);
    }
    let _ = millpond_state::KeyChanges::decode(data);
    let _ = millpond_state::decode_entry(data);
});
