pub mod backup;
pub mod balancer;
mod balancer_blocks;
pub mod service;
mod util;
