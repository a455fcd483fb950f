//! Workflow definitions: their serde form, JSON Schema, and validation with
//! the exact location of every problem.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::expr::Expr;
use super::template::{Path, references};

/// The phase id a transition names to end the workflow.
pub const END: &str = "end";
/// Most phases, steps per phase, and ITERATIVE iterations a definition may declare.
pub const MAX_PHASES: usize = 100;
pub const MAX_STEPS: usize = 100;
pub const MAX_ITERATIONS: u32 = 10_000;

/// A workflow: phases run one after another (or as transitions say), each
/// running its steps — tool calls — by its strategy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowDefinition {
    /// A name for people and listings.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Run in order unless a phase's transitions say otherwise; the first
    /// phase starts.
    pub phases: Vec<PhaseDefinition>,
}

/// How a phase runs its steps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Strategy {
    /// One after another; each step sees the previous one's output as
    /// `prev.output`. The phase's output is the last step's.
    #[default]
    Sequential,
    /// All at once; the phase's output is an object of every step's output
    /// by step id.
    Parallel,
    /// The first step whose `when` holds runs (a step without `when` is the
    /// default); its output is the phase's.
    Conditional,
    /// The steps run in sequence, repeatedly, until `until` holds or
    /// `max_iterations` is reached; the last iteration's output is the
    /// phase's.
    Iterative,
}

/// One phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PhaseDefinition {
    /// Unique in the workflow; `{{phases.<id>.output}}` refers to its output.
    pub id: String,
    #[serde(default)]
    pub strategy: Strategy,
    pub steps: Vec<StepDefinition>,
    /// ITERATIVE: CEL condition over `output`, `iteration`, `input`,
    /// `phases`, `steps`; the loop ends when it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// ITERATIVE (required there): the most iterations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_iterations: Option<u32>,
    /// The phase fails when it runs longer than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// When this phase fails, run the compensations of every phase completed
    /// so far (latest first) and end the workflow as `rolled_back`.
    #[serde(default)]
    pub rollback: bool,
    /// Steps that undo this phase's side effects, run in order when a
    /// rollback passes over it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compensation: Vec<StepDefinition>,
    /// Where to go next: the first whose `when` holds (or that has no
    /// `when`); if none does, the next phase in the list (or the end).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transitions: Vec<Transition>,
    /// A template for the phase's output instead of the strategy's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
}

/// One tool call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepDefinition {
    /// Unique in the workflow; `{{steps.<id>.output}}` refers to its output.
    pub id: String,
    /// Any tool cellgate serves to the workflow's owner.
    pub tool: String,
    /// Argument templates: strings may hold `{{input.x}}`,
    /// `{{phases.<id>.output…}}`, `{{steps.<id>.output…}}`, `{{prev.output…}}`.
    #[serde(default)]
    pub arguments: Map<String, Value>,
    /// CONDITIONAL phases: CEL condition choosing this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
}

/// A possible next phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Transition {
    /// CEL condition over `output` (this phase's), `input`, `phases`,
    /// `steps`; absent: always.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// A phase id, or `end`.
    pub to: String,
}

/// The JSON Schema of [`WorkflowDefinition`].
pub fn definition_schema() -> Value {
    serde_json::to_value(schemars::schema_for!(WorkflowDefinition)).unwrap_or(Value::Null)
}

/// One problem in a definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ValidationError {
    /// e.g. `phases[2].steps[0].arguments.path`.
    pub location: String,
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// Every problem found, in definition order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid workflow definition: ")?;
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, "; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Parses a definition from JSON; a field that does not fit is named by its
/// path (`phases[1].steps[0].tool: missing field`).
pub fn parse_definition(value: &Value) -> Result<WorkflowDefinition, ValidationErrors> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ValidationErrors(vec![ValidationError {
            location: if path == "." {
                "definition".into()
            } else {
                path
            },
            message: e.inner().to_string(),
        }])
    })
}

/// A validated definition with its compiled conditions.
#[derive(Debug, Clone)]
pub(crate) struct Compiled {
    pub(crate) def: WorkflowDefinition,
    /// By phase index: `until`, transitions' `when`, steps' `when`.
    pub(crate) until: Vec<Option<Expr>>,
    pub(crate) transitions: Vec<Vec<Option<Expr>>>,
    pub(crate) step_when: Vec<Vec<Option<Expr>>>,
    pub(crate) index: HashMap<String, usize>,
}

impl Compiled {
    pub(crate) fn phase(&self, id: &str) -> Option<(usize, &PhaseDefinition)> {
        self.index.get(id).map(|&i| (i, &self.def.phases[i]))
    }
}

fn valid_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && id.len() <= 64
}

struct Checker<'a> {
    errors: Vec<ValidationError>,
    phases: BTreeSet<&'a str>,
    steps: BTreeSet<&'a str>,
}

impl Checker<'_> {
    fn push(&mut self, location: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ValidationError {
            location: location.into(),
            message: message.into(),
        });
    }

    /// Checks a reference's root and the phase/step it names.
    fn reference(&mut self, location: &str, path: &Path, roots: &[&str]) {
        let root = path.root();
        if !roots.contains(&root) {
            self.push(
                location,
                format!(
                    "unknown reference {} (available here: {})",
                    path.source,
                    roots.join(", ")
                ),
            );
            return;
        }
        let known = match root {
            "phases" => &self.phases,
            "steps" => &self.steps,
            _ => return,
        };
        match path.key(1) {
            Some(id) if known.contains(id) => {
                if path.key(2) != Some("output") {
                    self.push(
                        location,
                        format!("{}: write {root}.{id}.output…", path.source),
                    );
                }
            }
            Some(id) => self.push(location, format!("unknown reference {root}.{id}")),
            None => self.push(location, format!("{}: name a {root} id", path.source)),
        }
    }

    fn template(&mut self, location: &str, value: &Value, roots: &[&str]) {
        let mut refs = Vec::new();
        references(value, location, &mut refs);
        for (loc, r) in refs {
            match r {
                Ok(path) => self.reference(&loc, &path, roots),
                Err(e) => self.push(loc, e),
            }
        }
    }

    fn expr(&mut self, location: &str, source: &str, vars: &[&str]) -> Option<Expr> {
        match Expr::compile(source, vars) {
            Ok(e) => {
                for id in e.members_of("phases") {
                    if !self.phases.contains(id.as_str()) {
                        self.push(location, format!("unknown reference phases.{id}"));
                    }
                }
                for id in e.members_of("steps") {
                    if !self.steps.contains(id.as_str()) {
                        self.push(location, format!("unknown reference steps.{id}"));
                    }
                }
                Some(e)
            }
            Err(message) => {
                self.push(location, message);
                None
            }
        }
    }
}

/// Checks everything that needs no tool catalog; returns the compiled
/// definition and, to check against the catalog, every tool with the
/// location naming it.
pub(crate) fn validate(
    def: &WorkflowDefinition,
) -> Result<(Compiled, Vec<(String, String)>), ValidationErrors> {
    let mut c = Checker {
        errors: Vec::new(),
        phases: BTreeSet::new(),
        steps: BTreeSet::new(),
    };
    let mut tools = Vec::new();
    if def.name.trim().is_empty() || def.name.len() > 255 {
        c.push("name", "must be 1 to 255 characters, not blank");
    }
    if def.phases.is_empty() {
        c.push("phases", "a workflow needs at least one phase");
    }
    if def.phases.len() > MAX_PHASES {
        c.push("phases", format!("at most {MAX_PHASES} phases"));
    }
    // Ids first, so references anywhere can be checked against all of them.
    for (pi, phase) in def.phases.iter().enumerate() {
        let at = format!("phases[{pi}]");
        if !valid_id(&phase.id) || phase.id == END {
            c.push(
                format!("{at}.id"),
                format!(
                    "{:?}: ids are 1-64 letters, digits, `_`, `-`, starting with a letter or `_`, and not `{END}`",
                    phase.id
                ),
            );
        } else if !c.phases.insert(&phase.id) {
            c.push(
                format!("{at}.id"),
                format!("duplicate phase id `{}`", phase.id),
            );
        }
        let all_steps = phase
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("{at}.steps[{i}]"), s))
            .chain(
                phase
                    .compensation
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (format!("{at}.compensation[{i}]"), s)),
            );
        for (sat, step) in all_steps {
            if !valid_id(&step.id) {
                c.push(
                    format!("{sat}.id"),
                    format!("{:?}: ids are 1-64 letters, digits, `_`, `-`, starting with a letter or `_`", step.id),
                );
            } else if !c.steps.insert(&step.id) {
                c.push(
                    format!("{sat}.id"),
                    format!("duplicate step id `{}`", step.id),
                );
            }
        }
    }
    let mut compiled = Compiled {
        def: def.clone(),
        until: Vec::new(),
        transitions: Vec::new(),
        step_when: Vec::new(),
        index: def
            .phases
            .iter()
            .enumerate()
            .map(|(i, p)| (p.id.clone(), i))
            .collect(),
    };
    for (pi, phase) in def.phases.iter().enumerate() {
        let at = format!("phases[{pi}]");
        let iterative = phase.strategy == Strategy::Iterative;
        if phase.steps.is_empty() {
            c.push(format!("{at}.steps"), "a phase needs at least one step");
        }
        if phase.steps.len() > MAX_STEPS {
            c.push(format!("{at}.steps"), format!("at most {MAX_STEPS} steps"));
        }
        if phase.timeout_ms == Some(0) {
            c.push(format!("{at}.timeout_ms"), "must be at least 1");
        }
        let mut step_roots = vec!["input", "phases", "steps"];
        if matches!(phase.strategy, Strategy::Sequential | Strategy::Iterative) {
            step_roots.push("prev");
        }
        if iterative {
            step_roots.push("iteration");
        }
        let mut whens = Vec::new();
        for (si, step) in phase.steps.iter().enumerate() {
            let sat = format!("{at}.steps[{si}]");
            tools.push((format!("{sat}.tool"), step.tool.clone()));
            c.template(
                &format!("{sat}.arguments"),
                &Value::Object(step.arguments.clone()),
                &step_roots,
            );
            whens.push(match (&step.when, phase.strategy) {
                (None, _) => None,
                (Some(w), Strategy::Conditional) => {
                    c.expr(&format!("{sat}.when"), w, &["input", "phases", "steps"])
                }
                (Some(_), s) => {
                    c.push(
                        format!("{sat}.when"),
                        format!(
                            "`when` chooses a branch of a CONDITIONAL phase; this phase is {s:?}"
                        ),
                    );
                    None
                }
            });
        }
        compiled.step_when.push(whens);
        for (si, step) in phase.compensation.iter().enumerate() {
            let sat = format!("{at}.compensation[{si}]");
            tools.push((format!("{sat}.tool"), step.tool.clone()));
            c.template(
                &format!("{sat}.arguments"),
                &Value::Object(step.arguments.clone()),
                &["input", "phases", "steps"],
            );
            if step.when.is_some() {
                c.push(
                    format!("{sat}.when"),
                    "compensation steps always run; remove `when`",
                );
            }
        }
        let until = match (&phase.until, iterative) {
            (Some(u), true) => c.expr(
                &format!("{at}.until"),
                u,
                &["input", "phases", "steps", "output", "iteration"],
            ),
            (Some(_), false) => {
                c.push(format!("{at}.until"), "`until` belongs to ITERATIVE phases");
                None
            }
            (None, _) => None,
        };
        compiled.until.push(until);
        match (phase.max_iterations, iterative) {
            (None, true) => c.push(
                format!("{at}.max_iterations"),
                "ITERATIVE phases need max_iterations, so the loop has an exit",
            ),
            (Some(n), true) if n == 0 || n > MAX_ITERATIONS => c.push(
                format!("{at}.max_iterations"),
                format!("must be 1 to {MAX_ITERATIONS}"),
            ),
            (Some(_), false) => c.push(
                format!("{at}.max_iterations"),
                "`max_iterations` belongs to ITERATIVE phases",
            ),
            _ => {}
        }
        if let Some(output) = &phase.output {
            c.template(
                &format!("{at}.output"),
                output,
                &["input", "phases", "steps", "output"],
            );
        }
        let mut conds = Vec::new();
        for (ti, t) in phase.transitions.iter().enumerate() {
            let tat = format!("{at}.transitions[{ti}]");
            if t.to != END && !c.phases.contains(t.to.as_str()) {
                c.push(
                    format!("{tat}.to"),
                    format!("unknown phase `{}` (or `{END}`)", t.to),
                );
            }
            conds.push(t.when.as_ref().and_then(|w| {
                c.expr(
                    &format!("{tat}.when"),
                    w,
                    &["input", "phases", "steps", "output"],
                )
            }));
        }
        compiled.transitions.push(conds);
    }
    if c.errors.is_empty() {
        check_exits(def, &mut c);
    }
    if c.errors.is_empty() {
        Ok((compiled, tools))
    } else {
        Err(ValidationErrors(c.errors))
    }
}

/// The phases each phase may go to (`None` is the end).
fn successors(def: &WorkflowDefinition, i: usize) -> Vec<Option<usize>> {
    let index: BTreeMap<&str, usize> = def
        .phases
        .iter()
        .enumerate()
        .map(|(i, p)| (p.id.as_str(), i))
        .collect();
    let phase = &def.phases[i];
    let mut out = Vec::new();
    for t in &phase.transitions {
        out.push(index.get(t.to.as_str()).copied());
        if t.when.is_none() {
            // An unconditional transition: nothing after it is reachable.
            return out;
        }
    }
    out.push((i + 1 < def.phases.len()).then_some(i + 1));
    out
}

/// Every phase reachable from the start must be able to reach the end: a
/// cycle that nothing leaves would run until the phase limit.
fn check_exits(def: &WorkflowDefinition, c: &mut Checker<'_>) {
    let n = def.phases.len();
    let succ: Vec<Vec<Option<usize>>> = (0..n).map(|i| successors(def, i)).collect();
    let mut reachable = vec![false; n];
    let mut stack = vec![0];
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut reachable[i], true) {
            continue;
        }
        stack.extend(succ[i].iter().flatten());
    }
    // Fixpoint: a phase exits if some successor is the end or exits.
    let mut exits = vec![false; n];
    loop {
        let mut changed = false;
        for i in 0..n {
            if !exits[i] && succ[i].iter().any(|s| s.is_none_or(|j| exits[j])) {
                exits[i] = true;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    for i in 0..n {
        if reachable[i] && !exits[i] {
            c.push(
                format!("phases[{i}].transitions"),
                format!(
                    "phase `{}` is in a cycle without exit: no path from it reaches `{END}`",
                    def.phases[i].id
                ),
            );
        }
    }
}
