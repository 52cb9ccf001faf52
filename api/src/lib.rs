//! instant-recovery API types.
//!
//! [`recovery`] holds what every driver of the recovery engine shares: the switchover and retry
//! policies users write, and the status the engine keeps. Doc comments here become the schema's
//! descriptions, so they speak to users.

pub mod backup;
mod duration;
mod failure;
pub mod location;
pub mod point_in_time;
mod quantity;
pub mod reason;
pub mod recovery;

pub use duration::{DURATION_PATTERN, DurationError, GoDuration};
pub use failure::Failure;
pub use location::{DEFAULT_FILE_ROOT, RepositoryPolicy, RepositoryPolicyArgs};
pub use quantity::quantity_bytes;
pub use reason::Reason;
pub mod crd;
