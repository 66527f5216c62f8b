//! HL7 v2 messages onto FHIR R4, after the HL7 v2-to-FHIR implementation guide's segment maps
//! (MSH, PID, PV1, OBR, OBX), with the Dutch habits of `../shared/nl/README.md`: a PID-3
//! repetition with assigning authority `NLMINBIZA` (type `NNNLD`) is a BSN, checked with the
//! 11-proof; other identifiers belong to the sending organisation.
//!
//! A message becomes one FHIR transaction, so that it is applied whole or not at all:
//! - a receipt (`Basic`, id from the sender and MSH-10) created with `If-None-Match: *`, so a
//!   resent message fails as a whole and is recognised as applied already;
//! - the Patient as a conditional update on the sender's own patient number (PID-3, not the BSN:
//!   every organisation keeps its own record of a person, linked by BSN at the gateway). An
//!   ORU only creates the Patient when it is unknown: results do not overwrite demographics;
//! - the Encounter (ADT with PV1) as a conditional update on the visit number (PV1-19);
//! - per OBR a DiagnosticReport and per OBX an Observation, conditional updates on the filler
//!   order number, so a corrected result (OBX-11 `C`) updates the same Observation.
//!
//! Resources are built as JSON; the gateway validates each against the R4 schema like any
//! client's write.

use super::config::Config;
use crate::Organization;
use crate::er7::{Charset, Message, Repeat};
use serde_json::{Map, Value, json};

pub const BSN_SYSTEM: &str = "http://fhir.nl/fhir/NamingSystem/bsn";
const V2_0203: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";
/// Where identifiers the gateway derives from a sender's numbers live (`{base}/{sender}/...`).
pub const NAMING_BASE: &str = "https://healthhub-utrecht.nl/fhir/NamingSystem/v2";
const UCUM: &str = "http://unitsofmeasure.org";

/// A message the gateway will apply.
#[derive(Debug, Clone)]
pub struct Mapped {
    /// The organisation that holds the data (from MSH-4).
    pub holder: Organization,
    /// MSH-4 as sent.
    pub facility: String,
    /// MSH-10.
    pub control_id: String,
    /// `ADT^A01` and the like.
    pub event: String,
    /// The id of the receipt (`Basic`) the transaction creates.
    pub receipt: String,
    /// SHA-256 of the message as received (hex), kept on the receipt: a control id reused for
    /// a different message is refused, never mistaken for a resend.
    pub digest: String,
    /// The FHIR transaction.
    pub bundle: Value,
    /// A40: the retired record, for the gateway to find among the sender's Patients and retire
    /// within the same transaction (it needs the store to know which one it is).
    pub merge: Option<Merge>,
}

/// An A40 merge: the surviving Patient is in the bundle (its entry's `fullUrl`), the retired
/// one is named by MRG-1.
#[derive(Debug, Clone)]
pub struct Merge {
    /// MRG-1 as a FHIR identifier (system and value).
    pub retired: Value,
    /// The surviving Patient's `fullUrl` in the bundle.
    pub survivor: String,
}

/// The receipt's extension holding the message digest.
pub const DIGEST_EXTENSION: &str =
    "https://healthhub-utrecht.nl/fhir/StructureDefinition/hl7v2-message-digest";

impl Mapped {
    /// Records the digest of the message's bytes (on the receipt too).
    pub fn with_digest(mut self, raw: &[u8]) -> Mapped {
        use sha2::Digest;
        self.digest = sha2::Sha256::digest(raw)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if let Some(receipt) = self.bundle["entry"][0]["resource"].as_object_mut() {
            receipt.insert(
                "extension".into(),
                json!([{"url": DIGEST_EXTENSION, "valueString": self.digest}]),
            );
        }
        self
    }
}

/// The holder tag of a sender's data, as a `_tag` search value: conditional writes keyed by a
/// BSN must only ever match the sender's own record of the person, never another
/// organisation's.
pub const HOLDER_TAG: &str = "https://healthhub-utrecht.nl/fhir/CodeSystem/holder";

fn holder_filter(holder: &Organization) -> String {
    format!("&_tag={HOLDER_TAG}|{}|{}", holder.system, holder.value)
}

/// Why a message is not applied: `Unsupported` is answered AR (type, version, sender, message
/// header), `Invalid` AE (the content cannot be applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Unsupported(String),
    Invalid(String),
}

type Mapping<T> = Result<T, Refusal>;

fn invalid<T>(msg: impl Into<String>) -> Mapping<T> {
    Err(Refusal::Invalid(msg.into()))
}

/// The configured default character set.
pub fn default_charset(config: &Config) -> Charset {
    Charset::named(&config.default_charset, Charset::Latin1).unwrap_or(Charset::Latin1)
}

/// The message as a FHIR transaction, or why not.
pub fn map(m: &Message, config: &Config) -> Mapping<Mapped> {
    let msh = m
        .segment("MSH")
        .ok_or(Refusal::Unsupported("no MSH".into()))?;
    let kind = m.get(msh, 9).first();
    let (ty, trigger) = (kind.text(1), kind.text(2));
    let version = m.value("MSH", 12);
    if ![
        "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8",
    ]
    .contains(&version.as_str())
    {
        return Err(Refusal::Unsupported(format!(
            "version {version:?} (MSH-12) is not supported"
        )));
    }
    let facility = m.get(msh, 4).first().text(1);
    let Some(holder) = config.senders.get(&facility) else {
        return Err(Refusal::Unsupported(format!(
            "sending facility {facility:?} (MSH-4) is not known to this gateway"
        )));
    };
    let control_id = m.value("MSH", 10);
    if control_id.is_empty() || control_id.len() > 199 {
        return Err(Refusal::Unsupported(
            "MSH-10 (message control id) is missing or too long".into(),
        ));
    }
    let event = format!("{ty}^{trigger}");
    let ctx = Context {
        m,
        sender: naming_segment(&facility),
        holder,
    };
    let mut entries = Vec::new();
    let mut merge = None;
    match (ty.as_str(), trigger.as_str()) {
        ("ADT", "A01" | "A04" | "A08" | "A03" | "A28" | "A31" | "A05") => {
            let patient = ctx.patient()?;
            let with_encounter = matches!(trigger.as_str(), "A01" | "A04" | "A08" | "A03");
            entries.push(patient.update_entry());
            if with_encounter && let Some(pv1) = m.segment("PV1") {
                entries.push(ctx.encounter(pv1, &trigger, &patient.full_url)?);
            } else if trigger == "A03" {
                return invalid("A03 (discharge) without PV1 names no visit to finish");
            }
        }
        ("ADT", "A40") => {
            let mut patient = ctx.patient()?;
            let Some(mrg) = m.segment("MRG") else {
                return invalid("A40 without MRG names no record to merge");
            };
            let retired = ctx
                .identifier(&m.get(mrg, 1).first())?
                .ok_or(Refusal::Invalid(
                    "MRG-1 (the retired identifier) is empty".into(),
                ))?;
            // The survivor is the record with the new BSN (the retired one may share the
            // hospital's number): found by BSN among the sender's own records, or created.
            if let Some(bsn) = patient.resource["identifier"]
                .as_array()
                .and_then(|ids| ids.iter().find(|i| i["system"] == BSN_SYSTEM))
                .and_then(|i| i["value"].as_str())
            {
                patient.key = format!("{BSN_SYSTEM}|{bsn}{}", holder_filter(holder));
            }
            if patient.key.starts_with(&format!(
                "{}|{}",
                retired["system"].as_str().unwrap_or_default(),
                retired["value"].as_str().unwrap_or_default()
            )) {
                return invalid(
                    "A40: the surviving and the retired record are the same (PID-3 = MRG-1)",
                );
            }
            // Queries by the old identifier still find the person.
            let mut old = retired.clone();
            old["use"] = json!("old");
            if let Some(ids) = patient.resource["identifier"].as_array_mut() {
                ids.push(old);
            }
            merge = Some(Merge {
                retired,
                survivor: patient.full_url.clone(),
            });
            entries.push(patient.update_entry());
        }
        ("ORU", "R01") => {
            let patient = ctx.patient()?;
            entries.push(patient.create_if_unknown_entry());
            entries.extend(ctx.results(&patient.full_url)?);
        }
        _ => {
            return Err(Refusal::Unsupported(format!(
                "message type {event} is not supported"
            )));
        }
    }
    let receipt = receipt_id(&facility, &control_id);
    entries.insert(
        0,
        json!({
            "resource": {
                "resourceType": "Basic",
                "id": receipt,
                "identifier": [{"system": format!("{NAMING_BASE}/{}/message", ctx.sender), "value": control_id}],
                "code": {"coding": [{"system": "https://healthhub-utrecht.nl/fhir/CodeSystem/receipt", "code": "hl7v2-message", "display": event}]},
                "created": date_time(&m.value("MSH", 7)).map(|d| d.chars().take(10).collect::<String>()),
            },
            "request": {"method": "PUT", "url": format!("Basic/{receipt}"), "ifNoneMatch": "*"}
        }),
    );
    strip_nulls(&mut entries[0]["resource"]);
    Ok(Mapped {
        holder: holder.clone(),
        facility,
        control_id,
        event,
        receipt,
        digest: String::new(),
        bundle: json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}),
        merge,
    })
}

/// The receipt's id: readable when the sender and control id allow, a digest otherwise (ids are
/// at most 64 of `[A-Za-z0-9.-]`).
pub fn receipt_id(facility: &str, control_id: &str) -> String {
    let plain = format!("v2-{facility}-{control_id}");
    if plain.len() <= 64
        && plain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return plain;
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{facility}\u{0}{control_id}").as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("v2-{hex}")
}

/// A sender or authority name as a path segment of a naming system URL.
fn naming_segment(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

struct Context<'a> {
    m: &'a Message,
    sender: String,
    holder: &'a Organization,
}

/// The Patient of a message and how to find it again.
struct Patient {
    resource: Value,
    /// `system|value` of the sender's own patient number (or the BSN when there is none).
    key: String,
    full_url: String,
}

impl Patient {
    fn update_entry(&self) -> Value {
        json!({
            "fullUrl": self.full_url,
            "resource": self.resource,
            "request": {"method": "PUT", "url": format!("Patient?identifier={}", self.key)}
        })
    }

    fn create_if_unknown_entry(&self) -> Value {
        json!({
            "fullUrl": self.full_url,
            "resource": self.resource,
            "request": {"method": "POST", "url": "Patient", "ifNoneExist": format!("identifier={}", self.key)}
        })
    }
}

impl Context<'_> {
    /// One CX as a FHIR identifier: a BSN (checked) or a number of the sender's.
    fn identifier(&self, cx: &Repeat) -> Mapping<Option<Value>> {
        let value = cx.text(1);
        if value.is_empty() {
            return Ok(None);
        }
        let authority = cx.sub(4, 1);
        let ty = cx.text(5);
        if authority == "NLMINBIZA" || ty == "NNNLD" {
            if !eleven_proof(&value) {
                return invalid(format!(
                    "BSN {value:?} fails the 11-proof; the message is not applied"
                ));
            }
            return Ok(Some(json!({
                "use": "official",
                "type": {"coding": [{"system": V2_0203, "code": "NNNLD"}]},
                "system": BSN_SYSTEM,
                "value": value,
            })));
        }
        let auth = if authority.is_empty() {
            self.sender.clone()
        } else {
            naming_segment(&authority)
        };
        let code = if ty.is_empty() { "PI".into() } else { ty };
        let mut id = json!({
            "use": "usual",
            "type": {"coding": [{"system": V2_0203, "code": code}]},
            "system": format!("{NAMING_BASE}/{auth}/{}", code.to_ascii_lowercase()),
            "value": value,
        });
        if !authority.is_empty() {
            id["assigner"] = json!({"display": authority});
        }
        Ok(Some(id))
    }

    fn patient(&self) -> Mapping<Patient> {
        let m = self.m;
        let Some(pid) = m.segment("PID") else {
            return invalid("the message has no PID segment");
        };
        let mut identifiers = Vec::new();
        let mut bsn = None;
        let mut own = None;
        for cx in m.get(pid, 3).repeats() {
            let Some(id) = self.identifier(&cx)? else {
                continue;
            };
            let value = id["value"].as_str().unwrap_or_default().to_owned();
            if id["system"] == BSN_SYSTEM {
                bsn = Some(value);
            } else if own.is_none() {
                own = Some(format!(
                    "{}|{value}",
                    id["system"].as_str().unwrap_or_default()
                ));
            }
            identifiers.push(id);
        }
        let key = match (own, &bsn) {
            (Some(k), _) => k,
            (None, Some(b)) => format!("{BSN_SYSTEM}|{b}{}", holder_filter(self.holder)),
            (None, None) => return invalid("PID-3 has no patient identifier"),
        };
        let mut r = json!({"resourceType": "Patient", "identifier": identifiers});
        let names: Vec<Value> = m
            .get(pid, 5)
            .repeats()
            .iter()
            .filter(|x| !x.is_empty())
            .map(human_name)
            .collect();
        if !names.is_empty() {
            r["name"] = Value::Array(names);
        }
        if let Some(d) = date_time(&m.get(pid, 7).first().text(1)) {
            r["birthDate"] = Value::String(d.chars().take(10).collect());
        }
        let gender = match m.get(pid, 8).first().text(1).as_str() {
            "M" => Some("male"),
            "F" => Some("female"),
            "O" | "A" => Some("other"),
            "U" | "N" => Some("unknown"),
            _ => None,
        };
        if let Some(g) = gender {
            r["gender"] = json!(g);
        }
        let addresses: Vec<Value> = m
            .get(pid, 11)
            .repeats()
            .iter()
            .filter(|x| !x.is_empty())
            .map(address)
            .collect();
        if !addresses.is_empty() {
            r["address"] = Value::Array(addresses);
        }
        let telecom: Vec<Value> = [13, 14]
            .iter()
            .flat_map(|n| m.get(pid, *n).repeats())
            .filter_map(|x| contact_point(&x))
            .collect();
        if !telecom.is_empty() {
            r["telecom"] = Value::Array(telecom);
        }
        match m.get(pid, 30).first().text(1).as_str() {
            "Y" => match date_time(&m.get(pid, 29).first().text(1)) {
                Some(d) => r["deceasedDateTime"] = json!(d),
                None => r["deceasedBoolean"] = json!(true),
            },
            "N" => r["deceasedBoolean"] = json!(false),
            _ => {}
        }
        Ok(Patient {
            resource: r,
            full_url: format!("urn:uuid:{}", uuid::Uuid::new_v4()),
            key,
        })
    }

    fn encounter(&self, pv1: &crate::er7::Segment, trigger: &str, patient: &str) -> Mapping<Value> {
        let m = self.m;
        let class = match m.get(pv1, 2).first().text(1).as_str() {
            "I" => ("IMP", "inpatient encounter"),
            "E" => ("EMER", "emergency"),
            "P" => ("PRENC", "pre-admission"),
            _ => ("AMB", "ambulatory"),
        };
        let admit = date_time(&m.get(pv1, 44).first().text(1))
            .or_else(|| date_time(&m.value("EVN", 2)).filter(|_| trigger != "A03"));
        let discharge = date_time(&m.get(pv1, 45).first().text(1))
            .or_else(|| date_time(&m.value("EVN", 2)).filter(|_| trigger == "A03"));
        let status = match trigger {
            "A03" => "finished",
            "A04" => "arrived",
            _ if discharge.is_some() => "finished",
            _ => "in-progress",
        };
        let mut r = json!({
            "resourceType": "Encounter",
            "status": status,
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": class.0, "display": class.1},
            "subject": {"reference": patient},
        });
        let mut period = Map::new();
        if let Some(a) = admit {
            period.insert("start".into(), json!(a));
        }
        if let Some(d) = discharge {
            period.insert("end".into(), json!(d));
        }
        if !period.is_empty() {
            r["period"] = Value::Object(period);
        }
        let location = m.get(pv1, 3).first();
        if !location.is_empty() {
            let text = [1, 2, 3]
                .iter()
                .map(|c| location.text(*c))
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            r["location"] = json!([{"location": {"display": text}}]);
        }
        let attending = m.get(pv1, 7).first();
        if !attending.is_empty() {
            r["participant"] = json!([{
                "type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "ATND"}]}],
                "individual": {"display": person_name(&attending)},
            }]);
        }
        let visit = m.get(pv1, 19).first().text(1);
        let request = if visit.is_empty() {
            if trigger == "A03" {
                return invalid("A03 without a visit number (PV1-19) names no visit to finish");
            }
            json!({"method": "POST", "url": "Encounter"})
        } else {
            let system = format!("{NAMING_BASE}/{}/visit", self.sender);
            r["identifier"] = json!([{"use": "official", "system": system, "value": visit}]);
            json!({"method": "PUT", "url": format!("Encounter?identifier={system}|{visit}")})
        };
        Ok(json!({"resource": r, "request": request}))
    }

    /// ORU: per OBR a DiagnosticReport, per OBX below it an Observation.
    fn results(&self, patient: &str) -> Mapping<Vec<Value>> {
        let m = self.m;
        let mut out = Vec::new();
        let mut report: Option<(Value, Vec<Value>, String)> = None;
        let flush = |report: &mut Option<(Value, Vec<Value>, String)>, out: &mut Vec<Value>| {
            if let Some((mut dr, results, order)) = report.take() {
                if !results.is_empty() {
                    dr["result"] = Value::Array(results);
                }
                let system = format!("{NAMING_BASE}/{}/filler-order", self.sender);
                out.push(json!({
                    "resource": dr,
                    "request": {"method": "PUT", "url": format!("DiagnosticReport?identifier={system}|{order}")}
                }));
            }
        };
        let mut order = String::new();
        for seg in &m.segments {
            match seg.name.as_str() {
                "OBR" => {
                    flush(&mut report, &mut out);
                    let filler = m.get(seg, 3).first().text(1);
                    let placer = m.get(seg, 2).first().text(1);
                    order = if filler.is_empty() {
                        placer.clone()
                    } else {
                        filler.clone()
                    };
                    if order.is_empty() {
                        return invalid(
                            "OBR has neither a filler (OBR-3) nor a placer (OBR-2) order number",
                        );
                    }
                    let mut dr = json!({
                        "resourceType": "DiagnosticReport",
                        "identifier": [{"type": {"coding": [{"system": V2_0203, "code": "FILL"}]},
                            "system": format!("{NAMING_BASE}/{}/filler-order", self.sender), "value": order}],
                        "status": report_status(&m.get(seg, 25).first().text(1)),
                        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "LAB", "display": "Laboratory"}]}],
                        "code": codeable(&m.get(seg, 4).first()),
                        "subject": {"reference": patient},
                    });
                    if let Some(d) = date_time(&m.get(seg, 7).first().text(1)) {
                        dr["effectiveDateTime"] = json!(d);
                    }
                    if let Some(d) = date_time(&m.get(seg, 22).first().text(1)) {
                        dr["issued"] = json!(instant(&d));
                    }
                    report = Some((dr, Vec::new(), order.clone()));
                }
                "OBX" if report.is_none() => {
                    // An observation about the patient outside any order (some senders put
                    // them after PID): an Observation of its own, in no report.
                    match self.observation(seg, patient, "patient")? {
                        Observed::Observation(_, entry) => out.push(entry),
                        Observed::Attachment(_) => {
                            return invalid(
                                "an ED observation (OBX-2) outside any OBR has no report to attach to",
                            );
                        }
                    }
                }
                "OBX" => {
                    let Some((dr, results, _)) = report.as_mut() else {
                        return invalid("OBX before any OBR");
                    };
                    match self.observation(seg, patient, &order)? {
                        Observed::Observation(full_url, entry) => {
                            results.push(json!({"reference": full_url}));
                            out.push(entry);
                        }
                        Observed::Attachment(a) => {
                            let forms = dr["presentedForm"].as_array().cloned().unwrap_or_default();
                            let mut forms = forms;
                            forms.push(a);
                            dr["presentedForm"] = Value::Array(forms);
                        }
                    }
                }
                _ => {}
            }
        }
        flush(&mut report, &mut out);
        if out.is_empty() {
            return invalid("ORU^R01 without OBR");
        }
        Ok(out)
    }

    fn observation(
        &self,
        obx: &crate::er7::Segment,
        patient: &str,
        order: &str,
    ) -> Mapping<Observed> {
        let m = self.m;
        let value_type = m.get(obx, 2).first().text(1);
        let code = m.get(obx, 3).first();
        let value = m.get(obx, 5);
        if value_type == "ED" {
            let ed = value.first();
            let mut a = json!({"contentType": format!("{}/{}", ed.text(2).to_ascii_lowercase(), ed.text(3).to_ascii_lowercase())});
            if ed.text(4).eq_ignore_ascii_case("Base64") {
                a["data"] = json!(ed.text(5).replace(char::is_whitespace, ""));
            } else {
                return invalid(format!(
                    "OBX-5 ED with encoding {:?}: only Base64 is read",
                    ed.text(4)
                ));
            }
            let title = code.text(2);
            if !title.is_empty() {
                a["title"] = json!(title);
            }
            return Ok(Observed::Attachment(a));
        }
        let mut r = json!({
            "resourceType": "Observation",
            "status": observation_status(&m.get(obx, 11).first().text(1)),
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory", "display": "Laboratory"}]}],
            "code": codeable(&code),
            "subject": {"reference": patient},
        });
        let units = m.get(obx, 6).first();
        match value_type.as_str() {
            "NM" => {
                let text = value.first().text(1);
                if !text.is_empty() {
                    r["valueQuantity"] = quantity(&text, &units).ok_or_else(|| {
                        Refusal::Invalid(format!("OBX-5 {text:?} is not a number (OBX-2 NM)"))
                    })?;
                }
            }
            "SN" => {
                let sn = value.first();
                let (comparator, n1, sep, n2) = (sn.text(1), sn.text(2), sn.text(3), sn.text(4));
                let bad = || {
                    Refusal::Invalid(format!(
                        "OBX-5 is not a structured numeric: {:?}",
                        value.first().text(1)
                    ))
                };
                match sep.as_str() {
                    ":" | "/" => {
                        r["valueRatio"] = json!({
                            "numerator": quantity(&n1, &units).ok_or_else(bad)?,
                            "denominator": {"value": number(&n2).ok_or_else(bad)?},
                        });
                    }
                    "-" => {
                        r["valueRange"] = json!({
                            "low": quantity(&n1, &units).ok_or_else(bad)?,
                            "high": quantity(&n2, &units).ok_or_else(bad)?,
                        });
                    }
                    _ => {
                        let mut q = quantity(&n1, &units).ok_or_else(bad)?;
                        if ["<", ">", "<=", ">="].contains(&comparator.as_str()) {
                            q["comparator"] = json!(comparator);
                        } else if !comparator.is_empty() && comparator != "=" {
                            return Err(bad());
                        }
                        r["valueQuantity"] = q;
                    }
                }
            }
            "CWE" | "CE" | "CNE" | "CF" => {
                r["valueCodeableConcept"] = codeable(&value.first());
            }
            "DT" | "TS" | "DTM" => {
                if let Some(d) = date_time(&value.first().text(1)) {
                    r["valueDateTime"] = json!(d);
                }
            }
            "TM" => {
                let t = value.first().text(1);
                if t.len() >= 4 && t.chars().take(4).all(|c| c.is_ascii_digit()) {
                    let s = if t.len() >= 6 { &t[4..6] } else { "00" };
                    r["valueTime"] = json!(format!("{}:{}:{s}", &t[..2], &t[2..4]));
                }
            }
            _ => {
                // ST, TX, FT and anything else with text: the repetitions are lines.
                let text: Vec<String> = value.repeats().iter().map(|x| x.text(1)).collect();
                let text = text.join("\n");
                if !text.is_empty() {
                    r["valueString"] = json!(text);
                }
            }
        }
        let range = m.get(obx, 7).first().text(1);
        if let Some((low, high)) = range.split_once('-')
            && let (Some(l), Some(h)) = (number(low.trim()), number(high.trim()))
        {
            let unit = |v: f64| {
                let mut q = json!({"value": v});
                if let Some(u) = ucum(&units) {
                    q["unit"] = json!(u);
                    q["system"] = json!(UCUM);
                    q["code"] = json!(u);
                }
                q
            };
            r["referenceRange"] = json!([{"low": unit(l), "high": unit(h), "text": range}]);
        } else if !range.is_empty() {
            r["referenceRange"] = json!([{"text": range}]);
        }
        let flag = m.get(obx, 8).first().text(1);
        if !flag.is_empty() {
            r["interpretation"] = json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": flag}]}]);
        }
        if let Some(d) = date_time(&m.get(obx, 14).first().text(1)) {
            r["effectiveDateTime"] = json!(d);
        }
        // The same result in a corrected message is the same Observation: the order, the test
        // code and the sub-id name it.
        let id = format!("{order}.{}.{}", code.text(1), m.get(obx, 4).first().text(1));
        let system = format!("{NAMING_BASE}/{}/observation", self.sender);
        r["identifier"] = json!([{"system": system, "value": id}]);
        let full_url = format!("urn:uuid:{}", uuid::Uuid::new_v4());
        Ok(Observed::Observation(
            full_url.clone(),
            json!({
                "fullUrl": full_url,
                "resource": r,
                "request": {"method": "PUT", "url": format!("Observation?identifier={system}|{id}")}
            }),
        ))
    }
}

enum Observed {
    Observation(String, Value),
    Attachment(Value),
}

fn report_status(code: &str) -> &'static str {
    match code {
        "F" => "final",
        "C" => "corrected",
        "P" => "preliminary",
        "A" => "partial",
        "X" => "cancelled",
        "O" | "I" | "S" => "registered",
        _ => "unknown",
    }
}

fn observation_status(code: &str) -> &'static str {
    match code {
        "F" => "final",
        "C" => "corrected",
        "P" | "R" | "S" => "preliminary",
        "D" | "W" => "entered-in-error",
        "X" => "cancelled",
        "I" | "O" => "registered",
        _ => "unknown",
    }
}

/// CWE/CE: code^text^system (and the alternate triplet) as a CodeableConcept.
fn codeable(cwe: &Repeat) -> Value {
    let mut codings = Vec::new();
    for (c, t, s) in [(1, 2, 3), (4, 5, 6)] {
        let code = cwe.text(c);
        if code.is_empty() {
            continue;
        }
        let mut coding = json!({"code": code});
        if let Some(system) = code_system(&cwe.text(s)) {
            coding["system"] = json!(system);
        }
        let display = cwe.text(t);
        if !display.is_empty() {
            coding["display"] = json!(display);
        }
        codings.push(coding);
    }
    let mut out = json!({});
    if !codings.is_empty() {
        out["coding"] = Value::Array(codings);
    }
    let text = cwe.text(9);
    let text = if text.is_empty() { cwe.text(2) } else { text };
    if !text.is_empty() {
        out["text"] = json!(text);
    }
    out
}

/// HL7 table 0396 names onto FHIR code system URLs.
fn code_system(name: &str) -> Option<String> {
    Some(match name {
        "" => return None,
        "LN" => "http://loinc.org".into(),
        "SCT" | "SNM" | "SNOMED" => "http://snomed.info/sct".into(),
        "UCUM" => UCUM.into(),
        "I10" | "ICD10" => "http://hl7.org/fhir/sid/icd-10".into(),
        "HL70078" => "http://terminology.hl7.org/CodeSystem/v2-0078".into(),
        other if other.starts_with("HL7") && other.len() == 7 => {
            format!("http://terminology.hl7.org/CodeSystem/v2-{}", &other[3..])
        }
        other => format!("{NAMING_BASE}/code-system/{}", naming_segment(other)),
    })
}

fn number(s: &str) -> Option<f64> {
    let s = s.trim();
    if s.is_empty() || s.contains(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    s.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// The UCUM code of OBX-6 when its coding system is UCUM.
fn ucum(units: &Repeat) -> Option<String> {
    let code = units.text(1);
    (!code.is_empty() && units.text(3) == "UCUM").then_some(code)
}

fn quantity(text: &str, units: &Repeat) -> Option<Value> {
    let v = number(text)?;
    // Keep the number as written (precision matters in results: 6.10 is not 6.1).
    let value: Value =
        serde_json::from_str(text.trim().trim_start_matches('+')).unwrap_or(json!(v));
    let mut q = json!({"value": value});
    let unit_text = units.text(2);
    match ucum(units) {
        Some(code) => {
            q["unit"] = json!(if unit_text.is_empty() {
                code.clone()
            } else {
                unit_text
            });
            q["system"] = json!(UCUM);
            q["code"] = json!(code);
        }
        None => {
            let u = units.text(1);
            if !u.is_empty() {
                q["unit"] = json!(u);
            }
        }
    }
    Some(q)
}

/// XPN: family (FN: surname & own prefix & own surname) ^ given ^ second given ^ suffix ^
/// prefix ^ degree ^ name type.
fn human_name(x: &Repeat) -> Value {
    let mut n = json!({});
    let family = x.text(1);
    let family = if family.contains('&') || family.contains(' ') {
        // The full family name as written, with the voorvoegsel (FN.2) and surname (FN.3)
        // kept in the nl-core extensions' spirit as parts of the text.
        let (surname, prefix, own) = (x.sub(1, 1), x.sub(1, 2), x.sub(1, 3));
        if !prefix.is_empty() && !own.is_empty() {
            format!("{prefix} {own}")
        } else {
            surname
        }
    } else {
        family
    };
    if !family.is_empty() {
        n["family"] = json!(family);
        if !x.sub(1, 2).is_empty() && !x.sub(1, 3).is_empty() {
            n["_family"] = json!({"extension": [
                {"url": "http://hl7.org/fhir/StructureDefinition/humanname-own-prefix", "valueString": x.sub(1, 2)},
                {"url": "http://hl7.org/fhir/StructureDefinition/humanname-own-name", "valueString": x.sub(1, 3)},
            ]});
        }
    }
    let given: Vec<String> = [2, 3]
        .iter()
        .map(|c| x.text(*c))
        .filter(|g| !g.is_empty())
        .collect();
    if !given.is_empty() {
        n["given"] = json!(given);
    }
    let prefix = x.text(5);
    if !prefix.is_empty() {
        n["prefix"] = json!([prefix]);
    }
    let suffix = x.text(4);
    if !suffix.is_empty() {
        n["suffix"] = json!([suffix]);
    }
    let usage = match x.text(7).as_str() {
        "L" => Some("official"),
        "D" => Some("usual"),
        "M" | "B" => Some("maiden"),
        "N" | "A" => Some("nickname"),
        _ => None,
    };
    if let Some(u) = usage {
        n["use"] = json!(u);
    }
    n
}

/// XCN (id ^ family ^ given ...) as a display text.
fn person_name(x: &Repeat) -> String {
    [3, 2]
        .iter()
        .map(|c| x.text(*c))
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// XAD: street ^ other ^ city ^ state ^ postal code ^ country ^ type.
fn address(x: &Repeat) -> Value {
    let mut a = json!({});
    let lines: Vec<String> = [1, 2]
        .iter()
        .map(|c| x.text(*c))
        .filter(|l| !l.is_empty())
        .collect();
    if !lines.is_empty() {
        a["line"] = json!(lines);
    }
    for (c, key) in [(3, "city"), (4, "state"), (5, "postalCode"), (6, "country")] {
        let v = x.text(c);
        if !v.is_empty() {
            a[key] = json!(v);
        }
    }
    let (usage, ty) = match x.text(7).as_str() {
        "H" => (Some("home"), None),
        "O" | "B" => (Some("work"), None),
        "C" => (Some("temp"), None),
        "M" => (None, Some("postal")),
        _ => (None, None),
    };
    if let Some(u) = usage {
        a["use"] = json!(u);
    }
    if let Some(t) = ty {
        a["type"] = json!(t);
    }
    a
}

/// XTN: [number] ^ use ^ equipment ^ email ^ ... ^ unformatted number (12).
fn contact_point(x: &Repeat) -> Option<Value> {
    let equipment = x.text(3);
    let (system, value) = match equipment.as_str() {
        "Internet" | "X.400" => ("email", x.text(4)),
        "FX" => ("fax", number_of(x)),
        "BP" => ("pager", number_of(x)),
        _ => ("phone", number_of(x)),
    };
    if value.is_empty() {
        return None;
    }
    let mut c = json!({"system": system, "value": value});
    let usage = match x.text(2).as_str() {
        "PRN" | "ORN" | "VHN" => Some("home"),
        "WPN" => Some("work"),
        _ if equipment == "CP" => Some("mobile"),
        _ => None,
    };
    if let Some(u) = usage {
        c["use"] = json!(u);
    }
    Some(c)
}

/// The number of an XTN: unformatted (12), as written (1), from its parts (country 5, area 6,
/// local 7), or, as some senders put it, in the text (9) or extension (8) component.
fn number_of(x: &Repeat) -> String {
    let parts: Vec<String> = [5, 6, 7]
        .iter()
        .map(|c| x.text(*c))
        .filter(|p| !p.is_empty())
        .collect();
    [x.text(12), x.text(1), parts.join(" "), x.text(9), x.text(8)]
        .into_iter()
        .find(|n| !n.is_empty())
        .unwrap_or_default()
}

/// A v2 DTM (`YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]`) as a FHIR date or dateTime. A time
/// without an offset is Dutch local time (the region's senders), CET or CEST as the date falls.
pub fn date_time(v: &str) -> Option<String> {
    let v = v.trim();
    let (body, zone) = match v.find(['+', '-']) {
        Some(i) if i >= 4 => (&v[..i], Some(&v[i..])),
        _ => (v, None),
    };
    let (digits, fraction) = match body.split_once('.') {
        Some((d, f)) => (d, Some(f)),
        None => (body, None),
    };
    if digits.len() < 4 || !digits.chars().all(|c| c.is_ascii_digit()) || digits.len() % 2 != 0 {
        return None;
    }
    let part = |a: usize, b: usize| digits.get(a..b);
    let (year, month, day) = (part(0, 4)?, part(4, 6), part(6, 8));
    let mut out = year.to_owned();
    let Some(month) = month else { return Some(out) };
    out.push_str(&format!("-{month}"));
    let Some(day) = day else { return Some(out) };
    out.push_str(&format!("-{day}"));
    let Some(hour) = part(8, 10) else {
        return Some(out);
    };
    let minute = part(10, 12).unwrap_or("00");
    let second = part(12, 14).unwrap_or("00");
    out.push_str(&format!("T{hour}:{minute}:{second}"));
    if let Some(f) = fraction.filter(|f| !f.is_empty() && f.chars().all(|c| c.is_ascii_digit())) {
        out.push('.');
        out.push_str(f);
    }
    let offset = match zone {
        Some(z) if z.len() == 5 && z[1..].chars().all(|c| c.is_ascii_digit()) => {
            format!("{}{}:{}", &z[..1], &z[1..3], &z[3..5])
        }
        Some(_) => return None,
        None => {
            let (y, mo, d, h): (i32, u32, u32, u32) = (
                year.parse().ok()?,
                month.parse().ok()?,
                day.parse().ok()?,
                hour.parse().ok()?,
            );
            if crate::local_time::summer_time(y, mo, d, h) {
                "+02:00"
            } else {
                "+01:00"
            }
            .to_owned()
        }
    };
    out.push_str(&offset);
    Some(out)
}

/// An instant needs seconds and an offset; a date alone becomes midnight local time.
fn instant(date_time: &str) -> String {
    if date_time.len() >= 19 {
        date_time.to_owned()
    } else {
        format!("{}T00:00:00+01:00", &date_time[..10.min(date_time.len())])
    }
}

/// The BSN 11-proof: nine digits, 9*d1 + 8*d2 + ... + 2*d8 - d9 divisible by 11.
pub fn eleven_proof(bsn: &str) -> bool {
    if bsn.len() != 9 || !bsn.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let d: Vec<i64> = bsn.bytes().map(|b| (b - b'0') as i64).collect();
    let sum: i64 = (0..8).map(|i| d[i] * (9 - i as i64)).sum::<i64>() - d[8];
    sum % 11 == 0 && sum != 0
}

fn strip_nulls(v: &mut Value) {
    if let Value::Object(o) = v {
        o.retain(|_, x| !x.is_null());
    }
}
