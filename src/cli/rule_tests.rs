//! `flexgate config test RULES SUITES...`: run rule test suites (see
//! `crate::rules::suite`) like a test runner: one line per case, the failures with
//! what was expected, what happened and the trace `explain` prints, a summary line,
//! a non-zero exit on any failure, and optionally JUnit XML or JSON for CI systems.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::json;

use crate::proxy::evaluate::evaluate;
use crate::rules::suite::{self, Expected};

/// One case's result.
struct Ran {
    file: PathBuf,
    line: usize,
    name: String,
    expected: Expected,
    status: u16,
    allow: bool,
    reason: String,
    trace: Vec<String>,
}

impl Ran {
    fn passed(&self) -> bool {
        let e = &self.expected;
        e.status.is_none_or(|s| s == self.status)
            && e.allow.is_none_or(|a| a == self.allow)
            && e.reason.as_deref().is_none_or(|r| r == self.reason)
    }

    fn expected_text(&self) -> String {
        let e = &self.expected;
        let mut parts = Vec::new();
        if let Some(s) = e.status {
            parts.push(format!("status {s}"));
        }
        if let Some(a) = e.allow {
            parts.push((if a { "allow" } else { "deny" }).to_owned());
        }
        if let Some(r) = &e.reason {
            parts.push(format!("reason {r}"));
        }
        parts.join(", ")
    }

    fn actual_text(&self) -> String {
        format!(
            "status {}, {}, reason {}",
            self.status,
            if self.allow { "allow" } else { "deny" },
            self.reason
        )
    }
}

pub(crate) async fn run(
    rules_file: &Path,
    suites: &[PathBuf],
    junit: Option<&Path>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let config = match crate::rules::load(rules_file) {
        Ok(config) => config,
        Err(diagnostics) => {
            eprint!("{diagnostics}");
            eprintln!(
                "{}: {} error(s)",
                rules_file.display(),
                diagnostics.errors.len()
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    let rules = &config.rules;
    let mut loaded = Vec::new();
    let mut broken = false;
    for path in suites {
        match suite::load(path, rules) {
            Ok(s) => loaded.push(s),
            Err(diagnostics) => {
                eprint!("{diagnostics}");
                broken = true;
            }
        }
    }
    if broken {
        eprintln!("the test suites have errors; no case was run");
        return Ok(ExitCode::FAILURE);
    }
    let mut results = Vec::new();
    for s in &loaded {
        for case in &s.cases {
            let mut trace = Vec::new();
            let outcome = evaluate(rules, &case.probe, case.who.as_ref(), s, &mut trace).await;
            let (status, allow, reason) = match &outcome {
                Ok(()) => (200, true, "allowed".to_owned()),
                Err(deny) => (deny.status().as_u16(), false, deny.reason().to_owned()),
            };
            results.push(Ran {
                file: s.file.clone(),
                line: case.line,
                name: case.name.clone(),
                expected: case.expected.clone(),
                status,
                allow,
                reason,
                trace,
            });
        }
    }
    let failed = results.iter().filter(|r| !r.passed()).count();
    let passed = results.len() - failed;
    if as_json {
        let cases: Vec<_> = results
            .iter()
            .map(|r| {
                json!({
                    "file": r.file.display().to_string(),
                    "line": r.line,
                    "name": r.name,
                    "passed": r.passed(),
                    "expected": r.expected_text(),
                    "actual": {"status": r.status, "decision": if r.allow { "allow" } else { "deny" }, "reason": r.reason},
                    "trace": r.trace,
                })
            })
            .collect();
        println!(
            "{}",
            json!({"passed": passed, "failed": failed, "cases": cases})
        );
    } else {
        for r in &results {
            println!(
                "{}  {}",
                if r.passed() { "ok    " } else { "FAILED" },
                r.name
            );
        }
        let failures: Vec<&Ran> = results.iter().filter(|r| !r.passed()).collect();
        if !failures.is_empty() {
            println!("\nfailures:");
            for r in failures {
                println!("\n--- {} ({}:{})", r.name, r.file.display(), r.line);
                println!("  expected: {}", r.expected_text());
                println!("  actual:   {}", r.actual_text());
                for line in &r.trace {
                    println!("  | {line}");
                }
            }
            println!();
        }
        println!("{passed} passed, {failed} failed");
    }
    if let Some(path) = junit {
        std::fs::write(path, junit_xml(&results))
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn junit_xml(results: &[Ran]) -> String {
    let mut by_file: Vec<(&PathBuf, Vec<&Ran>)> = Vec::new();
    for r in results {
        match by_file.iter_mut().find(|(f, _)| *f == &r.file) {
            Some((_, list)) => list.push(r),
            None => by_file.push((&r.file, vec![r])),
        }
    }
    let failures = results.iter().filter(|r| !r.passed()).count();
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"flexgate config test\" tests=\"{}\" failures=\"{failures}\">\n",
        results.len()
    );
    for (file, list) in by_file {
        let name = xml(&file.display().to_string());
        let failed = list.iter().filter(|r| !r.passed()).count();
        out.push_str(&format!(
            "  <testsuite name=\"{name}\" tests=\"{}\" failures=\"{failed}\">\n",
            list.len()
        ));
        for r in list {
            out.push_str(&format!(
                "    <testcase name=\"{}\" classname=\"{name}\" file=\"{name}\" line=\"{}\"",
                xml(&r.name),
                r.line
            ));
            if r.passed() {
                out.push_str("/>\n");
            } else {
                out.push_str(&format!(
                    ">\n      <failure message=\"expected {}; got {}\">{}</failure>\n    </testcase>\n",
                    xml(&r.expected_text()),
                    xml(&r.actual_text()),
                    xml(&r.trace.join("\n"))
                ));
            }
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}
