//! A search request checked against HubSpot's limits and compiled against the schema.

use std::ops::Bound;

use serde::Deserialize;
use serde_json::Value;

use crate::sandbox::api::render::{id_text, requested_keys};
use crate::sandbox::error::ApiError;
use crate::sandbox::model::{ObjectKind, PropKey};
use crate::sandbox::schema::{Comparable, Computed, PropType, Schema};

pub const MAX_GROUPS: usize = 5;
pub const MAX_FILTERS_PER_GROUP: usize = 6;
pub const MAX_FILTERS: usize = 18;
pub const MAX_LIMIT: usize = 200;
/// No query returns more than this many results; paging past it is a 400.
pub const RESULT_CAP: usize = 10_000;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchBody {
    #[serde(default)]
    pub filter_groups: Vec<FilterGroupInput>,
    #[serde(default)]
    pub sorts: Vec<SortInput>,
    #[serde(default)]
    pub properties: Vec<String>,
    #[serde(default)]
    pub limit: Option<Value>,
    #[serde(default)]
    pub after: Option<Value>,
    #[serde(default)]
    pub query: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct FilterGroupInput {
    #[serde(default)]
    pub filters: Vec<FilterInput>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FilterInput {
    pub property_name: String,
    pub operator: String,
    #[serde(default)]
    pub value: Option<Value>,
    #[serde(default)]
    pub high_value: Option<Value>,
    #[serde(default)]
    pub values: Option<Vec<Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum SortInput {
    Spec {
        #[serde(rename = "propertyName")]
        property_name: String,
        #[serde(default)]
        direction: Option<String>,
    },
    /// `"createdate"` or `"-createdate"`.
    Name(String),
}

/// What a filter or sort looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Stored(PropKey, PropType),
    Id,
    Created,
    Modified,
}

impl Target {
    fn of(schema: &Schema, name: &str) -> Result<Target, ApiError> {
        let key = schema.key(name).ok_or_else(|| {
            ApiError::validation(format!(
                "There was a problem with the request: unable to find property {name}"
            ))
        })?;
        let def = schema.def(key).ok_or_else(ApiError::internal)?;
        Ok(match def.computed {
            Some(Computed::Id) => Target::Id,
            Some(Computed::Created) => Target::Created,
            Some(Computed::Modified) => Target::Modified,
            None => Target::Stored(key, def.ptype),
        })
    }

    pub fn ptype(self) -> PropType {
        match self {
            Target::Stored(_, t) => t,
            Target::Id => PropType::Number,
            Target::Created | Target::Modified => PropType::DateTime,
        }
    }
}

/// A `CONTAINS_TOKEN` operand: a word, or a pattern with `*`.
#[derive(Debug, Clone)]
pub struct Token(pub String);

#[derive(Debug, Clone)]
pub enum Op {
    Eq(Comparable),
    Neq(Comparable),
    Lt(Comparable),
    Lte(Comparable),
    Gt(Comparable),
    Gte(Comparable),
    Between(Comparable, Comparable),
    In(Vec<Comparable>),
    NotIn(Vec<Comparable>),
    Has,
    NotHas,
    ContainsToken(Token),
    NotContainsToken(Token),
}

#[derive(Debug, Clone)]
pub struct Filter {
    pub target: Target,
    pub op: Op,
}

#[derive(Debug, Clone, Copy)]
pub struct Sort {
    pub target: Target,
    pub descending: bool,
}

#[derive(Debug, Clone)]
pub struct Query {
    pub groups: Vec<Vec<Filter>>,
    pub sort: Sort,
    pub keys: Vec<PropKey>,
    pub limit: usize,
    pub after: usize,
    /// Free text (`query`), lower-cased, matched against `text_keys`.
    pub text: Option<String>,
    pub text_keys: Vec<PropKey>,
    /// Bounds on last-modified implied by every filter group (lets the scan skip the rest).
    pub modified_range: (Bound<i64>, Bound<i64>),
}

fn operand(
    target: Target,
    value: Option<&Value>,
    field: &str,
    name: &str,
) -> Result<Comparable, ApiError> {
    let value =
        value.ok_or_else(|| ApiError::validation(format!("Filter on {name} needs a {field}")))?;
    let text = id_text(value);
    Comparable::parse(target.ptype(), &text)
        .ok_or_else(|| ApiError::validation(format!("{text:?} is not a valid value for {name}")))
}

fn number(value: Option<&Value>, name: &str) -> Result<Option<usize>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            let text = id_text(v);
            if text.is_empty() {
                return Ok(None);
            }
            text.parse::<usize>().map(Some).map_err(|_| {
                ApiError::validation(format!(
                    "{name} must be a non-negative integer, got {text:?}"
                ))
            })
        }
    }
}

/// The 400 for paging past the cap.
pub fn cap_error() -> ApiError {
    ApiError::validation(format!(
        "The search API returns at most {RESULT_CAP} results for one query. Narrow the filters (for example by last-modified date) and start a new query."
    ))
}

fn modified_bounds(group: &[Filter]) -> (Option<i64>, Option<i64>) {
    let ms = |c: &Comparable| match c {
        Comparable::Num(n) => Some(*n),
        Comparable::Text(_) => None,
    };
    let (mut lo, mut hi): (Option<i64>, Option<i64>) = (None, None);
    let mut raise = |v: Option<f64>| {
        if let Some(v) = v {
            let v = v.floor() as i64;
            lo = Some(lo.map_or(v, |l| l.max(v)));
        }
    };
    let lower = |v: Option<f64>, hi: &mut Option<i64>| {
        if let Some(v) = v {
            let v = v.ceil() as i64;
            *hi = Some(hi.map_or(v, |h| h.min(v)));
        }
    };
    for filter in group.iter().filter(|f| f.target == Target::Modified) {
        match &filter.op {
            Op::Gt(v) | Op::Gte(v) => raise(ms(v)),
            Op::Lt(v) | Op::Lte(v) => lower(ms(v), &mut hi),
            Op::Eq(v) => {
                raise(ms(v));
                lower(ms(v), &mut hi);
            }
            Op::Between(a, b) => {
                raise(ms(a));
                lower(ms(b), &mut hi);
            }
            _ => {}
        }
    }
    (lo, hi)
}

impl Query {
    pub fn compile(schema: &Schema, kind: ObjectKind, body: SearchBody) -> Result<Query, ApiError> {
        if body.filter_groups.len() > MAX_GROUPS {
            return Err(ApiError::validation(format!(
                "Too many filter groups: at most {MAX_GROUPS} are allowed"
            )));
        }
        let total: usize = body.filter_groups.iter().map(|g| g.filters.len()).sum();
        if body
            .filter_groups
            .iter()
            .any(|g| g.filters.len() > MAX_FILTERS_PER_GROUP)
            || total > MAX_FILTERS
        {
            return Err(ApiError::validation(format!(
                "Too many filters: at most {MAX_FILTERS_PER_GROUP} in a group and {MAX_FILTERS} in all"
            )));
        }
        if body.sorts.len() > 1 {
            return Err(ApiError::validation("At most one sort is allowed"));
        }
        let limit = number(body.limit.as_ref(), "limit")?.unwrap_or(10);
        if limit > MAX_LIMIT {
            return Err(ApiError::validation(format!(
                "limit must be at most {MAX_LIMIT}, got {limit}"
            )));
        }
        let after = number(body.after.as_ref(), "after")?.unwrap_or(0);
        if after >= RESULT_CAP {
            return Err(cap_error());
        }
        let mut groups = Vec::with_capacity(body.filter_groups.len());
        for group in &body.filter_groups {
            let mut filters = Vec::with_capacity(group.filters.len());
            for f in &group.filters {
                let name = f.property_name.as_str();
                let target = Target::of(schema, name)?;
                let list = |values: &Option<Vec<Value>>| -> Result<Vec<Comparable>, ApiError> {
                    let values = values.as_ref().ok_or_else(|| {
                        ApiError::validation(format!("Filter on {name} needs values"))
                    })?;
                    values
                        .iter()
                        .map(|v| operand(target, Some(v), "value", name))
                        .collect()
                };
                let token = |value: &Option<Value>| -> Result<Token, ApiError> {
                    let v = value.as_ref().ok_or_else(|| {
                        ApiError::validation(format!("Filter on {name} needs a value"))
                    })?;
                    Ok(Token(id_text(v).to_lowercase()))
                };
                let op = match f.operator.as_str() {
                    "EQ" => Op::Eq(operand(target, f.value.as_ref(), "value", name)?),
                    "NEQ" => Op::Neq(operand(target, f.value.as_ref(), "value", name)?),
                    "LT" => Op::Lt(operand(target, f.value.as_ref(), "value", name)?),
                    "LTE" => Op::Lte(operand(target, f.value.as_ref(), "value", name)?),
                    "GT" => Op::Gt(operand(target, f.value.as_ref(), "value", name)?),
                    "GTE" => Op::Gte(operand(target, f.value.as_ref(), "value", name)?),
                    "BETWEEN" => Op::Between(
                        operand(target, f.value.as_ref(), "value", name)?,
                        operand(target, f.high_value.as_ref(), "highValue", name)?,
                    ),
                    "IN" => Op::In(list(&f.values)?),
                    "NOT_IN" => Op::NotIn(list(&f.values)?),
                    "HAS_PROPERTY" => Op::Has,
                    "NOT_HAS_PROPERTY" => Op::NotHas,
                    "CONTAINS_TOKEN" => Op::ContainsToken(token(&f.value)?),
                    "NOT_CONTAINS_TOKEN" => Op::NotContainsToken(token(&f.value)?),
                    other => {
                        return Err(ApiError::validation(format!(
                            "Unknown filter operator {other:?}"
                        )));
                    }
                };
                filters.push(Filter { target, op });
            }
            groups.push(filters);
        }
        let sort = match body.sorts.first() {
            None => Sort {
                target: Target::Id,
                descending: false,
            },
            Some(SortInput::Spec {
                property_name,
                direction,
            }) => Sort {
                target: Target::of(schema, property_name)?,
                descending: direction
                    .as_deref()
                    .is_some_and(|d| d.eq_ignore_ascii_case("DESCENDING")),
            },
            Some(SortInput::Name(name)) => match name.strip_prefix('-') {
                Some(name) => Sort {
                    target: Target::of(schema, name)?,
                    descending: true,
                },
                None => Sort {
                    target: Target::of(schema, name)?,
                    descending: false,
                },
            },
        };
        let bounds: Vec<(Option<i64>, Option<i64>)> =
            groups.iter().map(|g| modified_bounds(g)).collect();
        let modified_range = if bounds.is_empty() {
            (Bound::Unbounded, Bound::Unbounded)
        } else {
            let lo = bounds
                .iter()
                .map(|b| b.0)
                .collect::<Option<Vec<i64>>>()
                .and_then(|v| v.into_iter().min());
            let hi = bounds
                .iter()
                .map(|b| b.1)
                .collect::<Option<Vec<i64>>>()
                .and_then(|v| v.into_iter().max());
            (
                lo.map_or(Bound::Unbounded, Bound::Included),
                hi.map_or(Bound::Unbounded, Bound::Included),
            )
        };
        let text_names: &[&str] = match kind {
            ObjectKind::Contact => &["email", "firstname", "lastname", "phone", "company"],
            ObjectKind::Deal => &["dealname"],
            ObjectKind::Task => &["hs_task_subject", "hs_task_body"],
        };
        Ok(Query {
            groups,
            sort,
            keys: requested_keys(schema, &body.properties),
            limit: limit.min(RESULT_CAP - after),
            after,
            text: body
                .query
                .map(|q| q.trim().to_lowercase())
                .filter(|q| !q.is_empty()),
            text_keys: text_names.iter().filter_map(|n| schema.key(n)).collect(),
            modified_range,
        })
    }
}
