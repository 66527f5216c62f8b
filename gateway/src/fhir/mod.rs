//! FHIR R4 semantics independent of transport and storage: parsing a request into an operation,
//! structure validation, search criteria, bundles and the CapabilityStatement.

pub mod bundle;
pub mod bundle_request;
pub mod capability;
pub mod compartment;
pub mod fhirpath;
pub mod json;
pub mod meta;
pub mod named_operations;
pub mod operation;
pub mod patch;
pub mod profile;
pub mod references;
pub mod search;
pub mod search_index;
pub mod search_params;
pub mod spliced;
pub mod subset;
pub mod validate;
