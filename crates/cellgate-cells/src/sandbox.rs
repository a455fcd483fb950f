//! The sandbox: one wasmtime engine, modules and components compiled once
//! and pre-instantiated, and a fresh instance and store for every call.
//!
//! # Guest ABI of a command module (WASI preview 1)
//!
//! The cell is a WASI command (`_start`). Standard input holds one JSON
//! object, `{"tool": "<name>", "arguments": {...}}`. The cell writes its
//! result, one JSON value, to standard output and exits with status 0. To
//! report a tool failure it exits with a non-zero status and writes the
//! reason to standard error. Nothing survives a call: memory, files in the
//! scratch directory and all state are gone when it returns.
//!
//! # Guest ABI of a component (WASI preview 2)
//!
//! The component targets the world `cellgate:cell/tool` (`wit/cell.wit`):
//! it exports `call(name: string, args: string) -> result<string, string>`.
//! `args` is the arguments object as JSON text; `ok` carries the result as
//! JSON text, `err` a message that becomes a tool error. Standard output is
//! not the result channel (it is discarded, capped); standard error is kept
//! for trap messages. The same limits, grants and zero persistence apply.
//!
//! # Network
//!
//! Only components can open sockets (WASI preview 1 has no `connect`). A
//! component granted `host:port` pairs may open outbound TCP connections
//! to exactly those: every other connect, any listen, bind or UDP use is
//! refused with `access-denied` and recorded in [`CallReport::denials`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Map, Value, json};
use std::net::{IpAddr, SocketAddr};

use wasmtime::component::{self, ResourceTable};
use wasmtime::{
    CallHook, Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module,
    PoolingAllocationConfig, ResourceLimiter, Store, Trap,
};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{
    FsPerms, HostMonotonicClock, HostWallClock, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView,
    WasiView,
};

use crate::cache::{ArtefactKind, CompiledCache};
use crate::manifest::{Access, Limits, NetworkGrant};

/// Most of a failing call's standard error kept for its error message.
const STDERR_MAX: usize = 4096;
/// Most table elements a cell may grow a table to.
const TABLE_ELEMENTS_MAX: usize = 100_000;
/// Pool slots reserved per concurrent call, so a component (several core
/// instances, memories and tables; a componentize-py cell has 38 core
/// instances) fits as well as a command module.
const CORE_INSTANCES_PER_CALL: u32 = 64;
const MEMORIES_PER_CALL: u32 = 8;
const TABLES_PER_CALL: u32 = 16;
/// The export of the `cellgate:cell/tool` world.
const COMPONENT_EXPORT: &str = "call";

/// Engine-wide settings: ceilings shared by every cell.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The largest `limits.memoryBytes` any cell may have (the size of one
    /// pooling-allocator memory slot).
    pub max_memory_bytes: u64,
    /// Instances that may exist at once (pool size): concurrent calls.
    pub max_concurrent_calls: u32,
    /// Granularity of wall-clock deadlines.
    pub epoch_tick: Duration,
    /// Native stack a call may use before it traps with a stack overflow.
    pub max_wasm_stack: usize,
    /// Largest request (tool name and arguments as JSON) given to a cell.
    pub max_input_bytes: usize,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            max_memory_bytes: 256 << 20,
            max_concurrent_calls: 64,
            epoch_tick: Duration::from_millis(5),
            max_wasm_stack: 512 << 10,
            max_input_bytes: 1 << 20,
        }
    }
}

/// Why a call did not produce a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    #[error("fuel budget of {limit} exhausted: the call did too much work (endless loop?)")]
    FuelExhausted { limit: u64 },
    #[error("wall-clock timeout of {timeout_ms} ms exceeded")]
    Timeout { timeout_ms: u64 },
    #[error("memory limit of {limit} bytes exceeded (asked for {requested} bytes)")]
    MemoryLimit { limit: u64, requested: u64 },
    #[error("output exceeds the limit of {limit} bytes")]
    OutputTooLarge { limit: u64 },
    #[error("stack overflow")]
    StackOverflow,
    #[error("trap: {message}")]
    Trap { message: String },
    #[error("the cell exited with status {code}: {stderr}")]
    Exit { code: i32, stderr: String },
    #[error("the cell reported an error: {message}")]
    Failed { message: String },
    #[error("the cell's output is not JSON: {message}")]
    BadOutput { message: String },
    #[error("request of {size} bytes exceeds the limit of {limit} bytes")]
    InputTooLarge { size: usize, limit: usize },
    #[error("setting up the sandbox: {message}")]
    Setup { message: String },
}

impl RunError {
    /// A short stable label (metrics, audit, profiles).
    pub fn kind(&self) -> &'static str {
        match self {
            RunError::FuelExhausted { .. } => "fuel_exhausted",
            RunError::Timeout { .. } => "timeout",
            RunError::MemoryLimit { .. } => "memory_limit",
            RunError::OutputTooLarge { .. } => "output_too_large",
            RunError::StackOverflow => "stack_overflow",
            RunError::Trap { .. } => "trap",
            RunError::Exit { .. } => "exit",
            RunError::Failed { .. } => "failed",
            RunError::BadOutput { .. } => "bad_output",
            RunError::InputTooLarge { .. } => "input_too_large",
            RunError::Setup { .. } => "setup",
        }
    }

    /// Whether the sandbox stopped the cell for overstepping a limit (as
    /// opposed to the cell failing on its own).
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            RunError::FuelExhausted { .. }
                | RunError::Timeout { .. }
                | RunError::MemoryLimit { .. }
                | RunError::OutputTooLarge { .. }
                | RunError::StackOverflow
        )
    }
}

/// What one call used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallStats {
    pub fuel_used: u64,
    pub peak_memory_bytes: u64,
    pub duration_us: u64,
    pub output_bytes: u64,
    /// Calls from the guest into the host: WASI imports, and runtime
    /// services such as memory growth (wasmtime's call hook).
    pub host_calls: u64,
}

/// The result of one call and what it cost.
#[derive(Debug, Clone)]
pub struct CallReport {
    pub result: Result<Value, RunError>,
    pub stats: CallStats,
    /// What the sandbox refused the cell during the call (network uses
    /// outside the grants), one sentence each, for the audit log.
    pub denials: Vec<String>,
}

/// A host directory the guest sees at `guest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDir {
    pub host: PathBuf,
    pub guest: String,
    pub access: Access,
}

/// What the sandbox gives one cell: exactly the manifest's grants, bound
/// to host resources at install.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    pub dirs: Vec<HostDir>,
    pub scratch: bool,
    pub env: Vec<(String, String)>,
    pub clock: bool,
    pub random: bool,
    /// Outbound TCP destinations (components only).
    pub network: Vec<NetworkGrant>,
}

/// A compiled, pre-linked cell: instantiating it is the only per-call work.
#[derive(Clone)]
pub struct PreparedCell {
    pre: Prepared,
}

#[derive(Clone)]
enum Prepared {
    Command(InstancePre<CallState>),
    Component(component::InstancePre<ComponentState>),
}

impl PreparedCell {
    /// Whether this is a component (else a WASI preview 1 command module).
    pub fn is_component(&self) -> bool {
        matches!(self.pre, Prepared::Component(_))
    }
}

impl std::fmt::Debug for PreparedCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedCell").finish_non_exhaustive()
    }
}

/// The engine every cell runs on. Create one per process.
pub struct Sandbox {
    engine: Engine,
    /// Modules and components compiled (not loaded from the disk cache).
    compilations: AtomicU64,
    linker: Linker<CallState>,
    component_linker: component::Linker<ComponentState>,
    config: SandboxConfig,
    tick_ms: u64,
    ticker: Option<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

pub(crate) struct CallState {
    wasi: WasiP1Ctx,
    limiter: MemoryLimiter,
    host_calls: u64,
}

pub(crate) struct ComponentState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    host_calls: u64,
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// What the host keeps of one call's WASI context: the captured streams
/// and the scratch directory (deleted when dropped).
struct CallIo {
    stdout: CappedPipe,
    stderr: CappedPipe,
    scratch: Option<tempfile::TempDir>,
}

impl Sandbox {
    /// Builds the engine (fuel, epoch interruption, pooling allocator) and
    /// the WASI preview 1 linker, and starts the epoch ticker thread.
    pub fn new(config: SandboxConfig) -> Result<Sandbox, String> {
        if config.max_memory_bytes < crate::manifest::MEMORY_BYTES_MIN
            || config.max_memory_bytes > crate::manifest::MEMORY_BYTES_MAX
        {
            return Err(format!(
                "max_memory_bytes must be {}-{}, got {}",
                crate::manifest::MEMORY_BYTES_MIN,
                crate::manifest::MEMORY_BYTES_MAX,
                config.max_memory_bytes
            ));
        }
        if config.max_concurrent_calls == 0 || config.max_concurrent_calls > 10_000 {
            return Err("max_concurrent_calls must be 1-10000".into());
        }
        let tick_ms = u64::try_from(config.epoch_tick.as_millis()).unwrap_or(u64::MAX);
        if !(1..=1000).contains(&tick_ms) {
            return Err("epoch_tick must be 1-1000 ms".into());
        }
        let mut pool = PoolingAllocationConfig::new();
        let n = config.max_concurrent_calls;
        pool.total_core_instances(n.saturating_mul(CORE_INSTANCES_PER_CALL))
            .total_memories(n.saturating_mul(MEMORIES_PER_CALL))
            .total_tables(n.saturating_mul(TABLES_PER_CALL))
            .total_component_instances(n)
            .max_core_instances_per_component(CORE_INSTANCES_PER_CALL)
            .max_memories_per_component(MEMORIES_PER_CALL)
            .max_tables_per_component(TABLES_PER_CALL)
            .max_memory_size(usize::try_from(config.max_memory_bytes).unwrap_or(usize::MAX))
            .table_elements(TABLE_ELEMENTS_MAX);
        let mut engine_config = Config::new();
        engine_config
            .consume_fuel(true)
            .epoch_interruption(true)
            .max_wasm_stack(config.max_wasm_stack)
            .wasm_component_model(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&engine_config).map_err(|e| format!("wasmtime engine: {e:#}"))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut CallState| &mut s.wasi)
            .map_err(|e| format!("linking WASI: {e:#}"))?;
        let mut component_linker = component::Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut component_linker)
            .map_err(|e| format!("linking WASI preview 2: {e:#}"))?;

        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let engine = engine.clone();
            let stop = stop.clone();
            let tick = config.epoch_tick;
            std::thread::Builder::new()
                .name("cellgate-cells-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::park_timeout(tick);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| format!("starting the epoch ticker: {e}"))?
        };
        Ok(Sandbox {
            engine,
            compilations: AtomicU64::new(0),
            linker,
            component_linker,
            config,
            tick_ms,
            ticker: Some(ticker),
            stop,
        })
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// How many modules and components this sandbox has compiled (loads
    /// from the disk cache do not count).
    pub fn compilations(&self) -> u64 {
        self.compilations.load(Ordering::Relaxed)
    }

    /// Compiles a command module or a component and resolves its imports
    /// once, so calls only instantiate. Fails on binaries the engine cannot
    /// run, and on components whose `call` export does not have the
    /// `cellgate:cell/tool` signature.
    pub fn prepare(&self, bytes: &[u8]) -> Result<PreparedCell, String> {
        self.prepare_with(bytes, None)
    }

    /// [`Sandbox::prepare`], loading the compiled artefact from `cache`
    /// when it holds a valid one for `sha256` (the digest of `bytes`,
    /// checked by the caller), and storing it there after compiling.
    pub(crate) fn prepare_with(
        &self,
        bytes: &[u8],
        cache: Option<(&CompiledCache, &str)>,
    ) -> Result<PreparedCell, String> {
        if wasmparser::Parser::is_component(bytes) {
            let component = self.compiled(
                bytes,
                cache,
                ArtefactKind::Component,
                // SAFETY: `compiled` hands over only artefacts whose HMAC
                // proved this instance wrote them (see there).
                |engine, artefact| unsafe { component::Component::deserialize(engine, artefact) },
                |engine, bytes| component::Component::new(engine, bytes),
                component::Component::serialize,
            )?;
            check_component_export(&self.engine, &component)?;
            let pre = self
                .component_linker
                .instantiate_pre(&component)
                .map_err(|e| format!("linking: {e:#}"))?;
            return Ok(PreparedCell {
                pre: Prepared::Component(pre),
            });
        }
        let module = self.compiled(
            bytes,
            cache,
            ArtefactKind::Module,
            // SAFETY: as for components above.
            |engine, artefact| unsafe { Module::deserialize(engine, artefact) },
            |engine, bytes| Module::new(engine, bytes),
            Module::serialize,
        )?;
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| format!("linking: {e:#}"))?;
        Ok(PreparedCell {
            pre: Prepared::Command(pre),
        })
    }

    /// The compiled form of `bytes` (a module or a component, as `kind`
    /// says): loaded with `load` from `cache` when it holds an artefact for
    /// `sha256` that passes its integrity check, otherwise compiled with
    /// `compile` and stored there.
    ///
    /// `load` deserialises machine code unchecked, so it sees nothing but
    /// what [`CompiledCache::read`] authenticated: the file's HMAC (key
    /// derived from this instance's private seal key) proves this instance
    /// wrote it for this module digest, kind and engine compatibility hash,
    /// and wasmtime still checks its own version and configuration header.
    fn compiled<T>(
        &self,
        bytes: &[u8],
        cache: Option<(&CompiledCache, &str)>,
        kind: ArtefactKind,
        load: impl FnOnce(&Engine, &[u8]) -> wasmtime::Result<T>,
        compile: impl FnOnce(&Engine, &[u8]) -> wasmtime::Result<T>,
        serialize: impl FnOnce(&T) -> wasmtime::Result<Vec<u8>>,
    ) -> Result<T, String> {
        let what = kind.name();
        let cached = cache.and_then(|(c, sha)| {
            let artefact = c.read(sha, kind)?;
            match load(&self.engine, &artefact) {
                Ok(compiled) => Some(compiled),
                Err(e) => {
                    tracing::warn!(
                        "compiled {what} in the cache does not load ({e:#}); recompiling"
                    );
                    None
                }
            }
        });
        if let Some(compiled) = cached {
            return Ok(compiled);
        }
        self.compilations.fetch_add(1, Ordering::Relaxed);
        let compiled = compile(&self.engine, bytes).map_err(|e| format!("compiling: {e:#}"))?;
        if let Some((cache, sha)) = cache {
            match serialize(&compiled) {
                Ok(artefact) => cache.write(sha, kind, &artefact),
                Err(e) => tracing::warn!("serialising a compiled {what}: {e:#}"),
            }
        }
        Ok(compiled)
    }

    /// Runs one call of `tool` in a fresh instance. Blocks the thread for
    /// the call's duration (at most the timeout).
    ///
    /// # Panics
    ///
    /// On a tokio worker thread: wasmtime-wasi blocks on its own futures,
    /// which tokio forbids there. Call it from `spawn_blocking` (as
    /// [`crate::CellRegistry::call`] does) or a plain thread.
    pub fn call(
        &self,
        cell: &PreparedCell,
        limits: &Limits,
        grants: &Grants,
        tool: &str,
        arguments: &Map<String, Value>,
    ) -> CallReport {
        let started = Instant::now();
        let mut stats = CallStats::default();
        let denials = Arc::new(Mutex::new(Vec::new()));
        let result = match &cell.pre {
            Prepared::Command(pre) => {
                self.run_command(pre, limits, grants, tool, arguments, &denials, &mut stats)
            }
            Prepared::Component(pre) => {
                self.run_component(pre, limits, grants, tool, arguments, &denials, &mut stats)
            }
        };
        stats.duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let denials = std::mem::take(&mut *denials.lock().unwrap_or_else(|e| e.into_inner()));
        CallReport {
            result,
            stats,
            denials,
        }
    }

    /// The WASI context of one call: exactly the grants, captured output,
    /// a frozen clock and fixed randomness unless granted, and sockets
    /// only to the granted destinations.
    fn wasi_context(
        &self,
        limits: &Limits,
        grants: &Grants,
        stdin: Option<String>,
        stdout_traps: bool,
        denials: &Arc<Mutex<Vec<String>>>,
    ) -> Result<(WasiCtxBuilder, CallIo), RunError> {
        let max_output = usize::try_from(limits.max_output_bytes).unwrap_or(usize::MAX);
        let stdout = CappedPipe::new(max_output, stdout_traps);
        let stderr = CappedPipe::new(STDERR_MAX, false);
        let mut wasi = WasiCtxBuilder::new();
        if let Some(input) = stdin {
            wasi.stdin(MemoryInputPipe::new(input));
        }
        wasi.stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_blocking_current_thread(true)
            .arg("cell");
        for (k, v) in &grants.env {
            wasi.env(k, v);
        }
        for dir in &grants.dirs {
            let perms = match dir.access {
                Access::Read => FsPerms::ReadOnly,
                Access::ReadWrite => FsPerms::ReadWrite,
            };
            wasi.preopened_dir(&dir.host, &dir.guest, perms)
                .map_err(|e| RunError::Setup {
                    message: format!("opening granted directory {}: {e:#}", dir.host.display()),
                })?;
        }
        let scratch = if grants.scratch && grants.dirs.is_empty() {
            let dir = tempfile::Builder::new()
                .prefix("cellgate-scratch-")
                .tempdir()
                .map_err(|e| RunError::Setup {
                    message: format!("creating the scratch directory: {e}"),
                })?;
            wasi.preopened_dir(dir.path(), "/tmp", FsPerms::ReadWrite)
                .map_err(|e| RunError::Setup {
                    message: format!("opening the scratch directory: {e:#}"),
                })?;
            Some(dir)
        } else {
            None
        };
        if !grants.clock {
            wasi.wall_clock(FrozenClock).monotonic_clock(FrozenClock);
        }
        if !grants.random {
            wasi.secure_random(wasmtime_wasi::Deterministic::new(vec![0]))
                .insecure_random(wasmtime_wasi::Deterministic::new(vec![0]))
                .insecure_random_seed(0);
        }
        // Sockets: TCP only, and only towards the grants. Name lookup is
        // only offered when a grant names a host (it lets the cell query
        // DNS for any name, which it needs to reach that host).
        wasi.allow_udp(false)
            .allow_tcp(!grants.network.is_empty())
            .allow_ip_name_lookup(
                grants
                    .network
                    .iter()
                    .any(|g| g.host.parse::<IpAddr>().is_err()),
            );
        let check = NetworkCheck {
            grants: Arc::from(grants.network.clone()),
            denials: denials.clone(),
        };
        wasi.socket_addr_check(move |addr, use_| {
            let check = check.clone();
            Box::pin(async move { check.allows(addr, use_).await })
        });
        Ok((
            wasi,
            CallIo {
                stdout,
                stderr,
                scratch,
            },
        ))
    }

    /// Fuel, epoch deadline and memory limiter on a fresh store.
    fn limit_store<T: Send + 'static>(
        &self,
        store: &mut Store<T>,
        limits: &Limits,
        limiter: fn(&mut T) -> &mut MemoryLimiter,
    ) -> Result<(), RunError> {
        store.limiter(move |s| -> &mut dyn ResourceLimiter { limiter(s) });
        store.set_fuel(limits.fuel).map_err(|e| RunError::Setup {
            message: e.to_string(),
        })?;
        store.set_epoch_deadline(limits.timeout_ms.div_ceil(self.tick_ms) + 1);
        store.epoch_deadline_trap();
        Ok(())
    }

    #[allow(clippy::too_many_arguments)] // the two run_* share call()'s arguments
    fn run_command(
        &self,
        pre: &InstancePre<CallState>,
        limits: &Limits,
        grants: &Grants,
        tool: &str,
        arguments: &Map<String, Value>,
        denials: &Arc<Mutex<Vec<String>>>,
        stats: &mut CallStats,
    ) -> Result<Value, RunError> {
        let input = json!({ "tool": tool, "arguments": arguments }).to_string();
        if input.len() > self.config.max_input_bytes {
            return Err(RunError::InputTooLarge {
                size: input.len(),
                limit: self.config.max_input_bytes,
            });
        }
        let (mut wasi, io) = self.wasi_context(limits, grants, Some(input), true, denials)?;
        let state = CallState {
            wasi: wasi.build_p1(),
            limiter: MemoryLimiter::new(limits.memory_bytes),
            host_calls: 0,
        };
        let mut store = Store::new(&self.engine, state);
        self.limit_store(&mut store, limits, |s| &mut s.limiter)?;
        store.call_hook(|mut cx, hook| {
            if matches!(hook, CallHook::CallingHost) {
                cx.data_mut().host_calls += 1;
            }
            Ok(())
        });

        let outcome = pre
            .instantiate(&mut store)
            .and_then(|instance| instance.get_typed_func::<(), ()>(&mut store, "_start"))
            .and_then(|start| start.call(&mut store, ()));

        stats.fuel_used = limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        stats.peak_memory_bytes = store.data().limiter.peak as u64;
        stats.host_calls = store.data().host_calls;
        let refused_memory = store.data().limiter.refused;
        drop(store);
        let CallIo {
            stdout,
            stderr,
            scratch,
            ..
        } = io;
        drop(scratch);
        let out = stdout.contents();
        stats.output_bytes = out.len() as u64;

        let exit_code = match outcome {
            Ok(()) => 0,
            Err(e) => {
                if let Some(exit) = e.downcast_ref::<I32Exit>() {
                    exit.0
                } else {
                    return Err(classify_trap(
                        &e,
                        limits,
                        refused_memory,
                        stdout.overflowed(),
                        &stderr.contents(),
                    ));
                }
            }
        };
        if exit_code != 0 {
            return Err(RunError::Exit {
                code: exit_code,
                stderr: String::from_utf8_lossy(&stderr.contents())
                    .trim()
                    .to_owned(),
            });
        }
        parse_output(&out)
    }

    #[allow(clippy::too_many_arguments)] // the two run_* share call()'s arguments
    fn run_component(
        &self,
        pre: &component::InstancePre<ComponentState>,
        limits: &Limits,
        grants: &Grants,
        tool: &str,
        arguments: &Map<String, Value>,
        denials: &Arc<Mutex<Vec<String>>>,
        stats: &mut CallStats,
    ) -> Result<Value, RunError> {
        let args = Value::Object(arguments.clone()).to_string();
        let size = args.len() + tool.len();
        if size > self.config.max_input_bytes {
            return Err(RunError::InputTooLarge {
                size,
                limit: self.config.max_input_bytes,
            });
        }
        // Standard output is not the result channel here: keep it capped
        // and never trap on it.
        let (mut wasi, io) = self.wasi_context(limits, grants, None, false, denials)?;
        let state = ComponentState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(limits.memory_bytes),
            host_calls: 0,
        };
        let mut store = Store::new(&self.engine, state);
        self.limit_store(&mut store, limits, |s| &mut s.limiter)?;
        store.call_hook(|mut cx, hook| {
            if matches!(hook, CallHook::CallingHost) {
                cx.data_mut().host_calls += 1;
            }
            Ok(())
        });

        type CallFn = (Result<String, String>,);
        let outcome = pre
            .instantiate(&mut store)
            .and_then(|instance| {
                instance.get_typed_func::<(&str, &str), CallFn>(&mut store, COMPONENT_EXPORT)
            })
            .and_then(|call| call.call(&mut store, (tool, args.as_str())));

        stats.fuel_used = limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        stats.peak_memory_bytes = store.data().limiter.peak as u64;
        stats.host_calls = store.data().host_calls;
        let refused_memory = store.data().limiter.refused;
        // Tear down the instance (and its resources: sockets, files) before
        // the scratch directory goes.
        drop(store);
        let CallIo {
            stderr, scratch, ..
        } = io;
        drop(scratch);

        match outcome {
            Ok((Ok(text),)) => {
                stats.output_bytes = text.len() as u64;
                if text.len() as u64 > limits.max_output_bytes {
                    return Err(RunError::OutputTooLarge {
                        limit: limits.max_output_bytes,
                    });
                }
                parse_output(text.as_bytes())
            }
            Ok((Err(message),)) => {
                stats.output_bytes = message.len() as u64;
                Err(RunError::Failed {
                    message: truncate(message, STDERR_MAX),
                })
            }
            Err(e) => Err(classify_trap(
                &e,
                limits,
                refused_memory,
                false,
                &stderr.contents(),
            )),
        }
    }
}

/// The component must export `call: func(string, string) ->
/// result<string, string>`; said at install rather than at the first call.
fn check_component_export(engine: &Engine, component: &component::Component) -> Result<(), String> {
    use component::types::{ComponentItem, Type};
    let wrong = || {
        format!(
            "the component must export `{COMPONENT_EXPORT}: func(name: string, args: string) -> result<string, string>` (world cellgate:cell/tool)"
        )
    };
    let ty = component.component_type();
    let Some(ComponentItem::ComponentFunc(func)) =
        ty.get_export(engine, COMPONENT_EXPORT).map(|e| e.ty)
    else {
        return Err(wrong());
    };
    let params_ok = {
        let params: Vec<Type> = func.params().map(|(_, t)| t).collect();
        params.len() == 2 && params.iter().all(|t| matches!(t, Type::String))
    };
    let results: Vec<Type> = func.results().collect();
    let result_ok = match results.as_slice() {
        [Type::Result(r)] => {
            matches!(r.ok(), Some(Type::String)) && matches!(r.err(), Some(Type::String))
        }
        _ => false,
    };
    if params_ok && result_ok {
        Ok(())
    } else {
        Err(wrong())
    }
}

/// Why an instance stopped, from the error wasmtime returned.
fn classify_trap(
    e: &wasmtime::Error,
    limits: &Limits,
    refused_memory: Option<usize>,
    output_overflowed: bool,
    stderr: &[u8],
) -> RunError {
    if let Some(requested) = refused_memory {
        return RunError::MemoryLimit {
            limit: limits.memory_bytes,
            requested: requested as u64,
        };
    }
    if output_overflowed {
        return RunError::OutputTooLarge {
            limit: limits.max_output_bytes,
        };
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => RunError::FuelExhausted { limit: limits.fuel },
        Some(Trap::Interrupt) => RunError::Timeout {
            timeout_ms: limits.timeout_ms,
        },
        Some(Trap::StackOverflow) => RunError::StackOverflow,
        Some(trap) => RunError::Trap {
            message: with_stderr(trap.to_string(), stderr),
        },
        None => RunError::Trap {
            message: with_stderr(format!("{e:#}"), stderr),
        },
    }
}

fn parse_output(out: &[u8]) -> Result<Value, RunError> {
    serde_json::from_slice(out).map_err(|e| RunError::BadOutput {
        message: format!(
            "{e} (starts with {:?})",
            String::from_utf8_lossy(&out[..out.len().min(80)])
        ),
    })
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// The socket policy of one call: TCP connects to granted destinations,
/// nothing else. Refusals are written down for the audit log.
#[derive(Clone)]
struct NetworkCheck {
    grants: Arc<[NetworkGrant]>,
    denials: Arc<Mutex<Vec<String>>>,
}

impl NetworkCheck {
    async fn allows(&self, addr: SocketAddr, use_: SocketAddrUse) -> bool {
        let allowed = match use_ {
            // The implicit bind to an ephemeral port that precedes a connect.
            SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
            SocketAddrUse::TcpConnect => self.granted(addr).await,
            _ => false,
        };
        if !allowed {
            let what = match use_ {
                SocketAddrUse::TcpBind => "TCP bind to",
                SocketAddrUse::TcpListen => "TCP listen on",
                SocketAddrUse::TcpAccept => "TCP accept from",
                SocketAddrUse::TcpConnect => "TCP connect to",
                SocketAddrUse::UdpBind => "UDP bind to",
                SocketAddrUse::UdpSend => "UDP send to",
                SocketAddrUse::UdpReceive => "UDP receive from",
            };
            let granted: Vec<String> = self
                .grants
                .iter()
                .map(|g| format!("{}:{}", g.host, g.port))
                .collect();
            let message = format!(
                "network denied: {what} {addr} is not granted (granted: {})",
                if granted.is_empty() {
                    "none".to_owned()
                } else {
                    granted.join(", ")
                }
            );
            if let Ok(mut d) = self.denials.lock()
                && d.len() < 16
            {
                d.push(message);
            }
        }
        allowed
    }

    /// Whether `addr` is one of the granted destinations; a granted DNS
    /// name matches the addresses it resolves to now.
    async fn granted(&self, addr: SocketAddr) -> bool {
        let ip = canonical_ip(addr.ip());
        for g in self.grants.iter().filter(|g| g.port == addr.port()) {
            if let Ok(granted) = g.host.parse::<IpAddr>() {
                if canonical_ip(granted) == ip {
                    return true;
                }
                continue;
            }
            let target = (g.host.clone(), g.port);
            let resolved = tokio::task::spawn_blocking(move || {
                std::net::ToSocketAddrs::to_socket_addrs(&target).map(|a| a.collect::<Vec<_>>())
            })
            .await;
            if let Ok(Ok(addrs)) = resolved
                && addrs.iter().any(|a| canonical_ip(a.ip()) == ip)
            {
                return true;
            }
        }
        false
    }
}

/// IPv4-mapped IPv6 addresses compare as the IPv4 address.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn with_stderr(message: String, stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    if text.is_empty() {
        message
    } else {
        format!("{message} (stderr: {text})")
    }
}

/// Memory ceiling of one call, over all of its linear memories (a
/// component has several); remembers the peak and the refused request so
/// the error can say what happened.
struct MemoryLimiter {
    limit: usize,
    total: usize,
    peak: usize,
    refused: Option<usize>,
}

impl MemoryLimiter {
    fn new(limit: u64) -> Self {
        MemoryLimiter {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            total: 0,
            peak: 0,
            refused: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("memory limit exceeded")]
struct MemoryLimitExceeded;

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.total.saturating_add(desired.saturating_sub(current));
        if total > self.limit {
            self.refused = Some(total);
            // Trapping (not returning -1 to the guest) stops a memory bomb
            // at once and makes the reason unmistakable.
            return Err(wasmtime::Error::new(MemoryLimitExceeded));
        }
        self.total = total;
        self.peak = self.peak.max(total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= TABLE_ELEMENTS_MAX)
    }
}

/// A clock stuck at zero for cells without the clock permission.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// An in-memory output with a size cap. Over the cap it either traps the
/// call (stdout: the result would be cut) or drops the excess (stderr: only
/// used for messages).
#[derive(Clone)]
struct CappedPipe {
    inner: Arc<CappedInner>,
}

struct CappedInner {
    buffer: Mutex<Vec<u8>>,
    capacity: usize,
    trap_on_overflow: bool,
    overflowed: AtomicBool,
}

#[derive(Debug, thiserror::Error)]
#[error("output limit exceeded")]
struct OutputLimitExceeded;

impl CappedPipe {
    fn new(capacity: usize, trap_on_overflow: bool) -> Self {
        CappedPipe {
            inner: Arc::new(CappedInner {
                buffer: Mutex::new(Vec::new()),
                capacity,
                trap_on_overflow,
                overflowed: AtomicBool::new(false),
            }),
        }
    }

    fn contents(&self) -> Vec<u8> {
        self.inner
            .buffer
            .lock()
            .map(|b| b.clone())
            .unwrap_or_default()
    }

    fn overflowed(&self) -> bool {
        self.inner.overflowed.load(Ordering::Relaxed)
    }
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        // Only preview 2 streams are used (p2_stream below); a sink keeps
        // this path harmless should anything ask for it.
        Box::new(tokio::io::sink())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        let inner = &self.inner;
        let Ok(mut buffer) = inner.buffer.lock() else {
            return Err(StreamError::Closed);
        };
        let room = inner.capacity.saturating_sub(buffer.len());
        if bytes.len() > room {
            inner.overflowed.store(true, Ordering::Relaxed);
            if inner.trap_on_overflow {
                return Err(StreamError::Trap(wasmtime::Error::new(OutputLimitExceeded)));
            }
            buffer.extend_from_slice(&bytes[..room]);
            return Ok(());
        }
        buffer.extend_from_slice(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Accept any write and judge it in `write`, so an oversized result
        // is refused rather than silently split.
        Ok(1 << 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(grants: &[(&str, u16)]) -> NetworkCheck {
        NetworkCheck {
            grants: grants
                .iter()
                .map(|(host, port)| NetworkGrant {
                    host: (*host).to_owned(),
                    port: *port,
                })
                .collect(),
            denials: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn only_granted_tcp_connects_pass_the_network_check() {
        let c = check(&[("127.0.0.1", 8080), ("localhost", 9000)]);
        assert!(
            c.allows(addr("127.0.0.1:8080"), SocketAddrUse::TcpConnect)
                .await
        );
        assert!(
            c.allows(addr("[::ffff:127.0.0.1]:8080"), SocketAddrUse::TcpConnect)
                .await
        );
        // The implicit ephemeral bind before a connect.
        assert!(c.allows(addr("0.0.0.0:0"), SocketAddrUse::TcpBind).await);
        // A granted name matches what it resolves to.
        assert!(
            c.allows(addr("127.0.0.1:9000"), SocketAddrUse::TcpConnect)
                .await
        );
        assert!(c.denials.lock().unwrap().is_empty());

        for (a, use_) in [
            ("127.0.0.1:8081", SocketAddrUse::TcpConnect),
            ("127.0.0.2:8080", SocketAddrUse::TcpConnect),
            ("0.0.0.0:8080", SocketAddrUse::TcpBind),
            ("127.0.0.1:8080", SocketAddrUse::TcpListen),
            ("127.0.0.1:8080", SocketAddrUse::UdpSend),
        ] {
            assert!(!c.allows(addr(a), use_).await, "{a} {use_:?}");
        }
        let denials = c.denials.lock().unwrap().clone();
        assert_eq!(denials.len(), 5);
        assert_eq!(
            denials[0],
            "network denied: TCP connect to 127.0.0.1:8081 is not granted (granted: 127.0.0.1:8080, localhost:9000)"
        );

        let none = check(&[]);
        assert!(
            !none
                .allows(addr("127.0.0.1:80"), SocketAddrUse::TcpConnect)
                .await
        );
        assert!(none.denials.lock().unwrap()[0].ends_with("(granted: none)"));
    }

    #[test]
    fn the_memory_limit_counts_every_memory_of_a_call() {
        let mut l = MemoryLimiter::new(3 << 16);
        assert!(l.memory_growing(0, 2 << 16, None).unwrap());
        assert!(l.memory_growing(0, 1 << 16, None).unwrap());
        assert!(l.memory_growing(1 << 16, 2 << 16, None).is_err());
        assert_eq!((l.peak, l.refused), (3 << 16, Some(4 << 16)));
    }
}
