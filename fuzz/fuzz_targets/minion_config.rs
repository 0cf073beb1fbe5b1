//! Fuzzes `tend_fuzz_targets::minion_config` (what it decodes is said there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tend_fuzz_targets::minion_config(data));
