//! `X-SFU-Signature`: HMAC-SHA256 over `"<t>." + body`, see the module docs of
//! [`super`] for the wire format.

use hmac::Mac;

use super::HmacSha256;

fn mac(secret: &str, timestamp: u64, body: &[u8]) -> Option<HmacSha256> {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).ok()?;
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(mac)
}

/// The `X-SFU-Signature` value for `body` sent at `timestamp` (unix seconds):
/// `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn signature_header(secret: &str, timestamp: u64, body: &[u8]) -> String {
    let digest = mac(secret, timestamp, body)
        .map(|mac| hex::encode(mac.finalize().into_bytes()))
        .unwrap_or_default();
    format!("t={timestamp},v1={digest}")
}

/// Check an `X-SFU-Signature` header the way a receiver should: exactly one `t=`, within
/// `tolerance_secs` of `now_unix` (either direction), and at least one `v1=` equal (in constant
/// time) to HMAC-SHA256(secret, "<t>.<raw body>"). Several `v1=` entries are accepted so a
/// receiver can rotate secrets; unknown keys are ignored. Malformed headers are simply `false`.
pub fn verify_signature(
    secret: &str,
    header: &str,
    body: &[u8],
    now_unix: u64,
    tolerance_secs: u64,
) -> bool {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let Some((key, value)) = part.split_once('=') else {
            continue;
        };
        match key.trim() {
            "t" => {
                if timestamp.is_some() {
                    return false;
                }
                match value.trim().parse::<u64>() {
                    Ok(t) => timestamp = Some(t),
                    Err(_) => return false,
                }
            }
            "v1" => signatures.push(value.trim()),
            _ => {}
        }
    }
    let Some(timestamp) = timestamp else {
        return false;
    };
    if now_unix.abs_diff(timestamp) > tolerance_secs {
        return false;
    }
    signatures.into_iter().any(|signature| {
        let Ok(expected) = hex::decode(signature) else {
            return false;
        };
        mac(secret, timestamp, body).is_some_and(|mac| mac.verify_slice(&expected).is_ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_round_trip() {
        let body = br#"{"id":"x"}"#;
        let header = signature_header("s3cret", 1_700_000_000, body);
        // Known answer, from Python's hmac.new(b"s3cret", b'1700000000.{"id":"x"}', sha256).
        assert_eq!(
            header,
            "t=1700000000,v1=2382c1d0968a5e57238c68de957f44d87e83d3049a5588ec251442ca372b8aec"
        );
        assert!(verify_signature(
            "s3cret",
            &header,
            body,
            1_700_000_010,
            300
        ));
        assert!(!verify_signature(
            "other",
            &header,
            body,
            1_700_000_010,
            300
        ));
        assert!(!verify_signature(
            "s3cret",
            &header,
            b"{}",
            1_700_000_010,
            300
        ));
        assert!(!verify_signature(
            "s3cret",
            &header,
            body,
            1_700_000_400,
            300
        ));
        assert!(!verify_signature(
            "s3cret",
            "garbage",
            body,
            1_700_000_000,
            300
        ));
        assert!(!verify_signature(
            "s3cret",
            &format!("{header},t=1700000000"),
            body,
            1_700_000_000,
            300
        ));
        let rotated = format!("t=1700000000,v1=00ff,{}", &header[13..]);
        assert!(verify_signature("s3cret", &rotated, body, 1_700_000_000, 0));
    }
}
