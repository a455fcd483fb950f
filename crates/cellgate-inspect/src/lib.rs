//! What a call may contain: inspection of tool arguments and outputs, and
//! the content filter. Both are pipeline stages ([`cellgate_kernel::Stage`])
//! that the binary adds to the trust pipeline.
//!
//! - [`InspectStage`] refuses calls whose arguments break size and depth
//!   limits or the tool's `inputSchema` (JSON Schema, compiled once per
//!   definition), and scores arguments against threat rules: prompt
//!   injection, path traversal, SSRF targets, shell metacharacters in fields
//!   declared as commands, SQL injection in fields declared as SQL, encoded
//!   exfiltration. Rules are data (TOML, [`rules::DEFAULT_RULES`] plus
//!   files from the configuration); scores of the distinct rules that match
//!   add up, and each tenant's policy says at which score a call is flagged
//!   or refused. Outputs are scanned for indirect prompt injection.
//! - [`ContentFilterStage`] finds personal data and secrets (e-mail, phone,
//!   payment cards with Luhn, IBANs with mod-97, national ids, IPs, cloud
//!   keys and tokens) in inputs and outputs, and allows, tags, redacts
//!   (`[REDACTED:email]`, JSON structure kept) or blocks them per category
//!   and tenant, with statistics per stage ([`FilterStats`]).
//!
//! Both go in a pipeline like this (the last layer added sees a call first,
//! so inspection judges the arguments before the filter redacts them, and
//! the filter redacts results before inspection scans them):
//!
//! ```
//! use cellgate_inspect::{ContentFilterStage, InspectStage};
//! use cellgate_kernel::{Catalog, Metrics, Pipeline};
//!
//! # fn main() -> Result<(), cellgate_inspect::InspectError> {
//! let config = cellgate_config::Config::default();
//! let catalog = Catalog::new(vec![/* providers */]);
//! let metrics = Metrics::new();
//! let inspect = InspectStage::from_config(&config.inspect, catalog.clone())?;
//! let filter = ContentFilterStage::from_config(&config.filter)?;
//! metrics.with_registry(|r| filter.stats().register(r));
//! let pipeline = Pipeline::builder(catalog)
//!     .layer(filter.into_layer())
//!     .layer(inspect.into_layer())
//!     // … authorization, authentication and audit go outside of these …
//!     .build();
//! # drop(pipeline);
//! # assert!(metrics.render().contains("cellgate_filter_findings_total"));
//! # Ok(())
//! # }
//! ```
//!
//! This crate is *not* a sandbox and not a guarantee: pattern rules catch
//! known phrasings and encodings, not every attack, and a tool that is given
//! clean arguments can still misbehave. It does no I/O at run time (rule
//! files are read once, by the constructors), never resolves host names (SSRF
//! checks judge what a URL spells, not where DNS would send it) and never
//! fetches remote `$ref`s.

mod filter;
mod inspect;
mod path;
mod policy;
pub mod rules;
mod schema;
mod ssrf;
mod text;

pub use filter::{
    Action, BlockedFinding, Category, ContentFilterStage, Detectors, FILTER_LAYER, FilterOutcome,
    FilterPolicies, FilterPolicy, FilterStage, FilterStats, FilterStatsSnapshot, OutputFilter,
    StageStats, StaticFilterPolicies, iban_ok, luhn,
};
pub use inspect::{Assessment, Finding, INSPECT_LAYER, InspectOptions, InspectStage, OutputCheck};
pub use policy::{InspectPolicies, InspectPolicy, Limits, StaticInspectPolicies};
pub use rules::{Rule, RuleError, RuleSet};
pub use ssrf::{Cidr, SsrfAllow};

/// Why a stage could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// A rule file that cannot be read or used.
    #[error(transparent)]
    Rules(#[from] RuleError),
    /// A configuration value that passed the configuration's own checks but
    /// cannot be used (a pattern that does not compile, an unknown rule id).
    #[error("`{key}`: {message}")]
    Config { key: String, message: String },
}

impl InspectError {
    pub(crate) fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Config {
            key: key.into(),
            message: message.into(),
        }
    }
}
