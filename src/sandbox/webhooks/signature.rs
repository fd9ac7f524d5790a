//! HubSpot's webhook signatures, computed as the contract describes.
//!
//! v3: base64(HMAC-SHA256(key = client secret, METHOD + URI + raw body + timestamp)), where URI is
//! the full URL with only `%3A %2F %3F %40 %21 %24 %27 %28 %29 %2A %2C %3B` decoded.
//! v1: hex(SHA-256(client secret + raw body)).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::{Digest as _, Sha256};

/// The escapes HubSpot decodes before signing, and what they stand for.
const DECODED: &[(&str, char)] = &[
    ("3A", ':'),
    ("2F", '/'),
    ("3F", '?'),
    ("40", '@'),
    ("21", '!'),
    ("24", '$'),
    ("27", '\''),
    ("28", '('),
    ("29", ')'),
    ("2A", '*'),
    ("2C", ','),
    ("3B", ';'),
];

/// The URI as it goes into the signed string: those twelve escapes decoded, nothing else.
pub fn signed_uri(uri: &str) -> String {
    let mut out = String::with_capacity(uri.len());
    let mut rest = uri;
    while let Some(pos) = rest.find('%') {
        out.push_str(&rest[..pos]);
        let escape = rest.get(pos + 1..pos + 3).map(str::to_ascii_uppercase);
        match escape.and_then(|e| DECODED.iter().find(|(code, _)| *code == e)) {
            Some((_, ch)) => {
                out.push(*ch);
                rest = &rest[pos + 3..];
            }
            None => {
                out.push('%');
                rest = &rest[pos + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The exact string v3 signs.
pub fn v3_source(method: &str, uri: &str, body: &[u8], timestamp_ms: i64) -> Vec<u8> {
    let mut source = Vec::with_capacity(method.len() + uri.len() + body.len() + 13);
    source.extend_from_slice(method.as_bytes());
    source.extend_from_slice(signed_uri(uri).as_bytes());
    source.extend_from_slice(body);
    source.extend_from_slice(timestamp_ms.to_string().as_bytes());
    source
}

/// The `X-HubSpot-Signature-v3` value.
pub fn v3(secret: &[u8], method: &str, uri: &str, body: &[u8], timestamp_ms: i64) -> String {
    // HMAC takes keys of any length, so this cannot fail; an empty signature would never verify.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(&v3_source(method, uri, body, timestamp_ms));
    BASE64.encode(mac.finalize().into_bytes())
}

/// The `X-HubSpot-Signature` value of version v1.
pub fn v1(secret: &[u8], body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(secret);
    hasher.update(body);
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
