//! instant-recovery API types.
//!
//! [`recovery`] holds what every driver of the recovery engine shares: the switchover and retry
//! policies users write, and the status the engine keeps. Doc comments here become the schema's
//! descriptions, so they speak to users.

mod duration;
mod quantity;
pub mod recovery;

pub use duration::{DURATION_PATTERN, DurationError, GoDuration};
pub use quantity::quantity_bytes;
pub mod crd;
