pub mod backup;
pub mod balancer;
mod balancer_blocks;
mod balancer_rate_limit;
pub mod service;
pub(crate) mod util;
