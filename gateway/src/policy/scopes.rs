//! SMART App Launch v2 scopes: `(patient|user|system)/(Type|*).(c?r?u?d?s?)[?param=value&...]`,
//! with the v1 forms `.read` (= `rs`), `.write` (= `cud`) and `.*` (= `cruds`) as aliases.
//! Scopes that are not resource scopes (`openid`, `launch`, `fhirUser`, ...) carry no access and are
//! skipped; a malformed resource scope is skipped too: it grants nothing.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Context {
    Patient,
    User,
    System,
}

/// One of the five SMART v2 permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Permission {
    fn letter(self) -> char {
        match self {
            Permission::Create => 'c',
            Permission::Read => 'r',
            Permission::Update => 'u',
            Permission::Delete => 'd',
            Permission::Search => 's',
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub context: Context,
    /// `None` for `*`.
    pub resource_type: Option<String>,
    /// Letters out of `cruds`, in that order.
    pub permissions: String,
    /// `?param=value` constraints, all of which a resource must meet.
    pub constraints: Vec<(String, String)>,
}

impl Scope {
    pub fn grants(&self, resource_type: &str, p: Permission) -> bool {
        self.resource_type
            .as_deref()
            .is_none_or(|t| t == resource_type)
            && self.permissions.contains(p.letter())
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ctx = match self.context {
            Context::Patient => "patient",
            Context::User => "user",
            Context::System => "system",
        };
        write!(
            f,
            "{ctx}/{}.{}",
            self.resource_type.as_deref().unwrap_or("*"),
            self.permissions
        )?;
        for (i, (k, v)) in self.constraints.iter().enumerate() {
            write!(f, "{}{k}={v}", if i == 0 { '?' } else { '&' })?;
        }
        Ok(())
    }
}

/// The resource scopes in a space-separated `scope` claim.
pub fn parse(scope_claim: &str) -> Vec<Scope> {
    scope_claim
        .split_ascii_whitespace()
        .filter_map(parse_one)
        .collect()
}

fn parse_one(s: &str) -> Option<Scope> {
    let (ctx, rest) = s.split_once('/')?;
    let context = match ctx {
        "patient" => Context::Patient,
        "user" => Context::User,
        "system" => Context::System,
        _ => return None,
    };
    let (head, query) = match rest.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (rest, None),
    };
    let (ty, perms) = head.rsplit_once('.')?;
    let resource_type = match ty {
        "*" => None,
        t if !t.is_empty()
            && t.bytes().all(|b| b.is_ascii_alphabetic())
            && t.as_bytes()[0].is_ascii_uppercase() =>
        {
            Some(t.to_owned())
        }
        _ => return None,
    };
    let permissions = match perms {
        "read" => "rs".to_owned(),
        "write" => "cud".to_owned(),
        "*" => "cruds".to_owned(),
        p if !p.is_empty() && is_ordered_subset(p) => p.to_owned(),
        _ => return None,
    };
    let mut constraints = Vec::new();
    if let Some(q) = query {
        for pair in q.split('&') {
            let (k, v) = pair.split_once('=')?;
            if k.is_empty() || v.is_empty() {
                return None;
            }
            let decode = |x: &str| {
                percent_encoding::percent_decode_str(x)
                    .decode_utf8()
                    .map(|c| c.into_owned())
                    .ok()
            };
            constraints.push((decode(k)?, decode(v)?));
        }
    }
    Some(Scope {
        context,
        resource_type,
        permissions,
        constraints,
    })
}

/// `c r u d s` each at most once and in that order (SMART v2).
fn is_ordered_subset(p: &str) -> bool {
    let order = "cruds";
    let mut last = None;
    for ch in p.chars() {
        let Some(i) = order.find(ch) else {
            return false;
        };
        if last.is_some_and(|l| i <= l) {
            return false;
        }
        last = Some(i);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_scopes() {
        let s = parse(
            "openid fhirUser launch/patient patient/Observation.rs user/*.cruds system/Patient.r",
        );
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].context, Context::Patient);
        assert!(
            s[0].grants("Observation", Permission::Read)
                && s[0].grants("Observation", Permission::Search)
        );
        assert!(!s[0].grants("Observation", Permission::Create));
        assert!(!s[0].grants("Patient", Permission::Read));
        assert!(s[1].grants("Anything", Permission::Delete));
        assert!(!s[2].grants("Patient", Permission::Search));
    }

    #[test]
    fn v1_aliases() {
        let s = parse("patient/Observation.read user/Patient.write system/*.*");
        assert_eq!(s[0].permissions, "rs");
        assert_eq!(s[1].permissions, "cud");
        assert_eq!(s[2].permissions, "cruds");
    }

    #[test]
    fn constraints() {
        let s = parse(
            "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
        );
        assert_eq!(
            s[0].constraints,
            vec![(
                "category".to_owned(),
                "http://terminology.hl7.org/CodeSystem/observation-category|laboratory".to_owned()
            )]
        );
        assert_eq!(
            s[0].to_string(),
            "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
        );
    }

    #[test]
    fn malformed_scopes_grant_nothing() {
        for bad in [
            "patient/Observation.sr",
            "patient/Observation.rr",
            "patient/Observation.x",
            "patient/Observation.",
            "admin/Observation.rs",
            "patient/observation.rs",
            "patient/Observation.rs?category",
            "patient/../Observation.rs",
            "patient/Obs-ervation.rs",
        ] {
            assert!(parse(bad).is_empty(), "{bad}");
        }
    }
}
