//! A municipal API's JSON items onto FHIR with the SQL adapter's mapping language: an item is
//! flattened into a row whose column names are its members' names, nested ones joined with `_`
//! (`{"naam": {"achternaam": "Wit"}}` gives `naam_achternaam`, array members their index:
//! `adressen_0_postcode`), and that row is mapped as a SQL row is ([`crate::sql::mapping`]), with
//! fhir-sdk's typed models. Searches become the API's own query parameters (`filters`).

use crate::namespace;
use crate::sql::config::Mapping;
use crate::sql::mapping::{Table, used_columns};
use crate::sql::source::ColumnKind;
use serde_json::Value;
use std::collections::BTreeMap;

/// A mapping as a table whose columns are the JSON members it names.
pub fn table(mapping: &Mapping) -> Result<Table, String> {
    let described: Vec<(String, ColumnKind)> = used_columns(mapping)
        .into_iter()
        .map(|c| (c, ColumnKind::Text))
        .collect();
    Table::resolve(mapping.clone(), &described)
}

/// An item's members as text, nested names joined with `_`.
pub fn flatten(item: &Value) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
        let key = |k: &str| {
            if prefix.is_empty() {
                k.to_owned()
            } else {
                format!("{prefix}_{k}")
            }
        };
        match v {
            Value::Object(m) => m.iter().for_each(|(k, v)| walk(&key(k), v, out)),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .for_each(|(i, v)| walk(&key(&i.to_string()), v, out)),
            Value::Null => {}
            Value::String(s) => {
                out.insert(prefix.to_owned(), s.clone());
            }
            other => {
                out.insert(prefix.to_owned(), other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", item, &mut out);
    out
}

/// One row of values in the table's column order.
pub fn row_values(table: &Table, item: &Value) -> Vec<Option<String>> {
    let flat = flatten(item);
    table.columns.iter().map(|c| flat.get(c).cloned()).collect()
}

/// The API query of a FHIR search: each parameter through `filters`; `Ok(None)` when it can
/// match nothing here (a patient of another backend); `Err(param)` for a parameter, modifier or
/// OR-list the API cannot take.
pub fn query(
    mapping: &Mapping,
    adapter: &str,
    params: &[(String, String)],
) -> Result<Option<Vec<(String, String)>>, String> {
    let mut out = Vec::new();
    for (key, value) in params {
        if key == "_count" {
            continue;
        }
        if key.contains(':') || value.contains(',') {
            return Err(key.clone());
        }
        let Some(api) = mapping.filters.get(key.as_str()) else {
            return Err(key.clone());
        };
        let v = match key.as_str() {
            "_id" | "patient" | "subject" => {
                let v = value.rsplit('/').next().unwrap_or(value);
                match namespace::inward(adapter, v) {
                    Some(b) => b.to_owned(),
                    None => return Ok(None),
                }
            }
            _ => match value.split_once('|') {
                // A token: the code (the API knows one system per parameter).
                Some((_, code)) => code.to_owned(),
                None => value.clone(),
            },
        };
        out.push((api.clone(), v));
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn items_flatten_into_columns() {
        let f = flatten(
            &json!({"id": 7, "naam": {"achternaam": "Wit", "voorvoegsel": "de"},
            "adressen": [{"postcode": "3511AB"}], "actief": true, "leeg": null}),
        );
        assert_eq!(f["id"], "7");
        assert_eq!(f["naam_achternaam"], "Wit");
        assert_eq!(f["adressen_0_postcode"], "3511AB");
        assert_eq!(f["actief"], "true");
        assert!(!f.contains_key("leeg"));
    }
}
