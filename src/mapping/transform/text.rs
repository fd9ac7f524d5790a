//! Text steps: trim, case, email, phone.

use phonenumber::Mode;
use phonenumber::country::Id as Region;

use super::super::error::TransformError;
use super::super::value::{Value, plausible_email};

/// Text in, text out; blank passes through; numbers and yes/no values are read as text.
fn text_in(value: Value) -> Result<Option<String>, TransformError> {
    match value {
        Value::Null => Ok(None),
        Value::Text(s) => Ok(Some(s)),
        Value::Date(_) | Value::DateTime(_) => Err(TransformError::WrongType {
            expected: "text",
            found: value.type_name(),
        }),
        other => other.expect_text().map(Some),
    }
}

pub fn trim(value: Value) -> Result<Value, TransformError> {
    let Some(mut text) = text_in(value)? else {
        return Ok(Value::Null);
    };
    let end = text.trim_end().len();
    text.truncate(end);
    let start = text.len() - text.trim_start().len();
    if start > 0 {
        text.drain(..start);
    }
    Ok(Value::Text(text))
}

/// Applies `f` to text (blank passes through), keeping the original string when `f` changes
/// nothing.
pub fn map_text(value: Value, f: impl Fn(&str) -> String) -> Result<Value, TransformError> {
    match text_in(value)? {
        None => Ok(Value::Null),
        Some(text) => {
            let out = f(&text);
            Ok(Value::Text(if out == text { text } else { out }))
        }
    }
}

pub fn normalize_email(value: Value) -> Result<Value, TransformError> {
    let Some(text) = text_in(value)? else {
        return Ok(Value::Null);
    };
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Ok(Value::Null);
    }
    let email = if trimmed.len() == text.len()
        && !text.bytes().any(|b| b.is_ascii_uppercase())
        && text.is_ascii()
    {
        text
    } else {
        trimmed.to_lowercase()
    };
    if plausible_email(&email) {
        Ok(Value::Text(email))
    } else {
        Err(TransformError::Email)
    }
}

pub fn phone_e164(
    value: Value,
    region: Option<Region>,
    strict: bool,
) -> Result<Value, TransformError> {
    let Some(text) = text_in(value)? else {
        return Ok(Value::Null);
    };
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    let fail = || TransformError::Phone {
        region: region.map(|r| r.as_ref().to_string()),
    };
    let number = phonenumber::parse(region, text.trim()).map_err(|_| fail())?;
    if strict && !phonenumber::is_valid(&number) {
        return Err(fail());
    }
    Ok(Value::Text(number.format().mode(Mode::E164).to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;

    fn text(s: &str) -> Value {
        Value::Text(s.to_string())
    }

    #[test]
    fn trim_and_case() {
        assert_eq!(trim(text("  Ann \n")), Ok(text("Ann")));
        assert_eq!(trim(text("Ann")), Ok(text("Ann")));
        assert_eq!(trim(Value::Number(Decimal::from(5))), Ok(text("5")));
        assert!(trim(Value::Date(chrono::NaiveDate::MIN)).is_err());
        assert_eq!(map_text(text("ÄBC"), |s| s.to_lowercase()), Ok(text("äbc")));
        assert_eq!(map_text(text("abc"), |s| s.to_uppercase()), Ok(text("ABC")));
        assert_eq!(map_text(Value::Null, |s| s.to_uppercase()), Ok(Value::Null));
    }

    #[test]
    fn emails_are_trimmed_lowercased_and_checked() {
        assert_eq!(
            normalize_email(text(" Ann.Lee@Example.COM ")),
            Ok(text("ann.lee@example.com"))
        );
        assert_eq!(
            normalize_email(text("ann@example.com")),
            Ok(text("ann@example.com"))
        );
        assert_eq!(
            normalize_email(text("ann at example")),
            Err(TransformError::Email)
        );
        assert_eq!(
            normalize_email(text("a b@example.com")),
            Err(TransformError::Email)
        );
        assert_eq!(normalize_email(text(" ")), Ok(Value::Null));
    }

    #[test]
    fn phones_become_e164_with_the_default_region() {
        assert_eq!(
            phone_e164(text("030 1234567"), Some(Region::DE), false),
            Ok(text("+49301234567"))
        );
        assert_eq!(
            phone_e164(text("+1 (415) 555-2671"), None, false),
            Ok(text("+14155552671"))
        );
        assert_eq!(
            phone_e164(text("+44 20 7946 0958"), Some(Region::DE), true),
            Ok(text("+442079460958"))
        );
        // Without a region a national number cannot be placed.
        assert_eq!(
            phone_e164(text("030 1234567"), None, false),
            Err(TransformError::Phone { region: None })
        );
        assert_eq!(
            phone_e164(text("call me maybe"), Some(Region::US), false),
            Err(TransformError::Phone {
                region: Some("US".into())
            })
        );
        assert_eq!(phone_e164(text(""), None, true), Ok(Value::Null));
    }

    #[test]
    fn odd_phone_input_is_an_error_not_a_panic() {
        for odd in [
            "+",
            "++49",
            "+0",
            "+999999999999999999999999",
            "٣٣٣٣٣٣٣",
            "00",
            "+49 (",
            "#*#",
            "+49 30 1234567 ext. 12",
            "tel:+49-30-1234567",
            "\u{0}",
        ] {
            for region in [None, Some(Region::DE), Some(Region::US)] {
                let _ = phone_e164(text(odd), region, true);
                let _ = phone_e164(text(odd), region, false);
            }
        }
    }
}
