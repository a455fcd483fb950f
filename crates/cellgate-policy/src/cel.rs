//! CEL conditions on permission rules, for what roles cannot express
//! ("only paths under /tmp", "only for the eng department").

use std::fmt;
use std::sync::Arc;

use cel_interpreter::{Context, Program};
use serde_json::Value;

/// A compiled CEL expression that must evaluate to `true`.
#[derive(Clone)]
pub struct Condition {
    source: Arc<str>,
    program: Arc<Program>,
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Condition").field(&self.source).finish()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("CEL condition {source_text:?} does not parse: {message}")]
pub struct ConditionError {
    pub source_text: String,
    pub message: String,
}

/// What a condition can see.
pub struct ConditionInput<'a> {
    pub principal: &'a Value,
    pub tenant: &'a str,
    pub tool: &'a str,
    pub args: &'a Value,
    pub claims: &'a Value,
}

impl Condition {
    pub fn compile(source: &str) -> Result<Self, ConditionError> {
        // cel-interpreter's generated parser panics on some malformed
        // input ("args.(" reaches an `unreachable!`); a policy typo must be
        // an error, not a crash, so the panic is caught here.
        let compiled = std::panic::catch_unwind(|| Program::compile(source));
        let program = match compiled {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                return Err(ConditionError {
                    source_text: source.to_owned(),
                    message: e.to_string(),
                });
            }
            Err(_) => {
                return Err(ConditionError {
                    source_text: source.to_owned(),
                    message: "the expression is malformed".into(),
                });
            }
        };
        Ok(Self {
            source: Arc::from(source),
            program: Arc::new(program),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// `Ok(true)` only when the expression evaluates to the boolean `true`;
    /// an evaluation error (a missing argument, a type mismatch) is an `Err`
    /// with the reason, which callers treat as a denial.
    pub fn evaluate(&self, input: &ConditionInput<'_>) -> Result<bool, String> {
        let mut ctx = Context::default();
        let vars: [(&str, Value); 5] = [
            ("principal", input.principal.clone()),
            ("tenant", Value::String(input.tenant.to_owned())),
            ("tool", Value::String(input.tool.to_owned())),
            ("args", input.args.clone()),
            ("claims", input.claims.clone()),
        ];
        for (name, value) in vars {
            let v =
                cel_interpreter::to_value(value).map_err(|e| format!("binding `{name}`: {e}"))?;
            ctx.add_variable_from_value(name, v);
        }
        let run =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.program.execute(&ctx)));
        match run {
            Ok(Ok(cel_interpreter::Value::Bool(b))) => Ok(b),
            Ok(Ok(other)) => Err(format!("evaluated to {other:?}, not a boolean")),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the interpreter failed on this expression".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval(src: &str, args: Value, claims: Value) -> Result<bool, String> {
        let principal = json!({"id": "alice", "kind": "user", "roles": ["developer"]});
        Condition::compile(src).unwrap().evaluate(&ConditionInput {
            principal: &principal,
            tenant: "acme",
            tool: "fs__write",
            args: &args,
            claims: &claims,
        })
    }

    #[test]
    fn conditions_over_args_claims_and_principal() {
        assert_eq!(
            eval(
                r#"args.path.startsWith("/tmp/")"#,
                json!({"path": "/tmp/x"}),
                json!({})
            ),
            Ok(true)
        );
        assert_eq!(
            eval(
                r#"args.path.startsWith("/tmp/")"#,
                json!({"path": "/etc/x"}),
                json!({})
            ),
            Ok(false)
        );
        assert_eq!(
            eval(r#"claims.dept == "eng""#, json!({}), json!({"dept": "eng"})),
            Ok(true)
        );
        assert_eq!(
            eval(
                r#""developer" in principal.roles && tenant == "acme""#,
                json!({}),
                json!({})
            ),
            Ok(true)
        );
        assert_eq!(
            eval(r#"tool == "fs__write""#, json!({}), json!({})),
            Ok(true)
        );
    }

    #[test]
    fn errors_and_non_booleans_are_not_true() {
        assert!(eval("args.missing == 1", json!({}), json!({})).is_err());
        assert!(eval("1 + 1", json!({}), json!({})).is_err());
        let bad = Condition::compile("args.(").unwrap_err();
        assert!(bad.to_string().contains("does not parse"), "{bad}");
    }
}
