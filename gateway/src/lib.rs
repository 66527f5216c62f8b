//! The Health Hub Utrecht regional FHIR gateway.
//!
//! Request path: `server` (listen, limits) -> `fhir::operation` (one parsed operation) ->
//! `policy` (permit) -> `store` -> `policy` (disclose) -> `server::respond`.

pub mod app;
pub mod audit;
pub mod config;
pub mod demo_region;
pub mod demo_social;
pub mod error;
pub mod export;
pub mod federation;
pub mod feed;
pub mod fhir;
pub mod import;
pub mod inbox;
pub mod policy;
pub mod rest;
pub mod server;
pub mod store;
pub mod submit;
