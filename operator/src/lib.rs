//! The instant-recovery engine: the recovery state machine ([`machine`]), PostgreSQL control
//! ([`postgres`]) and the drivers that carry out the machine's actions ([`local`] for one host).

pub mod k8s;
pub mod local;
pub mod machine;
pub mod postgres;
pub mod process;
