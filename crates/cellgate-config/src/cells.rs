//! `[cells]`: the WebAssembly tool runtime.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::diagnostic::Problem;

/// Secure compute cells: signed WebAssembly tools installed per tenant
/// (`cellgate cell install`) and run in a sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CellsConfig {
    /// Serve installed cells' tools and the `cell_*` administrative tools.
    pub enabled: bool,
    /// Host directories under which an installer may bind a directory a
    /// cell is granted (`--mount guest=host`). Empty: granted directories
    /// are always cell-owned directories under the data directory.
    pub mount_roots: Vec<String>,
    /// The most linear memory any cell may declare, in bytes (the size of
    /// one slot of the instance pool).
    pub max_memory_bytes: u64,
    /// Cell calls that may run at once (instance pool size).
    pub max_concurrent_calls: u32,
    /// Largest module accepted at install, in bytes.
    pub max_module_bytes: u64,
    /// Seconds between re-verifications of every installed cell's digest
    /// and signature (a mismatch revokes the cell); 0 turns them off.
    pub reverify_interval_secs: u64,
}

impl Default for CellsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            mount_roots: Vec::new(),
            max_memory_bytes: 256 << 20,
            max_concurrent_calls: 64,
            max_module_bytes: 32 << 20,
            reverify_interval_secs: 300,
        }
    }
}

impl CellsConfig {
    pub(crate) fn validate(&self, p: &mut Vec<Problem>) {
        if !(1 << 16..=4 << 30).contains(&self.max_memory_bytes) {
            p.push(Problem::new(
                "cells.max_memory_bytes",
                "must be between 65536 (one WebAssembly page) and 4294967296",
            ));
        }
        if !(1..=10_000).contains(&self.max_concurrent_calls) {
            p.push(Problem::new(
                "cells.max_concurrent_calls",
                "must be between 1 and 10000",
            ));
        }
        if !(1..=1 << 30).contains(&self.max_module_bytes) {
            p.push(Problem::new(
                "cells.max_module_bytes",
                "must be between 1 and 1073741824",
            ));
        }
        for (i, root) in self.mount_roots.iter().enumerate() {
            if !std::path::Path::new(root).is_absolute() {
                p.push(Problem::new(
                    format!("cells.mount_roots[{i}]"),
                    format!("{root:?} is not an absolute path"),
                ));
            }
        }
    }
}
