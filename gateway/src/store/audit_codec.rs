//! How an audit record is kept on disk, and what its hash chain seals. Three forms, told apart
//! by the first byte:
//!
//! - **Facts** (tag 2, written now): the values of the access (`audit::Facts`) as compact JSON.
//!   The chain seals these stored bytes; the `AuditEvent` JSON is rendered from them when the log
//!   is read. Writing them costs no rendering, compression or hashing of the ~2 KB event on the
//!   request path.
//! - **Compressed event** (tag 1, written before): the `AuditEvent` JSON compressed with zstd
//!   against a fixed dictionary of the text every event repeats. The chain seals the JSON.
//! - **Plain event** (starts with `{`, written before that): the JSON itself, sealed as it is.
//!
//! Records of every form stay readable and verifiable: a log holds them side by side.

use bytes::Bytes;
use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::OnceLock;

/// The tag of a body compressed against [`DICTIONARY_V1`]. A future dictionary gets a new tag;
/// this one can never change, or the bodies written with it could not be read back.
const TAG_V1: u8 = 1;
/// The tag of an access's facts (`audit::Facts`) as JSON.
const TAG_FACTS: u8 = 2;

/// zstd level: 1. Level -1 (literals left uncoded, half the compression's CPU in perf) measured
/// no faster under point reads (3 alternating rounds) and stores ~17 % more.
const LEVEL: i32 = 1;

/// The largest body unpacking will produce (a search event lists every entity it returned).
const MAX_BODY: usize = 64 << 20;

/// Raw-content dictionary, frozen: the JSON that `audit::build` writes around the values that
/// change from event to event, the most frequent text last (zstd reaches it with short offsets).
const DICTIONARY_V1: &[u8] = br#"{"system":"urn:healthhub-utrecht:audit","code":"break-the-glass","display":" (released resource(s) consent withheld)"}"purposeOfEvent":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ActReason","code":"ETREAT"}]}],{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"110113","display":"Security Alert"}{"who":{"display":"anonymous"},{"type":{"system":"http://terminology.hl7.org/CodeSystem/audit-entity-type","code":"2","display":"System Object"},"role":{"system":"http://terminology.hl7.org/CodeSystem/object-role","code":"24","display":"Query"},"query":"search-typesearch-systemhistory-instancevreadcreateupdatedeletepatchoperationbatchtransactionObservation?patient=Patient/&category=laboratoryHTTP 201HTTP 403HTTP 404HTTP 401","outcome":"4","outcome":"8","action":"C","action":"U","action":"D","action":"E"{"what":{"reference":"Observation/DiagnosticReport/Encounter/"},"type":{"system":"http://terminology.hl7.org/CodeSystem/audit-entity-type","code":"2","display":"System Object"},"role":{"system":"http://terminology.hl7.org/CodeSystem/object-role","code":"4","display":"Domain Resource"}}{"resourceType":"AuditEvent","id":"01a20f91-dee3-72ac-b5a4-d5476dae41d5","meta":{"versionId":"1","lastUpdated":"2026-11-24T21:59:07.747Z"},"type":{"system":"http://terminology.hl7.org/CodeSystem/audit-event-type","code":"rest","display":"RESTful Operation"},"subtype":[{"system":"http://hl7.org/fhir/restful-interaction","code":"read"}],"action":"R","recorded":"2026-11-24T21:59:07.747Z","outcome":"0","outcomeDesc":"HTTP 200","agent":[{"type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ParticipationType","code":"IRCP","display":"information recipient"}]},"who":{"identifier":{"system":"https://demo.healthhub-utrecht.nl/issuer/umcu","value":"demo-user@umcu"},"display":"demo-user@umcu"},"requestor":true,"network":{"address":"127.0.0.1","type":"2"}},{"type":{"coding":[{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"110150","display":"Application"}]},"who":{"identifier":{"system":"http://fhir.nl/fhir/NamingSystem/ura","value":"90000001"},"display":"UMC Utrecht (demo)"},"requestor":false}],"source":{"observer":{"display":"Health Hub Utrecht regional FHIR gateway"},"type":[{"system":"http://terminology.hl7.org/CodeSystem/security-source-type","code":"4","display":"Application Server"}]},"entity":[{"what":{"reference":"Patient/01a20f91-a74e-77b7-8e1f-3326aced4354","identifier":{"system":"http://fhir.nl/fhir/NamingSystem/bsn","value":"000000013"}},"type":{"system":"http://terminology.hl7.org/CodeSystem/audit-entity-type","code":"1","display":"Person"},"role":{"system":"http://terminology.hl7.org/CodeSystem/object-role","code":"1","display":"Patient"}},{"what":{"reference":"Patient/01a20f91-a74e-77b7-8e1f-3326aced4354/_history/1"},"type":{"system":"http://terminology.hl7.org/CodeSystem/audit-entity-type","code":"2","display":"System Object"},"role":{"system":"http://terminology.hl7.org/CodeSystem/object-role","code":"4","display":"Domain Resource"}}]}"#;

fn encoder_dictionary() -> &'static zstd::dict::EncoderDictionary<'static> {
    static D: OnceLock<zstd::dict::EncoderDictionary<'static>> = OnceLock::new();
    D.get_or_init(|| zstd::dict::EncoderDictionary::copy(DICTIONARY_V1, LEVEL))
}

fn decoder_dictionary() -> &'static zstd::dict::DecoderDictionary<'static> {
    static D: OnceLock<zstd::dict::DecoderDictionary<'static>> = OnceLock::new();
    D.get_or_init(|| zstd::dict::DecoderDictionary::copy(DICTIONARY_V1))
}

thread_local! {
    // One context per thread and direction: making one per event costs as much as compressing
    // it (and `audit verify` unpacks every record of the log).
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// An access's facts as stored: the tag, then their JSON.
pub fn pack_facts(facts: &crate::audit::Facts) -> Bytes {
    let mut out = Vec::with_capacity(384);
    out.push(TAG_FACTS);
    serde_json::to_writer(&mut out, facts).expect("audit facts serialize");
    Bytes::from(out)
}

/// What the hash chain seals: the stored bytes of facts, the JSON of an event; `None` if a
/// compressed event cannot be read.
pub fn sealed(stored: &[u8]) -> Option<Cow<'_, [u8]>> {
    match stored.first() {
        Some(&TAG_FACTS) => Some(Cow::Borrowed(stored)),
        _ => unpack_event(stored).map(|b| Cow::Owned(b.to_vec())),
    }
}

/// The `AuditEvent` JSON of a stored record, or `None` if it cannot be read.
pub fn unpack(stored: &[u8]) -> Option<Bytes> {
    match stored.split_first() {
        Some((&TAG_FACTS, facts)) => {
            let facts: crate::audit::Facts = serde_json::from_slice(facts).ok()?;
            Some(Bytes::from(crate::audit::render(&facts)))
        }
        _ => unpack_event(stored),
    }
}

/// An event compressed as records were before facts: tag and zstd frame; the JSON itself if
/// compression fails. Only tests write these now, to check that such records still read and
/// verify.
pub fn pack(json: &[u8]) -> Bytes {
    let frame = COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = zstd::bulk::Compressor::with_prepared_dictionary(encoder_dictionary()).ok();
        }
        c.as_mut()?.compress(json).ok()
    });
    match frame {
        Some(frame) => {
            let mut out = Vec::with_capacity(frame.len() + 1);
            out.push(TAG_V1);
            out.extend_from_slice(&frame);
            Bytes::from(out)
        }
        None => Bytes::copy_from_slice(json),
    }
}

/// The JSON of a stored event (compressed or plain), or `None` if it cannot be read (then
/// `audit verify` reports the record as broken: its hash will not match).
fn unpack_event(stored: &[u8]) -> Option<Bytes> {
    match stored.split_first() {
        Some((&TAG_V1, frame)) => {
            let size = zstd::bulk::Decompressor::upper_bound(frame)?;
            if size > MAX_BODY {
                return None;
            }
            DECOMPRESSOR.with(|d| {
                let mut d = d.borrow_mut();
                if d.is_none() {
                    *d = zstd::bulk::Decompressor::with_prepared_dictionary(decoder_dictionary())
                        .ok();
                }
                d.as_mut()?.decompress(frame, size).ok().map(Bytes::from)
            })
        }
        Some((b'{', _)) => Some(Bytes::copy_from_slice(stored)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_back_unchanged_and_much_smaller() {
        let event = br#"{"resourceType":"AuditEvent","id":"01b3c0de-0000-7000-8000-000000000001","meta":{"versionId":"1","lastUpdated":"2026-11-25T08:00:00.001Z"},"type":{"system":"http://terminology.hl7.org/CodeSystem/audit-event-type","code":"rest","display":"RESTful Operation"},"subtype":[{"system":"http://hl7.org/fhir/restful-interaction","code":"read"}],"action":"R","recorded":"2026-11-25T08:00:00.001Z","outcome":"0","outcomeDesc":"HTTP 200","agent":[{"type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ParticipationType","code":"IRCP","display":"information recipient"}]},"who":{"identifier":{"system":"https://idp.antonius.nl","value":"dr-jansen"},"display":"Practitioner/77"},"requestor":true,"network":{"address":"10.1.2.3","type":"2"}}],"source":{"observer":{"display":"Health Hub Utrecht regional FHIR gateway"},"type":[{"system":"http://terminology.hl7.org/CodeSystem/security-source-type","code":"4","display":"Application Server"}]}}"#;
        let packed = pack(event);
        assert_eq!(packed[0], TAG_V1);
        assert!(
            packed.len() * 4 < event.len(),
            "{} bytes packed from {}",
            packed.len(),
            event.len()
        );
        assert_eq!(unpack(&packed).as_deref(), Some(&event[..]));
    }

    #[test]
    fn facts_are_sealed_as_stored_and_read_as_their_event() {
        let facts = crate::audit::Facts {
            id: "01b3c0de-0000-7000-8000-000000000002".into(),
            recorded: 1_764_000_000_123,
            interaction: "search-type".into(),
            action: "E".into(),
            status: 200,
            peer: "10.1.2.3".into(),
            who: None,
            patients: vec!["Patient/p1".into()],
            bsns: vec![("Patient/p1".into(), "999911120".into())],
            entities: vec![],
            query: Some("Patient?name=\"\u{e9}\\".into()),
            emergency: None,
            released: 0,
        };
        let stored = pack_facts(&facts);
        assert_eq!(stored[0], TAG_FACTS);
        assert_eq!(sealed(&stored).as_deref(), Some(&stored[..]));
        let back: crate::audit::Facts = serde_json::from_slice(&stored[1..]).unwrap();
        assert_eq!(back, facts);
        let event: serde_json::Value = serde_json::from_slice(&unpack(&stored).unwrap()).unwrap();
        assert_eq!(event["id"], "01b3c0de-0000-7000-8000-000000000002");
        assert_eq!(event["recorded"], "2025-11-24T16:00:00.123Z");
        assert_eq!(
            event["entity"][0]["what"]["identifier"]["value"],
            "999911120"
        );
        // Damaged facts do not read (and so do not verify).
        assert_eq!(unpack(&stored[..stored.len() - 1]), None);
    }

    #[test]
    fn events_are_sealed_as_their_json() {
        let json = br#"{"resourceType":"AuditEvent","id":"z"}"#;
        assert_eq!(sealed(json).as_deref(), Some(&json[..]));
        assert_eq!(sealed(&pack(json)).as_deref(), Some(&json[..]));
    }

    #[test]
    fn bodies_stored_as_plain_json_read_as_they_are() {
        let old = br#"{"resourceType":"AuditEvent","id":"x"}"#;
        assert_eq!(unpack(old).as_deref(), Some(&old[..]));
    }

    #[test]
    fn damaged_bodies_do_not_unpack() {
        let mut packed = pack(br#"{"resourceType":"AuditEvent","id":"y"}"#).to_vec();
        let last = packed.len() - 1;
        packed.truncate(last);
        assert_eq!(unpack(&packed), None);
        assert_eq!(unpack(&[9, 1, 2]), None);
        assert_eq!(unpack(&[]), None);
    }

    #[test]
    fn large_events_survive_the_round_trip() {
        // A search that returned 2,000 entities.
        let entities: Vec<String> = (0..2000)
            .map(|i| format!(r#"{{"what":{{"reference":"Observation/{i}/_history/1"}}}}"#))
            .collect();
        let event = format!(
            r#"{{"resourceType":"AuditEvent","entity":[{}]}}"#,
            entities.join(",")
        );
        assert_eq!(
            unpack(&pack(event.as_bytes())).as_deref(),
            Some(event.as_bytes())
        );
    }
}
