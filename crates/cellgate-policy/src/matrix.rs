//! The permission matrix: which level or permission a tool, prompt or
//! resource needs, decided by the first matching rule.

use cellgate_config::{PermissionRuleConfig, RuleKind};
use globset::{Glob, GlobMatcher};
use serde_json::{Value, json};

use crate::cel::{Condition, ConditionInput};
use crate::{Permission, Roles};

/// What a call is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    Tool(&'a str),
    Prompt(&'a str),
    Resource(&'a str),
}

impl Target<'_> {
    fn kind(&self) -> RuleKind {
        match self {
            Target::Tool(_) => RuleKind::Tool,
            Target::Prompt(_) => RuleKind::Prompt,
            Target::Resource(_) => RuleKind::Resource,
        }
    }
    pub fn name(&self) -> &str {
        match self {
            Target::Tool(n) | Target::Prompt(n) | Target::Resource(n) => n,
        }
    }
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub pattern: String,
    kind: RuleKind,
    matcher: GlobMatcher,
    /// A number or a role name, resolved against the tenant's roles.
    pub min_role: Option<String>,
    pub permission: Option<Permission>,
    pub deny: bool,
    pub audit: bool,
    pub approval: bool,
    pub condition: Option<Condition>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("pattern {pattern:?} is not a valid glob: {message}")]
    Pattern { pattern: String, message: String },
    #[error("permission {0:?} is not one of read, write, execute, admin, delegate")]
    Permission(String),
    #[error(transparent)]
    Condition(#[from] crate::ConditionError),
    #[error("the rule requires nothing: set min_role, permission, condition or deny")]
    Empty,
}

impl Rule {
    pub fn compile(c: &PermissionRuleConfig) -> Result<Self, RuleError> {
        let matcher = Glob::new(&c.pattern)
            .map_err(|e| RuleError::Pattern {
                pattern: c.pattern.clone(),
                message: e.kind().to_string(),
            })?
            .compile_matcher();
        let permission = c
            .permission
            .as_deref()
            .map(|p| Permission::parse(p).ok_or_else(|| RuleError::Permission(p.to_owned())))
            .transpose()?;
        if !c.deny && c.min_role.is_none() && permission.is_none() && c.condition.is_none() {
            return Err(RuleError::Empty);
        }
        Ok(Self {
            pattern: c.pattern.clone(),
            kind: c.kind,
            matcher,
            min_role: c.min_role.clone(),
            permission,
            deny: c.deny,
            audit: c.audit,
            approval: c.approval,
            condition: c.condition.as_deref().map(Condition::compile).transpose()?,
        })
    }

    fn matches(&self, target: &Target<'_>) -> bool {
        self.kind == target.kind() && self.matcher.is_match(target.name())
    }
}

/// What a target needs, and where that came from.
#[derive(Debug, Clone)]
pub struct Requirement {
    pub min_role: Option<String>,
    pub permission: Option<Permission>,
    pub deny: bool,
    pub audit: bool,
    pub approval: bool,
    pub condition: Option<Condition>,
    /// `rule "pattern"`, `provider` or `default`, for messages and the audit trail.
    pub source: String,
}

/// The outcome of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub allowed: bool,
    /// Why, in words fit for the caller (names what is missing, never secrets).
    pub reason: String,
    pub audit: bool,
    pub approval: bool,
}

/// An ordered list of rules; the first that matches decides.
#[derive(Debug, Clone, Default)]
pub struct Matrix {
    rules: Vec<Rule>,
}

impl Matrix {
    pub fn new(rules: Vec<Rule>) -> Self {
        Self { rules }
    }

    /// `first` rules are tried before these (a tenant's own before the
    /// instance's).
    pub fn layered(first: &Matrix, then: &Matrix) -> Self {
        Self {
            rules: first.rules.iter().chain(&then.rules).cloned().collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The requirement for `target`. Without a matching rule: what the
    /// provider declared for the tool, else `execute` for tools and `read`
    /// for prompts and resources.
    pub fn requirement(&self, target: &Target<'_>, declared: Option<Permission>) -> Requirement {
        if let Some(rule) = self.rules.iter().find(|r| r.matches(target)) {
            return Requirement {
                min_role: rule.min_role.clone(),
                permission: rule.permission,
                deny: rule.deny,
                audit: rule.audit,
                approval: rule.approval,
                condition: rule.condition.clone(),
                source: format!("rule {:?}", rule.pattern),
            };
        }
        let (permission, source) = match (declared, target) {
            (Some(p), _) => (p, "provider"),
            (None, Target::Tool(_)) => (Permission::Execute, "default"),
            (None, _) => (Permission::Read, "default"),
        };
        Requirement {
            min_role: None,
            permission: Some(permission),
            deny: false,
            audit: false,
            approval: false,
            condition: None,
            source: source.to_owned(),
        }
    }
}

/// Who is asking, for [`check`].
pub struct Caller<'a> {
    pub id: &'a str,
    pub kind: &'a str,
    pub roles: &'a [String],
    pub tenant: &'a str,
    pub claims: &'a Value,
}

/// Checks a requirement for a caller. `args = None` means "not known yet"
/// (listing): a condition then counts as satisfiable, so a tool whose
/// condition depends on arguments stays visible and is checked at call time.
pub fn check(
    req: &Requirement,
    roles: &Roles,
    caller: &Caller<'_>,
    target: &Target<'_>,
    args: Option<&Value>,
) -> Access {
    let deny = |reason: String| Access {
        allowed: false,
        reason,
        audit: req.audit,
        approval: req.approval,
    };
    let name = target.name();
    if req.deny {
        return deny(format!("`{name}` is denied to everyone by {}", req.source));
    }
    let (level, perms) = roles.effective(caller.roles);
    if let Some(min) = &req.min_role {
        let Some(needed) = roles.level_of(min) else {
            // A rule naming a role this tenant does not have can never be met.
            return deny(format!(
                "`{name}` needs role {min:?}, which is not defined ({})",
                req.source
            ));
        };
        if level < needed {
            return deny(format!(
                "`{name}` needs a role of level {needed} ({min}) or higher; the caller's roles reach level {level} ({})",
                req.source
            ));
        }
    }
    if let Some(p) = req.permission
        && !perms.contains(p)
    {
        return deny(format!(
            "`{name}` needs the `{}` permission; the caller's roles grant [{perms}] ({})",
            p.as_str(),
            req.source
        ));
    }
    if let (Some(cond), Some(args)) = (&req.condition, args) {
        let principal = json!({"id": caller.id, "kind": caller.kind, "roles": caller.roles});
        let verdict = cond.evaluate(&ConditionInput {
            principal: &principal,
            tenant: caller.tenant,
            tool: name,
            args,
            claims: caller.claims,
        });
        match verdict {
            Ok(true) => {}
            Ok(false) => {
                return deny(format!(
                    "`{name}`: condition {:?} is false ({})",
                    cond.source(),
                    req.source
                ));
            }
            Err(e) => {
                return deny(format!(
                    "`{name}`: condition {:?} could not be evaluated: {e} ({})",
                    cond.source(),
                    req.source
                ));
            }
        }
    }
    Access {
        allowed: true,
        reason: format!("allowed by {}", req.source),
        audit: req.audit,
        approval: req.approval,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellgate_config::RoleSet;

    fn rule(pattern: &str, f: impl FnOnce(&mut PermissionRuleConfig)) -> Rule {
        let mut c = PermissionRuleConfig {
            pattern: pattern.into(),
            ..Default::default()
        };
        f(&mut c);
        Rule::compile(&c).unwrap()
    }

    fn caller<'a>(roles: &'a [String], claims: &'a Value) -> Caller<'a> {
        Caller {
            id: "alice",
            kind: "user",
            roles,
            tenant: "acme",
            claims,
        }
    }

    #[test]
    fn first_matching_rule_decides_with_globs() {
        let m = Matrix::new(vec![
            rule("fs__delete_*", |c| c.min_role = Some("admin".into())),
            rule("fs__*", |c| c.permission = Some("write".into())),
            rule("secret_*", |c| c.deny = true),
        ]);
        let roles = Roles::builtin(RoleSet::Standard);
        let dev = vec!["developer".to_owned()];
        let op = vec!["operator".to_owned()];
        let admin = vec!["admin".to_owned()];
        let none = Value::Null;
        let t = Target::Tool("fs__delete_file");
        let r = m.requirement(&t, None);
        assert!(!check(&r, &roles, &caller(&op, &none), &t, Some(&json!({}))).allowed);
        assert!(check(&r, &roles, &caller(&admin, &none), &t, Some(&json!({}))).allowed);
        let t = Target::Tool("fs__write");
        let r = m.requirement(&t, None);
        let denied = check(&r, &roles, &caller(&dev, &none), &t, Some(&json!({})));
        assert!(!denied.allowed);
        assert!(
            denied.reason.contains("`write` permission"),
            "{}",
            denied.reason
        );
        assert!(check(&r, &roles, &caller(&op, &none), &t, Some(&json!({}))).allowed);
        let t = Target::Tool("secret_tool");
        assert!(
            !check(
                &m.requirement(&t, None),
                &roles,
                &caller(&admin, &none),
                &t,
                None
            )
            .allowed
        );
    }

    #[test]
    fn defaults_and_provider_declarations() {
        let m = Matrix::default();
        let roles = Roles::builtin(RoleSet::Standard);
        let viewer = vec!["viewer".to_owned()];
        let none = Value::Null;
        let tool = Target::Tool("anything");
        assert!(
            !check(
                &m.requirement(&tool, None),
                &roles,
                &caller(&viewer, &none),
                &tool,
                None
            )
            .allowed
        );
        let prompt = Target::Prompt("p");
        assert!(
            check(
                &m.requirement(&prompt, None),
                &roles,
                &caller(&viewer, &none),
                &prompt,
                None
            )
            .allowed
        );
        let admin_tool = Target::Tool("create_tenant");
        let dev = vec!["developer".to_owned()];
        let req = m.requirement(&admin_tool, Some(Permission::Admin));
        assert_eq!(req.source, "provider");
        assert!(!check(&req, &roles, &caller(&dev, &none), &admin_tool, None).allowed);
        let nobody: Vec<String> = vec![];
        assert!(
            !check(
                &m.requirement(&prompt, None),
                &roles,
                &caller(&nobody, &none),
                &prompt,
                None
            )
            .allowed
        );
    }

    #[test]
    fn conditions_apply_at_call_time_only() {
        let m = Matrix::new(vec![rule("fs__write", |c| {
            c.permission = Some("execute".into());
            c.condition = Some(r#"args.path.startsWith("/tmp/")"#.into());
            c.audit = true;
        })]);
        let roles = Roles::builtin(RoleSet::Standard);
        let dev = vec!["developer".to_owned()];
        let none = Value::Null;
        let t = Target::Tool("fs__write");
        let r = m.requirement(&t, None);
        assert!(
            check(&r, &roles, &caller(&dev, &none), &t, None).allowed,
            "listing shows it"
        );
        assert!(
            check(
                &r,
                &roles,
                &caller(&dev, &none),
                &t,
                Some(&json!({"path": "/tmp/a"}))
            )
            .allowed
        );
        let no = check(
            &r,
            &roles,
            &caller(&dev, &none),
            &t,
            Some(&json!({"path": "/etc/passwd"})),
        );
        assert!(!no.allowed && no.audit);
        let err = check(&r, &roles, &caller(&dev, &none), &t, Some(&json!({})));
        assert!(
            !err.allowed && err.reason.contains("could not be evaluated"),
            "{}",
            err.reason
        );
    }

    #[test]
    fn kinds_do_not_cross_and_bad_rules_are_refused() {
        let m = Matrix::new(vec![rule("x", |c| c.deny = true)]);
        assert!(!m.requirement(&Target::Prompt("x"), None).deny);
        assert!(m.requirement(&Target::Tool("x"), None).deny);
        let bad = |f: fn(&mut PermissionRuleConfig)| {
            let mut c = PermissionRuleConfig {
                pattern: "a".into(),
                deny: true,
                ..Default::default()
            };
            f(&mut c);
            Rule::compile(&c).unwrap_err().to_string()
        };
        assert!(bad(|c| c.pattern = "a[".into()).contains("not a valid glob"));
        assert!(bad(|c| c.permission = Some("root".into())).contains("not one of"));
        assert!(bad(|c| c.condition = Some("(".into())).contains("does not parse"));
        assert!(bad(|c| c.deny = false).contains("requires nothing"));
    }
}
