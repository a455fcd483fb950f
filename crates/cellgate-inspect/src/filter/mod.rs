//! [`ContentFilterStage`] (TORI in the design documents): concept
//! extraction → classification → policy enforcement → tagging, on inputs
//! (tool and prompt arguments) and outputs (tool results, resource
//! contents, prompt messages, error messages).

mod detect;
mod stats;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use cellgate_config::FilterConfig;
use cellgate_kernel::{
    BoxFuture, Call, DecisionTrail, McpError, Request, Stage, StageLayer, Verdict,
};
use serde::Serialize;
use serde_json::{Map, Value};

pub use detect::{Category, Detectors, iban_ok, luhn};
pub use stats::{FilterStage, FilterStats, FilterStatsSnapshot, StageStats};

use crate::InspectError;
use crate::path::Path;
use detect::Span;

/// The layer name on the decision trail and in block errors.
pub const FILTER_LAYER: &str = "filter";

/// What the filter does with a finding, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// Let it through; only the statistics count it.
    Allow,
    /// Let it through and record its concept tag on the trail.
    Tag,
    /// Replace it with `[REDACTED:<label>]` (and record the tag).
    Redact,
    /// Refuse the call or withhold the result (and record the tag).
    Block,
}

impl Action {
    pub const ALL: [Action; 4] = [Action::Allow, Action::Tag, Action::Redact, Action::Block];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Tag => "tag",
            Action::Redact => "redact",
            Action::Block => "block",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// What the filter does for one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterPolicy {
    /// Filter tool and prompt arguments.
    pub inputs: bool,
    /// Filter results.
    pub outputs: bool,
    actions: [Action; 7],
}

impl Default for FilterPolicy {
    fn default() -> Self {
        Self::from_config(&FilterConfig::default())
    }
}

/// The configuration's action as ours. Both enums list the same four
/// actions; an unknown name could only come from a newer configuration
/// crate and fails closed.
fn action_of(name: &str) -> Action {
    Action::parse(name).unwrap_or(Action::Block)
}

impl FilterPolicy {
    /// A policy with one action for every category.
    pub fn uniform(action: Action) -> Self {
        Self {
            inputs: true,
            outputs: true,
            actions: [action; 7],
        }
    }

    pub fn action(&self, category: Category) -> Action {
        self.actions[category.index()]
    }

    pub fn with_action(mut self, category: Category, action: Action) -> Self {
        self.actions[category.index()] = action;
        self
    }

    /// The default policy of `[filter]`.
    pub fn from_config(cfg: &FilterConfig) -> Self {
        let a = &cfg.actions;
        let mut actions = [Action::Allow; 7];
        for (c, name) in [
            (Category::Email, a.email.as_str()),
            (Category::Phone, a.phone.as_str()),
            (Category::Card, a.card.as_str()),
            (Category::Iban, a.iban.as_str()),
            (Category::NationalId, a.national_id.as_str()),
            (Category::Ip, a.ip.as_str()),
            (Category::Secret, a.secret.as_str()),
        ] {
            actions[c.index()] = action_of(name);
        }
        Self {
            inputs: cfg.inputs,
            outputs: cfg.outputs,
            actions,
        }
    }

    /// The policy of `tenant`: `[filter.tenants.<id>]` over the default.
    pub fn for_tenant(cfg: &FilterConfig, tenant: &str) -> Self {
        let mut p = Self::from_config(cfg);
        let Some(t) = cfg.tenants.get(tenant) else {
            return p;
        };
        p.inputs = t.inputs.unwrap_or(p.inputs);
        p.outputs = t.outputs.unwrap_or(p.outputs);
        let o = &t.actions;
        for (c, over) in [
            (Category::Email, o.email),
            (Category::Phone, o.phone),
            (Category::Card, o.card),
            (Category::Iban, o.iban),
            (Category::NationalId, o.national_id),
            (Category::Ip, o.ip),
            (Category::Secret, o.secret),
        ] {
            if let Some(a) = over {
                p.actions[c.index()] = action_of(a.as_str());
            }
        }
        p
    }
}

/// Where the filter gets each tenant's policy (see [`crate::InspectPolicies`]).
pub trait FilterPolicies: Send + Sync {
    fn policy(&self, tenant: &str) -> Arc<FilterPolicy>;
}

/// A default policy and per-tenant ones, fixed at start-up.
#[derive(Debug, Clone, Default)]
pub struct StaticFilterPolicies {
    default: Arc<FilterPolicy>,
    tenants: HashMap<String, Arc<FilterPolicy>>,
}

impl StaticFilterPolicies {
    pub fn new(default: FilterPolicy) -> Self {
        Self {
            default: Arc::new(default),
            tenants: HashMap::new(),
        }
    }

    pub fn with_tenant(mut self, tenant: impl Into<String>, policy: FilterPolicy) -> Self {
        self.tenants.insert(tenant.into(), Arc::new(policy));
        self
    }

    pub fn from_config(cfg: &FilterConfig) -> Self {
        let mut s = Self::new(FilterPolicy::from_config(cfg));
        for tenant in cfg.tenants.keys() {
            s = s.with_tenant(tenant.clone(), FilterPolicy::for_tenant(cfg, tenant));
        }
        s
    }
}

impl FilterPolicies for StaticFilterPolicies {
    fn policy(&self, tenant: &str) -> Arc<FilterPolicy> {
        self.tenants.get(tenant).unwrap_or(&self.default).clone()
    }
}

/// A finding whose category is blocked: where, never what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockedFinding {
    pub tag: String,
    /// JSON pointer of the string it was found in.
    pub path: String,
}

/// What one run of the filter over a document did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterOutcome {
    /// Confirmed findings, whatever their action.
    pub findings: usize,
    /// Concept tags of the findings not allowed, sorted, each once.
    pub tags: Vec<String>,
    /// Findings replaced by placeholders.
    pub redacted: usize,
    /// Findings of blocked categories (the document was left unchanged).
    pub blocked: Vec<BlockedFinding>,
}

impl FilterOutcome {
    pub fn is_blocked(&self) -> bool {
        !self.blocked.is_empty()
    }

    fn blocked_tags(&self) -> String {
        let mut tags: Vec<&str> = self.blocked.iter().map(|b| b.tag.as_str()).collect();
        tags.sort_unstable();
        tags.dedup();
        tags.join(", ")
    }
}

/// The content filter stage. Add it with `builder.layer(stage.into_layer())`
/// before (inside of) the inspection stage; see the crate documentation.
pub struct ContentFilterStage {
    detectors: Detectors,
    policies: Arc<dyn FilterPolicies>,
    stats: Arc<FilterStats>,
    enabled: bool,
}

/// What `before` hands to `after`.
pub struct OutputFilter {
    policy: Arc<FilterPolicy>,
    trail: Arc<DecisionTrail>,
}

impl ContentFilterStage {
    pub fn new(detectors: Detectors, policies: Arc<dyn FilterPolicies>) -> Self {
        Self {
            detectors,
            policies,
            stats: Arc::new(FilterStats::new()),
            enabled: true,
        }
    }

    /// Everything from `[filter]`: detectors (with `national_ids`), the
    /// default and per-tenant policies. Fails on a national-id pattern that
    /// does not compile.
    pub fn from_config(cfg: &FilterConfig) -> Result<Self, InspectError> {
        let ids: Vec<(String, String)> = cfg
            .national_ids
            .iter()
            .map(|n| (n.name.clone(), n.pattern.clone()))
            .collect();
        let mut s = Self::new(
            Detectors::new(&ids)?,
            Arc::new(StaticFilterPolicies::from_config(cfg)),
        );
        s.enabled = cfg.enabled;
        Ok(s)
    }

    /// The stage as a pipeline layer.
    pub fn into_layer(self) -> StageLayer<Self> {
        StageLayer::new(self)
    }

    /// The statistics (shared: keep a clone before turning the stage into a layer).
    pub fn stats(&self) -> Arc<FilterStats> {
        self.stats.clone()
    }

    /// Runs the four stages over every string of `doc` under `policy`,
    /// redacting in place unless a finding is blocked. With `output`,
    /// binary payloads (`blob`, image and audio `data`) and `_meta` are
    /// skipped. Object keys are not filtered.
    pub fn filter(&self, policy: &FilterPolicy, doc: &mut Value, output: bool) -> FilterOutcome {
        self.run(policy, doc, output, false)
    }

    fn run(
        &self,
        policy: &FilterPolicy,
        doc: &mut Value,
        output: bool,
        block_as_redact: bool,
    ) -> FilterOutcome {
        use stats::FilterStage as S;
        let mut out = FilterOutcome::default();
        // 1. Concept extraction: candidates from one set match per string.
        let started = Instant::now();
        let mut candidates: Vec<(usize, &str, Span)> = Vec::new();
        let mut paths: Vec<(usize, String)> = Vec::new();
        let mut strings = 0usize;
        for_each_str(doc, &Path::ROOT, output, &mut |s, path| {
            let before = candidates.len();
            self.detectors
                .extract(s, |c| candidates.push((strings, s, c)));
            if candidates.len() > before {
                paths.push((strings, path.pointer()));
            }
            strings += 1;
        });
        let extracted = Instant::now();
        self.stats
            .stage(S::Extract, strings as u64, extracted - started);
        if candidates.is_empty() {
            return out;
        }
        // 2. Classification: confirm (Luhn, mod-97, …) or drop.
        let examined = candidates.len() as u64;
        let confirmed: Vec<(usize, Span)> = candidates
            .iter()
            .filter_map(|&(i, s, c)| self.detectors.classify(s, c).map(|c| (i, c)))
            .collect();
        let classified = Instant::now();
        self.stats
            .stage(S::Classify, examined, classified - extracted);
        // 3. Policy enforcement.
        out.findings = confirmed.len();
        let mut redact: Vec<(usize, Span)> = Vec::new();
        let mut tags: Vec<&str> = Vec::new();
        for &(i, c) in &confirmed {
            let d = self.detectors.get(c.det);
            let mut action = policy.action(d.category);
            if action == Action::Block && block_as_redact {
                action = Action::Redact;
            }
            self.stats.finding(d.category, action);
            if action >= Action::Tag {
                tags.push(&d.tag);
            }
            match action {
                Action::Block => {
                    let path = paths
                        .iter()
                        .find(|(j, _)| *j == i)
                        .map(|(_, p)| p.clone())
                        .unwrap_or_default();
                    out.blocked.push(BlockedFinding {
                        tag: d.tag.clone(),
                        path,
                    });
                }
                Action::Redact => redact.push((i, c)),
                _ => {}
            }
        }
        drop(candidates);
        if !out.is_blocked() && !redact.is_empty() {
            out.redacted = self.redact(doc, output, redact);
        }
        let enforced = Instant::now();
        self.stats
            .stage(S::Enforce, confirmed.len() as u64, enforced - classified);
        // 4. Tagging.
        tags.sort_unstable();
        tags.dedup();
        out.tags = tags.iter().map(|t| (*t).to_owned()).collect();
        self.stats
            .stage(S::Tag, out.tags.len() as u64, enforced.elapsed());
        out
    }

    /// Replaces the spans in `plan` (string index, span) with placeholders;
    /// overlapping spans keep the earliest, then the longest. Returns how
    /// many were replaced.
    fn redact(&self, doc: &mut Value, output: bool, mut plan: Vec<(usize, Span)>) -> usize {
        plan.sort_by_key(|(i, c)| (*i, c.start, usize::MAX - c.end, c.det));
        let mut kept: Vec<(usize, Span)> = Vec::with_capacity(plan.len());
        for (i, c) in plan {
            match kept.last() {
                Some((j, last)) if *j == i && c.start < last.end => {}
                _ => kept.push((i, c)),
            }
        }
        let count = kept.len();
        let mut n = 0usize;
        let mut next = 0usize;
        for_each_str_mut(doc, output, &mut |s| {
            let idx = n;
            n += 1;
            if next >= kept.len() || kept[next].0 != idx {
                return;
            }
            let mut out = String::with_capacity(s.len());
            let mut at = 0;
            while next < kept.len() && kept[next].0 == idx {
                let c = kept[next].1;
                out.push_str(&s[at..c.start]);
                out.push_str(&self.detectors.get(c.det).placeholder);
                at = c.end;
                next += 1;
            }
            out.push_str(&s[at..]);
            *s = out;
        });
        count
    }

    fn record(&self, trail: &DecisionTrail, what: &str, o: &FilterOutcome) {
        if o.is_blocked() {
            trail.deny(
                FILTER_LAYER,
                format!("blocked {what}: {}", o.blocked_tags()),
            );
        } else if o.redacted > 0 {
            trail.record(
                FILTER_LAYER,
                Verdict::Modify,
                Some(format!(
                    "redacted {} finding(s) in {what}; tags: {}",
                    o.redacted,
                    o.tags.join(", ")
                )),
            );
        } else if !o.tags.is_empty() {
            trail.record(
                FILTER_LAYER,
                Verdict::Flag,
                Some(format!("tags in {what}: {}", o.tags.join(", "))),
            );
        }
    }

    fn blocked_error(what: &str, o: &FilterOutcome) -> McpError {
        McpError::blocked(
            FILTER_LAYER,
            format!(
                "{what} by the content filter: found {} (policy: block)",
                o.blocked_tags()
            ),
            serde_json::to_value(&o.blocked).unwrap_or(Value::Null),
        )
    }
}

impl Stage for ContentFilterStage {
    type State = Option<OutputFilter>;

    fn before<'a>(&'a self, call: &'a mut Call) -> BoxFuture<'a, Result<Self::State, McpError>> {
        Box::pin(async move {
            if !self.enabled {
                return Ok(None);
            }
            let policy = self.policies.policy(&call.ctx.tenant);
            if policy.inputs {
                let arguments = match &mut call.request {
                    Request::CallTool { arguments, .. } | Request::GetPrompt { arguments, .. } => {
                        Some(arguments)
                    }
                    _ => None,
                };
                if let Some(arguments) = arguments {
                    let o = self.filter_map(&policy, arguments);
                    self.record(&call.ctx.trail, "input", &o);
                    if o.is_blocked() {
                        return Err(Self::blocked_error("call blocked", &o));
                    }
                    if o.tags.is_empty() {
                        call.ctx.trail.allow(FILTER_LAYER);
                    }
                }
            }
            let has_output = matches!(
                call.request,
                Request::CallTool { .. } | Request::GetPrompt { .. } | Request::ReadResource { .. }
            );
            Ok((policy.outputs && has_output).then(|| OutputFilter {
                policy,
                trail: call.ctx.trail.clone(),
            }))
        })
    }

    fn after<'a>(
        &'a self,
        state: Self::State,
        result: &'a mut Result<Value, McpError>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Some(st) = state else {
                return;
            };
            match result {
                Ok(v) => {
                    let o = self.run(&st.policy, v, true, false);
                    self.record(&st.trail, "output", &o);
                    if o.is_blocked() {
                        *result = Err(Self::blocked_error("result withheld", &o));
                    }
                }
                Err(e) => {
                    // An error message can leak too; there is nothing to
                    // withhold, so blocked categories are redacted.
                    let mut msg = Value::String(std::mem::take(&mut e.message));
                    let o = self.run(&st.policy, &mut msg, true, true);
                    if let Value::String(m) = msg {
                        e.message = m;
                    }
                    self.record(&st.trail, "error message", &o);
                }
            }
        })
    }
}

impl ContentFilterStage {
    fn filter_map(
        &self,
        policy: &FilterPolicy,
        arguments: &mut Map<String, Value>,
    ) -> FilterOutcome {
        let mut doc = Value::Object(std::mem::take(arguments));
        let o = self.run(policy, &mut doc, false, false);
        if let Value::Object(m) = doc {
            *arguments = m;
        }
        o
    }
}

/// Whether `key` of an object holds a binary payload or metadata (outputs only).
fn skipped(obj: &Map<String, Value>, key: &str) -> bool {
    key == "blob"
        || key == "_meta"
        || (key == "data"
            && matches!(
                obj.get("type").and_then(Value::as_str),
                Some("image" | "audio")
            ))
}

fn for_each_str<'a>(
    v: &'a Value,
    path: &Path<'_>,
    output: bool,
    f: &mut impl FnMut(&'a str, &Path<'_>),
) {
    match v {
        Value::String(s) => f(s, path),
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                for_each_str(x, &path.index(i), output, f);
            }
        }
        Value::Object(o) => {
            for (k, x) in o {
                if output && skipped(o, k) {
                    continue;
                }
                for_each_str(x, &path.key(k), output, f);
            }
        }
        _ => {}
    }
}

/// Visits the same strings as [`for_each_str`], in the same order.
fn for_each_str_mut(v: &mut Value, output: bool, f: &mut impl FnMut(&mut String)) {
    match v {
        Value::String(s) => f(s),
        Value::Array(a) => {
            for x in a {
                for_each_str_mut(x, output, f);
            }
        }
        Value::Object(o) => {
            let skip: Vec<bool> = if output {
                o.keys().map(|k| skipped(o, k)).collect()
            } else {
                Vec::new()
            };
            for (i, (_, x)) in o.iter_mut().enumerate() {
                if output && skip[i] {
                    continue;
                }
                for_each_str_mut(x, output, f);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stage(policy: FilterPolicy) -> ContentFilterStage {
        let ids = vec![(
            "us_ssn".to_owned(),
            FilterConfig::default().national_ids[0].pattern.clone(),
        )];
        ContentFilterStage::new(
            Detectors::new(&ids).unwrap(),
            Arc::new(StaticFilterPolicies::new(policy)),
        )
    }

    #[test]
    fn redaction_keeps_the_json_structure() {
        let s = stage(FilterPolicy::uniform(Action::Redact));
        let mut doc = json!({
            "user": {"email": "jane@example.com", "age": 41, "ok": true, "none": null},
            "notes": ["card 4111 1111 1111 1111 and 4111 1111 1111 1112", "nothing here"],
            "text": "write to jane@example.com or +44 20 7946 0958, key AKIAIOSFODNN7EXAMPLE"
        });
        let o = s.filter(&FilterPolicy::uniform(Action::Redact), &mut doc, false);
        assert_eq!(
            doc,
            json!({
                "user": {"email": "[REDACTED:email]", "age": 41, "ok": true, "none": null},
                "notes": ["card [REDACTED:card] and 4111 1111 1111 1112", "nothing here"],
                "text": "write to [REDACTED:email] or [REDACTED:phone], key [REDACTED:aws_key]"
            })
        );
        assert_eq!(o.redacted, 5);
        assert_eq!(o.findings, 5);
        assert_eq!(
            o.tags,
            vec!["finance.card", "pii.email", "pii.phone", "secret.aws_key"]
        );
    }

    #[test]
    fn overlapping_findings_are_redacted_once() {
        let s = stage(FilterPolicy::uniform(Action::Redact));
        let mut doc = json!("api_key=sk-proj-abcdefghijklmnopqrstuv123 done");
        let o = s.filter(&FilterPolicy::uniform(Action::Redact), &mut doc, false);
        assert_eq!(doc, json!("api_key=[REDACTED:openai_key] done"));
        assert_eq!(o.redacted, 1);
    }

    #[test]
    fn each_action() {
        let s = stage(FilterPolicy::default());
        let text = "mail jane@example.com";
        for (action, expect_doc, tags, blocked) in [
            (Action::Allow, text.to_owned(), 0, false),
            (Action::Tag, text.to_owned(), 1, false),
            (Action::Redact, "mail [REDACTED:email]".to_owned(), 1, false),
            (Action::Block, text.to_owned(), 1, true),
        ] {
            let p = FilterPolicy::uniform(Action::Allow).with_action(Category::Email, action);
            let mut doc = json!({ "m": text });
            let o = s.filter(&p, &mut doc, false);
            assert_eq!(doc["m"], json!(expect_doc), "{action:?}");
            assert_eq!(
                (o.tags.len(), o.is_blocked()),
                (tags, blocked),
                "{action:?}"
            );
            if blocked {
                assert_eq!(o.blocked[0].path, "/m");
                assert_eq!(o.blocked[0].tag, "pii.email");
            }
        }
        let snap = s.stats().snapshot();
        assert_eq!(snap.findings_of("email"), 4);
        for a in Action::ALL {
            assert_eq!(snap.actions_of(a.as_str()), 1, "{a:?}");
        }
        assert_eq!(snap.stage(FilterStage::Extract).items, 4);
        assert_eq!(snap.stage(FilterStage::Classify).items, 4);
        assert_eq!(snap.stage(FilterStage::Tag).items, 3);
    }

    #[test]
    fn outputs_skip_binary_payloads() {
        let s = stage(FilterPolicy::uniform(Action::Redact));
        let p = FilterPolicy::uniform(Action::Redact);
        let mut doc = json!({
            "content": [
                {"type": "image", "data": "jane@example.com", "mimeType": "image/png"},
                {"type": "text", "text": "jane@example.com"},
                {"type": "resource", "resource": {"uri": "x://y", "blob": "jane@example.com"}}
            ],
            "structuredContent": {"data": "jane@example.com"},
            "_meta": {"owner": "jane@example.com"}
        });
        s.filter(&p, &mut doc, true);
        assert_eq!(doc["content"][0]["data"], "jane@example.com");
        assert_eq!(doc["content"][1]["text"], "[REDACTED:email]");
        assert_eq!(doc["content"][2]["resource"]["blob"], "jane@example.com");
        assert_eq!(doc["structuredContent"]["data"], "[REDACTED:email]");
        assert_eq!(doc["_meta"]["owner"], "jane@example.com");
    }

    #[test]
    fn non_ascii_text_is_cut_on_character_boundaries() {
        let s = stage(FilterPolicy::uniform(Action::Redact));
        let p = FilterPolicy::uniform(Action::Redact);
        let mut doc =
            json!("password=пароль-12345678 ok, mail: ✉zoe@example.com, ☎ +33 1 23 45 67 89");
        let o = s.filter(&p, &mut doc, false);
        assert_eq!(
            doc,
            json!("password=[REDACTED:api_key] ok, mail: ✉[REDACTED:email], ☎ [REDACTED:phone]")
        );
        assert_eq!(o.redacted, 3);
        // Fragments glued in every order: nothing panics, output stays a string.
        let parts = [
            "é",
            "🙂",
            "4111 1111 1111 1111",
            "a@b.co",
            "::1",
            "AKIAIOSFODNN7EXAMPLE",
            "пароль",
            "token: ",
            "\u{200B}",
            "DE89 3704 0044 0532 0130 00",
            "1.2.3.4",
        ];
        for a in parts {
            for b in parts {
                for c in parts {
                    let mut doc = json!(format!("{a}{b}{c}"));
                    s.filter(&p, &mut doc, false);
                    assert!(doc.is_string());
                }
            }
        }
    }

    #[test]
    fn tenant_policies_from_config() {
        let cfg: FilterConfig = toml::from_str(
            "[actions]\nemail = \"redact\"\n[tenants.acme]\noutputs = false\n[tenants.acme.actions]\nemail = \"block\"\ncard = \"allow\"\n",
        )
        .unwrap();
        let p = StaticFilterPolicies::from_config(&cfg);
        let d = p.policy("other");
        assert_eq!(d.action(Category::Email), Action::Redact);
        assert_eq!(d.action(Category::Card), Action::Redact);
        assert!(d.outputs);
        let acme = p.policy("acme");
        assert_eq!(acme.action(Category::Email), Action::Block);
        assert_eq!(acme.action(Category::Card), Action::Allow);
        assert_eq!(
            acme.action(Category::Secret),
            Action::Redact,
            "default kept"
        );
        assert!(!acme.outputs && acme.inputs);
    }

    #[test]
    fn bad_national_id_patterns_are_named() {
        let cfg: FilterConfig =
            toml::from_str("national_ids = [{ name = \"x\", pattern = \"(\" }]").unwrap();
        let e = ContentFilterStage::from_config(&cfg)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("filter.national_ids[0].pattern"), "{e}");
        let cfg: FilterConfig = toml::from_str(
            "national_ids = [{ name = \"fr_insee\", pattern = '\\b[12]\\d{2}(0[1-9]|1[0-2])\\d{10}\\b' }]",
        )
        .unwrap();
        let s = ContentFilterStage::from_config(&cfg).unwrap();
        let mut doc = json!("insee 185057800608491");
        s.filter(&FilterPolicy::default(), &mut doc, false);
        assert_eq!(doc, json!("insee [REDACTED:fr_insee]"));
    }
}
