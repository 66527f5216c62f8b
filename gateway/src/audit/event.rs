//! The JSON of one `AuditEvent`, serialized straight from the request's fields.
//!
//! Why structs and not a `serde_json::Value`: every request writes one event, and building it as
//! a tree (a map per object, an owned `String` per key and value) and then serializing the tree
//! took ~19 % of the gateway's CPU under point reads (perf, `wrk -c32`), more than reading the
//! resource. These structs borrow what the request already holds and write the same bytes, keys
//! in the same order, without the tree. The order matters beyond looks: the stored body is
//! compressed against a dictionary of that text (`store::audit_codec`).

use serde::Serialize;

const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";

/// The event, its keys in the order they are written.
#[derive(Serialize)]
pub(super) struct Event<'a> {
    #[serde(rename = "resourceType")]
    pub resource_type: &'static str,
    pub id: &'a str,
    pub meta: Meta<'a>,
    #[serde(rename = "type")]
    pub ty: Coding<'a>,
    pub subtype: Vec<Coding<'a>>,
    pub action: &'a str,
    pub recorded: &'a str,
    pub outcome: &'a str,
    #[serde(rename = "outcomeDesc")]
    pub outcome_desc: String,
    pub agent: Vec<Agent<'a>>,
    pub source: Source,
    #[serde(rename = "purposeOfEvent", skip_serializing_if = "Option::is_none")]
    pub purpose_of_event: Option<[Concept<'a>; 1]>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub entity: Vec<Entity<'a>>,
}

#[derive(Serialize)]
pub(super) struct Meta<'a> {
    #[serde(rename = "versionId")]
    pub version_id: &'static str,
    #[serde(rename = "lastUpdated")]
    pub last_updated: &'a str,
}

#[derive(Serialize)]
pub(super) struct Coding<'a> {
    pub system: &'a str,
    pub code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display: Option<&'a str>,
}

impl<'a> Coding<'a> {
    pub const fn of(system: &'a str, code: &'a str, display: &'a str) -> Coding<'a> {
        Coding {
            system,
            code,
            display: Some(display),
        }
    }
}

#[derive(Serialize)]
pub(super) struct Concept<'a> {
    pub coding: [Coding<'a>; 1],
}

#[derive(Serialize)]
pub(super) struct Identifier<'a> {
    pub system: &'a str,
    pub value: &'a str,
}

#[derive(Serialize)]
pub(super) struct Who<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identifier: Option<Identifier<'a>>,
    pub display: &'a str,
}

#[derive(Serialize)]
pub(super) struct Network<'a> {
    pub address: &'a str,
    #[serde(rename = "type")]
    pub ty: &'static str,
}

#[derive(Serialize)]
pub(super) struct Agent<'a> {
    #[serde(rename = "type")]
    pub ty: Concept<'a>,
    pub who: Who<'a>,
    pub requestor: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<Network<'a>>,
}

impl<'a> Agent<'a> {
    /// Who made the request, from where.
    pub fn recipient(who: Who<'a>, address: &'a str) -> Agent<'a> {
        Agent {
            ty: Concept {
                coding: [Coding::of(
                    "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                    "IRCP",
                    "information recipient",
                )],
            },
            who,
            requestor: true,
            network: Some(Network { address, ty: "2" }),
        }
    }

    /// The organisation the user acted for (NEN 7513: the responsible party).
    pub fn organisation(who: Who<'a>) -> Agent<'a> {
        Agent {
            ty: Concept {
                coding: [Coding::of(
                    "http://dicom.nema.org/resources/ontology/DCM",
                    "110150",
                    "Application",
                )],
            },
            who,
            requestor: false,
            network: None,
        }
    }
}

/// The observer: this gateway, the same in every event.
#[derive(Serialize)]
pub(super) struct Source {
    observer: Display,
    #[serde(rename = "type")]
    ty: [Coding<'static>; 1],
}

#[derive(Serialize)]
struct Display {
    display: &'static str,
}

pub(super) const SOURCE: Source = Source {
    observer: Display {
        display: "Health Hub Utrecht regional FHIR gateway",
    },
    ty: [Coding::of(
        "http://terminology.hl7.org/CodeSystem/security-source-type",
        "4",
        "Application Server",
    )],
};

#[derive(Serialize)]
pub(super) struct Reference<'a> {
    pub reference: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identifier: Option<Identifier<'a>>,
}

#[derive(Serialize)]
pub(super) struct Entity<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub what: Option<Reference<'a>>,
    #[serde(rename = "type")]
    pub ty: Coding<'static>,
    pub role: Coding<'static>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

impl<'a> Entity<'a> {
    /// The patient the access concerned, with the BSN when it is known.
    pub fn patient(reference: &'a str, bsn: Option<&'a str>) -> Entity<'a> {
        Entity {
            what: Some(Reference {
                reference,
                identifier: bsn.map(|value| Identifier {
                    system: crate::policy::privacy::BSN_SYSTEM,
                    value,
                }),
            }),
            ty: Coding::of(ENTITY_TYPE, "1", "Person"),
            role: Coding::of(OBJECT_ROLE, "1", "Patient"),
            query: None,
        }
    }

    /// A resource the answer carried or the request wrote.
    pub fn data(reference: &'a str) -> Entity<'a> {
        Entity {
            what: Some(Reference {
                reference,
                identifier: None,
            }),
            ty: Coding::of(ENTITY_TYPE, "2", "System Object"),
            role: Coding::of(OBJECT_ROLE, "4", "Domain Resource"),
            query: None,
        }
    }

    /// A search's query, base64 as BALP has it.
    pub fn query(query: &str) -> Entity<'a> {
        use base64::Engine;
        Entity {
            what: None,
            ty: Coding::of(ENTITY_TYPE, "2", "System Object"),
            role: Coding::of(OBJECT_ROLE, "24", "Query"),
            query: Some(base64::engine::general_purpose::STANDARD.encode(query.as_bytes())),
        }
    }
}
