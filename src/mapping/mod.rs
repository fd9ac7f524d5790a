//! Field mapping between a CRM's records and Ferry's canonical ones (issue 6): the mapping
//! document tenants edit, the transforms its rules chain, the engine the sync applies, the
//! defaults a connection starts with, and validation for the editor.
//!
//! - [`Mapping`] (model): per connection and object kind, a list of [`Rule`]s (local field,
//!   remote properties, direction, a transform pipeline per direction, conflict policy) and named
//!   [`ValueMap`]s. Serde-serialisable, stored as JSON.
//! - [`Transform`]: typed steps; a failing step is a [`RuleError`] naming the record, rule,
//!   field and value, never a panic or a silent null.
//! - [`apply_inbound`] / [`apply_outbound`]: pure functions from records to field changes or
//!   remote properties, honouring each rule's direction and [`ConflictPolicy`].
//! - [`defaults::hubspot`]: what a new HubSpot connection starts with.
//! - [`validate()`]: checks a mapping against Ferry's field table and the CRM's properties.

pub mod conflict;
pub mod defaults;
pub mod engine;
pub mod error;
pub mod model;
pub mod preview;
pub mod record;
pub mod transform;
pub mod validate;
pub mod value;
pub mod versions;

pub use engine::{FieldChange, Inbound, Outbound, apply_inbound, apply_outbound};
pub use error::{RuleError, TransformError, ValidationError};
pub use model::{
    ConflictPolicy, Direction, Flow, LocalField, Mapping, Rule, Settings, Unmapped, ValueMap,
    ValuePair,
};
pub use record::{LocalChange, LocalRecord, RemoteRecord};
pub use transform::{DateFormat, NumberLocale, SplitPart, Transform};
pub use validate::{RemoteProperty, validate};
pub use value::Value;
