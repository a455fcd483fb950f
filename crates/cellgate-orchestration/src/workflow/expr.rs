//! Conditions: CEL expressions (the same `cel-interpreter` the permission
//! matrix uses) over the workflow's state: `input`, `phases.<id>.output`,
//! `steps.<id>.output`, and where they apply `output` (the phase's output)
//! and `iteration` (ITERATIVE phases, counting from 1).

use std::fmt;
use std::sync::Arc;

use cel_interpreter::{Context, Program};
use serde_json::Value;

/// A compiled condition.
#[derive(Clone)]
pub(crate) struct Expr {
    source: Arc<str>,
    program: Arc<Program>,
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Expr").field(&self.source).finish()
    }
}

impl Expr {
    /// Compiles `source` and checks that it reads only `allowed` variables.
    pub(crate) fn compile(source: &str, allowed: &[&str]) -> Result<Expr, String> {
        // The generated parser panics on some malformed input; a typo in a
        // definition must be an error, not a crash.
        let program = match std::panic::catch_unwind(|| Program::compile(source)) {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return Err(format!("CEL expression {source:?} does not parse: {e}")),
            Err(_) => return Err(format!("CEL expression {source:?} is malformed")),
        };
        let refs = program.references();
        for var in refs.variables() {
            if !allowed.contains(&var) {
                return Err(format!(
                    "unknown variable `{var}` in {source:?} (available here: {})",
                    allowed.join(", ")
                ));
            }
        }
        Ok(Expr {
            source: Arc::from(source),
            program: Arc::new(program),
        })
    }

    /// Names used as `root.<name>` in the source (for `phases.<id>` and
    /// `steps.<id>` checks at definition time).
    pub(crate) fn members_of(&self, root: &str) -> Vec<String> {
        let src: &str = &self.source;
        let pat = format!("{root}.");
        let mut out = Vec::new();
        let mut from = 0;
        while let Some(i) = src[from..].find(&pat) {
            let at = from + i;
            let boundary = src[..at]
                .chars()
                .next_back()
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'));
            let rest = &src[at + pat.len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if boundary && !name.is_empty() {
                out.push(name);
            }
            from = at + pat.len();
        }
        out
    }

    /// Evaluates over `scope` (an object whose keys are the variables);
    /// anything but the boolean `true` or `false` is an error.
    pub(crate) fn eval_bool(&self, scope: &Value) -> Result<bool, String> {
        let mut ctx = Context::default();
        if let Value::Object(map) = scope {
            for (name, value) in map {
                let v = cel_interpreter::to_value(value.clone())
                    .map_err(|e| format!("binding `{name}`: {e}"))?;
                ctx.add_variable_from_value(name.as_str(), v);
            }
        }
        let run =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.program.execute(&ctx)));
        match run {
            Ok(Ok(cel_interpreter::Value::Bool(b))) => Ok(b),
            Ok(Ok(other)) => Err(format!(
                "{:?} evaluated to {other:?}, not a boolean",
                self.source
            )),
            Ok(Err(e)) => Err(format!("{:?}: {e}", self.source)),
            Err(_) => Err(format!("{:?}: the interpreter failed", self.source)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn compiles_checks_variables_and_evaluates() {
        let e = Expr::compile(
            "size(phases.plan.output.items) > 2 && input.go",
            &["input", "phases"],
        )
        .unwrap();
        assert_eq!(e.members_of("phases"), vec!["plan"]);
        let scope =
            json!({"input": {"go": true}, "phases": {"plan": {"output": {"items": [1, 2, 3]}}}});
        assert_eq!(e.eval_bool(&scope), Ok(true));
        assert!(
            Expr::compile("nope > 1", &["input"])
                .unwrap_err()
                .contains("unknown variable `nope`")
        );
        assert!(Expr::compile("input.(", &["input"]).is_err());
        assert!(
            Expr::compile("1 + 1", &[])
                .unwrap()
                .eval_bool(&json!({}))
                .is_err()
        );
    }
}
