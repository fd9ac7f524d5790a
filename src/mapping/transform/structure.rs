//! Steps that reshape: value maps, templates over several fields, splitting, first non-blank,
//! and paths into JSON payloads.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::super::error::TransformError;
use super::super::model::Unmapped;
use super::super::value::{Value, json_is_blank};
use super::{Context, Source};

/// Which part of split text to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitPart {
    /// Before the first separator ("Ann" of "Ann Marie Lee").
    First,
    /// After the first separator ("Marie Lee").
    Rest,
    /// After the last separator ("Lee").
    Last,
}

pub fn map(value: Value, name: &str, ctx: &Context<'_>) -> Result<Value, TransformError> {
    if value.is_blank() {
        return Ok(Value::Null);
    }
    let map = ctx
        .value_maps
        .get(name)
        .ok_or_else(|| TransformError::UnknownMap {
            map: name.to_string(),
        })?;
    let key = match &value {
        Value::Text(s) => s.trim(),
        _ => "",
    };
    let owned;
    let key = if key.is_empty() {
        owned = value.expect_text()?;
        owned.trim()
    } else {
        key
    };
    let text = |s: &str| {
        if s.is_empty() {
            Value::Null
        } else {
            Value::Text(s.to_string())
        }
    };
    match map.lookup(ctx.flow, key) {
        Some(found) => Ok(text(found)),
        None => match &map.unmapped {
            Unmapped::Error => Err(TransformError::Unmapped {
                map: name.to_string(),
            }),
            Unmapped::Keep => Ok(text(key)),
            Unmapped::Blank => Ok(Value::Null),
            Unmapped::Value(v) => Ok(text(v)),
        },
    }
}

/// A template's pieces: literal text and field names.
enum Piece<'a> {
    Text(&'a str),
    Field(&'a str),
}

fn pieces(template: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while !rest.is_empty() {
        let Some(at) = rest.find(['{', '}']) else {
            out.push(Piece::Text(rest));
            break;
        };
        if at > 0 {
            out.push(Piece::Text(&rest[..at]));
        }
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("{{") {
            out.push(Piece::Text("{"));
            rest = after;
        } else if let Some(after) = tail.strip_prefix("}}") {
            out.push(Piece::Text("}"));
            rest = after;
        } else if tail.starts_with('}') {
            return Err("a lone } in the template: write }} for a literal brace".into());
        } else {
            let close = tail
                .find('}')
                .ok_or("a { without its } in the template: write {{ for a literal brace")?;
            let name = tail[1..close].trim();
            if name.is_empty() || name.contains('{') {
                return Err("a {} in the template names no field".into());
            }
            out.push(Piece::Field(name));
            rest = &tail[close + 1..];
        }
    }
    Ok(out)
}

/// The fields a template reads, or what is wrong with it.
pub fn template_fields(template: &str) -> Result<Vec<&str>, String> {
    Ok(pieces(template)?
        .into_iter()
        .filter_map(|p| match p {
            Piece::Field(name) => Some(name),
            Piece::Text(_) => None,
        })
        .collect())
}

pub fn template(template: &str, source: &Source<'_>) -> Result<Value, TransformError> {
    let pieces = pieces(template).map_err(|reason| TransformError::Misconfigured { reason })?;
    let mut out = String::with_capacity(template.len() + 32);
    for piece in pieces {
        match piece {
            Piece::Text(text) => out.push_str(text),
            Piece::Field(name) => {
                if let Some(json) = source.get(name)
                    && let Some(text) = Value::from_json(json).to_text()
                {
                    out.push_str(text.trim());
                }
            }
        }
    }
    let trimmed = out.trim();
    Ok(if trimmed.is_empty() {
        Value::Null
    } else if trimmed.len() == out.len() {
        Value::Text(out)
    } else {
        Value::Text(trimmed.to_string())
    })
}

pub fn split(
    value: Value,
    separator: Option<&str>,
    part: SplitPart,
) -> Result<Value, TransformError> {
    let text = match value {
        Value::Null => return Ok(Value::Null),
        Value::Text(s) => s,
        other => other.expect_text()?,
    };
    let text = text.trim();
    let found = match separator {
        None => match part {
            SplitPart::First => text.split_whitespace().next(),
            SplitPart::Last => text.split_whitespace().next_back(),
            SplitPart::Rest => text.split_once(char::is_whitespace).map(|(_, rest)| rest),
        },
        Some(sep) => match part {
            SplitPart::First => text.split(sep).next(),
            SplitPart::Last => text.rsplit(sep).next(),
            SplitPart::Rest => text.split_once(sep).map(|(_, rest)| rest),
        },
    };
    Ok(match found.map(str::trim) {
        Some(part) if !part.is_empty() => Value::Text(part.to_string()),
        _ => Value::Null,
    })
}

pub fn first_non_blank(fields: &[String], source: &Source<'_>) -> Value {
    fields
        .iter()
        .filter_map(|name| source.get(name))
        .find(|json| !json_is_blank(json))
        .map_or(Value::Null, Value::from_json)
}

/// One step of a path: a member name or an array index.
#[derive(Debug, PartialEq)]
pub enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// `a.b[0].c`, `lines.0.sku`.
pub fn parse_path(path: &str) -> Result<Vec<Step<'_>>, String> {
    let bad = || format!("{path:?} is not a path like address.city or lines[0].sku");
    let mut steps = Vec::new();
    if path.trim().is_empty() {
        return Err(bad());
    }
    for segment in path.split('.') {
        let (key, mut indexes) = match segment.find('[') {
            Some(at) => (&segment[..at], &segment[at..]),
            None => (segment, ""),
        };
        if key.is_empty() && indexes.is_empty() {
            return Err(bad());
        }
        if !key.is_empty() {
            steps.push(match key.parse::<usize>() {
                Ok(i) => Step::Index(i),
                Err(_) => Step::Key(key),
            });
        }
        while !indexes.is_empty() {
            let close = indexes.find(']').ok_or_else(bad)?;
            let index = indexes[1..close].parse::<usize>().map_err(|_| bad())?;
            steps.push(Step::Index(index));
            indexes = &indexes[close + 1..];
            if !indexes.is_empty() && !indexes.starts_with('[') {
                return Err(bad());
            }
        }
    }
    Ok(steps)
}

pub fn path(value: Value, path: &str) -> Result<Value, TransformError> {
    let steps = parse_path(path).map_err(|reason| TransformError::Misconfigured { reason })?;
    let parsed;
    let root = match &value {
        Value::Null => return Ok(Value::Null),
        Value::Json(json) => json,
        Value::Text(text) if text.trim().is_empty() => return Ok(Value::Null),
        Value::Text(text) => {
            parsed = serde_json::from_str::<Json>(text).map_err(|_| TransformError::Json)?;
            &parsed
        }
        other => {
            return Err(TransformError::WrongType {
                expected: "structured data",
                found: other.type_name(),
            });
        }
    };
    let mut at = root;
    for step in steps {
        let next = match (step, at) {
            (Step::Key(key), Json::Object(map)) => map.get(key),
            (Step::Index(i), Json::Array(items)) => items.get(i),
            (Step::Index(i), Json::Object(map)) => map.get(&i.to_string()),
            _ => None,
        };
        match next {
            Some(found) => at = found,
            None => return Ok(Value::Null),
        }
    }
    Ok(Value::from_json(at))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::{Map, json};

    use super::*;
    use crate::mapping::model::{Flow, Settings, ValueMap};

    fn text(s: &str) -> Value {
        Value::Text(s.to_string())
    }

    fn props(json: Json) -> Map<String, Json> {
        json.as_object().cloned().unwrap_or_default()
    }

    fn run_map(flow: Flow, value: Value, map: ValueMap) -> Result<Value, TransformError> {
        let settings = Settings::default();
        let maps = BTreeMap::from([("status".to_string(), map)]);
        let empty = Map::new();
        let ctx = Context {
            flow,
            settings: &settings,
            value_maps: &maps,
            source: Source::Remote(&empty),
        };
        super::map(value, "status", &ctx)
    }

    #[test]
    fn value_maps_both_ways_and_their_misses() {
        let status = ValueMap::new(&[
            ("NOT_STARTED", "open"),
            ("IN_PROGRESS", "in_progress"),
            ("WAITING", "in_progress"),
            ("COMPLETED", "done"),
        ]);
        assert_eq!(
            run_map(Flow::Inbound, text("WAITING"), status.clone()),
            Ok(text("in_progress"))
        );
        assert_eq!(
            run_map(Flow::Outbound, text("in_progress"), status.clone()),
            Ok(text("IN_PROGRESS"))
        );
        assert_eq!(
            run_map(Flow::Inbound, text("DEFERRED"), status.clone()),
            Err(TransformError::Unmapped {
                map: "status".into()
            })
        );
        assert_eq!(
            run_map(Flow::Inbound, Value::Null, status.clone()),
            Ok(Value::Null)
        );
        let mut keep = status.clone();
        keep.unmapped = Unmapped::Keep;
        assert_eq!(
            run_map(Flow::Inbound, text("DEFERRED"), keep),
            Ok(text("DEFERRED"))
        );
        let mut fallback = status;
        fallback.unmapped = Unmapped::Value("open".into());
        assert_eq!(
            run_map(Flow::Inbound, text("DEFERRED"), fallback),
            Ok(text("open"))
        );
        let priority = ValueMap::new(&[("NONE", ""), ("HIGH", "high")]);
        assert_eq!(
            run_map(Flow::Inbound, text("NONE"), priority),
            Ok(Value::Null)
        );
    }

    #[test]
    fn templates_fill_from_the_source_record() {
        let record =
            props(json!({"firstname": " Ann ", "lastname": "Lee", "n": "3", "empty": null}));
        let source = Source::Remote(&record);
        assert_eq!(
            template("{firstname} {lastname}", &source),
            Ok(text("Ann Lee"))
        );
        assert_eq!(template("{empty} {lastname}", &source), Ok(text("Lee")));
        assert_eq!(template("{{{n}}} items", &source), Ok(text("{3} items")));
        assert_eq!(template("{missing}", &source), Ok(Value::Null));
        assert!(template_fields("{a").is_err());
        assert!(template_fields("a}").is_err());
        assert!(template_fields("{}").is_err());
        assert_eq!(template_fields("{ a }-{b}"), Ok(vec!["a", "b"]));
    }

    #[test]
    fn splitting_full_names() {
        let full = || text("  Ann Marie  Lee ");
        assert_eq!(split(full(), None, SplitPart::First), Ok(text("Ann")));
        assert_eq!(split(full(), None, SplitPart::Rest), Ok(text("Marie  Lee")));
        assert_eq!(split(full(), None, SplitPart::Last), Ok(text("Lee")));
        assert_eq!(split(text("Cher"), None, SplitPart::Rest), Ok(Value::Null));
        assert_eq!(
            split(text("Lee, Ann"), Some(","), SplitPart::First),
            Ok(text("Lee"))
        );
        assert_eq!(
            split(text("Lee, Ann"), Some(","), SplitPart::Rest),
            Ok(text("Ann"))
        );
        assert_eq!(split(Value::Null, None, SplitPart::First), Ok(Value::Null));
    }

    #[test]
    fn first_non_blank_skips_blanks_and_missing() {
        let record = props(json!({"mobilephone": " ", "phone": "+49 30 1", "other": "x"}));
        let source = Source::Remote(&record);
        let fields = ["missing", "mobilephone", "phone", "other"].map(String::from);
        assert_eq!(first_non_blank(&fields, &source), text("+49 30 1"));
        assert_eq!(first_non_blank(&fields[..2], &source), Value::Null);
    }

    #[test]
    fn paths_into_payloads() {
        let payload = json!({"address": {"city": "Berlin"}, "lines": [{"sku": "A-1", "qty": 2}]});
        let value = || Value::Json(payload.clone());
        assert_eq!(path(value(), "address.city"), Ok(text("Berlin")));
        assert_eq!(path(value(), "lines[0].sku"), Ok(text("A-1")));
        assert_eq!(path(value(), "lines.0.qty"), Ok(Value::Number(2.into())));
        assert_eq!(path(value(), "lines[3].sku"), Ok(Value::Null));
        assert_eq!(path(value(), "address.city.zip"), Ok(Value::Null));
        assert_eq!(
            path(text(r#"{"a": {"b": true}}"#), "a.b"),
            Ok(Value::Bool(true))
        );
        assert_eq!(path(text("not json"), "a"), Err(TransformError::Json));
        assert!(parse_path("a..b").is_err());
        assert!(parse_path("a[x]").is_err());
        assert!(parse_path("a[0]b").is_err());
        assert_eq!(parse_path("a[0][1]").map(|s| s.len()), Ok(3));
    }
}
