//! Integration tests of cellgate-cells: real wasmtime, a real SQLite store
//! in a temporary directory, real signatures, and cells written for the
//! test in WebAssembly text (plus the shipped examples, built from source).

#[path = "cells/support.rs"]
mod support;

#[path = "cells/at_rest.rs"]
mod at_rest;
#[path = "cells/components.rs"]
mod components;
#[path = "cells/escapes.rs"]
mod escapes;
#[path = "cells/examples.rs"]
mod examples;
#[path = "cells/lifecycle.rs"]
mod lifecycle;
#[path = "cells/profiles.rs"]
mod profiles;
#[path = "cells/trust.rs"]
mod trust;
