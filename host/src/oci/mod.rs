//! OCI distribution vocabulary: names, references and digests ([`mod@reference`]), the error
//! body every failing response carries ([`error`]), the manifest media types ([`media`]) and
//! what a manifest refers to ([`manifest`]).

pub mod error;
pub mod manifest;
pub mod media;
pub mod platform;
pub mod reference;
pub mod registry;
