//! A SQL backend's rows onto FHIR and FHIR searches onto SQL, both driven by the declarative
//! mapping of the config (`schemas/mapping.schema.json`): the mapping, not this code, knows the
//! backend's schema.
//!
//! Rows become resources through fhir-sdk's typed models (a mapping can only produce what the
//! R4 structure allows: a status from its code list, a date that is a date). Searches become one
//! SELECT over the mapping's table or query with a WHERE of bound values: a search value never
//! becomes SQL text, whatever it holds.

use super::config::{Code, Coded, Coding, Fields, Mapping};
use super::source::{Bind, ColumnKind, Dialect};
use crate::namespace;
use fhir_sdk::r4b::codes::{
    AdministrativeGender, ContactPointSystem, DocumentReferenceStatus, EpisodeOfCareStatus,
    ObservationStatus, RequestIntent, RequestStatus,
};
use fhir_sdk::r4b::resources::{
    CarePlan, DocumentReference, DocumentReferenceContent, EpisodeOfCare, Observation,
    ObservationEffective, ObservationValue, Patient, Practitioner, ServiceRequest,
    ServiceRequestOccurrence, ServiceRequestQuantity,
};
use fhir_sdk::r4b::types::{
    Annotation, Attachment, CodeableConcept, Coding as FhirCoding, ContactPoint, Identifier,
    Period, Quantity, Reference,
};
use fhir_sdk::{Base64Binary, Date, DateTime, Instant};
use serde_json::Value;
use std::collections::BTreeMap;
use std::str::FromStr;
use time::{Duration, Month, OffsetDateTime, PrimitiveDateTime, Time};

pub const BSN_SYSTEM: &str = "http://fhir.nl/fhir/NamingSystem/bsn";
const UCUM: &str = "http://unitsofmeasure.org";
const AGB_SYSTEM: &str = "http://fhir.nl/fhir/NamingSystem/agb-z";
const SOCIAL_DOMAIN: &str = crate::istandaarden::mapping::SOCIAL_DOMAIN;
const DATA_CATEGORY: &str = crate::istandaarden::mapping::DATA_CATEGORY;

/// A mapping resolved against the database: the columns it reads, in the order they are
/// selected, with their kinds.
#[derive(Debug, Clone)]
pub struct Table {
    pub mapping: Mapping,
    /// The columns read, as the database spells them; `columns[0]` is the id.
    pub columns: Vec<String>,
    pub kinds: BTreeMap<String, ColumnKind>,
}

/// One search the backend cannot answer (a parameter or modifier the mapping has no column
/// for); the federation reports it instead of guessing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(pub String);

impl Table {
    /// Resolves `mapping` against the columns the database described for its table or query.
    pub fn resolve(mapping: Mapping, described: &[(String, ColumnKind)]) -> Result<Table, String> {
        let mut columns = Vec::new();
        let mut kinds = BTreeMap::new();
        for wanted in used_columns(&mapping) {
            let found = described
                .iter()
                .find(|(n, _)| *n == wanted)
                .or_else(|| {
                    described
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(&wanted))
                })
                .ok_or_else(|| {
                    format!(
                        "{} mapping names column {wanted}, which its table or query does not have",
                        mapping.resource
                    )
                })?;
            if !columns.contains(&found.0) {
                columns.push(found.0.clone());
            }
            kinds.insert(wanted, found.1);
        }
        Ok(Table {
            mapping,
            columns,
            kinds,
        })
    }

    fn kind(&self, column: &str) -> ColumnKind {
        self.kinds.get(column).copied().unwrap_or(ColumnKind::Text)
    }

    /// The database's spelling of a mapping column.
    fn spelled<'a>(&'a self, column: &'a str) -> &'a str {
        self.columns
            .iter()
            .find(|c| c.eq_ignore_ascii_case(column))
            .map(String::as_str)
            .unwrap_or(column)
    }

    /// What the statements select from: the quoted table, or the operator's query as a
    /// subquery.
    pub fn from(&self, d: Dialect) -> String {
        match (&self.mapping.table, &self.mapping.query) {
            (Some(t), _) => format!("{} AS src", d.quote(t)),
            (None, Some(q)) => format!("({q}) AS src"),
            // A REST mapping (no SQL); the SQL adapter refuses those at start-up.
            (None, None) => String::new(),
        }
    }

    fn col(&self, d: Dialect, column: &str) -> String {
        format!("src.{}", d.quote(self.spelled(column)))
    }

    fn select_list(&self, d: Dialect) -> String {
        self.columns
            .iter()
            .map(|c| d.as_text(&format!("src.{}", d.quote(c))))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The statement for one resource by its backend id; `None` when the id cannot be one of
    /// this table's (an integer id column and a non-numeric id).
    pub fn read_sql(&self, d: Dialect, backend_id: &str) -> Option<(String, Vec<Bind>)> {
        let mut w = Where::new(d);
        let id = self.mapping.id.clone();
        let cond = w.equals(self, &id, backend_id)?;
        Some((
            format!(
                "SELECT {} FROM {} WHERE {cond}",
                self.select_list(d),
                self.from(d)
            ),
            w.binds,
        ))
    }

    /// The statements of a search page (rows, and the count when `count`), or `Ok(None)` when
    /// the search cannot match anything here (a patient of another backend, a code the code
    /// table does not have).
    pub fn search_sql(
        &self,
        d: Dialect,
        adapter: &str,
        params: &[(String, String)],
        after: Option<&str>,
        limit: u32,
    ) -> Result<Option<SearchSql>, Unsupported> {
        let mut w = Where::new(d);
        let mut conds: Vec<String> = Vec::new();
        for (key, value) in params {
            let (code, modifier) = match key.split_once(':') {
                Some((c, m)) => (c, Some(m)),
                None => (key.as_str(), None),
            };
            if code == "_count" {
                continue;
            }
            match self.condition(&mut w, adapter, code, modifier, value)? {
                Some(c) => conds.push(c),
                None => return Ok(None),
            }
        }
        let filter = if conds.is_empty() {
            "1=1".to_owned()
        } else {
            conds.join(" AND ")
        };
        let count_binds = w.binds.clone();
        let count = format!(
            "SELECT {} FROM {} WHERE {filter}",
            d.as_text("COUNT(*)"),
            self.from(d)
        );
        let mut page_filter = filter.clone();
        if let Some(after) = after {
            let id = self.mapping.id.clone();
            match w.compare(self, &id, ">", after) {
                Some(c) => page_filter = format!("({page_filter}) AND {c}"),
                None => return Ok(None),
            }
        }
        let rows = format!(
            "SELECT {} FROM {} WHERE {page_filter} ORDER BY {} LIMIT {}",
            self.select_list(d),
            self.from(d),
            self.col(d, &self.mapping.id),
            limit + 1
        );
        Ok(Some(SearchSql {
            rows,
            binds: w.binds,
            count,
            count_binds,
        }))
    }

    /// One parameter's condition; `Ok(None)` when it can match nothing.
    fn condition(
        &self,
        w: &mut Where,
        adapter: &str,
        code: &str,
        modifier: Option<&str>,
        value: &str,
    ) -> Result<Option<String>, Unsupported> {
        let f = &self.mapping.fields;
        let unsupported = || {
            Unsupported(format!(
                "{code}{}",
                modifier.map(|m| format!(":{m}")).unwrap_or_default()
            ))
        };
        let mut alternatives: Vec<String> = Vec::new();
        // A comma separates alternatives (OR); `\,` is a comma inside a value.
        for v in split_or(value) {
            let cond = match (code, self.mapping.resource.as_str()) {
                ("_id", _) => {
                    if modifier.is_some() {
                        return Err(unsupported());
                    }
                    let id = self.mapping.id.clone();
                    namespace::inward(adapter, &v).and_then(|b| w.equals(self, &id, b))
                }
                ("identifier", "Patient" | "Practitioner" | "ServiceRequest") => {
                    no_modifier(modifier, unsupported)?;
                    self.identifier(w, &v)
                }
                ("patient" | "subject", _) if f.patient.is_some() => {
                    if !matches!(modifier, None | Some("Patient")) {
                        return Err(unsupported());
                    }
                    let v = v.strip_prefix("Patient/").unwrap_or(&v);
                    let col = f.patient.clone().unwrap_or_default();
                    namespace::inward(adapter, v).and_then(|b| w.equals(self, &col, b))
                }
                ("family" | "given" | "name", "Patient" | "Practitioner") => {
                    let name = f.name.clone().unwrap_or_default();
                    let cols: Vec<String> = match code {
                        "family" => vec![name.family],
                        "given" => vec![name.given, name.initials],
                        _ => vec![name.family, name.given, name.family_prefix],
                    }
                    .into_iter()
                    .flatten()
                    .collect();
                    if cols.is_empty() {
                        return Err(unsupported());
                    }
                    let how = match modifier {
                        None => Like::StartsWith,
                        Some("contains") => Like::Contains,
                        Some("exact") => Like::Exact,
                        _ => return Err(unsupported()),
                    };
                    Some(
                        cols.iter()
                            .map(|c| w.like(self, c, &v, how))
                            .collect::<Vec<_>>()
                            .join(" OR "),
                    )
                }
                ("birthdate", "Patient") if f.birth_date.is_some() => {
                    no_modifier(modifier, unsupported)?;
                    let col = f.birth_date.clone().unwrap_or_default();
                    let r = DateRange::parse(&v).ok_or_else(unsupported)?;
                    Some(w.date(self, &col, None, &r))
                }
                ("date", _) => {
                    no_modifier(modifier, unsupported)?;
                    let (start, end) = match self.mapping.resource.as_str() {
                        "Observation" => (f.effective.clone(), None),
                        "DocumentReference" => (f.date.clone(), None),
                        _ => (f.start.clone(), f.end.clone()),
                    };
                    let start = start.ok_or_else(unsupported)?;
                    let r = DateRange::parse(&v).ok_or_else(unsupported)?;
                    Some(w.date(self, &start, end.as_deref(), &r))
                }
                ("gender", "Patient") => {
                    no_modifier(modifier, unsupported)?;
                    let g = f.gender.as_ref().ok_or_else(unsupported)?;
                    w.code(self, g, token(&v).1)
                }
                ("status", _) => {
                    no_modifier(modifier, unsupported)?;
                    let s = f.status.as_ref().ok_or_else(unsupported)?;
                    w.code(self, s, token(&v).1)
                }
                ("code", "Observation" | "ServiceRequest") => {
                    no_modifier(modifier, unsupported)?;
                    let c = f.code.as_ref().ok_or_else(unsupported)?;
                    w.coded(self, c, &v)
                }
                ("category", "ServiceRequest")
                    if f.social_domain.is_some() && f.category.is_none() =>
                {
                    no_modifier(modifier, unsupported)?;
                    let domain = f.social_domain.clone().unwrap_or_default();
                    let (system, code) = token(&v);
                    let hit = (system.is_none_or(|s| s == SOCIAL_DOMAIN) && code == domain)
                        || (system.is_none_or(|s| s == DATA_CATEGORY) && code == "social-domain");
                    hit.then(|| "1=1".to_owned())
                }
                ("category", "Observation" | "DocumentReference" | "ServiceRequest") => {
                    no_modifier(modifier, unsupported)?;
                    match &f.category {
                        Some(c) => w.coded(self, c, &v),
                        // Observations without a configured category are "survey" for no one:
                        // they have none, so a category search matches none of them.
                        None => None,
                    }
                }
                ("type", "EpisodeOfCare" | "DocumentReference") | ("category", "CarePlan") => {
                    no_modifier(modifier, unsupported)?;
                    match &f.kind {
                        Some(c) => w.coded(self, c, &v),
                        None => None,
                    }
                }
                _ => return Err(unsupported()),
            };
            alternatives.extend(cond);
        }
        Ok(match alternatives.len() {
            0 => None,
            1 => alternatives.pop().map(|c| format!("({c})")),
            _ => Some(format!("({})", alternatives.join(" OR "))),
        })
    }

    fn identifier(&self, w: &mut Where, value: &str) -> Option<String> {
        let f = &self.mapping.fields;
        let (system, code) = token(value);
        let mut columns: Vec<(String, String)> = f
            .identifiers
            .iter()
            .map(|i| (i.column.clone(), i.system.clone()))
            .collect();
        if let Some(b) = &f.bsn {
            columns.insert(0, (b.clone(), BSN_SYSTEM.to_owned()));
        }
        let conds: Vec<String> = columns
            .iter()
            .filter(|(_, s)| system.is_none_or(|sys| sys == s))
            .filter_map(|(c, _)| {
                if code.is_empty() {
                    Some(format!("{} IS NOT NULL", self.col(w.d, c)))
                } else {
                    w.equals(self, c, code)
                }
            })
            .collect();
        (!conds.is_empty()).then(|| conds.join(" OR "))
    }

    /// The parameters this mapping can be searched by (what the federation sends it).
    pub fn search_params(&self) -> Vec<String> {
        let f = &self.mapping.fields;
        let mut out = vec!["_id"];
        match self.mapping.resource.as_str() {
            "Patient" | "Practitioner" => {
                if f.bsn.is_some() || !f.identifiers.is_empty() {
                    out.push("identifier");
                }
                if f.name.is_some() {
                    out.extend(["family", "given", "name"]);
                }
                if f.birth_date.is_some() {
                    out.push("birthdate");
                }
                if f.gender.is_some() {
                    out.push("gender");
                }
            }
            _ => {
                out.extend(["patient", "subject"]);
                if f.status.is_some() {
                    out.push("status");
                }
                if f.effective.is_some() || f.date.is_some() || f.start.is_some() {
                    out.push("date");
                }
                if self.mapping.resource == "ServiceRequest" && !f.identifiers.is_empty() {
                    out.push("identifier");
                }
                match self.mapping.resource.as_str() {
                    "Observation" | "ServiceRequest" => out.extend(["code", "category"]),
                    "DocumentReference" => out.extend(["type", "category"]),
                    "EpisodeOfCare" => out.push("type"),
                    _ => out.push("category"),
                }
            }
        }
        out.into_iter().map(str::to_owned).collect()
    }
}

fn no_modifier(
    modifier: Option<&str>,
    unsupported: impl Fn() -> Unsupported,
) -> Result<(), Unsupported> {
    match modifier {
        None => Ok(()),
        Some(_) => Err(unsupported()),
    }
}

/// The statements of one search page.
#[derive(Debug, Clone)]
pub struct SearchSql {
    /// The page's rows, one more than asked for (to know whether a next page exists).
    pub rows: String,
    pub binds: Vec<Bind>,
    pub count: String,
    pub count_binds: Vec<Bind>,
}

/// Every column a mapping reads, the id first.
pub(crate) fn used_columns(m: &Mapping) -> Vec<String> {
    let f: &Fields = &m.fields;
    let mut out = vec![m.id.clone()];
    let singles = [
        &f.bsn,
        &f.birth_date,
        &f.phone,
        &f.email,
        &f.patient,
        &f.effective,
        &f.value_text,
        &f.performer,
        &f.note,
        &f.start,
        &f.end,
        &f.title,
        &f.description,
        &f.manager,
        &f.text,
        &f.date,
        &f.author,
    ];
    out.extend(singles.into_iter().flatten().cloned());
    out.extend(f.identifiers.iter().map(|i| i.column.clone()));
    if let Some(n) = &f.name {
        out.extend(
            [&n.family, &n.family_prefix, &n.given, &n.initials]
                .into_iter()
                .flatten()
                .cloned(),
        );
    }
    if let Some(a) = &f.address {
        out.extend(
            [
                &a.street,
                &a.house_number,
                &a.house_number_suffix,
                &a.postal_code,
                &a.city,
                &a.country,
            ]
            .into_iter()
            .flatten()
            .cloned(),
        );
    }
    for c in [&f.gender, &f.status].into_iter().flatten() {
        if let Code::Column { column, .. } = c {
            out.push(column.clone());
        }
    }
    for c in [&f.category, &f.code, &f.kind].into_iter().flatten() {
        if let Coded::Column { column, .. } = c {
            out.push(column.clone());
        }
    }
    for v in [&f.value, &f.quantity].into_iter().flatten() {
        out.push(v.column.clone());
        out.extend(v.unit_column.clone());
    }
    out.extend(f.performer_agb.clone());
    let mut seen = std::collections::BTreeSet::new();
    out.retain(|c| seen.insert(c.clone()));
    out
}

/// `system|code`, `|code`, `code` → (system, code); `None` system when none was given.
fn token(v: &str) -> (Option<&str>, &str) {
    match v.split_once('|') {
        Some((s, c)) => (Some(s), c),
        None => (None, v),
    }
}

fn split_or(value: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&',') => {
                out.last_mut().expect("one").push(',');
                chars.next();
            }
            ',' => out.push(String::new()),
            c => out.last_mut().expect("one").push(c),
        }
    }
    out
}

#[derive(Clone, Copy)]
enum Like {
    StartsWith,
    Contains,
    Exact,
}

/// A WHERE clause under construction: conditions with placeholders, and their values.
struct Where {
    d: Dialect,
    binds: Vec<Bind>,
}

impl Where {
    fn new(d: Dialect) -> Where {
        Where {
            d,
            binds: Vec::new(),
        }
    }

    fn bind(&mut self, b: Bind) -> String {
        self.binds.push(b);
        self.d.placeholder(self.binds.len())
    }

    /// A value bound as the column's kind; `None` when it cannot be one (text for an integer
    /// column matches no row, so no statement is needed).
    fn typed(&mut self, table: &Table, column: &str, value: &str) -> Option<String> {
        match table.kind(column) {
            ColumnKind::Integer => value.parse::<i64>().ok().map(|i| self.bind(Bind::Int(i))),
            ColumnKind::Date | ColumnKind::DateTime => None,
            ColumnKind::Text => Some(self.bind(Bind::Text(value.to_owned()))),
        }
    }

    fn equals(&mut self, table: &Table, column: &str, value: &str) -> Option<String> {
        self.compare(table, column, "=", value)
    }

    fn compare(&mut self, table: &Table, column: &str, op: &str, value: &str) -> Option<String> {
        let p = self.typed(table, column, value)?;
        Some(format!("{} {op} {p}", table.col(self.d, column)))
    }

    fn like(&mut self, table: &Table, column: &str, value: &str, how: Like) -> String {
        let col = table.col(self.d, column);
        if let Like::Exact = how {
            let p = self.bind(Bind::Text(value.to_owned()));
            return self.d.exact(&self.d.as_text(&col), &p);
        }
        // `!` escapes the LIKE wildcards in the value (the same in both dialects, unlike `\`).
        let escaped: String = value
            .to_lowercase()
            .chars()
            .flat_map(|c| match c {
                '!' | '%' | '_' => vec!['!', c],
                c => vec![c],
            })
            .collect();
        let pattern = match how {
            Like::Contains => format!("%{escaped}%"),
            _ => format!("{escaped}%"),
        };
        let p = self.bind(Bind::Text(pattern));
        format!("LOWER({}) LIKE {p} ESCAPE '!'", self.d.as_text(&col))
    }

    /// A column coded through a code table: the local codes whose coding matches the token.
    fn coded(&mut self, table: &Table, coded: &Coded, value: &str) -> Option<String> {
        let (system, code) = token(value);
        let matches = |c: &Coding| system.is_none_or(|s| s == c.system) && c.code == code;
        match coded {
            Coded::Fixed { fixed } => matches(fixed).then(|| "1=1".to_owned()),
            Coded::Column {
                column,
                map,
                local_system,
            } => {
                let mut locals: Vec<String> = map
                    .iter()
                    .filter(|(_, c)| matches(c))
                    .map(|(l, _)| l.clone())
                    .collect();
                if let Some(ls) = local_system
                    && system.is_none_or(|s| s == ls)
                    && !locals.iter().any(|l| l == code)
                {
                    locals.push(code.to_owned());
                }
                self.one_of(table, column, &locals)
            }
        }
    }

    /// A column whose values a table translates to a FHIR code.
    fn code(&mut self, table: &Table, c: &Code, code: &str) -> Option<String> {
        match c {
            Code::Fixed { fixed } => (fixed == code).then(|| "1=1".to_owned()),
            Code::Column { column, map } => {
                let locals: Vec<String> = map
                    .iter()
                    .filter(|(_, v)| *v == code)
                    .map(|(l, _)| l.clone())
                    .collect();
                self.one_of(table, column, &locals)
            }
        }
    }

    fn one_of(&mut self, table: &Table, column: &str, values: &[String]) -> Option<String> {
        let placeholders: Vec<String> = values
            .iter()
            .filter_map(|v| self.typed(table, column, v))
            .collect();
        (!placeholders.is_empty()).then(|| {
            format!(
                "{} IN ({})",
                table.col(self.d, column),
                placeholders.join(", ")
            )
        })
    }

    /// A date search on a column (or a period of two), per R4 search's prefixes: the stored
    /// range [low, high] against the searched range [lo, hi], both inclusive, as the gateway's
    /// own store compares them.
    fn date(&mut self, table: &Table, start: &str, end: Option<&str>, r: &DateRange) -> String {
        let d = self.d;
        let high_of = |col: &str| match table.kind(col) {
            ColumnKind::Date => d.end_of_day(&table.col(d, col)),
            _ => d.moment(&table.col(d, col)),
        };
        let low = d.moment(&table.col(d, start));
        let high = match end {
            Some(e) => format!(
                "COALESCE({}, {})",
                high_of(e),
                d.timestamp(&format!("'{}'", FAR_FUTURE))
            ),
            None => high_of(start),
        };
        let ts = |w: &mut Where, t: PrimitiveDateTime| {
            let p = w.bind(Bind::Text(sql_time(t)));
            d.timestamp(&p)
        };
        let (lo, hi) = (r.lo, r.hi);
        match r.prefix {
            "eq" => format!("{low} >= {} AND {high} <= {}", ts(self, lo), ts(self, hi)),
            "ne" => format!(
                "NOT ({low} >= {} AND {high} <= {})",
                ts(self, lo),
                ts(self, hi)
            ),
            "gt" => format!("{high} > {}", ts(self, hi)),
            "lt" => format!("{low} < {}", ts(self, lo)),
            "ge" => format!("{high} >= {}", ts(self, lo)),
            "le" => format!("{low} <= {}", ts(self, hi)),
            "sa" => format!("{low} > {}", ts(self, hi)),
            "eb" => format!("{high} < {}", ts(self, lo)),
            _ => {
                // ap: overlaps the searched range widened by a tenth of its distance from
                // now (at least a day), as the spec suggests.
                let now = crate::local_time::to_local(OffsetDateTime::now_utc());
                let distance: Duration = (now - lo).abs();
                let gap = std::cmp::max(distance / 10_i32, Duration::days(1));
                format!(
                    "{low} <= {} AND {high} >= {}",
                    ts(self, hi + gap),
                    ts(self, lo - gap)
                )
            }
        }
    }
}

const FAR_FUTURE: &str = "9999-12-31 23:59:59";

fn sql_time(t: PrimitiveDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A date search value: prefix and the range its precision covers, in Dutch wall time
/// (what the backend's columns hold).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DateRange {
    pub prefix: &'static str,
    pub lo: PrimitiveDateTime,
    pub hi: PrimitiveDateTime,
}

impl DateRange {
    pub fn parse(v: &str) -> Option<DateRange> {
        const PREFIXES: [&str; 9] = ["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"];
        let (prefix, rest) = match PREFIXES.iter().find(|p| v.starts_with(*p)) {
            Some(p) => (*p, &v[2..]),
            None => ("eq", v),
        };
        let midnight = |d: time::Date| PrimitiveDateTime::new(d, Time::MIDNIGHT);
        let last_second = |d: time::Date| {
            PrimitiveDateTime::new(d, Time::from_hms(23, 59, 59).expect("a valid time"))
        };
        let (lo, hi) = if rest.contains('T') {
            let (date, time_part) = rest.split_once('T')?;
            let date = time::Date::parse(
                date,
                time::macros::format_description!("[year]-[month]-[day]"),
            )
            .ok()?;
            // hh:mm[:ss[.fff]][Z|+hh:mm]
            let zone_at = time_part.find(['Z', '+', '-']);
            let (clock, zone) = match zone_at {
                Some(i) => (&time_part[..i], Some(&time_part[i..])),
                None => (time_part, None),
            };
            let clock = clock.split('.').next()?;
            let parts: Vec<u8> = clock
                .split(':')
                .map(|p| p.parse().ok())
                .collect::<Option<Vec<u8>>>()?;
            let (h, m, s, second_precision) = match parts[..] {
                [h, m] => (h, m, 0, false),
                [h, m, s] => (h, m, s, true),
                _ => return None,
            };
            let local = PrimitiveDateTime::new(date, Time::from_hms(h, m, s).ok()?);
            let local = match zone {
                None => local,
                Some(z) => {
                    let offset = if z == "Z" {
                        time::UtcOffset::UTC
                    } else {
                        let sign: i8 = if z.starts_with('-') { -1 } else { 1 };
                        let (oh, om) = z[1..].split_once(':')?;
                        time::UtcOffset::from_hms(
                            sign * oh.parse::<i8>().ok()?,
                            sign * om.parse::<i8>().ok()?,
                            0,
                        )
                        .ok()?
                    };
                    crate::local_time::to_local(local.assume_offset(offset))
                }
            };
            let width = if second_precision {
                Duration::ZERO
            } else {
                Duration::seconds(59)
            };
            (local, local + width)
        } else {
            let parts: Vec<&str> = rest.split('-').collect();
            let year: i32 = parts.first()?.parse().ok()?;
            if parts[0].len() != 4 {
                return None;
            }
            match parts[..] {
                [_] => (
                    midnight(time::Date::from_calendar_date(year, Month::January, 1).ok()?),
                    last_second(time::Date::from_calendar_date(year, Month::December, 31).ok()?),
                ),
                [_, m] => {
                    let month = Month::try_from(m.parse::<u8>().ok()?).ok()?;
                    let first = crate::local_time::first_of(year, month)?;
                    let next = if month == Month::December {
                        crate::local_time::first_of(year + 1, Month::January)?
                    } else {
                        crate::local_time::first_of(year, month.next())?
                    };
                    (midnight(first), last_second(next.previous_day()?))
                }
                [_, _, _] => {
                    let d = time::Date::parse(
                        rest,
                        time::macros::format_description!("[year]-[month]-[day]"),
                    )
                    .ok()?;
                    (midnight(d), last_second(d))
                }
                _ => return None,
            }
        };
        Some(DateRange { prefix, lo, hi })
    }
}

/// One row, its values by the mapping's column names.
pub struct Row<'a> {
    table: &'a Table,
    values: &'a [Option<String>],
}

impl<'a> Row<'a> {
    pub fn new(table: &'a Table, values: &'a [Option<String>]) -> Row<'a> {
        Row { table, values }
    }

    /// The trimmed, non-empty text of a mapping column.
    fn get(&self, column: &str) -> Option<&'a str> {
        let spelled = self.table.spelled(column);
        let i = self.table.columns.iter().position(|c| c == spelled)?;
        self.values
            .get(i)?
            .as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
    }

    fn opt(&self, column: &Option<String>) -> Option<String> {
        column
            .as_deref()
            .and_then(|c| self.get(c))
            .map(str::to_owned)
    }

    pub fn id(&self) -> Option<&'a str> {
        self.get(&self.table.mapping.id)
    }
}

/// What mapping one row gave: the resource (JSON, from the typed model) and what was wrong
/// with the row but did not stop it (for the page's warnings and the operator's log).
pub struct Built {
    pub resource: Value,
    pub warnings: Vec<String>,
}

/// Builds the resource of one row, in the namespace of `adapter`.
pub fn build(
    row: &Row,
    adapter: &str,
    source: &str,
    holder: &crate::Organization,
) -> Result<Built, String> {
    let m = &row.table.mapping;
    let backend_id = row.id().ok_or("a row without an id")?;
    let id = namespace::outward(adapter, backend_id)
        .ok_or_else(|| format!("id {backend_id:?} cannot be a FHIR id"))?;
    let mut b = Builder {
        row,
        adapter,
        holder,
        warnings: Vec::new(),
    };
    let meta = fhir_sdk::r4b::types::Meta::builder()
        .source(source.to_owned())
        .build()
        .map_err(|e| e.to_string())?;
    let resource = match m.resource.as_str() {
        "Patient" => serde_json::to_value(b.patient(id, meta)?),
        "Practitioner" => serde_json::to_value(b.practitioner(id, meta)?),
        "Observation" => serde_json::to_value(b.observation(id, meta)?),
        "EpisodeOfCare" => serde_json::to_value(b.episode(id, meta)?),
        "CarePlan" => serde_json::to_value(b.care_plan(id, meta)?),
        "DocumentReference" => serde_json::to_value(b.document(id, meta)?),
        "ServiceRequest" => serde_json::to_value(b.service_request(id, meta)?),
        other => return Err(format!("cannot map {other}")),
    }
    .map_err(|e| e.to_string())?;
    Ok(Built {
        resource,
        warnings: b.warnings,
    })
}

/// The resources of rows (SQL rows, or REST items flattened into rows) from the backend
/// (`adapter` name, `meta.source`, holder). A row that cannot be mapped is left out and said in
/// `warnings` (and the log), never passed on half-built.
pub fn resources(
    table: &Table,
    rows: &[&[Option<String>]],
    (adapter, source, holder): (&str, &str, &crate::Organization),
    warnings: &mut Vec<String>,
) -> Vec<Value> {
    let mut out = Vec::new();
    for values in rows {
        let row = Row::new(table, values);
        match build(&row, adapter, source, holder) {
            Ok(built) => {
                for w in &built.warnings {
                    tracing::warn!(backend = adapter, "{w}");
                }
                warnings.extend(built.warnings);
                out.push(built.resource);
            }
            Err(e) => {
                tracing::warn!(backend = adapter, row = ?row.id(), error = %e, "row not mapped");
                warnings.push(format!(
                    "backend {adapter}: a {} row could not be mapped and is left out",
                    table.mapping.resource
                ));
            }
        }
    }
    out
}

struct Builder<'r, 'a> {
    row: &'r Row<'a>,
    adapter: &'r str,
    holder: &'r crate::Organization,
    warnings: Vec<String>,
}

impl Builder<'_, '_> {
    fn f(&self) -> &Fields {
        &self.row.table.mapping.fields
    }

    fn reference(&self, ty: &str, column: &Option<String>) -> Option<Reference> {
        let backend = self.row.opt(column)?;
        let id = namespace::outward(self.adapter, &backend)?;
        Reference::builder()
            .reference(format!("{ty}/{id}"))
            .build()
            .ok()
    }

    fn identifiers(&mut self) -> Vec<Option<Identifier>> {
        let mut out = Vec::new();
        if let Some(bsn) = self.row.opt(&self.f().bsn) {
            if crate::hl7v2::mapping::eleven_proof(&bsn) {
                out.extend(
                    Identifier::builder()
                        .system(BSN_SYSTEM.to_owned())
                        .value(bsn)
                        .build()
                        .ok(),
                );
            } else {
                // Never pass on a number that is not a BSN as one: consent and linking key on it.
                self.warnings.push(format!(
                    "{} {}: its BSN fails the 11-proof and is left out",
                    self.row.table.mapping.resource,
                    self.row.id().unwrap_or_default()
                ));
            }
        }
        for i in &self.f().identifiers {
            if let Some(v) = self.row.get(&i.column) {
                out.extend(
                    Identifier::builder()
                        .system(i.system.clone())
                        .value(v.to_owned())
                        .build()
                        .ok(),
                );
            }
        }
        out.into_iter().map(Some).collect()
    }

    fn name(&self) -> Vec<Option<fhir_sdk::r4b::types::HumanName>> {
        let Some(n) = &self.f().name else {
            return Vec::new();
        };
        let parts = crate::nl_core::NameParts {
            family: self.row.opt(&n.family),
            prefix: self.row.opt(&n.family_prefix),
            given: self
                .row
                .opt(&n.given)
                .map(|g| g.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default(),
            initials: self.row.opt(&n.initials),
        };
        crate::nl_core::human_name(&parts)
            .map(Some)
            .into_iter()
            .collect()
    }

    fn telecom(&self) -> Vec<Option<ContactPoint>> {
        [
            (&self.f().phone, ContactPointSystem::Phone),
            (&self.f().email, ContactPointSystem::Email),
        ]
        .into_iter()
        .filter_map(|(col, system)| {
            let v = self.row.opt(col)?;
            ContactPoint::builder().system(system).value(v).build().ok()
        })
        .map(Some)
        .collect()
    }

    /// A mapped code: fixed, or the column's value through the table; `None` (with a warning)
    /// for a local value the table does not know.
    fn code_text(&mut self, c: &Option<Code>, what: &str) -> Option<String> {
        match c.as_ref()? {
            Code::Fixed { fixed } => Some(fixed.clone()),
            Code::Column { column, map } => {
                let local = self.row.get(column)?;
                let mapped = map.get(local).cloned();
                if mapped.is_none() {
                    self.warnings.push(format!(
                        "{} {}: {what} {local:?} is not in the mapping's table",
                        self.row.table.mapping.resource,
                        self.row.id().unwrap_or_default()
                    ));
                }
                mapped
            }
        }
    }

    fn concept(&mut self, c: &Option<Coded>) -> Option<CodeableConcept> {
        let coding = |c: &Coding| {
            let mut b = FhirCoding::builder()
                .system(c.system.clone())
                .code(c.code.clone());
            if let Some(d) = &c.display {
                b = b.display(d.clone());
            }
            b.build().ok()
        };
        let (codings, text) = match c.as_ref()? {
            Coded::Fixed { fixed } => (vec![coding(fixed)], fixed.display.clone()),
            Coded::Column {
                column,
                map,
                local_system,
            } => {
                let local = self.row.get(column)?;
                let mut codings = Vec::new();
                let mapped = map.get(local);
                codings.extend(mapped.map(coding));
                if let Some(ls) = local_system {
                    codings.push(coding(&Coding {
                        system: ls.clone(),
                        code: local.to_owned(),
                        display: None,
                    }));
                }
                if mapped.is_none() {
                    self.warnings.push(format!(
                        "{} {}: code {local:?} is not in the mapping's code table",
                        self.row.table.mapping.resource,
                        self.row.id().unwrap_or_default()
                    ));
                }
                (
                    codings,
                    mapped
                        .and_then(|m| m.display.clone())
                        .or(Some(local.to_owned())),
                )
            }
        };
        let mut b = CodeableConcept::builder().coding(codings);
        if let Some(t) = text {
            b = b.text(t);
        }
        b.build().ok()
    }

    fn patient(&mut self, id: String, meta: fhir_sdk::r4b::types::Meta) -> Result<Patient, String> {
        let gender = self
            .code_text(&self.f().gender.clone(), "gender")
            .and_then(|g| AdministrativeGender::from_str(&g).ok());
        let address = self.f().address.clone().and_then(|a| {
            crate::nl_core::address(&crate::nl_core::AddressParts {
                street: self.row.opt(&a.street),
                house_number: self.row.opt(&a.house_number),
                suffix: self.row.opt(&a.house_number_suffix),
                postal_code: self.row.opt(&a.postal_code),
                city: self.row.opt(&a.city),
                country: self.row.opt(&a.country),
            })
        });
        let mut b = Patient::builder()
            .id(id)
            .meta(meta)
            .identifier(self.identifiers())
            .name(self.name())
            .telecom(self.telecom())
            .address(address.into_iter().map(Some).collect());
        if let Some(g) = gender {
            b = b.gender(g);
        }
        if let Some(d) = self.date(&self.f().birth_date.clone()) {
            b = b.birth_date(d);
        }
        b.build().map_err(|e| e.to_string())
    }

    fn practitioner(
        &mut self,
        id: String,
        meta: fhir_sdk::r4b::types::Meta,
    ) -> Result<Practitioner, String> {
        Practitioner::builder()
            .id(id)
            .meta(meta)
            .identifier(self.identifiers())
            .name(self.name())
            .telecom(self.telecom())
            .build()
            .map_err(|e| e.to_string())
    }

    fn observation(
        &mut self,
        id: String,
        meta: fhir_sdk::r4b::types::Meta,
    ) -> Result<Observation, String> {
        let f = self.f().clone();
        let status = match &f.status {
            Some(_) => self.code_text(&f.status, "status"),
            None => Some("final".to_owned()),
        }
        .and_then(|s| ObservationStatus::from_str(&s).ok())
        .ok_or("an Observation without a valid status")?;
        let code = self
            .concept(&f.code)
            .ok_or("an Observation without a code")?;
        let mut b = Observation::builder()
            .id(id)
            .meta(meta)
            .status(status)
            .code(code)
            .category(self.concept(&f.category).map(Some).into_iter().collect());
        if let Some(s) = self.reference("Patient", &f.patient) {
            b = b.subject(s);
        }
        if let Some(t) = self.date_time(&f.effective) {
            b = b.effective(ObservationEffective::DateTime(t));
        }
        if let Some(v) = &f.value
            && let Some(text) = self.row.get(&v.column)
        {
            let number: f64 = text
                .parse()
                .map_err(|_| format!("value {text:?} is not a number"))?;
            let unit = v.unit.clone().or_else(|| self.row.opt(&v.unit_column));
            let mut q = Quantity::builder().value(number);
            if let Some(u) = unit {
                q = q.unit(u.clone());
                if v.ucum {
                    q = q.system(UCUM.to_owned()).code(u);
                }
            }
            b = b.value(ObservationValue::Quantity(
                q.build().map_err(|e| e.to_string())?,
            ));
        } else if let Some(t) = self.row.opt(&f.value_text) {
            b = b.value(ObservationValue::String(t));
        }
        if let Some(p) = self.reference("Practitioner", &f.performer) {
            b = b.performer(vec![Some(p)]);
        }
        if let Some(n) = self.row.opt(&f.note) {
            b = b.note(vec![Annotation::builder().text(n).build().ok()]);
        }
        b.build().map_err(|e| e.to_string())
    }

    fn period(&self) -> Option<Period> {
        let f = self.f();
        let (start, end) = (self.date_time(&f.start), self.date_time(&f.end));
        if start.is_none() && end.is_none() {
            return None;
        }
        let mut b = Period::builder();
        if let Some(s) = start {
            b = b.start(s);
        }
        if let Some(e) = end {
            b = b.end(e);
        }
        b.build().ok()
    }

    fn episode(
        &mut self,
        id: String,
        meta: fhir_sdk::r4b::types::Meta,
    ) -> Result<EpisodeOfCare, String> {
        let f = self.f().clone();
        let status = self
            .code_text(&f.status, "status")
            .and_then(|s| EpisodeOfCareStatus::from_str(&s).ok())
            .ok_or("an EpisodeOfCare without a valid status")?;
        let patient = self
            .reference("Patient", &f.patient)
            .ok_or("an EpisodeOfCare without a patient")?;
        let mut b = EpisodeOfCare::builder()
            .id(id)
            .meta(meta)
            .status(status)
            .patient(patient)
            .r#type(self.concept(&f.kind).map(Some).into_iter().collect());
        if let Some(p) = self.period() {
            b = b.period(p);
        }
        if let Some(m) = self.reference("Practitioner", &f.manager) {
            b = b.care_manager(m);
        }
        b.build().map_err(|e| e.to_string())
    }

    fn care_plan(
        &mut self,
        id: String,
        meta: fhir_sdk::r4b::types::Meta,
    ) -> Result<CarePlan, String> {
        let f = self.f().clone();
        let status = self
            .code_text(&f.status, "status")
            .and_then(|s| RequestStatus::from_str(&s).ok())
            .ok_or("a CarePlan without a valid status")?;
        let patient = self
            .reference("Patient", &f.patient)
            .ok_or("a CarePlan without a patient")?;
        let mut b = CarePlan::builder()
            .id(id)
            .meta(meta)
            .status(status)
            .intent("plan".to_owned())
            .subject(patient)
            .category(self.concept(&f.kind).map(Some).into_iter().collect());
        if let Some(t) = self.row.opt(&f.title) {
            b = b.title(t);
        }
        if let Some(d) = self.row.opt(&f.description) {
            b = b.description(d);
        }
        if let Some(p) = self.period() {
            b = b.period(p);
        }
        if let Some(a) = self.reference("Practitioner", &f.manager) {
            b = b.author(a);
        }
        b.build().map_err(|e| e.to_string())
    }

    fn document(
        &mut self,
        id: String,
        meta: fhir_sdk::r4b::types::Meta,
    ) -> Result<DocumentReference, String> {
        let f = self.f().clone();
        let text = self.row.opt(&f.text).ok_or("a report without text")?;
        let mut attachment = Attachment::builder()
            .content_type("text/plain; charset=utf-8".to_owned())
            .data(Base64Binary(text.into_bytes()));
        if let Some(t) = self.row.opt(&f.title) {
            attachment = attachment.title(t);
        }
        let content = DocumentReferenceContent::builder()
            .attachment(attachment.build().map_err(|e| e.to_string())?)
            .build()
            .map_err(|e| e.to_string())?;
        let mut b = DocumentReference::builder()
            .id(id)
            .meta(meta)
            .status(DocumentReferenceStatus::Current)
            .content(vec![Some(content)])
            .category(self.concept(&f.category).map(Some).into_iter().collect());
        if let Some(t) = self.concept(&f.kind) {
            b = b.r#type(t);
        }
        if let Some(s) = self.reference("Patient", &f.patient) {
            b = b.subject(s);
        }
        if let Some(DateTime::DateTime(i)) = self.date_time(&f.date) {
            b = b.date(i);
        }
        if let Some(a) = self.reference("Practitioner", &f.author) {
            b = b.author(vec![Some(a)]);
        }
        b.build().map_err(|e| e.to_string())
    }

    /// A social-domain allocation (a municipality's case-management system): requested by the
    /// municipality that holds it, performed by the provider its AGB code names.
    fn service_request(
        &mut self,
        id: String,
        meta: fhir_sdk::r4b::types::Meta,
    ) -> Result<ServiceRequest, String> {
        let f = self.f().clone();
        let status = match &f.status {
            Some(_) => self.code_text(&f.status, "status"),
            None => Some("active".to_owned()),
        }
        .and_then(|s| RequestStatus::from_str(&s).ok())
        .ok_or("a ServiceRequest without a valid status")?;
        let patient = self
            .reference("Patient", &f.patient)
            .ok_or("a ServiceRequest without a patient")?;
        let mut categories: Vec<Option<CodeableConcept>> =
            self.concept(&f.category).map(Some).into_iter().collect();
        if let Some(domain) = &f.social_domain {
            let display = if domain == "wmo" {
                "Wmo 2015"
            } else {
                "Jeugdwet"
            };
            let coding = |system: &str, code: &str, display: Option<&str>| {
                let mut c = FhirCoding::builder()
                    .system(system.to_owned())
                    .code(code.to_owned());
                if let Some(d) = display {
                    c = c.display(d.to_owned());
                }
                c.build().ok()
            };
            categories.push(
                CodeableConcept::builder()
                    .coding(vec![
                        coding(SOCIAL_DOMAIN, domain, Some(display)),
                        coding(DATA_CATEGORY, "social-domain", None),
                    ])
                    .build()
                    .ok(),
            );
        }
        let requester = Reference::builder()
            .identifier(
                Identifier::builder()
                    .system(self.holder.system.clone())
                    .value(self.holder.value.clone())
                    .build()
                    .map_err(|e| e.to_string())?,
            )
            .display(self.holder.name.clone())
            .build()
            .map_err(|e| e.to_string())?;
        let mut b = ServiceRequest::builder()
            .id(id)
            .meta(meta)
            .identifier(self.identifiers())
            .status(status)
            .intent(RequestIntent::Order)
            .category(categories)
            .subject(patient)
            .requester(requester);
        if let Some(c) = self.concept(&f.code) {
            b = b.code(c);
        }
        if let Some(p) = self.period() {
            b = b.occurrence(ServiceRequestOccurrence::Period(p));
        }
        if let Some(agb) = self.row.opt(&f.performer_agb) {
            let performer = Reference::builder()
                .identifier(
                    Identifier::builder()
                        .system(AGB_SYSTEM.to_owned())
                        .value(agb)
                        .build()
                        .map_err(|e| e.to_string())?,
                )
                .build()
                .map_err(|e| e.to_string())?;
            b = b.performer(vec![Some(performer)]);
        }
        if let Some(q) = &f.quantity
            && let Some(text) = self.row.get(&q.column)
        {
            let number: f64 = text
                .parse()
                .map_err(|_| format!("quantity {text:?} is not a number"))?;
            let mut quantity = Quantity::builder().value(number);
            if let Some(u) = q.unit.clone().or_else(|| self.row.opt(&q.unit_column)) {
                quantity = quantity.unit(u.clone());
                if q.ucum {
                    quantity = quantity.system(UCUM.to_owned()).code(u);
                }
            }
            b = b.quantity(ServiceRequestQuantity::Quantity(
                quantity.build().map_err(|e| e.to_string())?,
            ));
        }
        if let Some(n) = self.row.opt(&f.note) {
            b = b.note(vec![Annotation::builder().text(n).build().ok()]);
        }
        b.build().map_err(|e| e.to_string())
    }

    fn date(&self, column: &Option<String>) -> Option<Date> {
        let v = self.row.opt(column)?;
        Date::from_str(v.get(..10)?).ok()
    }

    /// A column's date or date-time (`YYYY-MM-DD[ HH:MM:SS[.f][+zz]]`, Dutch wall time when
    /// it has no offset) as a FHIR dateTime; a DATE column stays a date.
    fn date_time(&self, column: &Option<String>) -> Option<DateTime> {
        let v = self.row.opt(column)?;
        if v.len() == 10 {
            return Date::from_str(&v).ok().map(DateTime::Date);
        }
        let (date, rest) = (v.get(..10)?, v.get(11..)?);
        let clock = rest.get(..8)?;
        let local = PrimitiveDateTime::parse(
            &format!("{date} {clock}"),
            time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]"),
        )
        .ok()?;
        let zone = rest[8..].trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
        let instant = if zone.is_empty() {
            crate::local_time::from_local(local)
        } else if zone == "Z" {
            local.assume_utc()
        } else {
            let sign: i8 = if zone.starts_with('-') { -1 } else { 1 };
            let digits: Vec<&str> = zone[1..].split(':').collect();
            let h: i8 = digits.first()?.parse().ok()?;
            let m: i8 = digits.get(1).map(|m| m.parse().unwrap_or(0)).unwrap_or(0);
            local.assume_offset(time::UtcOffset::from_hms(sign * h, sign * m, 0).ok()?)
        };
        Some(DateTime::DateTime(Instant(instant)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn date_ranges_follow_precision_and_zone() {
        let r = DateRange::parse("2024").unwrap();
        assert_eq!(
            (r.prefix, r.lo, r.hi),
            (
                "eq",
                datetime!(2024-01-01 00:00),
                datetime!(2024-12-31 23:59:59)
            )
        );
        let r = DateRange::parse("ge2024-02").unwrap();
        assert_eq!(
            (r.prefix, r.lo, r.hi),
            (
                "ge",
                datetime!(2024-02-01 00:00),
                datetime!(2024-02-29 23:59:59)
            )
        );
        let r = DateRange::parse("lt2024-07-01T10:00:00Z").unwrap();
        assert_eq!(
            (r.prefix, r.lo),
            ("lt", datetime!(2024-07-01 12:00)),
            "UTC to Dutch summer time"
        );
        let r = DateRange::parse("2024-01-05T10:00").unwrap();
        assert_eq!(
            (r.lo, r.hi),
            (datetime!(2024-01-05 10:00), datetime!(2024-01-05 10:00:59))
        );
        for bad in [
            "",
            "x",
            "20240101",
            "2024-13",
            "2024-02-30",
            "ge",
            "2024-01-01T25:00",
            "2024-01-01T10:00+ab:00",
        ] {
            assert_eq!(DateRange::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn or_values_split_on_unescaped_commas() {
        assert_eq!(split_or("a,b\\,c"), vec!["a", "b,c"]);
        assert_eq!(
            token("http://loinc.org|8480-6"),
            (Some("http://loinc.org"), "8480-6")
        );
        assert_eq!(token("8480-6"), (None, "8480-6"));
    }
}
