//! Client-facing text for SDP that str0m refused. Its parser reports positions as raw
//! pointers (`PointerOffset(0x7f…)`) and may quote the input; neither belongs in a reply. We
//! keep a bounded, printable reason and turn the pointer into a line number.

use std::fmt::Display;

use crate::media::MediaError;

/// Longest reason passed on to the client, in characters.
const MAX_REASON: usize = 120;

/// `SdpOffer::from_sdp_string(input)` / `SdpAnswer::…` failed with `error`.
pub(super) fn unparsable(input: &str, error: &dyn Display) -> MediaError {
    let text = error.to_string();
    let line = pointer_line(input, &text);
    let reason = parser_reason(&text);
    let message = match (line, reason.is_empty()) {
        (Some(line), false) => format!("SDP could not be parsed: line {line}: {reason}"),
        (Some(line), true) => format!("SDP could not be parsed at line {line}"),
        (None, false) => format!("SDP could not be parsed: {reason}"),
        (None, true) => "SDP could not be parsed".to_string(),
    };
    MediaError::InvalidSdp(message)
}

/// str0m parsed the SDP but would not apply it (`what`: "offer" or "answer").
pub(super) fn refused(what: &str, error: &dyn Display) -> MediaError {
    let reason = parser_reason(&error.to_string());
    if reason.is_empty() {
        MediaError::InvalidSdp(format!("the {what} could not be applied"))
    } else {
        MediaError::InvalidSdp(format!("the {what} could not be applied: {reason}"))
    }
}

/// The parser's own words minus positions and prefixes: its `Unexpected …`/`Expected …` lines,
/// or its one-line message, printable and at most [`MAX_REASON`] characters.
fn parser_reason(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(|l| {
            l.trim()
                .trim_start_matches("remote sdp: ")
                .trim_start_matches("SDP parse: ")
                .trim_start_matches("SDP inconsistent: ")
        })
        .filter(|l| !l.is_empty() && !l.contains("PointerOffset") && !l.contains("0x"))
        .filter(|l| !l.starts_with("Parse error at"))
        .collect();
    let joined = lines.join("; ");
    let mut out: String = joined
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(MAX_REASON)
        .collect();
    if joined.chars().count() > MAX_REASON {
        out.push('…');
    }
    out
}

/// The 1-based line of `input` that combine's `PointerOffset(0x…)` in `text` points into.
fn pointer_line(input: &str, text: &str) -> Option<usize> {
    let start = text.find("PointerOffset(0x")? + "PointerOffset(0x".len();
    let hex: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_hexdigit())
        .collect();
    let addr = usize::from_str_radix(&hex, 16).ok()?;
    let offset = addr.checked_sub(input.as_ptr() as usize)?;
    let before = input.get(..offset.min(input.len()))?;
    Some(before.matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use str0m::change::{SdpAnswer, SdpOffer};

    use super::*;

    fn message(e: MediaError) -> String {
        match e {
            MediaError::InvalidSdp(m) => m,
            other => panic!("not InvalidSdp: {other:?}"),
        }
    }

    #[test]
    fn garbage_gives_a_short_reason_without_addresses() {
        for input in ["v=0\r\ngarbage", "this is not sdp", "v=0\r\n", ""] {
            let e = SdpOffer::from_sdp_string(input).expect_err(input);
            let text = message(unparsable(input, &e));
            assert!(text.starts_with("SDP could not be parsed"), "{text}");
            assert!(
                !text.contains("PointerOffset") && !text.contains("0x"),
                "{text}"
            );
            assert!(text.len() <= 200, "{text}");
        }
        let input = "v=0\r\ngarbage";
        let e = SdpAnswer::from_sdp_string(input).unwrap_err();
        let text = message(unparsable(input, &e));
        assert!(text.contains("line 2"), "{text}");
    }

    #[test]
    fn long_or_binary_input_is_never_echoed_in_full() {
        let input = format!("v=0\r\n{}\u{7}\r\n", "x".repeat(10_000));
        let e = SdpOffer::from_sdp_string(&input).unwrap_err();
        let text = message(unparsable(&input, &e));
        assert!(text.len() <= 200, "{} chars: {text}", text.len());
        assert!(text
            .chars()
            .all(|c| c == '…' || c.is_ascii_graphic() || c == ' '));
        let refused = message(refused(
            "offer",
            &format!("remote sdp: {}", "y".repeat(500)),
        ));
        assert!(
            refused.starts_with("the offer could not be applied: yyy"),
            "{refused}"
        );
        assert!(refused.chars().count() <= 160);
    }
}
