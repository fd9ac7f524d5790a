//! What can go wrong while mapping: a transform refusing a value, with the record, rule, field and
//! value it failed on; and a mapping that does not fit the schemas it connects.

use serde::{Deserialize, Serialize};

use super::model::Flow;

/// Why one transform (or the final conversion into the target field) refused a value.
/// Serialises with a `code` tag for history and dead-letter records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum TransformError {
    #[error("expected {expected}, got {found}")]
    WrongType {
        expected: &'static str,
        found: &'static str,
    },
    #[error("not an email address")]
    Email,
    #[error("not a phone number{}", region.as_deref().map(|r| format!(" (default region {r})")).unwrap_or_default())]
    Phone { region: Option<String> },
    #[error("not a number in locale {locale}")]
    Number { locale: String },
    #[error("not a yes/no value")]
    Bool,
    #[error("not a date or time in the format {format}")]
    Date { format: String },
    #[error("the local time does not exist in {zone}")]
    NoSuchLocalTime { zone: String },
    #[error("no entry in value map {map}")]
    Unmapped { map: String },
    #[error("value map {map} is not defined")]
    UnknownMap { map: String },
    #[error("not valid JSON")]
    Json,
    #[error("longer than {max} characters")]
    TooLong { max: usize },
    #[error("not one of: {}", allowed.join(", "))]
    NotAllowed { allowed: Vec<String> },
    #[error("at most {scale} decimal places and {digits} digits before the point")]
    DecimalRange { digits: u32, scale: u32 },
    #[error("not a 3-letter currency code")]
    Currency,
    #[error("the step is misconfigured: {reason}")]
    Misconfigured { reason: String },
    #[error("{field} is not a field of this kind of record")]
    UnknownField { field: String },
    #[error("field type {field_type} cannot be mapped")]
    Unmappable { field_type: &'static str },
}

/// A rule that failed on one record: which record, which rule and field, which value, and why.
///
/// The sync engine files these per field (the record's other fields still sync) and shows them in
/// history and the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error(
    "{flow} record {record}: rule {rule} ({field}){}: {error} (value: {value})",
    step.map(|s| format!(" step {s}")).unwrap_or_default()
)]
pub struct RuleError {
    /// The remote id (inbound) or the Ferry id (outbound; empty for a record not yet saved).
    pub record: String,
    pub flow: Flow,
    /// Index of the rule in [`super::Mapping::rules`].
    pub rule: usize,
    /// The field being written: the local field inbound, the remote property outbound.
    pub field: String,
    /// Index of the failing transform in the rule's pipeline; `None` when the pipeline's result
    /// did not fit the target field.
    pub step: Option<usize>,
    /// The source value the pipeline started from, as the user sees it in the CRM or in Ferry
    /// (cut to 200 characters).
    pub value: String,
    pub error: TransformError,
}

/// One problem with a mapping, for inline display next to the rule in the editor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{}{field}: {message}", rule.map(|r| format!("rule {r}, ")).unwrap_or_default())]
pub struct ValidationError {
    /// The rule's index, or `None` for a problem with the mapping as a whole (a required field
    /// nobody maps, an unknown value map).
    pub rule: Option<usize>,
    /// The local field, remote property or setting concerned.
    pub field: String,
    pub message: String,
}

impl ValidationError {
    pub(crate) fn rule(rule: usize, field: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError {
            rule: Some(rule),
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn mapping(field: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError {
            rule: None,
            field: field.into(),
            message: message.into(),
        }
    }
}

/// For answering an editor's save with the usual 422 body: `rules[3].email`.
impl From<ValidationError> for crate::error::FieldError {
    fn from(error: ValidationError) -> Self {
        let field = match error.rule {
            Some(rule) => format!("rules[{rule}].{}", error.field),
            None => error.field,
        };
        crate::error::FieldError::new(field, error.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_errors_say_record_rule_field_and_value() {
        let error = RuleError {
            record: "123".into(),
            flow: Flow::Inbound,
            rule: 2,
            field: "due_at".into(),
            step: Some(0),
            value: "tomorrow".into(),
            error: TransformError::Date {
                format: "ms_epoch".into(),
            },
        };
        assert_eq!(
            error.to_string(),
            "inbound record 123: rule 2 (due_at) step 0: not a date or time in the format \
             ms_epoch (value: tomorrow)"
        );
        let json = serde_json::to_value(&error).expect("serialises");
        assert_eq!(json["error"]["code"], "date");
    }

    #[test]
    fn validation_errors_become_request_field_errors() {
        let field: crate::error::FieldError =
            ValidationError::rule(3, "email", "Unknown remote property.").into();
        assert_eq!(field.field, "rules[3].email");
        let field: crate::error::FieldError =
            ValidationError::mapping("title", "Required field.").into();
        assert_eq!(field.field, "title");
    }
}
