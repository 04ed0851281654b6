pub mod backup;
pub mod service;
mod util;
