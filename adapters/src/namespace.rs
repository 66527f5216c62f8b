//! Ids at the gateway of resources a backend holds: `{adapter}.{backend id}`. FHIR ids allow
//! `[A-Za-z0-9\-\.]{1,64}`; adapter names are lower-case letters, digits and `-` (the schema says
//! so), and the gateway's own ids never contain a `.`, so the prefix alone names the backend.

/// The gateway id of a backend's `id`, or `None` when it would not be a valid FHIR id.
pub fn outward(adapter: &str, id: &str) -> Option<String> {
    let out = format!("{adapter}.{id}");
    valid_id(&out).then_some(out)
}

/// The backend's id inside a gateway id of `adapter`, if it is one.
pub fn inward<'a>(adapter: &str, id: &'a str) -> Option<&'a str> {
    id.strip_prefix(adapter)?
        .strip_prefix('.')
        .filter(|rest| !rest.is_empty())
}

/// The adapter name a gateway id belongs to (`None` for the gateway's own ids).
pub fn adapter_of(id: &str) -> Option<&str> {
    id.split_once('.').map(|(a, _)| a)
}

pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_go_out_and_back() {
        assert_eq!(outward("antonius", "123").as_deref(), Some("antonius.123"));
        assert_eq!(inward("antonius", "antonius.123"), Some("123"));
        assert_eq!(inward("antonius", "antonius.a.b"), Some("a.b"));
        assert_eq!(inward("antonius", "antoniusx.1"), None);
        assert_eq!(inward("antonius", "antonius."), None);
        assert_eq!(inward("antonius", "123"), None);
        assert_eq!(adapter_of("antonius.123"), Some("antonius"));
        assert_eq!(adapter_of("0a1b-uuid"), None);
        assert_eq!(outward("a", &"x".repeat(63)), None, "over 64 characters");
    }
}
