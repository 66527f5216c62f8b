//! iWmo/iJw 3.2 messages: read (quick-xml), checked against the message rules, answered with
//! their return message, and mapped onto FHIR. The mapping is documented in
//! `schemas/istandaarden-mapping.md`.
//!
//! - WMO301/JW301 (toewijzing, from a municipality to a provider): the client becomes a Patient
//!   (BSN, nl-core name and address) and each `ToegewezenProduct` a `ServiceRequest` (intent
//!   order) held by the municipality. Answered by WMO302/JW302.
//! - WMO315/JW315 (verzoek om toewijzing, from a provider to a municipality): each
//!   `AangevraagdProduct` a `ServiceRequest` (intent proposal, status draft) held by the
//!   municipality it is addressed to. Answered by WMO316/JW316.
//!
//! A message with any return code other than 0200 is rejected as a whole (as the iStandaarden
//! prescribe): its return message says which class failed and why, and nothing is written.

use super::config::Config;
use crate::Organization;
use quick_xml::events::Event;
use serde_json::{Value, json};
use std::collections::BTreeMap;

pub const BSN_SYSTEM: &str = "http://fhir.nl/fhir/NamingSystem/bsn";
pub const AGB_SYSTEM: &str = "http://fhir.nl/fhir/NamingSystem/agb-z";
/// Where the gateway's own code systems and identifier systems for the social domain live.
pub const BASE: &str = "https://healthhub-utrecht.nl/fhir";
/// The category every social-domain ServiceRequest carries (code `wmo` or `jeugdwet`); the
/// policy knows social-domain data by it.
pub const SOCIAL_DOMAIN: &str = "https://healthhub-utrecht.nl/fhir/CodeSystem/social-domain";
/// The gateway's data categories; `social-domain` makes the policy treat a resource as
/// social-domain data (seen by municipalities, never by them as medical data is).
pub const DATA_CATEGORY: &str = "https://healthhub-utrecht.nl/fhir/CodeSystem/data-category";
pub const HOLDER_TAG: &str = "https://healthhub-utrecht.nl/fhir/CodeSystem/holder";

/// Return codes used (LDT_RetourCode of the 3.2 Basisschema).
pub mod code {
    /// Rejected for technical reasons: a required element missing, a value outside its code
    /// list or pattern, an invalid BSN or date, dates in the wrong order.
    pub const TECHNICAL: &str = "0001";
    /// No remarks on this class.
    pub const OK: &str = "0200";
    /// Not assessed (the message could not be read that far).
    pub const NOT_ASSESSED: &str = "0233";
    /// Dagtekening after today.
    pub const FUTURE_DATE: &str = "8848";
    /// Identificatie used before by this sender for this message type.
    pub const NOT_UNIQUE: &str = "9056";
    /// ToewijzingNummer not unique.
    pub const ALLOCATION_NOT_UNIQUE: &str = "9332";
    /// The same product with overlapping periods.
    pub const OVERLAP: &str = "9361";
    /// Omvang missing while the product has a code.
    pub const VOLUME_MISSING: &str = "9411";
    /// Municipality code not known (here: not configured).
    pub const UNKNOWN_MUNICIPALITY: &str = "S300";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    Wmo,
    Jeugdwet,
}

impl Domain {
    fn prefix(self) -> &'static str {
        match self {
            Domain::Wmo => "wmo",
            Domain::Jeugdwet => "jw",
        }
    }
    fn basis_prefix(self) -> &'static str {
        match self {
            Domain::Wmo => "iwmo",
            Domain::Jeugdwet => "ijw",
        }
    }
    fn namespace_root(self) -> &'static str {
        match self {
            Domain::Wmo => "http://www.istandaarden.nl/iwmo/3_2",
            Domain::Jeugdwet => "http://www.istandaarden.nl/ijw/3_2",
        }
    }
    pub fn code(self) -> &'static str {
        match self {
            Domain::Wmo => "wmo",
            Domain::Jeugdwet => "jeugdwet",
        }
    }
    fn display(self) -> &'static str {
        match self {
            Domain::Wmo => "Wmo 2015",
            Domain::Jeugdwet => "Jeugdwet",
        }
    }
    fn categories(self) -> &'static [&'static str] {
        match self {
            Domain::Wmo => &[
                "01", "02", "03", "04", "05", "06", "07", "08", "09", "10", "11", "12", "13", "14",
                "15", "16", "17", "18",
            ],
            Domain::Jeugdwet => &[
                "31", "32", "33", "34", "35", "36", "37", "38", "40", "41", "42", "43", "44", "45",
                "46", "47", "48", "49", "50", "51", "52", "53", "54", "55",
            ],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 301: toewijzing.
    Allocation,
    /// 315: verzoek om toewijzing.
    Request,
}

impl Kind {
    fn number(self) -> u32 {
        match self {
            Kind::Allocation => 301,
            Kind::Request => 315,
        }
    }
    fn products(self) -> (&'static str, &'static str) {
        match self {
            Kind::Allocation => ("ToegewezenProducten", "ToegewezenProduct"),
            Kind::Request => ("AangevraagdeProducten", "AangevraagdProduct"),
        }
    }
}

/// The message code (BerichtCode) of a message type and of its return message.
fn bericht_code(domain: Domain, kind: Kind) -> (&'static str, &'static str) {
    match (domain, kind) {
        (Domain::Wmo, Kind::Allocation) => ("414", "415"),
        (Domain::Wmo, Kind::Request) => ("444", "445"),
        (Domain::Jeugdwet, Kind::Allocation) => ("436", "437"),
        (Domain::Jeugdwet, Kind::Request) => ("446", "447"),
    }
}

/// Which namespace an element is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ns {
    Message,
    Basis,
    Other,
}

/// A parsed element: local name, namespace, text, children.
#[derive(Debug, Clone)]
pub struct Element {
    pub name: String,
    pub ns: Ns,
    pub text: String,
    pub children: Vec<Element>,
}

impl Element {
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The trimmed text at a path of child names, if there and non-empty.
    pub fn at(&self, path: &[&str]) -> Option<&str> {
        let mut e = self;
        for p in path {
            e = e.child(p)?;
        }
        Some(e.text.trim()).filter(|t| !t.is_empty())
    }
}

/// Why a message has no return message: it is not an iWmo/iJw message this gateway takes (not
/// XML, too large or deep, another message type). Said to the sender as an error, not dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable(pub String);

/// A message as read.
#[derive(Debug, Clone)]
pub struct Message {
    pub domain: Domain,
    pub kind: Kind,
    pub root: Element,
}

impl Message {
    pub fn parse(bytes: &[u8], config: &Config) -> Result<Message, Unreadable> {
        if bytes.len() > config.max_bytes {
            return Err(Unreadable(format!(
                "message of {} bytes; at most {} are accepted",
                bytes.len(),
                config.max_bytes
            )));
        }
        let (root, root_ns) = parse_tree(bytes, config.max_depth)?;
        if root.name != "Bericht" {
            return Err(Unreadable(format!(
                "root element {} is not Bericht",
                root.name
            )));
        }
        let (domain, kind) = [Domain::Wmo, Domain::Jeugdwet]
            .into_iter()
            .flat_map(|d| [(d, Kind::Allocation), (d, Kind::Request)])
            .find(|(d, k)| {
                root_ns == format!("{}/{}{}/schema", d.namespace_root(), d.prefix(), k.number())
            })
            .ok_or_else(|| {
                Unreadable(format!(
                    "namespace {root_ns:?} is not WMO301, WMO315, JW301 or JW315 of release 3.2"
                ))
            })?;
        Ok(Message { domain, kind, root })
    }

    pub fn header(&self, path: &[&str]) -> Option<&str> {
        self.root.child("Header")?.at(path)
    }

    pub fn sender(&self) -> &str {
        self.header(&["Afzender"]).unwrap_or_default()
    }

    pub fn identification(&self) -> &str {
        self.header(&["BerichtIdentificatie", "Identificatie"])
            .unwrap_or_default()
    }

    /// `WMO301`, `JW315`, ...
    pub fn type_name(&self) -> String {
        format!(
            "{}{}",
            self.domain.prefix().to_uppercase(),
            self.kind.number()
        )
    }

    /// The municipality the message concerns: the sender of an allocation, the receiver of a
    /// request.
    pub fn municipality_code(&self) -> &str {
        match self.kind {
            Kind::Allocation => self.sender(),
            Kind::Request => self.header(&["Ontvanger"]).unwrap_or_default(),
        }
    }

    /// The provider's AGB code: the receiver of an allocation, the sender of a request.
    pub fn provider(&self) -> &str {
        match self.kind {
            Kind::Allocation => self.header(&["Ontvanger"]).unwrap_or_default(),
            Kind::Request => self.sender(),
        }
    }

    fn client(&self) -> Option<&Element> {
        self.root.child("Client")
    }

    fn products(&self) -> Vec<&Element> {
        let (list, one) = self.kind.products();
        self.client()
            .and_then(|c| c.child(list))
            .map(|l| l.children_named(one).collect())
            .unwrap_or_default()
    }
}

/// Parses XML into a tree (local names, namespaces resolved from the `xmlns` declarations);
/// also gives the root's namespace URI.
fn parse_tree(bytes: &[u8], max_depth: usize) -> Result<(Element, String), Unreadable> {
    let mut reader = quick_xml::Reader::from_reader(bytes);
    reader.config_mut().trim_text(false);
    let mut prefixes: BTreeMap<String, String> = BTreeMap::new();
    let mut stack: Vec<(Element, Option<String>)> = Vec::new();
    let mut root: Option<(Element, String)> = None;
    let mut buf = Vec::new();
    let bad = |e: String| Unreadable(format!("not well-formed XML: {e}"));
    loop {
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| bad(e.to_string()))?;
        match event {
            Event::Start(ref s) | Event::Empty(ref s) => {
                if root.is_some() {
                    return Err(bad("content after the root element".into()));
                }
                if stack.len() >= max_depth {
                    return Err(Unreadable(format!(
                        "nested deeper than {max_depth} elements"
                    )));
                }
                for a in s.attributes() {
                    let a = a.map_err(|e| bad(e.to_string()))?;
                    let key = String::from_utf8_lossy(a.key.as_ref()).into_owned();
                    let value = a
                        .unescape_value()
                        .map_err(|e| bad(e.to_string()))?
                        .into_owned();
                    if key == "xmlns" {
                        prefixes.insert(String::new(), value);
                    } else if let Some(p) = key.strip_prefix("xmlns:") {
                        prefixes.insert(p.to_owned(), value);
                    }
                }
                let raw = String::from_utf8_lossy(s.name().as_ref()).into_owned();
                let (prefix, local) = match raw.split_once(':') {
                    Some((p, l)) => (p.to_owned(), l.to_owned()),
                    None => (String::new(), raw.clone()),
                };
                let uri = prefixes.get(&prefix).cloned();
                let ns = match &uri {
                    Some(u) if u.ends_with("/basisschema/schema") => Ns::Basis,
                    Some(u) if u.starts_with("http://www.istandaarden.nl/") => Ns::Message,
                    _ => Ns::Other,
                };
                let element = Element {
                    name: local,
                    ns,
                    text: String::new(),
                    children: Vec::new(),
                };
                if matches!(event, Event::Empty(_)) {
                    match stack.last_mut() {
                        Some((parent, _)) => parent.children.push(element),
                        None => root = Some((element, uri.unwrap_or_default())),
                    }
                } else {
                    stack.push((element, uri));
                }
            }
            Event::Text(t) => {
                if let Some((e, _)) = stack.last_mut() {
                    let text = t.decode().map_err(|e| bad(e.to_string()))?;
                    let text =
                        quick_xml::escape::unescape(&text).map_err(|e| bad(e.to_string()))?;
                    e.text.push_str(&text);
                }
            }
            Event::GeneralRef(r) => {
                // &amp; &lt; ... and character references inside text.
                if let Some((e, _)) = stack.last_mut() {
                    let name = r.decode().map_err(|e| bad(e.to_string()))?;
                    let reference = format!("&{name};");
                    let text =
                        quick_xml::escape::unescape(&reference).map_err(|e| bad(e.to_string()))?;
                    e.text.push_str(&text);
                }
            }
            Event::CData(c) => {
                if let Some((e, _)) = stack.last_mut() {
                    e.text.push_str(&String::from_utf8_lossy(&c));
                }
            }
            Event::End(_) => {
                let (element, uri) = stack
                    .pop()
                    .ok_or_else(|| bad("unbalanced end tag".into()))?;
                match stack.last_mut() {
                    Some((parent, _)) => parent.children.push(element),
                    None => root = Some((element, uri.unwrap_or_default())),
                }
            }
            Event::DocType(_) => return Err(bad("a DOCTYPE is not accepted".into())),
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if !stack.is_empty() {
        return Err(bad("the document ends inside an element".into()));
    }
    root.ok_or_else(|| bad("no root element".into()))
}

/// The return codes of each class of a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assessment {
    pub header: Vec<&'static str>,
    pub client: Vec<&'static str>,
    /// Per product, in message order.
    pub products: Vec<Vec<&'static str>>,
    /// For the operator and the FHIR answer: each finding in words.
    pub findings: Vec<String>,
}

impl Assessment {
    /// Whether the message may be applied (every class 0200).
    pub fn approved(&self) -> bool {
        self.header.is_empty() && self.client.is_empty() && self.products.iter().all(Vec::is_empty)
    }

    fn add(
        list: &mut Vec<&'static str>,
        findings: &mut Vec<String>,
        code: &'static str,
        why: String,
    ) {
        if !list.contains(&code) {
            list.push(code);
        }
        findings.push(format!("{code}: {why}"));
    }
}

fn valid_date(s: &str) -> bool {
    time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]")).is_ok()
}

fn digits(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
}

/// Checks a message against the message rules; `today` is `YYYY-MM-DD`; `seen_before` says
/// whether this sender used this Identificatie for this type before (the gateway knows).
pub fn assess(m: &Message, config: &Config, today: &str, seen_before: bool) -> Assessment {
    let mut a = Assessment::default();
    let mut h = Vec::new();
    let mut f = Vec::new();
    let (code, _) = bericht_code(m.domain, m.kind);
    if m.header(&["BerichtCode"]) != Some(code) {
        Assessment::add(
            &mut h,
            &mut f,
            code::TECHNICAL,
            format!("BerichtCode must be {code}"),
        );
    }
    if m.header(&["BerichtVersie"]) != Some("3") || m.header(&["BerichtSubversie"]) != Some("2") {
        Assessment::add(
            &mut h,
            &mut f,
            code::TECHNICAL,
            "release must be 3.2".into(),
        );
    }
    let (municipality, provider) = (m.municipality_code(), m.provider());
    if !digits(municipality, 4, 4) {
        Assessment::add(
            &mut h,
            &mut f,
            code::TECHNICAL,
            format!("municipality code {municipality:?} is not 4 digits"),
        );
    } else if !config.municipalities.contains_key(municipality) {
        Assessment::add(
            &mut h,
            &mut f,
            code::UNKNOWN_MUNICIPALITY,
            format!("municipality {municipality} is not known here"),
        );
    }
    if !digits(provider, 8, 8) {
        Assessment::add(
            &mut h,
            &mut f,
            code::TECHNICAL,
            format!("provider AGB code {provider:?} is not 8 digits"),
        );
    }
    let ident = m.identification();
    if ident.is_empty() || ident.chars().count() > 12 {
        Assessment::add(
            &mut h,
            &mut f,
            code::TECHNICAL,
            "Identificatie must be 1 to 12 characters".into(),
        );
    } else if seen_before {
        Assessment::add(
            &mut h,
            &mut f,
            code::NOT_UNIQUE,
            format!("Identificatie {ident} was used before"),
        );
    }
    match m.header(&["BerichtIdentificatie", "Dagtekening"]) {
        Some(d) if valid_date(d) && d > today => Assessment::add(
            &mut h,
            &mut f,
            code::FUTURE_DATE,
            format!("Dagtekening {d} is after today"),
        ),
        Some(d) if valid_date(d) => {}
        _ => Assessment::add(
            &mut h,
            &mut f,
            code::TECHNICAL,
            "Dagtekening missing or not a date".into(),
        ),
    }
    a.header = h;

    let mut c = Vec::new();
    match m.client() {
        None => Assessment::add(&mut c, &mut f, code::TECHNICAL, "no Client".into()),
        Some(client) => {
            match client.at(&["Bsn"]) {
                Some(b) if crate::hl7v2::mapping::eleven_proof(b) => {}
                other => Assessment::add(
                    &mut c,
                    &mut f,
                    code::TECHNICAL,
                    format!("Bsn {other:?} is not a valid BSN (11-proof)"),
                ),
            }
            if !client
                .at(&["Geboortedatum", "Datum"])
                .is_some_and(valid_date)
            {
                Assessment::add(
                    &mut c,
                    &mut f,
                    code::TECHNICAL,
                    "Geboortedatum missing or not a date".into(),
                );
            }
            if !matches!(client.at(&["Geslacht"]), Some("0" | "1" | "2")) {
                Assessment::add(
                    &mut c,
                    &mut f,
                    code::TECHNICAL,
                    "Geslacht must be 0, 1 or 2".into(),
                );
            }
            if client
                .at(&["Naam", "Geslachtsnaam", "Achternaam"])
                .is_none()
            {
                Assessment::add(
                    &mut c,
                    &mut f,
                    code::TECHNICAL,
                    "Naam/Geslachtsnaam/Achternaam missing".into(),
                );
            }
            if m.products().is_empty() {
                Assessment::add(
                    &mut c,
                    &mut f,
                    code::TECHNICAL,
                    format!("no {}", m.kind.products().1),
                );
            }
        }
    }
    a.client = c;

    let products = m.products();
    let mut seen_numbers: Vec<&str> = Vec::new();
    let mut periods: Vec<(String, String, String)> = Vec::new();
    for (i, p) in products.iter().enumerate() {
        let mut pc = Vec::new();
        let n = i + 1;
        let (start_field, end_field) = match m.kind {
            Kind::Allocation => ("Ingangsdatum", "Einddatum"),
            Kind::Request => ("ToewijzingIngangsdatum", "ToewijzingEinddatum"),
        };
        match m.kind {
            Kind::Allocation => match p.at(&["ToewijzingNummer"]) {
                Some(t) if digits(t, 1, 8) => {
                    if seen_numbers.contains(&t) {
                        Assessment::add(
                            &mut pc,
                            &mut f,
                            code::ALLOCATION_NOT_UNIQUE,
                            format!("product {n}: ToewijzingNummer {t} twice"),
                        );
                    }
                    seen_numbers.push(t);
                }
                _ => Assessment::add(
                    &mut pc,
                    &mut f,
                    code::TECHNICAL,
                    format!("product {n}: ToewijzingNummer missing or not a number"),
                ),
            },
            Kind::Request => {
                if p.at(&["ReferentieAanbieder"]).is_none() {
                    Assessment::add(
                        &mut pc,
                        &mut f,
                        code::TECHNICAL,
                        format!("product {n}: ReferentieAanbieder missing"),
                    );
                }
            }
        }
        if m.kind == Kind::Allocation && !p.at(&["Toewijzingsdatum"]).is_some_and(valid_date) {
            Assessment::add(
                &mut pc,
                &mut f,
                code::TECHNICAL,
                format!("product {n}: Toewijzingsdatum missing or not a date"),
            );
        }
        let category = p.at(&["Product", "Categorie"]);
        if !category.is_some_and(|c| m.domain.categories().contains(&c)) {
            Assessment::add(
                &mut pc,
                &mut f,
                code::TECHNICAL,
                format!(
                    "product {n}: Categorie {category:?} is not in the {} code list",
                    m.domain.display()
                ),
            );
        }
        let product_code = p.at(&["Product", "Code"]);
        if let Some(pcode) = product_code
            && pcode.chars().count() > 5
        {
            Assessment::add(
                &mut pc,
                &mut f,
                code::TECHNICAL,
                format!("product {n}: Code {pcode:?} is longer than 5"),
            );
        }
        match p.child("Omvang") {
            Some(o) => {
                if !o.at(&["Volume"]).is_some_and(|v| digits(v, 1, 8)) {
                    Assessment::add(
                        &mut pc,
                        &mut f,
                        code::TECHNICAL,
                        format!("product {n}: Volume must be 0..99999999"),
                    );
                }
                if !matches!(
                    o.at(&["Eenheid"]),
                    Some("01" | "04" | "14" | "16" | "82" | "83" | "84")
                ) {
                    Assessment::add(
                        &mut pc,
                        &mut f,
                        code::TECHNICAL,
                        format!("product {n}: Eenheid not in its code list"),
                    );
                }
                if !matches!(o.at(&["Frequentie"]), Some("1" | "2" | "4" | "6")) {
                    Assessment::add(
                        &mut pc,
                        &mut f,
                        code::TECHNICAL,
                        format!("product {n}: Frequentie not in its code list"),
                    );
                }
            }
            None if product_code.is_some() && m.kind == Kind::Allocation => {
                Assessment::add(
                    &mut pc,
                    &mut f,
                    code::VOLUME_MISSING,
                    format!("product {n}: Omvang missing for a product with a code"),
                );
            }
            None => {}
        }
        let start = p.at(&[start_field]);
        let end = p.at(&[end_field]);
        if !start.is_some_and(valid_date) {
            Assessment::add(
                &mut pc,
                &mut f,
                code::TECHNICAL,
                format!("product {n}: {start_field} missing or not a date"),
            );
        }
        if let Some(e) = end {
            if !valid_date(e) {
                Assessment::add(
                    &mut pc,
                    &mut f,
                    code::TECHNICAL,
                    format!("product {n}: {end_field} not a date"),
                );
            } else if start.is_some_and(|s| valid_date(s) && e < s) {
                Assessment::add(
                    &mut pc,
                    &mut f,
                    code::TECHNICAL,
                    format!("product {n}: {end_field} {e} before {start_field}"),
                );
            }
        }
        if let (Some(s), Some(cat)) = (start.filter(|s| valid_date(s)), category) {
            let key = format!("{cat}/{}", product_code.unwrap_or_default());
            let e = end.unwrap_or("9999-12-31").to_owned();
            if periods
                .iter()
                .any(|(k, ps, pe)| *k == key && s <= pe.as_str() && ps.as_str() <= e.as_str())
            {
                Assessment::add(
                    &mut pc,
                    &mut f,
                    code::OVERLAP,
                    format!("product {n}: {key} again with an overlapping period"),
                );
            }
            periods.push((key, s.to_owned(), e));
        }
        a.products.push(pc);
    }
    a.findings = f;
    a
}

/// The return message (302 or 316) for a message and its assessment: the header with the
/// return's identification, and the client and its products echoed, each class with its codes.
pub fn answer(m: &Message, a: &Assessment, return_id: &str, today: &str) -> String {
    let (_, code) = bericht_code(m.domain, m.kind);
    let number = m.kind.number() + 1;
    let p = format!("{}{number}", m.domain.prefix());
    let b = m.domain.basis_prefix();
    let ns = format!("{}/{p}/schema", m.domain.namespace_root());
    let basis = format!("{}/basisschema/schema", m.domain.namespace_root());
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str(&format!(
        "<{p}:Bericht xmlns:{p}=\"{ns}\" xmlns:{b}=\"{basis}\">"
    ));
    out.push_str(&format!("<{p}:Header>"));
    let el = |out: &mut String, name: &str, value: &str| {
        out.push_str(&format!("<{p}:{name}>{}</{p}:{name}>", esc(value)));
    };
    el(&mut out, "BerichtCode", code);
    el(&mut out, "BerichtVersie", "3");
    el(&mut out, "BerichtSubversie", "2");
    el(&mut out, "Afzender", m.sender());
    el(
        &mut out,
        "Ontvanger",
        m.header(&["Ontvanger"]).unwrap_or_default(),
    );
    let header = m.root.child("Header");
    for name in ["BerichtIdentificatie", "XsdVersie"] {
        if let Some(e) = header.and_then(|h| h.child(name)) {
            write_element(&mut out, e, &p, b);
        }
    }
    el(&mut out, "IdentificatieRetour", return_id);
    el(&mut out, "DagtekeningRetour", today);
    out.push_str(&format!(
        "<{p}:XsdVersieRetour><{b}:BasisschemaXsdVersie>1.0.0</{b}:BasisschemaXsdVersie><{b}:BerichtXsdVersie>1.0.0</{b}:BerichtXsdVersie></{p}:XsdVersieRetour>"
    ));
    codes(&mut out, &p, &a.header);
    out.push_str(&format!("</{p}:Header>"));
    if let Some(client) = m.client() {
        let mut product = 0;
        echo(
            &mut out,
            client,
            &p,
            b,
            a,
            m.kind.products().1,
            &mut product,
        );
    }
    out.push_str(&format!("</{p}:Bericht>\n"));
    out
}

/// Echoes a message element into the return message; every class of the return message
/// (Client, Relatie, Contact, the products) ends with its return codes.
fn echo(
    out: &mut String,
    e: &Element,
    p: &str,
    b: &str,
    a: &Assessment,
    product_name: &str,
    product: &mut usize,
) {
    let prefix = if e.ns == Ns::Basis { b } else { p };
    out.push_str(&format!("<{prefix}:{}>", e.name));
    if e.children.is_empty() {
        out.push_str(&esc(e.text.trim()));
    }
    let own: Option<Vec<&str>> = if e.name == product_name {
        *product += 1;
        Some(a.products.get(*product - 1).cloned().unwrap_or_default())
    } else if e.name == "Client" && e.ns == Ns::Message {
        Some(a.client.clone())
    } else if matches!(e.name.as_str(), "Relatie" | "Contact") && e.ns == Ns::Message {
        Some(Vec::new())
    } else {
        None
    };
    for c in &e.children {
        echo(out, c, p, b, a, product_name, product);
    }
    if let Some(list) = own {
        codes(out, p, &list);
    }
    out.push_str(&format!("</{prefix}:{}>", e.name));
}

fn codes(out: &mut String, p: &str, list: &[&str]) {
    out.push_str(&format!("<{p}:RetourCodes>"));
    let list: &[&str] = if list.is_empty() { &[code::OK] } else { list };
    for c in list {
        out.push_str(&format!("<{p}:RetourCode>{c}</{p}:RetourCode>"));
    }
    out.push_str(&format!("</{p}:RetourCodes>"));
}

fn write_element(out: &mut String, e: &Element, message_prefix: &str, basis_prefix: &str) {
    let prefix = match e.ns {
        Ns::Basis => basis_prefix,
        _ => message_prefix,
    };
    out.push_str(&format!("<{prefix}:{}>", e.name));
    if e.children.is_empty() {
        out.push_str(&esc(e.text.trim()));
    }
    for c in &e.children {
        write_element(out, c, message_prefix, basis_prefix);
    }
    out.push_str(&format!("</{prefix}:{}>", e.name));
}

fn esc(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

/// What an approved message writes: one FHIR transaction (conditional on the BSN and the
/// municipality's own records, and on each allocation's identifier, so a corrected message
/// updates rather than duplicates).
pub fn to_fhir(m: &Message, municipality: &Organization) -> Value {
    let client = m.client().expect("an approved message has a client");
    let bsn = client.at(&["Bsn"]).unwrap_or_default();
    let holder = format!(
        "{HOLDER_TAG}|{}|{}",
        municipality.system, municipality.value
    );
    let patient_url = format!("urn:uuid:{}", uuid::Uuid::new_v4());
    let mut entries = vec![json!({
        "fullUrl": patient_url,
        "resource": patient(client, municipality),
        "request": {"method": "PUT",
                    "url": format!("Patient?identifier={BSN_SYSTEM}|{bsn}&_tag={holder}")}
    })];
    let municipality_ref = json!({
        "identifier": {"system": municipality.system, "value": municipality.value},
        "display": municipality.name
    });
    let provider_ref = json!({"identifier": {"system": AGB_SYSTEM, "value": m.provider()}});
    let comment = |e: &Element| e.at(&["Commentaar"]).map(|c| json!([{"text": c}]));
    for p in m.products() {
        let (identifier, status, intent, start, end) = match m.kind {
            Kind::Allocation => (
                json!({"system": format!("{BASE}/NamingSystem/{}-toewijzing", m.domain.prefix()),
                       "value": format!("{}-{}", m.municipality_code(), p.at(&["ToewijzingNummer"]).unwrap_or_default())}),
                "active",
                "order",
                p.at(&["Ingangsdatum"]),
                p.at(&["Einddatum"]),
            ),
            Kind::Request => (
                json!({"system": format!("{BASE}/NamingSystem/{}-verzoek/{}", m.domain.prefix(), m.provider()),
                       "value": p.at(&["ReferentieAanbieder"]).unwrap_or_default()}),
                "draft",
                "proposal",
                p.at(&["ToewijzingIngangsdatum"]),
                p.at(&["ToewijzingEinddatum"]),
            ),
        };
        let category = p.at(&["Product", "Categorie"]).unwrap_or_default();
        let mut codings = vec![json!({
            "system": format!("{BASE}/CodeSystem/{}-productcategorie", m.domain.prefix()),
            "code": category
        })];
        if let Some(c) = p.at(&["Product", "Code"]) {
            codings.push(json!({
                "system": format!("{BASE}/CodeSystem/{}-productcode", m.domain.prefix()),
                "code": c
            }));
        }
        let mut period = serde_json::Map::new();
        if let Some(s) = start {
            period.insert("start".into(), json!(s));
        }
        if let Some(e) = end {
            period.insert("end".into(), json!(e));
        }
        let mut sr = json!({
            "resourceType": "ServiceRequest",
            "identifier": [identifier],
            "status": status,
            "intent": intent,
            "category": [{"coding": [
                {"system": SOCIAL_DOMAIN, "code": m.domain.code(), "display": m.domain.display()},
                {"system": DATA_CATEGORY, "code": "social-domain"}
            ]}],
            "code": {"coding": codings},
            "subject": {"reference": patient_url},
            "occurrencePeriod": period,
            "requester": if m.kind == Kind::Allocation { municipality_ref.clone() } else { provider_ref.clone() },
            "performer": [provider_ref.clone()]
        });
        if let Some(o) = p.child("Omvang") {
            sr["quantityQuantity"] = quantity(o);
        }
        if let (Some(d), Some(t)) = (p.at(&["Toewijzingsdatum"]), p.at(&["Toewijzingstijd"])) {
            let offset = d
                .get(..4)
                .zip(d.get(5..7))
                .zip(d.get(8..10))
                .zip(t.get(..2))
                .and_then(|(((y, mo), da), h)| {
                    Some(crate::local_time::offset_text(
                        y.parse().ok()?,
                        mo.parse().ok()?,
                        da.parse().ok()?,
                        h.parse().ok()?,
                    ))
                })
                .unwrap_or("+01:00");
            sr["authoredOn"] = json!(format!("{d}T{t}{offset}"));
        } else if let Some(d) = p.at(&["Toewijzingsdatum"]) {
            sr["authoredOn"] = json!(d);
        }
        if let Some(n) = comment(p) {
            sr["note"] = n;
        }
        let key = format!(
            "{}|{}",
            sr["identifier"][0]["system"].as_str().unwrap_or_default(),
            sr["identifier"][0]["value"].as_str().unwrap_or_default()
        );
        entries.push(json!({
            "resource": sr,
            "request": {"method": "PUT", "url": format!("ServiceRequest?identifier={key}&_tag={holder}")}
        }));
    }
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

/// Omvang: the volume in its unit, the frequency said in the unit's text ("4 uur per week").
fn quantity(o: &Element) -> Value {
    let unit = match o.at(&["Eenheid"]) {
        Some("01") => ("minuut", "min"),
        Some("04") => ("uur", "h"),
        Some("14") => ("etmaal", "d"),
        Some("16") => ("dagdeel (4 uur)", ""),
        Some("82") => ("stuks (output)", ""),
        Some("83") => ("euro", ""),
        Some("84") => ("stuks (inspanning)", ""),
        _ => ("", ""),
    };
    let per = match o.at(&["Frequentie"]) {
        Some("1") => " per dag",
        Some("2") => " per week",
        Some("4") => " per maand",
        Some("6") => " binnen de geldigheidsduur",
        _ => "",
    };
    let volume: u64 = o.at(&["Volume"]).and_then(|v| v.parse().ok()).unwrap_or(0);
    json!({
        "value": volume,
        "unit": format!("{}{per}", unit.0),
        "system": format!("{BASE}/CodeSystem/istandaarden-eenheid"),
        "code": o.at(&["Eenheid"]).unwrap_or_default()
    })
}

/// The client as a Patient: BSN, nl-core name (own and partner name), gender, birth date,
/// the address of the first contact (nl-core parts), built with fhir-sdk's typed models.
fn patient(client: &Element, municipality: &Organization) -> Value {
    use fhir_sdk::r4b::codes::AdministrativeGender;
    use fhir_sdk::r4b::resources::Patient;
    use fhir_sdk::r4b::types::Identifier;
    let name = client.child("Naam");
    let parts = crate::nl_core::NameParts {
        family: name
            .and_then(|n| n.at(&["Geslachtsnaam", "Achternaam"]))
            .map(str::to_owned),
        prefix: name
            .and_then(|n| n.at(&["Geslachtsnaam", "Voorvoegsel"]))
            .map(str::to_owned),
        given: name
            .and_then(|n| n.at(&["Voornamen"]))
            .map(|g| g.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default(),
        initials: name.and_then(|n| n.at(&["Voorletters"])).map(str::to_owned),
    };
    let address = client
        .child("Contactgegevens")
        .and_then(|c| c.child("Contact"))
        .and_then(|c| c.child("Adres"))
        .and_then(|a| {
            let letter = a.at(&["Huis", "Huisletter"]).unwrap_or_default();
            let addition = a.at(&["Huis", "HuisnummerToevoeging"]).unwrap_or_default();
            let suffix = format!(
                "{letter}{}{addition}",
                if !letter.is_empty() && !addition.is_empty() {
                    " "
                } else {
                    ""
                }
            );
            crate::nl_core::address(&crate::nl_core::AddressParts {
                street: a.at(&["Straatnaam"]).map(str::to_owned),
                house_number: a.at(&["Huis", "Huisnummer"]).map(str::to_owned),
                suffix: Some(suffix).filter(|s| !s.is_empty()),
                postal_code: a.at(&["Postcode"]).map(str::to_owned),
                city: a.at(&["Plaatsnaam"]).map(str::to_owned),
                country: a.at(&["LandCode"]).map(str::to_owned),
            })
        });
    let gender = match client.at(&["Geslacht"]) {
        Some("1") => AdministrativeGender::Male,
        Some("2") => AdministrativeGender::Female,
        _ => AdministrativeGender::Unknown,
    };
    let mut b = Patient::builder()
        .identifier(vec![
            Identifier::builder()
                .system(BSN_SYSTEM.to_owned())
                .value(client.at(&["Bsn"]).unwrap_or_default().to_owned())
                .build()
                .ok(),
        ])
        .name(
            crate::nl_core::human_name(&parts)
                .map(Some)
                .into_iter()
                .collect(),
        )
        .gender(gender)
        .address(address.map(Some).into_iter().collect());
    if let Some(d) = client
        .at(&["Geboortedatum", "Datum"])
        .and_then(|d| d.parse::<fhir_sdk::Date>().ok())
    {
        b = b.birth_date(d);
    }
    let mut v = b
        .build()
        .ok()
        .and_then(|p| serde_json::to_value(p).ok())
        .unwrap_or_else(|| json!({"resourceType": "Patient"}));
    v["meta"] = json!({"tag": [{"system": HOLDER_TAG,
        "code": format!("{}|{}", municipality.system, municipality.value), "display": municipality.name}]});
    v
}
