//! The instant-recovery engine: the recovery state machine ([`machine`]) and the drivers that
//! carry out its actions.

pub mod machine;
