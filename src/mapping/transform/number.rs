//! Numbers with locale separators, and yes/no values.

use std::fmt;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use super::super::error::TransformError;
use super::super::value::Value;

/// How a locale writes numbers: its decimal separator and the thousands separators it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum NumberLocale {
    /// `1,234.56` (also plain `1234.56`, as CRMs send numbers).
    #[default]
    #[serde(rename = "en")]
    En,
    /// `1.234,56` (German, Dutch, Spanish, Italian, …).
    #[serde(rename = "de")]
    De,
    /// `1 234,56` with a space, no-break space or narrow no-break space.
    #[serde(rename = "fr")]
    Fr,
    /// `1'234.56` (Swiss).
    #[serde(rename = "de-CH")]
    DeCh,
}

impl NumberLocale {
    fn decimal(self) -> char {
        match self {
            NumberLocale::En | NumberLocale::DeCh => '.',
            NumberLocale::De | NumberLocale::Fr => ',',
        }
    }

    fn is_group(self, c: char) -> bool {
        match self {
            NumberLocale::En => c == ',',
            NumberLocale::De => c == '.',
            NumberLocale::Fr => matches!(c, ' ' | '\u{a0}' | '\u{202f}'),
            NumberLocale::DeCh => matches!(c, '\'' | '\u{2019}'),
        }
    }

    fn group(self) -> char {
        match self {
            NumberLocale::En => ',',
            NumberLocale::De => '.',
            NumberLocale::Fr => '\u{202f}',
            NumberLocale::DeCh => '\'',
        }
    }
}

impl fmt::Display for NumberLocale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NumberLocale::En => "en",
            NumberLocale::De => "de",
            NumberLocale::Fr => "fr",
            NumberLocale::DeCh => "de-CH",
        })
    }
}

/// Reads a number written in `locale`. Thousands separators must sit every three digits, so a
/// `1,5` meant as German one-and-a-half is refused in `en` instead of read as fifteen.
pub fn parse(value: Value, locale: NumberLocale) -> Result<Value, TransformError> {
    let text = match value {
        Value::Null => return Ok(Value::Null),
        Value::Number(_) => return Ok(value),
        Value::Text(s) => s,
        other => other.expect_text()?,
    };
    let text = text.trim();
    if text.is_empty() {
        return Ok(Value::Null);
    }
    parse_str(text, locale)
        .map(Value::Number)
        .ok_or_else(|| TransformError::Number {
            locale: locale.to_string(),
        })
}

fn parse_str(text: &str, locale: NumberLocale) -> Option<Decimal> {
    let (negative, body) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (int_part, frac_part) = match body.split_once(locale.decimal()) {
        Some((i, f)) => (i, Some(f)),
        None => (body, None),
    };
    let mut plain = String::with_capacity(text.len());
    if negative {
        plain.push('-');
    }
    // Integer digits, in groups of three after the first when separators are used.
    let mut groups = int_part.split(|c| locale.is_group(c));
    let first = groups.next()?;
    let grouped = int_part.chars().any(|c| locale.is_group(c));
    if first.is_empty() && (grouped || frac_part.is_none())
        || !first.bytes().all(|b| b.is_ascii_digit())
        || grouped && (first.len() > 3 || first.is_empty())
    {
        return None;
    }
    plain.push_str(first);
    for group in groups {
        if group.len() != 3 || !group.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        plain.push_str(group);
    }
    if let Some(frac) = frac_part {
        if frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if first.is_empty() {
            plain.push('0');
        }
        plain.push('.');
        plain.push_str(frac);
    }
    plain.parse().ok()
}

/// Writes a number the locale's way.
pub fn format(
    value: Value,
    locale: NumberLocale,
    decimals: Option<u32>,
    grouping: bool,
) -> Result<Value, TransformError> {
    let number = match value {
        Value::Null => return Ok(Value::Null),
        Value::Number(d) => d,
        Value::Text(ref s) if s.trim().is_empty() => return Ok(Value::Null),
        Value::Text(s) => s.trim().parse().map_err(|_| TransformError::WrongType {
            expected: "a number",
            found: "text",
        })?,
        other => {
            return Err(TransformError::WrongType {
                expected: "a number",
                found: other.type_name(),
            });
        }
    };
    let number = match decimals {
        Some(places) => {
            let mut n =
                number.round_dp_with_strategy(places, RoundingStrategy::MidpointAwayFromZero);
            n.rescale(places);
            n
        }
        None => number.normalize(),
    };
    let plain = number.to_string();
    let (sign, digits) = match plain.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", plain.as_str()),
    };
    let (int_part, frac_part) = match digits.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (digits, None),
    };
    let mut out = String::with_capacity(plain.len() + plain.len() / 3 + 1);
    out.push_str(sign);
    for (i, c) in int_part.chars().enumerate() {
        if grouping && i > 0 && (int_part.len() - i) % 3 == 0 {
            out.push(locale.group());
        }
        out.push(c);
    }
    if let Some(frac) = frac_part {
        out.push(locale.decimal());
        out.push_str(frac);
    }
    Ok(Value::Text(out))
}

pub fn parse_bool(value: Value) -> Result<Value, TransformError> {
    let text = match value {
        Value::Null | Value::Bool(_) => return Ok(value),
        Value::Number(d) if d.is_zero() => return Ok(Value::Bool(false)),
        Value::Number(d) if d == Decimal::ONE => return Ok(Value::Bool(true)),
        Value::Text(s) => s,
        other => other.to_text().ok_or(TransformError::Bool)?,
    };
    let word = text.trim();
    if word.is_empty() {
        return Ok(Value::Null);
    }
    const TRUE: &[&str] = &["true", "yes", "y", "1", "on", "ja", "t"];
    const FALSE: &[&str] = &["false", "no", "n", "0", "off", "nein", "f"];
    if TRUE.iter().any(|w| w.eq_ignore_ascii_case(word)) {
        Ok(Value::Bool(true))
    } else if FALSE.iter().any(|w| w.eq_ignore_ascii_case(word)) {
        Ok(Value::Bool(false))
    } else {
        Err(TransformError::Bool)
    }
}

pub fn format_bool(
    value: Value,
    true_text: &str,
    false_text: &str,
) -> Result<Value, TransformError> {
    match parse_bool(value)? {
        Value::Bool(true) => Ok(Value::Text(true_text.to_string())),
        Value::Bool(false) => Ok(Value::Text(false_text.to_string())),
        _ => Ok(Value::Null),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Value {
        Value::Text(s.to_string())
    }

    fn num(s: &str) -> Value {
        Value::Number(s.parse().expect("decimal"))
    }

    #[test]
    fn numbers_parse_with_their_locale() {
        use NumberLocale::*;
        assert_eq!(parse(text("1.234,56"), De), Ok(num("1234.56")));
        assert_eq!(parse(text("1234,56"), De), Ok(num("1234.56")));
        assert_eq!(parse(text("-1.234.567"), De), Ok(num("-1234567")));
        assert_eq!(parse(text("1,234.56"), En), Ok(num("1234.56")));
        assert_eq!(parse(text("1250.10"), En), Ok(num("1250.10")));
        assert_eq!(parse(text(".5"), En), Ok(num("0.5")));
        assert_eq!(parse(text("1\u{202f}234,5"), Fr), Ok(num("1234.5")));
        assert_eq!(parse(text("1'234.50"), DeCh), Ok(num("1234.50")));
        assert_eq!(parse(text(" +7 "), En), Ok(num("7")));
        assert_eq!(parse(text(""), En), Ok(Value::Null));
        assert_eq!(parse(num("3"), De), Ok(num("3")));
    }

    #[test]
    fn misplaced_separators_are_refused_not_misread() {
        use NumberLocale::*;
        let err = |l: NumberLocale| {
            Err(TransformError::Number {
                locale: l.to_string(),
            })
        };
        assert_eq!(parse(text("1,5"), En), err(En));
        assert_eq!(parse(text("1.234,56"), En), err(En));
        assert_eq!(parse(text("12.34"), De), err(De));
        assert_eq!(parse(text("1,2,3"), De), err(De));
        assert_eq!(parse(text("abc"), En), err(En));
        assert_eq!(parse(text("1e5"), En), err(En));
        assert_eq!(parse(text("-"), En), err(En));
        assert_eq!(parse(text("5,"), De), err(De));
        assert_eq!(parse(text(",234"), En), err(En));
    }

    #[test]
    fn numbers_format_with_their_locale() {
        use NumberLocale::*;
        assert_eq!(
            format(num("1234567.891"), De, Some(2), true),
            Ok(text("1.234.567,89"))
        );
        assert_eq!(format(num("-1234.5"), En, None, true), Ok(text("-1,234.5")));
        assert_eq!(
            format(num("1234.5"), En, Some(2), false),
            Ok(text("1234.50"))
        );
        assert_eq!(format(num("999"), DeCh, None, true), Ok(text("999")));
        assert_eq!(format(num("0.125"), En, Some(2), false), Ok(text("0.13")));
        assert_eq!(format(text("12.5"), De, None, false), Ok(text("12,5")));
        assert!(format(Value::Bool(true), En, None, false).is_err());
    }

    #[test]
    fn booleans() {
        assert_eq!(parse_bool(text("Yes")), Ok(Value::Bool(true)));
        assert_eq!(parse_bool(text("FALSE")), Ok(Value::Bool(false)));
        assert_eq!(parse_bool(text("0")), Ok(Value::Bool(false)));
        assert_eq!(parse_bool(num("1")), Ok(Value::Bool(true)));
        assert_eq!(parse_bool(text("")), Ok(Value::Null));
        assert_eq!(parse_bool(text("perhaps")), Err(TransformError::Bool));
        assert_eq!(format_bool(text("true"), "Ja", "Nein"), Ok(text("Ja")));
        assert_eq!(
            format_bool(Value::Bool(false), "Ja", "Nein"),
            Ok(text("Nein"))
        );
    }
}
