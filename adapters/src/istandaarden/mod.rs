//! The iWmo/iJw adapter: municipalities' allocation messages (WMO301/JW301) and providers'
//! requests for allocation (WMO315/JW315), release 3.2, onto FHIR (Patient and social-domain
//! ServiceRequests), each answered with its return message (302/316). Messages arrive by HTTP
//! POST (the gateway's `/istandaarden` route) or through a drop directory.
//!
//! Unlike the FHIR and SQL adapters this one is pushed to: it reads nothing from a backend, it
//! is given messages, and what they carry is written to the gateway's store through the policy
//! chokepoint as the municipality's principal (the gateway implements [`source::Apply`]).

pub mod config;
pub mod mapping;
pub mod source;
#[cfg(test)]
mod tests;

pub use config::Config;
pub use source::{Apply, Error, Failure, Handled, handle, sweep, watch};
