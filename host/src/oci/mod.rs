//! OCI distribution vocabulary: names, references and digests ([`reference`]), the error
//! body every failing response carries ([`error`]) and the manifest media types ([`media`]).

pub mod error;
pub mod media;
pub mod reference;
