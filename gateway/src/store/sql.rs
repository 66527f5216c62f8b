//! SQL text shared by the relational backends. Statements are built from fixed fragments and
//! placeholders only; every value a client sent travels as a bound parameter, in order. Each
//! backend binds them with its own driver (see `Bind`).

use crate::fhir::operation::{ALL_TYPES, History, HistoryScope, Search};
use crate::fhir::search::{
    Clause, ClauseKind, Criteria, FullText, Pred, Prefix, Second, SortBy, SortKey,
};
use crate::fhir::search_index::Entry;
use crate::store::to_millis;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Bind {
    Text(String),
    Int(i64),
    Bytes(Option<Vec<u8>>),
    Real(f64),
    NullableReal(Option<f64>),
}

/// A statement and its parameters.
#[derive(Debug, Clone)]
pub struct Sql {
    dialect: Dialect,
    pub text: String,
    pub binds: Vec<Bind>,
    /// The statement's best plan is the same whatever values are bound (a point read by key, a
    /// search that starts from one resource's or patient's index rows and tests its other
    /// conditions row by row, see [`search`]), so PostgreSQL may plan it once per connection and
    /// reuse that plan (`PostgresStore`'s generic pool). Every other statement is planned for
    /// its values on each run.
    pub generic: bool,
}

/// The columns of a version row, in the order `row_to_stored` reads them; `seq` last.
pub const VERSION_COLUMNS: &str =
    "SELECT v.type, v.id, v.version, v.last_updated, v.method, v.body, v.seq FROM ";

/// Current resources joined to their current version.
const CURRENT_FROM: &str = "resource_current c JOIN resource_version v ON v.seq = c.seq";

impl Sql {
    pub fn new(dialect: Dialect, text: &str) -> Sql {
        Sql {
            dialect,
            text: text.to_owned(),
            binds: Vec::new(),
            generic: false,
        }
    }

    /// Marks the statement as one whose plan does not depend on its values (see [`Sql::generic`]).
    fn planned_once(mut self) -> Sql {
        self.generic = true;
        self
    }

    /// Closes an `EXISTS (SELECT ...` that tests one resource. In a statement planned once, with
    /// `OFFSET 0`, which keeps PostgreSQL from turning the test into a join: it stays a probe of
    /// the index per resource the search's driver names. As a join, a plan made without the
    /// values could start from the condition instead (every laboratory Observation, 52,000 rows,
    /// 1 s, for one patient's 34).
    fn close_exists(&mut self) -> &mut Sql {
        if self.generic {
            self.push(" OFFSET 0");
        }
        self.push(")")
    }

    pub fn push(&mut self, fragment: &str) -> &mut Sql {
        self.text.push_str(fragment);
        self
    }

    pub fn bind(&mut self, b: Bind) -> &mut Sql {
        self.binds.push(b);
        match self.dialect {
            Dialect::Sqlite => self.text.push('?'),
            Dialect::Postgres => self.text.push_str(&format!("${}", self.binds.len())),
        }
        self
    }

    pub fn text(&mut self, v: &str) -> &mut Sql {
        self.bind(Bind::Text(v.to_owned()))
    }

    pub fn int(&mut self, v: i64) -> &mut Sql {
        self.bind(Bind::Int(v))
    }

    /// An integer of the gateway's own (a row limit) written into the text, not bound. SQLite
    /// (the bundled 3.51) plans with the value of a bound `LIMIT ?`, and so marks the statement
    /// to be prepared again whenever that parameter is bound, i.e. on every execution: 4 % of a
    /// search's CPU and 3 % of the writer thread's went to re-preparing. A literal keeps the
    /// cached plan; the few distinct limits (a page size plus one) each get their own.
    pub fn literal_int(&mut self, v: i64) -> &mut Sql {
        self.push(&v.to_string())
    }
}

/// `AND (...)` for each criterion; `c` is the alias of `resource_current`.
fn push_criteria(q: &mut Sql, criteria: &Criteria, driver: Option<Driver>) {
    for f in &criteria.fulltext {
        push_fulltext(q, f);
    }
    for ors in &criteria.ids {
        q.push(" AND c.id IN (");
        for (i, id) in ors.iter().enumerate() {
            if i > 0 {
                q.push(", ");
            }
            q.text(id);
        }
        q.push(")");
    }
    for (n, ors) in criteria.identifiers.iter().enumerate() {
        if driver == Some(Driver::Identifiers(n)) {
            continue;
        }
        q.push(" AND EXISTS (SELECT 1 FROM search_index t WHERE");
        push_same_resource(q, "t", "c");
        q.push(" AND t.param = 'identifier' AND (");
        push_identifier_tokens(q, ors);
        q.push(")").close_exists();
    }
}

/// ` s.rid = c.rid`: the index rows `s` of the resource `c`. On PostgreSQL also `s.type =
/// c.type`, as before resources had a key: its planner turns these EXISTS into semi-joins from
/// its statistics and reaches the value and range indexes, which start with the type, only with
/// it (a `_has` whose inner condition lacked it scanned the whole index: 26 -> 105 ms over
/// 90,000 resources). SQLite probes the owner index per resource (see its migrations), which
/// the key alone reaches.
fn push_same_resource(q: &mut Sql, s: &str, c: &str) {
    q.push(" ").push(s).push(".rid = ").push(c).push(".rid");
    if q.dialect == Dialect::Postgres {
        q.push(" AND ")
            .push(s)
            .push(".type = ")
            .push(c)
            .push(".type");
    }
}

/// `(t.value = ? AND t.system = ?) OR ...` for identifier tokens.
fn push_identifier_tokens(q: &mut Sql, ors: &[crate::fhir::search::Token]) {
    {
        for (i, tok) in ors.iter().enumerate() {
            if i > 0 {
                q.push(" OR ");
            }
            q.push("(1=1");
            if let Some(v) = &tok.value {
                q.push(" AND t.value = ").text(v);
            }
            if let Some(s) = &tok.system {
                q.push(" AND t.system = ").text(s);
            }
            q.push(")");
        }
    }
}

/// The resource types a condition on index rows is about: which rows hold a parameter's values
/// depends on the type (see [`push_param`]).
#[derive(Clone, Copy)]
enum Scope<'a> {
    One(&'a str),
    Some(&'a [String]),
    Any,
}

impl<'a> Scope<'a> {
    /// A search's: its type, or the `_type` list of a search across types.
    fn of(ty: &'a str, criteria: &'a Criteria) -> Scope<'a> {
        if ty != ALL_TYPES {
            Scope::One(ty)
        } else if !criteria.types.is_empty() {
            Scope::Some(&criteria.types)
        } else {
            Scope::Any
        }
    }
}

/// `<s>.param = 'code'`, or, where rows of narrower parameters stand for the code's own (a
/// Patient's `name` rows that are its `family` rows are stored once, as `family`:
/// `search_params::aliases`), `<s>.param IN ('name', 'family', 'given')`; a scope over types
/// that differ in this reads the narrower rows only on the types where they count.
fn push_param(q: &mut Sql, s: &str, code: &str, scope: Scope) {
    use crate::fhir::search_params::{aliases, types_aliasing};
    let types: Vec<&str> = match scope {
        Scope::One(t) => vec![t],
        Scope::Some(ts) => ts.iter().map(String::as_str).collect(),
        Scope::Any => types_aliasing(code),
    };
    let first = types.first().map_or(&[][..], |t| aliases(t, code));
    let uniform = !matches!(scope, Scope::Any) && types.iter().all(|t| aliases(t, code) == first);
    q.push(" ");
    if uniform && first.is_empty() || types.is_empty() {
        q.push(s).push(".param = ").text(code);
        return;
    }
    if uniform {
        q.push(s).push(".param IN (").text(code);
        for a in first {
            q.push(", ").text(a);
        }
        q.push(")");
        return;
    }
    q.push("(").push(s).push(".param = ").text(code);
    for t in types.iter().filter(|t| !aliases(t, code).is_empty()) {
        q.push(" OR (").push(s).push(".type = ").text(t);
        q.push(" AND ").push(s).push(".param IN (");
        for (i, a) in aliases(t, code).iter().enumerate() {
            if i > 0 {
                q.push(", ");
            }
            q.text(a);
        }
        q.push("))");
    }
    q.push(")");
}

/// `AND [NOT] EXISTS (rows of the parameter matching any alternative)` per indexed clause.
fn push_clauses(q: &mut Sql, criteria: &Criteria, driver: Option<Driver>, scope: Scope) {
    for (n, clause) in criteria.clauses.iter().enumerate() {
        if driver != Some(Driver::Clause(n)) {
            push_clause(q, clause, "c", 1, scope);
        }
    }
}

/// One clause on the resource aliased `c` (`resource_current`). Chains and `_has` nest a
/// subquery over another `resource_current` alias (`c1`, `c2`, ...); each EXISTS has its own
/// `search_index s`, so predicates always mean the innermost one.
fn push_clause(q: &mut Sql, clause: &Clause, c: &str, depth: usize, scope: Scope) {
    let inner_alias = format!("c{depth}");
    let index_rows = |q: &mut Sql| {
        q.push(" (SELECT 1 FROM search_index s WHERE");
        push_same_resource(q, "s", c);
        q.push(" AND");
        push_param(q, "s", &clause.param, scope);
    };
    let (negate, preds): (bool, &[Pred]) = match &clause.how {
        ClauseKind::Any(p) => (false, p),
        ClauseKind::None(p) => (true, p),
        ClauseKind::Missing(missing) => (*missing, &[]),
        ClauseKind::Chain { targets, inner } => {
            q.push(" AND EXISTS");
            index_rows(q);
            let n = inner_alias.as_str();
            q.push(" AND s.value IN (SELECT ")
                .push(n)
                .push(".type || '/' || ")
                .push(n)
                .push(".id FROM resource_current ")
                .push(n)
                .push(" WHERE ")
                .push(n)
                .push(".deleted = 0 AND ")
                .push(n)
                .push(".type IN (");
            for (i, t) in targets.iter().enumerate() {
                if i > 0 {
                    q.push(", ");
                }
                q.text(t);
            }
            q.push(")");
            push_clause(q, inner, n, depth + 1, Scope::Some(targets));
            q.push("))");
            return;
        }
        ClauseKind::Has { ty, inner } => {
            let n = inner_alias.as_str();
            q.push(" AND EXISTS (SELECT 1 FROM resource_current ")
                .push(n)
                .push(" JOIN search_index s ON s.rid = ")
                .push(n)
                .push(".rid WHERE ")
                .push(n)
                .push(".deleted = 0 AND ")
                .push(n)
                .push(".type = ")
                .text(ty)
                // The type again on the index row, which the value index starts with (the join
                // on the key does not carry it over).
                .push(" AND s.type = ")
                .text(ty)
                .push(" AND");
            push_param(q, "s", &clause.param, Scope::One(ty));
            q.push(" AND s.value = ")
                .push(c)
                .push(".type || '/' || ")
                .push(c)
                .push(".id");
            push_clause(q, inner, n, depth + 1, Scope::One(ty));
            q.push(")");
            return;
        }
    };
    q.push(if negate {
        " AND NOT EXISTS"
    } else {
        " AND EXISTS"
    });
    index_rows(q);
    if !preds.is_empty() {
        q.push(" AND (");
        for (i, p) in preds.iter().enumerate() {
            if i > 0 {
                q.push(" OR ");
            }
            q.push("(");
            push_pred(q, p);
            q.push(")");
        }
        q.push(")");
    }
    q.close_exists();
}

/// A schema migration of both stores. Identifier searches read the search index's `identifier`
/// rows, which held the same (type, param, value, id, system) entries as `token_index`: a write
/// kept both, and each of an HL7 message's commits wrote ~14 of its ~124 pages for the copy.
/// Resources of a type without an `identifier` search parameter keep theirs, moved over.
pub const DROP_TOKEN_INDEX: &str = r#"
INSERT INTO search_index (type, id, param, system, value, raw)
SELECT t.type, t.id, 'identifier', t.system, t.value, ''
FROM token_index t
WHERE NOT EXISTS (
    SELECT 1 FROM search_index s WHERE s.type = t.type AND s.id = t.id AND s.param = 'identifier'
);
DROP TABLE token_index;
"#;

/// LIKE patterns escape their own wildcards; a backslash is the escape character in both dialects.
fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// `s.value LIKE pattern ESCAPE '\'`.
fn push_like(q: &mut Sql, column: &str, pattern: String) {
    q.push(column)
        .push(" LIKE ")
        .text(&pattern)
        .push(" ESCAPE '\\'");
}

fn push_pred(q: &mut Sql, p: &Pred) {
    match p {
        Pred::StartsWith(v) => push_like(q, "s.value", format!("{}%", like_escape(v))),
        Pred::Contains(v) => push_like(q, "s.value", format!("%{}%", like_escape(v))),
        Pred::Exact(v) => {
            q.push("s.raw = ").text(v);
        }
        Pred::Token(t) | Pred::RefIdentifier(t) => {
            let column = if matches!(p, Pred::Token(_)) {
                "s.value"
            } else {
                "s.raw"
            };
            q.push("1=1");
            if let Some(v) = &t.value {
                q.push(" AND ").push(column).push(" = ").text(v);
            }
            if let Some(sys) = &t.system {
                q.push(" AND s.system = ").text(sys);
            }
        }
        Pred::Text(v) => push_like(q, "s.raw", format!("%{}%", like_escape(v))),
        Pred::Reference(forms) => {
            q.push("s.value IN (");
            for (i, f) in forms.iter().enumerate() {
                if i > 0 {
                    q.push(", ");
                }
                q.text(f);
            }
            q.push(")");
        }
        Pred::Range(prefix, lo, hi) => push_range(q, *prefix, *lo, *hi),
        Pred::Quantity(prefix, lo, hi, system, code) => {
            push_range(q, *prefix, *lo, *hi);
            if let Some(sys) = system {
                q.push(" AND s.system = ").text(sys);
            }
            if let Some(code) = code {
                // The code, or the unit as written when the quantity has no code.
                q.push(" AND (s.value = ")
                    .text(code)
                    .push(" OR (s.value = '' AND s.raw = ")
                    .text(code)
                    .push("))");
            }
        }
        Pred::Uri(v) => {
            q.push("s.value = ").text(v);
        }
        Pred::OfType(t) => {
            q.push("s.system = ")
                .text(t.system.as_deref().unwrap_or_default())
                .push(" AND s.value = ")
                .text(t.value.as_deref().unwrap_or_default());
        }
        Pred::Composite(first, second) => {
            push_pred(q, first);
            q.push(" AND ");
            match second {
                Second::Token(t) => push_raw_token(q, t.system.as_deref(), t.value.as_deref()),
                Second::String(v) => push_like(q, "s.raw", format!("{}%", like_escape(v))),
                Second::Range(prefix, lo, hi) => push_range(q, *prefix, *lo, *hi),
                Second::Quantity(prefix, lo, hi, system, code) => {
                    push_range(q, *prefix, *lo, *hi);
                    q.push(" AND ");
                    push_raw_token(q, system.as_deref(), code.as_deref());
                }
            }
        }
        Pred::UriBelow(v) => push_like(q, "s.value", format!("{}%", like_escape(v))),
        Pred::UriAbove(v) => {
            // The stored uri is a prefix of the search value.
            q.push("s.value <> '' AND substr(")
                .text(v)
                .push(", 1, length(s.value)) = s.value");
        }
    }
}

/// A composite's second part kept as `system|code` in `s.raw`: both, the code in any system,
/// or any code of the system.
fn push_raw_token(q: &mut Sql, system: Option<&str>, code: Option<&str>) {
    match (system, code) {
        (Some(s), Some(c)) => {
            q.push("s.raw = ").text(&format!("{s}|{c}"));
        }
        (None, Some(c)) => push_like(q, "s.raw", format!("%|{}", like_escape(c))),
        (Some(s), None) => push_like(q, "s.raw", format!("{}|%", like_escape(s))),
        (None, None) => {
            q.push("1=1");
        }
    }
}

/// Ordered comparison of a stored range [s.low, s.high] with the search range [lo, hi]
/// (R4 search §3.1.1.4.10): eq contains, ne does not, gt/lt/ge/le against the search bounds,
/// sa/eb wholly after/before, ap overlaps the search range widened by 10 %.
fn push_range(q: &mut Sql, prefix: Prefix, lo: f64, hi: f64) {
    let (cond, a, b): (&str, f64, Option<f64>) = match prefix {
        Prefix::Eq => ("s.low >= ? AND s.high <= ?", lo, Some(hi)),
        Prefix::Ne => ("NOT (s.low >= ? AND s.high <= ?)", lo, Some(hi)),
        Prefix::Gt => ("s.high > ?", hi, None),
        Prefix::Lt => ("s.low < ?", lo, None),
        Prefix::Ge => ("s.high >= ?", lo, None),
        Prefix::Le => ("s.low <= ?", hi, None),
        Prefix::Sa => ("s.low > ?", hi, None),
        Prefix::Eb => ("s.high < ?", lo, None),
        Prefix::Ap => {
            let gap = ((hi - lo).abs().max(lo.abs()) * 0.1).max(hi - lo);
            ("s.low <= ? AND s.high >= ?", hi + gap, Some(lo - gap))
        }
    };
    // Placeholders in the fixed text above are rewritten per dialect by `bind`.
    let mut parts = cond.split('?');
    q.push(parts.next().unwrap_or_default());
    q.bind(Bind::Real(a));
    q.push(parts.next().unwrap_or_default());
    if let Some(b) = b {
        q.bind(Bind::Real(b));
        q.push(parts.next().unwrap_or_default());
    }
}

fn push_compartment(q: &mut Sql, criteria: &Criteria, driver: Option<Driver>) {
    for (n, p) in criteria
        .compartment
        .iter()
        .chain(&criteria.within)
        .enumerate()
    {
        if driver != Some(Driver::Compartment(n)) {
            q.push(" AND EXISTS (SELECT 1 FROM compartment k WHERE k.rid = c.rid AND k.patient ");
            push_patients(q, criteria, n, p);
            q.close_exists();
        }
    }
}

/// `= p`, or `IN (p, linked...)` for the policy's compartment (n = 0) of a person with other
/// records in this store.
fn push_patients(q: &mut Sql, criteria: &Criteria, n: usize, p: &str) {
    let linked = if n == 0 && criteria.compartment.is_some() {
        criteria.compartment_linked.as_slice()
    } else {
        &[]
    };
    if linked.is_empty() {
        q.push("= ").text(p);
        return;
    }
    q.push("IN (").text(p);
    for other in linked {
        q.push(", ").text(other);
    }
    q.push(")");
}

/// The condition a search starts from. Every condition is an EXISTS test on the resources of the
/// type; a database that runs them as written tests every resource of the type (760,000
/// Observations for one patient's labs). One condition that names few resources (a patient's
/// compartment, an identifier, a reference, a coded value) is written instead as `c.rid IN
/// (keys from an index range)`, so that the search starts from those and tests the rest on them.
/// PostgreSQL's planner would find this from its statistics; SQLite's does not turn EXISTS
/// around.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Driver {
    Compartment(usize),
    Identifiers(usize),
    Clause(usize),
}

fn driver(criteria: &Criteria) -> Option<Driver> {
    if criteria.compartment.is_some() || criteria.within.is_some() {
        return Some(Driver::Compartment(0));
    }
    if !criteria.identifiers.is_empty() {
        return Some(Driver::Identifiers(0));
    }
    let narrow = |p: &Pred| match p {
        Pred::Reference(_) | Pred::OfType(_) | Pred::Exact(_) => true,
        Pred::Token(t) => t.value.is_some(),
        _ => false,
    };
    // References first (one patient's, one encounter's), then codes.
    let candidates: Vec<(usize, &Vec<Pred>)> = criteria
        .clauses
        .iter()
        .enumerate()
        .filter_map(|(n, c)| match &c.how {
            ClauseKind::Any(preds) if !preds.is_empty() && preds.iter().all(narrow) => {
                Some((n, preds))
            }
            _ => None,
        })
        .collect();
    candidates
        .iter()
        .find(|(_, p)| matches!(p[0], Pred::Reference(_)))
        .or(candidates.first())
        .map(|(n, _)| Driver::Clause(*n))
}

/// `AND c.rid IN (...)` for the driver.
fn push_driver(q: &mut Sql, ty: &str, criteria: &Criteria, driver: Driver) {
    q.push(" AND c.rid IN (");
    push_driver_select(q, ty, criteria, driver);
    q.push(")");
}

/// The `SELECT` of the resource keys (`rid`) a driver names.
fn push_driver_select(q: &mut Sql, ty: &str, criteria: &Criteria, driver: Driver) {
    let all = ty == ALL_TYPES;
    q.push("SELECT ");
    match driver {
        Driver::Compartment(n) => {
            let p = criteria
                .compartment
                .iter()
                .chain(&criteria.within)
                .nth(n)
                .map_or("", String::as_str);
            q.push("k.rid FROM compartment k WHERE k.patient ");
            push_patients(q, criteria, n, p);
            if !all {
                q.push(" AND k.type = ").text(ty);
            }
        }
        Driver::Identifiers(n) => {
            q.push("t.rid FROM search_index t WHERE t.param = 'identifier'");
            if !all {
                q.push(" AND t.type = ").text(ty);
            }
            q.push(" AND (");
            push_identifier_tokens(q, &criteria.identifiers[n]);
            q.push(")");
        }
        Driver::Clause(n) => {
            let clause = &criteria.clauses[n];
            let ClauseKind::Any(preds) = &clause.how else {
                unreachable!("only an Any clause drives")
            };
            q.push("s.rid FROM search_index s WHERE");
            push_param(q, "s", &clause.param, Scope::of(ty, criteria));
            if !all {
                q.push(" AND s.type = ").text(ty);
            }
            q.push(" AND (");
            for (i, p) in preds.iter().enumerate() {
                if i > 0 {
                    q.push(" OR ");
                }
                q.push("(");
                push_pred(q, p);
                q.push(")");
            }
            q.push(")");
        }
    }
}

fn current_where(q: &mut Sql, ty: &str, criteria: &Criteria) {
    q.push(" WHERE c.deleted = 0");
    if ty != ALL_TYPES {
        q.push(" AND c.type = ").text(ty);
    } else if !criteria.types.is_empty() {
        q.push(" AND c.type IN (");
        for (i, t) in criteria.types.iter().enumerate() {
            if i > 0 {
                q.push(", ");
            }
            q.text(t);
        }
        q.push(")");
    }
    let driver = driver(criteria);
    if let Some(d) = driver {
        push_driver(q, ty, criteria, d);
    }
    push_criteria(q, criteria, driver);
    push_clauses(q, criteria, driver, Scope::of(ty, criteria));
    push_compartment(q, criteria, driver);
}

/// Current, non-deleted resources of `ty` matching `criteria`, at most `limit`.
pub fn matching(d: Dialect, ty: &str, criteria: &Criteria, limit: i64) -> Sql {
    let mut q = Sql::new(d, VERSION_COLUMNS);
    q.push(CURRENT_FROM);
    current_where(&mut q, ty, criteria);
    q.push(" LIMIT ").literal_int(limit);
    q
}

/// The columns of a search's page: a version row's ([`VERSION_COLUMNS`]), then the resource's
/// key, its cursor.
const PAGE_COLUMNS: &str =
    "SELECT v.type, v.id, v.version, v.last_updated, v.method, v.body, v.seq, c.rid FROM ";

/// The cursor of a search page's row (see [`search`]).
pub const PAGE_CURSOR_COLUMN: usize = 7;

/// [`PAGE_COLUMNS`] and the number of matches in all, for a page that counts them itself
/// (see [`counts_on_page`]).
const PAGE_COUNTED_COLUMNS: &str =
    "SELECT v.type, v.id, v.version, v.last_updated, v.method, v.body, v.seq, m.rid, m.total FROM ";

/// The column of [`PAGE_COUNTED_COLUMNS`] that holds the number of matches.
pub const PAGE_TOTAL_COLUMN: usize = 8;

/// Whether a search's page statement also counts every match (column [`PAGE_TOTAL_COLUMN`] of
/// each row; no row: none match), so that its count statement is not run: the first page of a
/// search planned once (see [`planned_once`]) that asks for its total. The count statement read
/// the driver's rows and probed each of them again, after the page had done the same; on
/// PostgreSQL, one patient's lab page with its count was two statements of about the same cost.
pub fn counts_on_page(d: Dialect, op: &Search) -> bool {
    op.total && op.count > 0 && op.cursor.is_none() && planned_once(d, op)
}

/// (count, page) of a search. Keyset paging on the resource's key (`rid`, which only grows and
/// stays with a resource through its versions): a page never repeats or skips a resource that
/// existed when the search began, whatever is written meanwhile. The key, not the id, so that a
/// search that starts from an index range (see [`Driver`]) reads its matches in page order
/// from that range, and stops after a page.
pub fn search(d: Dialect, op: &Search) -> Result<(Sql, Sql), crate::error::Error> {
    let generic = planned_once(d, op);
    let new = |text: &str| {
        let mut q = Sql::new(d, text);
        q.generic = generic;
        q
    };
    // The count needs no version row: criteria only read `resource_current` and the indexes, and
    // reading 100,000 version rows (with their bodies on the same pages) is most of its cost.
    let count = index_only_count(d, op)
        .map(|q| if generic { q.planned_once() } else { q })
        .unwrap_or_else(|| {
            let mut count = new("SELECT COUNT(*) FROM resource_current c");
            current_where(&mut count, &op.ty, &op.criteria);
            count
        });
    if counts_on_page(d, op) {
        // The matches' keys are read once, counted by the window over all of them, and only the
        // page's rows are joined to their versions.
        let mut page = new(PAGE_COUNTED_COLUMNS);
        page.push("(SELECT c.rid, c.seq, COUNT(*) OVER () AS total FROM resource_current c");
        current_where(&mut page, &op.ty, &op.criteria);
        page.push(" ORDER BY c.rid LIMIT ")
            .literal_int(op.count as i64 + 1)
            .push(") m JOIN resource_version v ON v.seq = m.seq ORDER BY m.rid");
        return Ok((count, page));
    }
    let mut page = new(PAGE_COLUMNS);
    page.push(CURRENT_FROM);
    current_where(&mut page, &op.ty, &op.criteria);
    // A sorted search's cursor is its kept order's (see `sorted_search`), which reads no page here.
    if let Some(after) = op.cursor.as_deref().filter(|_| op.sort.is_empty()) {
        let after: i64 = after
            .parse()
            .map_err(|_| crate::error::Error::invalid("malformed _cursor"))?;
        page.push(" AND c.rid > ").int(after);
    }
    page.push(" ORDER BY c.rid LIMIT ")
        .literal_int(op.count as i64 + 1);
    Ok((count, page))
}

/// Whether a search's statements may be planned once per connection (see [`Sql::generic`]).
/// PostgreSQL only, and only an unsorted search that starts from one patient's compartment,
/// identifiers or references (few rows for any value) and whose other conditions each test
/// index rows of the resource at hand: those are probes per resource, whatever the values
/// (see [`Sql::close_exists`]). Planning the lab page of one patient for its values took 1.0 ms
/// against 0.46 ms to run it; planned once, 0.01 ms. Chains, `_has` and text search keep their
/// plan per values: their subqueries read other resources, which a plan could read either way
/// round.
fn planned_once(d: Dialect, op: &Search) -> bool {
    let c = &op.criteria;
    let keyed = match driver(c) {
        Some(Driver::Compartment(_) | Driver::Identifiers(_)) => true,
        Some(Driver::Clause(n)) => matches!(
            &c.clauses[n].how,
            ClauseKind::Any(preds) if preds.iter().all(|p| matches!(p, Pred::Reference(_)))
        ),
        None => false,
    };
    d == Dialect::Postgres
        && keyed
        && op.sort.is_empty()
        && c.fulltext.is_empty()
        && c.clauses.iter().all(|k| {
            matches!(
                k.how,
                ClauseKind::Any(_) | ClauseKind::None(_) | ClauseKind::Missing(_)
            )
        })
}

/// PostgreSQL: the count of a search with one indexed condition and nothing else, from that
/// index alone. Index rows exist only for current, non-deleted resources (every write clears
/// the previous version's, a deletion writes none), so `resource_current` adds nothing; joining
/// it made PostgreSQL scan all 112,000 rows of a type to count them (320 ms). SQLite keeps the
/// join: counting from its index alone made it choose a worse plan (1.1 s against 99 ms).
fn index_only_count(d: Dialect, op: &Search) -> Option<Sql> {
    let c = &op.criteria;
    let single = match (c.clauses.len(), c.identifiers.len()) {
        (1, 0) => Driver::Clause(0),
        (0, 1) => Driver::Identifiers(0),
        _ => return None,
    };
    let alone = d == Dialect::Postgres
        && op.ty != ALL_TYPES
        && c.ids.is_empty()
        && c.fulltext.is_empty()
        && c.types.is_empty()
        && c.compartment.is_none()
        && c.within.is_none()
        && driver(c) == Some(single);
    if !alone {
        return None;
    }
    let mut q = Sql::new(d, "SELECT COUNT(DISTINCT m.rid) FROM (");
    push_driver_select(&mut q, &op.ty, c, single);
    q.push(") m");
    Some(q)
}

/// The matches of a sorted search as `t` with their sort keys as columns `k0, k1, ...`:
/// `(SELECT <cols>, k0, ... FROM current WHERE ...) t`.
fn push_sorted_matches(q: &mut Sql, op: &Search, cols: &str) {
    q.push("(SELECT ").push(cols);
    for (i, k) in op.sort.iter().enumerate() {
        q.push(", ");
        match &k.by {
            SortBy::Id => {
                q.push("c.id");
            }
            SortBy::LastUpdated => {
                q.push("v.last_updated");
            }
            SortBy::Param { code, ordered } => {
                // A resource with several values sorts by the one that comes first in the
                // direction asked (R4 search §3.1.1.4.12: the lowest ascending, highest descending).
                let (agg, col) = match (ordered, k.descending) {
                    (true, false) => ("MIN", "s.low"),
                    (true, true) => ("MAX", "s.high"),
                    (false, false) => ("MIN", "s.value"),
                    (false, true) => ("MAX", "s.value"),
                };
                q.push("(SELECT ")
                    .push(agg)
                    .push("(")
                    .push(col)
                    .push(") FROM search_index s WHERE");
                push_same_resource(q, "s", "c");
                q.push(" AND");
                push_param(q, "s", code, Scope::of(&op.ty, &op.criteria));
                q.push(")");
            }
        }
        q.push(&format!(" AS k{i}"));
    }
    q.push(" FROM ").push(CURRENT_FROM);
    current_where(q, &op.ty, &op.criteria);
    q.push(") t");
}

/// `k0 IS NULL, k0 ASC, ..., t.id`: resources without a value last in either direction, the id
/// breaking ties so that the order is total.
fn sort_order(keys: &[SortKey]) -> String {
    let mut out = String::new();
    for (i, k) in keys.iter().enumerate() {
        let dir = if k.descending { "DESC" } else { "ASC" };
        out.push_str(&format!("t.k{i} IS NULL, t.k{i} {dir}, "));
    }
    out.push_str("t.id");
    out
}

/// The first `limit` matches of a sorted search, in order.
pub fn sorted_page(d: Dialect, op: &Search, limit: i64) -> Sql {
    let cols = "v.type, v.id, v.version, v.last_updated, v.method, v.body, v.seq";
    let mut q = Sql::new(
        d,
        "SELECT t.type, t.id, t.version, t.last_updated, t.method, t.body, t.seq FROM ",
    );
    push_sorted_matches(&mut q, op, cols);
    q.push(" ORDER BY ").push(&sort_order(&op.sort));
    q.push(" LIMIT ").literal_int(limit);
    q
}

/// Keeps the order of a sorted search's matches (at most `max_results`) under `search_id`, so
/// that its pages stay what they were when it began, whatever is written meanwhile: a resource
/// whose sort value changes does not move between pages, appear twice or go missing.
pub fn snapshot_insert(d: Dialect, op: &Search, search_id: &str, now_ms: i64) -> Sql {
    let mut q = Sql::new(
        d,
        "INSERT INTO search_snapshot (search_id, pos, type, id, created) SELECT ",
    );
    let order = sort_order(&op.sort);
    q.text(search_id)
        .push(", ROW_NUMBER() OVER (ORDER BY ")
        .push(&order)
        .push("), t.type, t.id, ")
        .int(now_ms)
        .push(" FROM ");
    push_sorted_matches(&mut q, op, "c.type, c.id");
    q.push(" ORDER BY ").push(&order);
    q.push(" LIMIT ")
        .literal_int(op.snapshot.max_results as i64);
    q
}

/// A page of a kept search after position `after`, each resource as it is now. The search's
/// criteria apply again, so a resource that no longer matches (or that the policy's compartment
/// excludes: a cursor is not a capability) is left out. The position is the last column.
pub fn snapshot_page(d: Dialect, op: &Search, search_id: &str, after: i64, limit: i64) -> Sql {
    let mut q = Sql::new(
        d,
        "SELECT v.type, v.id, v.version, v.last_updated, v.method, v.body, v.seq, r.pos FROM search_snapshot r JOIN resource_current c ON c.type = r.type AND c.id = r.id JOIN resource_version v ON v.seq = c.seq",
    );
    current_where(&mut q, &op.ty, &op.criteria);
    q.push(" AND r.search_id = ")
        .text(search_id)
        .push(" AND r.pos > ")
        .int(after)
        .push(" ORDER BY r.pos LIMIT ")
        .literal_int(limit);
    q
}

/// Whether a kept search exists and has not expired (1 or 0).
pub fn snapshot_alive(d: Dialect, search_id: &str, since_ms: i64) -> Sql {
    let mut q = Sql::new(d, "SELECT COUNT(*) FROM search_snapshot WHERE search_id = ");
    q.text(search_id)
        .push(" AND pos = 1 AND created >= ")
        .int(since_ms);
    q
}

/// Forgets kept searches created before `before_ms`.
pub fn snapshot_expire(d: Dialect, before_ms: i64) -> Sql {
    let mut q = Sql::new(d, "DELETE FROM search_snapshot WHERE created < ");
    q.int(before_ms);
    q
}

/// What a resource is found by, computed from its body alone (no id, no time of writing), so
/// that it can be worked out before the write queues for the database (see `sqlite_writer`).
#[derive(Debug, Clone, Default)]
pub struct Indexing {
    /// Compartments through references (a Patient's own is added at the write, with its id).
    patients: Vec<String>,
    /// Every search parameter but `_lastUpdated`, which the write's time decides.
    entries: Vec<Entry>,
    /// The words of the narrative (`_text`) and of every text in the resource (`_content`).
    narrative: String,
    content: String,
}

impl Indexing {
    /// The values of the resource's `identifier` index rows (what an identifier search matches).
    pub fn identifier_values(&self) -> impl Iterator<Item = &str> {
        self.entries
            .iter()
            .filter(|e| e.param == "identifier")
            .map(|e| e.value.as_str())
    }

    pub fn of(ty: &str, resource: &serde_json::Value) -> Indexing {
        // A client's `meta.lastUpdated` is not the resource's (the store sets it): left out of
        // the index. Copied only when there is one to drop.
        let body = if resource["meta"].get("lastUpdated").is_some() {
            let mut body = resource.clone();
            if let Some(meta) = body
                .get_mut("meta")
                .and_then(serde_json::Value::as_object_mut)
            {
                meta.remove("lastUpdated");
            }
            std::borrow::Cow::Owned(body)
        } else {
            std::borrow::Cow::Borrowed(resource)
        };
        let body: &serde_json::Value = &body;
        let mut patients = crate::fhir::compartment::patients(ty, "", body);
        patients.retain(|p| !p.is_empty());
        let (narrative, content) = crate::fhir::search_index::texts(body);
        let mut entries = crate::fhir::search_index::entries(ty, body);
        crate::fhir::search_index::stored_once(ty, &mut entries);
        // `identifier=` is searched in the `identifier` rows of the search index, and allowed on
        // every type with an `identifier` element; the few of those without an `identifier`
        // search parameter in R4 (ObservationDefinition, say) get their rows here.
        if !crate::fhir::search_params::indexed(ty).any(|d| d.code == "identifier") {
            entries.extend(
                crate::fhir::search::identifier_tokens(body)
                    .into_iter()
                    .map(|(system, value)| Entry {
                        param: "identifier".to_owned(),
                        system,
                        value,
                        raw: String::new(),
                        low: None,
                        high: None,
                    }),
            );
        }
        Indexing {
            patients,
            entries,
            narrative,
            content,
        }
    }
}

/// What follows [`upsert_current`], which made a version current and returned the resource's
/// key (`rid`): the resource's index rows (compartment, search parameters, full text) replace
/// the previous version's.
pub fn after_upsert(
    d: Dialect,
    stored: &crate::store::Stored,
    rid: i64,
    indexing: Option<&Indexing>,
) -> Vec<Sql> {
    let mut out = after_upsert_but_fulltext(d, stored, rid, indexing);
    if stored.version > 1 {
        out.extend(clear_fulltext(d, &stored.ty, &stored.id));
    }
    if let Some(ix) = indexing {
        out.extend(insert_fulltext(
            d,
            &stored.ty,
            &stored.id,
            &ix.narrative,
            &ix.content,
        ));
    }
    out
}

/// As [`after_upsert`], without the full-text rows, which the caller writes with
/// [`FullTextBatch`].
pub fn after_upsert_but_fulltext(
    d: Dialect,
    stored: &crate::store::Stored,
    rid: i64,
    indexing: Option<&Indexing>,
) -> Vec<Sql> {
    let mut out = Vec::new();
    // A first version has no index rows to clear (ids are never reused: a deleted resource's
    // next version is 2 or more); on a bulk import that spares five statements per resource.
    if stored.version > 1 {
        for index in [Index::Compartment, Index::Search] {
            out.push(clear_index(d, index, rid));
        }
    }
    out.extend(insert_index_statements(d, stored, rid, indexing));
    out
}

/// The full-text rows of a group of SQLite writes, written together at the end.
///
/// FTS5 moves its pending terms to a new on-disk segment whenever a statement opens a
/// statement savepoint, and every write to a virtual table does: one `INSERT` per resource
/// made a segment per resource, and merging them was a fifth of a bulk import's writer time.
/// Batched, a group makes one segment per table.
#[derive(Debug, Default)]
pub struct FullTextBatch {
    /// Resources whose committed rows are removed first (a later version or a deletion).
    clear: Vec<(String, String)>,
    /// (type, id) -> (narrative, content) of the newest version written, None when that was a
    /// deletion.
    texts: indexmap::IndexMap<(String, String), Option<(String, String)>>,
}

impl FullTextBatch {
    /// Records what a write does to the full-text rows of `stored`.
    pub fn add(&mut self, stored: &crate::store::Stored, indexing: Option<&Indexing>) {
        let key = (stored.ty.clone(), stored.id.clone());
        if stored.version > 1 && !self.clear.contains(&key) {
            self.clear.push(key.clone());
        }
        let texts = indexing.map(|ix| (ix.narrative.clone(), ix.content.clone()));
        self.texts.insert(key, texts);
    }

    /// Takes over `later`'s rows, as if its writes had been recorded here after these.
    pub fn absorb(&mut self, later: &mut FullTextBatch) {
        for key in later.clear.drain(..) {
            if !self.clear.contains(&key) {
                self.clear.push(key);
            }
        }
        self.texts.extend(later.texts.drain(..));
    }

    pub fn is_empty(&self) -> bool {
        self.clear.is_empty() && self.texts.is_empty()
    }

    pub fn clear(&mut self) {
        self.clear.clear();
        self.texts.clear();
    }

    /// The statements, at most `ROWS` resources each; the batch is left empty.
    pub fn take_statements(&mut self) -> Vec<Sql> {
        const ROWS: usize = 300;
        let d = Dialect::Sqlite;
        let mut out: Vec<Sql> = self
            .clear
            .drain(..)
            .flat_map(|(ty, id)| clear_fulltext(d, &ty, &id))
            .collect();
        let texts: Vec<_> = self
            .texts
            .drain(..)
            .filter_map(|(k, t)| Some((k, t?)))
            .collect();
        for part in texts.chunks(ROWS) {
            out.extend(sqlite_fulltext_inserts(part));
        }
        out
    }
}

/// The statements that remove a resource's index rows.
fn clear_statements(d: Dialect, ty: &str, id: &str, rid: i64) -> Vec<Sql> {
    let mut out = Vec::new();
    for index in [Index::Compartment, Index::Search] {
        out.push(clear_index(d, index, rid));
    }
    out.extend(clear_fulltext(d, ty, id));
    out
}

/// The statements that replace the index rows of a resource (key `rid`) with those of `stored`
/// (none left for a deletion): compartment, search parameters, full text.
pub fn index_statements(
    d: Dialect,
    stored: &crate::store::Stored,
    rid: i64,
    indexing: Option<&Indexing>,
) -> Vec<Sql> {
    let mut out = clear_statements(d, &stored.ty, &stored.id, rid);
    out.extend(insert_index_statements(d, stored, rid, indexing));
    if let Some(ix) = indexing {
        out.extend(insert_fulltext(
            d,
            &stored.ty,
            &stored.id,
            &ix.narrative,
            &ix.content,
        ));
    }
    out
}

/// The index rows of `stored`, inserted (none for a deletion).
fn insert_index_statements(
    d: Dialect,
    stored: &crate::store::Stored,
    rid: i64,
    indexing: Option<&Indexing>,
) -> Vec<Sql> {
    let (ty, id) = (stored.ty.as_str(), stored.id.as_str());
    let mut out = Vec::new();
    let Some(ix) = indexing else {
        return out;
    };
    let mut patients = ix.patients.clone();
    if ty == "Patient" {
        patients.insert(0, id.to_owned());
    }
    out.extend(insert_compartment(d, ty, rid, &patients));
    // `_lastUpdated`: the version's own time, as stamped into its meta.
    let instant = crate::store::format_instant(stored.last_updated);
    let mut entries = ix.entries.clone();
    if let Some((low, high)) = crate::fhir::search_index::precision_range(&instant) {
        entries.push(Entry {
            param: "_lastUpdated".into(),
            system: String::new(),
            value: String::new(),
            raw: String::new(),
            low: Some(low),
            high: Some(high),
        });
    }
    out.extend(insert_search_index(d, ty, rid, &entries));
    out
}

/// (count, page) of a history: newest first by the global write sequence.
pub fn history(d: Dialect, op: &History) -> (Sql, Sql) {
    let filter = |q: &mut Sql| {
        q.push(" WHERE 1=1");
        match &op.scope {
            HistoryScope::System => {}
            HistoryScope::Type(ty) => {
                q.push(" AND v.type = ").text(ty);
            }
            HistoryScope::Instance(ty, id) => {
                q.push(" AND v.type = ")
                    .text(ty)
                    .push(" AND v.id = ")
                    .text(id);
            }
        }
        if let Some(since) = op.since {
            q.push(" AND v.last_updated >= ").int(to_millis(since));
        }
    };
    let mut count = Sql::new(d, "SELECT COUNT(*) FROM resource_version v");
    filter(&mut count);
    let mut page = Sql::new(d, VERSION_COLUMNS);
    page.push("resource_version v");
    filter(&mut page);
    if let Some(cursor) = op.cursor {
        page.push(" AND v.seq < ").int(cursor);
    }
    page.push(" ORDER BY v.seq DESC LIMIT ")
        .literal_int(op.count as i64 + 1);
    (count, page)
}

/// Columns of an audit row, in the order the backends read them.
pub const AUDIT_COLUMNS: &str =
    "SELECT seq, id, recorded, patient, agent, outcome, prev_hash, hash, body FROM audit_log";

pub fn audit_search(d: Dialect, q: &crate::store::AuditQuery) -> Sql {
    let mut s = Sql::new(d, AUDIT_COLUMNS);
    s.push(" WHERE 1=1");
    let any = |s: &mut Sql, column: &str, values: &[String]| {
        if !values.is_empty() {
            s.push(" AND ").push(column).push(" IN (");
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    s.push(", ");
                }
                s.text(v);
            }
            s.push(")");
        }
    };
    any(&mut s, "patient", &q.patients);
    any(&mut s, "agent", &q.agents);
    any(&mut s, "outcome", &q.outcomes);
    any(&mut s, "id", &q.ids);
    if let Some(f) = q.from_ms {
        s.push(" AND recorded >= ").int(f);
    }
    if let Some(u) = q.until_ms {
        s.push(" AND recorded < ").int(u);
    }
    if let Some(b) = q.before_seq {
        s.push(" AND seq < ").int(b);
    }
    s.push(" ORDER BY seq DESC LIMIT ")
        .literal_int(q.count as i64 + 1);
    s
}

pub fn audit_scan(d: Dialect, after_seq: i64, limit: i64) -> Sql {
    let mut s = Sql::new(d, AUDIT_COLUMNS);
    s.push(" WHERE seq > ")
        .int(after_seq)
        .push(" ORDER BY seq LIMIT ")
        .literal_int(limit);
    s
}

/// A new version row; returns its `seq`.
pub fn insert_version(d: Dialect, s: &crate::store::Stored) -> Sql {
    let mut q = Sql::new(d, insert_into(d));
    q.push("resource_version (type, id, version, last_updated, method, body) VALUES (");
    q.text(&s.ty)
        .push(", ")
        .text(&s.id)
        .push(", ")
        .int(s.version as i64)
        .push(", ");
    q.int(crate::store::to_millis(s.last_updated))
        .push(", ")
        .text(s.method.as_str())
        .push(", ");
    q.bind(Bind::Bytes(s.body.as_ref().map(|b| b.to_vec())))
        .push(") RETURNING seq");
    q
}

/// Makes a version (`seq`) current; returns the resource's key (`rid`), which its first version
/// set to its own `seq` and every later one keeps (a deleted resource's too).
pub fn upsert_current(d: Dialect, s: &crate::store::Stored, seq: i64) -> Sql {
    let mut q = Sql::new(d, insert_into(d));
    q.push("resource_current (type, id, version, deleted, seq, rid) VALUES (");
    q.text(&s.ty)
        .push(", ")
        .text(&s.id)
        .push(", ")
        .int(s.version as i64)
        .push(", ");
    q.int(s.is_deleted() as i64)
        .push(", ")
        .int(seq)
        .push(", ")
        .int(seq);
    q.push(") ON CONFLICT (type, id) DO UPDATE SET version = excluded.version, deleted = excluded.deleted, seq = excluded.seq RETURNING rid");
    q
}

/// The index tables a write keeps in step with the current version.
#[derive(Debug, Clone, Copy)]
pub enum Index {
    Compartment,
    Search,
}

/// Removes a resource's rows from an index (before the current version's are inserted).
pub fn clear_index(d: Dialect, index: Index, rid: i64) -> Sql {
    let table = match index {
        Index::Compartment => "compartment",
        Index::Search => "search_index",
    };
    let mut q = Sql::new(d, "DELETE FROM ");
    q.push(table).push(" WHERE rid = ").int(rid);
    q
}

/// Removes a resource's full-text rows. SQLite: FTS5 tables keyed by a stable document number
/// per resource (`fulltext_doc`); PostgreSQL: `tsvector` columns.
fn clear_fulltext(d: Dialect, ty: &str, id: &str) -> Vec<Sql> {
    match d {
        Dialect::Sqlite => ["text_fts", "content_fts"]
            .into_iter()
            .map(|table| {
                let mut q = Sql::new(d, "DELETE FROM ");
                q.push(table)
                    .push(" WHERE rowid = (SELECT doc FROM fulltext_doc WHERE type = ")
                    .text(ty)
                    .push(" AND id = ")
                    .text(id)
                    .push(")");
                q
            })
            .collect(),
        Dialect::Postgres => {
            let mut q = Sql::new(d, "DELETE FROM fulltext WHERE type = ");
            q.text(ty).push(" AND id = ").text(id);
            vec![q]
        }
    }
}

fn insert_fulltext(d: Dialect, ty: &str, id: &str, narrative: &str, content: &str) -> Vec<Sql> {
    match d {
        Dialect::Sqlite => sqlite_fulltext_inserts(&[(
            (ty.to_owned(), id.to_owned()),
            (narrative.to_owned(), content.to_owned()),
        )]),
        Dialect::Postgres => {
            let mut q = Sql::new(
                d,
                "INSERT INTO fulltext (type, id, narrative, content) VALUES (",
            );
            q.text(ty)
                .push(", ")
                .text(id)
                .push(", to_tsvector('simple', ")
                .text(narrative)
                .push("), to_tsvector('simple', ")
                .text(content)
                .push("))");
            vec![q]
        }
    }
}

/// ((type, id), (narrative, content)) of one resource.
type FullTextRow = ((String, String), (String, String));

/// SQLite: the document numbers of `rows`, then one
/// multi-row insert per FTS5 table of the texts that are not empty.
fn sqlite_fulltext_inserts(rows: &[FullTextRow]) -> Vec<Sql> {
    let d = Dialect::Sqlite;
    let mut doc = Sql::new(d, "INSERT OR IGNORE INTO fulltext_doc (type, id) VALUES ");
    for (n, ((ty, id), _)) in rows.iter().enumerate() {
        doc.push(if n == 0 { "(" } else { ", (" })
            .text(ty)
            .push(", ")
            .text(id)
            .push(")");
    }
    let mut out = vec![doc];
    for (table, narrative) in [("text_fts", true), ("content_fts", false)] {
        let mut q = Sql::new(d, "INSERT INTO ");
        q.push(table).push(" (rowid, body) VALUES ");
        let mut n = 0;
        for ((ty, id), (text, content)) in rows {
            let body = if narrative { text } else { content };
            if body.is_empty() {
                continue;
            }
            q.push(if n == 0 { "(" } else { ", (" })
                .push("(SELECT doc FROM fulltext_doc WHERE type = ")
                .text(ty)
                .push(" AND id = ")
                .text(id)
                .push("), ")
                .text(body)
                .push(")");
            n += 1;
        }
        if n > 0 {
            out.push(q);
        }
    }
    out
}

/// `_text` / `_content`: every word of one of the alternatives occurs.
fn push_fulltext(q: &mut Sql, f: &FullText) {
    match q.dialect {
        Dialect::Sqlite => {
            let table = if f.content { "content_fts" } else { "text_fts" };
            // Words are letters and digits only (see `search::FullText`), so quoting is enough.
            let expr = f
                .any_of
                .iter()
                .map(|words| {
                    let quoted: Vec<String> = words.iter().map(|w| format!("\"{w}\"")).collect();
                    format!("({})", quoted.join(" AND "))
                })
                .collect::<Vec<_>>()
                .join(" OR ");
            q.push(" AND EXISTS (SELECT 1 FROM fulltext_doc d WHERE d.type = c.type AND d.id = c.id AND d.doc IN (SELECT rowid FROM ")
                .push(table)
                .push(" WHERE ")
                .push(table)
                .push(" MATCH ")
                .text(&expr)
                .push("))");
        }
        Dialect::Postgres => {
            let column = if f.content { "content" } else { "narrative" };
            let expr = f
                .any_of
                .iter()
                .map(|words| format!("({})", words.join(" & ")))
                .collect::<Vec<_>>()
                .join(" | ");
            q.push(" AND EXISTS (SELECT 1 FROM fulltext f WHERE f.type = c.type AND f.id = c.id AND f.")
                .push(column)
                .push(" @@ to_tsquery('simple', ")
                .text(&expr)
                .push("))");
        }
    }
}

/// `INSERT` for the writes of a resource. On SQLite, `OR FAIL`: a statement that could abort
/// halfway (a multi-row insert, an upsert, an insert with `RETURNING`) needs a statement journal
/// so that it can undo its own rows, a copy of every page it changes (with a temporary file:
/// 44 `pwrite`s per resource on an import); with `FAIL` it need not, and a failure still undoes
/// everything, since a failed write's group transaction is rolled back whole (and run again with
/// each write in a savepoint of its own, which is rolled back). In memory, that journal is a list of 1 KiB pieces that SQLite walks
/// from its start at the end of each statement: inside a write group's savepoint it holds every
/// page the write changed so far, so a transaction Bundle's entries cost time quadratic in its
/// size (`sqlite3BtreeSavepoint` 9.7 % of the writer thread on 100-entry transactions).
fn insert_into(d: Dialect) -> &'static str {
    match d {
        Dialect::Sqlite => "INSERT OR FAIL INTO ",
        Dialect::Postgres => "INSERT INTO ",
    }
}

/// The search index rows of a resource, as multi-row INSERTs of at most 500 rows (8 parameters
/// each stays under SQLite's limit of 32,766).
pub fn insert_search_index(d: Dialect, ty: &str, rid: i64, entries: &[Entry]) -> Vec<Sql> {
    entries
        .chunks(500)
        .map(|chunk| {
            let mut q = Sql::new(d, insert_into(d));
            q.push("search_index (rid, type, param, system, value, raw, low, high) VALUES ");
            for (i, e) in chunk.iter().enumerate() {
                q.push(if i == 0 { "(" } else { ", (" });
                q.int(rid)
                    .push(", ")
                    .text(ty)
                    .push(", ")
                    .text(&e.param)
                    .push(", ");
                q.text(&e.system)
                    .push(", ")
                    .text(&e.value)
                    .push(", ")
                    .text(&e.raw)
                    .push(", ");
                q.bind(Bind::NullableReal(e.low)).push(", ");
                q.bind(Bind::NullableReal(e.high)).push(")");
            }
            q
        })
        .collect()
}

/// Whether there are current resources but no search index rows at all: data written before
/// the index existed, to be reindexed once.
pub fn index_missing(d: Dialect) -> Sql {
    Sql::new(
        d,
        "SELECT CAST(CASE WHEN EXISTS (SELECT 1 FROM resource_current WHERE deleted = 0) \
         AND NOT EXISTS (SELECT 1 FROM search_index) THEN 1 ELSE 0 END AS BIGINT)",
    )
}

/// Current resources after (`type`, `id`) in key order, `limit` at a time (for a reindex).
pub fn current_after(d: Dialect, ty: &str, id: &str, limit: i64) -> Sql {
    let mut q = Sql::new(d, VERSION_COLUMNS);
    q.push(CURRENT_FROM)
        .push(" WHERE c.deleted = 0 AND (c.type > ")
        .text(ty)
        .push(" OR (c.type = ")
        .text(ty)
        .push(" AND c.id > ")
        .text(id)
        .push(")) ORDER BY c.type, c.id LIMIT ")
        .literal_int(limit);
    q
}

/// The patient compartments a resource is in, one multi-row INSERT (`None` when there are none).
pub fn insert_compartment(d: Dialect, ty: &str, rid: i64, patients: &[String]) -> Option<Sql> {
    (!patients.is_empty()).then(|| {
        let mut q = Sql::new(d, insert_into(d));
        q.push("compartment (rid, type, patient) VALUES ");
        for (i, p) in patients.iter().enumerate() {
            q.push(if i == 0 { "(" } else { ", (" })
                .int(rid)
                .push(", ")
                .text(ty)
                .push(", ")
                .text(p)
                .push(")");
        }
        q
    })
}

pub fn read(d: Dialect, ty: &str, id: &str) -> Sql {
    let mut q = Sql::new(d, VERSION_COLUMNS);
    q.push(CURRENT_FROM)
        .push(" WHERE c.type = ")
        .text(ty)
        .push(" AND c.id = ")
        .text(id);
    q.planned_once()
}

pub fn vread(d: Dialect, ty: &str, id: &str, version: u64) -> Sql {
    let mut q = Sql::new(d, VERSION_COLUMNS);
    q.push("resource_version v WHERE v.type = ")
        .text(ty)
        .push(" AND v.id = ")
        .text(id)
        .push(" AND v.version = ")
        .int(version as i64);
    q.planned_once()
}

/// The key of a resource whose current version is `version`; no row when it is not.
pub fn current_key(d: Dialect, ty: &str, id: &str, version: u64) -> Sql {
    let mut q = Sql::new(d, "SELECT rid FROM resource_current WHERE type = ");
    q.text(ty)
        .push(" AND id = ")
        .text(id)
        .push(" AND version = ")
        .int(version as i64);
    q
}

pub fn current_version(d: Dialect, ty: &str, id: &str) -> Sql {
    let mut q = Sql::new(
        d,
        "SELECT version, deleted FROM resource_current WHERE type = ",
    );
    q.text(ty).push(" AND id = ").text(id);
    q
}

/// The row mapping and parameter binding of a relational backend, the same for every sqlx
/// driver but for its types: `relational_common!(DB, Row, Arguments)` defines `row_to_stored`,
/// `audit_row`, `query` and `scalar` in the backend's module. Statement texts come from this
/// module (fixed fragments and placeholders only), hence `AssertSqlSafe`.
macro_rules! relational_common {
    ($db:ty, $row:ty, $args:ty, $conn:ty, $dialect:expr) => {
        /// Rewrites the search index rows of stored resources, inside the caller's transaction.
        async fn reindex_rows(
            conn: &mut $conn,
            rows: &[$crate::store::Stored],
        ) -> $crate::error::Result<()> {
            use $crate::store::sql;
            for s in rows {
                // A write since the batch was read has indexed its own version: leave it.
                let key = sql::current_key($dialect, &s.ty, &s.id, s.version);
                let Some(rid): Option<i64> = scalar(&key).fetch_optional(&mut *conn).await? else {
                    continue;
                };
                let resource = s
                    .body
                    .as_ref()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok());
                let indexing = resource.map(|r| sql::Indexing::of(&s.ty, &r));
                for statement in sql::index_statements($dialect, s, rid, indexing.as_ref()) {
                    query(&statement).execute(&mut *conn).await?;
                }
            }
            Ok(())
        }

        /// A search with `_sort`. The first page runs the ordered query; when there is more than
        /// one page, the order is kept (`sql::snapshot_insert`) and every page, the first too,
        /// is read from it. The cursor is `search_id.position`.
        async fn sorted_search(
            reader: &sqlx::Pool<$db>,
            writer: &sqlx::Pool<$db>,
            op: &$crate::fhir::operation::Search,
            total: Option<i64>,
        ) -> $crate::error::Result<$crate::store::Page> {
            use sqlx::Row;
            use $crate::store::{page_of, sql};
            let size = op.count as i64;
            let now = $crate::store::to_millis($crate::store::now_ms());
            let (search_id, after) = match &op.cursor {
                None => {
                    let rows = query(&sql::sorted_page($dialect, op, size + 1))
                        .fetch_all(reader)
                        .await?;
                    if rows.len() as i64 <= size {
                        return Ok(page_of(total, &rows, op.count, row_to_stored, |_| {
                            String::new()
                        }));
                    }
                    let search_id = uuid::Uuid::new_v4().simple().to_string();
                    let mut tx = writer.begin().await?;
                    query(&sql::snapshot_expire($dialect, now - op.snapshot.ttl_ms))
                        .execute(&mut *tx)
                        .await?;
                    query(&sql::snapshot_insert($dialect, op, &search_id, now))
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    (search_id, 0)
                }
                Some(cursor) => {
                    let bad =
                        || $crate::error::Error::invalid("_cursor is not one this server gave out");
                    let (id, pos) = cursor.rsplit_once('.').ok_or_else(bad)?;
                    let pos: i64 = pos.parse().map_err(|_| bad())?;
                    let alive: i64 =
                        scalar(&sql::snapshot_alive($dialect, id, now - op.snapshot.ttl_ms))
                            .fetch_one(reader)
                            .await?;
                    if alive == 0 {
                        return Err($crate::error::Error::gone(
                            "these search results have expired; run the search again",
                        ));
                    }
                    (id.to_owned(), pos)
                }
            };
            let rows = query(&sql::snapshot_page(
                $dialect,
                op,
                &search_id,
                after,
                size + 1,
            ))
            .fetch_all(reader)
            .await?;
            Ok(page_of(total, &rows, op.count, row_to_stored, |r| {
                format!("{search_id}.{}", r.get::<i64, _>(7))
            }))
        }

        fn row_to_stored(row: &$row) -> $crate::store::Stored {
            use sqlx::Row;
            let body: Option<Vec<u8>> = row.get(5);
            $crate::store::Stored {
                ty: row.get(0),
                id: row.get(1),
                version: row.get::<i64, _>(2) as u64,
                last_updated: $crate::store::from_millis(row.get(3)),
                method: $crate::store::WriteMethod::parse(row.get::<&str, _>(4)),
                body: body.map(bytes::Bytes::from),
            }
        }

        fn audit_row(r: &$row) -> $crate::store::AuditRow {
            use sqlx::Row;
            $crate::store::AuditRow {
                seq: r.get(0),
                record: $crate::store::AuditRecord::new(
                    r.get(1),
                    r.get(2),
                    r.get(3),
                    r.get(4),
                    r.get(5),
                    bytes::Bytes::from(r.get::<Vec<u8>, _>(8)),
                ),
                prev_hash: r.get(6),
                hash: r.get(7),
            }
        }

        /// The statement with its parameters bound in order.
        fn query(sql: &$crate::store::sql::Sql) -> sqlx::query::Query<'static, $db, $args> {
            // `RUST_LOG=gateway::sql=trace` shows every statement (for EXPLAIN).
            tracing::trace!(target: "gateway::sql", text = %sql.text, binds = ?sql.binds);
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.text.clone()));
            for b in &sql.binds {
                q = match b {
                    $crate::store::sql::Bind::Text(s) => q.bind(s.clone()),
                    $crate::store::sql::Bind::Int(i) => q.bind(*i),
                    $crate::store::sql::Bind::Bytes(b) => q.bind(b.clone()),
                    $crate::store::sql::Bind::Real(r) => q.bind(*r),
                    $crate::store::sql::Bind::NullableReal(r) => q.bind(*r),
                };
            }
            q
        }

        fn scalar(
            sql: &$crate::store::sql::Sql,
        ) -> sqlx::query::QueryScalar<'static, $db, i64, $args> {
            tracing::trace!(target: "gateway::sql", text = %sql.text, binds = ?sql.binds);
            let mut q = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.text.clone()));
            for b in &sql.binds {
                q = match b {
                    $crate::store::sql::Bind::Text(s) => q.bind(s.clone()),
                    $crate::store::sql::Bind::Int(i) => q.bind(*i),
                    $crate::store::sql::Bind::Bytes(b) => q.bind(b.clone()),
                    $crate::store::sql::Bind::Real(r) => q.bind(*r),
                    $crate::store::sql::Bind::NullableReal(r) => q.bind(*r),
                };
            }
            q
        }
    };
}
pub(crate) use relational_common;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::search::Token;
    use crate::store::WriteMethod;

    #[test]
    fn placeholders_follow_the_dialect_and_values_are_bound() {
        let c = Criteria {
            compartment: Some("p1".into()),
            compartment_linked: Vec::new(),
            within: None,
            types: Vec::new(),
            fulltext: vec![FullText {
                content: true,
                any_of: vec![vec!["o".into(), "brien".into()]],
            }],
            ids: vec![vec!["a".into(), "b'; DROP TABLE x;--".into()]],
            identifiers: vec![vec![Token {
                system: Some("s".into()),
                value: Some("v".into()),
            }]],
            clauses: vec![
                Clause {
                    param: "family".into(),
                    how: ClauseKind::Any(vec![Pred::StartsWith("o'brien%_".into())]),
                },
                Clause {
                    param: "birthdate".into(),
                    how: ClauseKind::Any(vec![Pred::Range(Prefix::Eq, 1.0, 2.0)]),
                },
            ],
        };
        let s = matching(Dialect::Sqlite, "Patient", &c, 2);
        let p = matching(Dialect::Postgres, "Patient", &c, 2);
        // Range placeholders follow the dialect too; wildcards in a value are escaped, bound.
        assert!(!p.text.contains('?'), "{}", p.text);
        assert!(
            p.text.contains("s.low >= $") && p.text.contains("s.high <= $"),
            "{}",
            p.text
        );
        assert!(
            !s.text.contains("brien"),
            "values are bound, never in the text"
        );
        assert!(
            s.binds.contains(&Bind::Text("o'brien\\%\\_%".into())),
            "{:?}",
            s.binds
        );
        assert!(s.text.contains("c.id IN (?, ?)"), "{}", s.text);
        assert!(p.text.contains("c.id IN ($5, $6)"), "{}", p.text);
        // The compartment drives (see `Driver`); full text is a bound query.
        assert!(
            p.text
                .contains("c.rid IN (SELECT k.rid FROM compartment k WHERE k.patient = $2")
                && p.text.ends_with("$13))) LIMIT 2"),
            "{}",
            p.text
        );
        assert!(s.text.contains("content_fts MATCH ?"), "{}", s.text);
        assert!(p.binds.contains(&Bind::Text("(o & brien)".into())));
        assert!(!s.text.contains("DROP"));
        // Thirteen: the row limit is written into the text (see `Sql::literal_int`).
        assert_eq!(s.binds.len(), 13);
        // The same values in the same order, but for the full-text query's own syntax.
        let without_text = |b: &[Bind]| {
            let mut b = b.to_vec();
            b.remove(3);
            b
        };
        assert_eq!(without_text(&s.binds), without_text(&p.binds));
    }

    /// Identifier searches read the search index's `identifier` rows: a type with an
    /// identifier element but no `identifier` search parameter gets them all the same, and a
    /// type with one gets them once.
    #[test]
    fn identifiers_are_indexed_for_every_type_with_the_element() {
        let ids = |ty: &str| {
            let body = serde_json::json!({"resourceType": ty, "identifier": [{"system": "s", "value": "v1"}]});
            Indexing::of(ty, &body)
                .entries
                .into_iter()
                .filter(|e| e.param == "identifier")
                .map(|e| (e.system, e.value))
                .collect::<Vec<_>>()
        };
        let one = vec![("s".to_owned(), "v1".to_owned())];
        assert!(
            !crate::fhir::search_params::indexed("ObservationDefinition")
                .any(|d| d.code == "identifier")
        );
        assert_eq!(ids("ObservationDefinition"), one);
        assert_eq!(ids("Patient"), one);
    }

    #[test]
    fn index_inserts_are_one_statement_with_bound_values() {
        let p = insert_compartment(
            Dialect::Postgres,
            "Observation",
            7,
            &["p'1".into(), "p2".into()],
        )
        .unwrap();
        assert!(p.text.ends_with("($1, $2, $3), ($4, $5, $6)"), "{}", p.text);
        assert_eq!(p.binds.len(), 6);
        assert_eq!(p.binds[0], Bind::Int(7));
        assert_eq!(p.binds[2], Bind::Text("p'1".into()));
        let s = insert_compartment(Dialect::Sqlite, "Observation", 7, &["p1".into()]).unwrap();
        assert!(s.text.ends_with("VALUES (?, ?, ?)"), "{}", s.text);
        assert!(insert_compartment(Dialect::Sqlite, "Patient", 7, &[]).is_none());
        let clear = clear_index(Dialect::Postgres, Index::Compartment, 7);
        assert_eq!(clear.text, "DELETE FROM compartment WHERE rid = $1");
    }

    fn version(
        ty: &str,
        id: &str,
        version: u64,
        body: Option<serde_json::Value>,
    ) -> crate::store::Stored {
        crate::store::Stored {
            ty: ty.into(),
            id: id.into(),
            version,
            last_updated: time::OffsetDateTime::UNIX_EPOCH,
            method: if body.is_some() {
                WriteMethod::Put
            } else {
                WriteMethod::Delete
            },
            body: body.map(|b| bytes::Bytes::from(b.to_string())),
        }
    }

    fn texts_of(statements: &[Sql]) -> Vec<String> {
        statements
            .iter()
            .flat_map(|s| s.binds.iter())
            .filter_map(|b| match b {
                Bind::Text(t) if t.contains(' ') || t.chars().all(char::is_lowercase) => {
                    Some(t.clone())
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_full_text_batch_writes_the_newest_text_once_and_clears_what_was_committed() {
        let pat =
            |word: &str| serde_json::json!({"resourceType": "Patient", "name": [{"text": word}]});
        let mut group = FullTextBatch::default();
        // Job 1 creates p1 and p2.
        let mut job = FullTextBatch::default();
        for id in ["p1", "p2"] {
            let body = pat(if id == "p1" { "alpha" } else { "gamma" });
            job.add(
                &version("Patient", id, 1, Some(body.clone())),
                Some(&Indexing::of("Patient", &body)),
            );
        }
        group.absorb(&mut job);
        assert!(job.is_empty());
        // Job 2 updates p1 and deletes p2; p3 existed before the group and is updated.
        let beta = pat("beta");
        job.add(
            &version("Patient", "p1", 2, Some(beta.clone())),
            Some(&Indexing::of("Patient", &beta)),
        );
        job.add(&version("Patient", "p2", 2, None), None);
        job.add(
            &version("Patient", "p3", 4, Some(beta.clone())),
            Some(&Indexing::of("Patient", &beta)),
        );
        group.absorb(&mut job);
        let statements = group.take_statements();
        assert!(group.is_empty());
        // Committed rows of the updated and deleted resources are removed first ...
        let deletes: Vec<&Sql> = statements
            .iter()
            .take_while(|s| s.text.starts_with("DELETE"))
            .collect();
        assert_eq!(deletes.len(), 6, "{statements:?}");
        // ... then one statement per table carries every new text: p1's newest and p3's, not p2's.
        let inserts: Vec<&Sql> = statements
            .iter()
            .filter(|s| s.text.starts_with("INSERT INTO content_fts"))
            .collect();
        assert_eq!(inserts.len(), 1);
        let words = texts_of(&statements).join(" ");
        assert!(
            words.contains("beta") && !words.contains("alpha") && !words.contains("gamma"),
            "{words}"
        );
        assert_eq!(inserts[0].text.matches("SELECT doc").count(), 2);
    }

    #[test]
    fn postgres_counts_one_indexed_condition_from_the_index_alone() {
        let status = Clause {
            param: "status".into(),
            how: ClauseKind::Any(vec![Pred::Token(Token {
                system: None,
                value: Some("final".into()),
            })]),
        };
        let mut op = Search {
            ty: "DiagnosticReport".into(),
            criteria: Criteria {
                clauses: vec![status],
                ..Default::default()
            },
            ..Default::default()
        };
        let (count, _) = search(Dialect::Postgres, &op).unwrap();
        assert!(
            count
                .text
                .starts_with("SELECT COUNT(DISTINCT m.rid) FROM (SELECT s.rid FROM search_index s"),
            "{}",
            count.text
        );
        assert!(!count.text.contains("resource_current"));
        // SQLite keeps the join; so does anything beside the one condition.
        let (count, _) = search(Dialect::Sqlite, &op).unwrap();
        assert!(
            count
                .text
                .starts_with("SELECT COUNT(*) FROM resource_current c")
        );
        op.criteria.compartment = Some("p1".into());
        let (count, _) = search(Dialect::Postgres, &op).unwrap();
        assert!(
            count
                .text
                .starts_with("SELECT COUNT(*) FROM resource_current c"),
            "{}",
            count.text
        );
        op.criteria.compartment = None;
        op.criteria.clauses.push(op.criteria.clauses[0].clone());
        let (count, _) = search(Dialect::Postgres, &op).unwrap();
        assert!(
            count
                .text
                .starts_with("SELECT COUNT(*) FROM resource_current c")
        );
    }

    /// Which searches PostgreSQL plans once: those that start from one patient's or resource's
    /// rows, with every other condition a probe of the resource at hand (`OFFSET 0`).
    #[test]
    fn searches_from_one_patient_are_planned_once_and_probe_the_rest() {
        let clause = |param: &str, p: Pred| Clause {
            param: param.into(),
            how: ClauseKind::Any(vec![p]),
        };
        let patient = clause("patient", Pred::Reference(vec!["Patient/p1".into()]));
        let category = clause(
            "category",
            Pred::Token(Token {
                system: None,
                value: Some("laboratory".into()),
            }),
        );
        let op = |clauses: Vec<Clause>| Search {
            ty: "Observation".into(),
            criteria: Criteria {
                clauses,
                ..Default::default()
            },
            ..Default::default()
        };
        let labs = op(vec![category.clone(), patient.clone()]);
        let (count, page) = search(Dialect::Postgres, &labs).unwrap();
        for q in [&count, &page] {
            assert!(q.generic, "{}", q.text);
            // The patient drives; the category is probed per resource, never joined.
            assert!(q.text.contains("c.rid IN (SELECT s.rid"), "{}", q.text);
            assert_eq!(q.text.matches(" OFFSET 0)").count(), 1, "{}", q.text);
            assert_eq!(q.text.matches("EXISTS").count(), 1, "{}", q.text);
        }
        // The same search on SQLite, and every search that PostgreSQL plans for its values,
        // is written as before: no OFFSET.
        let planned = |op: &Search, d: Dialect| {
            let (count, page) = search(d, op).unwrap();
            for q in [count, page] {
                assert!(!q.generic, "{}", q.text);
                assert!(!q.text.contains("OFFSET"), "{}", q.text);
            }
        };
        planned(&labs, Dialect::Sqlite);
        // Started from a code (one value may hold half the table).
        planned(&op(vec![category.clone()]), Dialect::Postgres);
        // Sorted.
        let mut sorted = labs.clone();
        sorted.sort = vec![SortKey {
            by: SortBy::LastUpdated,
            descending: true,
        }];
        planned(&sorted, Dialect::Postgres);
        // A chain beside the patient.
        let chain = Clause {
            param: "performer".into(),
            how: ClauseKind::Chain {
                targets: vec!["Practitioner".into()],
                inner: Box::new(clause("family", Pred::StartsWith("jansen".into()))),
            },
        };
        planned(&op(vec![patient.clone(), chain]), Dialect::Postgres);
        // Text search beside the patient.
        let mut text = labs.clone();
        text.criteria.fulltext = vec![FullText {
            content: true,
            any_of: vec![vec!["glucose".into()]],
        }];
        planned(&text, Dialect::Postgres);
        // A compartment and an identifier drive too; `:not` and `:missing` are probes.
        let mut compartment = op(vec![
            category.clone(),
            Clause {
                param: "code".into(),
                how: ClauseKind::None(vec![Pred::Token(Token {
                    system: None,
                    value: Some("x".into()),
                })]),
            },
            Clause {
                param: "encounter".into(),
                how: ClauseKind::Missing(true),
            },
        ]);
        compartment.criteria.compartment = Some("p1".into());
        compartment.criteria.identifiers = vec![vec![Token {
            system: Some("s".into()),
            value: Some("v".into()),
        }]];
        let (_, page) = search(Dialect::Postgres, &compartment).unwrap();
        assert!(page.generic);
        // Identifiers, category, code (NOT EXISTS), encounter (missing): four probes.
        assert_eq!(page.text.matches(" OFFSET 0)").count(), 4, "{}", page.text);
        // The first page of such a search counts its matches itself when the total is asked.
        let counted = |op: &Search| {
            let (_, page) = search(Dialect::Postgres, op).unwrap();
            page.text.contains("COUNT(*) OVER ()")
        };
        let mut first = labs.clone();
        first.total = true;
        first.count = 20;
        assert!(counts_on_page(Dialect::Postgres, &first) && counted(&first));
        let mut later = first.clone();
        later.cursor = Some("42".into());
        assert!(!counts_on_page(Dialect::Postgres, &later) && !counted(&later));
        let mut untotalled = first.clone();
        untotalled.total = false;
        assert!(!counted(&untotalled));
        assert!(!counts_on_page(Dialect::Sqlite, &first));
        // Point reads are planned once.
        assert!(read(Dialect::Postgres, "Patient", "p1").generic);
        assert!(vread(Dialect::Postgres, "Patient", "p1", 2).generic);
    }
}
