//! Ring-buffer records (kernel → agent): any bytes decode or are refused,
//! and whatever decodes goes through the aggregator without a panic.
#![no_main]
use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use tcpq_agent::{
    aggregate::{Aggregator, Hooked},
    source::decode::{decode, DecodeError},
};
use tcpq_common::Event;

fuzz_target!(|data: &[u8]| {
    match decode(data) {
        Ok(ev) => {
            assert!(data.len() >= Event::SIZE);
            // Only the first Event::SIZE bytes count.
            assert_eq!(decode(&data[..Event::SIZE]).as_ref(), Ok(&ev));
            // The payload is of the record's own kind (`Event::kind`, after
            // the u64 timestamp).
            let kind = u32::from_ne_bytes(data[8..12].try_into().unwrap());
            assert_eq!(ev.what.kind() as u32, kind);
        }
        Err(DecodeError::Short(n)) => assert!(n == data.len() && n < Event::SIZE),
        Err(e) => assert!(!e.to_string().contains('\n')),
    }
    // A ring buffer's worth: consecutive records into one aggregator.
    let mut agg = Aggregator::new(HashMap::new(), None, Hooked::default());
    for rec in data.chunks(Event::SIZE) {
        if let Ok(ev) = decode(rec) {
            agg.on_event(&ev);
        }
    }
    let _ = agg.take();
});
