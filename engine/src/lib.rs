//! The instant-recovery engine, shared by both drivers (`irctl recover` on one host, the
//! operator on Kubernetes): the recovery state machine ([`machine`]), the round that drives it
//! through a [`round::Driver`] ([`round`]), finding the backup to recover ([`backup`]),
//! PostgreSQL control ([`postgres`]), the settings of a recovery to a point in time
//! ([`point_in_time`]) and the processes it runs ([`process`]).

pub mod backup;
pub mod machine;
pub mod point_in_time;
pub mod postgres;
pub mod process;
pub mod round;
