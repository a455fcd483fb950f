//! Secure compute cells: tools written in any language, compiled to
//! WebAssembly, shipped with a signed manifest, and run by cellgate in a
//! wasmtime sandbox.
//!
//! A cell goes through: [`Manifest`] validation, signature and digest
//! checks against the tenant's trusted publishers ([`signing`]), static
//! analysis of its imports against its grants ([`analysis`]), and then
//! runs in the [`Sandbox`]: a fresh instance per call with fuel, a
//! wall-clock deadline, a memory ceiling, an output cap, exactly the
//! granted directories and environment, and outbound TCP only to granted
//! destinations. Cells are WASI preview 1 command modules (JSON on
//! stdin/stdout) or components of the WIT world `cellgate:cell/tool`
//! (`wit/cell.wit`). [`CellRegistry`]
//! keeps each tenant's cells (lifecycle PENDING → VERIFIED → ACTIVE →
//! SUSPENDED → REVOKED), their behaviour profiles ([`profile`], kept in the
//! store), their environment values (sealed at rest) and a disk cache of
//! compiled artefacts (authenticated before they are loaded);
//! [`CellProvider`] publishes every active cell's tools as
//! `<cell>__<tool>` and the management tools (`cell_install`, …) through
//! the normal pipeline.
//!
//! Not here: authorization, rate limits and audit of the calls themselves
//! (the pipeline does that to cell tools like to any tool), and the CLI and
//! REST front ends (thin clients of the management tools).

pub mod analysis;
mod cache;
mod error;
pub mod manifest;
pub mod profile;
mod provider;
mod registry;
pub mod sandbox;
pub mod signing;

pub use analysis::{AnalysisReport, Violation, analyse};
pub use error::CellError;
pub use manifest::{Manifest, ManifestErrors, manifest_schema};
pub use profile::{AnomalyAction, ProfileConfig, Severity};
pub use provider::{
    CELL_ADMIN_TOOLS, CELL_META, CellProvider, SEPARATOR, TOOL_REQUIREMENT_META, cell_tool,
};
pub use registry::{
    CellPolicy, CellRecord, CellRegistry, CellState, CellsConfig, InstallRequest, Reverification,
    runtime_principal,
};
pub use sandbox::{
    CallReport, CallStats, Grants, HostDir, PreparedCell, RunError, Sandbox, SandboxConfig,
};
pub use signing::{CellSignature, KeyFile, PublisherKey, TrustError, TrustedPublisher};
