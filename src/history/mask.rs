//! Masking of personal data (email, phone, names) in what the history and DLQ pages show.
//!
//! Values are masked where they are shown, never where they are stored: viewers always see masked
//! values, operators see dead-letter payloads masked until they choose to reveal them (audited).

use serde_json::Value;

/// Field and property names whose values identify a person: Ferry's canonical contact fields and
/// the CRM properties they map from.
const SENSITIVE: &[&str] = &[
    "email",
    "phone",
    "mobilephone",
    "mobile_phone",
    "first_name",
    "last_name",
    "firstname",
    "lastname",
    "name",
    "full_name",
    "fullname",
];

/// Whether values of `field` are personal data.
pub fn is_sensitive(field: &str) -> bool {
    let lower = field.to_ascii_lowercase();
    SENSITIVE.contains(&lower.as_str())
}

/// `jane@example.com` → `j***@example.com`; anything else keeps its first character.
pub fn mask_text(text: &str) -> String {
    let mut chars = text.chars();
    let Some(first) = chars.next() else {
        return String::new();
    };
    match text.rsplit_once('@') {
        Some((_, domain)) if !domain.is_empty() => format!("{first}***@{domain}"),
        _ => format!("{first}***"),
    }
}

/// Masks a value that belongs to a sensitive field (strings, and the strings inside arrays).
pub fn mask_value(value: &Value) -> Value {
    match value {
        Value::String(text) => Value::String(mask_text(text)),
        Value::Number(_) => Value::String("***".into()),
        Value::Array(items) => Value::Array(items.iter().map(mask_value).collect()),
        other => other.clone(),
    }
}

/// A copy of `value` in which every member named like a sensitive field is masked, at any depth.
pub fn mask_json(value: &Value) -> Value {
    match value {
        Value::Object(members) => Value::Object(
            members
                .iter()
                .map(|(key, member)| {
                    let masked = if is_sensitive(key) && !member.is_object() {
                        mask_value(member)
                    } else {
                        mask_json(member)
                    };
                    (key.clone(), masked)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(mask_json).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn masks_emails_and_names_and_leaves_the_rest() {
        assert_eq!(mask_text("jane.doe@example.com"), "j***@example.com");
        assert_eq!(mask_text("Lovelace"), "L***");
        assert_eq!(mask_text(""), "");
        let payload = json!({"remote": {"id": "12", "properties": {
            "email": "ada@example.com", "firstname": "Ada", "phone": null, "company": "Engines"
        }}});
        assert_eq!(
            mask_json(&payload),
            json!({"remote": {"id": "12", "properties": {
                "email": "a***@example.com", "firstname": "A***", "phone": null, "company": "Engines"
            }}})
        );
    }
}
