//! Static analysis of a module before it is installed: is it well formed,
//! what does it import, and does the manifest grant every capability those
//! imports reach? Every violation is reported, not just the first.

use std::fmt;

use serde::Serialize;
use wasmparser::{Parser, Payload, TypeRef, Validator};

use crate::manifest::{Manifest, ModuleKind, Permissions};

/// The only core-module import namespace a cell may use.
pub const WASI_P1: &str = "wasi_snapshot_preview1";

/// The capability a WASI import reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// stdio, arguments, environment (filtered), exit: every cell has these.
    Basic,
    Filesystem,
    Network,
    Clock,
    Random,
}

impl Capability {
    fn granted(self, p: &Permissions) -> bool {
        match self {
            Capability::Basic => true,
            Capability::Filesystem => !p.dirs.is_empty() || p.scratch,
            Capability::Network => !p.network.is_empty(),
            Capability::Clock => p.clock,
            Capability::Random => p.random,
        }
    }

    fn permission(self) -> &'static str {
        match self {
            Capability::Basic => "nothing",
            Capability::Filesystem => "permissions.dirs or permissions.scratch",
            Capability::Network => "permissions.network",
            Capability::Clock => "permissions.clock",
            Capability::Random => "permissions.random",
        }
    }
}

/// What a WASI preview 1 function reaches; `None` for names WASI p1 does
/// not define (or that cellgate does not offer, like `proc_raise`).
pub fn p1_capability(name: &str) -> Option<Capability> {
    use Capability::*;
    Some(match name {
        "args_get"
        | "args_sizes_get"
        | "environ_get"
        | "environ_sizes_get"
        | "fd_read"
        | "fd_write"
        | "fd_close"
        | "fd_seek"
        | "fd_tell"
        | "fd_fdstat_get"
        | "fd_fdstat_set_flags"
        | "fd_prestat_get"
        | "fd_prestat_dir_name"
        | "proc_exit"
        | "sched_yield"
        | "fd_filestat_get"
        | "fd_sync"
        | "fd_datasync" => Basic,
        "path_open"
        | "path_create_directory"
        | "path_filestat_get"
        | "path_filestat_set_times"
        | "path_link"
        | "path_readlink"
        | "path_remove_directory"
        | "path_rename"
        | "path_symlink"
        | "path_unlink_file"
        | "fd_readdir"
        | "fd_pread"
        | "fd_pwrite"
        | "fd_allocate"
        | "fd_advise"
        | "fd_filestat_set_size"
        | "fd_filestat_set_times"
        | "fd_fdstat_set_rights"
        | "fd_renumber" => Filesystem,
        "sock_accept" | "sock_recv" | "sock_send" | "sock_shutdown" => Network,
        "clock_time_get" | "clock_res_get" | "poll_oneoff" => Clock,
        "random_get" => Random,
        _ => return None,
    })
}

/// The capability a component import (a WASI interface) reaches.
fn component_capability(name: &str) -> Option<Capability> {
    use Capability::*;
    let interface = name.split('@').next().unwrap_or(name);
    let (package, _) = interface.split_once('/')?;
    Some(match package {
        "wasi:filesystem" => Filesystem,
        "wasi:sockets" => Network,
        "wasi:clocks" => Clock,
        "wasi:random" => Random,
        "wasi:cli" | "wasi:io" => Basic,
        _ => return None,
    })
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Import {
    pub module: String,
    pub name: String,
    /// `func`, `memory`, `table`, `global`, `tag` or `instance` (components).
    pub kind: &'static str,
}

/// One reason to refuse a module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// A stable code: `malformed`, `kind_mismatch`, `unknown_import`,
    /// `ungranted_capability`, `memory_over_limit`, `memory_kind`,
    /// `missing_export`.
    pub rule: &'static str,
    pub message: String,
}

/// What the analysis found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AnalysisReport {
    pub kind: ModuleKind,
    pub size_bytes: usize,
    pub imports: Vec<Import>,
    pub exports: Vec<String>,
    /// Initial and declared maximum linear memory of a command module.
    pub memory_initial_bytes: Option<u64>,
    pub memory_max_bytes: Option<u64>,
    pub violations: Vec<Violation>,
}

impl AnalysisReport {
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }
}

impl fmt::Display for AnalysisReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .violations
            .iter()
            .map(|v| format!("[{}] {}", v.rule, v.message))
            .collect();
        write!(f, "{}", parts.join("; "))
    }
}

/// Analyses `bytes` against what `manifest` declares and grants.
pub fn analyse(bytes: &[u8], manifest: &Manifest) -> AnalysisReport {
    let mut report = AnalysisReport {
        kind: manifest.module.kind,
        size_bytes: bytes.len(),
        imports: Vec::new(),
        exports: Vec::new(),
        memory_initial_bytes: None,
        memory_max_bytes: None,
        violations: Vec::new(),
    };
    let violate = |rule, message: String| Violation { rule, message };

    if let Err(e) = Validator::new().validate_all(bytes) {
        report.violations.push(violate(
            "malformed",
            format!("not a valid WebAssembly binary: {e}"),
        ));
        return report;
    }
    let is_component = wasmparser::Parser::is_component(bytes);
    match (manifest.module.kind, is_component) {
        (ModuleKind::Command, true) => report.violations.push(violate(
            "kind_mismatch",
            "the manifest declares a command module but the binary is a component".into(),
        )),
        (ModuleKind::Component, false) => report.violations.push(violate(
            "kind_mismatch",
            "the manifest declares a component but the binary is a core module".into(),
        )),
        _ => {}
    }
    let limit = manifest.limits.memory_bytes;
    let mut memories = 0usize;
    // Nested modules of a component open with their own Version payload;
    // only the outermost level's imports and exports matter.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = match payload {
            Ok(p) => p,
            Err(e) => {
                report.violations.push(violate("malformed", e.to_string()));
                return report;
            }
        };
        match payload {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ImportSection(reader) if depth == 1 => {
                for import in reader.into_imports() {
                    let Ok(import) = import else { continue };
                    let kind = match import.ty {
                        TypeRef::Func(_) | TypeRef::FuncExact(_) => "func",
                        TypeRef::Memory(_) => "memory",
                        TypeRef::Table(_) => "table",
                        TypeRef::Global(_) => "global",
                        TypeRef::Tag(_) => "tag",
                    };
                    report.imports.push(Import {
                        module: import.module.to_owned(),
                        name: import.name.to_owned(),
                        kind,
                    });
                }
            }
            Payload::MemorySection(reader) if depth == 1 => {
                for memory in reader {
                    let Ok(memory) = memory else { continue };
                    memories += 1;
                    if memory.memory64 || memory.shared {
                        report.violations.push(violate(
                            "memory_kind",
                            "64-bit and shared memories are not supported".into(),
                        ));
                    }
                    let page = 1u64 << memory.page_size_log2();
                    let initial = memory.initial.saturating_mul(page);
                    report.memory_initial_bytes = Some(initial);
                    if initial > limit {
                        report.violations.push(violate(
                            "memory_over_limit",
                            format!("initial memory of {initial} bytes exceeds limits.memoryBytes {limit}"),
                        ));
                    }
                    if let Some(max) = memory.maximum {
                        let max = max.saturating_mul(page);
                        report.memory_max_bytes = Some(max);
                        if max > limit {
                            report.violations.push(violate(
                                "memory_over_limit",
                                format!("declared memory maximum of {max} bytes exceeds limits.memoryBytes {limit}"),
                            ));
                        }
                    }
                }
            }
            Payload::ExportSection(reader) if depth == 1 => {
                for export in reader.into_iter().flatten() {
                    report.exports.push(export.name.to_owned());
                }
            }
            Payload::ComponentImportSection(reader) if depth == 1 => {
                for import in reader.into_iter().flatten() {
                    report.imports.push(Import {
                        module: import.name.name.to_owned(),
                        name: String::new(),
                        kind: "instance",
                    });
                }
            }
            Payload::ComponentExportSection(reader) if depth == 1 => {
                for export in reader.into_iter().flatten() {
                    report.exports.push(export.name.name.to_owned());
                }
            }
            _ => {}
        }
    }

    let granted = &manifest.permissions;
    for import in &report.imports {
        let capability = if is_component {
            component_capability(&import.module)
        } else if import.module != WASI_P1 {
            report.violations.push(violate(
                "unknown_import",
                format!(
                    "imports `{}`.`{}`: cells may import only from `{WASI_P1}`",
                    import.module, import.name
                ),
            ));
            continue;
        } else if import.kind != "func" {
            report.violations.push(violate(
                "unknown_import",
                format!(
                    "imports a {} `{}`: only functions may be imported",
                    import.kind, import.name
                ),
            ));
            continue;
        } else {
            p1_capability(&import.name)
        };
        let what = if is_component {
            format!("`{}`", import.module)
        } else {
            format!("`{}`", import.name)
        };
        match capability {
            None => report.violations.push(violate(
                "unknown_import",
                format!("imports {what}, which cellgate does not provide"),
            )),
            Some(cap) if !cap.granted(granted) => report.violations.push(violate(
                "ungranted_capability",
                format!(
                    "imports {what} ({cap:?} capability) without {}",
                    cap.permission()
                ),
            )),
            Some(_) => {}
        }
    }
    if !is_component {
        if memories > 1 {
            report.violations.push(violate(
                "memory_kind",
                format!("defines {memories} memories; a cell has one"),
            ));
        }
        for needed in ["_start", "memory"] {
            if !report.exports.iter().any(|e| e == needed) {
                report.violations.push(violate(
                    "missing_export",
                    format!("a command module must export `{needed}`"),
                ));
            }
        }
    } else if !report.exports.iter().any(|e| e == "call") {
        report.violations.push(violate(
            "missing_export",
            "a component must export `call` (world cellgate:cell/tool)".into(),
        ));
    }
    report
}
