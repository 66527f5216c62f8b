//! FHIRPath (N1, with FHIR R4's additions) over resources as JSON: what search parameters are
//! defined in. Written here rather than taken from a crate: the candidates evaluated were
//! `ferrobridge-fhirpath` (BUSL-1.1, not compatible with the gateway's EUPL), `helios-fhirpath`
//! (evaluates HFS's generated typed models, not JSON, and brings their long compile) and
//! `octofhir-fhirpath` (an async engine around a model provider; heavy for evaluating a path on
//! every write). How much of the language this covers is measured against the official FHIRPath
//! test suite (`gateway/tests/fhirpath_suite.rs`).

mod eval;
mod parse;

pub use eval::{Item, compare, equal};
pub use parse::Expr;

/// A parsed expression, evaluated any number of times.
#[derive(Debug, Clone)]
pub struct FhirPath {
    expr: Expr,
}

impl FhirPath {
    pub fn parse(text: &str) -> Result<FhirPath, String> {
        Ok(FhirPath {
            expr: parse::parse(text)?,
        })
    }

    /// The parsed expression (FHIRPath Patch follows its navigation itself).
    pub fn expr(&self) -> &Expr {
        &self.expr
    }

    /// The collection the expression yields on `resource`.
    pub fn evaluate<'a>(&self, resource: &'a serde_json::Value) -> Result<Vec<Item<'a>>, String> {
        eval::evaluate(&self.expr, resource, false)
    }

    /// As [`FhirPath::evaluate`], but `as` over several items keeps those of the type, as R4's
    /// search parameter expressions need (see `eval::Env`).
    pub fn evaluate_for_search<'a>(
        &self,
        resource: &'a serde_json::Value,
    ) -> Result<Vec<Item<'a>>, String> {
        eval::evaluate(&self.expr, resource, true)
    }
}

/// Evaluates a parsed expression on an element (or resource) as its root.
pub fn evaluate_expr<'a>(
    expr: &Expr,
    node: &'a serde_json::Value,
) -> Result<Vec<Item<'a>>, String> {
    eval::evaluate(expr, node, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval(e: &str, r: &serde_json::Value) -> Vec<serde_json::Value> {
        FhirPath::parse(e)
            .unwrap()
            .evaluate(r)
            .unwrap()
            .iter()
            .map(Item::to_json)
            .collect()
    }

    #[test]
    fn search_parameter_expressions() {
        let obs = json!({
            "resourceType": "Observation",
            "subject": { "reference": "Patient/p1" },
            "performer": [{ "reference": "Practitioner/d1" }, { "reference": "Patient/p1" }],
            "code": { "coding": [{ "system": "http://loinc.org", "code": "718-7" }] },
            "valueQuantity": { "value": 8.5, "unit": "mmol/L" },
            "extension": [{ "url": "http://x/a", "valueString": "A" }]
        });
        assert_eq!(
            eval("Observation.subject.where(resolve() is Patient)", &obs).len(),
            1
        );
        assert_eq!(
            eval("Observation.performer.where(resolve() is Patient)", &obs).len(),
            1
        );
        assert_eq!(
            eval("Patient.name", &obs).len(),
            0,
            "another type's path is empty"
        );
        assert_eq!(
            eval("(Observation.value as Quantity)", &obs),
            vec![json!({ "value": 8.5, "unit": "mmol/L" })]
        );
        assert_eq!(
            eval("Observation.value.ofType(Quantity).value", &obs),
            vec![json!(8.5)]
        );
        assert_eq!(eval("Observation.value as string", &obs).len(), 0);
        assert_eq!(
            eval(
                "Observation.code.coding.code | Observation.code.coding.system",
                &obs
            )
            .len(),
            2
        );
        assert_eq!(
            eval("Observation.extension('http://x/a').value", &obs),
            vec![json!("A")]
        );
        assert_eq!(
            eval("Observation.performer.count() = 2", &obs),
            vec![json!(true)]
        );
    }

    #[test]
    fn operators_and_functions() {
        let p = json!({ "resourceType": "Patient", "birthDate": "1974-12-25", "name": [{ "given": ["Ada", "B"] }] });
        assert_eq!(eval("1 + 2 * 3", &p), vec![json!(7)]);
        assert_eq!(
            eval("Patient.birthDate < @2000-01-01", &p),
            vec![json!(true)]
        );
        assert_eq!(
            eval("Patient.birthDate = @1974", &p),
            Vec::<serde_json::Value>::new(),
            "different precision: unknown"
        );
        assert_eq!(
            eval("Patient.name.given.first().upper()", &p),
            vec![json!("ADA")]
        );
        assert_eq!(
            eval(
                "Patient.name.given.where($this.startsWith('A')).count()",
                &p
            ),
            vec![json!(1)]
        );
        assert_eq!(
            eval("iif(Patient.name.exists(), 'y', 'n')", &p),
            vec![json!("y")]
        );
        assert_eq!(eval("'a' | 'b' | 'a'", &p).len(), 2);
        assert!(
            FhirPath::parse("Patient.name.given.nope()")
                .unwrap()
                .evaluate(&p)
                .is_err()
        );
    }
}
