//! The WAL's acknowledged-LSN watermark (`ACKED`) is read at every open and decides whether
//! damage is cut or refused: any bytes must decode to a slot, to none, or to an error, never a
//! panic; and a slot it accepts must be exactly what the writer would have written.
#![no_main]

use libfuzzer_sys::fuzz_target;
use millpond_wal::watermark;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((lsn, slot))) = watermark::decode(data) {
        let mut again = [0u8; watermark::SLOT_BYTES];
        watermark::encode_slot(lsn, &mut again);
        let start = slot * watermark::SLOT_BYTES;
        assert_eq!(&data[start..start + watermark::SLOT_BYTES], &again[..]);
    }
});
