//! Workflows: definitions, their validation, and the driver that runs them
//! with checkpoints.

mod definition;
pub(crate) mod expr;
mod run;
pub(crate) mod template;

pub(crate) use definition::validate;
pub use definition::{
    END, MAX_ITERATIONS, MAX_PHASES, MAX_STEPS, PhaseDefinition, StepDefinition, Strategy,
    Transition, ValidationError, ValidationErrors, WorkflowDefinition, definition_schema,
    parse_definition,
};
pub use run::{RunState, WorkflowView};
