pub mod backup;
pub mod balancer;
pub mod service;
mod util;
