//! Map command templates: parsed from arbitrary arguments, rendered with
//! arbitrary inputs, in both modes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use zcluster::template::CommandTemplate;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.split('\u{1}');
    let input = parts.next().unwrap_or_default();
    let args: Vec<String> = parts.map(str::to_string).collect();
    for shell in [false, true] {
        if let Ok(template) = CommandTemplate::parse(&args, shell) {
            if let Ok(argv) = template.render(input, 7) {
                assert!(!argv.is_empty());
            }
        }
    }
});
