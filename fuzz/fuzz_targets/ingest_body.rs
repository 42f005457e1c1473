#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| billsync_fuzz::ingest_body(data));
