//! Dutch names and addresses as the nl-core profiles carry them, built with fhir-sdk's typed
//! models, shared by the adapters whose backends keep them in parts (a SQL client record, an
//! iWmo message): the family name with its voorvoegsel kept apart in extensions, and the street,
//! house number and suffix of an address line in the ISO 21090 ADXP extensions.

use fhir_sdk::r4b::codes::NameUse;
use fhir_sdk::r4b::types::{Address, Extension, ExtensionValue, FieldExtension, HumanName};

pub const OWN_PREFIX: &str = "http://hl7.org/fhir/StructureDefinition/humanname-own-prefix";
pub const OWN_NAME: &str = "http://hl7.org/fhir/StructureDefinition/humanname-own-name";
pub const STREET: &str = "http://hl7.org/fhir/StructureDefinition/iso21090-ADXP-streetName";
pub const HOUSE_NUMBER: &str = "http://hl7.org/fhir/StructureDefinition/iso21090-ADXP-houseNumber";
pub const NUMBER_SUFFIX: &str =
    "http://hl7.org/fhir/StructureDefinition/iso21090-ADXP-buildingNumberSuffix";

/// A person's name in parts, as Dutch systems keep it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameParts {
    pub family: Option<String>,
    /// Voorvoegsel: "van", "de", "van der".
    pub prefix: Option<String>,
    /// Given names (roepnaam or voornamen), in order.
    pub given: Vec<String>,
    /// Initials without the given names ("J.A.").
    pub initials: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressParts {
    pub street: Option<String>,
    pub house_number: Option<String>,
    pub suffix: Option<String>,
    pub postal_code: Option<String>,
    pub city: Option<String>,
    /// ISO 3166 code or name; Dutch addresses leave it out or say NL.
    pub country: Option<String>,
}

fn string_extension(url: &str, value: &str) -> Option<Extension> {
    Extension::builder()
        .url(url.to_owned())
        .value(ExtensionValue::String(value.to_owned()))
        .build()
        .ok()
}

/// The official name: `family` is the whole family name ("van der Berg"), its parts in the
/// own-prefix and own-name extensions; given names, or initials when there are none.
pub fn human_name(parts: &NameParts) -> Option<HumanName> {
    let family_whole = match (&parts.prefix, &parts.family) {
        (Some(p), Some(f)) => Some(format!("{p} {f}")),
        (None, Some(f)) => Some(f.clone()),
        _ => None,
    };
    let given: Vec<String> = if parts.given.is_empty() {
        parts.initials.iter().cloned().collect()
    } else {
        parts.given.clone()
    };
    if family_whole.is_none() && given.is_empty() {
        return None;
    }
    let text = given
        .iter()
        .cloned()
        .chain(family_whole.clone())
        .collect::<Vec<_>>()
        .join(" ");
    let mut b = HumanName::builder()
        .r#use(NameUse::Official)
        .text(text)
        .given(given.into_iter().map(Some).collect());
    if let Some(f) = family_whole {
        b = b.family(f);
        let ext: Vec<Extension> = [
            parts
                .prefix
                .as_deref()
                .and_then(|p| string_extension(OWN_PREFIX, p)),
            parts
                .family
                .as_deref()
                .and_then(|f| string_extension(OWN_NAME, f)),
        ]
        .into_iter()
        .flatten()
        .collect();
        b = b.family_ext(FieldExtension {
            id: None,
            extension: ext,
        });
    }
    b.build().ok()
}

/// A postal address; the line "Straat 12a" with its parts in ADXP extensions.
pub fn address(parts: &AddressParts) -> Option<Address> {
    let number = match (&parts.house_number, &parts.suffix) {
        (Some(n), Some(s)) => Some(format!(
            "{n}{}{s}",
            if s.starts_with(char::is_numeric) {
                "-"
            } else {
                ""
            }
        )),
        (Some(n), None) => Some(n.clone()),
        _ => None,
    };
    let line = match (&parts.street, &number) {
        (Some(s), Some(n)) => Some(format!("{s} {n}")),
        (Some(s), None) => Some(s.clone()),
        (None, Some(n)) => Some(n.clone()),
        _ => None,
    };
    if line.is_none() && parts.postal_code.is_none() && parts.city.is_none() {
        return None;
    }
    let mut b = Address::builder();
    if let Some(l) = line {
        b = b.line(vec![Some(l)]);
        let ext: Vec<Extension> = [
            parts
                .street
                .as_deref()
                .and_then(|s| string_extension(STREET, s)),
            parts
                .house_number
                .as_deref()
                .and_then(|n| string_extension(HOUSE_NUMBER, n)),
            parts
                .suffix
                .as_deref()
                .and_then(|s| string_extension(NUMBER_SUFFIX, s)),
        ]
        .into_iter()
        .flatten()
        .collect();
        b = b.line_ext(vec![Some(FieldExtension {
            id: None,
            extension: ext,
        })]);
    }
    if let Some(p) = &parts.postal_code {
        // Dutch postcodes are written "1234 AB"; systems store "1234AB" as often.
        let p = p.replace(' ', "").to_uppercase();
        let p = if p.len() == 6 && p[..4].bytes().all(|b| b.is_ascii_digit()) {
            format!("{} {}", &p[..4], &p[4..])
        } else {
            p
        };
        b = b.postal_code(p);
    }
    if let Some(c) = &parts.city {
        b = b.city(c.clone());
    }
    if let Some(c) = &parts.country {
        b = b.country(c.clone());
    }
    b.build().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_dutch_name_keeps_its_prefix_apart() {
        let name = human_name(&NameParts {
            family: Some("Berg".into()),
            prefix: Some("van der".into()),
            given: vec!["Johanna".into(), "Maria".into()],
            initials: None,
        })
        .unwrap();
        let v = serde_json::to_value(&name).unwrap();
        assert_eq!(v["family"], "van der Berg");
        assert_eq!(v["given"], json!(["Johanna", "Maria"]));
        assert_eq!(v["text"], "Johanna Maria van der Berg");
        assert_eq!(v["_family"]["extension"][0]["url"], OWN_PREFIX);
        assert_eq!(v["_family"]["extension"][0]["valueString"], "van der");
        assert_eq!(v["_family"]["extension"][1]["valueString"], "Berg");
    }

    #[test]
    fn an_address_line_carries_its_parts() {
        let a = address(&AddressParts {
            street: Some("Oudegracht".into()),
            house_number: Some("12".into()),
            suffix: Some("bis".into()),
            postal_code: Some("3511ab".into()),
            city: Some("Utrecht".into()),
            country: None,
        })
        .unwrap();
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(v["line"], json!(["Oudegracht 12bis"]));
        assert_eq!(v["postalCode"], "3511 AB");
        assert_eq!(v["_line"][0]["extension"][1]["valueString"], "12");
        assert!(address(&AddressParts::default()).is_none());
    }
}
