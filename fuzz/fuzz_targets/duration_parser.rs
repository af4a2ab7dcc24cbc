#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| breakerbox::fuzzing::duration_parser(data));
