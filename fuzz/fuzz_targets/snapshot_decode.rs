//! Snapshot readers are fed whatever is in object storage: a manifest (frame versions 1 and
//! 2; manifest versions 1 to 3, with partitions and runs), a data file (footer versions 1 to
//! 3, index, blocks), a filter block and an entry (tags 1 to 5) must each decode or fail with
//! an error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use millpond_snapshot::{DataFile, Manifest};

fuzz_target!(|data: &[u8]| {
    let manifest = Manifest::decode(data, "fuzz");
    if let Ok(file) = DataFile::open(data.to_vec()) {
        // Version-1 and version-2 footers; the id check any reader for a manifest makes.
        let _ = file.file_id();
        if let Ok(m) = &manifest {
            for f in m.files() {
                let _ = f.check_opened(&file);
            }
        }
        let _ = file.verify();
        for entry in file.iter().take(1000) {
            if let Ok((_, value)) = entry {
                let _ = millpond_state::decode_entry(&value);
            }
        }
        let _ = file.get(&data[..data.len().min(8)]);
    }
    if let Ok(filter) = millpond_snapshot::Filter::decode(data) {
        let _ = filter.may_contain(&data[..data.len().min(12)]);
        let _ = filter.is_heavy(&data[..data.len().min(12)]);
    }
    let _ = millpond_state::KeyChanges::decode(data);
    let _ = millpond_state::decode_entry(data);
});
