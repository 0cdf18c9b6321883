pub mod placeholder {}
pub mod fastpath;
