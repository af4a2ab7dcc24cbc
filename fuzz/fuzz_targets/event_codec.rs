#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| breakerbox::fuzzing::event_codec(data));
