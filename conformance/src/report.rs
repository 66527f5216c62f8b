//! JUnit XML (one testsuite per group) and the readable summary.

use quick_xml::escape::escape;
use std::collections::BTreeMap;

pub struct CaseResult {
    pub group: &'static str,
    pub name: &'static str,
    pub outcome: Result<(), String>,
    pub seconds: f64,
}

pub fn junit(results: &[CaseResult]) -> String {
    let mut groups: BTreeMap<&str, Vec<&CaseResult>> = BTreeMap::new();
    for r in results {
        groups.entry(r.group).or_default().push(r);
    }
    let failures = results.iter().filter(|r| r.outcome.is_err()).count();
    let total: f64 = results.iter().map(|r| r.seconds).sum();
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"fhir-gateway-conformance\" tests=\"{}\" failures=\"{failures}\" time=\"{total:.3}\">\n",
        results.len()
    );
    for (group, cases) in groups {
        let f = cases.iter().filter(|r| r.outcome.is_err()).count();
        let t: f64 = cases.iter().map(|r| r.seconds).sum();
        out.push_str(&format!(
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{f}\" time=\"{t:.3}\">\n",
            escape(group),
            cases.len()
        ));
        for c in cases {
            out.push_str(&format!(
                "    <testcase classname=\"conformance.{}\" name=\"{}\" time=\"{:.3}\"",
                escape(c.group),
                escape(c.name),
                c.seconds
            ));
            match &c.outcome {
                Ok(()) => out.push_str("/>\n"),
                Err(msg) => out.push_str(&format!(
                    ">\n      <failure message=\"{}\"/>\n    </testcase>\n",
                    escape(msg.as_str())
                )),
            }
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

pub fn summary(base: &str, results: &[CaseResult], seconds: f64) -> String {
    let mut out = format!("Conformance suite against {base}\n\n");
    let mut current = "";
    for r in results {
        if r.group != current {
            out.push_str(&format!("{}\n", r.group));
            current = r.group;
        }
        match &r.outcome {
            Ok(()) => out.push_str(&format!(
                "  pass  {} ({:.0} ms)\n",
                r.name,
                r.seconds * 1000.0
            )),
            Err(e) => out.push_str(&format!("  FAIL  {}: {e}\n", r.name)),
        }
    }
    let failed = results.iter().filter(|r| r.outcome.is_err()).count();
    // The last line alone, as CI readers expect: "N passed, N failed".
    out.push_str(&format!(
        "\ntime: {seconds:.1} s\n{} passed, {} failed\n",
        results.len() - failed,
        failed
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junit_escapes_and_counts() {
        let r = vec![
            CaseResult {
                group: "crud",
                name: "read",
                outcome: Ok(()),
                seconds: 0.1,
            },
            CaseResult {
                group: "crud",
                name: "bad <x>",
                outcome: Err("expected \"201\" & got 500".into()),
                seconds: 0.2,
            },
        ];
        let x = junit(&r);
        assert!(x.contains("tests=\"2\" failures=\"1\""));
        assert!(x.contains("bad &lt;x&gt;"));
        assert!(x.contains("expected &quot;201&quot; &amp; got 500"));
        let s = summary("http://x/fhir", &r, 1.0);
        assert!(s.contains("1 passed, 1 failed"));
    }
}
