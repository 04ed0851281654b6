pub mod backup;
pub mod balancer;
mod balancer_blocks;
pub mod service;
pub(crate) mod util;
