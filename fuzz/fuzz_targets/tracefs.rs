//! tracefs `events/*/*/format` files (kernel → agent).
#![no_main]
use libfuzzer_sys::fuzz_target;
use tcpq_agent::kernel::tracefs::Format;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let f = Format::parse(&text);
    for field in &f.fields {
        let found = f
            .field(&field.name)
            .expect("a parsed field is found by name");
        assert_eq!(f.offset(&field.name, found.size), Some(found.offset));
    }
});
