//! What a request's values may hold, checked before anything is stored, and how stored JSON is
//! read back when it holds what a request can no longer send.
//!
//! Two kinds of value reach Postgres and fail there, so they are refused up front with a 422 that
//! names the field (docs/decisions.md, "Values Postgres cannot hold"):
//!
//! - **NUL** (`\u0000`, `%00`): Postgres stores no NUL in `text` (SQLSTATE 22021) nor in `jsonb`
//!   strings (22P05). Refused anywhere: a JSON body's strings and member names, query parameters,
//!   path segments, form fields.
//! - **Numbers beyond ±1e300** in a JSON body. `jsonb` keeps a number as the exact decimal it was
//!   sent as and prints it back in full (1.7976931348623157e308 comes back as 309 digits), and
//!   serde_json, reading those digits, overflows to "number out of range" at the edge of the
//!   64-bit float range: the record could be written but never read. The bound leaves a wide
//!   margin below that edge (JSON itself has no NaN or infinity, and serde_json refuses numbers
//!   past f64 when it parses the body; those are named here too instead of a bare 400).
//!
//! Stored JSON that holds such a number anyway (written before this rule, or by SQL) is read with
//! [`read_stored`]: exact numbers where serde_json gave up, and a number no 64-bit float can hold
//! kept as a string of its digits, so the record stays readable and nothing is lost.

use axum::extract::{MatchedPath, OriginalUri, Request};
use axum::http::Uri;
use axum::middleware::Next;
use axum::response::Response;
use serde_json::{Map, Number, Value as Json};

use crate::error::{Error, FieldError};

/// Largest magnitude of a JSON number a request may carry.
pub const MAX_NUMBER: f64 = 1e300;

/// Most field errors one request reports (a body of a thousand NULs needs no thousand lines).
const MAX_ERRORS: usize = 20;

pub const NUL_MESSAGE: &str =
    "Must not contain a NUL character (\\u0000): Ferry cannot store it. Remove it and try again.";
pub const NUL_NAME_MESSAGE: &str =
    "Names must not contain a NUL character (\\u0000): Ferry cannot store it.";
pub const NUMBER_MESSAGE: &str =
    "Numbers must be finite and at most 1e300 in magnitude; send larger values as strings.";

/// A field name as shown in an error: a NUL in it is spelled `\u0000`.
fn shown(name: &str) -> String {
    name.replace('\0', "\\u0000")
}

fn member_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        shown(key)
    } else {
        format!("{path}.{}", shown(key))
    }
}

/// Whether a JSON number may be stored: finite and within ±[`MAX_NUMBER`].
pub fn number_ok(n: &Number) -> bool {
    n.is_i64()
        || n.is_u64()
        || n.as_f64()
            .is_some_and(|x| x.is_finite() && x.abs() <= MAX_NUMBER)
}

/// Adds an error for each NUL and each number out of range in `value`, named by its path from
/// the body (`custom.note`, `contact_ids[2]`, `payload.custom.score`).
pub fn check(path: &str, value: &Json, errors: &mut Vec<FieldError>) {
    if errors.len() >= MAX_ERRORS {
        return;
    }
    let at = |path: &str| {
        if path.is_empty() {
            "body".to_string()
        } else {
            path.to_string()
        }
    };
    match value {
        Json::String(text) if text.contains('\0') => {
            errors.push(FieldError::new(at(path), NUL_MESSAGE));
        }
        Json::Number(n) if !number_ok(n) => errors.push(FieldError::new(at(path), NUMBER_MESSAGE)),
        Json::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check(&format!("{path}[{i}]"), item, errors);
            }
        }
        Json::Object(map) => {
            for (key, item) in map {
                let inner = member_path(path, key);
                if key.contains('\0') && errors.len() < MAX_ERRORS {
                    errors.push(FieldError::new(inner.clone(), NUL_NAME_MESSAGE));
                }
                check(&inner, item, errors);
            }
        }
        _ => {}
    }
}

/// A request body as a JSON value, with every NUL and out-of-range number refused (422, naming
/// each). Not JSON at all is a 400.
pub fn parse_body(body: &[u8]) -> Result<Json, Error> {
    let value = match serde_json::from_slice::<Json>(body) {
        Ok(value) => value,
        Err(err) => {
            // serde_json refuses a number past f64 without saying where; find it and name it.
            let wide = std::str::from_utf8(body)
                .ok()
                .and_then(parse_exact)
                .map(|(_, wide)| wide)
                .unwrap_or_default();
            if wide.is_empty() {
                return Err(Error::BadRequest(format!(
                    "The body is not valid JSON: {err}"
                )));
            }
            return Err(Error::Validation(
                wide.into_iter()
                    .take(MAX_ERRORS)
                    .map(|path| FieldError::new(path, NUMBER_MESSAGE))
                    .collect(),
            ));
        }
    };
    let mut errors = Vec::new();
    check("", &value, &mut errors);
    if errors.is_empty() {
        Ok(value)
    } else {
        Err(Error::Validation(errors))
    }
}

/// A stored JSON value (`custom`, `metadata`) from its text. serde_json reads almost all; what it
/// cannot (a number at or past the edge of f64, see the module's notes) is read by [`parse_exact`].
/// `None` only for text that is not JSON at all, which Postgres never returns.
pub fn read_stored(text: &str) -> Option<Json> {
    match serde_json::from_str::<Json>(text) {
        Ok(value) => Some(value),
        Err(_) => {
            let (value, wide) = parse_exact(text)?;
            if !wide.is_empty() {
                tracing::warn!(
                    fields = ?wide,
                    "stored JSON holds numbers no 64-bit float can hold; read as strings"
                );
            }
            Some(value)
        }
    }
}

/// Parses JSON text with every number read exactly (Rust's correctly rounded parse, where
/// serde_json without `float_roundtrip` can overflow on the last digit), keeping a number that no
/// f64 holds as a string of its text. Returns the value and the paths of those numbers; `None`
/// when the text is not JSON.
pub fn parse_exact(text: &str) -> Option<(Json, Vec<String>)> {
    let mut parser = Exact {
        text,
        bytes: text.as_bytes(),
        pos: 0,
        wide: Vec::new(),
    };
    let value = parser.value("", 0)?;
    parser.space();
    (parser.pos == parser.bytes.len()).then_some((value, parser.wide))
}

/// serde_json's nesting limit.
const MAX_DEPTH: usize = 128;

struct Exact<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    wide: Vec<String>,
}

impl Exact<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.pos += 1)
    }

    fn literal(&mut self, word: &str, value: Json) -> Option<Json> {
        let end = self.pos + word.len();
        (self.bytes.get(self.pos..end)? == word.as_bytes()).then(|| {
            self.pos = end;
            value
        })
    }

    fn value(&mut self, path: &str, depth: usize) -> Option<Json> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.space();
        match self.peek()? {
            b'{' => {
                self.pos += 1;
                let mut map = Map::new();
                self.space();
                if self.eat(b'}').is_some() {
                    return Some(Json::Object(map));
                }
                loop {
                    self.space();
                    let key = self.string()?;
                    self.space();
                    self.eat(b':')?;
                    let item = self.value(&member_path(path, &key), depth + 1)?;
                    map.insert(key, item);
                    self.space();
                    match self.peek()? {
                        b',' => self.pos += 1,
                        b'}' => {
                            self.pos += 1;
                            return Some(Json::Object(map));
                        }
                        _ => return None,
                    }
                }
            }
            b'[' => {
                self.pos += 1;
                let mut items = Vec::new();
                self.space();
                if self.eat(b']').is_some() {
                    return Some(Json::Array(items));
                }
                loop {
                    let item = self.value(&format!("{path}[{}]", items.len()), depth + 1)?;
                    items.push(item);
                    self.space();
                    match self.peek()? {
                        b',' => self.pos += 1,
                        b']' => {
                            self.pos += 1;
                            return Some(Json::Array(items));
                        }
                        _ => return None,
                    }
                }
            }
            b'"' => self.string().map(Json::String),
            b't' => self.literal("true", Json::Bool(true)),
            b'f' => self.literal("false", Json::Bool(false)),
            b'n' => self.literal("null", Json::Null),
            b'-' | b'0'..=b'9' => self.number(path),
            _ => None,
        }
    }

    /// A string token, unescaped by serde_json (it handles escapes and surrogates).
    fn string(&mut self) -> Option<String> {
        let start = self.pos;
        self.eat(b'"')?;
        loop {
            match self.peek()? {
                b'\\' => self.pos += 2,
                b'"' => {
                    self.pos += 1;
                    break;
                }
                _ => self.pos += 1,
            }
        }
        serde_json::from_str(self.text.get(start..self.pos)?).ok()
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self, path: &str) -> Option<Json> {
        let start = self.pos;
        let _ = self.eat(b'-');
        let int_start = self.pos;
        let int_digits = self.digits();
        if int_digits == 0 || (int_digits > 1 && self.bytes[int_start] == b'0') {
            return None;
        }
        let mut integer = true;
        if self.eat(b'.').is_some() {
            integer = false;
            if self.digits() == 0 {
                return None;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            integer = false;
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return None;
            }
        }
        let token = self.text.get(start..self.pos)?;
        if integer {
            // As serde_json: "-0" is the float -0.0.
            if let Ok(n) = token.parse::<i64>()
                && (n != 0 || !token.starts_with('-'))
            {
                return Some(Json::from(n));
            }
            if let Ok(n) = token.parse::<u64>() {
                return Some(Json::from(n));
            }
        }
        let x: f64 = token.parse().ok()?;
        match Number::from_f64(x) {
            Some(n) if x.is_finite() => Some(Json::Number(n)),
            _ => {
                self.wide.push(if path.is_empty() {
                    "body".to_string()
                } else {
                    path.to_string()
                });
                Some(Json::String(token.to_string()))
            }
        }
    }
}

/// A NUL in a name or value of url-encoded pairs (a query string, a form body): the errors, by
/// name.
pub fn nul_in_pairs(encoded: &[u8]) -> Vec<FieldError> {
    url::form_urlencoded::parse(encoded)
        .filter(|(name, value)| name.contains('\0') || value.contains('\0'))
        .take(MAX_ERRORS)
        .map(|(name, _)| FieldError::new(shown(&name), NUL_MESSAGE))
        .collect()
}

/// Whether a percent-encoded path segment decodes to text with a NUL in it.
fn segment_has_nul(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    bytes
        .windows(3)
        .any(|w| w[0] == b'%' && w[1] == b'0' && w[2] == b'0')
}

/// A NUL in a URI's query parameters (named) or path segments (named by the route's `{param}`
/// when `template`, the matched route, is known).
pub fn nul_in_uri(uri: &Uri, template: Option<&str>) -> Vec<FieldError> {
    let mut errors = uri
        .query()
        .map(|query| nul_in_pairs(query.as_bytes()))
        .unwrap_or_default();
    let names: Vec<&str> = template.map(|t| t.split('/').collect()).unwrap_or_default();
    for (i, segment) in uri.path().split('/').enumerate() {
        if segment_has_nul(segment) {
            let name = names
                .get(i)
                .and_then(|t| t.strip_prefix('{'))
                .and_then(|t| t.strip_suffix('}'))
                .map(|t| t.trim_start_matches('*'))
                .unwrap_or("path");
            errors.push(FieldError::new(name, NUL_MESSAGE));
        }
    }
    errors
}

/// Middleware for `/v1`: a NUL in the path or the query is a 422 naming the parameter, before
/// any handler hands it to Postgres.
pub async fn reject_nul_in_uri(request: Request, next: Next) -> Result<Response, Error> {
    // Inside `nest("/v1")` the URI has lost its prefix; the matched path has not.
    let uri = request
        .extensions()
        .get::<OriginalUri>()
        .map(|o| o.0.clone())
        .unwrap_or_else(|| request.uri().clone());
    let template = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let errors = nul_in_uri(&uri, template.as_deref());
    if !errors.is_empty() {
        return Err(Error::Validation(errors));
    }
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nul_and_wide_numbers_are_named_by_path() {
        let body = json!({
            "first_name": "A\u{0}B",
            "custom": {"note": "x\u{0}", "big": 1.7976931348623157e308, "ok": 1e300, "n\u{0}": 1},
            "contact_ids": ["a", "b\u{0}"],
            "metadata": {"int": u64::MAX, "neg": -1e300}
        });
        let mut errors = Vec::new();
        check("", &body, &mut errors);
        let mut fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "contact_ids[1]",
                "custom.big",
                "custom.n\\u0000",
                "custom.note",
                "first_name"
            ]
        );
    }

    #[test]
    fn a_body_with_a_number_past_f64_names_it() {
        let Err(Error::Validation(errors)) =
            parse_body(br#"{"custom": {"huge": 1e400, "list": [1, -2E+999]}}"#)
        else {
            panic!("refused");
        };
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["custom.huge", "custom.list[1]"]);
        assert!(matches!(
            parse_body(b"{\"a\": 01}"),
            Err(Error::BadRequest(_))
        ));
        assert!(matches!(
            parse_body(b"{\"a\": 1e400"),
            Err(Error::BadRequest(_))
        ));
        assert!(parse_body(br#"{"a": [1, 2.5, -3e-7, "\u00e9\ud83d\ude00"]}"#).is_ok());
    }

    #[test]
    fn stored_json_reads_back_what_serde_json_cannot() {
        // Postgres prints jsonb's 1.7976931348623157e308 with all its 309 digits.
        let digits = format!("17976931348623157{}", "0".repeat(292));
        let text = format!(
            r#"{{"max": {digits}, "past": 1{}, "s": "q\"\\"}}"#,
            "0".repeat(400)
        );
        assert!(
            serde_json::from_str::<Json>(&text).is_err(),
            "serde_json overflows"
        );
        let map = read_stored(&text).expect("readable");
        assert_eq!(map["max"], json!(f64::MAX));
        assert_eq!(map["past"], json!(format!("1{}", "0".repeat(400))));
        assert_eq!(map["s"], json!("q\"\\"));
        assert_eq!(read_stored(r#"{"a": 1}"#), Some(json!({"a": 1})));
        assert_eq!(read_stored("{"), None);
    }

    #[test]
    fn exact_parse_agrees_with_serde_json_on_ordinary_json() {
        let text = r#" { "a" : [ true , false , null , 0 , -0 , 12 , -3.25e-2 , 18446744073709551615 , -9223372036854775808 ] , "b" : { } , "c" : [ ] , "d" : "\u0041\n" } "#;
        let (value, wide) = parse_exact(text).expect("json");
        assert!(wide.is_empty());
        assert_eq!(value, serde_json::from_str::<Json>(text).expect("json"));
        for bad in [
            "",
            "{",
            "[1,]",
            "{\"a\" 1}",
            "01",
            "1.",
            "-",
            "1e",
            "tru",
            "\"a",
            "{} x",
        ] {
            assert!(parse_exact(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn nul_in_queries_and_paths_is_named() {
        let uri: Uri = "/v1/contacts/ab%00c?email=a%00b&limit=5&x%00=1"
            .parse()
            .expect("uri");
        let errors = nul_in_uri(&uri, Some("/v1/contacts/{id}"));
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["email", "x\\u0000", "id"]);
        let clean: Uri = "/v1/contacts/hubspot:contact:1?email=a%2500"
            .parse()
            .expect("uri");
        assert!(nul_in_uri(&clean, None).is_empty());
    }
}
