#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut d = interop_noise::frame::FrameDecoder::default();
    d.push(data);
    while let Ok(Some(_)) = d.next_frame() {}
});
