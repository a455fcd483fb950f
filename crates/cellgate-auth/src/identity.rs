//! [`Identity`] (defined in the kernel, so the edge can read it without
//! depending on this crate): who is calling and in which tenant.

pub use cellgate_kernel::Identity;

/// The tenant of callers without a credential when authentication is optional.
pub const LOCAL_TENANT: &str = "local";
