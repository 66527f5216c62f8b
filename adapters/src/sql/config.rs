//! The `kind = "sql"` config section and its `mappings` (checked against
//! `schemas/adapter.schema.json` and `schemas/mapping.schema.json` before they are read here, so
//! the defaults below are the schemas').

use crate::Organization;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub name: String,
    pub organization: Organization,
    pub url: String,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default = "pool_size")]
    pub pool_size: u32,
    #[serde(default = "statement_timeout_ms")]
    pub statement_timeout_ms: u64,
    #[serde(default = "acquire_timeout_ms")]
    pub acquire_timeout_ms: u64,
    #[serde(default = "yes")]
    pub read_only: bool,
    #[serde(default = "max_page")]
    pub max_page: u32,
    pub mappings: Vec<Mapping>,
}

/// One resource type: where its rows come from, its id column, and its fields.
#[derive(Debug, Clone, Deserialize)]
pub struct Mapping {
    pub resource: String,
    #[serde(default)]
    pub table: Option<String>,
    #[serde(default)]
    pub query: Option<String>,
    /// REST adapter: the list endpoint, where items are, the next page, the API's filters.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default = "data")]
    pub items: String,
    #[serde(default = "next")]
    pub next: String,
    #[serde(default)]
    pub filters: BTreeMap<String, String>,
    pub id: String,
    pub fields: Fields,
}

/// Every field any resource type knows; the mapping schema says which a type may use.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Fields {
    pub bsn: Option<String>,
    #[serde(default)]
    pub identifiers: Vec<IdentifierColumn>,
    pub name: Option<NameColumns>,
    pub birth_date: Option<String>,
    pub gender: Option<Code>,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub address: Option<AddressColumns>,
    pub patient: Option<String>,
    pub status: Option<Code>,
    pub category: Option<Coded>,
    pub code: Option<Coded>,
    #[serde(rename = "type")]
    pub kind: Option<Coded>,
    pub effective: Option<String>,
    pub value: Option<ValueColumns>,
    pub value_text: Option<String>,
    pub performer: Option<String>,
    pub note: Option<String>,
    pub start: Option<String>,
    pub end: Option<String>,
    pub title: Option<String>,
    pub description: Option<String>,
    pub manager: Option<String>,
    pub text: Option<String>,
    pub date: Option<String>,
    pub author: Option<String>,
    /// ServiceRequest: `wmo` or `jeugdwet`, which marks it social-domain data.
    pub social_domain: Option<String>,
    /// ServiceRequest: the column with the performing provider's AGB code.
    pub performer_agb: Option<String>,
    /// ServiceRequest: the allocated volume and its unit.
    pub quantity: Option<ValueColumns>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct IdentifierColumn {
    pub column: String,
    pub system: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct NameColumns {
    pub family: Option<String>,
    pub family_prefix: Option<String>,
    pub given: Option<String>,
    pub initials: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct AddressColumns {
    pub street: Option<String>,
    pub house_number: Option<String>,
    pub house_number_suffix: Option<String>,
    pub postal_code: Option<String>,
    pub city: Option<String>,
    pub country: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ValueColumns {
    pub column: String,
    pub unit: Option<String>,
    pub unit_column: Option<String>,
    #[serde(default = "yes")]
    pub ucum: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Coding {
    pub system: String,
    pub code: String,
    #[serde(default)]
    pub display: Option<String>,
}

/// A CodeableConcept: fixed, or a column's local codes through a code table.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Coded {
    Fixed {
        fixed: Coding,
    },
    Column {
        column: String,
        map: BTreeMap<String, Coding>,
        #[serde(default)]
        local_system: Option<String>,
    },
}

/// A FHIR code: fixed, or a column's values through a table.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Code {
    Fixed {
        fixed: String,
    },
    Column {
        column: String,
        map: BTreeMap<String, String>,
    },
}

fn data() -> String {
    "data".into()
}
fn next() -> String {
    "next".into()
}
fn pool_size() -> u32 {
    4
}
fn statement_timeout_ms() -> u64 {
    5000
}
fn acquire_timeout_ms() -> u64 {
    2000
}
fn max_page() -> u32 {
    100
}
fn yes() -> bool {
    true
}
