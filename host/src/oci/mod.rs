//! OCI distribution vocabulary: names, references and digests ([`mod@reference`]), the error
//! body every failing response carries ([`error`]), the manifest media types ([`media`]),
//! what a manifest refers to ([`manifest`]), platforms (`os/arch`, [`platform`]) and the
//! canonical names of registries ([`registry`]). Plain values and parsers: no I/O, no
//! imports of other host modules.

pub mod error;
pub mod manifest;
pub mod media;
pub mod platform;
pub mod reference;
pub mod registry;
